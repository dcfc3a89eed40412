"""`multiplex inspect` on a lab pod, as an admin runs it on the node (the command inside the node
netns, the node's state dir): a pod with every kind of attachment this machine's kernel has -
eth0 on a multiplex-bridge cluster network (IPv4, gateway, ipMasq), net1 on a dual-stack
multiplex-bridge network, net2 a reference macvlan exec'd from CNI_PATH with multiplex-ipam.

What is checked is what the admin would compare it with: the pod's interfaces, MACs, addresses
and routes read with `ip` in the pod, the node's veths and bridges, the IPAM leases, the nft rule.
Then the kernel is changed by hand (an address deleted, an interface deleted, a lease and the
masquerade rule removed, the netns deleted) and inspect must say so, still with exit 0; an unknown
pod or container is exit 1 with a message. (Bridge VLANs need a kernel with bridge VLAN filtering,
which the VM tier has; inspect reads them from the port like any other node side.)
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest

from tests.cnitool import BIN, addresses, ip_json, nsexec
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = pytest.mark.root

MULTIPLEX = os.path.join(BIN, "multiplex")


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    master = f"mpxim{os.getpid() % 10000}"
    # the macvlan master: one end of a veth pair in the node (this kernel has no dummy links)
    nsexec(node, "ip", "link", "add", master, "type", "veth", "peer", "name", master + "p")
    nsexec(node, "ip", "link", "set", master, "up")
    nsexec(node, "ip", "link", "set", master + "p", "up")
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf("mpxipod", "198.18.60.0/24", isGateway=True, isDefaultGateway=True,
                                      ipMasq=True))
    lab.add_nad("dual", bridge_conf("mpxidual", "198.18.61.0/24", "fd00:61::/64"))
    lab.add_nad("ref", {"cniVersion": "1.0.0", "type": "macvlan", "master": master, "mode": "bridge",
                        "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.62.0/24"}]]}})
    lab.master = master
    return lab


def add_pod(lab: Lab, name: str) -> str:
    return lab.attach(name, "dual,ref")


def inspect(lab: Lab, target: str, *args: str) -> subprocess.CompletedProcess:
    """`multiplex inspect` on the node, as the admin runs it there."""
    return subprocess.run(["ip", "netns", "exec", lab.node, MULTIPLEX, "inspect", target,
                           "--state-dir", lab.state_dir, *args], capture_output=True, text=True, timeout=60)


def inspect_json(lab: Lab, target: str) -> dict:
    got = inspect(lab, target, "-o", "json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)          # one JSON document, nothing else on stdout


def link_of(ns: str, name: str) -> dict:
    [link] = ip_json(ns, "-d", "link", "show", "dev", name)
    return link


def routes_of(ns: str, dev: str) -> set[tuple[str, str | None]]:
    """(dst, gw) of the main table's routes out of `dev`, IPv4 and IPv6 (link-local left out)."""
    out = set()
    for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        for r in ip_json(ns, family, "route", "show", "dev", dev):
            dst = default if r["dst"] == "default" else r["dst"]
            if dst.startswith("fe80:"):
                continue
            if "/" not in dst:
                dst += "/32" if family == "-4" else "/128"
            out.add((dst, r.get("gateway")))
    return out


