"""The netlink helpers (multiplex.netlink) the bridge and the other delegates share, in-process, as
root. Every handle here is opened on a test netns by path: nothing touches the namespace pytest
runs in."""
from __future__ import annotations

import ipaddress
import os
import threading

import pytest

from multiplex import netlink
from multiplex.cni.errors import CNIError
from tests.cnitool import addresses, ip_json, links, nsexec

pytestmark = pytest.mark.root


def path(ns: str) -> str:
    return f"/var/run/netns/{ns}"


def my_netns() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def test_open_a_missing_or_bogus_netns():
    with pytest.raises(netlink.NetnsGone) as e:
        netlink.open_netns("/var/run/netns/mpx-no-such-netns")
    assert e.value.code == 3 and "CNI_NETNS" in e.value.details
    with pytest.raises(CNIError) as e:
        netlink.open_netns("/proc/self/status")
    assert e.value.code == 4 and "not a network namespace" in e.value.msg
    with pytest.raises(CNIError) as e:
        netlink.open_netns("relative/path")
    assert e.value.code == 4


def test_entered_returns_the_thread_home_even_on_error(netns_factory):
    ns = netns_factory("nl")
    home = my_netns()
    with pytest.raises(RuntimeError):
        with netlink.netns.entered(path(ns)):
            assert my_netns() != home
            raise RuntimeError("boom")
    assert my_netns() == home
    # another thread's switch does not move this one
    seen = []

    def other():
        with netlink.netns.entered(path(ns)):
            seen.append(my_netns())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen and seen[0] != home and my_netns() == home


def test_veth_pair_born_in_the_pod_with_mtu_mac_alias_and_bridge(netns_factory):
    node, pod = netns_factory("nl"), netns_factory("nl")
    with netlink.open_netns(path(node)) as n, netlink.open_netns(path(pod)) as p:
        br, created = n.ensure_bridge("mpxt-nlbr", mtu=1400)
        assert created and br.kind == "bridge" and br.up
        assert n.ensure_bridge("mpxt-nlbr")[1] is False  # a second caller is fine
        host, peer = netlink.make_veth_pair(n, p, "mpxt-nlhost", "net7", mtu=1400, mac="02:00:00:00:07:07",
                                            alias="c7/net7/nl", master=br)
        assert (peer.name, peer.mac, peer.mtu) == ("net7", "02:00:00:00:07:07", 1400)
        assert [l.name for l in n.links() if l.alias.startswith("c7/")] == ["mpxt-nlhost"]
        assert n.link("mpxt-nlhost").master == br.index
        # the requested name never existed in the node; a second pair with it fails cleanly
        assert "net7" not in links(node)
        with pytest.raises(CNIError) as e:
            netlink.make_veth_pair(n, p, "mpxt-nlhost2", "net7")
        assert e.value.code == 105 and "net7" in e.value.msg and "already exists" in e.value.msg
        assert "mpxt-nlhost2" not in links(node)
        assert n.delete_link("mpxt-nlhost") and not n.delete_link("mpxt-nlhost")
    assert links(pod) == {"lo"}


def test_addresses_routes_and_kernel_errors_name_the_link(netns_factory):
    ns = netns_factory("nl")
    nsexec(ns, "ip", "link", "add", "a0", "type", "veth", "peer", "name", "b0")
    with netlink.open_netns(path(ns)) as h:
        a0 = h.require_link("a0")
        v4, v6 = ipaddress.ip_interface("198.18.60.2/24"), ipaddress.ip_interface("fd00:60::2/64")
        assert h.add_address(a0, v4) and h.add_address(a0, v6)
        assert h.add_address(a0, v4, exist_ok=True) is False
        h.set_up(a0)
        assert addresses(ns, "a0") == {"198.18.60.2/24", "fd00:60::2/64"}
        assert not [x for x in ip_json(ns, "-6", "addr", "show", "dev", "a0")[0]["addr_info"]
                    if x.get("tentative")]
        h.add_route(ipaddress.ip_network("198.19.60.0/24"), a0, ipaddress.ip_address("198.18.60.1"), mtu=1300)
        assert h.add_route(ipaddress.ip_network("198.19.60.0/24"), a0, ipaddress.ip_address("198.18.60.1"),
                           exist_ok=True) is False
        got = [r for r in h.routes() if str(r.dst) == "198.19.60.0/24"]
        assert [(str(r.gw), r.oif) for r in got] == [("198.18.60.1", a0.index)]
        assert "mtu 1300" in nsexec(ns, "ip", "route", "show", "198.19.60.0/24").stdout
        with pytest.raises(CNIError) as e:
            h.add_route(ipaddress.ip_network("198.19.61.0/24"), a0, ipaddress.ip_address("198.19.255.1"))
        assert e.value.code == 105 and "198.19.61.0/24" in e.value.msg and "a0" in e.value.msg
        with pytest.raises(CNIError) as e:
            h.set_link(a0, "set MTU 10 on a0", mtu=10)
        assert e.value.code == 105 and "MTU 10 on a0" in e.value.msg


