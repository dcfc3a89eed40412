"""multiplex-ipvlan on a kernel that has ipvlan (the VM tier; directly on such a kernel).

Each test builds a node netns whose master is one end of a veth pair into an "outside" netns (the
rest of the network), attaches pods through the plugin as a runtime would, and checks what a user
would: interfaces, addresses and routes in the pods, pings between pods and to the outside host,
ARP, CNI errors (code, field), and that nothing is left behind.
"""
from __future__ import annotations

import subprocess

import pytest

from tests.cnitool import ping
from tests.vm.ipvlan_lab import default_route, ipn, link_details, pod_addresses, pod_links

pytestmark = [pytest.mark.root, pytest.mark.vm]


def added(out, what: str = "ADD") -> dict:
    assert out.ok, f"{what} failed: {out.out} {out.stderr[-2000:]}"
    return out.out


def attach(cni, conf: dict, netns: str, cid: str, ifname: str = "eth0") -> dict:
    return added(cni("ADD", conf, netns=netns, container_id=cid, ifname=ifname))


def detach(cni, conf: dict, netns: str, cid: str, ifname: str = "eth0") -> None:
    out = cni("DEL", conf, netns=netns, container_id=cid, ifname=ifname)
    assert out.ok, f"DEL failed: {out.out} {out.stderr[-2000:]}"


def ips_of(result: dict) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


def host(cidr: str) -> str:
    return cidr.split("/")[0]


# ---- l2 ------------------------------------------------------------------------------------------
def test_l2_pods_ping_each_other_and_the_outside_host_and_answer_arp(underlay, cni, pod):
    u = underlay(0, node_addresses=False)  # l2 needs no address on the master
    conf = u.conf("wire", "l2")
    p1, p2 = pod(), pod()
    r1, r2 = attach(cni, conf, p1, "c1"), attach(cni, conf, p2, "c2")

    # the pod sees one ipvlan interface in mode l2, with the master's MAC and MTU
    for ns, res in ((p1, r1), (p2, r2)):
        assert pod_links(ns) == {"eth0"}
        d = link_details(ns)
        assert d["linkinfo"]["info_kind"] == "ipvlan" and d["linkinfo"]["info_data"]["mode"] == "l2"
        assert d["address"] == u.master_mac() == res["interfaces"][0]["mac"]
        assert d["mtu"] == 1500 and "NOARP" not in d["flags"]
        assert pod_addresses(ns) == set(ips_of(res))
        assert default_route(ns)["gateway"] == u.outside4
    a1, a2 = host(ips_of(r1)[0]), host(ips_of(r2)[0])
    assert ips_of(r1) != ips_of(r2) and a1.startswith("198.18.64.")

    assert ping(p1, a2) and ping(p2, a1)
    assert ping(p1, u.outside4) and ping(u.outside, a2)
    # the outside host resolved the pods by ARP: each answered, with the master's (shared) MAC
    neigh = u.outside_neighbours(4)
    assert neigh.get(a1) == neigh.get(a2) == u.master_mac()

    assert cni("CHECK", dict(conf, prevResult=r1), netns=p1, container_id="c1").ok
    for ns, cid in ((p1, "c1"), (p2, "c2")):
        detach(cni, conf, ns, cid)
        detach(cni, conf, ns, cid)  # twice: still fine
        assert pod_links(ns) == set()
    assert cni.leases() == [] and cni.mode_records() == {}


