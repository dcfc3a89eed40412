"""VXLAN over netlink: the device, its remote FDB (`bridge fdb ... dst`), its neighbour entries, the
MTU the encapsulation leaves. Built on Handle (one rtnetlink socket per namespace), for the
vxlan-overlay delegate (delegates/vxlan_overlay.py) and its peers controller
(multiplex/controllers/vxlan_peers.py).

What lives here and why:
- `add_vxlan` / `vxlan_devices`: a VXLAN link with `local` (this node's underlay address), the UDP
  port, learning and proxy as asked, and its attributes read back (`VxlanInfo`).
- The remote FDB: entries on the VXLAN device itself (NTF_SELF), each a MAC -> underlay address.
  The all-zeros MAC may have many (`append`: head-end replication of broadcast, unknown unicast
  and multicast to every peer); any other MAC has one (`replace`). Programmed entries are
  permanent; learned ones (learning on) are reachable/stale and never touched here.
- Neighbour entries on the VXLAN device (pod IP -> pod MAC, permanent): with the device's proxy
  mode on, the kernel answers ARP requests and IPv6 neighbour solicitations for those IPs itself
  (vxlan's arp_reduce / neigh_reduce) and drops the ones it cannot answer, so ARP and ND never
  cross the mesh.
- `overhead`: what VXLAN costs on the underlay: 50 bytes over IPv4 (outer IPv4 20 + UDP 8 + VXLAN
  8 + inner Ethernet 14), 70 over IPv6 (outer header 40).

These could later move into handle.py as Handle methods (they use its socket and error mapping).
"""
from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Optional, Union

from ..cni.errors import CNIError, NETLINK_FAILURE
from .handle import AF_INET, AF_INET6, Handle, Link, kernel_error

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

NTF_SELF = 0x02
NUD_PERMANENT = 0x80
ZERO_MAC = "00:00:00:00:00:00"
VXLAN_OVERHEAD = {4: 50, 6: 70}


def overhead(family: int) -> int:
    """Bytes VXLAN adds on an underlay of IP version `family` (4 or 6)."""
    return VXLAN_OVERHEAD[family]


@dataclass
class VxlanInfo:
    link: Link
    vni: int
    port: int
    local: Optional[IPAddress]
    learning: bool
    proxy: bool
    underlay: int          # IFLA_VXLAN_LINK: the underlay interface's index (0: none)


def _info(h: Handle, msg) -> Optional[VxlanInfo]:
    link = h._link(msg)
    if link.kind != "vxlan":
        return None
    info = msg.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    attrs = {a[0]: a[1] for a in data["attrs"]} if data is not None else {}
    local = attrs.get("IFLA_VXLAN_LOCAL") or attrs.get("IFLA_VXLAN_LOCAL6")
    return VxlanInfo(link=link, vni=int(attrs.get("IFLA_VXLAN_ID") or 0), port=int(attrs.get("IFLA_VXLAN_PORT") or 0),
                     local=ipaddress.ip_address(local) if local else None,
                     learning=bool(attrs.get("IFLA_VXLAN_LEARNING")), proxy=bool(attrs.get("IFLA_VXLAN_PROXY")),
                     underlay=int(attrs.get("IFLA_VXLAN_LINK") or 0))


def vxlan_devices(h: Handle) -> list[VxlanInfo]:
    """Every VXLAN link in the handle's namespace, with its attributes."""
    out = []
    for msg in h._call("list links", "links", h._ipr.link, "dump"):
        info = _info(h, msg)
        if info is not None:
            out.append(info)
    return out


