"""multiplex-bridge's teardown by its own marks, as root in a node netns: GC keeps exactly what the
keep-list keeps (whole containers included) and refuses a malformed list before touching anything;
`sweep` (a DEL without a cache) removes every veth and masquerade rule of one container; networks
are told apart by their namespaced name, however long; and one MAC is one port of a network (a
static FDB entry per pod, a MAC in use refused with 103).

What a user checks: veths and their aliases in the node, pod interfaces, nft rules and their
comments, `bridge fdb show`, IPAM leases. Every netns (and so every link and nft table in it) and
the IPAM state (tmp) go away at teardown."""
from __future__ import annotations

import json
import threading

import pytest

from tests.cnitool import ip_json, links, nsexec
from tests.netns.test_bridge_lab import BridgeLab

pytestmark = pytest.mark.root

VALID = "cni.dev/valid-attachments"
VALID_CONTAINERS = "multiplex.dev/valid-containers"


@pytest.fixture
def hl(node, netns_factory, tmp_path):
    return BridgeLab(node=node, root=str(tmp_path), make_ns=netns_factory, ipam_type="host-local")


@pytest.fixture
def mi(node, netns_factory, tmp_path):
    return BridgeLab(node=node, root=str(tmp_path), make_ns=netns_factory, ipam_type="multiplex-ipam")


def veths(lab: BridgeLab) -> dict[str, str]:
    """Host veths in the node: name -> alias."""
    return {l["ifname"]: l.get("ifalias", "") for l in ip_json(lab.node, "-d", "link", "show")
            if l.get("linkinfo", {}).get("info_kind") == "veth"}


def comments(lab: BridgeLab) -> list[str]:
    return sorted(r["comment"] for r in lab.masq_rules() if r.get("comment"))


def gc_conf(conf: dict, valid, containers=None) -> dict:
    out = dict(conf, cniVersion="1.1.0")
    if valid is not None:
        out[VALID] = valid
    if containers is not None:
        out[VALID_CONTAINERS] = containers
    return out


def sweep(lab: BridgeLab, container_id: str, via: str) -> None:
    """A cache-less DEL's sweep, in this process, with the calling thread in the node netns: the
    plugin object itself, or the one the entry-point registry gives the meta plugin."""
    from delegates import bridge
    from multiplex.cni.registry import builtin
    from multiplex.cni.request import Request
    from multiplex.netlink import netns

    plugin = bridge.plugin if via == "direct" else builtin("multiplex-bridge")
    # the config of a sweep is whatever the meta plugin has (here: its own); the bridge never reads it
    req = Request(command="DEL", container_id=container_id, ifname="eth0",
                  config={"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex"})
    with netns.entered(f"/var/run/netns/{lab.node}"):
        plugin.sweep(req)


# ---- sweep ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["direct", "registry"])
def test_sweep_removes_every_attachment_of_the_container_and_nothing_else(hl, via):
    blue = hl.conf("198.18.40.0/24", name="default.blue", isGateway=True, ipMasq=True)
    red = hl.conf("198.18.41.0/24", "fd00:41::/64", name="tenant-b.red", isGateway=True, ipMasq=True)
    a, b = hl.make_ns("pod"), hl.make_ns("pod")
    hl.add(blue, "csweep-a", a, "net1")
    hl.add(red, "csweep-a", a, "net2")
    rb = hl.add(blue, "csweep-b", b, "net1")
    assert len(veths(hl)) == 3 and len(comments(hl)) == 4

    sweep(hl, "csweep-a", via)

    assert veths(hl) == {rb["interfaces"][1]["name"]: "csweep-b/net1/default.blue"}
    assert links(a) == {"lo"} and links(b) == {"lo", "net1"}
    assert comments(hl) == ["csweep-b/net1/default.blue"]
    assert len(hl.node_links("bridge")) == 2  # bridges stay, as after DEL
    sweep(hl, "csweep-a", via)  # twice, and for a container that has nothing: nothing to do, no error
    sweep(hl, "csweep-none", via)
    assert veths(hl) == {rb["interfaces"][1]["name"]: "csweep-b/net1/default.blue"}


def test_sweep_finds_a_container_whose_id_is_hashed_in_the_comment(hl):
    cid = "c" * 128  # the longest container ID: `<cid>/<ifname>/<#net>` would not fit nft's 128 bytes
    conf = hl.conf("198.18.42.0/24", name="default.blue", ipMasq=True)
    ns, other = hl.make_ns("pod"), hl.make_ns("pod")
    hl.add(conf, cid, ns, "net1")
    ro = hl.add(conf, "c" * 127, other, "net1")
    assert all(len(c.encode()) <= 128 for c in comments(hl))
    sweep(hl, cid, "direct")
    assert list(veths(hl)) == [ro["interfaces"][1]["name"]] and links(ns) == {"lo"}
    assert len(comments(hl)) == 1


