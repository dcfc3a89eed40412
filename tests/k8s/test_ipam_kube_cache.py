"""The kubernetes IPAM store in the node daemon: reads from the daemon's watches of IPPools and
this node's IPBlocks (multiplex/ipam/kube/cache.py), against the test API server over HTTP.

What a user would check: the requests the API server saw per allocation (one write, no read), the
addresses handed out (distinct, in the node's block, as the server stores them), a stale cache
costing one 409 and one GET and still succeeding, a watch cut and resumed delivering what changed
meanwhile, claims spread over the pool, the daemon lending its cache to KubeStore.open, and the
GC after node churn leaving no address or block of a gone node behind.
"""
from __future__ import annotations

import ipaddress

import pytest

from multiplex.daemon.services import DaemonServices
from multiplex.ipam import config, gc
from multiplex.ipam.allocator import Space
from multiplex.ipam.kube import model
from multiplex.ipam.kube.blocks import probe_blocks
from multiplex.ipam.kube.model import SIZE_LABEL, Block, Pool, block_name, user_label
from multiplex.ipam.kube.store import KubeStore
from multiplex.k8s.objects import KubeObjects
from tests.k8s.ipam_kube_cache_support import cached_node, requests
from tests.k8s.ipam_kube_support import cluster, ipam_conf, owner, take  # noqa: F401
from tests.waiting import wait_for

BLUE = "198.18.70.0/24"
GRACE = 300.0
T0 = 1_800_000_000.0


@pytest.fixture
def nodes(cluster, tmp_path):  # noqa: F811
    """Simulated daemons: `nodes("n1")` starts one (watches synced); all stopped at teardown."""
    made = []

    def make(name: str, **kw):
        n = cached_node(cluster.api, name, tmp_path, **kw)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


def server_block(cluster, name: str) -> Block:  # noqa: F811
    return cluster.block(name)


def node_with_leases(cluster, nodes, count: int):  # noqa: F811
    """Pool `blue`, node n1 holding `count` leases of one block, its watch caught up with its own
    writes. Returns (n1, the IPAM conf, the leases, the block's name)."""
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE)
    n1 = nodes("n1")
    mine = [take(n1.store(), conf, owner(f"c{i}")) for i in range(count)]
    name = block_name(ipaddress.ip_network(f"{mine[0].address}/26", strict=False))
    wait_for(lambda: n1.cache.overlay_size() == 0, what="the watch to catch up with our writes")
    return n1, conf, mine, name


def borrow_next(cluster, name: str, last) -> str:  # noqa: F811
    """Node n2 takes the address after `last` in block `name`, written straight into the API
    server's store (behind any cache's back, as a write no watch delivered yet). Returns it."""
    b = server_block(cluster, name)
    nxt = str(last + 1)
    b.allocations[nxt] = model.Allocation("other", "eth0", "blue", "n2", created=T0)
    cluster.api.store.replace(cluster.api.store.rt(model.GROUP, model.VERSION, model.BLOCKS, False), None, name,
                              b.to_object())
    return nxt


# --- the cache-served path -------------------------------------------------------------------

