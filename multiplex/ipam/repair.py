"""What the node knows about its leases besides the database: the meta plugin's cache.

A leases database that is damaged (truncated, not a database, deleted under its marker) is never
silently replaced by an empty one: the store moves it aside and rebuilds the leases from here.
`multiplex ipam check` compares the two (cached attachments without a lease, leases without a
cached attachment, attachments whose netns is gone) and, with `--repair`, fixes what it can.

The cache (multiplex/cni/cache.py, `<state root>/cache/<containerID>:<ifname>.json`) holds one
record per pod: `containerID`, `cniArgs` (K8S_POD_*) and `attachments`, each with `network`,
`ifname`, `netconf`, `configName` and the `result` it returned (None while its ADD runs). A lease is
keyed by the network name the plugins saw: `configName` when set (`<namespace>.<NAD>`), else the
netconf's `name` (records cached before namespaced names), else the NAD name. Only attachments
whose netconf (or one of its conflist plugins) has a `multiplex-ipam` block naming this store
(SQLite, the same dataDir) count.

Stdlib only: this runs on the IPAM's own path (no jsonschema, pyroute2 or kubernetes).
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from ..cni.cache import CorruptEntry, read_envelope
from ..cni.types import IPAddress
from . import config
from .store import Lease, Owner


@dataclass(frozen=True)
class CachedAttachment:
    """One attachment of a cache record that holds (or is getting) addresses of this store."""
    owner: Owner
    addresses: tuple[tuple[str, IPAddress], ...]   # (pool, address) from its result
    netns: str
    in_flight: bool          # its ADD had not returned when the record was written (result None)
    file: str


@dataclass
class CacheView:
    """Every cached attachment of one store, and what kept the view from being complete."""
    attachments: list[CachedAttachment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # each one a reason the view may miss a lease
    cache_dir: str = ""

    def leases(self) -> list[Lease]:
        """The leases the cache accounts for (one per address; the first attachment wins)."""
        out: dict[str, Lease] = {}
        for att in self.attachments:
            for pool, ip in att.addresses:
                if str(ip) in out:
                    held = out[str(ip)].owner
                    self.problems.append(f"address {ip} is cached for two attachments "
                                         f"({held.container_id}/{held.ifname} and "
                                         f"{att.owner.container_id}/{att.owner.ifname})")
                    continue
                out[str(ip)] = Lease(pool=pool, address=ip, owner=att.owner)
        return list(out.values())

    def containers(self) -> set[str]:
        return {a.owner.container_id for a in self.attachments}

    def owners(self) -> set[tuple[str, str, str]]:
        return {(a.owner.container_id, a.owner.ifname, a.owner.network) for a in self.attachments}


def default_cache_dir() -> str:
    """`<state root>/cache`, without creating it."""
    from ..util import state

    return os.path.join(state.root(), "cache")


def read_cache(data_dir: str, cache_dir: Optional[str] = None) -> CacheView:
    """The cached attachments whose IPAM is the SQLite store at `data_dir`."""
    cache_dir = cache_dir or default_cache_dir()
    view = CacheView(cache_dir=cache_dir)
    try:
        names = sorted(os.listdir(cache_dir))
    except FileNotFoundError:
        view.problems.append(f"no cache directory {cache_dir}: nothing on this node records its attachments")
        return view
    except OSError as e:
        view.problems.append(f"cannot list the cache directory {cache_dir}: {e.strerror}")
        return view
    target = _real(data_dir)
    # an ipam block without dataDir used <state root>/ipam, beside the cache (<state root>/cache)
    default_dir = _real(os.path.join(os.path.dirname(_real(cache_dir)), "ipam"))
    for name in names:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        path = os.path.join(cache_dir, name)
        record, why = _read_record(path)
        if record is None:
            view.problems.append(f"cache entry {path} {why}: its attachments are unknown")
            continue
        view.attachments += _attachments_of(record, path, target, default_dir, view.problems)
    return view


def _read_record(path: str) -> tuple[Optional[dict], str]:
    """The record of one cache file (cni/cache.py reads it); ({}, "") when it was deleted meanwhile
    (a DEL: nothing to account for), (None, why) when it cannot be used."""
    found = read_envelope(path)
    if found is None:
        return {}, ""
    if isinstance(found, CorruptEntry):
        return None, found.problem
    return found[2], ""


def _attachments_of(record: dict, path: str, target: str, default_dir: str,
                    problems: list[str]) -> Iterator[CachedAttachment]:
    cid = str(record.get("containerID") or "")
    args = record.get("cniArgs") if isinstance(record.get("cniArgs"), dict) else {}
    pod = (str(args.get("K8S_POD_NAMESPACE", "")), str(args.get("K8S_POD_NAME", "")),
           str(args.get("K8S_POD_UID", "")))
    for n, entry in enumerate(record.get("attachments") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("netconf"), dict):
            problems.append(f"cache entry {path}: attachment {n} is malformed")
            continue
        network = network_name(entry)
        blocks = [b for b in ipam_blocks(entry["netconf"]) if _names_store(b, target, default_dir)]
        if not blocks or not cid:
            continue
        owner = Owner(cid, str(entry.get("ifname") or ""), network, *pod)
        result = entry.get("result")
        addresses = _addresses(result, blocks, network) if isinstance(result, dict) else ()
        yield CachedAttachment(owner, addresses, str(record.get("netns") or ""), result is None, path)


def network_name(entry: dict) -> str:
    """The name the attachment's plugins saw (the lease's network)."""
    conf = entry.get("netconf") or {}
    return str(entry.get("configName") or conf.get("name") or str(entry.get("network", "")).rpartition("/")[2])


def ipam_blocks(netconf: dict) -> list[dict]:
    """The `multiplex-ipam` blocks of a netconf or of its conflist plugins."""
    confs = netconf.get("plugins") if isinstance(netconf.get("plugins"), list) else [netconf]
    return [c["ipam"] for c in confs if isinstance(c, dict) and isinstance(c.get("ipam"), dict)
            and c["ipam"].get("type") == config.TYPE_NAME]


def _names_store(block: dict, target: str, default_dir: str) -> bool:
    if block.get("store", config.DEFAULT_STORE) != "sqlite":
        return False
    data_dir = block.get("dataDir")
    if data_dir is None:
        return default_dir == target
    return isinstance(data_dir, str) and _real(data_dir) == target


def _addresses(result: dict, blocks: list[dict], network: str) -> tuple[tuple[str, IPAddress], ...]:
    """(pool, address) of the result's ips that fall in the blocks' ranges (every ip when the
    ranges cannot be read: a lease too many is safer than one too few)."""
    range_sets = []
    for b in blocks:
        try:
            range_sets += config.parse({"name": network or "x", "ipam": b}, check_schema=False).range_sets
        except Exception:  # noqa: BLE001 - a config that no longer parses still names its addresses
            range_sets = []
            break
    out = []
    for ip in result.get("ips") or []:
        try:
            iface = ipaddress.ip_interface(str(ip.get("address")))
        except (ValueError, AttributeError):
            continue
        if range_sets:
            r = next((r for rs in range_sets for r in [rs.subnet_range_for(iface.ip)] if r is not None), None)
            if r is None:
                continue
            out.append((str(r.subnet), iface.ip))
        else:
            out.append((str(iface.network), iface.ip))
    return tuple(out)


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


# --- the check --------------------------------------------------------------------------------

@dataclass
class CheckReport:
    """What `multiplex ipam check` found (and, with repair, did)."""
    database: str
    damaged: str = ""                                     # why, when the database was damaged
    moved_to: str = ""                                    # where the damaged file went
    leases: int = 0
    cached: int = 0
    missing: list[dict] = field(default_factory=list)     # cached address without its lease
    orphans: list[dict] = field(default_factory=list)     # lease without a cached attachment
    netns_gone: list[dict] = field(default_factory=list)  # cached attachment whose netns is gone
    not_live: list[dict] = field(default_factory=list)    # its netns is there, the interface or address is not
    conflicts: list[dict] = field(default_factory=list)   # cached address leased to someone else
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    restored: int = 0          # missing leases put back
    released: int = 0          # orphan leases released

    @property
    def clean(self) -> bool:
        return not (self.damaged or self.missing or self.orphans or self.conflicts or self.problems)

    @property
    def resolved(self) -> bool:
        """Nothing is left to fix: clean, or (after a repair) every finding was repaired."""
        if self.clean:
            return True
        return bool(self.repaired) and not (self.conflicts or self.problems) \
            and self.restored == len(self.missing) and self.released == len(self.orphans)

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.database, "damaged": self.damaged, "movedTo": self.moved_to,
                "leases": self.leases, "cachedAttachments": self.cached, "missing": self.missing,
                "orphans": self.orphans, "netnsGone": self.netns_gone, "notLive": self.not_live,
                "conflicts": self.conflicts,
                "problems": self.problems, "repaired": self.repaired, "clean": self.clean,
                "resolved": self.resolved}

    def lines(self) -> list[str]:
        out = [f"ipam check {self.database}: {self.leases} leases, {self.cached} cached attachments"
               + ("" if not self.damaged else f"; DAMAGED: {self.damaged}")]
        if self.moved_to:
            out.append(f"  damaged database moved to {self.moved_to}")
        for what, items in (("missing lease", self.missing), ("lease without a cached attachment", self.orphans),
                            ("leased to another attachment", self.conflicts),
                            ("netns gone (DEL or GC will free it)", self.netns_gone),
                            ("not on a live interface (DEL or GC will free it)", self.not_live)):
            for i in items:
                out.append(f"  {what}: {i['address'] or '-'} network {i['network']} container "
                           f"{i['containerID'][:12]} {i['ifname']}")
        out += [f"  problem: {p}" for p in self.problems]
        out += [f"  repaired: {r}" for r in self.repaired]
        if self.clean and not self.repaired:
            out.append("  ok")
        return out


def _item(lease_or_owner: Any, address: Any = "") -> dict:
    o = lease_or_owner.owner if isinstance(lease_or_owner, Lease) else lease_or_owner
    addr = str(lease_or_owner.address) if isinstance(lease_or_owner, Lease) else str(address or "")
    return {"address": addr, "network": o.network, "containerID": o.container_id, "ifname": o.ifname,
            "pod": f"{o.pod_namespace}/{o.pod_name}" if o.pod_name else ""}


def live_addresses(netns: str, ifname: str) -> Optional[set[str]]:
    """The addresses on `ifname` in the netns at `netns`; None when the interface is not there.
    (pyroute2, imported here: `ipam check` only, never the IPAM's own path.)"""
    from ..netlink import open_netns

    with open_netns(netns) as h:
        link = h.link(ifname)
        if link is None:
            return None
        return {str(a.interface.ip) for a in h.addresses(link)}


def _check_live(att: CachedAttachment, report: CheckReport) -> None:
    from ..cni.errors import CNIError

    try:
        on_link = live_addresses(att.netns, att.owner.ifname)
    except (CNIError, ImportError, OSError) as e:
        report.problems.append(f"cannot look into netns {att.netns}: {getattr(e, 'msg', e)}")
        return
    if on_link is None:
        report.not_live.append(_item(att.owner))
        return
    for _, ip in att.addresses:
        if str(ip) not in on_link:
            report.not_live.append(_item(att.owner, ip))


def check(store, repair: bool = False, force: bool = False, cache_dir: Optional[str] = None,
          live: bool = False) -> CheckReport:
    """See _check; file system and SQLite errors are CNIError 5 naming the database."""
    import sqlite3

    from ..cni.errors import IO_FAILURE, CNIError

    try:
        return _check(store, repair, force, cache_dir, live)
    except (OSError, sqlite3.Error) as e:
        raise CNIError(IO_FAILURE, f"ipam check: {e}", f"file: {store.path}") from None


def _check(store, repair: bool, force: bool, cache_dir: Optional[str], live: bool) -> CheckReport:
    """Compare the SQLite store with the cache; with `repair`, rebuild a damaged database, add the
    missing leases and release leases whose container has no cache entry at all (an attachment whose
    ADD is running is in the cache before its IPAM is called, so it is never released here).
    `force` rebuilds a damaged database even when the cache cannot account for every attachment.
    `live` also looks into each cached attachment's netns: its interface and address are there."""
    report = CheckReport(database=store.path)
    if cache_dir:
        store.cache_dir = cache_dir
    damage = store.damage()
    if damage:
        report.damaged = damage
        if repair:
            moved = store.recover(damage, force=force)
            report.moved_to = moved
            report.repaired.append(f"database rebuilt from the cache (damaged file: {moved or 'none left'})")
        else:
            report.problems.append("the database is damaged: run `multiplex ipam check --repair`")
            return report
    # leases first, then the cache: the meta plugin caches an attachment before its IPAM is
    # called, so every lease read here whose ADD runs meanwhile is in the cache read after it
    leases = store.leases()
    view = read_cache(store.data_dir, store.cache_dir)
    report.problems += view.problems
    report.leases, report.cached = len(leases), len(view.attachments)
    by_address = {str(lease.address): lease for lease in leases}
    if len(by_address) < len(leases):   # made before one address space (schema 1)
        seen: dict[str, int] = {}
        for lease in leases:
            seen[str(lease.address)] = seen.get(str(lease.address), 0) + 1
        report.problems += [f"address {a} is leased {n} times (made before one address space): DEL of all "
                            "but one holder ends it" for a, n in sorted(seen.items()) if n > 1]
    owners = view.owners()
    for att in view.attachments:
        if att.netns and not os.path.exists(att.netns):
            report.netns_gone.append(_item(att.owner))
        elif att.netns and live and not att.in_flight:
            _check_live(att, report)
        for pool, ip in att.addresses:
            held = by_address.get(str(ip))
            if held is None:
                report.missing.append(_item(att.owner, ip))
                if repair and store.restore(Lease(pool=pool, address=ip, owner=att.owner)):
                    report.restored += 1
                    report.repaired.append(f"leased {ip} to {att.owner.container_id}/{att.owner.ifname} again")
            elif (held.owner.container_id, held.owner.ifname, held.owner.network) != \
                    (att.owner.container_id, att.owner.ifname, att.owner.network):
                report.conflicts.append(_item(att.owner, ip))
    containers = view.containers()
    for lease in leases:
        o = lease.owner
        if (o.container_id, o.ifname, o.network) in owners:
            continue
        report.orphans.append(_item(lease))
        if repair and o.container_id not in containers and not view.problems:
            store.release_lease(lease)
            report.released += 1
            report.repaired.append(f"released {lease.address} of {o.container_id}/{o.ifname} (no cache entry)")
    return report
