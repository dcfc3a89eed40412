"""multiplex-bgp-routed on one node, as root: the pod side as Calico makes it (address /32 and /128,
default via 169.254.1.1 / fe80::1), the node side (host veth without address, proxy ARP, the host
route), traffic node <-> pod, CHECK, DEL twice, GC; bad input refused naming the field with
nothing left. The routes between nodes (BIRD) are tests/netns/test_bgp_routed_cluster.py."""
from __future__ import annotations

import ipaddress

import pytest

from tests.cnitool import ip_json, links, nsexec, ping, run_plugin

pytestmark = pytest.mark.root

PLUGIN = "multiplex-bgp-routed"


@pytest.fixture
def routed(node, tmp_path):
    """The node with an underlay-like interface (a veth to nowhere: this kernel has no dummy) and
    addresses: the node's source for traffic to its pods."""
    nsexec(node, "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
    nsexec(node, "ip", "link", "set", "ul0p", "up")
    nsexec(node, "ip", "addr", "add", "198.19.5.1/24", "dev", "ul0")
    nsexec(node, "ip", "addr", "add", "fd00:19:5::1/64", "dev", "ul0", "nodad")
    nsexec(node, "ip", "link", "set", "ul0", "mtu", "1400", "up")
    return node


def conf(tmp_path, ranges=None, **extra) -> dict:
    ranges = ranges or [[{"subnet": "198.18.64.0/24"}], [{"subnet": "fd00:64::/64"}]]
    return {"cniVersion": "1.1.0", "name": "routed", "type": PLUGIN,
            "ipam": {"type": "multiplex-ipam", "dataDir": str(tmp_path / "ipam"), "ranges": ranges}, **extra}


def cni(node, command, config, cid, pod, **kw):
    return run_plugin(PLUGIN, command, config, node=node, container_id=cid, netns=pod, **kw)


def host_links(node) -> set[str]:
    return {l for l in links(node) if l.startswith("mpr")}


def test_dual_stack_pod_is_routed_through_its_host_veth(routed, netns_factory, tmp_path):
    pod = netns_factory("pod")
    c = conf(tmp_path)
    out = cni(routed, "ADD", c, "cdual", pod)
    assert out.ok, out
    v4, v6 = (ipaddress.ip_interface(ip["address"]) for ip in out.out["ips"])
    assert (v4.network.prefixlen, v6.network.prefixlen) == (32, 128)
    # the pod: addresses as host prefixes, the gateways on-link and as permanent neighbours
    addrs = {f"{a['local']}/{a['prefixlen']}" for i in ip_json(pod, "addr", "show", "dev", "eth0")
             for a in i["addr_info"] if a["scope"] == "global"}
    assert addrs == {str(v4), str(v6)}
    routes4 = {(r["dst"], r.get("gateway")) for r in ip_json(pod, "-4", "route")}
    assert routes4 == {("default", "169.254.1.1"), ("169.254.1.1", None)}
    assert ("default", "fe80::1") in {(r["dst"], r.get("gateway")) for r in ip_json(pod, "-6", "route")}
    host = out.out["interfaces"][0]
    neigh = {(n["dst"], n.get("lladdr")) for n in ip_json(pod, "neigh", "show", "dev", "eth0")}
    assert {("169.254.1.1", host["mac"]), ("fe80::1", host["mac"])} <= neigh
    # the node: no global address on the host veth, proxy ARP, the /32 and /128 routes, forwarding
    name = host["name"]
    assert name.startswith("mpr") and len(name) == 15
    hostaddrs = {(a["local"], a["scope"]) for i in ip_json(routed, "addr", "show", "dev", name) for a in i["addr_info"]}
    assert ("fe80::1", "link") in hostaddrs and not [a for a in hostaddrs if a[1] != "link"]
    assert nsexec(routed, "sysctl", "-n", f"net.ipv4.conf.{name}.proxy_arp").stdout.strip() == "1"
    assert nsexec(routed, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    node_routes = {(r["dst"], r.get("dev")) for r in ip_json(routed, "route")} | \
                  {(r["dst"], r.get("dev")) for r in ip_json(routed, "-6", "route")}
    assert {(str(v4.ip), name), (str(v6.ip), name)} <= node_routes
    # the pod's MTU is the underlay's (nothing encapsulates routed traffic)
    assert ip_json(pod, "link", "show", "eth0")[0]["mtu"] == 1400
    # traffic both ways, both families
    assert ping(routed, str(v4.ip)) and ping(routed, str(v6.ip))
    assert ping(pod, "198.19.5.1") and ping(pod, "fd00:19:5::1")
    # CHECK agrees; a removed host route is reported
    prev = dict(c, prevResult=out.out)
    assert cni(routed, "CHECK", prev, "cdual", pod).ok
    nsexec(routed, "ip", "route", "del", str(v4.ip), "dev", name)
    bad = cni(routed, "CHECK", prev, "cdual", pod)
    assert bad.code == 104 and "host route" in bad.out["msg"], bad
    # DEL: the veth (and its routes) gone, the lease free; a second DEL succeeds
    assert cni(routed, "DEL", c, "cdual", pod).ok
    assert host_links(routed) == set() and links(pod) == {"lo"}
    assert cni(routed, "DEL", c, "cdual", pod).ok


def test_ipv4_only_and_ipv6_only(routed, netns_factory, tmp_path):
    for n, ranges, want in ((4, [[{"subnet": "198.18.65.0/24"}]], {"169.254.1.1"}),
                            (6, [[{"subnet": "fd00:65::/64"}]], {"fe80::1"})):
        pod = netns_factory("pod")
        out = cni(routed, "ADD", conf(tmp_path / str(n), ranges), f"c{n}", pod)
        assert out.ok, out
        assert {r.get("gw") for r in out.out["routes"] if "gw" in r} == want
        addr = ipaddress.ip_interface(out.out["ips"][0]["address"])
        assert addr.version == n and ping(routed, str(addr.ip))


def test_gc_removes_what_the_keep_list_does_not_keep(routed, netns_factory, tmp_path):
    c = conf(tmp_path)
    pods = {cid: netns_factory("pod") for cid in ("ckeep", "cgone")}
    for cid, pod in pods.items():
        assert cni(routed, "ADD", c, cid, pod).ok
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "ckeep", "ifname": "eth0"}]})
    out = run_plugin(PLUGIN, "GC", gc, node=routed)
    assert out.ok, out
    from delegates.bgp_routed import host_veth_name
    assert host_links(routed) == {host_veth_name("ckeep", "eth0")}


