"""The pod annotation `k8s.v1.cni.cncf.io/networks`, in both forms of the multi-network spec.

Text form: comma-separated `name`, `ns/name`, `name@ifname`, `ns/name@ifname` (spaces around
items and parts are trimmed):  "macvlan, tenant-b/storage@stor0"
JSON form: a list of objects (checked against schemas/annotation.json):
    [{"name": "macvlan", "namespace": "default", "interface": "net1", "ips": ["198.18.0.10/24"],
      "mac": "02:00:00:00:00:01", "default-route": ["198.18.0.1"], "cni-args": {...},
      "portMappings": [...], "bandwidth": {...}, "infiniband-guid": "..."}]

Every bad entry is refused with code 7: the message quotes the entry, the details name the field
(`field: k8s.v1.cni.cncf.io/networks[1].ips[0]`) and say what is allowed. Checks: names are
DNS-1123 (NAD names: subdomain; namespaces: label), interface names are valid Linux names
(1-15 characters, no '/', ':', '%' or spaces, not '.', '..', 'lo' or a reserved name such as the
cluster network's), no interface name twice, IPs and gateways are addresses (ips may carry a
prefix length), MACs are unicast Ethernet addresses, at most one default-route gateway per family
in the whole annotation. Stdlib only (jsonschema is imported for the JSON form alone).
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ..cni.errors import CNIError, INVALID_CONFIG

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"

# Matched whole (fullmatch): a `$` anchor would accept a trailing newline.
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
IFNAME_BAD = re.compile(r"[\s/:%]")
IFNAME_MAX = 15
#: the largest annotation value read (UTF-8 bytes); a larger one is refused before it is parsed
MAX_ANNOTATION_BYTES = 64 * 1024
ALWAYS_RESERVED = ("lo",)

ALLOWED_NAME = "a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', at most 253 characters, " \
               "starting and ending with a letter or digit"
ALLOWED_NAMESPACE = "a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters, " \
                    "starting and ending with a letter or digit"
ALLOWED_IFNAME = f"1-{IFNAME_MAX} bytes, no '/', ':', '%' or spaces, not '.' or '..'"
ALLOWED_TEXT = "comma-separated name, namespace/name, name@interface or namespace/name@interface, " \
               "or a JSON list of objects with at least a name"


@dataclass
class NetworkSelection:
    """One network a pod asks for. `namespace` defaults to the pod's."""
    name: str
    namespace: str
    interface: str = ""
    ips: list[str] = field(default_factory=list)
    mac: str = ""
    default_route: list[str] = field(default_factory=list)
    cni_args: Optional[dict[str, Any]] = None
    port_mappings: list[dict[str, Any]] = field(default_factory=list)
    bandwidth: Optional[dict[str, Any]] = None
    infiniband_guid: str = ""
    device_id: str = ""
    ipam_claim_reference: str = ""
    source: str = ""      # the entry as the pod wrote it (quoted in later errors)
    index: int = 0        # its position in the annotation

    @property
    def key(self) -> str:
        """`namespace/name`: the network's name in network-status and in logs."""
        return f"{self.namespace}/{self.name}"

    def capability_args(self) -> dict[str, Any]:
        """The requests delegates receive as runtimeConfig (CNI capability conventions)."""
        out: dict[str, Any] = {}
        if self.ips:
            out["ips"] = list(self.ips)
        if self.mac:
            out["mac"] = self.mac
        if self.port_mappings:
            out["portMappings"] = [dict(p) for p in self.port_mappings]
        if self.bandwidth:
            out["bandwidth"] = dict(self.bandwidth)
        if self.infiniband_guid:
            out["infinibandGUID"] = self.infiniband_guid
        if self.device_id:
            out["deviceID"] = self.device_id
        return out


def parse_networks(value: str, default_namespace: str, source_name: str = NETWORKS_ANNOTATION,
                   reserved_interfaces: Iterable[str] = ()) -> list[NetworkSelection]:
    """The selections of an annotation value (either form); [] for an empty one.
    `source_name` prefixes the field paths in errors (e.g. `defaultNetworks`);
    `reserved_interfaces` are names the pod already has (the cluster network's CNI_IFNAME)."""
    check_annotation_size(value or "", source_name)
    text = (value or "").strip()
    if not text:
        return []
    if text[0] in "[{":
        selections = _parse_json(text, default_namespace, source_name)
    else:
        selections = _parse_text(text, default_namespace, source_name)
    _check_together(selections, source_name, set(reserved_interfaces) | set(ALWAYS_RESERVED))
    return selections


