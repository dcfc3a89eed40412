"""Across subnets (Calico's CrossSubnet, with VXLAN since this kernel has no IPIP): traffic to the
blocks of a node on another underlay subnet is encapsulated; to nodes on this node's subnet it is
not.

One VXLAN device per node, `mpxbgp0` (VNI and UDP port from the settings, learning off, local =
the node's underlay IPv4, MTU = underlay - 50). Its MAC is derived from the node's underlay IPv4
(`0e:6d:` + its 4 bytes), so every node knows every other node's VTEP MAC without publishing it.
For each node on another subnet: a permanent neighbour entry (its underlay IPv4 and IPv6 -> its
VTEP MAC) and a permanent FDB entry (its VTEP MAC -> its underlay IPv4) on the device. BIRD's
import filter sends the routes whose next hop is such a node out of `mpxbgp0`, on-link to that
next hop (render.py), so the kernel resolves the next hop through these entries and the FDB entry
says where to send the encapsulated frame. The receiving node's device has the inner destination
MAC and routes the inner packet to its pod. Entries of nodes that left are removed; the device is
removed when no node is on another subnet.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

VXLAN_DEV = "mpxbgp0"
VXLAN_OVERHEAD = 50
NUD_PERMANENT = 0x80
NTF_SELF = 0x02           # an entry of the VXLAN device itself (not of a bridge it is a port of)


def vtep_mac(ipv4: str) -> str:
    """The VTEP MAC of the node with underlay address `ipv4`: locally administered, unicast."""
    b = ipaddress.IPv4Address(ipv4).packed
    return "0e:6d:" + ":".join(f"{x:02x}" for x in b)


def local_subnets(interface: str, netns: Optional[str] = None) -> list:
    """The subnets of the global addresses on the underlay `interface` (both families)."""
    from ..netlink.handle import Handle

    with Handle(netns) as h:
        link = h.link(interface)
        if link is None:
            return []
        return [a.interface.network for a in h.addresses(link)
                if not (a.interface.ip.is_link_local or a.interface.ip.is_loopback)]


def sync(plan, underlay_mtu: int, netns: Optional[str] = None) -> dict:
    """Make the VXLAN device and its entries match `plan.cross_nodes`. Returns what it holds."""
    from pyroute2.netlink.exceptions import NetlinkError

    from ..netlink.handle import Handle, kernel_error
    from ..netlink.routes import permanent_neighbour

    s = plan.settings
    with Handle(netns) as h:
        link = h.link(VXLAN_DEV)
        if not plan.cross_nodes:
            if link is not None:
                h.delete_link(VXLAN_DEV)
            return {}
        if link is None:
            h.add_link(VXLAN_DEV, "vxlan", f"create VXLAN device {VXLAN_DEV}", vxlan_id=s.vxlan_vni,
                       vxlan_local=plan.ipv4, vxlan_port=s.vxlan_port, vxlan_learning=0,
                       address=vtep_mac(plan.ipv4), mtu=max(1280, (underlay_mtu or 1500) - VXLAN_OVERHEAD))
            link = h.require_link(VXLAN_DEV)
            h.set_up(link)
        want_fdb = {vtep_mac(n.ipv4): n.ipv4 for n in plan.cross_nodes}
        want_neigh = {}
        for n in plan.cross_nodes:
            for addr in (n.ipv4, n.ipv6):
                if addr:
                    want_neigh[addr] = vtep_mac(n.ipv4)
        # FDB: one permanent entry per remote VTEP (replace: idempotent, and a moved node is updated)
        have_fdb = {}
        for m in h._ipr.fdb("dump"):
            if m.get("ifindex") == link.index:
                have_fdb[str(m.get_attr("NDA_LLADDR") or "").lower()] = m.get_attr("NDA_DST")
        for mac, dst in want_fdb.items():
            if have_fdb.get(mac) != dst:
                try:
                    h._ipr.fdb("replace", ifindex=link.index, lladdr=mac, dst=dst, state=NUD_PERMANENT,
                               flags=NTF_SELF)
                except NetlinkError as e:
                    raise kernel_error(e, f"add FDB entry {mac} dst {dst}", f"link: {VXLAN_DEV}") from None
        for mac, dst in have_fdb.items():
            if mac not in want_fdb and mac != "00:00:00:00:00:00":
                h._ipr.fdb("del", ifindex=link.index, lladdr=mac, dst=dst, flags=NTF_SELF)
        # neighbours: each remote node's underlay addresses -> its VTEP MAC
        have_neigh = {}
        for m in h._ipr.get_neighbours(ifindex=link.index):
            dst = m.get_attr("NDA_DST")
            if dst:
                have_neigh[dst] = (str(m.get_attr("NDA_LLADDR") or "").lower(), m["family"])
        for addr, mac in want_neigh.items():
            if have_neigh.get(addr, ("",))[0] != mac:
                permanent_neighbour(h, ipaddress.ip_address(addr), link, mac)
        for addr, (_, family) in have_neigh.items():
            if addr not in want_neigh:
                h._ipr.neigh("del", dst=addr, ifindex=link.index, family=family)
        return {"device": VXLAN_DEV, "fdb": want_fdb, "neighbours": want_neigh}
