"""Where the node daemon's watched objects come from: the Kubernetes API (informers) or, without a
cluster (the lab, tests), a local directory. One interface for both, so controllers never know
which one they read.

KINDS names what can be watched: "pods" (this node's pods only: fieldSelector spec.nodeName),
"nads" (NetworkAttachmentDefinitions, every namespace), "nodes". Later issues add kinds
(MultiNetworkPolicies, namespaces, IPPools, IPBlocks) the same way.

A local directory holds one subdirectory per kind (`pods/`, `nads/`, `nodes/`), each with JSON or
YAML files of objects as the API would serve them (a file may hold one object, a list, or a
`{"items": [...]}`); it is polled (mtime and size) about once a second.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol

KINDS = ("pods", "nads", "nodes")

#: an event handler: (event type "ADDED" | "MODIFIED" | "DELETED", the object)
Handler = Callable[[str, dict], None]


class Informer(Protocol):
    """One kind of object, kept current by a watch (or a directory poll)."""

    kind: str

    def list(self) -> list[dict]:
        """Every object known now (copies are not made: callers do not modify them)."""

    def get(self, namespace: Optional[str], name: str) -> Optional[dict]:
        """One object, or None when it is not (yet) known."""

    def add_handler(self, handler: Handler) -> None:
        """Call `handler` for every later event (on the informer's thread; keep it short)."""

    def synced(self) -> bool:
        """True once the first list has been read (and after every relist)."""

    def wait_synced(self, timeout: float) -> bool:
        """Wait until synced(); False when `timeout` passed first."""

    def lag(self) -> float:
        """Seconds since the watch last proved itself current (an event, a bookmark, a relist)."""


class ObjectSource(Protocol):
    """The daemon's view of the cluster (or of the local directory)."""

    def informer(self, kind: str) -> Informer:
        """The informer of `kind` (one of KINDS), started on first use."""

    def patch_node_annotations(self, node: str, annotations: dict[str, Optional[str]]) -> None:
        """Merge `annotations` into the Node `node` (None removes one). Locally: the node's file
        `nodes/<node>.json`, created when missing."""

    def stop(self) -> None:
        """Stop every watch/poll thread."""
