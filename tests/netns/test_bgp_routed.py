"""multiplex-bgp-routed on one node, as root: the pod side as Calico makes it (address /32 and /128,
default via 169.254.1.1 / fe80::1), the node side (host veth without address, proxy ARP, the host
route), traffic node <-> pod, CHECK, DEL twice, GC; bad input refused naming the field with
nothing left. The routes between nodes (BIRD) are tests/netns/test_bgp_routed_cluster.py."""
from __future__ import annotations

import ipaddress
import os

import pytest

from tests.cnitool import ip_json, links, nsexec, ping, run_plugin

pytestmark = pytest.mark.root

PLUGIN = "multiplex-bgp-routed"


#: the admin's IPPools on the test API server: every range below lies in them
POOLS = ("198.18.64.0/18", "fd00:64::/31", "198.18.160.0/20", "fd00:160::/48")
KUBECONFIG: dict[str, str] = {}
APIS: dict[str, object] = {}


@pytest.fixture
def routed(node, tmp_path, request):
    """The node with an underlay-like interface (a veth to nowhere: this kernel has no dummy) and
    addresses: the node's source for traffic to its pods; a test API server on the node's loopback
    holding the admin's IPPools, whose kubeconfig every call carries (MULTIPLEX_KUBECONFIG, as the
    meta plugin passes its own): a one-shot call's source of pools."""
    from tests.k8s.apiserver import ApiServer
    from tests.k8s.ipam_kube_support import install_crds

    nsexec(node, "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
    nsexec(node, "ip", "link", "set", "ul0p", "up")
    nsexec(node, "ip", "addr", "add", "198.19.5.1/24", "dev", "ul0")
    nsexec(node, "ip", "addr", "add", "fd00:19:5::1/64", "dev", "ul0", "nodad")
    nsexec(node, "ip", "link", "set", "ul0", "mtu", "1400", "up")
    api = ApiServer(netns=f"/var/run/netns/{node}").start()
    request.addfinalizer(api.stop)
    install_crds(api)
    for cidr in POOLS:
        add_pool(api, cidr)
    KUBECONFIG[node] = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    APIS[node] = api
    request.addfinalizer(lambda: (KUBECONFIG.pop(node, None), APIS.pop(node, None)))
    return node


def add_pool(api, cidr: str) -> None:
    from multiplex.ipam.kube.model import API_VERSION, POOL_KIND, POOLS as PLURAL

    name = "pool-" + cidr.replace(".", "-").replace(":", "-").replace("/", "-")
    api.store.add({"apiVersion": API_VERSION, "kind": POOL_KIND, "metadata": {"name": name},
                   "spec": {"cidr": cidr}}, PLURAL)


def conf(tmp_path, ranges=None, **extra) -> dict:
    ranges = ranges or [[{"subnet": "198.18.64.0/24"}], [{"subnet": "fd00:64::/64"}]]
    return {"cniVersion": "1.1.0", "name": "routed", "type": PLUGIN,
            "ipam": {"type": "multiplex-ipam", "dataDir": str(tmp_path / "ipam"), "ranges": ranges}, **extra}


def cni(node, command, config, cid, pod, ifname="eth0", kubeconfig=True, **kw):
    env = {"MULTIPLEX_KUBECONFIG": KUBECONFIG[node]} if kubeconfig and node in KUBECONFIG else {}
    return run_plugin(PLUGIN, command, config, node=node, container_id=cid, netns=pod, ifname=ifname,
                      extra_env=env, **kw)


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
    out = run_plugin(PLUGIN, "GC", gc, node=routed, extra_env={"MULTIPLEX_KUBECONFIG": KUBECONFIG[routed]})
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
    and the veth go; the owner's route stays. The underlay's addresses are in no IPPool, which
    refuses them first (the test below): here the admin made a pool overlapping the underlay by
    mistake, and the on-link check still stands."""
    add_pool(APIS[routed], "198.19.5.0/24")
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


# ---- the addresses must lie in an IPPool ------------------------------------------------------------
def test_a_range_outside_every_ippool_is_refused_before_ipam_and_the_nodes_route_stays(routed, netns_factory,
                                                                                       tmp_path):
    """A tenant's range holding an address the node reaches off-link (the API server behind a
    gateway): its /32 would hijack the node's traffic. Refused naming the range, before IPAM is
    asked (no lease store made), nothing on the node; the node's route is still how it goes."""
    nsexec(routed, "ip", "route", "add", "198.19.7.0/24", "via", "198.19.5.254", "dev", "ul0")
    before = ip_json(routed, "route", "show")
    pod = netns_factory("pod")
    rogue = conf(tmp_path, [[{"subnet": "198.18.64.0/24"}], [{"subnet": "198.19.7.0/24", "rangeStart": "198.19.7.10",
                                                              "rangeEnd": "198.19.7.10"}]])
    out = cni(routed, "ADD", rogue, "coff", pod)
    assert out.rc == 1 and out.code == 7, out
    assert "field: $.ipam.ranges[1][0]" in out.out["details"] and "198.18.64.0/18" in out.out["msg"], out
    assert ip_json(routed, "route", "show") == before and host_links(routed) == set() and links(pod) == {"lo"}
    assert not (tmp_path / "ipam").exists(), "IPAM was asked"
    got = ip_json(routed, "route", "get", "198.19.7.10")[0]
    assert got["dev"] == "ul0" and got.get("gateway") == "198.19.5.254"


