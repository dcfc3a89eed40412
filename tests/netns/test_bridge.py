"""multiplex-bridge as a runtime runs it, as root: the delegate binary inside a node netns, pods as
netns. What a user checks: addresses and routes inside the pod, pings, the bridge and its ports in
the node, nft rules, CHECK, DEL leaving nothing. Every netns (and so every link and nft table in it)
and the IPAM state (tmp) go away at teardown."""
from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from tests.cnitool import addresses, ip_json, links, nsexec, ping
from tests.netns.test_bridge_lab import BridgeLab, IPAM_TYPES, kernel_has_bridge_vlan_filtering, pod_ips

pytestmark = pytest.mark.root


@pytest.fixture(params=IPAM_TYPES)
def lab(request, node, netns_factory, tmp_path):
    """A bridge lab, once with Debian's host-local and once with multiplex-ipam."""
    return BridgeLab(node=node, root=str(tmp_path), make_ns=netns_factory, ipam_type=request.param)


@pytest.fixture
def hl(node, netns_factory, tmp_path):
    """A bridge lab with host-local only (tests whose subject is not the IPAM)."""
    return BridgeLab(node=node, root=str(tmp_path), make_ns=netns_factory, ipam_type="host-local")


def test_ipv4_add_gives_pod_interface_address_and_result(lab):
    conf = lab.conf("198.18.10.0/24", bridge="mpxt-br4")
    ns = lab.make_ns("pod")
    res = lab.add(conf, "c4", ns, "net1")

    assert addresses(ns, "net1") == {"198.18.10.2/24"}
    assert ip_json(ns, "link", "show", "dev", "net1")[0]["operstate"] == "UP"
    # interfaces: the bridge, the host veth, the pod interface (sandbox = the netns path)
    names = [i["name"] for i in res["interfaces"]]
    assert names[0] == "mpxt-br4" and names[2] == "net1" and names[1].startswith("mpx") and len(names[1]) == 15
    assert res["interfaces"][2]["sandbox"] == f"/var/run/netns/{ns}"
    assert res["ips"] == [{"interface": 2, "address": "198.18.10.2/24", "gateway": "198.18.10.1"}]
    # in the node: the host veth is a port of the bridge, named in its alias
    veth = lab.link_details(names[1])
    assert veth["master"] == "mpxt-br4"
    assert veth["ifalias"] == "c4/net1/bnet"
    assert lab.leases() != []


def test_ipv6_addresses_are_usable_right_after_add(hl):
    conf = hl.conf("fd00:10::/64", bridge="mpxt-br6")
    a, b = hl.make_ns("pod"), hl.make_ns("pod")
    ra, rb = hl.add(conf, "c6a", a), hl.add(conf, "c6b", b)
    addr = ip_json(a, "-6", "addr", "show", "dev", "eth0")[0]["addr_info"]
    assert not [x for x in addr if x.get("tentative")], "an address is still tentative (DAD)"
    assert {f"{x['local']}/{x['prefixlen']}" for x in addr if x["scope"] == "global"} == {ra["ips"][0]["address"]}
    # no sleep: the first ping right after ADD goes through
    assert ping(a, pod_ips(rb, 6)[0]) and ping(b, pod_ips(ra, 6)[0])


def test_dual_stack_two_pods_on_one_bridge_ping_each_other(lab):
    conf = lab.conf("198.18.11.0/24", "fd00:11::/64", bridge="mpxt-brds")
    a, b = lab.make_ns("pod"), lab.make_ns("pod")
    ra, rb = lab.add(conf, "cda", a), lab.add(conf, "cdb", b)
    for r, ns in ((ra, a), (rb, b)):
        got = addresses(ns, "eth0")
        assert sorted(ipaddress.ip_interface(x).version for x in got) == [4, 6]
        assert got == {ip["address"] for ip in r["ips"]}
    for v in (4, 6):
        assert ping(a, pod_ips(rb, v)[0]), f"pod a cannot reach pod b over IPv{v}"
        assert ping(b, pod_ips(ra, v)[0]), f"pod b cannot reach pod a over IPv{v}"
    # both pods' host veths sit on the one bridge
    ports = {l["ifname"] for l in ip_json(lab.node, "link", "show", "master", "mpxt-brds")}
    assert ports == {ra["interfaces"][1]["name"], rb["interfaces"][1]["name"]}


