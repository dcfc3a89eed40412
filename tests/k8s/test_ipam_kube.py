"""The kubernetes IPAM store against the test API server, over real HTTP with the unchanged
`kubernetes` client: blocks claimed by create, allocations written with resourceVersion, borrowing,
idempotent and requested addresses, IPv6 and dual stack, concurrency across simulated nodes, and a
clear CNI error for every bad input (with nothing left behind)."""
from __future__ import annotations

import copy
import ipaddress
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from multiplex.cni import errors
from multiplex.cni.errors import CNIError
from multiplex.ipam.kube.model import (NODE_LABEL, POOL_LABEL, Block, block_name, label_value, user_label)
from tests.ipam_contract import check_gc_keeps_whole_containers_of_its_network_only
from tests.k8s.ipam_kube_support import node_routes, cluster, crd_documents, ipam_conf, owner, take  # noqa: F401

BLUE = "198.18.64.0/24"


def block_names(cluster) -> list[str]:  # noqa: F811
    return sorted(cluster.blocks(), key=lambda n: ipaddress.ip_network(cluster.blocks()[n].cidr).network_address)


# --- the hot path ----------------------------------------------------------------------------

def test_first_add_claims_a_block_then_each_add_is_one_list_and_one_write(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE)
    first = take(cluster.store("n1"), conf, owner("c0"))
    [b] = cluster.blocks().values()
    assert b.node == "n1" and b.cidr.prefixlen == 26 and first.address in b.cidr and first.fresh
    assert first.pool == BLUE and b.allocations[str(first.address)].container_id == "c0"

    cluster.api.reset_counts()
    got = [take(cluster.store("n1"), conf, owner(f"c{i}")) for i in range(1, 11)]
    counts = cluster.api.counts()
    print(f"\n10 ADDs on a node with a block: {dict(counts)}")
    # per ADD: LIST pools, LIST the node's blocks, PUT its block; no create, no other block touched
    assert counts == Counter({"list": 20, "update": 10})
    assert all(lease.address in b.cidr for lease in got)
    assert len({lease.address for lease in got + [first]}) == 11
    # the cursor moves on: a released address is not handed out again at once
    cluster.store("n1").release(owner("c5"))
    assert take(cluster.store("n1"), conf, owner("c11")).address == got[-1].address + 1


def test_add_is_idempotent_and_del_releases(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE)
    s = cluster.store("n1")
    a = take(s, conf, owner("c1", pod="web-0", uid="u1"))
    again = take(cluster.store("n1"), conf, owner("c1", pod="web-0", uid="u1"))
    assert again.address == a.address and not again.fresh
    other_if = take(s, conf, owner("c1", "net1"))
    other_net = take(s, conf, owner("c1", network="red"))
    assert len({a.address, other_if.address, other_net.address}) == 3
    alloc = cluster.block(block_name(ipaddress.ip_network(f"{a.address}/26", strict=False))).allocations
    assert alloc[str(a.address)].pod_name == "web-0" and alloc[str(a.address)].pod_uid == "u1"

    gone = cluster.store("n1").release(owner("c1"))
    assert [lease.address for lease in gone] == [a.address]
    assert cluster.store("n1").release(owner("c1")) == []          # DEL twice: fine
    assert {lease.address for lease in s.leases()} == {other_if.address, other_net.address}
    assert s.leases(owner=owner("c1", "net1"))[0].address == other_if.address
    # the empty part of the block stays affine to n1
    assert [b.node for b in cluster.blocks().values()] == ["n1"]