# ---- GC ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, field", [
    (None, '$["cni.dev/valid-attachments"]'),
    ("csome", '$["cni.dev/valid-attachments"]'),
    ([{"containerId": "cgc-a", "ifName": "net1"}], '$["cni.dev/valid-attachments"][0].containerID'),
])
def test_gc_with_a_malformed_keep_list_is_code_7_and_touches_nothing(hl, bad, field):
    conf = hl.conf("198.18.43.0/24", name="default.blue", ipMasq=True)
    a = hl.make_ns("pod")
    hl.add(conf, "cgc-a", a, "net1")
    before_veths, before_rules, before_leases = veths(hl), comments(hl), hl.leases("default.blue")
    out = hl.cni("GC", gc_conf(conf, bad))
    assert out.rc == 1 and out.code == 7, out
    assert out.out["details"].startswith(f"field: {field}"), out
    assert veths(hl) == before_veths and comments(hl) == before_rules
    assert hl.leases("default.blue") == before_leases and links(a) == {"lo", "net1"}


def test_gc_keeps_every_interface_of_a_listed_container(hl):
    conf = hl.conf("198.18.44.0/24", name="default.blue", ipMasq=True)
    a, b = hl.make_ns("pod"), hl.make_ns("pod")
    hl.add(conf, "cgc-a", a, "net1")
    hl.add(conf, "cgc-a", a, "net2")
    hl.add(conf, "cgc-b", b, "net1")
    # the runtime lists the pod's eth0 only; the meta plugin adds the container as a whole
    out = hl.cni("GC", gc_conf(conf, [{"containerID": "cgc-a", "ifname": "eth0"}], ["cgc-a"]))
    assert out.ok, out
    assert links(a) == {"lo", "net1", "net2"} and links(b) == {"lo"}
    assert comments(hl) == ["cgc-a/net1/default.blue", "cgc-a/net2/default.blue"]
    # without the container-level entry, only listed pairs stay
    out = hl.cni("GC", gc_conf(conf, [{"containerID": "cgc-a", "ifname": "net2"}]))
    assert out.ok, out
    assert links(a) == {"lo", "net2"} and comments(hl) == ["cgc-a/net2/default.blue"]


def test_same_nad_name_in_two_namespaces_is_two_networks(hl):
    mine = hl.conf("198.18.45.0/24", name="default.blue", ipMasq=True)
    theirs = hl.conf("198.18.46.0/24", name="tenant-b.blue", ipMasq=True)
    a, b = hl.make_ns("pod"), hl.make_ns("pod")
    ra, rb = hl.add(mine, "cns-a", a, "net1"), hl.add(theirs, "cns-b", b, "net1")
    assert ra["interfaces"][0]["name"] != rb["interfaces"][0]["name"]  # a bridge each by default
    # GC of one namespace's network, keeping nothing, leaves the other's attachment alone
    assert hl.cni("GC", gc_conf(mine, [])).ok
    assert links(a) == {"lo"} and links(b) == {"lo", "net1"}
    assert comments(hl) == ["cns-b/net1/tenant-b.blue"]
    assert hl.leases("tenant-b.blue") != []


def test_gc_matches_long_namespaced_names_and_container_ids(hl):
    # the network part is hashed in aliases and comments; the 128-character container ID too
    network = "tenant-with-a-long-namespace-name." + "a" * 160
    conf = hl.conf("198.18.47.0/24", name=network, ipMasq=True)
    short = hl.conf("198.18.48.0/24", name=network[:-1], ipMasq=True)  # another network, a prefix
    kept_cid, stale_cid = "k" * 128, "s" * 128
    k, s, o = hl.make_ns("pod"), hl.make_ns("pod"), hl.make_ns("pod")
    rk = hl.add(conf, kept_cid, k, "net1")
    hl.add(conf, stale_cid, s, "net1")
    ro = hl.add(short, stale_cid, o, "net1")
    aliases = veths(hl)
    assert all(len(x.encode()) <= 128 for x in list(aliases.values()) + comments(hl))
    out = hl.cni("GC", gc_conf(conf, [{"containerID": kept_cid, "ifname": "net1"}]))
    assert out.ok, out
    assert set(veths(hl)) == {rk["interfaces"][1]["name"], ro["interfaces"][1]["name"]}
    assert links(s) == {"lo"} and links(k) == {"lo", "net1"} and links(o) == {"lo", "net1"}
    assert len(comments(hl)) == 2


