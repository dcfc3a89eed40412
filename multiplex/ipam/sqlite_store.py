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
"""
from __future__ import annotations

import functools
import ipaddress
import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Sequence

from .. import log
from ..cni.errors import CNIError, ADDRESS_UNAVAILABLE, IO_FAILURE, TRY_AGAIN_LATER
from ..cni.types import IPAddress, IPNetwork
from .allocator import Space, address as int_to_address
from .config import IPAMConfig, RangeSet, StoreLocation, default_data_dir
from .store import Lease, Owner, PoolUsage, Store

FILENAME = "leases.db"
SCHEMA_VERSION = 1
DEFAULT_TIMEOUT = 60.0

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
CREATE TABLE IF NOT EXISTS range_sets (
    key     TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    family  INTEGER NOT NULL,
    size    TEXT NOT NULL,     -- an IPv6 range outgrows SQLite's 64-bit INTEGER
    last    TEXT,
    updated REAL NOT NULL
);
"""
_COLUMNS = "pool, address, network, container_id, ifname, pod_namespace, pod_name, pod_uid, created"


def _db_errors(method):
    """sqlite3 errors as CNI errors: a busy database is 11 (try again), anything else 5 (I/O)."""
    @functools.wraps(method)
    def wrapper(self: "SQLiteStore", *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise CNIError(TRY_AGAIN_LATER, f"IPAM database is busy: {e}",
                               f"file: {self.path}; waited {self.timeout:g}s for the lock") from None
            raise CNIError(IO_FAILURE, f"IPAM database error: {e}", f"file: {self.path}") from None
        except sqlite3.Error as e:
            raise CNIError(IO_FAILURE, f"IPAM database error: {e}", f"file: {self.path}") from None
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot open the IPAM database: {e}", f"file: {self.path}") from None
    return wrapper


class SQLiteStore(Store):
    def __init__(self, data_dir: str, timeout: float = DEFAULT_TIMEOUT):
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, FILENAME)
        self.timeout = timeout
        self._conn: Optional[sqlite3.Connection] = None

    @classmethod
    def open(cls, where: IPAMConfig | StoreLocation) -> "SQLiteStore":
        return cls(where.data_dir or default_data_dir())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- connection and transactions -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        if not os.path.exists(self.path):  # created 0600: leases name every pod on the node
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(stmt)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the database's write lock is held from BEGIN to COMMIT."""
        db = self._connect()
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
        row = db.execute(f"SELECT {_COLUMNS} FROM leases WHERE pool = ? AND address = ?",
                         (str(r.subnet), str(ip))).fetchone()
        if row is not None:
            holder = _lease(row)
            raise CNIError(ADDRESS_UNAVAILABLE,
                           f"requested address {ip} is unavailable: already leased to {holder.owner.describe()}",
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
    def gc(self, network: str, keep: Iterable[tuple[str, str]]) -> list[Lease]:
        keep = set(keep)
        with self._txn() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM leases WHERE network = ?", (network,)).fetchall()
            gone = [lease for lease in map(_lease, rows)
                    if (lease.owner.container_id, lease.owner.ifname) not in keep]
            for lease in gone:
                self._delete(db, lease)
        return sorted(gone, key=_order)

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
        subnets = range_set.subnets
        marks = ",".join("?" * len(subnets))
        rows = db.execute(f"SELECT address FROM leases WHERE pool IN ({marks})", subnets)
        return {int(ipaddress.ip_address(a)) for (a,) in rows}

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
