"""multiplex end to end, as root: a node netns running multiplex, pods as netns, bridge networks.

What a user checks: interfaces and addresses inside the pod, routes, pings between pods, the
network-status written back, CHECK, DEL leaving nothing (no link, lease, cache entry, rule).
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cnitool import addresses, ip_json, links, nsexec, ping
from tests.netns.mpxlab import bridge_conf, bridge_lab

pytestmark = pytest.mark.root


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    """Cluster network (v4, default gateway) + blue (v4) + violet (v6) + green (dual stack)."""
    return bridge_lab(node, str(tmp_path), netns_factory, ("mpx-pod", "198.18.0.0/24"),
                      blue=("mpx-blue", "198.18.1.0/24"), violet=("mpx-violet", "fd00:3::/64"),
                      green=("mpx-green", "198.18.2.0/24", "fd00:2::/64"))


def pod_addrs(ns: str) -> dict[str, set[str]]:
    return {l: addresses(ns, l) for l in links(ns) if l != "lo"}


def family_addrs(addrs: set[str], family: int) -> list[str]:
    return [a.split("/")[0] for a in addrs if ipaddress.ip_interface(a).version == family]


def test_add_three_bridge_attachments_gives_interfaces_addresses_routes_and_pings(lab):
    pods = {}
    for name in ("a", "b"):
        lab.add_pod(name, "blue, violet, green")
        ns = lab.netns_factory("pod")
        out = lab.cni("ADD", name, ns)
        assert out.ok, out
        pods[name] = ns
        # the runtime gets the cluster network's result: one IPv4 address from podnet
        assert [ip["address"].startswith("198.18.0.") for ip in out.out["ips"]] == [True]
        assert out.out["cniVersion"] == "1.1.0"

    for name, ns in pods.items():
        got = pod_addrs(ns)
        assert set(got) == {"eth0", "net1", "net2", "net3"}
        assert [ipaddress.ip_interface(a) in ipaddress.ip_network("198.18.0.0/24") for a in got["eth0"]] == [True]
        assert [ipaddress.ip_interface(a) in ipaddress.ip_network("198.18.1.0/24") for a in got["net1"]] == [True]
        assert [ipaddress.ip_interface(a) in ipaddress.ip_network("fd00:3::/64") for a in got["net2"]] == [True]
        assert sorted(ipaddress.ip_interface(a).version for a in got["net3"]) == [4, 6]
        # default route via the cluster network's gateway on eth0
        routes = ip_json(ns, "route", "show", "default")
        assert [(r.get("gateway"), r.get("dev")) for r in routes] == [("198.18.0.1", "eth0")]
        # network-status written back to the pod: one entry per interface, eth0 the default
        status = lab.pod_status(name)
        assert [(s["name"], s["interface"], s.get("default", False)) for s in status] == [
            ("podnet", "eth0", True), ("default/blue", "net1", False),
            ("default/violet", "net2", False), ("default/green", "net3", False)]
        assert set(status[3]["ips"]) == {a.split("/")[0] for a in got["net3"]}

    a, b = pods["a"], pods["b"]
    got_b = pod_addrs(b)
    for ifname, family in (("eth0", 4), ("net1", 4), ("net2", 6), ("net3", 4), ("net3", 6)):
        for target in family_addrs(got_b[ifname], family):
            assert ping(a, target), f"pod a cannot reach pod b's {ifname} {target}"


def test_check_passes_then_fails_after_address_removed_by_hand(lab):
    ns = lab.attach("c", "blue, green")
    assert lab.cni("CHECK", "c", ns).ok
    addr = sorted(addresses(ns, "net2"))[0]
    nsexec(ns, "ip", "addr", "del", addr, "dev", "net2")
    out = lab.cni("CHECK", "c", ns)
    assert out.rc == 1 and out.code == 104, out
    assert "net2" in out.out["msg"] + out.out.get("details", "")


def test_del_twice_leaves_no_link_lease_cache_or_rule(lab):
    lab.add_nad("masq", bridge_conf("mpx-masq", "198.18.4.0/24", isGateway=True, ipMasq=True))
    ns = lab.attach("d", "blue, masq")
    assert lab.node_links("veth"), "ADD made no veth in the node"
    assert lab.leases() and lab.cache_entries()
    assert "198.18.4." in lab.node_nft()
    for _ in range(2):
        out = lab.cni("DEL", "d", ns)
        assert out.ok, out
    assert lab.node_links("veth") == set()
    assert links(ns) == {"lo"}
    assert lab.leases() == []
    assert lab.cache_entries() == []
    assert "198.18.4." not in lab.node_nft()


def test_del_after_netns_is_gone_frees_everything(lab):
    ns = lab.attach("e", "blue")
    subprocess.run(["ip", "netns", "del", ns], check=True)
    out = lab.cni("DEL", "e", ns)
    assert out.ok, out
    assert lab.node_links("veth") == set()
    assert lab.leases() == [] and lab.cache_entries() == []


def test_failure_at_third_attachment_leaves_no_trace_of_the_first_two(lab):
    # The third attachment's chain ends in the reference `tuning` plugin with a sysctl that does
    # not exist: tuning fails after the bridge made its veth and took a lease.
    failing = {"cniVersion": "1.0.0", "plugins": [
        bridge_conf("mpx-fail", "198.18.5.0/24"),
        {"type": "tuning", "sysctl": {"net.ipv4.conf.IFNAME.no_such_knob": "1"}}]}
    lab.add_nad("failing", failing)
    lab.add_pod("f", "blue, failing")
    ns = lab.netns_factory("pod")
    if not os.path.exists("/usr/lib/cni/tuning"):
        pytest.fail("containernetworking-plugins is not installed (scripts/setup.sh installs it)")
    out = lab.cni("ADD", "f", ns)
    assert out.rc == 1 and out.code is not None and out.code != 0, out
    assert "tuning" in out.out["msg"]
    assert links(ns) == {"lo"}
    assert lab.node_links("veth") == set()
    assert lab.leases() == []
    assert lab.cache_entries() == []


def test_gc_removes_a_stale_attachment_and_keeps_the_valid_one(lab):
    lab.add_pod("g1", "blue")
    lab.add_pod("g2", "blue")
    ns1, ns2 = lab.netns_factory("pod"), lab.netns_factory("pod")
    assert lab.cni("ADD", "g1", ns1).ok and lab.cni("ADD", "g2", ns2).ok
    conf = lab.config()
    conf["cni.dev/valid-attachments"] = [{"containerID": "cid-g1", "ifname": "eth0"}]
    out = lab.cni("GC", None, None, config=conf)
    assert out.ok, out
    assert links(ns2) == {"lo"}, "the stale pod's interfaces were not removed"
    assert links(ns1) == {"lo", "eth0", "net1"}
    owners = {row for lease in lab.leases() for row in lease if isinstance(row, str) and row.startswith("cid-")}
    assert owners == {"cid-g1"}
    assert len(lab.cache_entries()) == 1
    assert lab.cni("CHECK", "g1", ns1).ok


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_every_supported_version_add_check_del(lab, version):
    lab.add_pod("v", "blue")
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "v", ns, version=version)
    assert out.ok, out
    assert out.out["cniVersion"] == version
    ip = out.out["ips"][0]
    assert ("version" in ip) == (version < "1.0.0")
    check = lab.cni("CHECK", "v", ns, version=version)
    if version < "0.4.0":
        assert check.code == 1, check  # the spec: CHECK only from 0.4.0
    else:
        assert check.ok, check
    assert lab.cni("DEL", "v", ns, version=version).ok
    assert lab.leases() == []


def test_status_reports_ready_then_an_exhausted_pool(lab):
    assert lab.cni("STATUS", None, None).ok
    tiny = bridge_conf("mpx-tiny", "198.18.6.0/30")
    conf = lab.config(delegates=[dict(tiny, name="tiny", cniVersion="1.1.0")])
    lab.add_pod("s", None)
    ns = lab.netns_factory("pod")
    # a /30 holds one address to hand out: .1 is the gateway, .0 and .3 network and broadcast
    assert lab.cni("ADD", "s", ns, config=conf).ok
    assert lab.cni("STATUS", None, None, config=conf).code == 50
    out = lab.cni("STATUS", None, None, config=conf)
    assert out.rc == 1 and out.code == 50, out
    assert "198.18.6.0/30" in out.out["msg"] + out.out.get("details", "")
    ns2 = lab.netns_factory("pod")
    lab.add_pod("s2", None)
    full = lab.cni("ADD", "s2", ns2, config=conf)
    assert full.code == 102 and "198.18.6.0/30" in full.out["msg"] + full.out.get("details", ""), full
    assert links(ns2) == {"lo"}


def test_fifty_parallel_adds_on_one_pool_get_distinct_reachable_addresses(lab):
    n = 50
    names = [f"p{i}" for i in range(n)]
    spaces = {name: lab.netns_factory("p") for name in names}
    for name in names:
        lab.add_pod(name, None)

    def add(name):
        return lab.cni("ADD", name, spaces[name])

    with ThreadPoolExecutor(max_workers=n) as pool:
        outs = list(pool.map(add, names))
    bad = [o for o in outs if not o.ok]
    assert not bad, bad[:3]
    got = [o.out["ips"][0]["address"].split("/")[0] for o in outs]
    assert len(set(got)) == n
    for name, addr in zip(names, got):  # each address is on its pod's eth0, and reachable
        assert f"{addr}/24" in addresses(spaces[name], "eth0")
    unreachable = [a for a in got if not ping(lab.node, a)]
    assert unreachable == []