def test_marks_left_by_the_previous_version_are_still_collected(hl):
    """Attachments made before namespaced names: the alias and comment carry the bare config name
    (or `#` + 16 hex of it when long). The meta plugin forwards their GC with that old name."""
    import hashlib

    from delegates.bridge import host_veth_name

    long_name = "an-old-network-name-" + "x" * 120
    old = {host_veth_name("cold1", "net1"): "cold1/net1/blue",
           host_veth_name("c" * 64, "net1"): "c" * 64 + "/net1/#" + hashlib.sha256(long_name.encode()).hexdigest()[:16]}
    nsexec(hl.node, "nft", "add table inet multiplex_masq")
    nsexec(hl.node, "nft", "add chain inet multiplex_masq postrouting { type nat hook postrouting priority 100 ; }")
    for n, (name, alias) in enumerate(old.items()):
        nsexec(hl.node, "ip", "link", "add", name, "type", "veth", "peer", "name", f"mpxold{n}")
        nsexec(hl.node, "ip", "link", "set", name, "alias", alias)
        nsexec(hl.node, "nft", f'add rule inet multiplex_masq postrouting ip saddr 198.18.59.{n + 2} masquerade '
                                f'comment "{alias}"')
    assert hl.cni("GC", gc_conf(hl.conf("198.18.59.0/24", name="blue"), [])).ok
    long_veth = host_veth_name("c" * 64, "net1")
    assert set(veths(hl)) == {long_veth, "mpxold1"} and comments(hl) == [old[long_veth]]
    assert hl.cni("GC", gc_conf(hl.conf("198.18.59.0/24", name=long_name), [])).ok
    assert veths(hl) == {} and comments(hl) == []


def test_longest_namespaced_name_add_and_del(mi):
    # namespace 63 + NAD name 253 characters (host-local cannot: its lease directory is named after it)
    network = "n" * 63 + "." + "a" * 253
    conf = mi.conf("198.18.49.0/24", "fd00:49::/64", name=network, isGateway=True, ipMasq=True)
    ns = mi.make_ns("pod")
    res = mi.add(conf, "clong", ns, "net1")
    alias = veths(mi)[res["interfaces"][1]["name"]]
    assert alias.startswith("clong/net1/#") and len(alias) <= 128
    assert comments(mi) == [alias, alias]
    assert mi.check(conf, res, "clong", ns, "net1").ok
    assert mi.cni("DEL", conf, "clong", ns, "net1").ok
    assert veths(mi) == {} and comments(mi) == [] and links(ns) == {"lo"}


def test_a_default_bridge_is_named_after_its_network_and_a_colliding_one_refused(hl):
    from delegates.bridge import default_bridge_name

    ns = hl.make_ns("pod")
    res = hl.add(hl.conf("198.18.56.0/24", name="default.blue"), "cdb", ns)
    br = res["interfaces"][0]["name"]
    assert br == default_bridge_name("default.blue") and hl.link_details(br)["ifalias"] == "default.blue"
    # a network whose name hashes to the same 8 hex (here: a bridge of that name made for another one)
    victim = default_bridge_name("tenant-b.green")
    nsexec(hl.node, "ip", "link", "add", victim, "type", "bridge")
    nsexec(hl.node, "ip", "link", "set", victim, "alias", "tenant-a.red")
    other = hl.make_ns("pod")
    out = hl.cni("ADD", hl.conf("198.18.57.0/24", name="tenant-b.green"), "cdg", other)
    assert out.rc == 1 and out.code == 105 and "field: bridge" in out.out["details"], out
    assert links(other) == {"lo"} and hl.leases("tenant-b.green") == []
    assert [l["ifname"] for l in ip_json(hl.node, "link", "show", "master", victim)] == []
    # a default bridge made by an earlier version (no alias) is adopted
    legacy = default_bridge_name("default.old")
    nsexec(hl.node, "ip", "link", "add", legacy, "type", "bridge")
    hl.add(hl.conf("198.18.58.0/24", name="default.old"), "cdo", hl.make_ns("pod"))
    assert hl.link_details(legacy)["ifalias"] == "default.old"


# ---- one MAC, one port ---------------------------------------------------------------------------
def fdb(lab: BridgeLab, bridge: str) -> list[dict]:
    out = nsexec(lab.node, "bridge", "-j", "fdb", "show", "br", bridge).stdout
    return json.loads(out) if out.strip() else []


def static_entries(lab: BridgeLab, bridge: str) -> dict[str, str]:
    """MAC -> port of the bridge's static entries (what `bridge fdb show` prints as `static`)."""
    return {e["mac"]: e["ifname"] for e in fdb(lab, bridge) if e.get("state") == "static"}


