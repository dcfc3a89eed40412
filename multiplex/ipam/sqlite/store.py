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

Never silently emptied: creating the database writes a marker beside it (`leases.db.init`); a
database that is not what the marker says is damaged, moved aside and rebuilt from the meta
plugin's cache (multiplex.ipam.sqlite.recovery), or refused with code 5 when the cache cannot
account for every attachment: `multiplex ipam check --repair --force` rebuilds from what there is.
The files, tables and migrations are multiplex.ipam.sqlite.schema.

In a warm process (the node daemon, after `pool.keep_open()`) the connection outlives the store:
`close()` gives it back to multiplex.ipam.sqlite.pool and the next store borrows it, checked only
against the file's identity; the open's checks above then run once per connection, not per call.
"""
from __future__ import annotations

import _socket
import functools
import ipaddress
import os
import sqlite3
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from ...util import log as _log
from ...cni.errors import CNIError, ADDRESS_UNAVAILABLE, IO_FAILURE, TRY_AGAIN_LATER
from ...cni.valid import Keep
from ...cni.types import IPAddress, IPNetwork
from ..allocator import Space, address as int_to_address
from ..config import IPAMConfig, RangeSet, StoreLocation, default_data_dir
from ..store import Lease, Owner, PoolUsage, Store, as_keep
from . import pool as _pool, recovery
from .recovery import Damaged
from .schema import COLUMNS, FILENAME, MARKER_SUFFIX, SCHEMA_VERSION, lease_of_row, lease_order, migrate

DEFAULT_TIMEOUT = 60.0

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
                self._spoil()
                if "locked" in str(e) or "busy" in str(e):
                    raise self._busy(e) from None
                raise CNIError(IO_FAILURE, f"IPAM database error: {e}", f"field: ipam.dataDir; file: {self.path}") from None
            except sqlite3.DatabaseError as e:
                self._spoil()
                if attempt == 2 or not _is_damage(e):
                    raise CNIError(IO_FAILURE, f"IPAM database error: {e}", f"field: ipam.dataDir; file: {self.path}") from None
                self.close()
                self.recover(f"SQLite reports: {e}")
            except sqlite3.Error as e:
                self._spoil()
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
                 cache_dir: Optional[str] = None, log: Optional[_log.Logger] = None):
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
        #: the call's logger (the process logger when the store serves no call)
        self.log = log or _log.get()
        self._conn: Optional[sqlite3.Connection] = None
        #: the connection with the file it was opened on, when it may be kept (pool.py); None
        #: when the file changed while it was opened, or SQLite raised an error on it
        self._kept: Optional[_pool.Kept] = None
        self._wait: tuple[float, float] = (0.0, 0.0)    # (monotonic start, budget) of the last lock wait

    @classmethod
    def open(cls, where: IPAMConfig | StoreLocation, deadline: Optional[float] = None,
             log: Optional[_log.Logger] = None) -> "SQLiteStore":
        """At the config's dataDir, else <state root>/ipam of the call's `where.state_dir`; the
        cache a rebuild reads is <state root>/cache of the same root."""
        from ...util import state

        cache_dir = os.path.join(state.root(where.state_dir), "cache") if where.state_dir else None
        return cls(where.data_dir or default_data_dir(where.state_dir), deadline=deadline, cache_dir=cache_dir,
                   log=log)

    def close(self) -> None:
        """Close the connection, or in a warm process give it back to the pool (pool.py)."""
        conn, kept = self._conn, self._kept
        self._conn = self._kept = None
        if kept is not None and kept.conn is conn:
            _pool.POOL.give(kept)
        elif conn is not None:
            conn.close()

    def _spoil(self) -> None:
        """SQLite raised on this connection: it is closed at close(), never kept."""
        self._kept = None

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
        kept = _pool.POOL.take(self.path)
        if kept is not None:   # open and checked already, on the file that is at the path now
            self._wait = (time.monotonic(), self.time_left())
            kept.conn.execute(f"PRAGMA busy_timeout = {int(self._wait[1] * 1000)}").fetchall()
            self._conn, self._kept = kept.conn, kept
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
        if not recovery.check_file(self.path, marked):
            if not create:
                return None
            # created 0600: leases name every pod on the node
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        before = _pool.name_identity(self.path) if _pool.POOL.enabled else None
        self._wait = (time.monotonic(), self.time_left())
        # check_same_thread=False: a kept connection may serve another worker thread next time
        conn = sqlite3.connect(self.path, timeout=self._wait[1], isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._wait[1] * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and marked:
                raise Damaged("the database has no tables, but the store was initialised here")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if version < SCHEMA_VERSION:
                migrate(conn, version, self.log)
        except sqlite3.DatabaseError as e:
            conn.close()
            if isinstance(e, sqlite3.OperationalError) and not _is_damage(e):
                raise
            raise Damaged(f"SQLite reports: {e}") from None
        except BaseException:
            conn.close()
            raise
        if not marked:
            recovery.write_marker(self.marker)
        if create and _pool.POOL.enabled:
            after = _pool.identity(self.path)
            # kept only when the file did not change while it was opened and checked
            self._kept = _pool.Kept.of(conn, self.path, after) if after is not None and after == before else None
        return conn

    def recover(self, reason: str, force: bool = False) -> str:
        """Move a damaged database aside and rebuild it from the cache (recovery.recover); returns
        where it went, "" when another call repaired it meanwhile."""
        return recovery.recover(self, reason, force)

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the database's write lock is held from BEGIN to COMMIT. The wait
        for the lock is what is left of the deadline (0 once it passed: try once, never wait)."""
        db = self._connect()
        budget = self.time_left()
        db.execute(f"PRAGMA busy_timeout = {int(budget * 1000)}").fetchall()
        self._wait = (time.monotonic(), budget)
        self.stats["txn"] += 1
        self._begin_immediate(db)
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _begin_immediate(self, db: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for the write lock (busy_timeout) within the deadline. SQLite
        answers some conflicts at once, without its busy handler (a WAL snapshot another
        connection moved past, SQLITE_BUSY_SNAPSHOT; a WAL being restarted): those are retried
        here after a short pause, from a clean state, until the deadline; real contention was
        already waited for by the busy handler.
        Which of the two happened is not told by the time an attempt took (on a loaded node a
        process may sleep far longer between the two answers than any fixed bound): the wait ends
        only when the budget is spent, and each retry's busy handler waits at most what is left."""
        pause = 0.005
        end = time.monotonic() + self.time_left()
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if end - time.monotonic() <= pause:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
                db.execute(f"PRAGMA busy_timeout = {int(max(0.0, end - time.monotonic()) * 1000)}").fetchall()

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
                self.log.warning("releasing a lease outside the current ranges", pool=lease.pool,
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
            found = [lease_of_row(r) for r in db.execute(f"SELECT {COLUMNS} FROM leases WHERE network = ?", (network,))]
        else:
            found = [lease_of_row(r) for r in db.execute(f"SELECT {COLUMNS} FROM leases")]
        return sorted(found, key=lease_order)

    @_db_errors
    def gc(self, network: str, keep: Keep) -> list[Lease]:
        """Exactly `network` (the namespaced name the plugin got), never a bare name's namesakes."""
        keep = as_keep(keep)
        with self._txn() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM leases WHERE network = ?", (network,)).fetchall()
            gone = [lease for lease in map(lease_of_row, rows)
                    if not keep.keeps(lease.owner.container_id, lease.owner.ifname)]
            for lease in gone:
                self._delete(db, lease)
        return sorted(gone, key=lease_order)

    @_db_errors
    def release_container(self, container_id: str) -> list[Lease]:
        with self._txn() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM leases WHERE container_id = ?", (container_id,)).fetchall()
            gone = [lease_of_row(r) for r in rows]
            for lease in gone:
                self._delete(db, lease)
        return sorted(gone, key=lease_order)

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
        leases = [lease_of_row(r) for r in db.execute(f"SELECT {COLUMNS} FROM leases")]
        out: list[PoolUsage] = []
        placed: set[tuple[str, str]] = set()
        rows = db.execute("SELECT key, name, family, size FROM range_sets ORDER BY family, name").fetchall()
        for key, name, family, size in rows:
            spans = spans_of_key(key)
            mine = [lease for lease in leases if any(lease.pool == subnet and lo <= lease.address <= hi
                                                     for subnet, lo, hi in spans)]
            placed.update((lease.pool, str(lease.address)) for lease in mine)
            out.append(PoolUsage(pool=name, family=family, size=int(size), leased=len(mine),
                                 leases=tuple(sorted(mine, key=lease_order))))
        stray: dict[str, list[Lease]] = {}
        for lease in leases:
            if (lease.pool, str(lease.address)) not in placed:
                stray.setdefault(lease.pool, []).append(lease)
        for pool, mine in sorted(stray.items()):
            out.append(PoolUsage(pool=pool, family=mine[0].address.version, size=None, leased=len(mine),
                                 leases=tuple(sorted(mine, key=lease_order))))
        return out

    # --- rows ------------------------------------------------------------------------------

    def _owner_leases(self, db: sqlite3.Connection, owner: Owner, family: Optional[int] = None) -> list[Lease]:
        sql = f"SELECT {COLUMNS} FROM leases WHERE network = ? AND container_id = ? AND ifname = ?"
        params: list = [owner.network, owner.container_id, owner.ifname]
        if family is not None:
            sql += " AND family = ?"
            params.append(family)
        return sorted((lease_of_row(r) for r in db.execute(sql, params)), key=lease_order)

    def _leased_ints(self, db: sqlite3.Connection, range_set: RangeSet) -> set[int]:
        """Every leased address inside the range set's subnets, whatever pool it was leased in
        (one address space: a /25 of another network's /24 shares its addresses)."""
        nets = [(int(r.subnet.network_address), int(r.subnet.broadcast_address)) for r in range_set.ranges]
        family = range_set.family
        rows = db.execute("SELECT address FROM leases WHERE family = ?", (family,))
        out = set()
        if len(nets) == 1:   # the common case, without a generator per lease
            (lo, hi), = nets
            for (a,) in rows:
                v = address_int(a, family)
                if lo <= v <= hi:
                    out.add(v)
            return out
        for (a,) in rows:
            v = address_int(a, family)
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


def address_int(text: str, family: int) -> int:
    """A stored address as an int. Every allocation reads every lease of its family, so this runs
    once per lease on the node: inet_pton (C) is ~10x faster than ipaddress' pure-Python parser
    (`_socket`, not `socket`: the C module alone, no enum/selectors to import). A text inet_pton
    refuses (never written by this store) goes through ipaddress, which says what is wrong."""
    try:
        return int.from_bytes(_socket.inet_pton(_socket.AF_INET if family == 4 else _socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        return int(ipaddress.ip_address(text))


def spans_of_key(key: str) -> list[tuple[str, IPAddress, IPAddress]]:
    """(subnet, start, end) of each range of a RangeSet.key ("198.18.5.0/24 198.18.5.1-198.18.5.254;...")."""
    out = []
    for part in filter(None, key.split(";")):
        subnet, _, span = part.partition(" ")
        lo, _, hi = span.partition("-")
        out.append((subnet, ipaddress.ip_address(lo), ipaddress.ip_address(hi)))
    return out
