"""What one node's BIRD should do, computed from plain data (no BIRD, no API): its router id and
ASN, its neighbours, what it exports and what it may import. render.py turns a Plan into BIRD's
config; the controller gathers the inputs. Pure, so 200 simulated nodes are planned in a test.

Topology (as Calico's, with its choices):
- **Full mesh** (default): every node peers with every other node that published an IPv4
  underlay address: n*(n-1)/2 sessions in the cluster.
- **Route reflectors**: as soon as one node carries the label `routeReflectorLabel` = "true",
  the reflectors peer with each other (plain iBGP) and with every other node (as their route
  reflector clients); the others peer only with the reflectors. The mesh is then off.
  `nodeToNodeMesh: false` without reflectors leaves the explicit peers only.
- **Explicit peers** from the settings, for the nodes their `nodeSelector` selects.

Export: the node's affine blocks (aggregates, a blackhole in the node's own table so that
traffic to an unused address of the block is dropped here, not sent back out), and the
addresses it borrowed from other nodes' blocks as /32 (/128). Import: only prefixes inside the
pools' CIDRs, so a peer can never inject a route elsewhere (the underlay, a default route).
"The pools" are the routed ones: the IPPools the settings' `ipPools` names (default every IPPool).
Export only what peers accept: a block or borrowed address outside them (an overlay network's pool)
is not announced, since every peer's import filter, made from the same settings, would drop it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Optional

from .settings import ASN_ANNOTATION, Peer, Settings, SettingsError, parse_asn

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NodeInfo:
    """One node as the plan needs it: its published underlay and its labels/annotations."""
    name: str
    ipv4: str = ""
    ipv6: str = ""
    labels: dict = field(default_factory=dict, compare=False)
    annotations: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Neighbor:
    name: str                 # BIRD protocol name (node name or peer name, sanitised)
    description: str          # the node or peer as the user knows it
    address: str
    asn: int
    rr_client: bool = False   # we reflect routes to it
    bfd: bool = False
    password: str = ""
    kind: str = "mesh"        # "mesh", "reflector", "client", "peer"
    multihop: bool = False    # not on this node's underlay subnet


@dataclass
class Plan:
    node: str
    router_id: str
    asn: int
    ipv4: str
    ipv6: str
    neighbors: list[Neighbor]
    blocks: list[IPNetwork]
    borrowed: list[IPNetwork]
    pools: list[IPNetwork]
    settings: Settings
    reflector: bool = False
    #: this node's underlay subnets (both families); empty: unknown, every node counts as on-segment
    local_subnets: list = field(default_factory=list)
    #: nodes on another subnet, reached through the VXLAN device (crossSubnet "vxlan")
    cross_nodes: list = field(default_factory=list)
    #: the underlay interface (where next hops on this node's subnets are)
    interface: str = ""

    @property
    def encapsulates(self) -> bool:
        return bool(self.cross_nodes)


def node_asn(info: NodeInfo, settings: Settings) -> int:
    """The node's ASN: its annotation (the admin's), else the cluster's. A bad annotation is a
    SettingsError naming the node and the annotation."""
    value = info.annotations.get(ASN_ANNOTATION)
    if value is None:
        return settings.asn
    try:
        return parse_asn(value, f"node {info.name}: annotation {ASN_ANNOTATION}")
    except SettingsError:
        raise


def is_reflector(info: NodeInfo, settings: Settings) -> bool:
    return str(info.labels.get(settings.route_reflector_label, "")).lower() == "true"


def protocol_name(prefix: str, name: str) -> str:
    """A BIRD protocol name: letters, digits, '_' (node names have '-' and '.')."""
    return prefix + "".join(c if c.isalnum() else "_" for c in name)


def neighbors(me: NodeInfo, nodes: Iterable[NodeInfo], settings: Settings) -> tuple[list[Neighbor], bool]:
    """This node's neighbours (see the module doc) and whether it is a reflector."""
    others = sorted((n for n in nodes if n.name != me.name and n.ipv4), key=lambda n: n.name)
    reflectors = [n for n in others if is_reflector(n, settings)]
    i_reflect = is_reflector(me, settings)
    out: list[Neighbor] = []

    def node_neighbor(n: NodeInfo, kind: str) -> Neighbor:
        return Neighbor(protocol_name("node_", n.name), n.name, n.ipv4, node_asn(n, settings),
                        rr_client=kind == "client", bfd=settings.bfd, kind=kind)

    if i_reflect or reflectors:
        if i_reflect:
            for n in others:
                out.append(node_neighbor(n, "reflector" if is_reflector(n, settings) else "client"))
        else:
            out.extend(node_neighbor(n, "reflector") for n in reflectors)
    elif settings.node_to_node_mesh:
        out.extend(node_neighbor(n, "mesh") for n in others)
    for p in settings.peers:
        if p.selects(me.labels):
            out.append(peer_neighbor(p))
    return out, i_reflect


