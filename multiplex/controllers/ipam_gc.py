"""The IPAM garbage collector as a daemon controller: `multiplex ipam gc --every` folded in.

Every `--ipam-gc-every` seconds (the controller's resync) one pass of multiplex/ipam/gc.py runs
with `--ipam-gc-grace`: allocations of pods or nodes gone for the grace period are freed, blocks of
nodes that left are released or handed over. Counts go to the metrics (ipam_gc_passes_total,
ipam_gc_actions_total) and one log line per pass that did something.

Node churn: besides the pass every `--ipam-gc-every` seconds, a Node deleted (the daemon's "nodes"
informer, which the node registry watches anyway) queues a pass at once, so the addresses of a
node that is gone are marked when it goes and freed one grace period later, not up to `every`
seconds after each; its empty blocks are released, blocks still holding addresses of live nodes
handed over to the one holding most (their borrowed addresses become its own), and what a gone
node borrowed elsewhere is freed with the rest of its addresses. Only deletions queue a pass
(Node updates are frequent: a heartbeat per node every few seconds), and passes coalesce (one key).

Only with a cluster: a daemon on a local directory has no cluster IPAM, and its factory returns
None. A cluster without the IPAM CRDs (no network uses `"store": "kubernetes"`) answers the block
list with 404: the pass is counted as "idle" and logged once.

One collector at a time, by a Lease (coordination.k8s.io/v1, `multiplex-ipam-gc` in the daemon's
namespace). The GC itself is safe to run twice at once (every write carries the block's
resourceVersion, see ipam/gc.py), so the Lease is not for correctness but for load: a pass lists
every block, node and pod of the cluster, and N daemons doing that every few minutes would be N
times the load of the one Deployment it replaces. The holder renews the Lease at each pass; the
others skip their pass ("skipped") and take over once the Lease has not been renewed for its
duration (2 x every + 10 s by default), judged by their own clock from when they last saw it
change (never by comparing another node's timestamps with theirs: clocks differ).
"""
from __future__ import annotations

import math
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Optional

from ..daemon.controller import Controller, DaemonContext

NAME = "ipam-gc"
LEASE_NAME = "multiplex-ipam-gc"
LEASE_GROUP, LEASE_VERSION, LEASES = "coordination.k8s.io", "v1", "leases"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def daemon_namespace() -> str:
    """Where the Lease lives: $POD_NAMESPACE, else the service account's namespace, else kube-system."""
    ns = os.environ.get("POD_NAMESPACE", "").strip()
    if ns:
        return ns
    try:
        with open(SA_NAMESPACE_FILE, encoding="utf-8") as f:
            return f.read().strip() or "kube-system"
    except OSError:
        return "kube-system"


