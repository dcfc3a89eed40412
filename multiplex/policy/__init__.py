"""Policy hooks around each attachment.

Authorize hooks run before an attachment is made and may refuse it (CNIError 106). The first is
namespace isolation (Multus' `namespaceIsolation` + `globalNamespaces`). Enforce hooks are CNI
plugins chained after the delegate with prevResult (a NAD's conflist: the reference `firewall`
or `tuning`, or any plugin), so they run, are undone and checked with the attachment's chain.
"""
from __future__ import annotations

from typing import Any

from ..cni.errors import CNIError, POLICY_DENIED


def namespace_isolation(conf: Any, pod_namespace: str, selection: Any) -> None:
    if not conf.namespace_isolation:
        return
    target = selection.namespace
    if target == pod_namespace or target in conf.global_namespaces:
        return
    raise CNIError(POLICY_DENIED,
                   f"namespace isolation: a pod in namespace {pod_namespace!r} may not use "
                   f"NetworkAttachmentDefinition {target}/{selection.name}",
                   f"field: k8s.v1.cni.cncf.io/networks; allowed: NADs in {pod_namespace!r}"
                   + (f" or in the global namespaces {', '.join(conf.global_namespaces)}" if conf.global_namespaces
                      else " (no globalNamespaces configured)"))


AUTHORIZE_HOOKS = [namespace_isolation]


def authorize(conf: Any, pod_namespace: str, selection: Any) -> None:
    """Run every authorize hook; the first refusal wins."""
    for hook in AUTHORIZE_HOOKS:
        hook(conf, pod_namespace, selection)