def test_inspect_shows_each_attachment_as_the_kernel_and_the_ipam_store_have_it(lab):
    pod = add_pod(lab, "web")
    report = inspect_json(lab, "default/web")
    assert report["differs"] == []
    [entry] = report["entries"]
    assert entry["pod"]["name"] == "web" and entry["containerID"] == "cid-web"
    assert entry["netns"] == f"/var/run/netns/{pod}" and entry["netnsExists"]
    atts = {a["ifname"]: a for a in entry["attachments"]}
    assert list(atts) == ["eth0", "net1", "net2"]
    assert [(a["network"], a["nad"], a["delegate"], a["cluster"], a["defaultRoute"]) for a in atts.values()] == [
        ("podnet", "default/podnet", "multiplex-bridge", True, True),
        ("default/dual", "default/dual", "multiplex-bridge", False, False),
        ("default/ref", "default/ref", "macvlan", False, False)]

    leases = {(addr, ifname) for addr, ifname in lab.lease_rows("address, ifname")}
    node_veths = {l["ifname"]: l for l in ip_json(lab.node, "-d", "link", "show") if l.get("ifalias")}
    for ifname, att in atts.items():
        live = link_of(pod, ifname)
        iface = att["interface"]
        assert iface["mac"] == live["address"] and iface["mtu"] == live["mtu"]
        assert set(iface["addresses"]) == addresses(pod, ifname) != set()
        assert {(r["dst"], r["gw"]) for r in iface["routes"]} == routes_of(pod, ifname)
        assert {(l["address"], ifname) for l in att["leases"]} == {(a, i) for a, i in leases if i == ifname}
        assert all(l["store"] == "sqlite" and l["owner"]["containerID"] == "cid-web" for l in att["leases"])
    assert ("0.0.0.0/0", "198.18.60.1") in {(r["dst"], r["gw"]) for r in atts["eth0"]["interface"]["routes"]}
    assert {a.split("/")[0] for a in atts["net1"]["interface"]["addresses"]} == {"198.18.61.2", "fd00:61::2"}

    # the node side: each bridge attachment's host veth (found by its alias) on its bridge
    for ifname, bridge in (("eth0", "mpxipod"), ("net1", "mpxidual")):
        [host] = [n for n, l in node_veths.items() if l["ifalias"].startswith(f"cid-web/{ifname}/")]
        node = atts[ifname]["node"]
        assert (node["kind"], node["peer"], node["bridge"]) == ("veth", host, bridge)
        assert node["peerMac"] == node_veths[host]["address"]
    assert atts["net2"]["node"] == {"kind": "macvlan", "master": lab.master}

    # the masquerade rule of eth0, as nft lists it on the node
    [rule] = atts["eth0"]["nft"]
    assert rule["comment"] == "cid-web/eth0/default.podnet" and rule["table"] == "inet multiplex_masq"
    assert "198.18.60.2" in rule["rule"] and rule["rule"] in lab.node_nft()
    assert atts["net1"]["nft"] == atts["net2"]["nft"] == []

    # the table says the same; a unique container ID prefix finds the same pod
    table = inspect(lab, "default/web")
    assert table.returncode == 0, table.stderr
    text = table.stdout
    assert "pod default/web  container cid-web" in text and "differs:" not in text
    for ifname, att in atts.items():
        assert f"interface  {ifname}  mac {att['interface']['mac']}  mtu {att['interface']['mtu']}  up" in text
    assert "addresses  198.18.61.2/24, fd00:61::2/64" in text
    assert "routes     default via 198.18.60.1; 198.18.60.0/24" in text
    assert f"node       macvlan on master {lab.master}" in text
    assert f"veth {atts['net1']['node']['peer']} (mac " in text and "on bridge mpxidual" in text
    assert "lease      sqlite fd00:61::/64 fd00:61::2 owner cid-web/net1/default.dual pod default/web" in text
    assert 'masquerade comment "cid-web/eth0/default.podnet"' in text
    assert inspect_json(lab, "cid-w")["entries"] == report["entries"]


