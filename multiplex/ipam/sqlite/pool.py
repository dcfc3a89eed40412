"""Connections to the lease database kept open between calls, in a warm process only.

A one-shot CNI process opens the database, checks it (recovery.check_file, the marker, the schema
version, WAL mode) and closes it once per store it opens: that is its whole life. The node daemon
serves thousands of calls, and doing that per attachment is most of its IPAM time (and, on a busy
disk, the close's checkpoint). So the daemon turns this pool on (`keep_open()`, called by
`multiplex.ipam.store.warm`) and a store then borrows an open, already checked connection and gives
it back at `close()`. Nothing else changes: every change is still its own `BEGIN IMMEDIATE`
transaction committed with `synchronous = FULL`, so a lease is on disk before ADD goes on.

The checks of an open are done once per connection. Per call, a borrowed connection is checked
cheaply against the file behind the path (`identity`: one stat and the 16-byte header, read
through a descriptor that is never closed: `read_header` says why): a database
removed, truncated, overwritten or replaced behind our back (another process's repair, an admin's
restore) no longer matches the (st_dev, st_ino) the connection was opened on, so every idle
connection to it is dropped and the store opens the path afresh, through the full checks, where
the marker logic (recovery.py) finds the damage and repairs it as before.

Dropping a stale connection needs care. SQLite's close of the last connection to a WAL database
checkpoints the WAL into the file it was opened on and then deletes `<db>-wal` and `<db>-shm` *by
name*. Two cases would do harm: a file damaged in place (truncated, overwritten: the checkpoint
would write pages into it, masking part of the damage the full open must see), and a file moved
aside with its -wal/-shm (recovery.move_aside does) while a new database at the path has its own
-wal/-shm by now (deleting them under its open connections loses commits). So a stale connection
is closed only when its file was moved or removed and the -wal/-shm names are absent or still its
own (its WAL is then checkpointed into the old file and its own -wal/-shm removed: a database put
at the path must not read another's WAL); otherwise it is parked, open and unused, for the life of
the process (logged; it holds a damaged or moved database's descriptors, and damage is rare).
SQLite itself (3.22 and later) skips the close's checkpoint, and so the deletion, when the file it
opened has moved (SQLITE_FCNTL_HAS_MOVED); parking does not rely on that, and covers damage in
place, which SQLite cannot see.

What the identity check cannot see: a file rewritten in place with another valid database (`cp
backup leases.db` onto the live file keeps its inode). Between calls a warm process holds the WAL
and a page cache of the old content, as any long-lived SQLite user does, so restore a backup by
renaming it over the path (`mv`, a new inode), or with the daemon stopped. A one-shot process
holds nothing between calls.

Thread use: a connection is used by one thread at a time (the store that borrowed it), so it is
opened with check_same_thread=False and may serve another worker next time.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Optional

from ...util import log as _log
from .schema import HEADER

#: idle connections kept per database (the daemon's default worker count)
MAX_IDLE = 8

Identity = tuple[int, int]


def identity(path: str) -> Optional[Identity]:
    """(st_dev, st_ino) of the database file when it exists, is not empty and starts as SQLite's
    files do; None otherwise (the full open then says what is wrong)."""
    try:
        st = os.stat(path)
        if st.st_size == 0 or read_header(path, st) != HEADER:
            return None
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


#: one read-only descriptor per database file (by (st_dev, st_ino)), kept for the process's life
_header_fds: dict[Identity, int] = {}
_header_lock = threading.Lock()


def read_header(path: str, st: os.stat_result) -> bytes:
    """The first bytes of the database file `st` describes, read without ever closing a descriptor
    of it. Closing any descriptor of a file drops every POSIX record lock this process holds on it
    - the locks of all its open SQLite connections (sqlite.org/howtocorrupt.html, 2.2.1) - after
    which another process's close may checkpoint and delete the WAL under them: a warm process
    reading a stale snapshot, or losing commits. So the header is read through one descriptor per
    file, opened once and never closed (a handful per process: one per database file seen)."""
    key = (st.st_dev, st.st_ino)
    with _header_lock:
        fd = _header_fds.get(key)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            mine = os.fstat(fd)
            if (mine.st_dev, mine.st_ino) != key:   # replaced between the stat and the open: not kept
                try:
                    return os.pread(fd, len(HEADER), 0)
                finally:
                    os.close(fd)   # a file of which this process holds no connection yet
            _header_fds[key] = fd
    return os.pread(fd, len(HEADER), 0)


def name_identity(path: str) -> Optional[Identity]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class Kept:
    """One open connection and the files it was opened on."""
    conn: sqlite3.Connection
    path: str
    ident: Identity
    #: (st_dev, st_ino) of <db>-wal and <db>-shm when the connection was opened (None: absent)
    sidecars: tuple[Optional[Identity], Optional[Identity]] = field(default=(None, None))

    @classmethod
    def of(cls, conn: sqlite3.Connection, path: str, ident: Identity) -> "Kept":
        return cls(conn, path, ident, (name_identity(path + "-wal"), name_identity(path + "-shm")))


class Pool:
    """Idle connections per database path (see the module doc). Off until `enable()`."""

    def __init__(self, max_idle: int = MAX_IDLE):
        self.max_idle = max_idle
        self.enabled = False
        self._idle: dict[str, list[Kept]] = {}
        self._parked: list[Kept] = []
        self._lock = threading.Lock()
        #: connections borrowed again, given back, found stale, parked (for tests and profiles)
        self.stats = {"reused": 0, "stale": 0, "parked": 0, "returned": 0}

    def enable(self) -> None:
        self.enabled = True

    def take(self, path: str) -> Optional[Kept]:
        """An idle connection to the file at `path` as it is now, or None (open one afresh). Idle
        connections to a file no longer there are dropped first."""
        if not self.enabled:
            return None
        now = identity(path)
        with self._lock:
            idle = self._idle.get(path)
            if not idle:
                return None
            if now is None or idle[-1].ident != now:
                stale, self._idle[path] = idle, []
            else:
                self.stats["reused"] += 1
                return idle.pop()
        for kept in stale:
            self.drop(kept)
        return None

    def give(self, kept: Kept) -> bool:
        """Keep `kept` for the next call; False when it was closed instead (pool off or full, or
        a transaction left open). Whether the file changed meanwhile is `take`'s check, once."""
        if not self.enabled or kept.conn.in_transaction:
            self.drop(kept)
            return False
        with self._lock:
            idle = self._idle.setdefault(kept.path, [])
            if len(idle) < self.max_idle:
                idle.append(kept)
                self.stats["returned"] += 1
                return True
        self.drop(kept)
        return False

    def drop(self, kept: Kept) -> None:
        """Close a connection, the way that harms no database (see the module doc):

        - the file it was opened on is still at the path and healthy: an ordinary close;
        - that file was damaged in place (same inode, no longer a SQLite file): parked, since the
          close's checkpoint would write pages into it;
        - the file was moved or removed and the -wal/-shm names are absent or still its own: its
          WAL is checkpointed into the old file (where its commits belong), the connection closed,
          and its own -wal/-shm removed, so a database put at the path never reads them;
        - the -wal/-shm names belong to another database by now: parked, since SQLite's close
          would delete them by name."""
        if identity(kept.path) == kept.ident:
            close_quietly(kept.conn)
            return
        with self._lock:
            self.stats["stale"] += 1
        same_file = name_identity(kept.path) == kept.ident
        now = (name_identity(kept.path + "-wal"), name_identity(kept.path + "-shm"))
        if not same_file and all(n is None or n == was for n, was in zip(now, kept.sidecars)):
            try:
                kept.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            close_quietly(kept.conn)
            for suffix, was in zip(("-wal", "-shm"), kept.sidecars):
                if was is not None and name_identity(kept.path + suffix) == was:
                    try:
                        os.unlink(kept.path + suffix)
                    except OSError:
                        pass
            return
        with self._lock:
            self._parked.append(kept)
            self.stats["parked"] += 1
        _log.get().warning("IPAM database damaged or replaced while a connection to it was open: the "
                           "connection stays open unused (closing it would write into the damaged file "
                           "or delete another database's -wal/-shm)", file=kept.path)

    def close_all(self) -> None:
        """Close every idle connection (the daemon's stop, tests). Parked ones stay parked."""
        with self._lock:
            idle, self._idle = [k for ks in self._idle.values() for k in ks], {}
        for kept in idle:
            self.drop(kept)

    def idle(self, path: str) -> int:
        with self._lock:
            return len(self._idle.get(path, ()))


def close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass


#: the process's pool; off in a one-shot process
POOL = Pool()


def keep_open(max_idle: int = MAX_IDLE) -> Pool:
    """Turn connection reuse on for this process (the node daemon's start-up)."""
    POOL.max_idle = max_idle
    POOL.enable()
    return POOL
