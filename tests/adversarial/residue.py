"""Snapshot-and-diff of a simulated node: what a failed or repeated CNI call may not leave behind.

A snapshot records, inside the node's netns: links (name, kind, master), global addresses,
routes, static FDB entries, the nft ruleset (`nft -j list ruleset`, handles dropped), and the
processes living in that netns; on disk: every file under the watched directories (the state
dir's cache, locks and lease database files, and any directory a bad input tried to write into)
and the IPAM lease rows. `diff(before, after)` lists what appeared and what went missing, one
human-readable line each, so a residue failure says exactly what was left (or destroyed).

Kernel-made noise is filtered out: link-local and multicast addresses/routes, learned FDB
entries, multicast FDB entries, SQLite's -wal/-shm/-journal side files and log files.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass, field
from typing import Iterable

NOISE_SUFFIXES = ("-wal", "-shm", "-journal", ".log")


def _nsrun(ns: str, *argv: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30)
    return r.stdout


def _json(text: str) -> list:
    try:
        return json.loads(text) if text.strip() else []
    except ValueError:
        return []


@dataclass(frozen=True)
class Snapshot:
    links: frozenset = frozenset()
    addrs: frozenset = frozenset()
    routes: frozenset = frozenset()
    fdb: frozenset = frozenset()
    nft: frozenset = frozenset()
    procs: frozenset = frozenset()
    files: frozenset = frozenset()
    leases: frozenset = frozenset()
    paths: frozenset = frozenset()       # absolute paths that were asked about and exist

    def fields(self) -> dict[str, frozenset]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


PROBES = {
    "links": "ip -j -d link show",
    "addrs": "ip -j addr show",
    "routes4": "ip -j -4 route show table all",
    "routes6": "ip -j -6 route show table all",
    "fdb": "bridge -j fdb show",
    "nft": "nft -j list ruleset",
}
SEP = "=====mpx-residue-probe====="


def probe(ns: str) -> dict[str, object]:
    """All kernel probes in one `ip netns exec` (a shell), parsed: fewer processes per snapshot."""
    script = "; ".join(f"echo {SEP}{k}; {cmd} 2>/dev/null" for k, cmd in PROBES.items())
    text = _nsrun(ns, "sh", "-c", script)
    out: dict[str, object] = {}
    for chunk in text.split(SEP)[1:]:
        key, _, body = chunk.partition("\n")
        out[key.strip()] = _json(body)
    return out


def node_links(data: dict) -> frozenset:
    return frozenset((l["ifname"], l.get("linkinfo", {}).get("info_kind", ""), l.get("master", ""))
                     for l in data.get("links", []))


def node_addrs(data: dict) -> frozenset:
    return frozenset(f"{i['ifname']} {a['local']}/{a['prefixlen']}"
                     for i in data.get("addrs", []) for a in i.get("addr_info", []) if a.get("scope") == "global")


def node_routes(data: dict) -> frozenset:
    out = set()
    for r in [*data.get("routes4", []), *data.get("routes6", [])]:
        dst = r.get("dst", "")
        if r.get("table") == "local" or dst.startswith(("fe80:", "ff00:", "multicast")) or r.get("type") == "multicast":
            continue
        out.add(f"{dst} via {r.get('gateway', '-')} dev {r.get('dev', '-')} table {r.get('table', 'main')}")
    return frozenset(out)


def node_fdb(data: dict) -> frozenset:
    out = set()
    for e in data.get("fdb", []):
        mac = e.get("mac", "")
        if mac.startswith(("33:33:", "01:00:5e:")) or e.get("state") not in ("permanent", "static"):
            continue
        out.add(f"{mac} dev {e.get('ifname', '-')} master {e.get('master', '-')} {e.get('state')}")
    return frozenset(out)


def node_nft(data: dict) -> frozenset:
    items = data.get("nft")
    items = items.get("nftables", []) if isinstance(items, dict) else []
    out = set()
    for item in items:
        if "metainfo" in item:
            continue
        for kind, body in item.items():
            body = {k: v for k, v in body.items() if k != "handle"}
            out.add(f"{kind} {json.dumps(body, sort_keys=True)}")
    return frozenset(out)


def netns_inode(ns: str) -> int:
    return os.stat(f"/var/run/netns/{ns}").st_ino


def node_procs(ns: str) -> frozenset:
    """Processes whose network namespace is the node's: a plugin must not leave one running."""
    ino, me = netns_inode(ns), os.getpid()
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != ino:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd.startswith(("ip -j", "ip netns", "nft -j", "bridge -j", "sh -c echo " + SEP)) or not cmd:
            continue                     # our own probes, or a process already exiting
        out.add(f"{pid} {cmd[:200]}")
    return frozenset(out)


def files_under(dirs: Iterable[str]) -> frozenset:
    out = set()
    for d in dirs:
        for root, subdirs, names in os.walk(d):
            for n in names + [s + "/" for s in subdirs]:
                if n.endswith(NOISE_SUFFIXES) or n.startswith("__pycache__"):
                    continue
                out.add(os.path.join(root, n))
    return frozenset(out)


def lease_rows(dirs: Iterable[str]) -> frozenset:
    """Every row of every table named like a lease, in every SQLite file under `dirs` (read-only)."""
    rows = set()
    for d in dirs:
        for root, _, names in os.walk(d):
            for n in names:
                if not n.endswith(".db"):
                    continue
                path = os.path.join(root, n)
                try:
                    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
                    try:
                        for (t,) in con.execute("select name from sqlite_master where type='table'").fetchall():
                            if "lease" in t:
                                rows |= {f"{n}:{t} {r}" for r in con.execute(f'select * from "{t}"').fetchall()}
                    finally:
                        con.close()
                except sqlite3.Error as e:
                    rows.add(f"{path}: unreadable ({e})")
    return frozenset(rows)


@dataclass
class Watch:
    """What to snapshot: the node netns, directories (state dir, lab root), absolute paths."""
    node: str
    dirs: list[str] = field(default_factory=list)
    lease_dirs: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def snapshot(self, extra_paths: Iterable[str] = ()) -> Snapshot:
        data = probe(self.node)
        return Snapshot(
            links=node_links(data), addrs=node_addrs(data), routes=node_routes(data),
            fdb=node_fdb(data), nft=node_nft(data), procs=node_procs(self.node),
            files=files_under(self.dirs), leases=lease_rows(self.lease_dirs or self.dirs),
            paths=frozenset(p for p in [*self.paths, *extra_paths] if os.path.lexists(p)))


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    """`+ kind: item` for what appeared, `- kind: item` for what disappeared; empty when identical."""
    lines = []
    b, a = before.fields(), after.fields()
    for kind in b:
        lines += [f"+ {kind}: {x}" for x in sorted(a[kind] - b[kind])]
        lines += [f"- {kind}: {x}" for x in sorted(b[kind] - a[kind])]
    return lines