def test_each_add_and_del_from_the_cache_is_one_write_and_no_read(cluster, nodes):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE)
    n1 = nodes("n1")
    first = take(n1.store(), conf, owner("c0"))
    [b] = cluster.blocks().values()
    assert b.node == "n1" and first.address in b.cidr and first.fresh
    pool = Pool.from_object(cluster.api.store.items(model.GROUP, model.VERSION, model.POOLS)[0])
    assert b.cidr == next(probe_blocks(pool, Space(conf.range_sets[0]), "n1"))     # the node's first probe
    assert b.to_object()["metadata"]["labels"][SIZE_LABEL] == "26"

    cluster.api.reset_counts()
    got = [take(n1.store(), conf, owner(f"c{i}")) for i in range(1, 21)]
    print(f"\n20 ADDs from the cache: {requests(cluster.api)}")
    assert requests(cluster.api) == {"update": 20}          # no LIST of pools or blocks, no GET
    assert len({lease.address for lease in got + [first]}) == 21
    held = server_block(cluster, b.name).allocations
    assert {str(lease.address) for lease in got + [first]} == set(held)
    assert all(held[str(lease.address)].container_id == f"c{i + 1}" for i, lease in enumerate(got))

    cluster.api.reset_counts()
    again = take(n1.store(), conf, owner("c3"))             # idempotent ADD: found in the cache
    assert again.address == got[2].address and requests(cluster.api) == {}
    gone = n1.store().release(owner("c3"))                  # DEL: one write
    assert [lease.address for lease in gone] == [got[2].address]
    assert requests(cluster.api) == {"update": 1}
    assert str(got[2].address) not in server_block(cluster, b.name).allocations
    assert n1.cache.stats["hits"] >= 22 and n1.cache.stats["misses"] == 0 and n1.cache.stats["refreshes"] == 0


def test_a_store_without_a_synced_cache_reads_the_api_as_the_one_shot_path(cluster, tmp_path):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE)
    take(cluster.store("n1"), conf, owner("c0"))

    class NeverSynced:         # the informers' first list never arrives
        def wait_synced(self, timeout):
            return False

        def add_handler(self, handler):
            pass

    class Objects:
        def informer(self, kind):
            return NeverSynced()

    from multiplex.ipam.kube.cache import IPAMCache

    cache = IPAMCache(Objects(), "n1", sync_timeout=0.01)
    cluster.api.reset_counts()
    lease = take(KubeStore(cluster.client("n1"), "n1", cache=cache), conf, owner("c1"))
    assert requests(cluster.api) == {"list": 2, "update": 1}   # today's path: pools, blocks, the write
    assert lease.address in next(iter(cluster.blocks().values())).cidr
    assert cache.stats["misses"] == 1


# --- a stale cache: 409, refresh, success ------------------------------------------------------

def test_a_stale_cache_costs_one_409_and_one_get_then_succeeds(cluster, nodes):  # noqa: F811
    n1, conf, mine, name = node_with_leases(cluster, nodes, 3)

    n1.informer("ipblocks").stop()        # the watch is stuck: the cache will not see the next change
    # another node borrows the next address of n1's block behind the cache's back
    nxt = borrow_next(cluster, name, mine[-1].address)

    cluster.api.reset_counts()
    store = n1.store()
    got = take(store, conf, owner("c3"))
    print(f"\nADD on a stale cache: {requests(cluster.api)}, conflicts {store.stats['conflicts']}")
    assert cluster.api.count("update", code=409) == 1
    assert requests(cluster.api) == {"update": 2, "get": 1}     # 409, the refresh, the write
    assert got.address != ipaddress.ip_address(nxt) and store.stats["conflicts"] == 1
    held = server_block(cluster, name).allocations
    assert held[nxt].container_id == "other" and held[str(got.address)].container_id == "c3"
    assert n1.cache.stats["refreshes"] == 1
    # the refreshed state is kept: the next ADD is one write again, with no conflict
    cluster.api.reset_counts()
    take(n1.store(), conf, owner("c4"))
    assert requests(cluster.api) == {"update": 1}


def test_a_block_deleted_behind_the_cache_is_claimed_again(cluster, nodes):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE)
    n1 = nodes("n1")
    lease = take(n1.store(), conf, owner("c0"))
    n1.store().release(owner("c0"))
    name = block_name(ipaddress.ip_network(f"{lease.address}/26", strict=False))
    n1.informer("ipblocks").stop()
    cluster.api.store.delete_object(model.GROUP, model.VERSION, model.BLOCKS, name)   # GC released it
    got = take(n1.store(), conf, owner("c1"))
    assert cluster.api.count("update", code=404) == 1
    [b] = cluster.blocks().values()
    assert b.node == "n1" and b.allocations[str(got.address)].container_id == "c1"


