"""Policy hooks around each attachment.

Authorize hooks decide whether a pod may have an attachment; a refusal is CNIError 106 naming the
hook and its reason. They run for every network the pod's annotation names, all of them before the
first delegate runs (`select` collects and authorizes every attachment first), so a refusal of the
last attachment leaves nothing of the earlier ones: nothing was made. The cluster network, the
config's `delegates` and `defaultNetworks` are the admin's choice for every pod and are not put to
the hooks. In order, the first refusal wins:

1. `namespace-isolation` (Multus' `namespaceIsolation` + `globalNamespaces`), before the NAD is
   even read, so a pod cannot probe other namespaces' NADs;
2. `nad-namespaces` (nad_namespaces.py): the NAD's own annotations narrow who may use it;
3. the admin's executables, `authorizeHooks` in the multiplex config (external.py).

`authorize` is what `select` is given: `authorize.check_config(conf)` once per ADD, then
`authorize(conf, pod_namespace, selection)` for step 1 and `authorize.attachment(conf, ask)` for
steps 2-3 once the NAD is read.

Enforce hooks are CNI plugins chained after the delegate with prevResult (a NAD's conflist: the
reference `firewall` or `tuning`, or any plugin), so they run, are undone and checked with the
attachment's chain; MultiNetworkPolicy enforcement is the node daemon's (docs/policy.md).
"""
from __future__ import annotations

from typing import Any

from ..cni.errors import CNIError, POLICY_DENIED
from .hooks import AttachmentAsk, refuse

__all__ = ["AttachmentAsk", "Authorize", "authorize", "namespace_isolation", "refuse"]

ISOLATION_HOOK = "namespace-isolation"


def namespace_isolation(conf: Any, pod_namespace: str, selection: Any) -> None:
    if not conf.namespace_isolation:
        return
    target = selection.namespace
    if target == pod_namespace or target in conf.global_namespaces:
        return
    raise CNIError(POLICY_DENIED,
                   f"namespace isolation: a pod in namespace {pod_namespace!r} may not use "
                   f"NetworkAttachmentDefinition {target}/{selection.name}",
                   f"hook: {ISOLATION_HOOK}; field: k8s.v1.cni.cncf.io/networks; allowed: NADs in {pod_namespace!r}"
                   + (f" or in the global namespaces {', '.join(conf.global_namespaces)}" if conf.global_namespaces
                      else " (no globalNamespaces configured)"))


class Authorize:
    """The authorize hooks, in the places `select` calls them."""

    def check_config(self, conf: Any) -> None:
        """What the schema cannot say about the hooks' config (two hooks of one name): code 7 on
        every ADD, whether or not the pod asks for a network."""
        from . import external

        external.configured_hooks(conf)

    def __call__(self, conf: Any, pod_namespace: str, selection: Any) -> None:
        """Before the NAD is read: the admin's namespace rule."""
        namespace_isolation(conf, pod_namespace, selection)

    def attachment(self, conf: Any, ask: AttachmentAsk) -> None:
        """With the NAD read and checked: the NAD writer's rule, then the admin's executables."""
        from . import external, nad_namespaces

        nad_namespaces.check(conf, ask)
        external.check(conf, ask)


authorize = Authorize()
