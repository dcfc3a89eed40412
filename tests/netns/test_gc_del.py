"""GC and DEL through the real multiplex binary, as root: a node netns, pods as netns, NAD and pod
files (tests/netns/mpxlab.py), bridge networks with the shared IPAM.

What an admin would check after GC or DEL: which pods still have eth0 and net1 (with their
addresses), which node veths, leases and cache entries are left. GC keeps exactly what the
runtime lists (also a pod whose cache entry is gone or corrupt, also pods whose ADD runs while GC
does, also two namespaces' same-named NADs) and refuses a malformed list touching nothing; DEL
cleans without a usable cache entry; an attachment made before namespaced identities is still
DELed and GCed.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cnitool import addresses, links, run_plugin
from tests.netns.mpxlab import VALID_ATTACHMENTS as VALID, Lab, bridge_lab, old_multiplex

pytestmark = pytest.mark.root

@pytest.fixture
def lab(node, netns_factory, tmp_path):
    """The cluster network and `blue`, both bridges with the shared IPAM."""
    return bridge_lab(node, str(tmp_path), netns_factory, ("mpx-pod", "198.18.30.0/24"),
                      blue=("mpx-blue", "198.18.31.0/24"))


def damage_cache_entry(lab: Lab, pod: str, damage: str, garbage: bytes) -> str:
    """Make `pod`'s cache entry unusable: "missing" removes it, "corrupt" writes `garbage` over it.
    Returns its path."""
    path = cache_file(lab, cid_of(pod))
    if damage == "missing":
        os.unlink(path)
    else:
        with open(path, "wb") as f:
            f.write(garbage)
    return path


def add_pod(lab: Lab, name: str, networks="blue", namespace: str = "default") -> str:
    ns = lab.attach(name, networks, namespace, container_id=cid_of(name, namespace))
    assert links(ns) == {"lo", "eth0", "net1"}
    return ns


def cid_of(pod: str, namespace: str = "default") -> str:
    return f"cid-{namespace}-{pod}"


def gc(lab: Lab, *cids: str, valid=None):
    conf = lab.gc_config(*cids)
    if valid is not None:
        conf[VALID] = valid
    if valid == "absent":
        del conf[VALID]
    return lab.cni("GC", None, None, config=conf)


def pod_intact(ns: str) -> bool:
    """eth0 and net1 there, each with its address."""
    return links(ns) == {"lo", "eth0", "net1"} and all(addresses(ns, i) for i in ("eth0", "net1"))


def cache_file(lab: Lab, cid: str) -> str:
    return os.path.join(lab.state_dir, "cache", f"{cid}:eth0.json")


@pytest.mark.parametrize("valid", ["absent", "keep/eth0", [{"containerId": "x", "ifName": "eth0"}]],
                         ids=["absent", "string", "misspelled-keys"])
def test_gc_with_a_malformed_list_is_code_7_and_removes_nothing(lab, valid):
    a = add_pod(lab, "a")
    veths, leases, cache = lab.node_links("veth"), lab.lease_owners(), lab.cache_entries()
    out = gc(lab, valid=valid)
    assert out.rc == 1 and out.code == 7, out
    assert VALID in out.out["details"]
    assert pod_intact(a)
    assert lab.node_links("veth") == veths and lab.lease_owners() == leases and lab.cache_entries() == cache


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_listed_pod_whose_cache_entry_is_missing_or_corrupt_keeps_eth0_and_net1(lab, damage):
    keep = add_pod(lab, "keep")
    stale = add_pod(lab, "stale")
    damage_cache_entry(lab, "keep", damage, b'{"kind": "multiplex-cache/v1", "rec')
    out = gc(lab, cid_of("keep"))
    assert out.ok, out
    assert pod_intact(keep)
    assert lab.lease_owners() == {cid_of("keep"): {"eth0", "net1"}}
    assert len(lab.node_links("veth")) == 2            # keep's two host veths; stale's are gone
    assert links(stale) == {"lo"}
    assert not os.path.exists(cache_file(lab, cid_of("stale")))


def test_two_namespaces_same_named_nads_both_listed_both_keep_net1(lab):
    for ns, subnet in (("default", "198.18.32.0/24"), ("tenant-b", "198.18.33.0/24")):
        # no explicit bridge: each network's default bridge is named after its identity
        lab.add_nad("blue", {"type": "multiplex-bridge", "ipam": {"type": "multiplex-ipam",
                                                                  "ranges": [[{"subnet": subnet}]]}}, namespace=ns)
    pa = add_pod(lab, "pa", "blue", "default")
    pb = add_pod(lab, "pb", "blue", "tenant-b")
    out = gc(lab, cid_of("pa", "default"), cid_of("pb", "tenant-b"))
    assert out.ok, out
    assert pod_intact(pa) and pod_intact(pb)
    assert lab.lease_owners() == {cid_of("pa", "default"): {"eth0", "net1"},
                                 cid_of("pb", "tenant-b"): {"eth0", "net1"}}
    assert len(lab.node_links("veth")) == 4


def test_gc_while_adds_run_in_other_processes_all_listed_touches_nothing(lab):
    names = [f"r{n}" for n in range(4)]
    nss = {}
    for name in names:
        lab.add_pod(name, "blue")
        nss[name] = lab.netns_factory("pod")
    cids = [cid_of(n) for n in names]
    with ThreadPoolExecutor(len(names)) as pool:  # each ADD is its own multiplex process
        adds = [pool.submit(lab.cni, "ADD", n, nss[n], container_id=cid_of(n)) for n in names]
        # start GC once an ADD is inside its attachments (its first cache entry is written)
        while not lab.cache_entries() and not all(f.done() for f in adds):
            time.sleep(0.005)
        out = gc(lab, *cids)
        results = [f.result() for f in adds]
    assert out.ok, out
    assert all(r.ok for r in results), results
    for name in names:
        assert pod_intact(nss[name]), name
    assert lab.lease_owners() == {c: {"eth0", "net1"} for c in cids}
    assert len(lab.node_links("veth")) == 2 * len(names)
    assert sorted(lab.cache_entries()) == sorted(f"{c}:eth0.json" for c in cids)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_del_without_a_usable_cache_entry_leaves_nothing_and_succeeds_twice(lab, damage):
    other = add_pod(lab, "other")
    ns = add_pod(lab, "d")
    path = damage_cache_entry(lab, "d", damage, b"\x00\x01 not json")
    for _ in range(2):
        out = lab.cni("DEL", "d", ns, container_id=cid_of("d"))
        assert out.ok, out
    assert links(ns) == {"lo"}
    assert cid_of("d") not in lab.lease_owners()
    assert not os.path.exists(path)
    # only the other pod's attachments are left
    assert pod_intact(other)
    assert lab.lease_owners() == {cid_of("other"): {"eth0", "net1"}}
    assert len(lab.node_links("veth")) == 2


def test_del_with_the_netns_gone_and_no_cache_entry_frees_the_node_side(lab):
    import subprocess

    ns = add_pod(lab, "g")
    os.unlink(cache_file(lab, cid_of("g")))
    subprocess.run(["ip", "netns", "del", ns], check=True)
    out = lab.cni("DEL", "g", ns, container_id=cid_of("g"))
    assert out.ok, out
    assert lab.node_links("veth") == set() and lab.lease_owners() == {}


def test_pods_cached_before_identities_are_gced_and_deled_by_their_old_names(lab, tmp_path):
    old = old_multiplex(str(tmp_path))   # multiplex before namespaced identities
    pods = {}
    for name in ("old1", "old2"):
        lab.add_pod(name, "blue")
        pods[name] = lab.netns_factory("pod")
        out = run_plugin(old, "ADD", lab.config(), node=lab.node, container_id=cid_of(name),
                         netns=pods[name], args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
        assert out.ok, out
        # the record as the meta plugin wrote it before identities: no configName at all
        path = cache_file(lab, cid_of(name))
        with open(path) as f:
            doc = json.load(f)
        for att in doc["record"]["attachments"]:
            att.pop("configName", None)
        with open(path, "w") as f:
            json.dump(doc, f)
    out = gc(lab, cid_of("old1"))
    assert out.ok, out
    assert pod_intact(pods["old1"]) and links(pods["old2"]) == {"lo"}
    assert lab.lease_owners() == {cid_of("old1"): {"eth0", "net1"}}
    assert len(lab.node_links("veth")) == 2
    out = lab.cni("DEL", "old1", pods["old1"], container_id=cid_of("old1"))
    assert out.ok, out
    assert links(pods["old1"]) == {"lo"}
    assert lab.node_links("veth") == set() and lab.lease_owners() == {} and lab.cache_entries() == []


def test_del_without_cache_of_a_second_interface_spares_the_containers_other_attachment(lab):
    """A runtime may attach one container twice (eth0 and eth1, as podman does with two networks).
    A DEL of (cid, eth1) whose cache entry is gone must not sweep the live (cid, eth0) attachment:
    the marks (veth alias, lease owner) name the container, so the sweep is skipped while the cache
    records another interface of it (eth1's own leftovers stay until then); GC collects them once
    the container is gone."""
    ns = add_pod(lab, "twice")
    cid = cid_of("twice")
    out = lab.cni("ADD", None, ns, container_id=cid, ifname="eth1")   # the cluster network again, as eth1
    assert out.ok, out
    assert links(ns) == {"lo", "eth0", "net1", "eth1"}
    os.unlink(os.path.join(lab.state_dir, "cache", f"{cid}:eth1.json"))
    out = lab.cni("DEL", None, ns, container_id=cid, ifname="eth1")
    assert out.ok, out
    # eth0 and net1 keep their links and addresses (eth1's leftovers wait for GC, below)
    assert {"eth0", "net1"} <= links(ns) and all(addresses(ns, i) for i in ("eth0", "net1"))
    assert {"eth0", "net1"} <= lab.lease_owners()[cid]
    assert lab.cni("CHECK", "twice", ns, container_id=cid).ok
    # the pod goes: its own DEL, then GC listing nobody, leave nothing of either interface
    assert lab.cni("DEL", "twice", ns, container_id=cid).ok
    assert gc(lab).ok
    assert lab.node_links("veth") == set() and lab.lease_owners() == {}