# --- the watch drops and resumes ---------------------------------------------------------------

def test_a_watch_cut_and_resumed_delivers_what_changed_meanwhile(cluster, nodes):  # noqa: F811
    n1, conf, mine, name = node_with_leases(cluster, nodes, 2)
    inf = n1.informer("ipblocks")
    lists, watches = inf.stats["lists"], inf.stats["watches"]

    cluster.api.stop()                     # connections cut; the API is down
    nxt = borrow_next(cluster, name, mine[-1].address)    # meanwhile another node borrows the next address
    assert inf.lag() >= 0
    cluster.api.start()
    wait_for(lambda: nxt in (n1.cache.block(name).allocations if n1.cache.block(name) else {}),
             what="the resumed watch to deliver the borrow")
    assert inf.stats["watches"] > watches and inf.stats["lists"] == lists and inf.stats["relists"] == 0

    cluster.api.reset_counts()
    got = take(n1.store(), conf, owner("c2"))
    assert requests(cluster.api) == {"update": 1} and cluster.api.count("update", code=409) == 0
    assert str(got.address) != nxt
    held = server_block(cluster, name).allocations
    assert held[nxt].container_id == "other" and held[str(got.address)].container_id == "c2"


# --- claims without a storm ---------------------------------------------------------------------

def test_nodes_booting_at_once_claim_spread_blocks_without_listing_the_pool(cluster, nodes):  # noqa: F811
    cluster.pool("wide", "198.18.0.0/16", blockSize=26)      # 1024 blocks
    conf = ipam_conf("198.18.0.0/16", network="wide")
    fleet = [nodes(f"boot-{i}") for i in range(24)]
    cluster.api.reset_counts()
    stores = [n.store() for n in fleet]
    leases = [take(s, conf, owner(f"c-{s.node}", network="wide")) for s in stores]
    blocks = cluster.blocks()
    print(f"\n24 nodes' first ADD: {requests(cluster.api)}; blocks {len(blocks)}")
    assert len(blocks) == 24 and sorted(b.node for b in blocks.values()) == sorted(n.node for n in fleet)
    assert len({lease.address for lease in leases}) == 24
    # per node: its create, nothing else (the pool's block sizes were checked at warm-up); none lost
    assert requests(cluster.api) == {"create": 24}
    assert all(n.cache.stats["uniform_checks"] == 1 for n in fleet)
    assert sum(s.stats["claims_lost"] for s in stores) == 0 and sum(s.stats["claims"] for s in stores) == 24
    starts = sorted(int(b.cidr.network_address) for b in blocks.values())
    assert starts[-1] - starts[0] > 2 ** 14            # spread over the pool, not packed at its start


def test_with_the_nodes_watched_a_cluster_booting_at_once_loses_no_claim(cluster, nodes):  # noqa: F811
    cluster.pool("snug", "198.18.73.0/24", blockSize=29)     # 32 blocks for 24 nodes
    conf = ipam_conf("198.18.73.0/24", network="snug")
    names = [f"b{i:02d}" for i in range(24)]
    for n in names:
        cluster.node(n)
    fleet = [nodes(n, watch_nodes=True) for n in names]
    for n in fleet:
        assert n.informer("nodes").wait_synced(10)
    stores = [n.store() for n in fleet]
    for s in stores:
        take(s, conf, owner(f"c-{s.node}", network="snug"))
    by_rank = sum(s.stats["claims_lost"] for s in stores)
    # the same claims by name hash alone (no nodes informer), on a fresh pool of the same shape
    cluster.pool("snug2", "198.18.74.0/24", blockSize=29)
    conf2 = ipam_conf("198.18.74.0/24", network="snug2")
    hashed = [nodes(f"h{n}") for n in names]
    stores2 = [n.store() for n in hashed]
    for s in stores2:
        take(s, conf2, owner(f"c-{s.node}", network="snug2"))
    by_hash = sum(s.stats["claims_lost"] for s in stores2)
    print(f"\n24 nodes, 32 blocks: lost claims {by_rank} starting by rank, {by_hash} by name hash")
    assert by_rank == 0 and by_hash > 0
    assert len({b.node for b in cluster.blocks().values()}) == 48


