"""The controller framework: reconcile loops over watched objects, as delegates and policy need.

A controller says which kinds it watches (multiplex/k8s/objects.py KINDS); every event of those
kinds is turned into keys (`keys_for`), queued (a key queued twice is reconciled once), and
`reconcile(key)` makes the node match the desired state for that key. A reconcile that raises is
retried with exponential backoff (per key, capped); every `resync` seconds every key of
`all_keys()` is queued again, so a change made behind the controller's back (an FDB entry deleted
by hand) is repaired. Reconciles of one controller run on one thread, in order: a controller need
not lock against itself.

Controllers are found through the `multiplex.controllers` entry points: each names a factory
`controller(daemon: DaemonContext) -> Controller | None`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ..util import log as _log

ENTRY_POINT_GROUP = "multiplex.controllers"


@dataclass
class DaemonContext:
    """What a controller gets from the daemon."""

    node_name: str
    #: the watched objects (multiplex.k8s.objects.ObjectSource)
    objects: Any
    #: the state root (result cache, locks, node IPAM)
    state_dir: Optional[str] = None
    #: the daemon's kubeconfig, or None (local directory / in-cluster default)
    kubeconfig: Optional[str] = None
    #: the daemon's multiplex.daemon.metrics.Metrics
    metrics: Any = None
    log: _log.Logger = field(default_factory=_log.get)
    #: set when the daemon stops
    stopping: threading.Event = field(default_factory=threading.Event)
    #: other controllers by name, once all are built (the node registry is "node-registry")
    controllers: dict[str, "Controller"] = field(default_factory=dict)
    #: the daemon's command-line options (`multiplex daemon --help`), e.g. "underlay_interface",
    #: "ipam_gc_every", "ipam_gc_grace"
    options: dict[str, Any] = field(default_factory=dict)


class Controller:
    """Subclass and override. `name` is the entry point's name."""

    name: str = ""
    #: kinds whose events queue keys
    watches: tuple[str, ...] = ()
    #: seconds between full resyncs (0: never)
    resync: float = 30.0

    def setup(self, daemon: DaemonContext) -> None:
        """Called once before the first reconcile (on the runner's thread)."""
        self.daemon = daemon

    def keys_for(self, kind: str, event: str, obj: dict) -> Iterable[str]:
        """The keys an event touches. Default: the one key "all" (reconcile everything)."""
        return ("all",)

    def all_keys(self) -> Iterable[str]:
        """Every key, for a resync. Default: "all"."""
        return ("all",)

    def reconcile(self, key: str) -> None:
        """Make the node match the desired state for `key`; raise to be retried with backoff."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Part of /readyz: True once the controller has done its first full reconcile."""
        return True

    def stop(self) -> None:
        """Called once when the daemon stops (after the last reconcile)."""
