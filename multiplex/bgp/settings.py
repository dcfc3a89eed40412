"""The node's BGP settings: one JSON file the admin writes (a ConfigMap mounted into the DaemonSet),
read by the BGP controller; every value checked here, a bad one a ValueError naming its field.

    {"asn": 64512, "nodeToNodeMesh": true, "routeReflectorLabel": "multiplex.dev/route-reflector",
     "bfd": {"enabled": true, "intervalMs": 100, "multiplier": 3},
     "gracefulRestart": {"enabled": true, "restartTime": 120},
     "peers": [{"name": "tor1", "address": "198.19.0.1", "asn": 65001, "bfd": false,
                "nodeSelector": {"rack": "r1"}}],
     "crossSubnet": {"encapsulation": "vxlan", "vni": 4097, "port": 4789},
     "timers": {"holdTime": 240, "keepaliveTime": 80},
     "ipPools": ["routed-v4", "routed-v6"]}

`timers`: the BGP hold time and keepalive of every session. Default BIRD's (hold 240 s, keepalive a
third of it), which is also Calico's (its bird.cfg sets none). Without BFD the hold time is how long
a dead node's routes stay (a node whose TCP connection closes is withdrawn at once; one that goes
silent only after the hold time); lower it (e.g. 9 s / 3 s) or turn BFD on for faster failover.
`ipPools`: the names of the IPPools whose blocks BGP carries (default: every IPPool). A node exports
only its blocks (and borrowed addresses) inside them, and imports only prefixes inside them: the
blocks of other pools (an overlay network's) are neither announced nor accepted.

Why a file and not a custom resource: the settings are the admin's, cluster-wide and rarely
changed; a ConfigMap mounted as a file needs no new CRD, no RBAC and no watch, and the controller
re-reads it at each resync (a changed file is applied with `birdc configure`). A node's own ASN may
differ (annotation `multiplex.dev/bgp-asn` on its Node, set by the admin: the daemon may only write
its node-facts annotation, so a node cannot change its own ASN). Docs: docs/bgp-routed.md.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

#: where the controller looks unless $MULTIPLEX_BGP_CONFIG names another file
DEFAULT_PATH = "/etc/multiplex/bgp.json"
PATH_ENV = "MULTIPLEX_BGP_CONFIG"
DEFAULT_ASN = 64512
ASN_ANNOTATION = "multiplex.dev/bgp-asn"
DEFAULT_RR_LABEL = "multiplex.dev/route-reflector"
MAX_ASN = 4294967295
#: BIRD's default hold time (s), and Calico's (it leaves BIRD's); keepalive defaults to a third of it
DEFAULT_HOLD_TIME = 240


class SettingsError(ValueError):
    """A bad setting: `field` is its JSON path (e.g. `$.peers[0].address`)."""

    def __init__(self, message: str, field: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Peer:
    """An explicit peer (a top-of-rack router, an external speaker)."""
    name: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    asn: int
    bfd: bool = False
    node_selector: dict = field(default_factory=dict, compare=False)
    password: str = ""

    def selects(self, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in self.node_selector.items())


@dataclass(frozen=True)
class Settings:
    asn: int = DEFAULT_ASN
    node_to_node_mesh: bool = True
    route_reflector_label: str = DEFAULT_RR_LABEL
    route_reflector_cluster_id: str = ""
    bfd: bool = False
    bfd_interval_ms: int = 100
    bfd_multiplier: int = 3
    graceful_restart: bool = True
    restart_time: int = 120
    peers: tuple[Peer, ...] = ()
    cross_subnet: str = "vxlan"      # "vxlan": encapsulate to nodes on another subnet; "none": never
    vxlan_vni: int = 4097
    vxlan_port: int = 4789
    hold_time: int = DEFAULT_HOLD_TIME
    keepalive_time: int = DEFAULT_HOLD_TIME // 3
    #: names of the IPPools BGP carries; empty: every IPPool
    ip_pools: tuple[str, ...] = ()


def parse_asn(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ASN:
        raise SettingsError(f"ASN {value!r} is out of range: an integer from 1 to {MAX_ASN} "
                            f"(private: 64512-65534, 4200000000-4294967294)", where)
    return value


def _bool(body: dict, key: str, default: bool, where: str) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise SettingsError(f"{value!r} is not true or false", f"{where}.{key}")
    return value


def _int(body: dict, key: str, default: int, low: int, high: int, where: str) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SettingsError(f"{value!r} is not an integer from {low} to {high}", f"{where}.{key}")
    return value


def parse(body: Any, where: str = "$") -> Settings:
    """Settings from the file's JSON object; SettingsError naming the first bad field."""
    if not isinstance(body, dict):
        raise SettingsError("the BGP settings must be a JSON object", where)
    known = {"asn", "nodeToNodeMesh", "routeReflectorLabel", "routeReflectorClusterId", "bfd", "gracefulRestart",
             "peers", "crossSubnet", "timers", "ipPools"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise SettingsError(f"unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}", f"{where}.{unknown[0]}")
    asn = parse_asn(body.get("asn", DEFAULT_ASN), f"{where}.asn")
    label = body.get("routeReflectorLabel", DEFAULT_RR_LABEL)
    if not isinstance(label, str) or not label:
        raise SettingsError(f"{label!r} is not a label name", f"{where}.routeReflectorLabel")
    cluster_id = body.get("routeReflectorClusterId", "")
    if cluster_id:
        try:
            ipaddress.IPv4Address(cluster_id)
        except ValueError:
            raise SettingsError(f"{cluster_id!r} is not an IPv4 address (a cluster ID is written as one)",
                                f"{where}.routeReflectorClusterId") from None
    bfd = body.get("bfd", {})
    if not isinstance(bfd, dict):
        raise SettingsError("bfd must be an object {enabled, intervalMs, multiplier}", f"{where}.bfd")
    gr = body.get("gracefulRestart", {})
    if not isinstance(gr, dict):
        raise SettingsError("gracefulRestart must be an object {enabled, restartTime}", f"{where}.gracefulRestart")
    cross = body.get("crossSubnet", {})
    if not isinstance(cross, dict):
        raise SettingsError("crossSubnet must be an object {encapsulation, vni, port}", f"{where}.crossSubnet")
    encap = cross.get("encapsulation", "vxlan")
    if encap not in ("vxlan", "none"):
        raise SettingsError(f"{encap!r} is not \"vxlan\" or \"none\"", f"{where}.crossSubnet.encapsulation")
    hold, keepalive = parse_timers(body.get("timers", {}), f"{where}.timers")
    pools = parse_pool_names(body.get("ipPools"), f"{where}.ipPools")
    peers = body.get("peers", [])
    if not isinstance(peers, list):
        raise SettingsError("peers must be a list of {name, address, asn}", f"{where}.peers")
    return Settings(asn=asn, node_to_node_mesh=_bool(body, "nodeToNodeMesh", True, where),
                    route_reflector_label=label, route_reflector_cluster_id=str(cluster_id or ""),
                    bfd=_bool(bfd, "enabled", False, f"{where}.bfd"),
                    bfd_interval_ms=_int(bfd, "intervalMs", 100, 10, 60000, f"{where}.bfd"),
                    bfd_multiplier=_int(bfd, "multiplier", 3, 1, 255, f"{where}.bfd"),
                    graceful_restart=_bool(gr, "enabled", True, f"{where}.gracefulRestart"),
                    restart_time=_int(gr, "restartTime", 120, 1, 4095, f"{where}.gracefulRestart"),
                    peers=tuple(parse_peer(p, f"{where}.peers[{i}]") for i, p in enumerate(peers)),
                    cross_subnet=encap, vxlan_vni=_int(cross, "vni", 4097, 1, 16777215, f"{where}.crossSubnet"),
                    vxlan_port=_int(cross, "port", 4789, 1, 65535, f"{where}.crossSubnet"),
                    hold_time=hold, keepalive_time=keepalive, ip_pools=pools)


def parse_timers(body: Any, where: str) -> tuple[int, int]:
    """(hold time, keepalive time) in seconds. A hold time of 0 (no keepalives, RFC 4271) is refused:
    a dead peer would then never be noticed without BFD. The keepalive must be below the hold time
    (else the session expires between two keepalives); it defaults to a third of it, as BIRD's."""
    if not isinstance(body, dict):
        raise SettingsError("timers must be an object {holdTime, keepaliveTime}", where)
    unknown = sorted(set(body) - {"holdTime", "keepaliveTime"})
    if unknown:
        raise SettingsError(f"unknown field {unknown[0]!r}; known: holdTime, keepaliveTime", f"{where}.{unknown[0]}")
    hold = _int(body, "holdTime", DEFAULT_HOLD_TIME, 3, 65535, where)
    keepalive = _int(body, "keepaliveTime", max(1, hold // 3), 1, 65535, where)
    if keepalive >= hold:
        raise SettingsError(f"{keepalive} is not below holdTime {hold} (a third of it is usual)",
                            f"{where}.keepaliveTime")
    return hold, keepalive


def parse_pool_names(value: Any, where: str) -> tuple[str, ...]:
    """The routed IPPools' names: absent means every IPPool; a list names at least one, each once."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise SettingsError("ipPools must be a non-empty list of IPPool names (leave it out for every IPPool)",
                            where)
    for i, name in enumerate(value):
        if not isinstance(name, str) or not name.strip():
            raise SettingsError(f"{name!r} is not an IPPool name", f"{where}[{i}]")
        if name in value[:i]:
            raise SettingsError(f"{name!r} is listed twice", f"{where}[{i}]")
    return tuple(value)


def parse_peer(body: Any, where: str) -> Peer:
    if not isinstance(body, dict):
        raise SettingsError("a peer must be an object {name, address, asn}", where)
    try:
        address = ipaddress.ip_address(str(body.get("address")))
    except ValueError:
        raise SettingsError(f"{body.get('address')!r} is not an IP address", f"{where}.address") from None
    name = body.get("name") or f"peer-{address}"
    if not isinstance(name, str):
        raise SettingsError(f"{name!r} is not a string", f"{where}.name")
    selector = body.get("nodeSelector") or {}
    if not isinstance(selector, dict):
        raise SettingsError("nodeSelector must be a map of node labels", f"{where}.nodeSelector")
    password = body.get("password", "")
    if not isinstance(password, str) or '"' in password:
        raise SettingsError("password must be a string without '\"'", f"{where}.password")
    return Peer(name=name, address=address, asn=parse_asn(body.get("asn"), f"{where}.asn"),
                bfd=_bool(body, "bfd", False, where), node_selector={str(k): str(v) for k, v in selector.items()},
                password=password)


def settings_path() -> str:
    return os.environ.get(PATH_ENV, "").strip() or DEFAULT_PATH


def load(path: Optional[str] = None) -> Settings:
    """The settings file, parsed; SettingsError naming the file and field when it is bad."""
    path = path or settings_path()
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except json.JSONDecodeError as e:
        raise SettingsError(f"{path} is not JSON: {e}", "$") from None
    try:
        return parse(body)
    except SettingsError as e:
        raise SettingsError(f"{path}: {str(e).split(': ', 1)[1]}", e.field) from None