def test_requested_addresses_are_honoured_or_refused(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE, exclude=["198.18.64.200/29"])
    got = take(cluster.store("n1"), conf, owner("c1"), requested="198.18.64.150")
    assert str(got.address) == "198.18.64.150" and got.fresh
    b = cluster.block("v4-198-18-64-128-26")
    assert b.node == "n1"        # the block did not exist: claimed with the address in it

    # n2 asks for an address of n1's block: honoured, and borrowed
    lent = take(cluster.store("n2"), conf, owner("c2"), requested="198.18.64.151")
    b = cluster.block("v4-198-18-64-128-26")
    assert b.node == "n1" and b.allocations[str(lent.address)].node == "n2"
    assert b.to_object()["spec"]["allocations"][str(lent.address)]["borrowed"] is True
    assert node_routes(cluster.store("n2")).borrowed == (lent.address,)

    with pytest.raises(CNIError) as e:
        take(cluster.store("n3"), conf, owner("c3", pod="db-0"), requested="198.18.64.150")
    assert e.value.code == errors.ADDRESS_UNAVAILABLE
    assert e.value.msg == "requested address 198.18.64.150 is unavailable: in use by another attachment"
    assert "c1" not in e.value.msg + e.value.details and "n1" not in e.value.msg + e.value.details
    assert "field: $.runtimeConfig.ips[0]" in e.value.details
    for bad, why in (("198.18.64.1", "gateway"), ("198.18.64.201", "excluded"), ("198.18.64.255", "broadcast")):
        with pytest.raises(CNIError) as e:
            take(cluster.store("n3"), conf, owner("c3"), requested=bad)
        assert e.value.code == errors.ADDRESS_UNAVAILABLE and why in e.value.msg, bad
    # the holder asking again for the same address: its lease; for another one: refused
    assert take(cluster.store("n1"), conf, owner("c1"), requested="198.18.64.150").address == got.address
    with pytest.raises(CNIError) as e:
        take(cluster.store("n1"), conf, owner("c1"), requested="198.18.64.152")
    assert e.value.code == errors.ADDRESS_UNAVAILABLE and "already holds 198.18.64.150" in e.value.msg
    assert set(cluster.allocations()) == {"198.18.64.150", "198.18.64.151"}


def test_range_slice_and_exclusions_decide_what_a_block_hands_out(cluster):  # noqa: F811
    cluster.pool("blue", BLUE, blockSize=28)
    conf = ipam_conf([[{"subnet": BLUE, "rangeStart": "198.18.64.40", "rangeEnd": "198.18.64.60"}]],
                     exclude=["198.18.64.48/30"])
    got = [take(cluster.store("n1"), conf, owner(f"c{i}")) for i in range(17)]
    assert sorted(str(lease.address).rsplit(".", 1)[1] for lease in got) == sorted(
        str(n) for n in list(range(40, 48)) + list(range(52, 61)))
    with pytest.raises(CNIError) as e:
        take(cluster.store("n1"), conf, owner("c99"))
    assert e.value.code == errors.IPAM_EXHAUSTED and "exhausted: 17 of 17" in e.value.msg
    # blocks: .32/28 and .48/28 only (the slice), both n1's
    assert sorted(cluster.blocks()) == ["v4-198-18-64-32-28", "v4-198-18-64-48-28"]


# --- borrowing, takeover ---------------------------------------------------------------------

def test_a_full_pool_makes_the_next_node_borrow_and_release_returns_the_address(cluster):  # noqa: F811
    # 198.18.70.0/28 in /30 blocks: 4 blocks, usable .2-.3 | .4-.7 | .8-.11 | .12-.14
    cluster.pool("tiny", "198.18.70.0/28", blockSize=30)
    conf = ipam_conf("198.18.70.0/28", network="tiny")
    for n in range(1, 5):
        take(cluster.store(f"n{n}"), conf, owner(f"n{n}-a", network="tiny"))
    assert sorted(b.node for b in cluster.blocks().values()) == ["n1", "n2", "n3", "n4"]

    s5 = cluster.store("n5")
    lent = take(s5, conf, owner("n5-a", network="tiny"))
    assert lent.fresh and not any(b.node == "n5" for b in cluster.blocks().values())
    [home] = [b for b in cluster.blocks().values() if lent.address in b.cidr]
    a = home.allocations[str(lent.address)]
    assert a.node == "n5" and home.node != "n5"
    obj = next(o for o in cluster.objects() if o["metadata"]["name"] == home.name)
    assert obj["spec"]["allocations"][str(lent.address)]["borrowed"] is True
    assert obj["metadata"]["labels"][user_label("n5")] == "borrowed"
    assert obj["metadata"]["labels"][NODE_LABEL] == home.node
    routes = node_routes(cluster.store("n5"))
    assert routes.blocks == () and routes.borrowed == (lent.address,)
    print(f"\nn5 borrowed {lent.address} from {home.name} (affine to {home.node}); stats {dict(s5.stats)}")

    # idempotent ADD finds the borrowed lease too
    assert take(cluster.store("n5"), conf, owner("n5-a", network="tiny")).address == lent.address
    # release returns it to its block: the block stays its node's, n5's label goes
    assert [x.address for x in cluster.store("n5").release(owner("n5-a", network="tiny"))] == [lent.address]
    home2 = cluster.block(home.name)
    assert home2.node == home.node and str(lent.address) not in home2.allocations
    obj = next(o for o in cluster.objects() if o["metadata"]["name"] == home.name)
    assert user_label("n5") not in obj["metadata"]["labels"]

    # fill everything: 10 usable addresses in all; then 102 naming the pool
    for i in range(20):
        try:
            take(cluster.store(f"n{i % 5 + 1}"), conf, owner(f"fill{i}", network="tiny"))
        except CNIError as e:
            assert e.code == errors.IPAM_EXHAUSTED and "pool 198.18.70.0/28 exhausted: 13 of 13" in e.msg
            assert "field: $.ipam.range" in e.details and "network: tiny" in e.details
            break
    else:
        pytest.fail("the pool never ran out")
    assert len(cluster.allocations()) == 13


