"""The cluster IPAM scale simulation (tests/perf/test_ipam_scale.py): N simulated nodes against the
test API server, each a thread with its own KubeClient, watches (the daemon's "ippools" and
"ipblocks" informers) and IPAMCache, allocating and releasing at a steady rate, then nodes leaving
(drained, or crashed and never back) and joining, then the IPAM GC with its grace period.

What is measured, per row:
- requests per allocation by verb, counted by each node's client for the allocations alone
  (releases and the informers' lists/watches counted apart), writes, 409s, lost claims (creates
  answered AlreadyExists), allocations per second over the steady phase, p50/p99 latency of one
  allocation, the watch cache's memory per node (the deep size of its informers' objects and the
  overlay of its own writes);
- today's figure in the same run: allocations by one-shot stores (a fresh KubeStore without a
  cache per call, as a CNI process), on a few nodes of the same cluster;
- after churn and GC: leaked addresses (held by a gone node, or not held by any live owner of the
  simulation) and leaked blocks (affine to a gone node), and duplicate addresses.

The test server, scaled: `ScaleStore` keeps the test server's semantics (tests/k8s/fakestore.py)
but hands each watch only its events (watchers indexed by resource and by the label key of an
existence selector, as a real API server's watch cache dispatches by index) and filters a list
before copying it. Without that the fake server wakes every one of 2000 watches on every event,
and copies every block on every list: O(watchers x events) work no real API server does.
"""
from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from multiplex.ipam import config, gc
from multiplex.ipam.kube.cache import IPAMCache
from multiplex.ipam.kube.model import API_VERSION, BLOCKS, GROUP, POOL_KIND, POOLS, VERSION, Block
from multiplex.ipam.kube.store import KubeStore
from multiplex.ipam.store import Owner
from multiplex.k8s.client import KubeClient
from multiplex.k8s.errors import AlreadyExists, Conflict
from multiplex.k8s.objects import KubeObjects
from tests.k8s.apiserver import ApiError, ApiServer, ObjectStore
from tests.k8s.fakestore import field_matcher, label_matcher
from tests.k8s.ipam_kube_support import install_crds

POOL_CIDR = "198.18.0.0/15"
BLOCK_SIZE = 28
GRACE = 300.0


# --- the test server, scaled ---------------------------------------------------------------------

class _Watcher:
    def __init__(self, resource: tuple, namespace: Optional[str], namespaced: bool, match: Callable[[dict], bool]):
        self.resource = resource
        self.namespace = namespace
        self.namespaced = namespaced
        self.match = match
        self.queue: deque = deque()
        self.wake = threading.Event()

    def offer(self, etype: str, obj: dict) -> None:
        if self.namespaced and self.namespace and obj["metadata"].get("namespace") != self.namespace:
            return
        if self.match(obj):
            self.queue.append((etype, obj))
            self.wake.set()


