"""The `ipam` block of a network config: parsed, checked and given defaults.

Format (host-local's, plus `exclude` and `store`):

    "ipam": {
      "type": "multiplex-ipam",
      "ranges": [[{"subnet": "198.18.5.0/24", "rangeStart": "198.18.5.10", "rangeEnd": "198.18.5.200",
                   "gateway": "198.18.5.1"}],
                 [{"subnet": "fd00:5::/64"}]],
      "exclude": ["198.18.5.64/28"],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dns": {"nameservers": ["198.18.5.1"]},
      "dataDir": "/var/lib/cni/multiplex/ipam",
      "store": "sqlite"
    }

`"store": "kubernetes"` keeps leases cluster-wide in IPPool/IPBlock custom resources (see
docs/ipam-kubernetes.md); it also reads `kubeconfig` and `nodeName`.

Each inner list of `ranges` is a range set: one address is handed out per range set, and a config
has at most one range set per family (one IPv4 and/or one IPv6 address). `range` is a shorthand for
a single range set with one range: a range object, or a subnet CIDR string.

Defaults follow host-local: `rangeStart` is the first address after the network address,
`rangeEnd` the last address before the broadcast (IPv4) or the last address of the subnet (IPv6),
`gateway` the first address of the subnet. The network address, the IPv4 broadcast, every gateway
of the range set and every `exclude` CIDR are never handed out.

Every error is a CNIError 7 whose details name the JSON path ($.ipam.ranges[0][0].rangeStart) and
what would be right. The JSON Schema (schemas/ipam.json) checks the shape first on ADD/CHECK; the
parser below re-checks types itself, so DEL/STATUS/GC can skip the (costly) jsonschema import.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from ..cni.errors import CNIError, INVALID_CONFIG, invalid_config
from ..cni.types import DNS, IPAddress, IPNetwork, Route
from .registry import STORES

TYPE_NAME = "multiplex-ipam"
DEFAULT_STORE = "sqlite"


@dataclass(frozen=True)
class Range:
    """One range of a range set: a subnet and the slice of it handed out."""
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: Optional[IPAddress]
    path: str = field(default="", compare=False)

    @property
    def family(self) -> int:
        return self.subnet.version

    @property
    def is_whole_subnet(self) -> bool:
        return self.start == default_start(self.subnet) and self.end == default_end(self.subnet)

    def describe(self) -> str:
        """'198.18.5.0/24', or '198.18.5.0/24 (198.18.5.10-198.18.5.20)' for a slice."""
        if self.is_whole_subnet:
            return str(self.subnet)
        return f"{self.subnet} ({self.start}-{self.end})"

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.family and self.start <= ip <= self.end


@dataclass(frozen=True)
class RangeSet:
    """A range set: the ranges one address of one family is taken from (a pool)."""
    ranges: tuple[Range, ...]
    path: str = field(default="", compare=False)

    @property
    def family(self) -> int:
        return self.ranges[0].family

    @property
    def subnets(self) -> list[str]:
        """The subnets of the set: an address is unique within its subnet, across all networks."""
        out: list[str] = []
        for r in self.ranges:
            if str(r.subnet) not in out:
                out.append(str(r.subnet))
        return out

    @property
    def key(self) -> str:
        """A stable identifier (the store keeps its allocation cursor under it)."""
        return ";".join(f"{r.subnet} {r.start}-{r.end}" for r in self.ranges)

    @property
    def name(self) -> str:
        """What users see in messages: '198.18.5.0/29' or a list of ranges."""
        return ", ".join(r.describe() for r in self.ranges)

    @property
    def gateways(self) -> list[IPAddress]:
        return [r.gateway for r in self.ranges if r.gateway is not None]

    def range_for(self, ip: IPAddress) -> Optional[Range]:
        for r in self.ranges:
            if r.contains(ip):
                return r
        return None

    def subnet_range_for(self, ip: IPAddress) -> Optional[Range]:
        """The range whose subnet holds `ip` (for an address leased under an earlier config)."""
        for r in self.ranges:
            if ip.version == r.family and ip in r.subnet:
                return r
        return None


@dataclass
class IPAMConfig:
    network: str
    range_sets: list[RangeSet]
    exclude: list[IPNetwork] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)
    data_dir: str = ""
    store: str = DEFAULT_STORE
    type: str = TYPE_NAME
    kubeconfig: str = ""     # the kubernetes store: credentials ("" = see docs/ipam-kubernetes.md)
    node_name: str = ""      # the kubernetes store: this node ("" = $NODE_NAME or the host name)
    state_dir: Optional[str] = None   # the call's state root: the default dataDir is <state_dir>/ipam


@dataclass(frozen=True)
class StoreLocation:
    """Where leases live: all DEL and GC need (they never need the ranges)."""
    store: str
    data_dir: str            # "" = <state root>/ipam, made when the store opens
    kubeconfig: str = ""     # the kubernetes store only: the config's, else the caller's
    node_name: str = ""
    state_dir: Optional[str] = None   # the call's state root (CallContext.state_dir); None: the default


# --- defaults -------------------------------------------------------------------------------

def default_start(subnet: IPNetwork) -> IPAddress:
    return subnet.network_address + 1


def default_end(subnet: IPNetwork) -> IPAddress:
    last = subnet.broadcast_address
    return last - 1 if subnet.version == 4 else last


def default_gateway(subnet: IPNetwork) -> IPAddress:
    return subnet.network_address + 1


def default_data_dir(state_dir: Optional[str] = None, create: bool = True) -> str:
    """<state root>/ipam, the node's IPAM directory (`state_dir`: the call's root; None: the
    default root). Made (0700) unless `create` is False: a read-only look never creates it."""
    from ..util import state

    if create:
        return state.subdir("ipam", state_dir)
    return os.path.join(state.root(state_dir), "ipam")


# --- parsing --------------------------------------------------------------------------------

def ipam_block(netconf: dict, where: str = "$") -> dict:
    ipam = netconf.get("ipam")
    if not isinstance(ipam, dict):
        raise invalid_config("network config has no ipam object" if ipam is None else "ipam must be a JSON object",
                             f"{where}.ipam", '{"type": "multiplex-ipam", "ranges": [[{"subnet": "CIDR"}]]}')
    return ipam


def validate_schema(netconf: dict, where: str = "$") -> None:
    """The JSON Schema check (imports jsonschema: ADD and CHECK only)."""
    from ..util import schema

    schema.validate("ipam", ipam_block(netconf, where), prefix=f"{where}.ipam")


# --- remembered parses ------------------------------------------------------------------------
# A warm process (the node daemon) sees the same few NAD configs on every call, and one ADD used to
# parse each attachment's block twice (the meta plugin's validation, then the IPAM's ADD): 8 parses
# per ADD of 4 attachments, each a few hundred microseconds of ipaddress work. parse() is a pure
# function of the ipam block, the network name, `where`, `check_schema` and the call's state root
# and kubeconfig (nothing on disk is read), so its result is remembered under exactly those, the
# block by its canonical JSON. Only successes are remembered (an error is raised afresh each time,
# naming its field), at most PARSED_MAX configs (least recently used go first), and every caller
# gets a copy of the mutable parts (lists, routes, dns), never the remembered object itself.
PARSED_MAX = 256
_parsed: "OrderedDict[tuple, IPAMConfig]" = OrderedDict()
#: (block, name) of every config that parsed with its schema check, under any path, state root or
#: kubeconfig (those only name where errors point and where the store lies): validate()
_valid: "OrderedDict[tuple, None]" = OrderedDict()
_parsed_lock = threading.Lock()


def _memo_key(netconf: dict, check_schema: bool, state_dir: Optional[str],
              kubeconfig: Optional[str]) -> Optional[tuple]:
    """What a parse depends on besides `where`, or None when it cannot be keyed (not JSON data:
    such a config is parsed, and refused, every time)."""
    ipam, name = netconf.get("ipam"), netconf.get("name")
    if not isinstance(ipam, dict) or not isinstance(name, str):
        return None
    try:
        blob = json.dumps(ipam, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None
    return (blob, name, check_schema, state_dir, kubeconfig)


def _remember(table: "OrderedDict[tuple, Any]", key: tuple, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > PARSED_MAX:
        table.popitem(last=False)


def _copy(conf: IPAMConfig) -> IPAMConfig:
    """A copy a caller may change without changing the remembered config (ranges are frozen)."""
    dns = conf.dns
    return replace(conf, range_sets=list(conf.range_sets), exclude=list(conf.exclude),
                   routes=[replace(r) for r in conf.routes],
                   dns=DNS(nameservers=list(dns.nameservers), domain=dns.domain, search=list(dns.search),
                           options=list(dns.options)))


def forget_parsed() -> None:
    """Drop every remembered parse (tests)."""
    with _parsed_lock:
        _parsed.clear()
        _valid.clear()


def parse(netconf: dict, *, check_schema: bool = True, where: str = "$", state_dir: Optional[str] = None,
          kubeconfig: Optional[str] = None) -> IPAMConfig:
    """The IPAM config of a network config (the object with `name` and `ipam`).

    `where` is the JSON path of the network config in what the user wrote (the meta plugin passes
    e.g. "blue:$.plugins[0]"); errors name fields below it ("<where>.ipam.ranges[0][0].subnet").
    `state_dir` and `kubeconfig` are the call's (CallContext): see store_location().
    A config parsed before under the same arguments is not parsed again (see above).
    """
    key = _memo_key(netconf, check_schema, state_dir, kubeconfig)
    if key is not None:
        with _parsed_lock:
            hit = _parsed.get(key + (where,))
            if hit is not None:
                _parsed.move_to_end(key + (where,))
        if hit is not None:
            return _copy(hit)
    conf = parse_uncached(netconf, check_schema=check_schema, where=where, state_dir=state_dir,
                          kubeconfig=kubeconfig)
    if key is not None:
        with _parsed_lock:
            _remember(_parsed, key + (where,), _copy(conf))
            if check_schema:
                _remember(_valid, key[:2], None)
    return conf


def validate(netconf: dict, where: str = "$") -> None:
    """Raise what parse() (with the schema check) would raise for `netconf`, errors under `where`;
    nothing to do for a config that parsed before under any path."""
    key = _memo_key(netconf, True, None, None)
    if key is not None:
        with _parsed_lock:
            if key[:2] in _valid:
                _valid.move_to_end(key[:2])
                return
    parse(netconf, where=where)


def parse_uncached(netconf: dict, *, check_schema: bool = True, where: str = "$", state_dir: Optional[str] = None,
                   kubeconfig: Optional[str] = None) -> IPAMConfig:
    """parse() itself, every time."""
    ipam = ipam_block(netconf, where)
    p = f"{where}.ipam"
    _refuse_unknown(ipam, p)  # before the schema: this error names the field itself
    if check_schema:
        validate_schema(netconf, where)
    network = netconf.get("name")
    if not isinstance(network, str) or not network:
        raise invalid_config("the network config needs a non-empty name (leases are kept per network)",
                             f"{where}.name", "a non-empty string")
    range_sets = _parse_range_sets(ipam, p)
    exclude = [_network(v, f"{p}.exclude[{n}]", "exclude", allow_address=True)
               for n, v in enumerate(_list(ipam, "exclude", p))]
    loc = store_location(netconf, where, state_dir=state_dir, kubeconfig=kubeconfig)
    return IPAMConfig(network=network, range_sets=range_sets, exclude=exclude,
                      routes=_parse_routes(ipam, p), dns=_parse_dns(ipam, p), data_dir=loc.data_dir,
                      store=loc.store, type=str(ipam.get("type", TYPE_NAME)),
                      kubeconfig=loc.kubeconfig, node_name=loc.node_name, state_dir=loc.state_dir)


def store_location(netconf: dict, where: str = "$", *, state_dir: Optional[str] = None,
                   kubeconfig: Optional[str] = None) -> StoreLocation:
    """`store`, `dataDir` (and the kubernetes store's `kubeconfig`, `nodeName`) only, so DEL and GC
    work even when the ranges changed or are broken.

    The call's context completes it: `state_dir` is the state root the default dataDir lies in,
    `kubeconfig` the caller's (the meta plugin's), used when the ipam block names none."""
    ipam = netconf.get("ipam")
    ipam = ipam if isinstance(ipam, dict) else {}
    store = ipam.get("store", DEFAULT_STORE)
    if not isinstance(store, str) or store not in STORES:
        raise invalid_config(f"unknown IPAM store {store!r}", f"{where}.ipam.store",
                             " or ".join(f'"{s}"' for s in STORES))
    kube = {"kubeconfig": _kubeconfig(ipam.get("kubeconfig"), f"{where}.ipam.kubeconfig") or kubeconfig or "",
            "node_name": _node_name(ipam.get("nodeName"), f"{where}.ipam.nodeName"), "state_dir": state_dir}
    data_dir = ipam.get("dataDir")
    if data_dir is None:
        return StoreLocation(store, "", **kube)  # resolved lazily: the default creates a directory
    if not isinstance(data_dir, str) or not os.path.isabs(data_dir):
        raise invalid_config(f"dataDir {data_dir!r} is not an absolute path", f"{where}.ipam.dataDir",
                             "an absolute directory path")
    return StoreLocation(store, data_dir, **kube)


_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # fullmatch: "$" would let a trailing newline in


def _kubeconfig(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not os.path.isabs(value):
        raise invalid_config(f"kubeconfig {value!r} is not an absolute path", path,
                             "the absolute path of a kubeconfig file")
    return value


def _node_name(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 253 or not _NODE_NAME.fullmatch(value):
        raise invalid_config(f"nodeName {value!r} is not a Kubernetes node name", path,
                             "a lowercase DNS name such as node-1 or node-1.example.com (at most 253 characters)")
    return value


_KNOWN = {"type", "ranges", "range", "exclude", "routes", "dns", "dataDir", "store", "kubeconfig", "nodeName"}
_RANGE_KEYS = {"subnet", "rangeStart", "rangeEnd", "gateway"}


def _refuse_unknown(ipam: dict, p: str) -> None:
    for k in ipam:
        if k not in _KNOWN:
            raise invalid_config(f"unknown ipam field {k!r}", f"{p}.{k}",
                                 "one of " + ", ".join(sorted(_KNOWN)))


def _list(obj: dict, key: str, path: str) -> list:
    v = obj.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise invalid_config(f"{key} must be a list", f"{path}.{key}", "a JSON array")
    return v


def _parse_range_sets(ipam: dict, p: str) -> list[RangeSet]:
    if "ranges" in ipam and "range" in ipam:
        raise invalid_config("give either ranges or range, not both", f"{p}.range",
                             "ranges (a list of range sets) or range (one range)")
    if "range" in ipam:
        raw = ipam["range"]
        if isinstance(raw, str):
            raw = {"subnet": raw}
        sets = [RangeSet((_parse_range(raw, f"{p}.range"),), f"{p}.range")]
    else:
        raw_sets = ipam.get("ranges")
        if raw_sets is None:
            raise invalid_config("ipam needs ranges (or range)", f"{p}.ranges",
                                 '[[{"subnet": "CIDR"}]], one range set per family')
        if not isinstance(raw_sets, list) or not raw_sets:
            raise invalid_config("ranges must be a non-empty list of range sets", f"{p}.ranges",
                                 '[[{"subnet": "CIDR"}]], one range set per family')
        sets = [_parse_range_set(rs, f"{p}.ranges[{i}]") for i, rs in enumerate(raw_sets)]
    _check_families(sets)
    _check_overlaps(sets)
    return sets


def _parse_range_set(raw: Any, path: str) -> RangeSet:
    if not isinstance(raw, list) or not raw:
        raise invalid_config("a range set must be a non-empty list of ranges", path,
                             '[{"subnet": "CIDR", "rangeStart": "IP", "rangeEnd": "IP", "gateway": "IP"}]')
    ranges = tuple(_parse_range(r, f"{path}[{j}]") for j, r in enumerate(raw))
    first = ranges[0]
    for r in ranges[1:]:
        if r.family != first.family:
            raise invalid_config(
                f"range set mixes IPv{first.family} ({first.subnet}) and IPv{r.family} ({r.subnet})",
                f"{r.path}.subnet", f"IPv{first.family} subnets only; put each family in a range set of its own")
    return RangeSet(ranges, path)


def _parse_range(raw: Any, path: str) -> Range:
    if not isinstance(raw, dict):
        raise invalid_config("a range must be an object", path,
                             '{"subnet": "CIDR", "rangeStart": "IP", "rangeEnd": "IP", "gateway": "IP"}')
    for k in raw:
        if k not in _RANGE_KEYS:
            raise invalid_config(f"unknown range field {k!r}", f"{path}.{k}",
                                 "one of " + ", ".join(sorted(_RANGE_KEYS)))
    if "subnet" not in raw:
        raise invalid_config("a range needs a subnet", f"{path}.subnet", "a CIDR such as 198.18.5.0/24")
    subnet = _subnet(raw["subnet"], f"{path}.subnet")
    usable = f"an IPv{subnet.version} address in {default_start(subnet)}-{default_end(subnet)}"
    start = _address_in(raw.get("rangeStart"), subnet, f"{path}.rangeStart", "rangeStart", usable)
    end = _address_in(raw.get("rangeEnd"), subnet, f"{path}.rangeEnd", "rangeEnd", usable)
    gateway = _address_in(raw.get("gateway"), subnet, f"{path}.gateway", "gateway", usable)
    start = start or default_start(subnet)
    end = end or default_end(subnet)
    if start > end:
        raise invalid_config(f"rangeEnd {end} comes before rangeStart {start}", f"{path}.rangeEnd",
                             f"an address in {start}-{default_end(subnet)}")
    return Range(subnet, start, end, gateway or default_gateway(subnet), path)


def _subnet(value: Any, path: str) -> IPNetwork:
    net = _network(value, path, "subnet", allow_address=False, strict=True)
    if net.prefixlen > net.max_prefixlen - 2:
        raise invalid_config(f"subnet {net} is too small to allocate from", path,
                             f"a prefix of /{net.max_prefixlen - 2} or shorter")
    return net


def _network(value: Any, path: str, what: str, *, allow_address: bool, strict: bool = False) -> IPNetwork:
    example = "198.18.5.0/24 or fd00:5::/64"
    if not isinstance(value, str) or ("/" not in value and not allow_address):
        raise invalid_config(f"{what} {value!r} is not a CIDR", path, f"a CIDR such as {example}")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise invalid_config(f"{what} {value!r} is not a valid CIDR", path, f"a CIDR such as {example}") from None
    if strict and net.network_address != ipaddress.ip_interface(value).ip:
        raise invalid_config(f"{what} {value} has host bits set", path, f"the network address: {net}")
    return net


def _address(value: Any, path: str, what: str) -> IPAddress:
    try:
        if not isinstance(value, str):
            raise ValueError
        return ipaddress.ip_address(value)
    except ValueError:
        raise invalid_config(f"{what} {value!r} is not an IP address", path,
                             "an address such as 198.18.5.1 or fd00:5::1") from None


def _address_in(value: Any, subnet: IPNetwork, path: str, what: str, usable: str) -> Optional[IPAddress]:
    if value is None:
        return None
    ip = _address(value, path, what)
    if ip.version != subnet.version:
        raise invalid_config(f"{what} {ip} is IPv{ip.version} but subnet {subnet} is IPv{subnet.version}",
                             path, usable)
    if ip not in subnet:
        raise invalid_config(f"{what} {ip} is outside subnet {subnet}", path, usable)
    if ip == subnet.network_address:
        raise invalid_config(f"{what} {ip} is the network address of {subnet}", path, usable)
    if subnet.version == 4 and ip == subnet.broadcast_address:
        raise invalid_config(f"{what} {ip} is the broadcast address of {subnet}", path, usable)
    return ip


def _check_families(sets: list[RangeSet]) -> None:
    seen: dict[int, RangeSet] = {}
    for rs in sets:
        if rs.family in seen:
            raise invalid_config(
                f"two IPv{rs.family} range sets ({seen[rs.family].name} and {rs.name}): "
                "an attachment gets one address per family", rs.path,
                "at most one IPv4 and one IPv6 range set; list several ranges inside one set instead")
        seen[rs.family] = rs


def _check_overlaps(sets: list[RangeSet]) -> None:
    ranges = [r for rs in sets for r in rs.ranges]
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            if a.family != b.family:
                continue
            if a.subnet != b.subnet and a.subnet.overlaps(b.subnet):
                raise invalid_config(f"subnet {b.subnet} overlaps subnet {a.subnet} ({a.path})", f"{b.path}.subnet",
                                     "subnets that are equal or disjoint")
            if a.start <= b.end and b.start <= a.end:
                raise invalid_config(f"range {b.describe()} overlaps range {a.describe()} ({a.path})", b.path,
                                     "disjoint rangeStart-rangeEnd slices")


def _parse_routes(ipam: dict, p: str) -> list[Route]:
    out = []
    for n, r in enumerate(_list(ipam, "routes", p)):
        path = f"{p}.routes[{n}]"
        if not isinstance(r, dict) or "dst" not in r:
            raise invalid_config("a route needs dst", f"{path}.dst", '{"dst": "CIDR", "gw": "IP"}')
        dst = _network(r["dst"], f"{path}.dst", "route dst", allow_address=False)
        gw = _address(r["gw"], f"{path}.gw", "route gw") if r.get("gw") is not None else None
        if gw is not None and gw.version != dst.version:
            raise invalid_config(f"route gw {gw} is IPv{gw.version} but dst {dst} is IPv{dst.version}",
                                 f"{path}.gw", f"an IPv{dst.version} address")
        extra = {}
        for k in ("mtu", "advmss", "priority", "table", "scope"):
            if r.get(k) is not None:
                if not isinstance(r[k], int) or isinstance(r[k], bool) or r[k] < 0:
                    raise invalid_config(f"route {k} must be a non-negative integer", f"{path}.{k}", "an integer >= 0")
                extra[k] = r[k]
        out.append(Route(dst=dst, gw=gw, **extra))
    return out


def _parse_dns(ipam: dict, p: str) -> DNS:
    raw = ipam.get("dns")
    if raw is None:
        return DNS()
    path = f"{p}.dns"
    if not isinstance(raw, dict):
        raise invalid_config("dns must be an object", path, '{"nameservers": [...], "domain": "", "search": [...]}')
    nameservers = [str(_address(v, f"{path}.nameservers[{n}]", "nameserver"))
                   for n, v in enumerate(_list(raw, "nameservers", path))]
    domain = raw.get("domain", "")
    if not isinstance(domain, str):
        raise invalid_config("dns domain must be a string", f"{path}.domain", "a domain name")
    lists = {}
    for key in ("search", "options"):
        items = _list(raw, key, path)
        for n, v in enumerate(items):
            if not isinstance(v, str):
                raise invalid_config(f"dns {key} entries must be strings", f"{path}.{key}[{n}]", "a string")
        lists[key] = list(items)
    return DNS(nameservers=nameservers, domain=domain, **lists)


# --- requested addresses --------------------------------------------------------------------

@dataclass(frozen=True)
class Requested:
    """An address the runtime or the user asked for, and where it was asked."""
    address: IPAddress
    source: str


def requested_addresses(netconf: dict, cni_args: Optional[dict] = None) -> list[Requested]:
    """From runtimeConfig.ips (the `ips` capability), args.cni.ips and CNI_ARGS IP=a,b.

    Each entry is an address or a CIDR (its prefix is ignored: the pool's subnet decides the
    prefix of the result). A malformed entry is a CNIError 7 naming where it came from.
    """
    found: list[Requested] = []
    rc = netconf.get("runtimeConfig")
    if isinstance(rc, dict) and rc.get("ips") is not None:
        found += _requested_list(rc["ips"], "$.runtimeConfig.ips")
    args = netconf.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and cni.get("ips") is not None:
        found += _requested_list(cni["ips"], "$.args.cni.ips")
    raw_ip = (cni_args or {}).get("IP")
    if raw_ip:
        found += _requested_list([p for p in raw_ip.split(",") if p], "CNI_ARGS IP")
    unique: list[Requested] = []
    for r in found:
        if all(u.address != r.address for u in unique):
            unique.append(r)
    return unique


def _requested_list(values: Any, path: str) -> list[Requested]:
    if not isinstance(values, list):
        raise CNIError(INVALID_CONFIG, "requested ips must be a list of addresses",
                       f"field: {path}; allowed: a list such as [\"198.18.5.10/24\"]")
    out = []
    for n, v in enumerate(values):
        where = f"{path}[{n}]" if path.startswith("$") else path
        try:
            if not isinstance(v, str):
                raise ValueError
            ip = ipaddress.ip_interface(v.strip()).ip
        except ValueError:
            raise invalid_config(f"requested address {v!r} is not an IP address or CIDR", where,
                                 "an address such as 198.18.5.10 or 198.18.5.10/24") from None
        out.append(Requested(ip, where))
    return out