def peer_neighbor(p: Peer) -> Neighbor:
    return Neighbor(protocol_name("peer_", p.name), p.name, str(p.address), p.asn, bfd=p.bfd,
                    password=p.password, kind="peer")


def on_segment(address: str, subnets: list) -> bool:
    """`address` is on one of this node's underlay subnets (unknown subnets: assumed so)."""
    if not subnets:
        return True
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in subnets if net.version == ip.version)


def make_plan(me: NodeInfo, nodes: Iterable[NodeInfo], settings: Settings, blocks: Iterable[IPNetwork],
              borrowed: Iterable[Any], pools: Iterable[IPNetwork], local_subnets: Iterable[IPNetwork] = (),
              interface: str = "") -> Plan:
    """The plan of node `me`. It needs an IPv4 underlay address (the router id, the session's
    source): without one, a ValueError saying so. `local_subnets`: this node's underlay subnets;
    neighbours outside them are multihop sessions and, with crossSubnet "vxlan", every node
    outside them is reached through the VXLAN device (Calico's CrossSubnet)."""
    if not me.ipv4:
        raise ValueError(f"node {me.name} has no IPv4 underlay address in its node facts: BGP needs one "
                         f"for its router id and sessions")
    nodes = list(nodes)
    subnets = list(local_subnets)
    nbrs, reflector = neighbors(me, nodes, settings)
    nbrs = [n if on_segment(n.address, subnets) else replace(n, multihop=True) for n in nbrs]
    cross = [n for n in sorted(nodes, key=lambda n: n.name)
             if n.name != me.name and n.ipv4 and not on_segment(n.ipv4, subnets)] \
        if settings.cross_subnet == "vxlan" else []
    pools = list(pools)
    host = [ipaddress.ip_network(f"{a}/{ipaddress.ip_address(a).max_prefixlen}") for a in borrowed]
    blocks = [b for b in blocks if inside(b, pools)]
    host = [h for h in host if inside(h, pools)]
    return Plan(node=me.name, router_id=me.ipv4, asn=node_asn(me, settings), ipv4=me.ipv4, ipv6=me.ipv6,
                neighbors=nbrs, blocks=sorted(set(blocks), key=_key), borrowed=sorted(set(host), key=_key),
                pools=sorted(set(pools), key=_key), settings=settings, reflector=reflector,
                local_subnets=subnets, cross_nodes=cross, interface=interface)


def inside(net: IPNetwork, pools: Iterable[IPNetwork]) -> bool:
    """`net` lies inside one of the (routed) pools."""
    return any(net.version == p.version and net.subnet_of(p) for p in pools)


def _key(net: IPNetwork) -> tuple:
    return (net.version, int(net.network_address), net.prefixlen)


def session_count(plans: Iterable[Plan]) -> int:
    """BGP sessions in a cluster: each node-to-node session is in two plans; explicit peers once."""
    node_sessions = sum(1 for p in plans for n in p.neighbors if n.kind != "peer")
    return node_sessions // 2


def blocks_from_ipblocks(objects: Iterable[dict], node: str) -> tuple[list[IPNetwork], list[str], Optional[str]]:
    """(CIDRs of `node`'s affine blocks, addresses it borrowed in other nodes' blocks, an error
    about a malformed block or None) from IPBlock objects."""
    blocks: list[IPNetwork] = []
    borrowed: list[str] = []
    error = None
    for obj in objects:
        spec = obj.get("spec") or {}
        try:
            cidr = ipaddress.ip_network(str(spec.get("cidr")), strict=False)
        except ValueError:
            error = f"IPBlock {(obj.get('metadata') or {}).get('name')}: spec.cidr {spec.get('cidr')!r} is not a CIDR"
            continue
        if spec.get("node") == node:
            blocks.append(cidr)
            continue
        for addr, alloc in (spec.get("allocations") or {}).items():
            if isinstance(alloc, dict) and alloc.get("node") == node:
                try:
                    borrowed.append(str(ipaddress.ip_address(addr)))
                except ValueError:
                    error = f"IPBlock {(obj.get('metadata') or {}).get('name')}: allocation {addr!r} is not an address"
    return blocks, borrowed, error


def pools_from_ippools(objects: Iterable[dict], names: Iterable[str] = ()) -> list[IPNetwork]:
    """The CIDRs of the routed IPPools: those named in `names` (the settings' `ipPools`), or every
    IPPool when it is empty; disabled ones too (their blocks may still hold pods)."""
    names = set(names)
    out = []
    for obj in objects:
        if names and (obj.get("metadata") or {}).get("name") not in names:
            continue
        try:
            out.append(ipaddress.ip_network(str((obj.get("spec") or {}).get("cidr")), strict=True))
        except ValueError:
            continue
    return out


def missing_pools(objects: Iterable[dict], names: Iterable[str]) -> list[str]:
    """The names in the settings' `ipPools` that no IPPool has (a typo routes nothing of it)."""
    have = {(o.get("metadata") or {}).get("name") for o in objects}
    return [n for n in names if n not in have]