def test_an_empty_block_of_another_node_is_taken_over_when_the_pool_runs_short(cluster):  # noqa: F811
    cluster.pool("tiny", "198.18.71.0/28", blockSize=29)       # two blocks
    conf = ipam_conf("198.18.71.0/28", network="tiny")
    take(cluster.store("n1"), conf, owner("a", network="tiny"))
    take(cluster.store("n2"), conf, owner("b", network="tiny"))
    cluster.store("n1").release(owner("a", network="tiny"))      # n1's block: empty, still n1's
    assert sorted(b.node for b in cluster.blocks().values()) == ["n1", "n2"]
    s3 = cluster.store("n3")
    got = take(s3, conf, owner("c", network="tiny"))
    [b] = [b for b in cluster.blocks().values() if got.address in b.cidr]
    assert b.node == "n3" and s3.stats["takeovers"] == 1 and not b.borrowed()
    assert sorted(x.node for x in cluster.blocks().values()) == ["n2", "n3"]


def test_a_changed_block_size_never_makes_blocks_overlap(cluster):  # noqa: F811
    cluster.pool("blue", BLUE, blockSize=26)
    conf = ipam_conf(BLUE)
    first = take(cluster.store("n1"), conf, owner("a"))
    [old] = cluster.blocks().values()
    pool = cluster.api.store.get_object("ipam.multiplex.dev", "v1alpha1", "ippools", "blue")
    pool["spec"]["blockSize"] = 28        # the CRD refuses this (immutable); an old server would not
    cluster.api.store.replace(cluster.api.store.rt("ipam.multiplex.dev", "v1alpha1", "ippools", False), None,
                              "blue", pool)
    inside = take(cluster.store("n2"), conf, owner("b"), requested=str(old.cidr[20]))
    assert inside.address in old.cidr and cluster.block(old.name).allocations[str(inside.address)].node == "n2"
    got = [take(cluster.store(f"n{3 + i % 4}"), conf, owner(f"c{i}")) for i in range(40)]
    blocks = list(cluster.blocks().values())
    assert sorted(b.cidr.prefixlen for b in blocks)[0] == 26 and {b.cidr.prefixlen for b in blocks[1:]} <= {26, 28}
    for i, a in enumerate(blocks):
        assert not any(a.cidr.overlaps(b.cidr) for b in blocks[i + 1:]), (a.cidr, [b.cidr for b in blocks])
    assert len({x.address for x in got + [first, inside]}) == 42


# --- IPv6, dual stack ------------------------------------------------------------------------

def test_ipv6_pool_blocks_are_122_by_default(cluster):  # noqa: F811
    cluster.pool("v6", "fd00:64::/64")
    conf = ipam_conf("fd00:64::/64", network="v6")
    got = [take(cluster.store("n1"), conf, owner(f"c{i}", network="v6")) for i in range(3)]
    [b] = cluster.blocks().values()
    assert b.cidr.prefixlen == 122 and b.name.startswith("v6-fd00-64--")
    assert all(lease.address in b.cidr and lease.pool == "fd00:64::/64" for lease in got)
    assert ipaddress.ip_address("fd00:64::1") not in {lease.address for lease in got}   # the gateway
    lent = take(cluster.store("n2"), conf, owner("x", network="v6"), requested=str(b.cidr[40]))
    assert node_routes(cluster.store("n2")).borrowed == (lent.address,)