def test_a_lost_probe_is_counted_and_the_next_block_is_tried(cluster, nodes):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE)
    n1 = nodes("n1")
    pool = Pool.from_object(cluster.api.store.items(model.GROUP, model.VERSION, model.POOLS)[0])
    first = next(probe_blocks(pool, Space(conf.range_sets[0]), "n1"))
    cluster.api.store.add(Block(first, "blue", BLUE, "n9").to_object(), model.BLOCKS)   # n9 won that one
    cluster.api.reset_counts()
    with n1.store() as store:
        lease = take(store, conf, owner("c0"))
    assert lease.address not in first and cluster.api.count("create", code=409) == 1
    # the lost create and the next probe: no GET (the create was sent once, so it is not ours)
    assert requests(cluster.api) == {"create": 2}
    assert store.stats["claims_lost"] == 1 and n1.cache.stats["claims_lost"] == 1
    assert block_name(first) in n1.cache.known_taken()


def test_a_pool_with_blocks_of_another_size_is_claimed_from_the_list(cluster, nodes):  # noqa: F811
    cluster.pool("blue", BLUE, blockSize=26)
    conf = ipam_conf(BLUE)
    odd = ipaddress.ip_network("198.18.70.0/25")             # made when blockSize was 25
    cluster.api.store.add(Block(odd, "blue", BLUE, "n9").to_object(), model.BLOCKS)
    n1 = nodes("n1")
    lease = take(n1.store(), conf, owner("c0"))
    [mine] = [b for b in cluster.blocks().values() if b.node == "n1"]
    assert not mine.cidr.overlaps(odd) and lease.address in mine.cidr


# --- the daemon lends its cache ------------------------------------------------------------------

def test_the_daemon_lends_its_cache_to_a_store_opened_for_its_node_and_api_only(cluster, tmp_path):  # noqa: F811
    """The daemon's services (the call's req.ctx.services) lend the cache to a store of its node on
    its API server only; a store opened without them (a one-shot call) reads the API."""
    cluster.pool("blue", BLUE)
    objects = KubeObjects(cluster.api.kubeconfig, "n1", backoff=0.05, max_backoff=0.3)
    services = DaemonServices(objects, cluster.api.kubeconfig, None)
    try:
        ipam = {"type": "multiplex-ipam", "store": "kubernetes", "range": BLUE, "dataDir": str(tmp_path / "ipam")}
        mine = config.parse({"name": "blue", "ipam": dict(ipam, nodeName="n1")}, kubeconfig=cluster.api.kubeconfig)
        other = config.parse({"name": "blue", "ipam": dict(ipam, nodeName="n2")}, kubeconfig=cluster.api.kubeconfig)
        with KubeStore.open(mine, services=services) as store:
            assert store.cache is services.ipam_cache(cluster.api.kubeconfig, "n1").cache
            take(store, mine, owner("c0"))
        with KubeStore.open(other, services=services) as store:   # another node's call: not this daemon's cache
            assert store.cache is None
        with KubeStore.open(mine) as store:                       # no services: the one-shot path
            assert store.cache is None
        cluster.api.reset_counts()
        with KubeStore.open(mine, services=services) as store:
            take(store, mine, owner("c1"))
        assert requests(cluster.api) == {"update": 1}
        cache = services.ipam_cache(cluster.api.kubeconfig, "n1").cache
        assert cache.stats["claims"] == 1 and cache.stats["hits"] >= 2
        assert objects.started()["ipblocks"].label_selector == user_label("n1")
    finally:
        services.close()
        objects.stop()