# ---- l3, l3s -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["l3", "l3s"])
def test_routed_modes_reach_pods_and_outside_without_arp(underlay, cni, pod, mode):
    u = underlay(0)
    u.route_pods_from_outside()
    conf = u.conf("routed", mode)
    p1, p2 = pod(), pod()
    r1, r2 = attach(cni, conf, p1, "c1"), attach(cni, conf, p2, "c2")
    a1, a2 = host(ips_of(r1)[0]), host(ips_of(r2)[0])
    assert a1.startswith("198.18.96.")

    for ns in (p1, p2):
        d = link_details(ns)
        assert d["linkinfo"]["info_data"]["mode"] == mode
        assert "NOARP" in d["flags"]  # the sub-interface resolves no neighbours
        # the default route goes via the device: no gateway to ARP for
        dr = default_route(ns)
        assert dr is not None and dr["dev"] == "eth0" and "gateway" not in dr
    assert all("gateway" not in ip for ip in r1["ips"])
    assert r1["routes"] == [{"dst": "0.0.0.0/0"}]

    assert ping(p1, a2) and ping(p2, a1)
    assert ping(p1, u.outside4) and ping(u.outside, a1) and ping(u.outside, a2)
    # the outside host reached the pods through the node's address: it never ARPed for them
    neigh = u.outside_neighbours(4)
    assert a1 not in neigh and a2 not in neigh and u.node4 in neigh

    assert cni("CHECK", dict(conf, prevResult=r2), netns=p2, container_id="c2").ok
    for ns, cid in ((p1, "c1"), (p2, "c2")):
        detach(cni, conf, ns, cid)
        assert pod_links(ns) == set()
    assert cni.leases() == []


# ---- IPv6, dual stack ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode,families", [("l2", (4, 6)), ("l3", (6,))], ids=["l2-dual-stack", "l3-ipv6"])
def test_ipv6_and_dual_stack(underlay, cni, pod, mode, families):
    u = underlay(1)
    if mode != "l2":
        u.route_pods_from_outside()
    conf = u.conf("six", mode, families)
    p1, p2 = pod(), pod()
    r1, r2 = attach(cni, conf, p1, "c1"), attach(cni, conf, p2, "c2")
    assert sorted(ip["address"].count(":") > 0 for ip in r1["ips"]) == sorted(f == 6 for f in families)
    for ns, res in ((p1, r1), (p2, r2)):
        assert pod_addresses(ns) == set(ips_of(res))
        dr6 = default_route(ns, 6)
        assert dr6 is not None and dr6["dev"] == "eth0"
        assert (dr6.get("gateway") == u.outside6) if mode == "l2" else ("gateway" not in dr6)
    v6 = [host(a) for a in ips_of(r1) + ips_of(r2) if ":" in a]
    assert ping(p1, v6[1]) and ping(p2, v6[0])
    assert ping(p1, u.outside6) and ping(u.outside, v6[1])
    if 4 in families:
        v4 = [host(a) for a in ips_of(r1) + ips_of(r2) if ":" not in a]
        assert ping(p1, v4[1]) and ping(p2, u.outside4)
    assert cni("CHECK", dict(conf, prevResult=r1), netns=p1, container_id="c1").ok
    for ns, cid in ((p1, "c1"), (p2, "c2")):
        detach(cni, conf, ns, cid)
    assert cni.leases() == []


# ---- CHECK ---------------------------------------------------------------------------------------
def check_error(cni, conf: dict, result: dict, netns: str, cid: str) -> dict:
    out = cni("CHECK", dict(conf, prevResult=result), netns=netns, container_id=cid)
    assert not out.ok and out.code == 104, out.out
    return out.out


def test_check_fails_after_the_mode_or_an_address_is_changed_by_hand(underlay, cni, pod):
    u = underlay(0, node_addresses=False)
    conf = u.conf("wire", "l2")
    p = pod()
    r = attach(cni, conf, p, "c1")
    addr = ips_of(r)[0]

    # an address replaced by hand
    ipn(p, "addr", "del", addr, "dev", "eth0")
    ipn(p, "addr", "add", "198.18.64.200/24", "dev", "eth0")
    err = check_error(cni, conf, r, p, "c1")
    assert f"address {addr} is missing" in err["msg"] and "198.18.64.200/24" in err["msg"]
    assert "differs: addresses" in err["details"]
    ipn(p, "addr", "del", "198.18.64.200/24", "dev", "eth0")
    ipn(p, "addr", "add", addr, "dev", "eth0")
    ipn(p, "route", "replace", "default", "via", u.outside4)
    assert cni("CHECK", dict(conf, prevResult=r), netns=p, container_id="c1").ok

    # the mode switched by hand
    ipn(p, "link", "set", "eth0", "type", "ipvlan", "mode", "l3")
    err = check_error(cni, conf, r, p, "c1")
    assert "mode is l3, not l2" in err["msg"] and "differs: mode" in err["details"]

    # the interface gone
    ipn(p, "link", "del", "eth0")
    err = check_error(cni, conf, r, p, "c1")
    assert "eth0 is missing" in err["msg"]
    detach(cni, conf, p, "c1")
    assert cni.leases() == []


