"""The node's lease store: one SQLite database file shared by every network on the node.

`<dataDir>/leases.db`, in WAL mode. Every change runs in a `BEGIN IMMEDIATE` transaction, so
concurrent CNI calls (separate processes) are serialized by SQLite's write lock: the read of the
leased addresses and the insert of the new lease are one atomic step. A call waits up to
`timeout` seconds for the lock (busy_timeout), then fails with CNI code 11 (try again later).

Tables:
  leases(pool, address, family, network, container_id, ifname, pod_*, created)
      PRIMARY KEY (pool, address): an address is unique in its subnet across all networks.
  range_sets(key, name, family, size, last, updated)
      every range set addresses were handed out from: its size as last configured (for reports)
      and `last`, the last address handed out dynamically (the allocation cursor).

One address space: an address is leased at most once in the whole database, whatever its pool
(two networks whose subnets overlap but differ, a /24 and a /25 of it, never hand one address to
two interfaces). The allocator reads every lease of the family that falls in the range set's
subnets, a requested address is looked up by address alone, and schema 2 adds a UNIQUE index on
the address (a database made before it that already holds a duplicate keeps working, is logged,
and `multiplex ipam check` lists the duplicate).

One deadline: a store opened for a CNI call gets the call's deadline (Request.deadline); every
transaction waits for the lock only for what is left of it, so the undo of a failed ADD never
waits again past it, and the error says how long the call really waited.

Never silently emptied: creating the database writes a marker beside it (`leases.db.init`). When
the marker exists but the database is missing, truncated (0 bytes), not a SQLite file, has no
tables, or SQLite reports it malformed, the store moves it aside (`leases.db.damaged-<time>`) and
rebuilds the leases from the meta plugin's cache (multiplex/ipam/repair.py), plus the rows SQLite
can still read from the damaged file. When the cache cannot account for every attachment (no cache
directory, an unreadable entry), it refuses with code 5 instead of handing out addresses from an
empty store: `multiplex ipam check --repair --force` rebuilds from what there is.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import os
import sqlite3
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from ...util import log
from ...cni.errors import CNIError, ADDRESS_UNAVAILABLE, IO_FAILURE, TRY_AGAIN_LATER
from ...cni.valid import Keep
from ...cni.types import IPAddress, IPNetwork
from ..allocator import Space, address as int_to_address
from ..config import IPAMConfig, RangeSet, StoreLocation, default_data_dir
from ..store import Lease, Owner, PoolUsage, Store, as_keep

FILENAME = "leases.db"
MARKER_SUFFIX = ".init"          # leases.db.init: the store was initialised here
DAMAGED_SUFFIX = ".damaged-"     # leases.db.damaged-<UTC time>: a damaged database moved aside
REPAIR_LOCK = ".leases.repair.lock"
SCHEMA_VERSION = 2
DEFAULT_TIMEOUT = 60.0
_HEADER = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    pool          TEXT NOT NULL,
    address       TEXT NOT NULL,
    family        INTEGER NOT NULL,
    network       TEXT NOT NULL,
    container_id  TEXT NOT NULL,
    ifname        TEXT NOT NULL,
    pod_namespace TEXT NOT NULL DEFAULT '',
    pod_name      TEXT NOT NULL DEFAULT '',
    pod_uid       TEXT NOT NULL DEFAULT '',
    created       REAL NOT NULL,
    PRIMARY KEY (pool, address)
);
CREATE INDEX IF NOT EXISTS leases_by_owner ON leases (network, container_id, ifname);
CREATE INDEX IF NOT EXISTS leases_by_container ON leases (container_id);
CREATE TABLE IF NOT EXISTS range_sets (
    key     TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    family  INTEGER NOT NULL,
    size    TEXT NOT NULL,     -- an IPv6 range outgrows SQLite's 64-bit INTEGER
    last    TEXT,
    updated REAL NOT NULL
);
"""
_UNIQUE_ADDRESS = "CREATE UNIQUE INDEX IF NOT EXISTS leases_by_address ON leases (address)"
_COLUMNS = "pool, address, network, container_id, ifname, pod_namespace, pod_name, pod_uid, created"


