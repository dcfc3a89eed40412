"""What an authorize hook is given and how it refuses: the contract between `select` and the hooks.

Every hook sees one `AttachmentAsk` (one NAD the pod's annotation names, with the NAD as read)
and either returns (allowed) or raises `refuse(...)`: a CNIError with code 106 (POLICY_DENIED)
whose message names the hook, the network and the pod, and whose details carry `hook: <name>;
reason: <why>` so a runtime's event or a log line says who said no and why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..cni.errors import CNIError, POLICY_DENIED


@dataclass
class AttachmentAsk:
    """One attachment a pod asks for, at the point where its NAD has been read and checked."""
    network: str                      # "ns/name"
    nad_namespace: str
    nad_name: str
    nad: dict[str, Any]               # the NetworkAttachmentDefinition as the source has it
    ifname: str                       # the interface the attachment will get in the pod
    selection: Any                    # the annotation entry (multiplex.meta.annotation.NetworkSelection)
    request: Any                      # the call's Request (command, container, netns, deadline)
    source: Any = None                # where namespaces' labels can be read (policy/namespaces.py)
    #: what is known of the pod: namespace, name, uid, annotations; labels when the pod was read
    pod: dict[str, Any] = field(default_factory=dict)

    @property
    def pod_namespace(self) -> str:
        return str(self.pod.get("namespace") or "default")

    @property
    def pod_ref(self) -> str:
        name = self.pod.get("name") or ""
        return f"{self.pod_namespace}/{name}" if name else f"namespace {self.pod_namespace}"

    def nad_annotations(self) -> dict[str, Any]:
        meta = self.nad.get("metadata") if isinstance(self.nad.get("metadata"), dict) else {}
        ann = meta.get("annotations")
        return ann if isinstance(ann, dict) else {}


def refuse(hook: str, ask: AttachmentAsk, reason: str, extra: Optional[str] = None) -> CNIError:
    """The CNI error (106) of `hook` refusing `ask` for `reason` (raise it)."""
    details = f"hook: {hook}; reason: {reason}; network: {ask.network}; pod: {ask.pod_ref}"
    if extra:
        details += f"; {extra}"
    return CNIError(POLICY_DENIED,
                    f"authorize hook {hook!r} refused network {ask.network} for pod {ask.pod_ref}: {reason}",
                    details)