def test_inspect_says_where_the_cache_and_the_kernel_differ(lab):
    pod = add_pod(lab, "web")
    nsexec(pod, "ip", "addr", "del", "fd00:61::2/64", "dev", "net1")
    nsexec(pod, "ip", "link", "del", "net2")
    nsexec(lab.node, "nft", "delete", "table", "inet", "multiplex_masq")
    [db] = [os.path.join(lab.state_dir, "ipam", f) for f in os.listdir(os.path.join(lab.state_dir, "ipam"))
            if f.endswith(".db")]
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM leases WHERE address = '198.18.61.2'")
    con.close()

    report = inspect_json(lab, "default/web")
    assert sorted(report["differs"]) == sorted([
        "cid-web eth0: ipMasq is set but no masquerade rule for eth0 is in table inet multiplex_masq on the node",
        "cid-web net1: address fd00:61::2/64 recorded in the cache is missing on net1 in the pod",
        "cid-web net1: address 198.18.61.2 recorded in the cache has no lease in the multiplex-ipam store",
        "cid-web net2: interface net2 is gone from the pod"])
    atts = {a["ifname"]: a for a in report["entries"][0]["attachments"]}
    assert atts["net2"]["interface"] is None and atts["net1"]["interface"]["addresses"] == ["198.18.61.2/24"]
    table = inspect(lab, "default/web")
    assert table.returncode == 0
    assert "  differs: address fd00:61::2/64 recorded in the cache is missing on net1 in the pod" in table.stdout
    assert "  differs: interface net2 is gone from the pod" in table.stdout
    assert table.stdout.count("differs:") == 4

    # the pod's netns is gone (and with it the pod ends of the veths, and their node ends)
    lab_ns = pod
    subprocess.run(["ip", "netns", "del", lab_ns], check=True)
    gone = inspect_json(lab, "default/web")
    [entry] = gone["entries"]
    assert not entry["netnsExists"]
    assert entry["differs"] == [f"the pod's network namespace cannot be read: network namespace "
                                f"/var/run/netns/{lab_ns} does not exist"]
    hosts = [h["name"] for a in entry["attachments"] for h in a["cached"]["host"] if h["name"].startswith("mpx")
             and h["name"] not in ("mpxipod", "mpxidual")]
    assert len(hosts) == 2
    for h in hosts:
        assert any(f"node interface {h} recorded in the cache is gone from the node" in d for d in gone["differs"])
    table = inspect(lab, "default/web")
    assert table.returncode == 0 and f"netns /var/run/netns/{lab_ns}  (gone)" in table.stdout