def test_default_gateway_routes_and_the_node_reaches_the_pod(hl):
    conf = hl.conf("198.18.12.0/24", "fd00:12::/64", bridge="mpxt-brgw", isDefaultGateway=True,
                   routes=[{"dst": "198.19.12.0/24"}])
    ns = hl.make_ns("pod")
    res = hl.add(conf, "cgw", ns)
    # default routes in the pod via the gateway of each family; the IPAM route goes via the v4 gateway
    v4 = {(r.get("dst"), r.get("gateway"), r.get("dev")) for r in ip_json(ns, "-4", "route", "show")}
    assert ("default", "198.18.12.1", "eth0") in v4
    assert ("198.19.12.0/24", "198.18.12.1", "eth0") in v4
    v6 = {(r.get("dst"), r.get("gateway")) for r in ip_json(ns, "-6", "route", "show")}
    assert ("default", "fd00:12::1") in v6
    assert {(r["dst"], r.get("gw")) for r in res["routes"]} >= {("0.0.0.0/0", "198.18.12.1"), ("::/0", "fd00:12::1")}
    # gateway addresses on the bridge, forwarding on in the node
    assert addresses(hl.node, "mpxt-brgw") == {"198.18.12.1/24", "fd00:12::1/64"}
    assert hl.sysctl("net.ipv4.ip_forward") == "1"
    assert hl.sysctl("net.ipv6.conf.all.forwarding") == "1"
    # the node reaches the pod, and the pod its gateway
    for v in (4, 6):
        assert ping(hl.node, pod_ips(res, v)[0])
    assert ping(ns, "198.18.12.1") and ping(ns, "fd00:12::1")


def test_is_gateway_without_default_route(hl):
    conf = hl.conf("198.18.13.0/24", bridge="mpxt-brg", isGateway=True)
    ns = hl.make_ns("pod")
    res = hl.add(conf, "cg", ns)
    assert addresses(hl.node, "mpxt-brg") == {"198.18.13.1/24"}
    assert ip_json(ns, "route", "show", "default") == []
    assert res.get("routes", []) == []
    assert ping(hl.node, pod_ips(res, 4)[0])


def test_ip_masq_rules_appear_in_the_node_and_go_on_del(hl):
    conf = hl.conf("198.18.14.0/24", "fd00:14::/64", bridge="mpxt-brm", isGateway=True, ipMasq=True)
    ns = hl.make_ns("pod")
    res = hl.add(conf, "cm", ns)
    rules = [r for r in hl.masq_rules() if r.get("comment") == "cm/eth0/bnet"]
    assert len(rules) == 2
    assert {r["table"] for r in rules} == {"multiplex_masq"}
    text = nsexec(hl.node, "nft", "list", "table", "inet", "multiplex_masq").stdout
    assert f"ip saddr {pod_ips(res, 4)[0]} ip daddr != 198.18.14.0/24" in text and "masquerade" in text
    assert f"ip6 saddr {pod_ips(res, 6)[0]} ip6 daddr != fd00:14::/64" in text
    # a second pod gets its own rules; DEL removes only the first pod's
    ns2 = hl.make_ns("pod")
    hl.add(conf, "cm2", ns2)
    assert hl.cni("DEL", conf, "cm", ns).ok
    comments = [r.get("comment") for r in hl.masq_rules()]
    assert "cm/eth0/bnet" not in comments and comments.count("cm2/eth0/bnet") == 2


def test_hairpin_mode_on_the_bridge_port(hl):
    conf = hl.conf("198.18.15.0/24", bridge="mpxt-brh", hairpinMode=True)
    ns = hl.make_ns("pod")
    res = hl.add(conf, "ch", ns)
    port = hl.link_details(res["interfaces"][1]["name"])
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert hl.check(conf, res, "ch", ns).ok
    nsexec(hl.node, "ip", "link", "set", res["interfaces"][1]["name"], "type", "bridge_slave", "hairpin", "off")
    out = hl.check(conf, res, "ch", ns)
    assert out.code == 104 and "hairpin" in out.out["msg"], out
    plain = hl.add(hl.conf("198.18.16.0/24", name="other", bridge="mpxt-brh2"), "ch2", hl.make_ns("pod"))
    assert hl.link_details(plain["interfaces"][1]["name"])["linkinfo"]["info_slave_data"]["hairpin"] is False


