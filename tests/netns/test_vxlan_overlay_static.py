"""multiplex-vxlan-overlay on its own (no node daemon): static `peers`, learning on, as root.

Two nodes as netns on an underlay switch of MTU 1400; each node runs the delegate as a runtime
would, with its own per-node IPAM range of one shared subnet (so addresses never collide without
a cluster). What a user checks: pods on two nodes ping over the overlay (IPv4 and IPv6 pods; an
IPv4 and an IPv6 underlay), the pod MTU is the underlay's less VXLAN's 50 (IPv4) or 70 (IPv6), a
don't-fragment ping of exactly that size crosses and one byte more fails with "message too long",
the underlay carries UDP to the VXLAN port, the device's FDB holds the peers. And every bad input
is a clear error naming its field, with no VXLAN device, bridge, FDB entry or lease left behind.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.cnitool import links, nsexec, ping
from tests.netns.vxlan_underlay import (Underlay, cni, container_id, fdb, link_mtu, overlay_conf, ping_df,
                                        pod_address, vxlan_links)

pytestmark = pytest.mark.root

SUBNET4, SUBNET6 = "198.18.71.0/24", "fd00:71::/64"


def node_ranges(index: int) -> list[list[dict]]:
    """Node n's share of the network's subnets: per-node ranges, so no two nodes lease one address."""
    return [[{"subnet": SUBNET4, "rangeStart": f"198.18.71.{index * 10}", "rangeEnd": f"198.18.71.{index * 10 + 9}"}],
            [{"subnet": SUBNET6, "rangeStart": f"fd00:71::{index:x}00", "rangeEnd": f"fd00:71::{index:x}ff"}]]


@pytest.fixture(scope="module")
def underlay(tmp_path_factory):
    from tests.cnitool import NetnsPool

    pool = NetnsPool("mpx")
    try:
        yield Underlay.build(pool.make, str(tmp_path_factory.mktemp("vxs")), 2)
    finally:
        pool.close()


@pytest.fixture
def pods(underlay):
    """make(node, conf) -> (netns, result); every pod made is DELeted and its netns removed."""
    from tests.cnitool import NetnsPool

    pool = NetnsPool("mpx")
    made = []

    def make(node, conf, ifname="net1"):
        ns, cid = pool.make("vp"), container_id()
        out = cni(node, "ADD", conf, cid, ns, ifname)
        made.append((node, conf, cid, ns, ifname))
        assert out.ok, out
        return ns, out.out

    yield make
    for node, conf, cid, ns, ifname in made:
        cni(node, "DEL", conf, cid, ns, ifname)
    pool.close()


def conf_for(node, name: str, vni: int, peers: list[str], **fields):
    return overlay_conf(name, vni, *node_ranges(node.index), peers=peers, **fields)


def test_static_peers_ipv4_underlay_pods_ping_with_mtu_1350(underlay, pods):
    n1, n2 = underlay.nodes
    ns1, r1 = pods(n1, conf_for(n1, "st4", 71, [n2.v4]))
    ns2, r2 = pods(n2, conf_for(n2, "st4", 71, [n1.v4]))
    underlay.count_udp()
    for fam in (4, 6):
        assert ping(ns1, pod_address(r2, fam), count=1, timeout=3), f"IPv{fam} pod on n1 cannot reach n2's"
        assert ping(ns2, pod_address(r1, fam)), f"IPv{fam} pod on n2 cannot reach n1's"
    counts = underlay.udp_packets()
    assert counts["all"] >= 4, f"no VXLAN UDP crossed the underlay: {counts}"
    # learning mode: the first ARP request is flooded to the peers (the daemon's proxy mode is what
    # keeps it on the node, tests/netns/test_vxlan_overlay.py)
    assert counts["arp-n2"] >= 1, counts
    assert link_mtu(ns1, "net1") == 1350 and r1["interfaces"][2]["mtu"] == 1350
    fits = ping_df(ns1, pod_address(r2, 4), 1350)
    assert fits.returncode == 0, fits.stdout + fits.stderr
    too_big = ping_df(ns1, pod_address(r2, 4), 1351)
    assert too_big.returncode != 0 and "message too long" in (too_big.stdout + too_big.stderr).lower(), too_big
    [(name, dev)] = vxlan_links(n1.netns).items()
    info = dev["linkinfo"]["info_data"]
    assert info["id"] == 71 and info["local"] == n1.v4 and info.get("learning") is True
    assert ("00:00:00:00:00:00", n2.v4) in fdb(n1.netns, name)


def test_static_peers_ipv6_underlay_mtu_1330(underlay, pods):
    n1, n2 = underlay.nodes
    ns1, r1 = pods(n1, conf_for(n1, "st6", 72, [n2.v6]))
    ns2, r2 = pods(n2, conf_for(n2, "st6", 72, [n1.v6]))
    assert link_mtu(ns1, "net1") == 1330
    for fam in (4, 6):
        assert ping(ns1, pod_address(r2, fam), count=1, timeout=3), f"IPv{fam} pod over the IPv6 underlay"
    dev = next(l for l in vxlan_links(n2.netns).values() if l["linkinfo"]["info_data"]["id"] == 72)
    assert dev["linkinfo"]["info_data"]["local6"] == n2.v6
    assert ("00:00:00:00:00:00", n1.v6) in fdb(n2.netns, dev["ifname"])


def test_mtu_may_lower_it(underlay, pods):
    n1, n2 = underlay.nodes
    ns, r = pods(n1, conf_for(n1, "stlow", 73, [n2.v4], mtu=1300))
    assert link_mtu(ns, "net1") == 1300


# ---- bad input ------------------------------------------------------------------------------------
BAD = [
    pytest.param({"vni": 0}, "$.vni", 7, id="vni-0"),
    pytest.param({"vni": 16777216}, "$.vni", 7, id="vni-too-big"),
    pytest.param({"vni": None}, "$.vni", 7, id="vni-missing"),
    pytest.param({"mtu": 1351}, "$.mtu", 7, id="mtu-above-computed"),
    pytest.param({"peers": ["198.18.70.12", "not-an-ip"]}, "$.peers[1]", 7, id="peer-not-an-address"),
    pytest.param({"peers": ["198.18.70.12", "fd00:70::12"]}, "$.peers[1]", 7, id="peers-mixed-families"),
    pytest.param({"peers": [f"198.18.71.{i}" for i in range(1, 66)]}, "$.peers", 7, id="peers-more-than-64"),
    pytest.param({"peers": ["198.18.70.12", "255.255.255.255"]}, "$.peers[1]", 7, id="peer-broadcast"),
    pytest.param({"peers": ["239.1.2.3"]}, "$.peers[0]", 7, id="peer-multicast"),
    pytest.param({"peers": ["127.0.0.1"]}, "$.peers[0]", 7, id="peer-loopback"),
    pytest.param({"peers": ["0.0.0.0"]}, "$.peers[0]", 7, id="peer-unspecified"),
    pytest.param({"peers": ["169.254.0.2"]}, "$.peers[0]", 7, id="peer-link-local-v4"),
    pytest.param({"peers": ["fe80::2"]}, "$.peers[0]", 7, id="peer-link-local-v6"),
    pytest.param({"peers": ["::ffff:198.18.70.12"]}, "$.peers[0]", 7, id="peer-ipv4-mapped"),
    pytest.param({"underlayInterface": "nope0"}, "$.underlayInterface", 7, id="missing-underlay-interface"),
    pytest.param({"port": 0}, "$.port", 7, id="port-0"),
    pytest.param({"port": 53}, "$.port", 7, id="port-privileged"),
    pytest.param({"port": 51871}, "$.port", 7, id="port-wireguards"),
    pytest.param({"encrypt": "ipsec"}, "$.encrypt", 7, id="encrypt-not-wireguard"),
    pytest.param({"encrypt": "wireguard"}, "$.encrypt", 7, id="encrypt-with-static-peers"),
    pytest.param({"tunnel": "gre"}, "$.tunnel", 7, id="unknown-field"),
]


def assert_nothing_left(node, before: dict, ns: str, network: str) -> None:
    """The node's links and FDB as `before` (what the other tests' networks keep), nothing in the
    pod, no lease of `network`."""
    from delegates.vxlan_overlay import bridge_name, vxlan_name

    assert links(node.netns) == before["links"], "a link was left on the node"
    assert vxlan_name(network) not in before["links"] and bridge_name(network) not in before["links"]
    assert {d: fdb(node.netns, d) for d in vxlan_links(node.netns)} == before["fdb"], "an FDB entry was left"
    assert links(ns) == {"lo"}, "an interface was left in the pod"
    from tests.netns.test_bridge_lab import BridgeLab

    lab = BridgeLab(node=node.netns, root=node.root, make_ns=None, ipam_type="multiplex-ipam")
    assert lab.leases(network) == [], "an IPAM lease was left"


@pytest.mark.parametrize("change, field, code", BAD)
def test_bad_input_is_refused_naming_the_field_and_leaves_nothing(underlay, change, field, code):
    from tests.cnitool import NetnsPool

    n1, n2 = underlay.nodes
    conf = conf_for(n1, "stbad", 74, [n2.v4])
    for k, v in change.items():
        if v is None:
            conf.pop(k)
        else:
            conf[k] = v
    before = {"links": links(n1.netns), "fdb": {d: fdb(n1.netns, d) for d in vxlan_links(n1.netns)}}
    pool = NetnsPool("mpx")
    try:
        ns = pool.make("vb")
        out = cni(n1, "ADD", conf, container_id(), ns)
        assert out.rc == 1 and out.code == code, out
        assert re.search(rf"field: {re.escape(field)}(;|$)", out.out["details"]), out
        if field == "$.mtu":
            assert "1351" in out.out["msg"] and "1350" in out.out["msg"], out
        assert_nothing_left(n1, before, ns, "stbad")
    finally:
        pool.close()


def test_del_of_a_config_whose_peers_add_would_refuse_still_removes_the_attachment(underlay):
    """DEL does not use the peers: a list ADD refuses (one a newer release refuses, say) must not
    leave the attachment of an older ADD behind."""
    from tests.cnitool import NetnsPool

    n1, n2 = underlay.nodes
    conf = conf_for(n1, "stdel", 79, [n2.v4])
    pool = NetnsPool("mpx")
    cid, ns = container_id(), pool.make("vd")
    try:
        assert cni(n1, "ADD", conf, cid, ns).ok
        out = cni(n1, "DEL", dict(conf, peers=[n2.v4, "not-an-ip"]), cid, ns)
        assert out.rc == 0, out
        assert links(ns) == {"lo"}, "the pod interface was left"
        from tests.netns.test_bridge_lab import BridgeLab

        assert BridgeLab(node=n1.netns, root=n1.root, make_ns=None, ipam_type="multiplex-ipam").leases("stdel") == []
    finally:
        cni(n1, "DEL", conf, cid, ns)
        pool.close()


def test_two_networks_with_one_vni_on_a_node_is_refused(underlay, pods):
    from tests.cnitool import NetnsPool

    n1, n2 = underlay.nodes
    pods(n1, conf_for(n1, "vnia", 75, [n2.v4]))
    before = set(vxlan_links(n1.netns))
    pool = NetnsPool("mpx")
    try:
        ns = pool.make("vb")
        out = cni(n1, "ADD", conf_for(n1, "vnib", 75, [n2.v4]), container_id(), ns)
        assert out.rc == 1 and out.code == 7, out
        assert "field: $.vni" in out.out["details"] and "vnia" in out.out["msg"], out
        assert set(vxlan_links(n1.netns)) == before, "a second VXLAN device was made"
        assert links(ns) == {"lo"}
        from tests.netns.test_bridge_lab import BridgeLab

        assert BridgeLab(node=n1.netns, root=n1.root, make_ns=None, ipam_type="multiplex-ipam").leases("vnib") == []
    finally:
        pool.close()


def kernel_has_wireguard(ns: str) -> bool:
    r = subprocess.run(["ip", "-n", ns, "link", "add", "mpxwgprobe", "type", "wireguard"], capture_output=True)
    subprocess.run(["ip", "-n", ns, "link", "del", "mpxwgprobe"], capture_output=True)
    return r.returncode == 0


def test_encryption_on_a_kernel_without_wireguard_says_so_and_leaves_nothing(underlay):
    """This machine's kernel has no WireGuard (the VM tier tests encryption itself,
    tests/vm/test_vxlan_wireguard.py): the delegate says so, naming `encrypt`, and makes nothing,
    not even the key. On a kernel with WireGuard the same ADD works, with the MTU less 60 more."""
    import os

    from tests.cnitool import NetnsPool

    n1, _ = underlay.nodes
    conf = overlay_conf("stwg", 76, *node_ranges(n1.index), encrypt="wireguard", port=4790)
    before = {"links": links(n1.netns), "fdb": {d: fdb(n1.netns, d) for d in vxlan_links(n1.netns)}}
    pool = NetnsPool("mpx")
    try:
        ns, cid = pool.make("vw"), container_id()
        out = cni(n1, "ADD", conf, cid, ns)
        if kernel_has_wireguard(n1.netns):
            assert out.ok, out
            assert link_mtu(ns, "net1") == 1400 - 60 - 50
            cni(n1, "DEL", conf, cid, ns)
            return
        assert out.rc == 1 and out.code == 7, out
        assert "field: $.encrypt" in out.out["details"] and "WireGuard" in out.out["msg"], out
        assert_nothing_left(n1, before, ns, "stwg")
        assert not os.path.exists(os.path.join(n1.state_dir, "vxlan", "wireguard.key")), "a key was made"
        rules = nsexec(n1.netns, "ip", "rule").stdout
        assert "47890" not in rules, rules
    finally:
        pool.close()


def test_a_plain_network_on_an_encrypted_port_is_refused(underlay):
    """One UDP port is encrypted for every network on it or for none: a rule sending port 4792 through
    WireGuard (as an encrypted network leaves it) refuses a plain network on that port, naming `port`."""
    from tests.cnitool import NetnsPool

    n1, n2 = underlay.nodes
    nsexec(n1.netns, "ip", "rule", "add", "ipproto", "udp", "dport", "4792", "lookup", "47890", "priority", "17890")
    pool = NetnsPool("mpx")
    try:
        before = {"links": links(n1.netns), "fdb": {d: fdb(n1.netns, d) for d in vxlan_links(n1.netns)}}
        ns = pool.make("vb")
        out = cni(n1, "ADD", overlay_conf("stport", 77, *node_ranges(n1.index), port=4792), container_id(), ns)
        assert out.rc == 1 and out.code == 7 and "field: $.port" in out.out["details"], out
        assert_nothing_left(n1, before, ns, "stport")
    finally:
        nsexec(n1.netns, "ip", "rule", "del", "priority", "17890", check=False)
        pool.close()


def test_check_passes_then_names_a_vxlan_device_that_is_down(underlay):
    from delegates.vxlan_overlay import vxlan_name
    from tests.cnitool import NetnsPool

    n1, n2 = underlay.nodes
    conf = conf_for(n1, "stchk", 78, [n2.v4])
    pool = NetnsPool("mpx")
    cid, ns = container_id(), pool.make("vc")
    try:
        out = cni(n1, "ADD", conf, cid, ns)
        assert out.ok, out
        ok = cni(n1, "CHECK", dict(conf, prevResult=out.out), cid, ns)
        assert ok.ok, ok
        nsexec(n1.netns, "ip", "link", "set", vxlan_name("stchk"), "down")
        bad = cni(n1, "CHECK", dict(conf, prevResult=out.out), cid, ns)
        assert bad.rc == 1 and bad.code == 104 and "vni" in bad.out["details"], bad
        assert vxlan_name("stchk") in bad.out["msg"], bad
        nsexec(n1.netns, "ip", "link", "set", vxlan_name("stchk"), "up")
    finally:
        cni(n1, "DEL", conf, cid, ns)
        pool.close()


def test_the_vni_of_the_nodes_crosssubnet_device_is_refused_before_that_device_exists(underlay, tmp_path):
    """bgp-routed's CrossSubnet device (VNI and port from the admin's BGP settings) is made only once
    a node on another subnet appears; a NAD that took its VNI first would receive the cluster
    network's encapsulated traffic and keep the node's device from being made. Refused naming
    `vni`, nothing left."""
    import json
    import os

    from tests.cnitool import NetnsPool, run_plugin
    from tests.netns.vxlan_underlay import PLUGIN

    n1, n2 = underlay.nodes
    settings = tmp_path / "bgp.json"
    settings.write_text(json.dumps({"crossSubnet": {"encapsulation": "vxlan", "vni": 76, "port": 4789}}))
    before = {"links": links(n1.netns), "fdb": {d: fdb(n1.netns, d) for d in vxlan_links(n1.netns)}}
    pool = NetnsPool("mpx")
    try:
        ns = pool.make("vb")
        out = run_plugin(PLUGIN, "ADD", conf_for(n1, "stbgp", 76, [n2.v4]), node=n1.netns,
                         container_id=container_id(), netns=ns, ifname="net1",
                         extra_env={"MULTIPLEX_STATE_DIR": n1.state_dir, "MULTIPLEX_BGP_CONFIG": str(settings),
                                    "MULTIPLEX_LOG_FILE": os.path.join(n1.root, "multiplex.log")})
        assert out.rc == 1 and out.code == 7, out
        assert "field: $.vni" in out.out["details"] and "crossSubnet" in out.out["msg"], out
        assert_nothing_left(n1, before, ns, "stbgp")
    finally:
        pool.close()


def test_a_vni_not_granted_to_the_networks_namespace_is_refused_and_leaves_nothing(underlay, pods, tmp_path):
    """With the admin's VNI ranges (/etc/multiplex/vxlan.json, here $MULTIPLEX_VXLAN_CONFIG) a NAD
    network (config name `<namespace>.<NAD>`) gets only its namespace's VNIs: tenant-b's NAD with
    tenant-a's VNI is refused on a node where tenant-a has no pod yet (code 7, `$.vni`, tenant-b's
    ranges), nothing left; tenant-a's own attaches."""
    import json
    import os

    from tests.cnitool import NetnsPool, run_plugin
    from tests.netns.vxlan_underlay import PLUGIN

    n1, n2 = underlay.nodes
    settings = tmp_path / "vxlan.json"
    settings.write_text(json.dumps({"vniRanges": {"tenant-a": ["77"], "tenant-b": ["2000-2999"]}}))
    env = {"MULTIPLEX_STATE_DIR": n1.state_dir, "MULTIPLEX_VXLAN_CONFIG": str(settings),
           "MULTIPLEX_LOG_FILE": os.path.join(n1.root, "multiplex.log")}
    before = {"links": links(n1.netns), "fdb": {d: fdb(n1.netns, d) for d in vxlan_links(n1.netns)}}
    pool = NetnsPool("mpx")
    cid, ns = container_id(), pool.make("vb")
    ok_conf = conf_for(n1, "tenant-a.own", 77, [n2.v4])
    try:
        out = run_plugin(PLUGIN, "ADD", conf_for(n1, "tenant-b.steal", 77, [n2.v4]), node=n1.netns,
                         container_id=container_id(), netns=ns, ifname="net1", extra_env=env)
        assert out.rc == 1 and out.code == 7, out
        assert "field: $.vni;" in out.out["details"] and "2000-2999" in out.out["details"], out
        assert_nothing_left(n1, before, ns, "tenant-b.steal")
        assert all(l["linkinfo"]["info_data"]["id"] != 77 for l in vxlan_links(n1.netns).values())

        out = run_plugin(PLUGIN, "ADD", ok_conf, node=n1.netns, container_id=cid, netns=ns, ifname="net1",
                         extra_env=env)
        assert out.ok, out
        assert link_mtu(ns, "net1") == 1350
    finally:
        run_plugin(PLUGIN, "DEL", ok_conf, node=n1.netns, container_id=cid, netns=ns, ifname="net1", extra_env=env)
        pool.close()


def test_a_direct_add_waits_while_the_overlay_collection_holds_the_gc_lock(underlay, pods):
    """A runtime or Multus calling the delegate directly (no meta plugin around it) takes the GC lock
    shared for its ADD, as the meta plugin does: the vxlan-peers controller removes an idle bridge
    only under it held exclusive, so it can never remove the bridge between the ADD finding it and
    putting the pod's veth on it (the pod would be left on no bridge)."""
    import threading
    import time

    from delegates.vxlan_overlay import bridge_name
    from multiplex.cni.lock import default_path, gc_lock

    n1, n2 = underlay.nodes
    conf = conf_for(n1, "stlock", 96, [n2.v4])
    done: dict = {}
    with gc_lock(True, timeout=10, path=default_path(n1.state_dir)):     # the collection, in progress
        t = threading.Thread(target=lambda: done.update(ns=pods(n1, conf)))
        t.start()
        time.sleep(2.0)
        assert t.is_alive() and bridge_name("stlock") not in links(n1.netns), \
            "the ADD made the overlay while the collection held the GC lock"
    t.join(60)
    assert "ns" in done and bridge_name("stlock") in links(n1.netns)