class ScaleStore(ObjectStore):
    """The test server's store with indexed watch dispatch and filter-then-copy lists."""

    def __init__(self) -> None:
        super().__init__()
        self._by_resource: dict[tuple, list[_Watcher]] = {}
        self._by_key: dict[tuple, dict[str, list[_Watcher]]] = {}

    def _emit(self, rt, etype: str, obj: dict) -> None:
        super()._emit(rt, etype, obj)
        resource = (rt.group, rt.plural)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        keyed = self._by_key.get(resource, {})
        stored = self.events[-1].obj
        for w in self._by_resource.get(resource, ()):
            w.offer(etype, stored)
        for k in labels:
            for w in keyed.get(k, ()):
                w.offer(etype, stored)

    def list(self, rt, namespace=None, label_selector: str = "", field_selector: str = "", limit: int = 0,
             cont: str = "") -> dict:
        if limit or cont:
            return super().list(rt, namespace, label_selector, field_selector, limit, cont)
        match_l, match_f = label_matcher(label_selector), field_matcher(field_selector)
        with self.lock:
            bucket = self._bucket(rt)
            keys = sorted(k for k in bucket if not (rt.namespaced and namespace) or k[0] == namespace)
            items = [self._present(rt, bucket[k]) for k in keys if match_l(bucket[k]) and match_f(bucket[k])]
            return {"apiVersion": rt.api_version, "kind": rt.kind + "List",
                    "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def watch(self, rt, namespace, resource_version, label_selector, field_selector, alive, deadline):
        import bisect

        match_l, match_f = label_matcher(label_selector), field_matcher(field_selector)
        resource = (rt.group, rt.plural)
        w = _Watcher(resource, namespace, rt.namespaced, lambda o: match_l(o) and match_f(o))
        key = label_selector.strip()
        simple = key and all(c not in key for c in ",=!() ")
        with self.lock:
            if resource_version in ("", "0", None):
                initial = self.list(rt, namespace, label_selector, field_selector)["items"]
                backlog = []
            else:
                last = int(resource_version)
                oldest = self.events[0].rv if self.events else self.rv + 1
                if last < oldest - 1 and last < self.rv:
                    initial = None
                    backlog = []
                else:
                    initial = []
                    start = bisect.bisect_right(self.events, last, key=lambda e: e.rv)
                    backlog = [(e.type, e.obj) for e in self.events[start:] if e.resource == resource]
            if initial is not None:
                if simple:
                    self._by_key.setdefault(resource, {}).setdefault(key, []).append(w)
                else:
                    self._by_resource.setdefault(resource, []).append(w)
        if initial is None:
            yield "ERROR", ApiError(410, "Expired", f"too old resource version: {resource_version}").status()
            return
        try:
            for o in initial:
                yield "ADDED", o
            for etype, obj in backlog:
                if w.match(obj):
                    yield etype, self._present(rt, obj)
            while alive() and time.monotonic() < deadline:
                if not w.queue:
                    w.wake.wait(min(2.0, max(0.0, deadline - time.monotonic())))
                    w.wake.clear()
                while w.queue:
                    etype, obj = w.queue.popleft()
                    yield etype, self._present(rt, obj)
        finally:
            with self.lock:
                if simple:
                    self._by_key.get(resource, {}).get(key, []).remove(w)
                else:
                    self._by_resource.get(resource, []).remove(w)


def scale_server(directory: str) -> ApiServer:
    """The test API server with ScaleStore, a listen backlog for a thousand nodes, the IPAM CRDs
    and one IPPool; started (stop it with .stop())."""
    api = ApiServer()
    api.store = ScaleStore()
    api.start()
    api._httpd.socket.listen(4096)   # the stdlib server listens with a backlog of 5
    api.write_kubeconfig(f"{directory}/kubeconfig")
    install_crds(api)
    api.store.add({"apiVersion": API_VERSION, "kind": POOL_KIND, "metadata": {"name": "sim"},
                   "spec": {"cidr": POOL_CIDR, "blockSize": BLOCK_SIZE}}, POOLS)
    return api


# --- a simulated node ------------------------------------------------------------------------------

class CountingClient(KubeClient):
    """A KubeClient that counts its requests by (operation, verb): the operation is what the calling
    thread says it does ("alloc", "release", "oneshot"); the informers' threads count as "cache"."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.counts: Counter = Counter()
        self.op = threading.local()
        self._count_lock = threading.Lock()

    def request(self, verb, method, resource, namespace=None, name="", **kw):
        op = getattr(self.op, "name", "cache")
        try:
            return super().request(verb, method, resource, namespace, name, **kw)
        except (Conflict, AlreadyExists):
            with self._count_lock:
                self.counts[(op, "409")] += 1
            raise
        finally:
            with self._count_lock:
                self.counts[(op, verb)] += 1

    def watch(self, *a, **kw):
        with self._count_lock:
            self.counts[("cache", "watch")] += 1
        return super().watch(*a, **kw)


@dataclass(eq=False)
class SimNode:
    name: str
    kubeconfig: str
    conf: config.IPAMConfig
    gap: float
    live_cap: int
    client: CountingClient = field(init=False)
    objects: KubeObjects = field(init=False)
    cache: IPAMCache = field(init=False)
    live: deque = field(default_factory=deque)          # (owner, address) held now
    latencies: list = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    allocations: int = 0
    errors: list = field(default_factory=list)
    seq: int = 0
    stopped: bool = False

    planned: int = 0
    deferred: bool = False
    #: off: 1000 nodes each listing 1000 Nodes costs the in-process server minutes on two cores,
    #: so the simulated nodes start their claims from the hash (blocks.probe_blocks without rank)
    watch_nodes: bool = False

    def __post_init__(self) -> None:
        if not self.deferred:
            self.begin_objects()

    @classmethod
    def later(cls, *a) -> "SimNode":
        """A node that joins during the run: its client and watches are made by begin()."""
        return cls(*a, deferred=True)

    def begin_objects(self) -> None:
        self.client = CountingClient(self.kubeconfig, timeout=60, retries=5, backoff=0.1, max_backoff=2.0)
        self.objects = KubeObjects(self.client, self.name, backoff=0.2, max_backoff=2.0, watch_timeout=600)
        if self.watch_nodes:
            self.objects.informer("nodes")     # the daemon's node registry and IPAM GC watch them
        self.cache = IPAMCache(self.objects, self.name, self.client, sync_timeout=120)

    def start(self) -> None:
        self.client.op.name = "cache"
        if not self.cache.ready():
            raise AssertionError(f"node {self.name}: the IPAM informers did not sync")
        if self.watch_nodes and not self.objects.informer("nodes").wait_synced(120):
            raise AssertionError(f"node {self.name}: the nodes informer did not sync")

    def begin(self) -> None:
        """Join: make the client and watches, wait for their first lists."""
        if self.deferred:
            self.begin_objects()
            self.deferred = False
        self.start()

    def _store(self) -> KubeStore:
        return KubeStore(self.client, self.name, cache=self.cache, retries=12, max_backoff=1.0)

    def allocate(self) -> None:
        self.seq += 1
        who = Owner(f"{self.name}-c{self.seq}", "eth0", "sim")
        self.client.op.name = "alloc"
        started = time.perf_counter()
        store = self._store()
        try:
            lease = store.allocate(self.conf.range_sets[0], self.conf.exclude, who)
        finally:
            store.close()
            self.stats.update(store.stats)
        self.latencies.append(time.perf_counter() - started)
        self.allocations += 1
        self.live.append((who, lease.address))

    def release_one(self) -> None:
        who, _ = self.live.popleft()
        self.client.op.name = "release"
        store = self._store()
        try:
            store.release(who)
        finally:
            store.close()
            self.stats.update(store.stats)

    def drain(self) -> None:
        while self.live:
            self.release_one()

    def run(self, allocations: int, rng: random.Random) -> None:
        """`allocations` allocations at a steady rate (one every `gap` seconds, jittered), keeping
        at most `live_cap` addresses: beyond it the oldest is released first."""
        self.planned += allocations
        try:
            for _ in range(allocations):
                time.sleep(rng.uniform(0, 2 * self.gap))
                if len(self.live) >= self.live_cap:
                    self.release_one()
                self.allocate()
        except Exception as e:  # noqa: BLE001 - reported by the row, never swallowed
            self.errors.append(f"{type(e).__name__}: {e}")

    def cache_bytes(self) -> int:
        if self.deferred:
            return 0
        """The deep size of what this node's watch cache holds: its informers' objects and its overlay."""
        objs = [o for inf in self.objects.started().values() for o in inf.list()]
        with self.cache._lock:
            objs += [o for o in self.cache._overlay.values() if o]
        return deep_size(objs)

    def stop(self) -> None:
        if not self.stopped and not self.deferred:
            self.stopped = True
            self.objects.stop()
            self.client.close()


def rss() -> int:
    """This process's resident memory now, in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/status") as f:
            for text in f:
                if text.startswith("VmRSS:"):
                    return int(text.split()[1]) * 1024
    except OSError:
        pass
    return 0


def deep_size(obj, seen: Optional[set] = None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, deque)):
        size += sum(deep_size(v, seen) for v in obj)
    return size