def test_mtu_explicit_and_default_from_the_bridge(hl):
    ns = hl.make_ns("pod")
    res = hl.add(hl.conf("198.18.17.0/24", bridge="mpxt-brmtu", mtu=1400), "cmtu", ns)
    assert ip_json(ns, "link", "show", "dev", "eth0")[0]["mtu"] == 1400
    assert hl.link_details(res["interfaces"][1]["name"])["mtu"] == 1400
    # no mtu: the bridge's (here a bridge an admin made with MTU 1450)
    nsexec(hl.node, "ip", "link", "add", "mpxt-br1450", "mtu", "1450", "type", "bridge")
    ns2 = hl.make_ns("pod")
    res2 = hl.add(hl.conf("198.18.18.0/24", name="n1450", bridge="mpxt-br1450"), "c1450", ns2)
    assert ip_json(ns2, "link", "show", "dev", "eth0")[0]["mtu"] == 1450
    assert res2["interfaces"][2]["name"] == "eth0"


def test_requested_mac_is_set_on_the_pod_interface(hl):
    conf = hl.conf("198.18.19.0/24", bridge="mpxt-brmac", runtimeConfig={"mac": "02:42:c6:12:13:14"})
    ns = hl.make_ns("pod")
    res = hl.add(conf, "cmac", ns)
    assert ip_json(ns, "link", "show", "dev", "eth0")[0]["address"] == "02:42:c6:12:13:14"
    assert res["interfaces"][2]["mac"] == "02:42:c6:12:13:14"
    assert hl.check(conf, res, "cmac", ns).ok
    nsexec(ns, "ip", "link", "set", "eth0", "address", "02:42:c6:12:13:15")
    out = hl.check(conf, res, "cmac", ns)
    assert out.code == 104 and "02:42:c6:12:13:15" in out.out["msg"], out


def test_vlan_access_port_or_a_clean_refusal(hl):
    conf = hl.conf("198.18.20.0/24", bridge="mpxt-brvl", vlan=42)
    ns = hl.make_ns("pod")
    if not kernel_has_bridge_vlan_filtering(hl.node):
        # this kernel (no CONFIG_BRIDGE_VLAN_FILTERING) refuses: a netlink error, nothing left behind
        out = hl.cni("ADD", conf, "cvl", ns)
        assert out.rc == 1 and out.code == 105, out
        assert "vlan" in out.out["msg"].lower()
        assert hl.node_links() == {"lo"} and links(ns) == {"lo"} and hl.leases() == []
        return  # the working VLAN path runs in the VM tier (test_bridge_vlan.py)
    res = hl.add(conf, "cvl", ns)
    port = res["interfaces"][1]["name"]
    vlans = {e["ifname"]: e["vlans"] for e in json.loads(nsexec(hl.node, "bridge", "-j", "vlan", "show").stdout)}
    assert [(v["vlan"], "PVID" in v.get("flags", []), "Egress Untagged" in v.get("flags", []))
            for v in vlans[port]] == [(42, True, True)]
    ns2 = hl.make_ns("pod")
    res2 = hl.add(conf, "cvl2", ns2)
    assert ping(ns, pod_ips(res2, 4)[0])
    assert hl.cni("CHECK", dict(conf, prevResult=res), "cvl", ns).ok


def test_check_passes_then_fails_after_an_address_is_removed_by_hand(hl):
    conf = hl.conf("198.18.21.0/24", "fd00:21::/64", bridge="mpxt-brck", isDefaultGateway=True)
    ns = hl.make_ns("pod")
    res = hl.add(conf, "cck", ns)
    out = hl.check(conf, res, "cck", ns)
    assert out.ok, out
    v6 = [ip["address"] for ip in res["ips"] if ":" in ip["address"]][0]
    nsexec(ns, "ip", "addr", "del", v6, "dev", "eth0")
    out = hl.check(conf, res, "cck", ns)
    assert out.rc == 1 and out.code == 104, out
    assert v6 in out.out["msg"] and "eth0" in out.out["msg"]