def _micro_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Lease:
    """Leader election on one Lease object, by create and resourceVersion-checked replace."""

    def __init__(self, client: Any, namespace: str, name: str, identity: str, duration: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = max(1, int(math.ceil(duration)))
        self.clock = clock
        self.wall = wall
        #: (resourceVersion, our clock when we first saw it): how long the holder has been silent
        self._seen: tuple[str, float] = ("", 0.0)
        self.holder = ""

    def _spec(self, transitions: int, acquired: Optional[str] = None) -> dict:
        now = _micro_time(self.wall())
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    def acquire(self) -> bool:
        """Take or renew the Lease; True when this daemon holds it now."""
        from ..k8s.errors import AlreadyExists, Conflict, NotFound

        try:
            obj = self.client.get_object(LEASE_GROUP, LEASE_VERSION, LEASES, self.name, namespace=self.namespace)
        except NotFound:
            body = {"apiVersion": f"{LEASE_GROUP}/{LEASE_VERSION}", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(0)}
            try:
                self.client.create_object(LEASE_GROUP, LEASE_VERSION, LEASES, body, namespace=self.namespace)
            except AlreadyExists:
                return False        # another node created it first: it holds it
            self.holder = self.identity
            return True
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        rv = str(meta.get("resourceVersion") or "")
        holder = str(spec.get("holderIdentity") or "")
        now = self.clock()
        if rv != self._seen[0]:
            self._seen = (rv, now)
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        mine = holder == self.identity
        expired = not holder or now - self._seen[1] >= duration
        if not (mine or expired):
            self.holder = holder
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        body = dict(obj, spec=self._spec(transitions, spec.get("acquireTime") if mine else None))
        try:
            new = self.client.replace_object(LEASE_GROUP, LEASE_VERSION, LEASES, self.name, body,
                                             namespace=self.namespace)
        except (Conflict, NotFound):
            return False            # someone else renewed or took it meanwhile
        self._seen = (str((new.get("metadata") or {}).get("resourceVersion") or ""), now)
        self.holder = self.identity
        return True


class IpamGC(Controller):
    name = NAME
    watches = ()

    def __init__(self, client: Any, node_name: str, every: float, grace: float, namespace: str = "",
                 lease_duration: Optional[float] = None, now: Callable[[], float] = time.time,
                 watch_nodes: bool = False):
        self.client = client
        #: a deleted Node queues a pass (the daemon's nodes informer); without it, passes are periodic
        self.watches = ("nodes",) if watch_nodes else ()
        self.node_name = node_name
        self.every = float(every)
        self.grace = float(grace)
        self.resync = self.every
        self.now = now
        self.lease = Lease(client, namespace or daemon_namespace(), LEASE_NAME, node_name,
                           lease_duration if lease_duration is not None else 2 * self.every + 10)
        self.passes = 0
        self.last_report: Any = None
        self._idle_logged = False
        self._lock = threading.Lock()

    def all_keys(self) -> Iterable[str]:
        return ("pass",)

    def keys_for(self, kind: str, event: str, obj: dict) -> Iterable[str]:
        """A deleted Node: a pass now. Other node events: nothing (the periodic pass covers them)."""
        return ("pass",) if kind == "nodes" and event == "DELETED" else ()

    def reconcile(self, key: str) -> None:
        self.run_pass()

    def run_pass(self) -> str:
        """One pass if this node holds the Lease: "ok", "skipped" (another node collects) or
        "idle" (no IPAM CRDs). A failure raises (the runner retries it with backoff)."""
        from ..ipam import gc
        from ..k8s.errors import NotFound

        log, metrics = self.daemon.log, self.daemon.metrics
        try:
            if not self.lease.acquire():
                self._count("skipped")
                log.debug("ipam gc: another node collects", holder=self.lease.holder)
                return "skipped"
            report = gc.collect(self.client, self.grace, now=self.now)
        except NotFound as e:
            self._count("idle")
            if not self._idle_logged:
                log.info("ipam gc: no cluster IPAM here (the IPBlock resource is not served)", error=e.msg)
                self._idle_logged = True
            return "idle"
        except Exception:
            self._count("error")
            raise
        counts = {kind: report.count(kind) for kind in ("freed", "marked", "unmarked", "released", "handed-over")}
        self._count("ok", counts)
        with self._lock:
            self.passes += 1
            self.last_report = report
        fields = dict(blocks=report.blocks, allocations=report.allocations, conflicts=report.conflicts,
                      **{k.replace("-", "_"): v for k, v in counts.items()})
        (log.info if report.actions else log.debug)("ipam gc pass", **fields)
        return "ok"

    def _count(self, result: str, actions: Optional[dict] = None) -> None:
        metrics = self.daemon.metrics
        if metrics is not None and hasattr(metrics, "observe_gc"):
            metrics.observe_gc(result, actions)


def controller(daemon: DaemonContext) -> Optional[IpamGC]:
    """The entry point: None without a cluster (a local directory) or with `--ipam-gc-every` 0."""
    client = getattr(daemon.objects, "client", None)
    if client is None:
        return None
    opts = daemon.options or {}
    every = float(opts.get("ipam_gc_every") or 0)
    if every <= 0:
        return None
    from ..ipam.gc import DEFAULT_GRACE

    grace = opts.get("ipam_gc_grace")
    return IpamGC(client, daemon.node_name, every, DEFAULT_GRACE if grace is None else float(grace),
                  namespace=str(opts.get("ipam_gc_namespace") or ""), watch_nodes=True)
