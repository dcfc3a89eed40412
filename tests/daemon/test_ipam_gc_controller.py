"""The IPAM GC controller (multiplex/controllers/ipam_gc.py) through the test API server: an
orphaned allocation is marked, then freed once the grace period has passed, a live one is kept;
one node collects at a time (a Lease), another takes over when the holder goes quiet.

The GC's clock is driven (`now=`), the passes run on the controller's own resync."""
from __future__ import annotations


import pytest

from multiplex.controllers import ipam_gc
from multiplex.controllers.ipam_gc import IpamGC, LEASE_NAME
from multiplex.daemon.controller import DaemonContext, Runner
from multiplex.daemon.metrics import Metrics
from multiplex.k8s.objects import KubeObjects, LocalObjects
from tests.k8s.conftest import apiserver  # noqa: F401
from tests.k8s.ipam_kube_support import cluster, ipam_conf, owner, take  # noqa: F401
from tests.waiting import eventually

pytestmark = pytest.mark.k8s
GRACE = 300.0


@pytest.fixture
def runners():
    made = []

    def start(ctrl, node="n1", objects=None):
        daemon = DaemonContext(node_name=node, objects=objects, metrics=Metrics())
        runner = Runner(daemon, [ctrl])
        made.append(runner)
        runner.start()
        return runner

    yield start
    for r in made:
        r.stop(5)


def test_an_orphaned_allocation_is_freed_after_the_grace_and_a_live_one_kept(cluster, runners):  # noqa: F811
    cluster.pool("blue", "198.18.92.0/24")
    cluster.node("n1")
    conf = ipam_conf("198.18.92.0/24")
    cluster.api.store.add_pod("live", node_name="n1", uid="uid-live")
    cluster.api.store.add_pod("gone", node_name="n1", uid="uid-gone")
    live = take(cluster.store("n1"), conf, owner("ctr-live", pod="live", uid="uid-live"))
    gone = take(cluster.store("n1"), conf, owner("ctr-gone", pod="gone", uid="uid-gone"))
    cluster.api.store.delete_pod("gone")                  # deleted while its node was down: no DEL

    clock = [1_800_000_000.0]
    gc = IpamGC(cluster.client("n1"), "n1", every=0.1, grace=GRACE, namespace="kube-system",
                now=lambda: clock[0])
    runner = runners(gc)
    metrics = runner.metrics

    def missing_since(address) -> object:
        for b in cluster.blocks().values():
            a = b.allocations.get(str(address))
            if a is not None:
                return a.missing_since
        return "freed"

    assert eventually(lambda: missing_since(gone.address) == clock[0])     # marked at the first pass
    assert missing_since(live.address) is None
    passes = gc.passes
    assert eventually(lambda: gc.passes >= passes + 2)
    assert missing_since(gone.address) == 1_800_000_000.0                # not freed before the grace

    clock[0] += GRACE
    assert eventually(lambda: missing_since(gone.address) == "freed")
    assert set(cluster.allocations().values()) == {"ctr-live"}
    assert metrics.value("multiplex_ipam_gc_actions_total", {"action": "freed"}) == 1
    assert metrics.value("multiplex_ipam_gc_actions_total", {"action": "marked"}) == 1
    assert metrics.value("multiplex_ipam_gc_passes_total", {"result": "ok"}) >= 3
    lease = cluster.api.store.get_object("coordination.k8s.io", "v1", "leases", LEASE_NAME, "kube-system")
    assert lease["spec"]["holderIdentity"] == "n1"


