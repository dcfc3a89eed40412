"""The node's vxlan-overlay settings: which namespace may use which VNIs. One JSON file the admin
writes (a ConfigMap mounted into the DaemonSet), read by the delegate at ADD (and by
`multiplex validate`, which runs ADD's checks); every value checked here, a bad one a
SettingsError naming the file and its field.

    {"vniRanges": {"tenant-a": ["1000-1999"], "tenant-b": ["2000-2999", "5000"],
                   "kube-system": ["1-99"]}}

Why: a NAD's config is its namespace's writer's, and a VNI is one L2 domain across every node. A
clash on one node is refused by the delegate (two devices with one VNI), but on a node where
tenant A has no pod yet, tenant B's NAD with A's VNI would make the device and join A's domain
across nodes. Only the admin decides who owns a VNI: the file is theirs, never a NAD's.

The rules (docs/vxlan-overlay.md, "VNI ownership"):
- no file: no restriction (the single-tenant default; one cluster, one writer of NADs);
- a file: a NAD network (config name `<namespace>.<NAD>`, as the meta plugin names it:
  multiplex/meta/selection.py identity_name) may use only its namespace's ranges; a namespace
  absent from the map gets no VNI at all;
- the admin's own networks (an inline config or a config file of the node, named without a `.`:
  no NAD can give a delegate such a name) may use any VNI no namespace was granted: a VNI granted
  to a namespace is that namespace's L2 domain, even against the admin's accident;
- the ranges of two namespaces may not overlap (a load error naming both);
- a file that cannot be read or parsed refuses every overlay ADD (fail closed: an ownership rule
  that silently disappears with a typo is no rule).

Why a file and not a custom resource: as multiplex/bgp/settings.py says for the BGP settings,
cluster-wide, rarely changed, the admin's; no CRD, no RBAC, no watch. It is re-read when it
changes (stat: inode, size, mtime), so kubelet's in-place update of a mounted ConfigMap applies
to the next ADD.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

#: where ADD looks unless $MULTIPLEX_VXLAN_CONFIG names another file
DEFAULT_PATH = "/etc/multiplex/vxlan.json"
PATH_ENV = "MULTIPLEX_VXLAN_CONFIG"
MAX_VNI = 16777215
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")   # a DNS label, as a namespace is


class SettingsError(ValueError):
    """A bad setting: `field` is its JSON path (e.g. `$.vniRanges.tenant-a[0]`), `path` the file."""

    def __init__(self, message: str, field: str, path: str = ""):
        super().__init__(f"{path + ': ' if path else ''}{field}: {message}")
        self.message = message
        self.field = field
        self.path = path


@dataclass(frozen=True)
class VniRange:
    first: int
    last: int

    def __contains__(self, vni: object) -> bool:
        return isinstance(vni, int) and self.first <= vni <= self.last

    def overlaps(self, other: "VniRange") -> bool:
        return self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Settings:
    #: namespace -> its granted ranges, as written
    vni_ranges: dict[str, tuple[VniRange, ...]] = field(default_factory=dict)

    def granted(self, namespace: str) -> tuple[VniRange, ...]:
        return self.vni_ranges.get(namespace, ())

    def owner(self, vni: int) -> Optional[str]:
        """The namespace granted `vni`, or None."""
        return next((ns for ns, ranges in self.vni_ranges.items() if any(vni in r for r in ranges)), None)


def parse_range(value: Any, where: str) -> VniRange:
    """`"1000-1999"`, `"5000"` or `5000`: a range of VNIs, 1 to 16777215, first <= last."""
    if isinstance(value, int) and not isinstance(value, bool):
        first = last = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", value):
        parts = [int(p) for p in value.split("-")]
        first, last = parts[0], parts[-1]
    else:
        raise SettingsError(f"{value!r} is not a VNI range: \"FIRST-LAST\" or one VNI, like \"1000-1999\"", where)
    if not 1 <= first <= last <= MAX_VNI:
        raise SettingsError(f"{value!r} is not a range within 1-{MAX_VNI} with its first VNI not above its last",
                            where)
    return VniRange(first, last)


def parse(body: Any, where: str = "$") -> Settings:
    """Settings from the file's JSON object; SettingsError naming the first bad field."""
    if not isinstance(body, dict):
        raise SettingsError("the vxlan-overlay settings must be a JSON object {\"vniRanges\": {...}}", where)
    unknown = sorted(set(body) - {"vniRanges"})
    if unknown:
        raise SettingsError(f"unknown field {unknown[0]!r}; known: vniRanges", f"{where}.{unknown[0]}")
    ranges = body.get("vniRanges", {})
    if not isinstance(ranges, dict):
        raise SettingsError("vniRanges must map a namespace to a list of VNI ranges", f"{where}.vniRanges")
    out: dict[str, tuple[VniRange, ...]] = {}
    seen: list[tuple[str, VniRange, str]] = []     # (namespace, range, its field), to refuse overlaps
    for ns, items in ranges.items():
        here = f"{where}.vniRanges.{ns}"
        if not _NAMESPACE.match(ns):
            raise SettingsError(f"{ns!r} is not a namespace name (a DNS label: lower case, digits, '-')", here)
        if not isinstance(items, list):
            raise SettingsError("a namespace's VNIs are a list of ranges, like [\"1000-1999\"]", here)
        parsed = tuple(parse_range(v, f"{here}[{i}]") for i, v in enumerate(items))
        for i, r in enumerate(parsed):
            for other_ns, other, other_field in seen:
                if other_ns != ns and r.overlaps(other):
                    raise SettingsError(f"{r} overlaps {other} of namespace {other_ns} ({other_field}): a VNI is "
                                        "one L2 domain and belongs to one namespace", f"{here}[{i}]")
            seen.append((ns, r, f"{here}[{i}]"))
        out[ns] = parsed
    return Settings(vni_ranges=out)