def test_an_address_an_exec_ipam_gives_outside_every_ippool_is_released(routed, netns_factory, tmp_path):
    """host-local's legacy top-level `subnet` is not read ahead: the address it gives is checked
    after it answered, refused naming the address, and its lease released; nothing left."""
    pod = netns_factory("pod")
    data = tmp_path / "hl"
    c = {"cniVersion": "1.0.0", "name": "hl", "type": PLUGIN,
         "ipam": {"type": "host-local", "subnet": "198.19.8.0/24", "dataDir": str(data)}}
    before = ip_json(routed, "route", "show")
    out = cni(routed, "ADD", c, "chl", pod)
    assert out.rc == 1 and out.code == 7, out
    assert "field: $.ipam (address 198.19.8." in out.out["details"] and "not inside an IPPool" in out.out["msg"], out
    assert ip_json(routed, "route", "show") == before and host_links(routed) == set() and links(pod) == {"lo"}
    leases = [f.name for f in (data / "hl").iterdir() if f.name[0].isdigit()] if (data / "hl").exists() else []
    assert leases == [], "host-local's lease was kept"


def test_without_a_source_of_ippools_a_local_ipam_is_refused(routed, netns_factory, tmp_path):
    """A one-shot call with neither the daemon nor a kubeconfig cannot know what is safe to route:
    code 7 naming $.ipam and how to fix it; nothing made, IPAM not asked."""
    pod = netns_factory("pod")
    out = cni(routed, "ADD", conf(tmp_path), "cnone", pod, kubeconfig=False)
    assert out.rc == 1 and out.code == 7 and "IPPools" in out.out["msg"], out
    assert "field: $.ipam;" in out.out["details"] and "store kubernetes" in out.out["details"], out
    assert host_links(routed) == set() and links(pod) == {"lo"} and not (tmp_path / "ipam").exists()


# ---- a secondary network --------------------------------------------------------------------------
def pod_routes_of(ns: str, dev: str) -> set[tuple]:
    """(dst, gateway, metric) of the pod's routes out of `dev`, both families (link-local ones aside)."""
    out = set()
    for fam in ("-4", "-6"):
        for r in ip_json(ns, fam, "route", "show", "dev", dev):
            if r.get("protocol") == "kernel" or r["dst"].startswith("fe80::"):
                continue
            out.add((("0.0.0.0/0" if fam == "-4" else "::/0") if r["dst"] == "default" else r["dst"]
                     if "/" in r["dst"] else r["dst"] + ("/32" if fam == "-4" else "/128"), r.get("gateway"),
                     r.get("metric") if fam == "-4" else None))
    return out


def result_routes(out) -> set[tuple]:
    return {(r["dst"], r.get("gw"), r.get("priority") if ":" not in r["dst"] else None) for r in out.out["routes"]}


