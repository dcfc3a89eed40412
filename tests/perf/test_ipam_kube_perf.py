"""Benchmark: the kubernetes IPAM store with 1, 8 and 64 simulated nodes against the test API
server, beside the SQLite store on the same machine, in one run.

Each simulated node is a thread with a KubeClient of its own; every allocation opens a fresh
KubeStore (no caches), as a CNI call, a process of its own, would. The nodes allocate at the same
time, each one call after another (a node's calls are serialized by its node lock anyway). The same
number of allocations (TOTAL) is made in each row, so with more nodes each node makes fewer.
Printed per row:

- allocations per second (wall clock over all nodes);
- API requests per allocation: all of them, and on the hot path (an allocation from the node's
  own block: LIST pools, LIST the node's blocks, one PUT), which should stay flat as nodes grow;
- conflicts: 409s on block writes, and claims lost to another node (a create answered AlreadyExists);
- the SQLite store, one database file per node, the same calls.

What is not in the figures: the process start of a real CNI call (`import kubernetes` alone costs
about a second; see tests/perf/test_bench_add_del.py) and a real API server's latency (the test
server answers in-process, and shares the two cores and the GIL with the nodes). No figure fails
the test; it asserts only that every address was handed out once. TOTAL: MULTIPLEX_IPAM_BENCH_TOTAL.
"""
from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from multiplex.ipam.sqlite.store import SQLiteStore
from tests.k8s.apiserver import running_apiserver
from tests.k8s.ipam_kube_support import Cluster, install_crds, ipam_conf, owner, take

pytestmark = pytest.mark.perf

TOTAL = int(os.environ.get("MULTIPLEX_IPAM_BENCH_TOTAL", "512"))
NODES = (1, 8, 64)


@dataclass
class Row:
    store: str
    nodes: int
    allocations: int = 0
    seconds: float = 0.0
    requests: int = 0
    hot_requests: list = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    addresses: list = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.allocations / self.seconds if self.seconds else 0.0


def run_threads(nodes: int, work) -> float:
    """Start one thread per node at once; returns the wall time until the last is done."""
    start = threading.Barrier(nodes + 1)
    threads = [threading.Thread(target=lambda n=n: (start.wait(), work(n))) for n in range(nodes)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def bench_kube(cluster: Cluster, nodes: int, cidr: str) -> Row:
    cluster.pool(f"bench-{nodes}", cidr)
    conf = ipam_conf(cidr, network=f"bench-{nodes}")
    row, lock = Row("kubernetes", nodes), threading.Lock()
    per_node = TOTAL // nodes
    clients = [cluster.client(f"bench{nodes}-n{n}") for n in range(nodes)]
    for c in clients:                          # connect and load credentials before the clock starts
        c.list_objects("ipam.multiplex.dev", "v1alpha1", "ippools")
        c.stats.clear()

    def work(n: int) -> None:
        node, client = f"bench{nodes}-n{n}", clients[n]
        for i in range(per_node):
            s = cluster.store(node)
            before = client.stats["requests"]
            lease = take(s, conf, owner(f"{node}-c{i}"))
            used = client.stats["requests"] - before
            with lock:
                row.addresses.append(lease.address)
                row.stats.update(s.stats)
                row.requests += used
                if not (s.stats["claims"] or s.stats["takeovers"] or s.stats["borrows"] or s.stats["retries"]):
                    row.hot_requests.append(used)

    row.seconds = run_threads(nodes, work)
    row.allocations = len(row.addresses)
    return row


def bench_sqlite(tmp_path, nodes: int, cidr: str) -> Row:
    conf = ipam_conf(cidr, network=f"bench-{nodes}")
    row, lock = Row("sqlite", nodes), threading.Lock()
    per_node = TOTAL // nodes
    # one database per node, each on its own slice of the subnet (the node store is per node)
    subnet = ipaddress.ip_network(cidr)

    def work(n: int) -> None:
        d = str(tmp_path / f"sqlite{nodes}-n{n}")
        for i in range(per_node):
            with SQLiteStore(d) as s:
                lease = take(s, conf, owner(f"n{n}-c{i}"))
            with lock:
                row.addresses.append((n, lease.address))

    row.seconds = run_threads(nodes, work)
    row.allocations = len(row.addresses)
    assert all(a in subnet for _, a in row.addresses)
    return row


def render(rows: list[Row]) -> str:
    head = ["store", "nodes", "allocations", "alloc/s", "API req/alloc", "hot path req/alloc",
            "409 conflicts", "claims (lost)", "borrows"]
    lines = []
    for r in rows:
        kube = r.store == "kubernetes"
        hot = sum(r.hot_requests) / len(r.hot_requests) if r.hot_requests else 0.0
        lines.append([r.store, str(r.nodes), str(r.allocations), f"{r.rate:.0f}",
                      f"{r.requests / r.allocations:.2f}" if kube else "-",
                      f"{hot:.2f} ({len(r.hot_requests)})" if kube else "-",
                      str(r.stats["conflicts"]) if kube else "-",
                      f"{r.stats['claims']} ({r.stats['claims_lost']})" if kube else "-",
                      str(r.stats["borrows"]) if kube else "-"])
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(x) for x in lines])


def test_ipam_kube_allocations_per_second_and_requests_per_allocation(tmp_path, capsys):
    rows: list[Row] = []
    with running_apiserver(tmp_path) as api:
        install_crds(api)
        cluster = Cluster(api, tmp_path)
        try:
            for n, nodes in enumerate(NODES):
                cidr = f"198.18.{128 + 32 * n}.0/19"      # 8190 addresses, 128 blocks of /26
                rows.append(bench_sqlite(tmp_path, nodes, cidr))
                rows.append(bench_kube(cluster, nodes, cidr))
        finally:
            cluster.close()
    with capsys.disabled():
        print(f"\n\nIPAM: {TOTAL} allocations per row, the nodes allocating at once "
              f"(test API server in-process, {os.cpu_count()} CPUs; hot path = an allocation from "
              "the node's own block, count in brackets)\n" + render(rows) + "\n")
    for r in rows:
        addrs = [a for a in r.addresses] if r.store == "kubernetes" else r.addresses
        assert len(addrs) == (TOTAL // r.nodes) * r.nodes
        assert len(set(addrs)) == len(addrs), f"{r.store} with {r.nodes} nodes handed an address out twice"