def test_rename_mac_and_mtu(netns_factory):
    node = netns_factory("nl")
    nsexec(node, "ip", "link", "add", "m0", "type", "veth", "peer", "name", "m1")
    with netlink.open_netns(path(node)) as n:
        m1 = n.require_link("m1")
        n.set_link(m1, address="02:00:00:00:00:61", mtu=1360)
        n.rename(m1, "eth9")
    assert "m1" not in links(node) and "eth9" in links(node)
    info = ip_json(node, "link", "show", "dev", "eth9")[0]
    assert (info["address"], info["mtu"]) == ("02:00:00:00:00:61", 1360)


def test_uplink_mtu_is_the_default_route_interface(netns_factory):
    ns = netns_factory("nl")
    with netlink.open_netns(path(ns)) as h:
        assert netlink.uplink_mtu(h) == 1500  # no default route: the default
        nsexec(ns, "ip", "link", "add", "up0", "mtu", "1450", "type", "veth", "peer", "name", "up1")
        nsexec(ns, "ip", "addr", "add", "198.18.62.2/24", "dev", "up0")
        nsexec(ns, "ip", "link", "set", "up0", "up")
        nsexec(ns, "ip", "link", "set", "up1", "up")
        nsexec(ns, "ip", "route", "add", "default", "via", "198.18.62.1")
        assert h.default_route_link().name == "up0"
        assert netlink.uplink_mtu(h) == 1450


def test_sysctl_in_a_netns_leaves_ours_alone(netns_factory):
    ns = netns_factory("nl")
    ours = netlink.sysctl.read("net.ipv4.conf.lo.forwarding")
    netlink.sysctl.write("net/ipv4/conf/lo/forwarding", "0" if ours == "1" else "1", netns=path(ns))
    assert netlink.sysctl.read("net.ipv4.conf.lo.forwarding", netns=path(ns)) == ("0" if ours == "1" else "1")
    assert netlink.sysctl.read("net.ipv4.conf.lo.forwarding") == ours
    assert netlink.sysctl.read("net.ipv6.conf.nosuch0.accept_dad", netns=path(ns)) is None
    assert netlink.sysctl.write("net/ipv6/conf/nosuch0/accept_dad", "0", netns=path(ns), missing_ok=True) is False
    with pytest.raises(CNIError) as e:
        netlink.sysctl.write("net/ipv6/conf/nosuch0/accept_dad", "0", netns=path(ns))
    assert e.value.code == 5 and "nosuch0" in e.value.msg


def test_a_delete_batch_deletes_its_links_together_at_its_end(netns_factory):
    ns = netns_factory("nl")
    for n in range(3):
        nsexec(ns, "ip", "link", "add", f"bt{n}", "type", "veth", "peer", "name", f"bp{n}")
    with netlink.netns.entered(path(ns)):  # this thread's "node" is the test netns
        with netlink.DeleteBatch() as batch, netlink.DeleteBatch() as other:
            assert batch.group != other.group
            with netlink.open_node(batch=batch) as node:
                assert node.delete_link("bt0") and node.delete_link("bt1")
                assert node.delete_link("mpxnolink") is False
            with netlink.open_node() as node:  # no batch: at once
                assert node.delete_link("bt2")
            assert {"bt0", "bt1"} <= links(ns) and "bt2" not in links(ns)
            assert batch.marked == 2 and other.marked == 0
        assert not {"bt0", "bt1", "bt2"} & links(ns)