def test_check_fails_when_the_host_veth_left_the_bridge(hl):
    conf = hl.conf("198.18.22.0/24", bridge="mpxt-brck2")
    ns = hl.make_ns("pod")
    res = hl.add(conf, "cck2", ns)
    nsexec(hl.node, "ip", "link", "set", res["interfaces"][1]["name"], "nomaster")
    out = hl.check(conf, res, "cck2", ns)
    assert out.code == 104 and "not attached to bridge mpxt-brck2" in out.out["msg"], out


def test_del_twice_releases_the_lease_and_keeps_the_bridge(lab):
    conf = lab.conf("198.18.23.0/24", bridge="mpxt-brdel")
    ns = lab.make_ns("pod")
    lab.add(conf, "cdel", ns, "net1")
    assert lab.leases() != []
    for _ in range(2):
        out = lab.cni("DEL", conf, "cdel", ns, "net1")
        assert out.ok, out
    assert links(ns) == {"lo"}
    assert lab.node_links("veth") == set()
    assert lab.leases() == []
    assert "mpxt-brdel" in lab.node_links("bridge")  # the bridge stays for the next pod


def test_del_after_the_pod_netns_is_gone(lab):
    conf = lab.conf("198.18.24.0/24", bridge="mpxt-brgone", ipMasq=True)
    ns = lab.make_ns("pod")
    lab.add(conf, "cgone", ns)
    subprocess.run(["ip", "netns", "del", ns], check=True)
    out = lab.cni("DEL", conf, "cgone", ns)
    assert out.ok, out
    assert lab.node_links("veth") == set()
    assert lab.leases() == []
    assert [r for r in lab.masq_rules() if r.get("comment")] == []


def test_gc_removes_stale_attachments_of_this_network_only(lab):
    conf = lab.conf("198.18.25.0/24", bridge="mpxt-brgc", ipMasq=True)
    other = lab.conf("198.18.26.0/24", name="other", bridge="mpxt-brgc2")
    keep, stale, foreign = lab.make_ns("pod"), lab.make_ns("pod"), lab.make_ns("pod")
    lab.add(conf, "ckeep", keep)
    lab.add(conf, "cstale", stale)
    lab.add(other, "cforeign", foreign)
    gc = dict(conf, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "ckeep", "ifname": "eth0"}]})
    out = lab.cni("GC", gc)
    assert out.ok, out
    assert links(stale) == {"lo"}
    assert links(keep) == {"lo", "eth0"} and links(foreign) == {"lo", "eth0"}
    assert {r.get("comment") for r in lab.masq_rules()} == {"ckeep/eth0/bnet"}
    if lab.ipam_type == "host-local":
        # Debian's host-local speaks CNI 1.0.0: GC and STATUS are not forwarded to it (it would fail
        # them), so its lease of the stale pod stays; links and rules are still collected
        assert len(lab.leases("bnet")) == 2
    else:
        assert len(lab.leases("bnet")) == 1
    assert lab.cni("STATUS", gc).ok


def test_add_with_an_old_cni_version_writes_that_version(hl):
    conf = dict(hl.conf("198.18.27.0/24", bridge="mpxt-brold"), cniVersion="0.4.0")
    res = hl.add(conf, "cold", hl.make_ns("pod"))
    assert res["cniVersion"] == "0.4.0"
    assert res["ips"][0]["version"] == "4"


def test_multiplex_ipam_add_check_del(node, netns_factory, tmp_path):
    lab = BridgeLab(node=node, root=str(tmp_path), make_ns=netns_factory, ipam_type="multiplex-ipam")
    conf = lab.conf("198.18.28.0/24", "fd00:28::/64", bridge="mpxt-brmi", isGateway=True)
    ns = lab.make_ns("pod")
    res = lab.add(conf, "cmi", ns)
    assert {ip["address"] for ip in res["ips"]} == addresses(ns, "eth0")
    assert lab.check(conf, res, "cmi", ns).ok
    assert lab.cni("DEL", conf, "cmi", ns).ok and lab.leases() == []