BAD = [
    pytest.param({"mtu": 1000}, "$.mtu", id="mtu-too-small-for-ipv6"),
    pytest.param({"mtu": 40}, "$.mtu", id="mtu-under-68"),
    pytest.param({"gateway": "10.0.0.1"}, "$.gateway", id="unknown-field"),
    pytest.param({"ipam": {"type": "../x"}}, "$.ipam.type", id="ipam-type-a-path"),
    pytest.param({"ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "not-a-cidr"}]]}}, "$.ipam.ranges",
                 id="ipam-range-not-a-cidr"),
]


@pytest.mark.parametrize("change, field", BAD)
def test_bad_config_is_refused_naming_the_field_and_leaves_nothing(routed, netns_factory, tmp_path, change, field):
    pod = netns_factory("pod")
    out = cni(routed, "ADD", dict(conf(tmp_path), **change), "cbad", pod)
    assert out.rc == 1 and out.code == 7, out
    assert field in out.out["details"], out
    assert host_links(routed) == set() and links(pod) == {"lo"}
    assert not (tmp_path / "ipam").exists(), "IPAM was asked before the config was checked"


def test_a_failed_ipam_undoes_the_veth(routed, netns_factory, tmp_path):
    """A range with no free address: the IPAM's error comes back and no veth is left."""
    c = conf(tmp_path, [[{"subnet": "198.18.66.0/29", "rangeStart": "198.18.66.2", "rangeEnd": "198.18.66.2"}]])
    first = netns_factory("pod")
    assert cni(routed, "ADD", c, "cfirst", first).ok
    pod = netns_factory("pod")
    out = cni(routed, "ADD", c, "csecond", pod)
    assert out.rc == 1 and "exhausted" in out.out["msg"], out
    assert len(host_links(routed)) == 1 and links(pod) == {"lo"}
    # DEL releases the lease: the one address is handed out again
    assert cni(routed, "DEL", c, "cfirst", first).ok
    assert cni(routed, "ADD", c, "csecond", pod).ok


@pytest.mark.parametrize("address, why", [
    pytest.param("198.19.5.7", "ul0", id="a-neighbour-on-the-underlay"),
    pytest.param("198.19.5.1", "address of this node", id="the-nodes-own-address"),
    pytest.param("198.18.64.2", "mpr", id="another-pods-address"),
])
def test_an_address_the_node_reaches_on_a_link_is_refused_and_nothing_left(routed, netns_factory, tmp_path,
                                                                           address, why):
    """A NAD's IPAM is its namespace's to choose, but a routed pod's /32 host route would take the
    traffic of an address the node already reaches on a link: the underlay's neighbours (other
    nodes, the router), the node itself, another network's pod. Refused naming `ipam`; the lease
    and the veth go; the owner's route stays."""
    first = netns_factory("pod")
    assert cni(routed, "ADD", conf(tmp_path, [[{"subnet": "198.18.64.0/24", "rangeStart": "198.18.64.2",
                                                "rangeEnd": "198.18.64.2"}]]), "cowner", first).ok
    before = ip_json(routed, "route", "show")
    subnet = str(ipaddress.ip_network(f"{address}/24", strict=False))
    rogue = dict(conf(tmp_path / "rogue" / "state", [[{"subnet": subnet, "rangeStart": address, "rangeEnd": address,
                                                             "gateway": subnet.replace("0/24", "254")}]]),
                 name="tenant.rogue")
    pod = netns_factory("pod")
    out = cni(routed, "ADD", rogue, "crogue", pod)
    assert out.rc == 1 and out.code == 7, out
    assert "field: $.ipam" in out.out["details"] and why in out.out["msg"], out
    assert ip_json(routed, "route", "show") == before, "the rogue address was routed"
    assert len(host_links(routed)) == 1 and links(pod) == {"lo"}
    from tests.netns.test_bridge_lab import BridgeLab

    lab = BridgeLab(node=routed, root=str(tmp_path / "rogue"), make_ns=None, ipam_type="multiplex-ipam")
    assert lab.leases("tenant.rogue") == [], "the lease was kept"
