"""The node devices multiplex's overlays make, found and removed: what the vxlan-peers controller
collects when a network's last pod left, and what `multiplex uninstall` removes.

What is multiplex's, and how it is recognized (never by a guess wider than this):
- an overlay network's VXLAN device: a VXLAN link whose alias is `vxlan-overlay/<network>`
  (delegates/vxlan_overlay.py device_alias), and its bridge: the VXLAN device's master when that
  is a bridge named `mpxvb-...`, or a bridge named `mpxvb-...` with no port at all (what a removal
  cut short leaves);
- `mpxwg0` (multiplex/netlink/wireguard.py DEVICE), the policy rules to its table 47890 (table
  TABLE, priority RULE_PRIORITY) and every route of that table;
- `mpxbgp0`, the bgp controller's cross-subnet VXLAN device (multiplex/bgp/crosssubnet.py).

"Unused": the bridge has no port but the network's VXLAN device (a pod's host veth is a port).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

BRIDGE_PREFIX = "mpxvb-"
ALIAS_PREFIX = "vxlan-overlay/"


@dataclass(frozen=True)
class Overlay:
    """One overlay network's devices on this node."""
    network: str
    vxlan: str                     # the VXLAN device's name
    bridge: Optional[str]          # its bridge's name (None: not on a multiplex bridge)
    ports: tuple[str, ...]         # the bridge's other ports (pods' host veths)
    port: int = 0                  # the VXLAN UDP port
    family: int = 0                # the family of its `local`
    learning: bool = False


def overlays(h) -> list[Overlay]:
    """Every overlay network's devices in the handle's namespace."""
    from ..netlink import vxlan

    links = h.links()
    by_index = {l.index: l for l in links}
    out = []
    for d in vxlan.vxlan_devices(h):
        if not d.link.alias.startswith(ALIAS_PREFIX):
            continue
        master = by_index.get(d.link.master)
        bridge = master.name if master is not None and master.kind == "bridge" and \
            master.name.startswith(BRIDGE_PREFIX) else None
        ports = tuple(sorted(l.name for l in links if master is not None and l.master == master.index
                             and l.index != d.link.index))
        out.append(Overlay(d.link.alias[len(ALIAS_PREFIX):], d.link.name, bridge, ports, d.port,
                           d.local.version if d.local is not None else 0, d.learning))
    return out


def orphan_bridges(h) -> list[str]:
    """Bridges named `mpxvb-...` with no port at all (a VXLAN device gone, the bridge left)."""
    links = h.links()
    used = {l.master for l in links if l.master}
    return sorted(l.name for l in links if l.kind == "bridge" and l.name.startswith(BRIDGE_PREFIX)
                  and l.index not in used)


def remove_overlay(h, ov: Overlay) -> list[str]:
    """The VXLAN device, then its bridge. The names removed."""
    out = []
    if h.delete_link(ov.vxlan):
        out.append(ov.vxlan)
    if ov.bridge and h.delete_link(ov.bridge):
        out.append(ov.bridge)
    return out


def remove_unused_encryption(h) -> list[str]:
    """WireGuard's parts no overlay needs any more: the rule of an encrypted (family, port) no VXLAN
    overlay device of that family listens on; and when no such rule is left, every route of table
    47890 (peers, blackhole default) and the device `mpxwg0`. What was removed, as words."""
    from ..netlink import wireguard

    out = []
    in_use = {(o.family, o.port) for o in overlays(h)}
    rules = wireguard.encrypted_ports(h)
    for family, port in sorted(rules - in_use):
        wireguard.delete_port_rule(h, family, port)
        out.append(f"rule udp dport {port} (IPv{family}) -> table {wireguard.TABLE}")
    if rules & in_use:
        return out
    out += flush_table(h)
    if h.delete_link(wireguard.DEVICE):
        out.append(wireguard.DEVICE)
    return out


def flush_table(h) -> list[str]:
    """Every route of table 47890, of both families."""
    from pyroute2.netlink.exceptions import NetlinkError

    from ..netlink.handle import AF_INET, AF_INET6
    from ..netlink.wireguard import TABLE

    out = []
    for fam in (AF_INET, AF_INET6):
        for r in h._call("list routes", "routes", h._ipr.route, "dump", table=TABLE, family=fam):
            if r.get("table") != TABLE and r.get_attr("RTA_TABLE") != TABLE:
                continue
            dst = r.get_attr("RTA_DST") or ("0.0.0.0" if fam == AF_INET else "::")
            try:
                h._ipr.route("del", dst=f"{dst}/{r['dst_len']}", table=TABLE, family=fam, type=r["type"])
                out.append(f"route {dst}/{r['dst_len']} table {TABLE}")
            except NetlinkError:
                pass
    return out


def remove_all(h) -> list[str]:
    """Everything multiplex's overlays and BGP made on this node (uninstall): every overlay's
    VXLAN device and bridge (also with pods on it), orphan `mpxvb-` bridges, `mpxbgp0`, and
    WireGuard's device, rules and table. The names removed."""
    from ..bgp.crosssubnet import VXLAN_DEV
    from ..netlink import wireguard

    out = []
    for ov in overlays(h):
        out += remove_overlay(h, ov)
    for name in orphan_bridges(h):
        if h.delete_link(name):
            out.append(name)
    if h.delete_link(VXLAN_DEV):
        out.append(VXLAN_DEV)
    for family, port in sorted(wireguard.encrypted_ports(h)):
        wireguard.delete_port_rule(h, family, port)
        out.append(f"rule udp dport {port} (IPv{family}) -> table {wireguard.TABLE}")
    out += flush_table(h)
    if h.delete_link(wireguard.DEVICE):
        out.append(wireguard.DEVICE)
    return out
