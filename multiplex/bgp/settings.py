"""The node's BGP settings: one JSON file the admin writes (a ConfigMap mounted into the DaemonSet),
read by the BGP controller; every value checked here, a bad one a ValueError naming its field.

    {"asn": 64512, "nodeToNodeMesh": true, "routeReflectorLabel": "multiplex.dev/route-reflector",
     "bfd": {"enabled": true, "intervalMs": 100, "multiplier": 3},
     "gracefulRestart": {"enabled": true, "restartTime": 120},
     "peers": [{"name": "tor1", "address": "198.19.0.1", "asn": 65001, "bfd": false,
                "nodeSelector": {"rack": "r1"}}],
     "crossSubnet": {"encapsulation": "vxlan", "vni": 4097, "port": 4789}}

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
             "peers", "crossSubnet"}
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
                    vxlan_port=_int(cross, "port", 4789, 1, 65535, f"{where}.crossSubnet"))


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