def test_dual_stack_gets_one_address_per_family_and_del_releases_both(cluster):  # noqa: F811
    cluster.pool("blue4", "198.18.72.0/24")
    cluster.pool("blue6", "fd00:72::/64", blockSize=120)
    conf = ipam_conf([[{"subnet": "198.18.72.0/24"}], [{"subnet": "fd00:72::/64"}]])
    s = cluster.store("n1")
    v4, v6 = take(s, conf, owner("c1"), n=0), take(s, conf, owner("c1"), n=1)
    assert v4.address.version == 4 and v6.address.version == 6
    assert sorted(b.cidr.prefixlen for b in cluster.blocks().values()) == [26, 120]
    assert take(cluster.store("n1"), conf, owner("c1"), n=1).address == v6.address
    assert {x.address for x in cluster.store("n1").release(owner("c1"))} == {v4.address, v6.address}
    assert cluster.allocations() == {}


# --- concurrency ------------------------------------------------------------------------------

def run_nodes(cluster, conf, nodes: int, per_node: int, workers: int, lock: bool = True):  # noqa: F811
    """`nodes` simulated nodes, each running `per_node` ADDs on `workers` threads (a fresh store per
    ADD, as each CNI call is a process of its own). Returns (leases, conflicts Counter, errors)."""
    results, stats, failures = [], Counter(), []
    mutex = threading.Lock()

    def one(node: str, i: int):
        s = cluster.store(node, lock=lock)
        try:
            lease = take(s, conf, owner(f"{node}-c{i}", pod=f"{node}-pod{i}"))
        except CNIError as e:
            with mutex:
                failures.append(e)
                stats.update(s.stats)
            return
        with mutex:
            results.append((node, lease))
            stats.update(s.stats)

    pools = [ThreadPoolExecutor(workers) for _ in range(nodes)]
    futs = [pools[n].submit(one, f"n{n + 1}", i) for i in range(per_node) for n in range(nodes)]
    for f in futs:
        f.result()
    for p in pools:
        p.shutdown()
    return results, stats, failures


def print_conflicts(title: str, stats: Counter, cluster) -> None:  # noqa: F811
    print(f"\n{title}: conflicts (409 on a block write) {stats['conflicts']}, block claims {stats['claims']}, "
          f"claims lost to another node {stats['claims_lost']}, takeovers {stats['takeovers']}, "
          f"borrows {stats['borrows']}, retries {stats['retries']}; API {dict(cluster.api.counts())}")


def test_8_nodes_allocate_400_addresses_concurrently_with_no_duplicate(cluster):  # noqa: F811
    cluster.pool("big", "198.18.80.0/22")
    conf = ipam_conf("198.18.80.0/22")
    cluster.api.reset_counts()
    results, stats, failures = run_nodes(cluster, conf, nodes=8, per_node=50, workers=3)
    print_conflicts("8 nodes x 50 ADDs (3 at a time per node, node lock on)", stats, cluster)
    assert failures == []
    addrs = [lease.address for _, lease in results]
    assert len(addrs) == 400 and len(set(addrs)) == 400
    assert cluster.allocations() == {str(lease.address): lease.owner.container_id for _, lease in results}
    # each node took its addresses from its own block(s): nothing borrowed
    blocks = cluster.blocks()
    for node, lease in results:
        [b] = [b for b in blocks.values() if lease.address in b.cidr]
        assert b.node == node and b.allocations[str(lease.address)].node == node
    assert stats["borrows"] == 0


def test_without_the_node_lock_concurrent_adds_conflict_and_retry_but_never_collide(cluster):  # noqa: F811
    """Same-node ADDs race on the node's block: 409s, re-reads, retries; still no duplicate."""
    cluster.pool("big", "198.18.84.0/22")
    conf = ipam_conf("198.18.84.0/22")
    results, stats, failures = run_nodes(cluster, conf, nodes=4, per_node=30, workers=4, lock=False)
    print_conflicts("4 nodes x 30 ADDs (4 at a time per node, no node lock)", stats, cluster)
    assert failures == [] or all(e.code == errors.TRY_AGAIN_LATER for e in failures)
    addrs = [lease.address for _, lease in results]
    assert len(set(addrs)) == len(addrs) == 120 - len(failures)
    assert len(cluster.allocations()) == len(addrs)
    assert stats["conflicts"] > 0