def test_the_daemon_kinds_name_the_ipam_resources():
    from multiplex.k8s.objects import _kube_kinds

    kinds = _kube_kinds()
    assert (kinds["ippools"].resource.group, kinds["ippools"].resource.version,
            kinds["ippools"].resource.plural) == (model.GROUP, model.VERSION, model.POOLS)
    assert kinds["ipblocks"].resource.plural == model.BLOCKS
    long = "n" * 80
    assert kinds["ipblocks"].labels_for(long) == user_label(long) and len(user_label(long).split("/")[1]) <= 63


# --- node churn: GC leaves nothing of gone nodes --------------------------------------------------

def test_gc_after_node_churn_frees_every_address_and_block_of_gone_nodes(cluster, nodes):  # noqa: F811
    cluster.pool("small", "198.18.71.0/26", blockSize=28)     # 4 blocks of 14 addresses
    conf = ipam_conf("198.18.71.0/26", network="small")
    for n in ("n1", "n2", "n3"):
        cluster.node(n)
    fleet = {n: nodes(n) for n in ("n1", "n2", "n3")}
    held = {}
    for n, node in fleet.items():
        for i in range(5):
            pod = f"{n}-p{i}"
            cluster.api.store.add_pod(pod, node_name=n, uid=f"u-{pod}")
            held[pod] = take(node.store(), conf, owner(f"c-{pod}", network="small", pod=pod, uid=f"u-{pod}"))
    # the pool runs short: n3 fills a second block, takes the last, then borrows from n1's
    for i in range(5, 40):
        pod = f"n3-p{i}"
        cluster.api.store.add_pod(pod, node_name="n3", uid=f"u-{pod}")
        held[pod] = take(fleet["n3"].store(), conf, owner(f"c-{pod}", network="small", pod=pod, uid=f"u-{pod}"))
    assert len({lease.address for lease in held.values()}) == len(held)
    borrowed = [b for b in cluster.blocks().values() if b.borrowed()]
    assert borrowed, "the test needs a borrow"

    # n2 leaves cleanly (drained: DELs, then its Node deleted); n1 never comes back (Node deleted,
    # no DEL ever ran, its pods deleted by the API); n4 joins
    for i in range(5):
        fleet["n2"].store().release(owner(f"c-n2-p{i}", network="small", pod=f"n2-p{i}"))
        cluster.api.store.delete_pod(f"n2-p{i}")
    for i in range(5):
        cluster.api.store.delete_pod(f"n1-p{i}")
    for gone in ("n1", "n2"):
        fleet[gone].stop()
        cluster.api.store.delete_node(gone)
    cluster.node("n4")
    n4 = nodes("n4")

    first = gc.collect(cluster.client("gc"), GRACE, now=lambda: T0)
    assert first.count("marked") == 5 and first.count("freed") == 0
    done = gc.collect(cluster.client("gc"), GRACE, now=lambda: T0 + GRACE)
    print("\n" + "\n".join(done.lines()))
    blocks = cluster.blocks().values()
    assert {b.node for b in blocks} <= {"n3", "n4"}
    assert all(a.node in ("n3", "n4") for b in blocks for a in b.allocations.values())
    assert {a.container_id for b in blocks for a in b.allocations.values()} == {
        f"c-n3-p{i}" for i in range(40)}
    assert not any(b.borrowed() for b in blocks)            # n3's borrowed addresses now in its own block
    assert all(user_label("n1") not in b.labels() and user_label("n2") not in b.labels() for b in blocks)

    # the survivors' caches follow: n3 allocates from its handed-over block, n4 claims a freed one
    wait_for(lambda: all(b.node == "n3" for b in fleet["n3"].cache.node_blocks()), what="n3's cache")
    cluster.api.store.add_pod("n4-p0", node_name="n4", uid="u-n4")
    got = take(n4.store(), conf, owner("c-n4", network="small", pod="n4-p0", uid="u-n4"))
    assert got.address not in {lease.address for p, lease in held.items() if p.startswith("n3")}
    assert gc.collect(cluster.client("gc"), GRACE, now=lambda: T0 + 2 * GRACE).actions == []