# ---- DEL -----------------------------------------------------------------------------------------
def test_del_is_idempotent_and_works_after_the_netns_is_gone(underlay, cni, netns_factory):
    u = underlay(0, node_addresses=False)
    conf = u.conf("wire", "l2")
    p = netns_factory("pod")
    attach(cni, conf, p, "c1")
    assert len(cni.leases()) == 1
    subprocess.run(["ip", "netns", "del", p], check=True)  # the runtime removed the pod first
    detach(cni, conf, p, "c1")
    detach(cni, conf, p, "c1")
    detach(cni, conf, "", "c1")  # no netns at all
    assert cni.leases() == [] and cni.mode_records() == {}
    # the master and the outside are untouched
    assert link_details(u.node, u.master)["operstate"] in ("UP", "UNKNOWN")


# ---- bad input: a clear CNI error, and nothing left ----------------------------------------------
def refused(cni, conf: dict, netns: str, code: int, field: str, words: str, *, args: str = "",
            cid: str = "bad") -> dict:
    """ADD fails with `code`, details naming `field`, a message containing `words`; the pod has no
    interface, IPAM no lease, no mode is recorded."""
    node_links_before = pod_links(cni.node)
    out = cni("ADD", conf, netns=netns, container_id=cid, args=args)
    assert not out.ok and out.code == code, out.out
    assert f"field: {field}" in out.out.get("details", ""), out.out
    assert words in out.out["msg"], out.out
    assert pod_links(netns) == set()
    assert pod_links(cni.node) == node_links_before
    assert not [l for l in cni.leases() if l.startswith(cid + "/")]
    assert cid + "/eth0" not in cni.mode_records()
    return out.out


def test_missing_master_is_refused(underlay, cni, pod):
    u = underlay(0)
    refused(cni, u.conf(master="nosuch0"), pod(), 7, "$.master", "master nosuch0 does not exist")


def test_no_master_and_no_default_route_is_refused(underlay, cni, pod):
    u = underlay(0)
    conf = u.conf()
    del conf["master"]
    refused(cni, conf, pod(), 7, "$.master", "no master given")


def test_master_down_is_refused(underlay, cni, pod):
    u = underlay(0)
    ipn(u.node, "link", "set", u.master, "down")
    refused(cni, u.conf(), pod(), 7, "$.master", f"{u.master} is down")


def test_mtu_above_the_masters_is_refused(underlay, cni, pod):
    u = underlay(0, mtu=1400)
    err = refused(cni, u.conf(mtu=1500), pod(), 7, "$.mtu", "above the MTU of master")
    assert "at most 1400" in err["details"]


def test_unknown_mode_is_refused(underlay, cni, pod):
    u = underlay(0)
    err = refused(cni, u.conf(mode="l4"), pod(), 7, "$.mode", "")
    assert '"l2"' in err["details"] and '"l3s"' in err["details"]


@pytest.mark.parametrize("where", ["runtimeConfig", "args", "CNI_ARGS"])
def test_a_mac_request_is_refused_with_why(underlay, cni, pod, where):
    u = underlay(0)
    mac = "02:00:00:00:00:42"
    conf, args, field = u.conf(), "", ""
    if where == "runtimeConfig":
        conf["runtimeConfig"], field = {"mac": mac}, "$.runtimeConfig.mac"
    elif where == "args":
        conf["args"], field = {"cni": {"mac": mac}}, "$.args.cni.mac"
    else:
        args, field = f"IgnoreUnknown=1;MAC={mac}", "CNI_ARGS MAC"
    err = refused(cni, conf, pod(), 2, field, mac, args=args)
    assert "share" in err["msg"] or "uses its master's MAC" in err["msg"]