def test_a_secondary_attachment_routes_the_pools_and_records_what_it_installed(routed, netns_factory, tmp_path):
    """Pod A: a bridge on eth0 (its default routes) and bgp-routed as net1. Pod B: bgp-routed on
    eth0 and again on net1 (the IPv4 gateway's on-link route exists on eth0 already). The secondary
    attachments route the pools via the gateway instead of a default; the routes in the pods are
    exactly those in the results; the first networks' defaults stay; pings cross."""
    from tests.netns.mpxlab import bridge_conf

    a, b = netns_factory("pod"), netns_factory("pod")
    br = dict(bridge_conf(f"mpxb{os.getpid() % 100000}", "198.18.200.0/24", "fd00:200::/64", isGateway=True,
                          isDefaultGateway=True), cniVersion="1.1.0", name="first")
    br["ipam"]["dataDir"] = str(tmp_path / "bripam")
    first = run_plugin("multiplex-bridge", "ADD", br, node=routed, container_id="ca", netns=a)
    assert first.ok, first
    defaults_a = {(r["dst"], r.get("gateway"), r.get("dev")) for f in ("-4", "-6") for r in ip_json(a, f, "route")
                  if r["dst"] == "default"}
    assert {d[2] for d in defaults_a} == {"eth0"} and len(defaults_a) == 2, defaults_a
    c1 = conf(tmp_path / "n1", [[{"subnet": "198.18.64.0/24"}], [{"subnet": "fd00:64::/64"}]])
    c2 = conf(tmp_path / "n2", [[{"subnet": "198.18.160.0/24"}], [{"subnet": "fd00:160::/64"}]], name="routed2")
    sec_a = cni(routed, "ADD", c1, "ca", a, ifname="net1")
    assert sec_a.ok, sec_a
    prim_b = cni(routed, "ADD", c1, "cb", b)
    assert prim_b.ok, prim_b
    sec_b = cni(routed, "ADD", c2, "cb", b, ifname="net1")
    assert sec_b.ok, sec_b

    for ns, out, pools in ((a, sec_a, {"198.18.64.0/18", "fd00:64::/31"}),
                           (b, sec_b, {"198.18.160.0/20", "fd00:160::/48"})):
        assert pod_routes_of(ns, "net1") == result_routes(out), (out.out["routes"], ip_json(ns, "route"))
        dsts = {r["dst"] for r in out.out["routes"]}
        assert pools <= dsts and not dsts & {"0.0.0.0/0", "::/0"}, dsts
    # the first networks' defaults stay
    assert {(r["dst"], r.get("gateway"), r.get("dev")) for f in ("-4", "-6") for r in ip_json(a, f, "route")
            if r["dst"] == "default"} == defaults_a
    assert {(r.get("gateway"), r.get("dev")) for f in ("-4", "-6") for r in ip_json(b, f, "route")
            if r["dst"] == "default"} == {("169.254.1.1", "eth0"), ("fe80::1", "eth0")}
    # pings cross: A's net1 to B's two attachments, both families
    for out in (prim_b, sec_b):
        for ip in out.out["ips"]:
            assert ping(a, ip["address"].split("/")[0]), ip
    # CHECK agrees with what ADD made; DEL leaves the first networks as they were
    assert cni(routed, "CHECK", dict(c1, prevResult=sec_a.out), "ca", a, ifname="net1").ok
    assert cni(routed, "CHECK", dict(c2, prevResult=sec_b.out), "cb", b, ifname="net1").ok
    assert cni(routed, "DEL", c1, "ca", a, ifname="net1").ok
    assert {(r["dst"], r.get("gateway"), r.get("dev")) for f in ("-4", "-6") for r in ip_json(a, f, "route")
            if r["dst"] == "default"} == defaults_a
    assert run_plugin("multiplex-bridge", "DEL", br, node=routed, container_id="ca", netns=a).ok


def test_check_reports_the_node_side_an_ipv6_pod_and_forwarding_need(routed, netns_factory, tmp_path):
    """CHECK verifies all ADD made on the node: the host veth's fe80::1/64 (the pod's IPv6
    gateway: without it the node answers no NDP for it, so a pod whose neighbour entry is gone
    loses IPv6) and forwarding per family (off: the pod reaches nothing past its node)."""
    pod = netns_factory("pod")
    c = conf(tmp_path)
    out = cni(routed, "ADD", c, "cchk", pod)
    assert out.ok, out
    prev = dict(c, prevResult=out.out)
    name = out.out["interfaces"][0]["name"]
    nsexec(routed, "ip", "addr", "del", "fe80::1/64", "dev", name)
    bad = cni(routed, "CHECK", prev, "cchk", pod)
    assert bad.code == 104 and "fe80::1/64" in bad.out["msg"], bad
    nsexec(routed, "ip", "addr", "add", "fe80::1/64", "dev", name, "nodad")
    assert cni(routed, "CHECK", prev, "cchk", pod).ok
    for key, family in (("net.ipv4.ip_forward", "IPv4"), ("net.ipv6.conf.all.forwarding", "IPv6")):
        nsexec(routed, "sysctl", "-qw", f"{key}=0")
        bad = cni(routed, "CHECK", prev, "cchk", pod)
        assert bad.code == 104 and f"{family} forwarding is off" in bad.out["msg"], bad
        nsexec(routed, "sysctl", "-qw", f"{key}=1")
    assert cni(routed, "CHECK", prev, "cchk", pod).ok


