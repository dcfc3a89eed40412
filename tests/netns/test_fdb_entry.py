"""Handle.add_static_fdb, sent by rtlink (RTM_NEWNEIGH, bridge family): the entry `bridge fdb show`
lists is the one asked for (port, MAC, VLAN, static and sticky, in the bridge's FDB), a MAC the
bridge already holds is refused (False) unless replaced, and a kernel refusal is CNIError 105."""
from __future__ import annotations

import json

import pytest

from multiplex import netlink
from multiplex.cni.errors import CNIError
from tests.cnitool import nsexec

pytestmark = pytest.mark.root

MAC = "02:00:00:00:0f:01"


def fdb(ns: str, mac: str) -> list[dict]:
    return [e for e in json.loads(nsexec(ns, "bridge", "-j", "fdb", "show").stdout or "[]") if e.get("mac") == mac]


@pytest.fixture
def bridge(netns_factory):
    """A bridge with two veth ports in a netns of its own; (netns name, handle, bridge, port a, port b)."""
    ns, other = netns_factory("fd"), netns_factory("fd")
    with netlink.open_netns(f"/var/run/netns/{ns}") as n, netlink.open_netns(f"/var/run/netns/{other}") as o:
        br, _ = n.ensure_bridge("mpxt-fdbr")
        a, _ = netlink.make_veth_pair(n, o, "mpxt-fda", "p0", master=br)
        b, _ = netlink.make_veth_pair(n, o, "mpxt-fdb", "p1", master=br)
        yield ns, n, br, a, b


def test_the_entry_is_static_sticky_on_its_port_and_a_second_claim_is_refused_unless_replaced(bridge):
    ns, n, br, a, b = bridge
    assert n.add_static_fdb(a, MAC) is True
    entry, = fdb(ns, MAC)
    assert entry["ifname"] == "mpxt-fda" and entry.get("master") == "mpxt-fdbr"
    assert entry["state"] == "static" and "sticky" in entry.get("flags", [])
    assert n.add_static_fdb(b, MAC) is False                 # held on another port
    assert [e["ifname"] for e in fdb(ns, MAC)] == ["mpxt-fda"]
    assert n.add_static_fdb(b, MAC, replace=True) is True    # moved here
    assert [e["ifname"] for e in fdb(ns, MAC)] == ["mpxt-fdb"]
    assert [e.port for e in n.fdb_entries(br, MAC)] == [b.index]


def test_a_refused_entry_is_105_naming_it(bridge):
    # (a VLAN entry the bridge accepts needs VLAN filtering, which this kernel lacks: the VM tier's
    # tests/netns/test_bridge_vlan.py covers it); a VLAN the port is not in is refused by the kernel
    ns, n, br, a, b = bridge
    with pytest.raises(CNIError) as e:
        n.add_static_fdb(a, MAC, vlan=7)
    assert e.value.code == 105 and f"add a static FDB entry for {MAC} on mpxt-fda (VLAN 7)" in e.value.msg
    assert "link: mpxt-fda" in e.value.details
    assert fdb(ns, MAC) == []