def test_a_second_mode_on_one_master_is_refused_and_the_first_pods_keep_theirs(underlay, cni, pod):
    u = underlay(0, node_addresses=False)
    p1 = pod()
    r1 = attach(cni, u.conf("wire", "l2"), p1, "c1")
    err = refused(cni, u.conf("other", "l3"), pod(), 7, "$.mode",
                  "already carries 1 ipvlan sub-interface(s) in mode l2 (0 of them on this network)")
    assert "c1" not in err["msg"] and "wire" not in err["msg"]  # never another network's pod or name
    assert link_details(p1)["linkinfo"]["info_data"]["mode"] == "l2"
    assert ping(p1, u.outside4)
    assert cni("CHECK", dict(u.conf("wire", "l2"), prevResult=r1), netns=p1, container_id="c1").ok
    # once the l2 pod is gone (DEL), the master is free for another mode
    detach(cni, u.conf("wire", "l2"), p1, "c1")
    p3 = pod()
    attach(cni, u.conf("other", "l3"), p3, "c3")
    detach(cni, u.conf("other", "l3"), p3, "c3")


def test_an_interface_name_taken_in_the_pod_is_refused_and_left_alone(underlay, cni, pod):
    u = underlay(0)
    p = pod()
    ipn(p, "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    out = cni("ADD", u.conf(), netns=p, container_id="c1")
    assert out.code == 4 and "field: CNI_IFNAME" in out.out["details"], out.out
    assert pod_links(p) == {"eth0", "other"} and cni.leases() == []


def test_a_failure_after_the_lease_undoes_everything(underlay, cni, pod):
    u = underlay(0, node_addresses=False)
    conf = u.conf()
    conf["ipam"]["routes"] = [{"dst": "198.19.0.0/16", "gw": "198.19.255.1"}]  # a gateway not on the wire
    p = pod()
    out = cni("ADD", conf, netns=p, container_id="c1")
    assert not out.ok and out.code == 105 and "198.19.0.0/16" in out.out["msg"], out.out
    assert pod_links(p) == set() and cni.leases() == [] and cni.mode_records() == {}


def test_an_ipam_refusal_leaves_no_sub_interface(underlay, cni, pod):
    u = underlay(0)
    conf = u.conf(runtimeConfig={"ips": ["198.18.99.5/24"]})  # outside the pool
    p = pod()
    out = cni("ADD", conf, netns=p, container_id="c1")
    assert not out.ok and out.code == 103, out.out
    assert pod_links(p) == set() and cni.leases() == [] and cni.mode_records() == {}


# ---- where the master is -------------------------------------------------------------------------
def test_master_defaults_to_the_interface_of_the_default_route(underlay, cni, pod):
    u0, u1 = underlay(0), underlay(1)
    ipn(u1.node, "route", "add", "default", "via", u1.outside4)
    conf = u1.conf("wire", "l2")
    del conf["master"]
    p = pod()
    r = attach(cni, conf, p, "c1")
    assert link_details(p)["address"] == u1.master_mac() != u0.master_mac()
    assert ping(p, u1.outside4)
    assert cni("CHECK", dict(conf, prevResult=r), netns=p, container_id="c1").ok
    detach(cni, conf, p, "c1")


def test_link_in_container_uses_a_master_inside_the_pod(underlay, cni, pod):
    u = underlay(0, node_addresses=False)
    p = pod()
    # hand the pod its own uplink: a second veth from the outside netns, straight into the pod
    ipn(u.outside, "link", "add", "out1", "type", "veth", "peer", "name", "uplink", "netns", p)
    ipn(u.outside, "addr", "add", "198.18.80.1/24", "dev", "out1")
    ipn(u.outside, "link", "set", "out1", "up")
    ipn(p, "link", "set", "uplink", "up")
    conf = u.conf("inpod", "l2", linkInContainer=True, master="uplink")
    conf["ipam"] = {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.80.0/24", "rangeStart": "198.18.80.10",
                                                            "rangeEnd": "198.18.80.20"}]]}
    r = attach(cni, conf, p, "c1", ifname="net1")
    assert pod_links(p) == {"uplink", "net1"}
    d = link_details(p, "net1")
    assert d["linkinfo"]["info_kind"] == "ipvlan" and d["link"] == "uplink"
    assert ping(p, "198.18.80.1")
    assert cni("CHECK", dict(conf, prevResult=r), netns=p, container_id="c1", ifname="net1").ok
    detach(cni, conf, p, "c1", ifname="net1")
    assert pod_links(p) == {"uplink"} and cni.leases() == []