def vxlan_device(h: Handle, name: str) -> Optional[VxlanInfo]:
    """The VXLAN link `name` with its attributes; None when there is none (or it is not VXLAN)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        msg = h._ipr.link("get", ifname=name)[0]
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise kernel_error(e, f"look up link {name}", f"link: {name} in {h.where}") from None
    return _info(h, msg)


def add_vxlan(h: Handle, name: str, *, vni: int, port: int, local: IPAddress, underlay: Link, learning: bool,
              proxy: bool, mtu: int, alias: str = "") -> bool:
    """Create the VXLAN link `name` (down). False when a link of that name exists already (a
    concurrent ADD made it: the caller reads it back and compares). A VNI that another VXLAN device
    with the same port and local address holds is code 105 naming the VNI (the kernel's EEXIST)."""
    from pyroute2.netlink.exceptions import NetlinkError

    if h.link(name) is not None:
        return False
    attrs = {"vxlan_id": vni, "vxlan_port": port, "vxlan_learning": int(learning), "vxlan_proxy": int(proxy),
             "vxlan_link": underlay.index, "mtu": mtu,
             ("vxlan_local" if local.version == 4 else "vxlan_local6"): str(local)}
    try:
        h._ipr.link("add", ifname=name, kind="vxlan", **attrs)
    except NetlinkError as e:
        if e.code == errno.EEXIST:
            if h.link(name) is not None:
                return False
            raise CNIError(NETLINK_FAILURE, f"another VXLAN device already uses VNI {vni} on UDP port {port} at "
                           f"{local} in {h.where}", f"vni: {vni}; link: {name}") from None
        raise kernel_error(e, f"create VXLAN device {name} (VNI {vni})", f"link: {name} in {h.where}") from None
    if alias:  # the kernel reads IFLA_IFALIAS on a change, not at creation
        h.set_alias(h.require_link(name), alias)
    return True


# ---- the remote FDB ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Remote:
    """One FDB entry of a VXLAN device: frames to `mac` go to the VTEP at `dst`."""
    mac: str
    dst: str
    permanent: bool = True


def remote_fdb(h: Handle, dev: Link) -> list[Remote]:
    """The device's own FDB entries that carry a remote address (`bridge fdb show dev DEV`)."""
    out = []
    for m in h._call(f"read the FDB of {dev.name}", f"link: {dev.name}", h._ipr.fdb, "dump"):
        if m["ifindex"] != dev.index or m.get("NDA_MASTER"):
            continue
        dst = m.get("NDA_DST")
        if not dst:
            continue
        out.append(Remote(mac=(m.get("NDA_LLADDR") or "").lower(), dst=str(ipaddress.ip_address(dst)),
                          permanent=bool(m["state"] & NUD_PERMANENT)))
    return out


def add_remote(h: Handle, dev: Link, mac: str, dst: str) -> None:
    """A permanent entry `mac` -> `dst`: appended for the all-zeros MAC (one per peer), replaced
    for any other MAC (a MAC lives behind one VTEP)."""
    op = "append" if mac == ZERO_MAC else "replace"
    h._call(f"add FDB entry {mac} dst {dst} on {dev.name}", f"link: {dev.name}; mac: {mac}; dst: {dst}",
            h._ipr.fdb, op, ifindex=dev.index, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)


def delete_remote(h: Handle, dev: Link, mac: str, dst: str) -> bool:
    """Remove the entry `mac` -> `dst`; False when it was already gone."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        h._ipr.fdb("del", ifindex=dev.index, lladdr=mac, dst=dst, flags=NTF_SELF)
        return True
    except NetlinkError as e:
        if e.code in (errno.ENOENT, errno.ENODEV, errno.ESRCH):
            return False
        raise kernel_error(e, f"delete FDB entry {mac} dst {dst} on {dev.name}", f"link: {dev.name}") from None


# ---- neighbours --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Neighbour:
    ip: str
    mac: str


def permanent_neighbours(h: Handle, dev: Link) -> list[Neighbour]:
    """The permanent neighbour entries on `dev` (IPv4 and IPv6): the ones a controller programs."""
    out = []
    for fam in (AF_INET, AF_INET6):
        for m in h._call(f"read the neighbours of {dev.name}", f"link: {dev.name}", h._ipr.neigh, "dump",
                         family=fam):
            if m["ifindex"] != dev.index or not m["state"] & NUD_PERMANENT:
                continue
            dst, mac = m.get("NDA_DST"), m.get("NDA_LLADDR")
            if dst and mac:
                out.append(Neighbour(ip=str(ipaddress.ip_address(dst)), mac=mac.lower()))
    return out


def set_neighbour(h: Handle, dev: Link, ip: str, mac: str) -> None:
    fam = AF_INET if ipaddress.ip_address(ip).version == 4 else AF_INET6
    h._call(f"add neighbour {ip} lladdr {mac} on {dev.name}", f"link: {dev.name}; neighbour: {ip}",
            h._ipr.neigh, "replace", ifindex=dev.index, dst=ip, lladdr=mac, state=NUD_PERMANENT, family=fam)


def delete_neighbour(h: Handle, dev: Link, ip: str) -> bool:
    from pyroute2.netlink.exceptions import NetlinkError

    fam = AF_INET if ipaddress.ip_address(ip).version == 4 else AF_INET6
    try:
        h._ipr.neigh("del", ifindex=dev.index, dst=ip, family=fam)
        return True
    except NetlinkError as e:
        if e.code in (errno.ENOENT, errno.ENODEV, errno.ESRCH):
            return False
        raise kernel_error(e, f"delete neighbour {ip} on {dev.name}", f"link: {dev.name}") from None


# ---- the underlay ------------------------------------------------------------------------------------
def route_link(h: Handle, dst: IPAddress) -> Optional[Link]:
    """The interface the kernel would send a packet to `dst` out of (`ip route get DST`), or None
    when there is no route."""
    from pyroute2.netlink.exceptions import NetlinkError

    fam = AF_INET if dst.version == 4 else AF_INET6
    try:
        msgs = h._ipr.route("get", dst=str(dst), family=fam)
    except NetlinkError as e:
        if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENOENT, errno.ESRCH):
            return None
        raise kernel_error(e, f"look up the route to {dst}", f"address: {dst}") from None
    oif = msgs[0].get("RTA_OIF") if msgs else None
    return h.link_at(oif) if oif else None


def global_addresses(h: Handle, link: Link, family: int) -> list[IPAddress]:
    """`link`'s global addresses of IP version `family` (no link-local, loopback or multicast)."""
    out = []
    for a in h.addresses(link):
        ip = a.interface.ip
        if ip.version == family and not (ip.is_link_local or ip.is_loopback or ip.is_multicast):
            out.append(ip)
    return out