MAC = "02:42:c6:12:50:01"


def test_a_mac_in_use_on_the_network_is_refused_and_nothing_is_left(hl):
    conf = hl.conf("198.18.50.0/24", name="default.blue", bridge="mpxt-brmac", ipMasq=True,
                   runtimeConfig={"mac": MAC})
    first, second = hl.make_ns("pod"), hl.make_ns("pod")
    r1 = hl.add(conf, "cmac-1", first, "net1")
    host1 = r1["interfaces"][1]["name"]
    assert static_entries(hl, "mpxt-brmac") == {MAC: host1}
    assert "sticky" in [e for e in fdb(hl, "mpxt-brmac") if e["mac"] == MAC][0].get("flags", [])

    out = hl.cni("ADD", conf, "cmac-2", second, "net1")
    assert out.rc == 1 and out.code == 103, out
    assert out.out["details"].startswith("field: runtimeConfig.mac;"), out
    assert MAC in out.out["msg"] and "cmac-1" not in json.dumps(out.out)  # never names the other pod
    assert list(veths(hl)) == [host1] and links(second) == {"lo"}
    assert len(hl.leases("default.blue")) == 1 and comments(hl) == ["cmac-1/net1/default.blue"]
    assert static_entries(hl, "mpxt-brmac") == {MAC: host1}

    # once the first pod is gone, the MAC is free again
    assert hl.cni("DEL", conf, "cmac-1", first, "net1").ok
    assert static_entries(hl, "mpxt-brmac") == {}
    r2 = hl.add(conf, "cmac-2", second, "net1")
    assert static_entries(hl, "mpxt-brmac") == {MAC: r2["interfaces"][1]["name"]}


def test_the_same_mac_on_another_network_is_fine(hl):
    a, b = hl.make_ns("pod"), hl.make_ns("pod")
    hl.add(hl.conf("198.18.51.0/24", name="default.blue", runtimeConfig={"mac": MAC}), "cm-a", a, "net1")
    hl.add(hl.conf("198.18.52.0/24", name="tenant-b.blue", runtimeConfig={"mac": MAC}), "cm-b", b, "net1")
    assert ip_json(a, "link", "show", "dev", "net1")[0]["address"] == MAC
    assert ip_json(b, "link", "show", "dev", "net1")[0]["address"] == MAC


def test_the_bridges_own_mac_is_refused(hl):
    conf = hl.conf("198.18.53.0/24", name="default.blue", bridge="mpxt-brown", isGateway=True)
    hl.add(conf, "cown-1", hl.make_ns("pod"))
    bridge_mac = ip_json(hl.node, "link", "show", "dev", "mpxt-brown")[0]["address"]
    ns = hl.make_ns("pod")
    out = hl.cni("ADD", dict(conf, runtimeConfig={"mac": bridge_mac}), "cown-2", ns)
    assert out.rc == 1 and out.code == 103 and "runtimeConfig.mac" in out.out["details"], out
    assert links(ns) == {"lo"} and len(hl.leases("default.blue")) == 1


def test_a_kernel_chosen_mac_gets_its_static_entry_too(hl):
    conf = hl.conf("198.18.54.0/24", name="default.blue", bridge="mpxt-brk")
    ns = hl.make_ns("pod")
    res = hl.add(conf, "ck", ns)
    assert static_entries(hl, "mpxt-brk") == {res["interfaces"][2]["mac"]: res["interfaces"][1]["name"]}
    # the entry goes with the port
    assert hl.cni("DEL", conf, "ck", ns).ok and static_entries(hl, "mpxt-brk") == {}


def test_two_concurrent_adds_asking_for_one_mac_one_wins(hl):
    conf = hl.conf("198.18.55.0/24", name="default.blue", bridge="mpxt-brrace", runtimeConfig={"mac": MAC})
    nets = [hl.make_ns("pod") for _ in range(2)]
    hl.add(hl.conf("198.18.55.0/24", name="default.blue", bridge="mpxt-brrace"), "crace-0", hl.make_ns("pod"))
    outs: dict[int, object] = {}

    def run(n: int) -> None:
        outs[n] = hl.cni("ADD", conf, f"crace-{n + 1}", nets[n], "net1")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [n for n, o in outs.items() if o.ok]
    refused = [n for n, o in outs.items() if o.code == 103]
    assert len(ok) == 1 and len(refused) == 1, outs
    assert links(nets[refused[0]]) == {"lo"} and len(hl.leases("default.blue")) == 2
    assert static_entries(hl, "mpxt-brrace")[MAC] == outs[ok[0]].out["interfaces"][1]["name"]