# ---- STATUS, GC ----------------------------------------------------------------------------------
def test_status_fails_when_the_master_is_gone(underlay, cni):
    u = underlay(0)
    conf = u.conf()
    assert cni("STATUS", conf).ok
    ipn(u.node, "link", "del", u.master)
    out = cni("STATUS", conf)
    assert out.code == 50 and "field: $.master" in out.out["details"] and u.master in out.out["msg"], out.out


def test_gc_releases_the_leases_of_attachments_that_are_gone(underlay, cni, pod):
    u = underlay(0, node_addresses=False)
    conf = u.conf("wire", "l2")
    p1, p2 = pod(), pod()
    attach(cni, conf, p1, "c1")
    attach(cni, conf, p2, "c2")
    assert len(cni.leases()) == 2
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert cni("GC", gc).ok
    assert [l.split()[0] for l in cni.leases()] == ["c1/eth0"]
    assert set(cni.mode_records()) == {"c1/eth0"}
    detach(cni, conf, p1, "c1")
    detach(cni, conf, p2, "c2")


def test_gc_with_a_malformed_keep_list_touches_nothing(underlay, cni, pod):
    u = underlay(0, node_addresses=False)
    conf = u.conf("wire", "l2")
    p1 = pod()
    attach(cni, conf, p1, "c1")
    for bad in ("c1", [{"containerId": "c1", "ifName": "eth0"}]):
        out = cni("GC", dict(conf, **{"cni.dev/valid-attachments": bad}))
        assert out.code == 7 and "cni.dev/valid-attachments" in out.out["details"], out.out
    assert len(cni.leases()) == 1 and set(cni.mode_records()) == {"c1/eth0"} and pod_links(p1) == {"eth0"}
    detach(cni, conf, p1, "c1")


# ---- the real binary -----------------------------------------------------------------------------
@pytest.fixture
def ipvlan_binary():
    """The installed `multiplex-ipvlan` executable (a console script of the venv)."""
    import shutil

    from tests.cnitool import CNI_PATH

    found = shutil.which("multiplex-ipvlan", path=CNI_PATH)
    assert found, f"multiplex-ipvlan is not installed on {CNI_PATH}: pip install -e '.[test]'"
    return found


def test_the_plugin_binary_adds_and_deletes_with_an_older_cni_version(underlay, cni, pod, ipvlan_binary):
    """One ADD and one DEL through the real executable (each costs a Python start-up; the other tests
    fork the warm test process instead), with a 0.4.0 config: the result comes back converted."""
    from tests.cnitool import run_plugin

    u = underlay(0, node_addresses=False)
    conf = u.conf("wire", "l2", version="0.4.0")
    p = pod()
    env = {"MULTIPLEX_STATE_DIR": cni.state_dir}
    out = run_plugin(ipvlan_binary, "ADD", conf, node=u.node, container_id="c1", netns=p, extra_env=env)
    res = added(out)
    assert res["cniVersion"] == "0.4.0" and res["ips"][0]["version"] == "4"
    assert res["interfaces"] == [{"name": "eth0", "mac": u.master_mac(), "sandbox": f"/var/run/netns/{p}"}]
    assert ping(p, u.outside4)
    out = run_plugin(ipvlan_binary, "DEL", conf, node=u.node, container_id="c1", netns=p, extra_env=env)
    assert out.ok and out.out is None, out.out
    assert pod_links(p) == set() and cni.leases() == []