def test_a_deleted_node_queues_a_pass_at_once_its_block_released_its_borrowed_address_freed(  # noqa: F811
        cluster, runners):  # noqa: F811
    cluster.pool("tiny", "198.18.94.0/28", blockSize=29)       # two blocks: .2-.7 (.1 the gateway), .8-.14
    for n in ("n1", "n2", "n3"):
        cluster.node(n)
    conf = ipam_conf("198.18.94.0/28", network="tiny")
    for i in range(6):                                          # n2 fills the first block...
        take(cluster.store("n2"), conf, owner(f"n2-{i}", network="tiny"))
    mine = take(cluster.store("n1"), conf, owner("n1-0", network="tiny"))   # ...n1 claims the second
    for i in range(6):
        take(cluster.store("n3"), conf, owner(f"n3-{i}", network="tiny"))     # n3 borrows from both
    assert any(b.borrowed() for b in cluster.blocks().values()) and mine.fresh     # the pool ran short

    objects = KubeObjects(cluster.api.kubeconfig, "n1", backoff=0.05, max_backoff=0.3)
    try:
        ctrl = IpamGC(cluster.client("n1"), "n1", every=3600, grace=0, namespace="kube-system", watch_nodes=True)
        runner = runners(ctrl, objects=objects)
        assert eventually(lambda: ctrl.passes >= 1)               # the first pass, then none for an hour
        cluster.api.store.delete_node("n2")                     # n2 never comes back
        assert eventually(lambda: ctrl.passes >= 2), "a deleted Node did not queue a pass"
        blocks = cluster.blocks().values()
        assert "n2" not in {b.node for b in blocks}             # released, or handed to n3 borrowing in it
        assert {a.container_id for b in blocks for a in b.allocations.values()} == {"n1-0"} | {
            f"n3-{i}" for i in range(6)}
        cluster.api.store.delete_node("n1")
        assert eventually(lambda: ctrl.passes >= 3)
        blocks = cluster.blocks().values()
        assert {b.node for b in blocks} == {"n3"} and not any(b.borrowed() for b in blocks)
        assert sorted(a.container_id for b in blocks for a in b.allocations.values()) == [
            f"n3-{i}" for i in range(6)]                       # n3's borrowed addresses are its own now
        assert runner.metrics.value("multiplex_ipam_gc_actions_total", {"action": "handed-over"}) >= 1
    finally:
        objects.stop()


def test_one_node_collects_and_another_takes_over_when_it_goes_quiet(cluster, runners):  # noqa: F811
    cluster.pool("blue", "198.18.93.0/24")
    for n in ("n1", "n2"):
        cluster.node(n)
    first = IpamGC(cluster.client("n1"), "n1", every=0.1, grace=GRACE, namespace="kube-system", lease_duration=1)
    r1 = runners(first, "n1")
    assert eventually(lambda: first.passes >= 1)
    second = IpamGC(cluster.client("n2"), "n2", every=0.1, grace=GRACE, namespace="kube-system", lease_duration=1)
    r2 = runners(second, "n2")
    assert eventually(lambda: (r2.metrics.value("multiplex_ipam_gc_passes_total", {"result": "skipped"}) or 0) >= 3)
    assert second.passes == 0 and second.lease.holder == "n1"

    r1.stop(5)                                             # the holder's daemon stops renewing
    assert eventually(lambda: second.passes >= 1)
    lease = cluster.api.store.get_object("coordination.k8s.io", "v1", "leases", LEASE_NAME, "kube-system")
    assert lease["spec"]["holderIdentity"] == "n2" and lease["spec"]["leaseTransitions"] == 1


def test_the_controller_runs_only_with_a_cluster(tmp_path, apiserver):  # noqa: F811
    local = DaemonContext(node_name="n1", objects=LocalObjects(str(tmp_path)),
                          options={"ipam_gc_every": 60, "ipam_gc_grace": 0})
    assert ipam_gc.controller(local) is None
    kube = KubeObjects(apiserver.kubeconfig, "n1")
    off = DaemonContext(node_name="n1", objects=kube, options={"ipam_gc_every": 0})
    assert ipam_gc.controller(off) is None
    on = ipam_gc.controller(DaemonContext(node_name="n1", objects=kube,
                                          options={"ipam_gc_every": 60, "ipam_gc_grace": 30}))
    assert isinstance(on, IpamGC) and on.resync == 60 and on.grace == 30 and on.client is kube.client
