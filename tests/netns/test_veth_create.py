"""A veth pair is created by multiplex's own rtnetlink request (rtlink.create_veth), not pyroute2:
what the kernel made is what was asked (names, peer in the pod, MTU on both ends, the peer's MAC),
a name in use or a refused request is CNIError 105 naming it with nothing left behind, and a
kernel that answers without the echo (before Linux 6.3) gets the link looked up instead."""
from __future__ import annotations

import pytest

from multiplex import netlink
from multiplex.cni.errors import CNIError
from multiplex.netlink import rtlink
from tests.cnitool import ip_json, links

pytestmark = pytest.mark.root


def path(ns: str) -> str:
    return f"/var/run/netns/{ns}"


def link_info(ns: str, name: str) -> dict:
    return ip_json(ns, "-d", "link", "show", "dev", name)[0]


def test_the_pair_is_what_was_asked_on_both_sides(netns_factory):
    node, pod = netns_factory("vc"), netns_factory("vc")
    with netlink.open_netns(path(node)) as n, netlink.open_netns(path(pod)) as p:
        host, peer = netlink.make_veth_pair(n, p, "mpxt-vchost", "net3", mtu=1380, mac="02:00:00:00:03:03")
        assert host.name == "mpxt-vchost" and host.kind == "veth" and host.index > 0 and host.mtu == 1380
    got_host, got_peer = link_info(node, "mpxt-vchost"), link_info(pod, "net3")
    assert got_host["linkinfo"]["info_kind"] == got_peer["linkinfo"]["info_kind"] == "veth"
    assert got_host["mtu"] == got_peer["mtu"] == 1380
    assert got_peer["address"] == "02:00:00:00:03:03" and peer.mac == "02:00:00:00:03:03"
    assert "UP" in got_host["flags"]
    assert links(pod) == {"lo", "net3"} and "net3" not in links(node)


def test_a_host_name_in_use_or_a_refused_request_is_105_and_leaves_nothing(netns_factory):
    node, pod = netns_factory("vc"), netns_factory("vc")
    with netlink.open_netns(path(node)) as n, netlink.open_netns(path(pod)) as p:
        netlink.make_veth_pair(n, p, "mpxt-vcdup", "net1")
        with pytest.raises(CNIError) as e:
            netlink.make_veth_pair(n, p, "mpxt-vcdup", "net2")
        assert e.value.code == 105 and "mpxt-vcdup already exists" in e.value.msg
        with pytest.raises(CNIError) as e:      # a multicast MAC: the kernel refuses the peer
            netlink.make_veth_pair(n, p, "mpxt-vcmac", "net2", mac="01:00:5e:00:00:01")
        assert e.value.code == 105 and "create veth pair mpxt-vcmac <-> net2 with MAC 01:00:5e:00:00:01" in e.value.msg
        assert "link: mpxt-vcmac" in e.value.details
    assert links(pod) == {"lo", "net1"}
    assert {l for l in links(node) if l.startswith("mpxt")} == {"mpxt-vcdup"}


def test_without_the_kernels_echo_the_new_link_is_looked_up(netns_factory, monkeypatch):
    real = rtlink.Rtnl.create_veth

    def acked_only(self, *args, **kwargs):
        real(self, *args, **kwargs)
        return None

    monkeypatch.setattr(rtlink.Rtnl, "create_veth", acked_only)
    node, pod = netns_factory("vc"), netns_factory("vc")
    with netlink.open_netns(path(node)) as n, netlink.open_netns(path(pod)) as p:
        host, peer = netlink.make_veth_pair(n, p, "mpxt-vcold", "eth0", mtu=1400)
        assert (host.name, host.kind, host.mtu, host.up) == ("mpxt-vcold", "veth", 1400, True)
        assert host.index == n.link("mpxt-vcold").index
    assert links(pod) == {"lo", "eth0"}
