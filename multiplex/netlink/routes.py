"""Netlink pieces of routed (L3) pod networking, built on `Handle`: host routes to one pod
address, the pod gateway's static neighbour, proxy ARP on a host veth, forwarding, and routes by
routing protocol (what BIRD installed: `proto bird`).

These belong beside Handle's own route methods; they live here while handle.py is being reworked
(see the report of issue 12) and can move there unchanged: every function takes a Handle.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Union

from .handle import AF_INET, AF_INET6, MAIN_TABLE, Handle, Link, family_of, kernel_error

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

RT_SCOPE_LINK = 253
RTPROT_BIRD = 12          # /etc/iproute2/rt_protos: what `ip route show proto bird` selects
NUD_PERMANENT = 0x80


@dataclass(frozen=True)
class ProtoRoute:
    """One route of a routing protocol as the kernel holds it."""
    dst: IPNetwork
    kind: str                 # "unicast", "blackhole", "unreachable", ...
    gateway: Optional[IPAddress] = None
    oif: int = 0
    proto: int = 0


_KINDS = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}


def host_route(h: Handle, address: IPAddress, link: Link) -> bool:
    """`<address>/32 dev <link> scope link` (/128 for IPv6): the node reaches a routed pod through
    its host veth, without any address on the veth. False when the route is already there."""
    prefix = 32 if address.version == 4 else 128
    dst = ipaddress.ip_network(f"{address}/{prefix}")
    return h.add_route(dst, link, scope=RT_SCOPE_LINK if address.version == 4 else None, exist_ok=True)


def reached_otherwise(h: Handle, address: IPAddress, link: Link) -> Optional[str]:
    """Why `address` may not become a routed pod's address on `link`, or None: it is an address of
    this node, or the node already reaches it on a link of its own (a connected subnet such as the
    underlay's, where the other nodes and the router are, or another pod's host route). A host
    route to it would take that traffic from its owner. Routes via a gateway (BIRD's routes to
    other nodes' blocks, the default route) and blackholes (this node's blocks) are no objection."""
    for a in h.addresses(family=family_of(address)):
        if a.interface.ip == address:
            owner_link = h.link_at(a.index)
            return f"{address} is an address of this node (on {owner_link.name if owner_link else a.index})"
    for r in h.routes(family_of(address)):
        if r.gw is None and r.oif and r.oif != link.index and r.dst.prefixlen and address in r.dst:
            other = h.link_at(r.oif)
            return f"this node already reaches {address} on {other.name if other else r.oif} (route {r.dst})"
    return None


def has_host_route(h: Handle, address: IPAddress, link: Link) -> bool:
    prefix = 32 if address.version == 4 else 128
    dst = ipaddress.ip_network(f"{address}/{prefix}")
    return any(r.dst == dst and r.oif == link.index for r in h.routes(family_of(dst)))


def permanent_neighbour(h: Handle, address: IPAddress, link: Link, mac: str) -> None:
    """A permanent neighbour entry `address lladdr mac` on `link` (replaced when present). The pod's
    gateway is resolved without ARP: it works on a node without a default route, where proxy ARP
    alone would not answer (the kernel proxies only addresses it has a route for)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        h._ipr.neigh("replace", dst=str(address), lladdr=mac, ifindex=link.index, state=NUD_PERMANENT,
                     family=family_of(address))
    except NetlinkError as e:
        raise kernel_error(e, f"add neighbour {address} lladdr {mac} on {link.name}",
                           f"link: {link.name}; neighbour: {address}") from None


def enable_proxy_arp(link_name: str, netns: Optional[str] = None) -> None:
    """proxy_arp on the host veth: the node answers ARP for the addresses it routes elsewhere, as
    Calico's host side does (the pod's own gateway is also a static neighbour: see above)."""
    from . import sysctl

    sysctl.write(f"net/ipv4/conf/{link_name}/proxy_arp", "1", netns=netns)


def proxy_arp_enabled(link_name: str, netns: Optional[str] = None) -> bool:
    from . import sysctl

    return sysctl.read(f"net/ipv4/conf/{link_name}/proxy_arp", netns=netns) == "1"


def enable_forwarding(families: set[int], netns: Optional[str] = None) -> None:
    """The node forwards between its pods and its underlay (per family the pod uses)."""
    from . import sysctl

    if 4 in families:
        sysctl.write("net/ipv4/ip_forward", "1", netns=netns)
    if 6 in families:
        sysctl.write("net/ipv6/conf/all/forwarding", "1", netns=netns, missing_ok=True)


def routes_by_proto(h: Handle, proto: int = RTPROT_BIRD, family: int = 0,
                    table: int = MAIN_TABLE) -> list[ProtoRoute]:
    """Every route of routing protocol `proto` (default: BIRD's), unicast or not (BIRD installs a
    node's own blocks as blackholes)."""
    out: list[ProtoRoute] = []
    for fam in ((family,) if family else (AF_INET, AF_INET6)):
        msgs = h._call("list routes", "routes", h._ipr.route, "dump", family=fam)
        for m in msgs:
            if m.get("proto") != proto or (m.get("table") or m["table"]) != table:
                continue
            dst = m.get("dst") or ("0.0.0.0" if fam == AF_INET else "::")
            gw = m.get("gateway")
            if gw is None:
                mp = m.get("multipath")
                if mp:
                    gw = mp[0].get("gateway")
            out.append(ProtoRoute(ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False),
                                  _KINDS.get(m["type"], str(m["type"])),
                                  ipaddress.ip_address(gw) if gw else None, m.get("oif") or 0, proto))
    return out