def test_ipam_routes_keep_their_metric_and_table(routed, netns_factory, tmp_path):
    """IPAM's routes are honoured as given (metric, table), only their gateway is the node's (a
    routed pod has nothing else on-link); the result records what the pod has."""
    pod = netns_factory("pod")
    c = conf(tmp_path)
    c["ipam"]["routes"] = [{"dst": "198.18.128.0/24", "priority": 50, "table": 100},
                           {"dst": "fd00:128::/64", "priority": 70}]
    out = cni(routed, "ADD", c, "croutes", pod)
    assert out.ok, out
    t100 = {(r["dst"], r.get("gateway"), r.get("metric")) for r in ip_json(pod, "route", "show", "table", "100")}
    assert t100 == {("198.18.128.0/24", "169.254.1.1", 50)}, t100
    six = {(r["dst"], r.get("gateway"), r.get("metric")) for r in ip_json(pod, "-6", "route")}
    assert ("fd00:128::/64", "fe80::1", 70) in six, six
    recorded = {(r["dst"], r.get("priority"), r.get("table")) for r in out.out["routes"]}
    assert {("198.18.128.0/24", 50, 100), ("fd00:128::/64", 70, None)} <= recorded, recorded
    assert cni(routed, "CHECK", dict(c, prevResult=out.out), "croutes", pod).ok


def test_a_secondary_attachment_whose_pool_the_pod_routes_already_fails_and_leaves_nothing(routed, netns_factory,
                                                                                          tmp_path):
    """The pod's first network routes the pool itself: the kernel refuses net1's route to it. That
    was hidden (the result claimed a route the pod did not have); now the ADD fails naming the
    route, and the veth and the lease go."""
    pod = netns_factory("pod")
    nsexec(pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    nsexec(pod, "ip", "link", "set", "eth0", "up")
    nsexec(pod, "ip", "addr", "add", "198.18.201.2/24", "dev", "eth0")
    nsexec(pod, "ip", "route", "add", "default", "via", "198.18.201.1")
    nsexec(pod, "ip", "route", "add", "198.18.64.0/18", "via", "198.18.201.1")
    before = ip_json(pod, "route")
    c = conf(tmp_path, [[{"subnet": "198.18.64.0/24", "rangeStart": "198.18.64.9", "rangeEnd": "198.18.64.9"}]])
    out = cni(routed, "ADD", c, "cclash", pod, ifname="net1")
    assert out.rc == 1 and out.code == 105 and "198.18.64.0/18" in out.out["msg"], out
    assert ip_json(pod, "route") == before and "net1" not in links(pod) and host_links(routed) == set()
    # the lease went with it: the same single address is handed out again once the clash is gone
    nsexec(pod, "ip", "route", "del", "198.18.64.0/18")
    again = cni(routed, "ADD", c, "cother", pod, ifname="net2")
    assert again.ok and again.out["ips"][0]["address"] == "198.18.64.9/32", again


def test_a_secondary_attachment_from_the_pool_of_the_pods_eth0_is_refused_and_leaves_nothing(routed, netns_factory,
                                                                                            tmp_path):
    """bgp-routed on eth0, and net1 from the same pool: net1's route to the pool would take eth0's
    traffic to every other pod of it (and its replies). Code 7 naming $.ipam, naming eth0's
    address; no veth, no route, no lease left (the single address is handed out again)."""
    pod = netns_factory("pod")
    first = cni(routed, "ADD", conf(tmp_path / "n1"), "cpool", pod)
    assert first.ok, first
    before = ip_json(pod, "route"), host_links(routed)
    c = conf(tmp_path / "n2", [[{"subnet": "198.18.65.0/24", "rangeStart": "198.18.65.7", "rangeEnd": "198.18.65.7"}]],
             name="routed2")
    out = cni(routed, "ADD", c, "cpool", pod, ifname="net1")
    eth0_v4 = first.out["ips"][0]["address"].split("/")[0]
    assert out.code == 7 and "$.ipam" in out.out["details"] and eth0_v4 in out.out["msg"], out
    assert (ip_json(pod, "route"), host_links(routed)) == before and "net1" not in links(pod)
    other = netns_factory("pod")
    again = cni(routed, "ADD", c, "cother2", other)
    assert again.ok and again.out["ips"][0]["address"] == "198.18.65.7/32", again