def check_annotation_size(value: str, source_name: str = NETWORKS_ANNOTATION) -> None:
    """At most MAX_ANNOTATION_BYTES bytes as written (code 7), measured before anything is stripped
    or parsed: 100 KB of spaces around one name is as much a flood as 100 KB of names."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ANNOTATION_BYTES:
        raise CNIError(INVALID_CONFIG, f"{source_name} is {size} bytes, larger than the {MAX_ANNOTATION_BYTES} "
                       "bytes multiplex reads", f"field: {source_name}; allowed: at most {MAX_ANNOTATION_BYTES} bytes")


# --- the two forms ----------------------------------------------------------------------------

def _parse_text(text: str, default_namespace: str, where: str) -> list[NetworkSelection]:
    out = []
    for i, raw in enumerate(text.split(",")):
        entry = raw.strip()
        path = f"{where}[{i}]"
        if not entry:
            raise _bad(text, f"entry {i} is empty (a stray comma?)", path, ALLOWED_TEXT, where)
        if entry.count("/") > 1:
            raise _bad(entry, "more than one '/'", path, "namespace/name@interface", where)
        if entry.count("@") > 1:
            raise _bad(entry, "more than one '@'", path, "namespace/name@interface", where)
        rest, _, ifname = entry.partition("@")
        ns, slash, name = rest.rpartition("/")
        ns, name, ifname = ns.strip(), name.strip(), ifname.strip()
        if slash:
            _check_namespace(ns, entry, f"{path}.namespace", where)
        _check_name(name, entry, f"{path}.name", where)
        if "@" in entry:
            _check_ifname(ifname, entry, f"{path}.interface", where)
        out.append(NetworkSelection(name=name, namespace=ns or default_namespace, interface=ifname,
                                    source=entry, index=i))
    return out


def _parse_json(text: str, default_namespace: str, where: str) -> list[NetworkSelection]:
    from ..cni.request import JSON_DEPTH_MAX, json_depth_exceeds, no_json_constant

    if json_depth_exceeds(text.encode("utf-8", "surrogatepass")):
        # refused before json.loads, which would give up with a RecursionError
        raise _bad(_JSONText(text), f"nested more than {JSON_DEPTH_MAX} levels deep", where,
                   f"a JSON list of objects nested at most {JSON_DEPTH_MAX} levels", where)
    try:
        # NaN/Infinity are not JSON: they would reach a plugin's config in its cni-args
        doc = json.loads(text, parse_constant=no_json_constant)
    except ValueError as e:
        raise _bad(_JSONText(text), f"not valid JSON: {e}", where, ALLOWED_TEXT, where) from None
    if isinstance(doc, dict):
        raise _bad(_JSONText(text), "a single JSON object; the JSON form is a list", where,
                   "a JSON list of objects: [{\"name\": ...}]", where)
    from ..util import schema

    try:
        schema.validate("annotation", doc, prefix=where)
    except CNIError as e:
        raise _quote_schema_error(e, doc, where) from None
    out = []
    for i, item in enumerate(doc):
        out.append(_selection(i, item, default_namespace, where))
    return out


def _selection(i: int, item: dict, default_namespace: str, where: str) -> NetworkSelection:
    entry = _compact(item)
    path = f"{where}[{i}]"
    name = item["name"]
    _check_name(name, entry, f"{path}.name", where)
    if "namespace" in item:
        _check_namespace(item["namespace"], entry, f"{path}.namespace", where)
    ifname = item.get("interface") or item.get("interfaceRequest") or ""
    if ifname:
        _check_ifname(ifname, entry, f"{path}.interface", where)
    ips = [_check_ip(ip, entry, f"{path}.ips[{n}]", where, prefix_allowed=True)
           for n, ip in enumerate(item.get("ips") or [])]
    for n, ip in enumerate(ips):
        if ip in ips[:n]:
            raise _bad(entry, f"address {ip} requested twice", f"{path}.ips[{n}]", "distinct addresses", where)
    gateways = [_check_ip(gw, entry, f"{path}['default-route'][{n}]", where, prefix_allowed=False)
                for n, gw in enumerate(item.get("default-route") or [])]
    families: dict[int, str] = {}
    for n, gw in enumerate(gateways):
        fam = ipaddress.ip_address(gw).version
        if fam in families:
            raise _bad(entry, f"two IPv{fam} gateways ({families[fam]} and {gw}) in default-route",
                       f"{path}['default-route'][{n}]", "at most one gateway per IP family", where)
        families[fam] = gw
    mac = item.get("mac", "")
    if mac:
        mac = _check_mac(mac, entry, f"{path}.mac", where)
    for n, pm in enumerate(item.get("portMappings") or []):
        if pm.get("hostIP"):
            _check_ip(pm["hostIP"], entry, f"{path}.portMappings[{n}].hostIP", where, prefix_allowed=False)
    return NetworkSelection(
        name=name, namespace=item.get("namespace") or default_namespace, interface=ifname, ips=ips, mac=mac,
        default_route=gateways, cni_args=item.get("cni-args"),
        port_mappings=[dict(p) for p in item.get("portMappings") or []],
        bandwidth=dict(item["bandwidth"]) if item.get("bandwidth") is not None else None,
        infiniband_guid=(item.get("infiniband-guid") or "").lower(), device_id=item.get("deviceID", ""),
        ipam_claim_reference=item.get("ipam-claim-reference", ""), source=entry, index=i)


def _check_together(selections: list[NetworkSelection], where: str, reserved: set[str]) -> None:
    """What no single entry shows: one interface name twice, two default routes of a family."""
    seen: dict[str, int] = {}
    gateways: dict[int, int] = {}
    for s in selections:
        path = f"{where}[{s.index}]"
        if s.interface:
            if s.interface in reserved:
                raise _bad(s.source, f"interface {s.interface} is reserved (the pod already has it)",
                           f"{path}.interface", f"{ALLOWED_IFNAME}, other than {', '.join(sorted(reserved))}", where)
            if s.interface in seen:
                raise _bad(s.source, f"interface {s.interface} is also requested by entry {seen[s.interface]}",
                           f"{path}.interface", "an interface name no other entry uses", where)
            seen[s.interface] = s.index
        for n, gw in enumerate(s.default_route):
            fam = ipaddress.ip_address(gw).version
            if fam in gateways:
                raise _bad(s.source, f"a second IPv{fam} default route (entry {gateways[fam]} has one)",
                           f"{path}['default-route'][{n}]", "default-route for each IP family on one network only",
                           where)
            gateways[fam] = s.index


# --- single values ----------------------------------------------------------------------------

def _check_name(name: Any, entry: str, path: str, where: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        raise _bad(entry, f"invalid network name {_show(name)}", path, ALLOWED_NAME, where)


def _check_namespace(ns: Any, entry: str, path: str, where: str) -> None:
    if not isinstance(ns, str) or not ns or len(ns) > 63 or not DNS1123_LABEL.fullmatch(ns):
        raise _bad(entry, f"invalid namespace {_show(ns)}", path, ALLOWED_NAMESPACE, where)


def _check_ifname(ifname: Any, entry: str, path: str, where: str) -> None:
    if (not isinstance(ifname, str) or not ifname or len(ifname.encode("utf-8", "surrogatepass")) > IFNAME_MAX
            or IFNAME_BAD.search(ifname)
            or ifname in (".", "..")):
        raise _bad(entry, f"invalid interface name {_show(ifname)}", path, ALLOWED_IFNAME, where)


def _check_ip(value: Any, entry: str, path: str, where: str, prefix_allowed: bool) -> str:
    """The address normalised (`fd00::a/64`, `198.18.0.1`); unusable ones refused."""
    allowed = ("an IPv4 or IPv6 address, optionally with a prefix length: 198.18.0.10/24, fd00::10/64"
               if prefix_allowed else "an IPv4 or IPv6 address without a prefix length: 198.18.0.1")
    text = value.strip() if isinstance(value, str) else value
    try:
        if not isinstance(text, str) or (not prefix_allowed and "/" in text):
            raise ValueError
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise _bad(entry, f"invalid IP address {_show(value)}", path, allowed, where) from None
    addr = iface.ip
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        raise _bad(entry, f"{_show(value)} cannot be assigned to an interface", path,
                   "a unicast address, not unspecified, multicast or loopback", where)
    return str(iface) if "/" in text else str(addr)


def _check_mac(mac: str, entry: str, path: str, where: str) -> str:
    octets = re.split(r"[:-]", mac)
    if len(octets) != 6 or not all(re.fullmatch(r"[0-9A-Fa-f]{2}", o) for o in octets):
        raise _bad(entry, f"invalid MAC address {_show(mac)}", path, "six hex octets: 02:00:00:00:00:01", where)
    norm = ":".join(o.lower() for o in octets)
    if int(octets[0], 16) & 1:
        raise _bad(entry, f"MAC address {mac!r} is a multicast address", path,
                   "a unicast MAC (even first octet), e.g. 02:00:00:00:00:01", where)
    if norm == "00:00:00:00:00:00":
        raise _bad(entry, "MAC address 00:00:00:00:00:00 cannot be assigned", path,
                   "a unicast MAC, e.g. 02:00:00:00:00:01", where)
    return norm


# --- errors -----------------------------------------------------------------------------------

class _JSONText(str):
    """An entry of the JSON form, shown as compact JSON (it delimits itself)."""


def _compact(item: Any) -> str:
    return _JSONText(json.dumps(item, separators=(",", ":"), sort_keys=False))


def _quote(entry: str, limit: int = 200) -> str:
    """A JSON entry as compact JSON; a text entry in double quotes; long ones shortened."""
    short = entry if len(entry) <= limit else entry[:limit] + "..."
    return short if isinstance(entry, _JSONText) else json.dumps(short)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _bad(entry: str, what: str, path: str, allowed: str, where: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"invalid network selection {_quote(entry)} in {where}: {what}",
                    f"field: {path}; allowed: {allowed}")


def _quote_schema_error(err: CNIError, doc: Any, where: str) -> CNIError:
    """The schema names the field; add the offending entry to the message."""
    m = re.search(r"field: " + re.escape(where) + r"\[(\d+)\]", err.details)
    what = err.msg.split(": ", 1)[1] if ": " in err.msg else err.msg
    if m and isinstance(doc, list) and int(m.group(1)) < len(doc):
        entry = _compact(doc[int(m.group(1))])
    else:
        entry = _compact(doc)
    what = what if len(what) <= 300 else what[:300] + "..."
    return CNIError(INVALID_CONFIG, f"invalid network selection {_quote(entry)} in {where}: {what}", err.details)