def settings_path() -> str:
    return os.environ.get(PATH_ENV, "").strip() or DEFAULT_PATH


_cache: dict[str, tuple[tuple, Settings]] = {}
_cache_lock = threading.Lock()


def load(path: Optional[str] = None) -> Optional[Settings]:
    """The settings file, parsed (None: there is no file, so no restriction); SettingsError naming
    the file and field when it is bad or unreadable. Kept while the file's inode, size and mtime
    stay (a warm daemon reads it once per change, not once per ADD)."""
    path = path or settings_path()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SettingsError(f"cannot read the file: {e.strerror}", "$", path) from None
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SettingsError(f"cannot read the file: {e.strerror}", "$", path) from None
    except (ValueError, RecursionError) as e:
        raise SettingsError(f"not JSON: {e}", "$", path) from None
    try:
        settings = parse(body)
    except SettingsError as e:
        raise SettingsError(e.message, e.field, path) from None
    with _cache_lock:
        _cache[path] = (key, settings)
    return settings


def namespace_of(network: str) -> Optional[str]:
    """The namespace of a delegate's config name: the part before the first `.` (`<namespace>.<NAD>`,
    as the meta plugin names a NAD's network), or None for the admin's own networks (no `.`)."""
    ns, dot, _ = network.partition(".")
    return ns if dot else None


def check_vni_granted(network: str, vni: Any, where: str = "$") -> None:
    """Code 7 naming `vni` when the settings file does not grant `vni` to the network's namespace
    (or, for the admin's own networks, when a namespace owns it); code 7 naming the file and field
    when the file is bad. Reads only: called before anything is made."""
    from multiplex.cni.errors import INVALID_CONFIG, CNIError, invalid_config

    if not isinstance(vni, int) or isinstance(vni, bool):
        return   # the schema refuses it
    try:
        settings = load()
    except SettingsError as e:
        raise CNIError(INVALID_CONFIG, f"the node's vxlan-overlay settings {e.path} are invalid at {e.field}: "
                       f"{e.message}; no overlay network attaches until the admin fixes the file",
                       f"file: {e.path}; field: {e.field}") from None
    if settings is None:
        return
    path = settings_path()
    ns = namespace_of(network)
    if ns is None:
        owner = settings.owner(vni)
        if owner is not None:
            raise invalid_config(f"VNI {vni} is granted to namespace {owner} in {path}: network {network} (the "
                                 "node's own) would join that namespace's L2 domain", f"{where}.vni",
                                 "a VNI no namespace is granted")
        return
    granted = settings.granted(ns)
    if any(vni in r for r in granted):
        return
    if not granted:
        raise invalid_config(f"namespace {ns} is granted no VNI in {path} (network {network} asks for {vni})",
                             f"{where}.vni", f"none: the admin grants namespace {ns} a range under vniRanges")
    ranges = ", ".join(str(r) for r in granted)
    raise invalid_config(f"VNI {vni} is not granted to namespace {ns} (network {network}); its ranges in "
                         f"{path}: {ranges}", f"{where}.vni", f"a VNI in {ranges}")
