"""A damaged SQLite store: how it is detected, moved aside and rebuilt. Never silently emptied.

Creating the database writes a marker beside it (`leases.db.init`). When the marker exists but
the database is missing, truncated (0 bytes), not a SQLite file, has no tables, or SQLite reports
it malformed, the store is damaged (`Damaged`). `recover` then moves it aside
(`leases.db.damaged-<time>`) and rebuilds the leases from the meta plugin's cache
(multiplex.ipam.repair reads it), plus the rows SQLite can still read from the damaged file. When
the cache cannot account for every attachment it refuses with code 5 unless forced.

One process repairs at a time (a file lock in dataDir, waited for within the call's deadline);
the others find the database repaired.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from ...cni.errors import CNIError, IO_FAILURE, TRY_AGAIN_LATER
from ...util import files, log as _log
from ..store import Lease
from .schema import COLUMNS, FILENAME, HEADER, lease_of_row, migrate_in

if TYPE_CHECKING:
    from .store import SQLiteStore

DAMAGED_SUFFIX = ".damaged-"     # leases.db.damaged-<UTC time>: a damaged database moved aside
REPAIR_LOCK = ".leases.repair.lock"


class Damaged(Exception):
    """The database file is not what the marker says was made here (see the module doc)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_file(path: str, marked: bool) -> bool:
    """The cheap checks of every open: the file exists, is not empty, starts as SQLite's do.
    `marked`: the store was initialised here, so a missing or empty file is damage. Returns
    whether the file exists (the one stat of the open)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if marked:
            raise Damaged("the database file is missing, but the store was initialised here") from None
        return False
    if st.st_size == 0:
        if marked:
            raise Damaged("the database file is empty (0 bytes), but the store was initialised here")
        return True
    from .pool import read_header

    if read_header(path, st) != HEADER:   # never open+close: that would drop our connections' locks
        raise Damaged("the file is not a SQLite database")
    return True


def write_marker(marker: str) -> None:
    """The marker that says a database was made here (atomically: never half a marker)."""
    files.atomic_write(marker, json.dumps({
        "database": FILENAME, "created": time.time(),
        "note": "multiplex: the leases database was initialised here; if it goes missing "
                "or is damaged it is rebuilt from the cache, never silently emptied"}), 0o600)


def recover(store: "SQLiteStore", reason: str, force: bool = False) -> str:
    """Move the store's damaged database aside and rebuild it from the cache; returns where it went.

    CNIError 5 when the cache cannot account for every attachment (unless `force`): the store stays
    without a database, so no address is handed out from an empty one."""
    from .. import repair

    log = store.log
    with _repair_lock(store):
        if not store.damage():   # repaired meanwhile by another call (quick_check included)
            log.info("IPAM database found repaired", file=store.path, reason=reason)
            return ""
        moved = move_aside(store.path)
        view = repair.read_cache(store.data_dir, store.cache_dir)
        leases = view.leases()
        salvaged = salvage(moved, log) if moved else []
        cached = {str(lease.address) for lease in leases}
        leases += [lease for lease in salvaged if str(lease.address) not in cached]
        log.error("IPAM database damaged: moved aside, rebuilding from the cache", file=store.path,
                  reason=reason, moved_to=moved, cached_leases=len(cached), salvaged=len(salvaged),
                  problems=view.problems)
        if view.problems and not force:
            raise CNIError(IO_FAILURE,
                           f"IPAM database damaged ({reason}) and it cannot be rebuilt from the node's cache: "
                           + "; ".join(view.problems[:3]),
                           f"field: ipam.dataDir; file: {store.path}; damaged file: {moved or 'gone'}; "
                           f"cache: {view.cache_dir}; allowed: restore the database, or run "
                           "`multiplex ipam check --repair --force` to rebuild from what the cache holds")
        rebuild(store.path, leases)
        write_marker(store.marker)
        log.warning("IPAM database rebuilt from the cache", file=store.path, leases=len(leases))
        return moved


@contextmanager
def _repair_lock(store: "SQLiteStore") -> Iterator[None]:
    """One repair at a time, waited for within what is left of the store's deadline (code 11 after)."""
    fd = os.open(os.path.join(store.data_dir, REPAIR_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        started = time.monotonic()
        if not files.lock(fd, started + store.time_left()):
            raise CNIError(TRY_AGAIN_LATER, "IPAM database is being repaired by another call",
                           f"field: ipam.dataDir; file: {store.path}; waited {files.waited(started)}; "
                           "allowed: try again later")
        yield
    finally:
        os.close(fd)   # closing the descriptor drops the lock


def move_aside(path: str) -> str:
    """leases.db (and its -wal, -shm) -> leases.db.damaged-<UTC time>; "" when there was none."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    target = path + DAMAGED_SUFFIX + stamp
    moved = ""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.rename(path + suffix, target + suffix)
            moved = moved or target
        except FileNotFoundError:
            continue
    return moved


def rebuild(path: str, leases: list[Lease]) -> None:
    """A new database at `path` with `leases`, made beside it and renamed over (readers see none
    or all). SQLite writes the file, so this is atomic_write's sequence on a file SQLite made:
    fsync, rename, fsync the directory."""
    d = os.path.dirname(path)
    tmp = os.path.join(d, f".{os.path.basename(path)}.rebuild-{os.getpid()}")
    for suffix in ("", "-journal"):
        try:
            os.unlink(tmp + suffix)
        except FileNotFoundError:
            pass
    os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        migrate_in(conn, 0)
        for lease in leases:
            o = lease.owner
            conn.execute("INSERT OR IGNORE INTO leases (pool, address, family, network, container_id, ifname, "
                         "pod_namespace, pod_name, pod_uid, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (lease.pool, str(lease.address), lease.address.version, o.network, o.container_id,
                          o.ifname, o.pod_namespace, o.pod_name, o.pod_uid, lease.created or time.time()))
        conn.execute("COMMIT")
    finally:
        conn.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    files.fsync_dir(d)


def salvage(path: str, log: _log.Logger) -> list[Lease]:
    """The lease rows SQLite can still read from a damaged file (often all of them when only an
    index page is bad; none when the file is empty or not a database). The cache's word wins over
    these on a conflict: it is the evidence of a live attachment."""
    try:
        with open(path, "rb") as f:
            if f.read(len(HEADER)) != HEADER:
                return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0)
    except (OSError, sqlite3.Error):
        return []
    out: list[Lease] = []
    try:
        for row in conn.execute(f"SELECT {COLUMNS} FROM leases"):
            try:
                out.append(lease_of_row(row))
            except (ValueError, TypeError):
                continue
    except sqlite3.Error as e:
        log.warning("salvaged part of a damaged IPAM database", file=path, rows=len(out), error=str(e))
    finally:
        conn.close()
    return out