class Damaged(Exception):
    """The database file is not what the marker says was made here (see the module doc)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _db_errors(method):
    """sqlite3 errors as CNI errors: a busy database is 11 (try again), anything else 5 (I/O).

    A database SQLite finds malformed in the middle of a call is recovered (moved aside, rebuilt
    from the cache) and the call runs once more on the rebuilt one (every method is idempotent)."""
    @functools.wraps(method)
    def wrapper(self: "SQLiteStore", *args, **kwargs):
        for attempt in (1, 2):
            try:
                return method(self, *args, **kwargs)
            except sqlite3.OperationalError as e:
                if "locked" in str(e) or "busy" in str(e):
                    raise self._busy(e) from None
                raise CNIError(IO_FAILURE, f"IPAM database error: {e}", f"field: ipam.dataDir; file: {self.path}") from None
            except sqlite3.DatabaseError as e:
                if attempt == 2 or not _is_damage(e):
                    raise CNIError(IO_FAILURE, f"IPAM database error: {e}", f"field: ipam.dataDir; file: {self.path}") from None
                self.close()
                self.recover(f"SQLite reports: {e}")
            except sqlite3.Error as e:
                raise CNIError(IO_FAILURE, f"IPAM database error: {e}", f"field: ipam.dataDir; file: {self.path}") from None
            except Damaged as e:   # still damaged right after a repair: never go on with it
                raise CNIError(IO_FAILURE, f"IPAM database damaged: {e.reason}",
                               f"field: ipam.dataDir; file: {self.path}; allowed: `multiplex ipam check --repair`") from None
            except OSError as e:
                raise CNIError(IO_FAILURE, f"cannot open the IPAM database: {e}", f"field: ipam.dataDir; file: {self.path}") from None
    return wrapper


def _is_damage(e: sqlite3.DatabaseError) -> bool:
    text = str(e).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


class SQLiteStore(Store):
    def __init__(self, data_dir: str, timeout: float = DEFAULT_TIMEOUT, deadline: Optional[float] = None,
                 cache_dir: Optional[str] = None):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, FILENAME)
        self.marker = self.path + MARKER_SUFFIX
        #: each transaction's lock wait when no deadline is set
        self.timeout = timeout
        #: time.monotonic() by which the call must be done (the CNI call's deadline); None: none
        self.deadline = deadline
        #: the meta plugin's cache, rebuilt from when the database is damaged (None: <state root>/cache)
        self.cache_dir = cache_dir
        #: transactions (txn), lock waits that ran out (busy), and of those the ones that waited at all
        self.stats: Counter = Counter()
        self._conn: Optional[sqlite3.Connection] = None
        self._wait: tuple[float, float] = (0.0, 0.0)    # (monotonic start, budget) of the last lock wait

    @classmethod
    def open(cls, where: IPAMConfig | StoreLocation, deadline: Optional[float] = None) -> "SQLiteStore":
        return cls(where.data_dir or default_data_dir(), deadline=deadline)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the deadline ----------------------------------------------------------------------

    def time_left(self) -> float:
        """What a lock wait may take now: what is left of the deadline, else `timeout`."""
        if self.deadline is None:
            return self.timeout
        return max(0.0, self.deadline - time.monotonic())

    def _busy(self, e: Exception) -> CNIError:
        start, budget = self._wait
        waited = max(0.0, time.monotonic() - start) if start else 0.0
        self.stats["busy"] += 1
        if budget > 0:
            self.stats["waited"] += 1
        limit = "the call's deadline" if self.deadline is not None else "the lock timeout"
        return CNIError(TRY_AGAIN_LATER,
                        f"IPAM database is busy: waited {waited:.1f}s for its lock ({limit}: {budget:.1f}s left "
                        "when the wait began)",
                        f"field: ipam.dataDir; file: {self.path}; {e}; allowed: try again later")

    # --- connection and transactions -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        try:
            self._conn = self._open_checked()
        except Damaged as d:
            self.recover(d.reason)
            self._conn = self._open_checked()
        return self._conn

    def damage(self) -> str:
        """Why the database is damaged, or "" (a missing store with no marker is not damage)."""
        if not os.path.isdir(self.data_dir):
            return ""
        try:
            conn = self._open_checked(create=False)
        except Damaged as d:
            return d.reason
        if conn is None:
            return ""
        try:
            bad = [r[0] for r in conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as e:
            bad = [str(e)]
        finally:
            conn.close()
        return "" if bad == ["ok"] else "quick_check: " + "; ".join(bad[:3])

    def _open_checked(self, create: bool = True) -> Optional[sqlite3.Connection]:
        """A connection to a database that is what the marker says (schema made or migrated);
        raises Damaged otherwise. With create=False, None when there is no store at all."""
        marked = os.path.exists(self.marker)
        self._check_file(marked)
        if not os.path.exists(self.path):
            if not create:
                return None
            # created 0600: leases name every pod on the node
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._wait = (time.monotonic(), self.time_left())
        conn = sqlite3.connect(self.path, timeout=self._wait[1], isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._wait[1] * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and marked:
                raise Damaged("the database has no tables, but the store was initialised here")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if version < SCHEMA_VERSION:
                _migrate(conn, version)
        except sqlite3.DatabaseError as e:
            conn.close()
            if isinstance(e, sqlite3.OperationalError) and not _is_damage(e):
                raise
            raise Damaged(f"SQLite reports: {e}") from None
        except BaseException:
            conn.close()
            raise
        if not marked:
            self._write_marker()
        return conn

    def _check_file(self, marked: bool) -> None:
        """The cheap checks of every open: the file exists, is not empty, starts as SQLite's do."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if marked:
                raise Damaged("the database file is missing, but the store was initialised here") from None
            return
        if st.st_size == 0:
            if marked:
                raise Damaged("the database file is empty (0 bytes), but the store was initialised here")
            return
        with open(self.path, "rb") as f:
            head = f.read(len(_HEADER))
        if head != _HEADER:
            raise Damaged("the file is not a SQLite database")

    def _write_marker(self) -> None:
        tmp = f"{self.marker}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"database": FILENAME, "created": time.time(),
                       "note": "multiplex: the leases database was initialised here; if it goes missing "
                               "or is damaged it is rebuilt from the cache, never silently emptied"}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.marker)

    def recover(self, reason: str, force: bool = False) -> str:
        """Move a damaged database aside and rebuild it from the cache; returns where it went.

        Serialized by a file lock (one process repairs, the others find it repaired). CNIError 5
        when the cache cannot account for every attachment (unless `force`): the store stays
        without a database, so no address is handed out from an empty one."""
        from .. import repair

        with self._repair_lock():
            if not self.damage():   # repaired meanwhile by another call (quick_check included)
                log.get().info("IPAM database found repaired", file=self.path, reason=reason)
                return ""
            moved = self._move_aside()
            view = repair.read_cache(self.data_dir, self.cache_dir)
            leases = view.leases()
            salvaged = _salvage(moved) if moved else []
            cached = {str(lease.address) for lease in leases}
            leases += [lease for lease in salvaged if str(lease.address) not in cached]
            log.get().error("IPAM database damaged: moved aside, rebuilding from the cache", file=self.path,
                            reason=reason, moved_to=moved, cached_leases=len(cached), salvaged=len(salvaged),
                            problems=view.problems)
            if view.problems and not force:
                raise CNIError(IO_FAILURE,
                               f"IPAM database damaged ({reason}) and it cannot be rebuilt from the node's cache: "
                               + "; ".join(view.problems[:3]),
                               f"field: ipam.dataDir; file: {self.path}; damaged file: {moved or 'gone'}; cache: {view.cache_dir}; "
                               "allowed: restore the database, or run `multiplex ipam check --repair --force` "
                               "to rebuild from what the cache holds")
            self._rebuild(leases)
            log.get().warning("IPAM database rebuilt from the cache", file=self.path, leases=len(leases))
            return moved

    @contextmanager
    def _repair_lock(self) -> Iterator[None]:
        import fcntl

        fd = os.open(os.path.join(self.data_dir, REPAIR_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            budget = self.time_left()
            end = time.monotonic() + budget
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= end:
                        raise CNIError(TRY_AGAIN_LATER, "IPAM database is being repaired by another call",
                                       f"field: ipam.dataDir; file: {self.path}; waited {budget:.1f}s; allowed: try again later") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)

    def _move_aside(self) -> str:
        """leases.db (and its -wal, -shm) -> leases.db.damaged-<UTC time>; "" when there was none."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
        target = self.path + DAMAGED_SUFFIX + stamp
        moved = ""
        for suffix in ("", "-wal", "-shm"):
            try:
                os.rename(self.path + suffix, target + suffix)
                moved = moved or target
            except FileNotFoundError:
                continue
        return moved

    def _rebuild(self, leases: list[Lease]) -> None:
        """A new database with `leases`, made beside and renamed over (readers see none or all)."""
        tmp = os.path.join(self.data_dir, f".{FILENAME}.rebuild-{os.getpid()}")
        for suffix in ("", "-journal"):
            try:
                os.unlink(tmp + suffix)
            except FileNotFoundError:
                pass
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            _migrate_in(conn, 0)
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
        os.replace(tmp, self.path)
        self._write_marker()

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the database's write lock is held from BEGIN to COMMIT. The wait
        for the lock is what is left of the deadline (0 once it passed: try once, never wait)."""
        db = self._connect()
        budget = self.time_left()
        db.execute(f"PRAGMA busy_timeout = {int(budget * 1000)}")
        self._wait = (time.monotonic(), budget)
        self.stats["txn"] += 1
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- the Store interface ---------------------------------------------------------------

    @_db_errors
    def allocate(self, range_set: RangeSet, exclude: Sequence[IPNetwork], owner: Owner,
                 requested: Optional[IPAddress] = None, requested_from: str = "") -> Lease:
        space = Space(range_set, exclude)
        subnets = range_set.subnets
        with self._txn() as db:
            existing = self._owner_leases(db, owner, family=range_set.family)
            for lease in existing:
                if lease.pool in subnets and space.contains(lease.address):
                    if requested is not None and requested != lease.address:
                        raise CNIError(
                            ADDRESS_UNAVAILABLE,
                            f"requested address {requested} is unavailable: {owner.describe()} already holds "
                            f"{lease.address} in pool {space.name}",
                            (f"field: {requested_from}; " if requested_from else "")
                            + f"allowed: {lease.address}, or DEL the attachment first")
                    return lease
                # left over from an earlier config of this network: the attachment gets a new one
                log.get().warning("releasing a lease outside the current ranges", pool=lease.pool,
                                  address=str(lease.address), network=owner.network)
                self._delete(db, lease)
            if requested is not None:
                return self._take_requested(db, space, owner, requested, requested_from)
            return self._take_next(db, space, owner)

    def _take_requested(self, db: sqlite3.Connection, space: Space, owner: Owner, ip: IPAddress,
                        where: str) -> Lease:
        space.check_requested(ip, where)
        r = space.range_set.range_for(ip)
        assert r is not None
        # by address alone: a lease in an overlapping pool of another network holds it too
        row = db.execute("SELECT 1 FROM leases WHERE address = ?", (str(ip),)).fetchone()
        if row is not None:   # never say who: the holder may be another tenant's pod
            raise CNIError(ADDRESS_UNAVAILABLE,
                           f"requested address {ip} is unavailable: in use by another attachment",
                           (f"field: {where}; " if where else "") + f"allowed: a free address in {space.name}")
        self._remember(db, space)
        return self._insert(db, str(r.subnet), ip, owner)

    def _take_next(self, db: sqlite3.Connection, space: Space, owner: Owner) -> Lease:
        leased = self._leased_ints(db, space.range_set)
        row = db.execute("SELECT last FROM range_sets WHERE key = ?", (space.range_set.key,)).fetchone()
        after = int(ipaddress.ip_address(row[0])) if row and row[0] else None
        value = space.next_free(leased, after)
        if value is None:
            raise space.exhausted(space.count_leased(leased), owner.network)
        ip = int_to_address(value, space.family)
        r = space.range_set.range_for(ip)
        assert r is not None
        lease = self._insert(db, str(r.subnet), ip, owner)
        self._remember(db, space, last=ip)
        return lease

    @_db_errors
    def release(self, owner: Owner) -> list[Lease]:
        with self._txn() as db:
            gone = self._owner_leases(db, owner)
            for lease in gone:
                self._delete(db, lease)
        return gone

    @_db_errors
    def release_lease(self, lease: Lease) -> None:
        with self._txn() as db:
            o = lease.owner
            db.execute("DELETE FROM leases WHERE pool = ? AND address = ? AND network = ? AND container_id = ? "
                       "AND ifname = ?", (lease.pool, str(lease.address), o.network, o.container_id, o.ifname))

    @_db_errors
    def leases(self, network: Optional[str] = None, owner: Optional[Owner] = None) -> list[Lease]:
        db = self._connect()
        if owner is not None:
            found = self._owner_leases(db, owner)
        elif network is not None:
            found = [_lease(r) for r in db.execute(f"SELECT {_COLUMNS} FROM leases WHERE network = ?", (network,))]
        else:
            found = [_lease(r) for r in db.execute(f"SELECT {_COLUMNS} FROM leases")]
        return sorted(found, key=_order)

    @_db_errors
    def gc(self, network: str, keep: Keep) -> list[Lease]:
        """Exactly `network` (the namespaced name the plugin got), never a bare name's namesakes."""
        keep = as_keep(keep)
        with self._txn() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM leases WHERE network = ?", (network,)).fetchall()
            gone = [lease for lease in map(_lease, rows)
                    if not keep.keeps(lease.owner.container_id, lease.owner.ifname)]
            for lease in gone:
                self._delete(db, lease)
        return sorted(gone, key=_order)

    @_db_errors
    def release_container(self, container_id: str) -> list[Lease]:
        with self._txn() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM leases WHERE container_id = ?", (container_id,)).fetchall()
            gone = [_lease(r) for r in rows]
            for lease in gone:
                self._delete(db, lease)
        return sorted(gone, key=_order)

    @_db_errors
    def restore(self, lease: Lease) -> bool:
        """Put back a lease the cache knows of (`ipam check --repair`); False when its address is
        held (by anyone: the holder is reported, not replaced)."""
        with self._txn() as db:
            if db.execute("SELECT 1 FROM leases WHERE address = ?", (str(lease.address),)).fetchone():
                return False
            self._insert(db, lease.pool, lease.address, lease.owner)
        return True

    @_db_errors
    def usage(self, range_set: RangeSet, exclude: Sequence[IPNetwork]) -> PoolUsage:
        space = Space(range_set, exclude)
        leased = self._leased_ints(self._connect(), range_set)
        return PoolUsage(pool=space.name, family=space.family, size=space.size(), leased=space.count_leased(leased))

    @_db_errors
    def pools(self) -> list[PoolUsage]:
        db = self._connect()
        leases = [_lease(r) for r in db.execute(f"SELECT {_COLUMNS} FROM leases")]
        out: list[PoolUsage] = []
        placed: set[tuple[str, str]] = set()
        rows = db.execute("SELECT key, name, family, size FROM range_sets ORDER BY family, name").fetchall()
        for key, name, family, size in rows:
            spans = spans_of_key(key)
            mine = [lease for lease in leases if any(lease.pool == subnet and lo <= lease.address <= hi
                                                     for subnet, lo, hi in spans)]
            placed.update((lease.pool, str(lease.address)) for lease in mine)
            out.append(PoolUsage(pool=name, family=family, size=int(size), leased=len(mine),
                                 leases=tuple(sorted(mine, key=_order))))
        stray: dict[str, list[Lease]] = {}
        for lease in leases:
            if (lease.pool, str(lease.address)) not in placed:
                stray.setdefault(lease.pool, []).append(lease)
        for pool, mine in sorted(stray.items()):
            out.append(PoolUsage(pool=pool, family=mine[0].address.version, size=None, leased=len(mine),
                                 leases=tuple(sorted(mine, key=_order))))
        return out

    # --- rows ------------------------------------------------------------------------------

    def _owner_leases(self, db: sqlite3.Connection, owner: Owner, family: Optional[int] = None) -> list[Lease]:
        sql = f"SELECT {_COLUMNS} FROM leases WHERE network = ? AND container_id = ? AND ifname = ?"
        params: list = [owner.network, owner.container_id, owner.ifname]
        if family is not None:
            sql += " AND family = ?"
            params.append(family)
        return sorted((_lease(r) for r in db.execute(sql, params)), key=_order)

    def _leased_ints(self, db: sqlite3.Connection, range_set: RangeSet) -> set[int]:
        """Every leased address inside the range set's subnets, whatever pool it was leased in
        (one address space: a /25 of another network's /24 shares its addresses)."""
        nets = [(int(r.subnet.network_address), int(r.subnet.broadcast_address)) for r in range_set.ranges]
        rows = db.execute("SELECT address FROM leases WHERE family = ?", (range_set.family,))
        out = set()
        for (a,) in rows:
            v = int(ipaddress.ip_address(a))
            if any(lo <= v <= hi for lo, hi in nets):
                out.add(v)
        return out

    @staticmethod
    def _remember(db: sqlite3.Connection, space: Space, last: Optional[IPAddress] = None) -> None:
        """Record the range set (name, size for reports) and, for a dynamic pick, the cursor."""
        db.execute("INSERT INTO range_sets (key, name, family, size, last, updated) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (key) DO UPDATE SET name = excluded.name, size = excluded.size, "
                   "updated = excluded.updated, last = COALESCE(excluded.last, range_sets.last)",
                   (space.range_set.key, space.name, space.family, str(space.size()),
                    str(last) if last is not None else None, time.time()))

    def _insert(self, db: sqlite3.Connection, pool: str, ip: IPAddress, owner: Owner) -> Lease:
        now = time.time()
        db.execute("INSERT INTO leases (pool, address, family, network, container_id, ifname, pod_namespace, "
                   "pod_name, pod_uid, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (pool, str(ip), ip.version, owner.network, owner.container_id, owner.ifname,
                    owner.pod_namespace, owner.pod_name, owner.pod_uid, now))
        return Lease(pool=pool, address=ip, owner=owner, created=now, fresh=True)

    @staticmethod
    def _delete(db: sqlite3.Connection, lease: Lease) -> None:
        db.execute("DELETE FROM leases WHERE pool = ? AND address = ?", (lease.pool, str(lease.address)))