def test_a_small_pool_under_concurrency_claims_borrows_and_hands_out_every_address_once(cluster):  # noqa: F811
    # 198.18.88.0/25 in /28 blocks: 8 blocks, 128 - network - broadcast - gateway = 125 usable.
    # 6 nodes ask for 20 each: 8 blocks for 6 nodes, so at least 4 of them must borrow.
    cluster.pool("small", "198.18.88.0/25", blockSize=28)
    conf = ipam_conf("198.18.88.0/25")
    results, stats, failures = run_nodes(cluster, conf, nodes=6, per_node=20, workers=2)
    print_conflicts("6 nodes x 20 ADDs on a 125-address pool of 8 blocks", stats, cluster)
    assert failures == []
    addrs = [lease.address for _, lease in results]
    assert len(set(addrs)) == len(addrs) == 120
    assert stats["borrows"] >= 4
    borrowed = 0
    for node, lease in results:
        [b] = [b for b in cluster.blocks().values() if lease.address in b.cidr]
        assert b.allocations[str(lease.address)].node == node
        borrowed += b.node != node
    assert borrowed == stats["borrows"]
    # the last 5 addresses go too, then the pool is exhausted for everyone
    more = [take(cluster.store("n7"), conf, owner(f"late{i}")) for i in range(5)]
    assert len({lease.address for lease in more} | set(addrs)) == 125
    with pytest.raises(CNIError) as e:
        take(cluster.store("n1"), conf, owner("one-too-many"))
    assert e.value.code == errors.IPAM_EXHAUSTED and "exhausted: 125 of 125" in e.value.msg


# --- the objects match the CRDs ----------------------------------------------------------------