def test_a_pod_or_container_not_in_the_cache_is_exit_1_with_a_message(lab):
    add_pod(lab, "web")
    add_pod(lab, "db")
    cache = os.path.join(lab.state_dir, "cache")
    for target, message in [
        ("default/nope", f"inspect: pod default/nope is not in the cache at {cache}: no attachment on this "
                         "node was made for it"),
        ("other/web", "inspect: pod other/web is not in the cache"),
        ("feedbeef", f"inspect: container feedbeef is not in the cache at {cache}"),
        ("web", "(a pod named web: give it as default/web)"),
        ("cid-", f"inspect: container ID prefix cid- is ambiguous in the cache at {cache}: it matches cid-db, cid-web"),
    ]:
        got = inspect(lab, target)
        assert got.returncode == 1, (target, got.stdout)
        assert message in got.stderr and got.stdout == "", (target, got.stderr)
    empty = subprocess.run([MULTIPLEX, "inspect", "default/web", "--state-dir", os.path.join(lab.root, "none")],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no such directory; see --state-dir" in empty.stderr
    assert not os.path.exists(os.path.join(lab.root, "none"))          # inspect creates nothing


def test_a_delegate_describe_hook_adds_to_the_node_side(monkeypatch):
    """A built-in delegate with `describe(cached_attachment) -> dict` (vxlan: VTEP and FDB, BGP:
    routes) has what it returns shown as its node side; its `differs` join the attachment's."""
    from multiplex.cli import inspect_attachment
    from multiplex.cni import registry

    seen = []

    class Vxlan:
        def describe(self, att):
            seen.append(att)
            return {"vtep": "vxlan-mpx 198.18.0.1", "differs": ["FDB entry for 02:00:00:00:00:01 is missing"]}

    monkeypatch.setattr(registry, "builtin", lambda name: Vxlan() if name == "multiplex-vxlan-overlay" else None)
    att = {"ifname": "net1", "netconf": {"type": "multiplex-vxlan-overlay"}}
    differs: list[str] = []
    assert inspect_attachment.delegate_view("multiplex-vxlan-overlay", att, differs) == {
        "vtep": "vxlan-mpx 198.18.0.1"}
    assert differs == ["FDB entry for 02:00:00:00:00:01 is missing"] and seen == [att]
    assert inspect_attachment.delegate_view("macvlan", att, differs) == {}


def test_inspect_shows_the_vtep_of_a_vxlan_overlay_and_the_host_routes_of_a_bgp_routed_attachment(lab):
    """vxlan-overlay (static peers) and bgp-routed, as the lab runs them: the overlay's node side
    is its bridge and the VXLAN port on it (VNI, local address, the peers it floods to); the routed
    one's is its host veth on no bridge and the node's host routes to the pod through it (what
    BGP exports). A host route deleted by hand is named as a difference."""
    nsexec(lab.node, "ip", "addr", "add", "198.18.63.1/24", "dev", lab.master)
    lab.add_nad("ovl", {"cniVersion": "1.1.0", "type": "multiplex-vxlan-overlay", "vni": 4263,
                        "underlayInterface": lab.master, "peers": ["198.18.63.2"],
                        "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.65.0/24"}]]}})
    lab.add_nad("rtd", {"cniVersion": "1.1.0", "type": "multiplex-bgp-routed",
                        "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.64.0/24"}],
                                                                      [{"subnet": "fd00:64::/64"}]]}})
    lab.add_pod("web", "ovl,rtd")
    pod = lab.netns_factory("pod")
    # bgp-routed takes addresses only inside the admin's IPPools: one-shot, it lists them through
    # multiplex's kubeconfig (a test API server in the node's netns holding the two pools)
    from tests.k8s.apiserver import ApiServer
    from tests.k8s.ipam_kube_support import install_crds
    from tests.netns.test_bgp_routed import add_pool

    api = ApiServer(netns=f"/var/run/netns/{lab.node}").start()
    try:
        install_crds(api)
        for cidr in ("198.18.64.0/24", "fd00:64::/64"):
            add_pool(api, cidr)
        kubeconfig = api.write_kubeconfig(os.path.join(lab.root, "pools-kubeconfig"))
        out = lab.cni("ADD", "web", pod, env={"MULTIPLEX_KUBECONFIG": kubeconfig})
    finally:
        api.stop()
    assert out.ok, out
    report = inspect_json(lab, "default/web")
    # net2 is a secondary bgp-routed attachment: it routes its pools via 169.254.1.1 (eth0 keeps
    # the default), and the cache records exactly what the pod has
    assert report["differs"] == [], report["differs"]
    atts = {a["ifname"]: a for a in report["entries"][0]["attachments"]}
    ovl, rtd = atts["net1"], atts["net2"]
    assert (ovl["delegate"], rtd["delegate"]) == ("multiplex-vxlan-overlay", "multiplex-bgp-routed")

    [vtep] = ovl["node"]["vteps"]
    [dev] = ip_json(lab.node, "-d", "link", "show", "dev", vtep["name"])
    assert dev["master"] == ovl["node"]["bridge"] and dev["linkinfo"]["info_data"]["id"] == 4263
    assert (vtep["vni"], vtep["local"], vtep["peers"], vtep["mtu"]) == (4263, "198.18.63.1", ["198.18.63.2"],
                                                                         dev["mtu"])

    node = rtd["node"]
    assert node["kind"] == "veth" and "bridge" not in node and "vteps" not in node
    pod_ips = {a.split("/")[0] for a in rtd["interface"]["addresses"]}
    assert len(pod_ips) == 2
    want = {(ip + ("/32" if ":" not in ip else "/128"), None) for ip in pod_ips}
    assert want <= {(r["dst"], r["gw"]) for r in node["routes"]}
    assert want <= routes_of(lab.node, node["peer"])

    text = inspect(lab, "default/web").stdout
    assert f"vtep {vtep['name']} vni 4263 local 198.18.63.1 port {vtep['port']}" in text
    assert "peers 198.18.63.2" in text and "node routes " in text

    v4 = next(ip for ip in pod_ips if ":" not in ip)
    nsexec(lab.node, "ip", "route", "del", f"{v4}/32", "dev", node["peer"])
    again = inspect_json(lab, "default/web")
    assert set(again["differs"]) == {
        f"cid-web net2: the node has no host route to {v4} through {node['peer']}"}, again["differs"]
    assert lab.cni("DEL", "web", pod).ok