def _salvage(path: str) -> list[Lease]:
    """The lease rows SQLite can still read from a damaged file (often all of them when only an
    index page is bad; none when the file is empty or not a database). The cache's word wins over
    these on a conflict: it is the evidence of a live attachment."""
    try:
        with open(path, "rb") as f:
            if f.read(len(_HEADER)) != _HEADER:
                return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0)
    except (OSError, sqlite3.Error):
        return []
    out: list[Lease] = []
    try:
        for row in conn.execute(f"SELECT {_COLUMNS} FROM leases"):
            try:
                out.append(_lease(row))
            except (ValueError, TypeError):
                continue
    except sqlite3.Error as e:
        log.get().warning("salvaged part of a damaged IPAM database", file=path, rows=len(out), error=str(e))
    finally:
        conn.close()
    return out


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        _migrate_in(conn, version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_in(conn: sqlite3.Connection, version: int) -> None:
    """Schema 1: the tables. Schema 2: one address space (a UNIQUE index on the address). A
    database that already holds one address twice (made before 2) gets no index and says so; the
    allocator keeps every address unique whatever the index."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return   # another call migrated it meanwhile
    for stmt in filter(str.strip, _SCHEMA.split(";")):
        conn.execute(stmt)
    dups = conn.execute("SELECT address, COUNT(*) FROM leases GROUP BY address HAVING COUNT(*) > 1").fetchall()
    if dups:   # the index cannot be made; the allocator still never leases an address again
        log.get().error("IPAM database holds addresses leased twice (made before one address space); "
                        "`multiplex ipam check` lists them, DEL of one holder fixes each",
                        addresses=[a for a, _ in dups])
    else:
        conn.execute(_UNIQUE_ADDRESS)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def spans_of_key(key: str) -> list[tuple[str, IPAddress, IPAddress]]:
    """(subnet, start, end) of each range of a RangeSet.key ("198.18.5.0/24 198.18.5.1-198.18.5.254;...")."""
    out = []
    for part in filter(None, key.split(";")):
        subnet, _, span = part.partition(" ")
        lo, _, hi = span.partition("-")
        out.append((subnet, ipaddress.ip_address(lo), ipaddress.ip_address(hi)))
    return out


def _lease(row: tuple) -> Lease:
    pool, addr, network, cid, ifname, ns, name, uid, created = row
    return Lease(pool=pool, address=ipaddress.ip_address(addr),
                 owner=Owner(cid, ifname, network, ns, name, uid), created=created)


def _order(lease: Lease) -> tuple:
    return (lease.address.version, lease.pool, int(lease.address))