def run_threads(items, work: Callable, stack_kb: int = 256) -> float:
    """One thread per item, started at once; the wall time until the last one is done."""
    old = threading.stack_size()
    threading.stack_size(stack_kb * 1024)
    try:
        threads = [threading.Thread(target=work, args=(it,), daemon=True) for it in items]
    finally:
        threading.stack_size(old)
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


# --- one row ---------------------------------------------------------------------------------------

@dataclass
class Row:
    nodes: int
    per_node: int
    allocations: int = 0
    seconds: float = 0.0
    by_verb: Counter = field(default_factory=Counter)      # allocation requests by verb
    release_by_verb: Counter = field(default_factory=Counter)
    cache_by_verb: Counter = field(default_factory=Counter)
    conflicts: int = 0
    lost_claims: int = 0
    claims: int = 0
    latencies: list = field(default_factory=list)
    cache_bytes: list = field(default_factory=list)
    oneshot_by_verb: Counter = field(default_factory=Counter)
    oneshot_allocations: int = 0
    left_drained: int = 0
    left_crashed: int = 0
    joined: int = 0
    gc_actions: Counter = field(default_factory=Counter)
    leaked_addresses: list = field(default_factory=list)
    leaked_blocks: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    distinct: int = 0
    expected_allocations: int = 0
    rss_per_node: float = 0.0      # bytes of process RSS per node (client, threads, connections, cache)

    def per_alloc(self, verbs: Counter, n: int) -> str:
        if not n:
            return "-"
        return " ".join(f"{v} {verbs[v] / n:.2f}" for v in ("list", "get", "create", "update", "delete") if verbs[v])

    @property
    def requests_per_alloc(self) -> float:
        return sum(v for k, v in self.by_verb.items() if k != "409") / self.allocations if self.allocations else 0.0

    @property
    def oneshot_per_alloc(self) -> float:
        return (sum(v for k, v in self.oneshot_by_verb.items() if k != "409") / self.oneshot_allocations
                if self.oneshot_allocations else 0.0)

    def pct(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def per_node_work(n: int) -> int:
    """Allocations per node: scaled down as nodes grow, so every row stays a few seconds on two
    cores (the total grows with N; 1000 nodes still make two each)."""
    return {1: 300, 8: 60, 64: 12, 256: 4}.get(n, 2)


def simulate(n: int, directory: str, *, gap: float = 0.01, live_cap: int = 6, seed: int = 1) -> Row:
    """One row: N nodes start (watches synced), then all at once: most allocate and release at a
    steady rate; a tenth leave midway (half drained and deleted, half crashed and deleted with
    their addresses held); a tenth join midway (start their watches, allocate twice). Then
    today's figure on the same cluster, the GC's two passes a grace apart, and the audit."""
    rng = random.Random(seed + n)
    api = scale_server(directory)
    conf = config.parse({"name": "sim", "ipam": {"type": "multiplex-ipam", "store": "kubernetes",
                                                "range": POOL_CIDR}})
    row = Row(n, per_node_work(n))
    nodes: list[SimNode] = []
    joiners: list[SimNode] = []
    try:
        for i in range(n):
            api.store.add_node(f"node-{i}")
        import kubernetes.client  # noqa: F401  (the import is the process's, not a node's)

        rss0 = rss()
        nodes = [SimNode(f"node-{i}", api.kubeconfig, conf, gap, live_cap) for i in range(n)]
        run_threads(nodes, lambda s: s.start())
        row.rss_per_node = max(0, rss() - rss0) / n

        leaving = nodes[n - max(1, n // 10):]
        drained, crashed = leaving[: (len(leaving) + 1) // 2], leaving[(len(leaving) + 1) // 2:]
        joiners = [SimNode.later(f"node-{n + i}", api.kubeconfig, conf, gap, live_cap) for i in range(max(1, n // 10))]
        midway = row.per_node * gap / 2
        lifecycles = {s.name: "drain" for s in drained} | {s.name: "crash" for s in crashed}

        def life(s: SimNode) -> None:
            r = random.Random(rng.random())
            fate = lifecycles.get(s.name)
            if s in joiners:
                time.sleep(r.uniform(0, midway))
                api.store.add_node(s.name)
                s.begin()
                s.run(2, r)
                return
            s.run(max(1, row.per_node // 2) if fate else row.per_node, r)
            if fate == "drain":
                s.drain()
            if fate:                          # gone: its Node deleted; a crashed one never said goodbye
                s.stop()
                api.store.delete_node(s.name)

        row.seconds = run_threads(nodes + joiners, life)
        row.left_drained, row.left_crashed, row.joined = len(drained), len(crashed), len(joiners)
        gone = {s.name for s in leaving}
        alive = [s for s in nodes if s.name not in gone] + joiners

        # today's figure, same cluster: one-shot stores (no cache) on a few live nodes
        for s in alive[:8]:
            for k in range(3):
                who = Owner(f"{s.name}-oneshot{k}", "eth0", "sim")
                s.client.op.name = "oneshot"
                KubeStore(s.client, s.name).allocate(conf.range_sets[0], conf.exclude, who)
                row.oneshot_allocations += 1
                s.client.op.name = "release"
                KubeStore(s.client, s.name).release(who)

        # the GC with its grace period: a pass marks, one `grace` later frees and releases
        admin = KubeClient(api.kubeconfig, timeout=60, retries=3)
        t0 = 1_800_000_000.0
        for at in (t0, t0 + GRACE):
            report = gc.collect(admin, GRACE, now=lambda at=at: at)
            row.gc_actions.update(a.kind for a in report.actions)
        admin.close()

        # what is left on the server against what the simulation holds
        blocks = [Block.from_object(o) for o in api.store.items(GROUP, VERSION, BLOCKS)]
        held = {(a.container_id, addr) for b in blocks for addr, a in b.allocations.items()}
        expected = {(who.container_id, str(ip)) for s in alive for who, ip in s.live}
        row.leaked_addresses = sorted(held - expected)
        row.duplicates = sorted(expected - held)        # a live lease the server lost (or handed twice)
        addresses = [ip for s in alive for _, ip in s.live]
        row.distinct = len(set(addresses))
        if len(addresses) != len(set(addresses)):
            row.duplicates.append(("duplicate addresses", len(addresses) - len(set(addresses))))
        row.leaked_blocks = sorted(b.name for b in blocks if b.node in gone)

        for s in nodes + joiners:
            row.allocations += s.allocations
            row.expected_allocations += s.planned
            for (op, verb), v in s.client.counts.items():
                {"alloc": row.by_verb, "release": row.release_by_verb, "cache": row.cache_by_verb,
                 "oneshot": row.oneshot_by_verb}[op][verb] += v
            row.conflicts += s.stats["conflicts"]
            row.lost_claims += s.stats["claims_lost"]
            row.claims += s.stats["claims"]
            row.latencies += s.latencies
            row.errors += [f"{s.name}: {e}" for e in s.errors]
        row.cache_bytes = [s.cache_bytes() for s in alive]
    finally:
        for s in nodes + joiners:
            s.stop()
        api.stop()
    return row


COLUMNS = ("nodes", "alloc/node", "allocs", "alloc/s", "req/alloc", "by verb", "today", "today by verb", "409s",
           "claims (lost)", "p50 ms", "p99 ms", "cache KiB/node", "RSS KiB/node", "churn -/x/+", "leaked addr",
           "leaked blocks")


def cells(r: Row) -> list[str]:
    mem = statistics.mean(r.cache_bytes) / 1024 if r.cache_bytes else 0.0
    return [str(r.nodes), str(r.per_node), str(r.allocations), f"{r.allocations / r.seconds if r.seconds else 0:.0f}",
            f"{r.requests_per_alloc:.2f}", r.per_alloc(r.by_verb, r.allocations), f"{r.oneshot_per_alloc:.2f}",
            r.per_alloc(r.oneshot_by_verb, r.oneshot_allocations), str(r.conflicts), f"{r.claims} ({r.lost_claims})",
            f"{r.pct(0.5):.1f}", f"{r.pct(0.99):.1f}", f"{mem:.1f}", f"{r.rss_per_node / 1024:.0f}",
            f"{r.left_drained}/{r.left_crashed}/{r.joined}", str(len(r.leaked_addresses)), str(len(r.leaked_blocks))]


def table(rows: list[Row]) -> str:
    """A markdown table, one row per N."""
    lines = [cells(r) for r in rows]
    widths = [max(len(x[i]) for x in [list(COLUMNS)] + lines) for i in range(len(COLUMNS))]
    fmt = lambda cs: "| " + " | ".join(c.rjust(w) for c, w in zip(cs, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(x) for x in lines])