def test_blocks_written_by_the_store_validate_against_the_crd(cluster):  # noqa: F811
    cluster.pool("blue", BLUE, nodeSelector={"zone": "a"})
    cluster.node("n1", labels={"zone": "a"})
    conf = ipam_conf(BLUE)
    take(cluster.store("n1"), conf, owner("c1", pod="web", uid="u"))
    take(cluster.store("n1"), conf, owner("c2"), requested="198.18.64.250")
    crds = {d["spec"]["names"]["kind"]: d["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for d in crd_documents()}
    for kind, objs in (("IPBlock", cluster.objects()), ("IPPool", cluster.api.store.items(
            "ipam.multiplex.dev", "v1alpha1", "ippools"))):
        schema = copy.deepcopy(crds[kind])
        schema["properties"]["spec"]["additionalProperties"] = False
        for obj in objs:
            jsonschema.Draft7Validator(schema).validate(obj)
            assert set(obj["spec"]) <= set(schema["properties"]["spec"]["properties"])
    for obj in cluster.objects():
        labels = obj["metadata"]["labels"]
        assert labels[POOL_LABEL] == "blue" and labels[user_label("n1")] == "affine"


def test_long_node_names_fit_in_labels(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    node = "node-" + "x" * 70 + ".example.com"
    assert len(label_value(node)) <= 63 and label_value(node) != label_value(node + "y")
    got = take(cluster.store(node), ipam_conf(BLUE), owner("c1"))
    assert node_routes(cluster.store(node)).blocks == (ipaddress.ip_network(f"{got.address}/26", strict=False),)
    assert cluster.store(node).release(owner("c1"))


# --- pools: selection, node selector, disabled ---------------------------------------------------

def test_node_selector_and_disabled_pools(cluster):  # noqa: F811
    cluster.pool("zoned", BLUE, nodeSelector={"zone": "a"})
    cluster.node("in-a", labels={"zone": "a"})
    cluster.node("in-b", labels={"zone": "b"})
    conf = ipam_conf(BLUE)
    assert take(cluster.store("in-a"), conf, owner("c1")).fresh
    for node in ("in-b", "unregistered"):
        with pytest.raises(CNIError) as e:
            take(cluster.store(node), conf, owner("c2"))
        assert e.value.code == errors.IPAM_EXHAUSTED
        assert f"IPPool zoned does not select node {node} (nodeSelector zone=a)" in e.value.msg
        assert "field: $.ipam.range" in e.value.details
    with pytest.raises(CNIError) as e:
        take(cluster.store("in-b"), conf, owner("c2"), requested="198.18.64.77")
    assert e.value.code == errors.ADDRESS_UNAVAILABLE and "does not select node in-b" in e.value.msg

    cluster.pool("off", "198.18.65.0/24", disabled=True)
    off = ipam_conf("198.18.65.0/24", network="off")
    with pytest.raises(CNIError) as e:
        take(cluster.store("in-a"), off, owner("c3", network="off"))
    assert e.value.code == errors.IPAM_EXHAUSTED and "IPPool off is disabled" in e.value.msg
    assert len(cluster.allocations()) == 1


# --- bad inputs: a clear CNI error, nothing left behind -------------------------------------------

def test_a_subnet_without_a_pool_is_a_config_error_naming_the_field(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    with pytest.raises(CNIError) as e:
        take(cluster.store("n1"), ipam_conf("198.18.99.0/24"), owner("c1"))
    assert e.value.code == errors.INVALID_CONFIG
    assert "no IPPool has CIDR 198.18.99.0/24" in e.value.msg
    assert "field: $.ipam.range.subnet" in e.value.details and "198.18.64.0/24 (blue)" in e.value.details

    with pytest.raises(CNIError) as e:   # inside a pool, but not its CIDR
        take(cluster.store("n1"), ipam_conf([[{"subnet": "198.18.64.0/25"}]]), owner("c1"))
    assert e.value.code == errors.INVALID_CONFIG and "overlaps IPPool blue (198.18.64.0/24)" in e.value.msg
    assert "field: $.ipam.ranges[0][0].subnet" in e.value.details

    cluster.pool("blue-too", "198.18.64.0/23")
    with pytest.raises(CNIError) as e:   # the admin made overlapping pools: refuse to hand out
        take(cluster.store("n1"), ipam_conf(BLUE), owner("c1"))
    assert e.value.code == errors.INVALID_CONFIG and "overlap" in e.value.msg and "blue-too" in e.value.msg
    assert cluster.objects() == []


def test_malformed_pools_are_skipped_with_a_warning(cluster, capsys):  # noqa: F811
    cluster.pool("broken", "198.18.64.1/24")            # host bits
    cluster.pool("huge-block", "198.18.65.0/24", blockSize=40)
    with pytest.raises(CNIError) as e:
        take(cluster.store("n1"), ipam_conf(BLUE), owner("c1"))
    assert e.value.code == errors.INVALID_CONFIG and "no IPPool has CIDR" in e.value.msg
    err = capsys.readouterr().err
    assert "IPPool broken: spec.cidr '198.18.64.1/24'" in err and "IPPool huge-block: spec.blockSize 40" in err


def test_api_down_is_try_again_later_naming_the_server(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    s = cluster.store("n1")
    s.client.sleep = lambda _: None
    cluster.api.stop()
    with pytest.raises(CNIError) as e:
        take(s, ipam_conf(BLUE), owner("c1"))
    assert e.value.code == errors.TRY_AGAIN_LATER and cluster.api.url.split("//")[1] in e.value.msg
    with pytest.raises(CNIError) as e:
        s.release(owner("c1"))
    assert e.value.code == errors.TRY_AGAIN_LATER
    cluster.api.start()
    assert take(cluster.store("n1"), ipam_conf(BLUE), owner("c1")).fresh


def test_conflicts_that_never_end_give_up_with_code_11(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf = ipam_conf(BLUE)
    take(cluster.store("n1"), conf, owner("c0"))
    s = cluster.store("n1", retries=3)
    s.sleep = lambda _: None
    cluster.api.fail_next(100, 409, verbs="update", resource="ipblocks")
    with pytest.raises(CNIError) as e:
        take(s, conf, owner("c1"))
    assert e.value.code == errors.TRY_AGAIN_LATER and "4 attempts" in e.value.msg
    assert "node: n1" in e.value.details and s.stats["conflicts"] == 4
    assert list(cluster.allocations().values()) == ["c0"]
    cluster.api.faults.clear()
    assert take(cluster.store("n1"), conf, owner("c1")).fresh


def test_missing_rbac_is_a_clear_error(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    cluster.api.deny("create", "ipblocks")
    with pytest.raises(CNIError) as e:
        take(cluster.store("n1"), ipam_conf(BLUE), owner("c1"))
    assert e.value.code == errors.INVALID_ENVIRONMENT
    assert "not allowed to create ipblocks" in e.value.msg and "manifests/rbac" in e.value.details
    assert cluster.objects() == []


def test_malformed_blocks_are_ignored_not_fatal(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    cluster.api.store.add({"apiVersion": "ipam.multiplex.dev/v1alpha1", "kind": "IPBlock",
                           "metadata": {"name": "junk", "labels": {user_label("n1"): "affine"}},
                           "spec": {"cidr": "nonsense", "node": "n1", "pool": "blue"}}, "ipblocks")
    assert take(cluster.store("n1"), ipam_conf(BLUE), owner("c1")).fresh


def test_block_roundtrip_keeps_every_field():
    b = Block(ipaddress.ip_network("198.18.64.0/26"), "blue", BLUE, "n1")
    assert Block.from_object(b.to_object()).to_object() == b.to_object()


def test_the_examples_in_the_docs_are_valid(cluster):  # noqa: F811
    """docs/ipam-kubernetes.md: its IPPool is valid for the CRD and its network config parses."""
    import json
    import os
    import re

    import yaml

    from multiplex.ipam import config
    from multiplex.ipam.kube.model import Pool
    from tests.k8s.ipam_kube_support import REPO

    doc = open(os.path.join(REPO, "docs", "ipam-kubernetes.md"), encoding="utf-8").read()
    [pool] = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    [net] = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", doc, re.S)]
    schema = {d["spec"]["names"]["kind"]: d["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
              for d in crd_documents()}["IPPool"]
    jsonschema.Draft7Validator(schema).validate(pool)
    p = Pool.from_object(pool)
    assert (str(p.cidr), p.block_prefix, p.node_selector) == ("198.18.0.0/16", 26, {"kubernetes.io/os": "linux"})
    conf = config.parse(net)
    assert conf.store == "kubernetes" and [rs.subnets for rs in conf.range_sets] == [["198.18.0.0/16"], ["fd00:10::/64"]]


def test_a_claim_whose_answer_was_lost_is_recognised_as_ours(cluster):  # noqa: F811
    """The client retries a create whose answer was lost and gets AlreadyExists: the block that
    exists is ours, with our allocation in it, so no second address is taken."""
    from multiplex.k8s.errors import AlreadyExists

    cluster.pool("blue", BLUE)
    s = cluster.store("n1")
    real = s.client.create_object

    def create_then_lose_the_answer(*args, **kw):
        real(*args, **kw)
        raise AlreadyExists("ipblocks already exists (the retry of a create that landed)")

    s.client.create_object = create_then_lose_the_answer
    try:
        got = take(s, ipam_conf(BLUE), owner("c1"))
        asked = take(s, ipam_conf(BLUE), owner("c2"), requested="198.18.64.200")
    finally:
        del s.client.create_object
    assert got.fresh and asked.fresh and s.stats["claims"] == 2 and s.stats["claims_lost"] == 0
    assert cluster.allocations() == {str(got.address): "c1", "198.18.64.200": "c2"}


def test_gc_keeps_whole_containers_and_only_its_namespaced_network(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    check_gc_keeps_whole_containers_of_its_network_only(
        cluster.store("n1"), ipam_conf(BLUE, network="tenant-a.blue"), ipam_conf(BLUE, network="tenant-b.blue"))


def test_release_container_frees_this_nodes_leases_of_every_network(cluster):  # noqa: F811
    cluster.pool("blue", BLUE)
    conf, red = ipam_conf(BLUE), ipam_conf(BLUE, network="red")
    take(cluster.store("n1"), conf, owner("gone"))
    take(cluster.store("n1"), red, owner("gone", "net1", "red"))
    take(cluster.store("n1"), conf, owner("stays"))
    gone = cluster.store("n1").release_container("gone")
    assert sorted(lease.owner.network for lease in gone) == ["blue", "red"]
    assert [lease.owner.container_id for lease in cluster.store("n1").leases()] == ["stays"]
    assert cluster.store("n1").release_container("gone") == []
