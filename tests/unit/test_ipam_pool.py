"""The SQLite store in a warm process (the node daemon): connections kept open between calls.

What a user would check: leases made through kept connections are on disk and seen by a fresh
process-like open; a database removed, damaged or replaced behind the daemon's back is caught by
the same marker logic as a one-shot call (rebuilt from the cache, or code 5); a one-shot process
keeps nothing open.
"""
from __future__ import annotations

import ipaddress
import os
import sqlite3

import pytest

from multiplex.cni.context import CallContext
from multiplex.cni.errors import CNIError, IO_FAILURE
from multiplex.cni.request import Request
from multiplex.ipam import plugin as ipam_plugin
from multiplex.ipam import store as ipam_store
from multiplex.ipam.sqlite import pool
from multiplex.ipam.sqlite.store import FILENAME, SQLiteStore
from multiplex.ipam.store import Owner
from tests.concurrently import run_in_threads
from tests.unit.test_ipam_repair import DAMAGES, add_after_damage, damage_database, live_pod
from tests.unit.test_ipam_store import conf_of, take

BLUE = conf_of("blue", [[{"subnet": "198.18.90.0/24"}]])


@pytest.fixture
def warm(monkeypatch):
    """This process as the daemon: a pool of its own, on; every kept connection closed after."""
    p = pool.Pool()
    monkeypatch.setattr(pool, "POOL", p)
    p.enable()
    yield p
    p.close_all()
    for kept in p._parked:
        pool.close_quietly(kept.conn)


@pytest.fixture
def state(tmp_path, monkeypatch):
    root = tmp_path / "state"
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(root))
    return root


def on_disk(data_dir) -> list[str]:
    """The leases as another process sees them: its own connection, read-only."""
    conn = sqlite3.connect(f"file:{data_dir}/{FILENAME}?mode=ro", uri=True)
    try:
        return sorted(r[0] for r in conn.execute("SELECT address FROM leases"))
    finally:
        conn.close()


def test_a_kept_connection_serves_the_next_store_and_every_lease_is_on_disk(tmp_path, warm):
    d = str(tmp_path / "ipam")
    got = []
    for i in range(3):
        with SQLiteStore(d) as s:
            got.append(str(take(s, BLUE, Owner(f"c{i}", "eth0", "blue")).address))
    assert warm.stats["reused"] == 2 and warm.idle(os.path.join(d, FILENAME)) == 1
    assert on_disk(d) == sorted(got) == ["198.18.90.2", "198.18.90.3", "198.18.90.4"]
    with SQLiteStore(d) as s:   # as durable as a one-shot open: WAL, synchronous FULL (2)
        db = s._connect()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_one_shot_process_keeps_nothing_open(tmp_path, monkeypatch):
    p = pool.Pool()
    monkeypatch.setattr(pool, "POOL", p)
    d = str(tmp_path / "ipam")
    with SQLiteStore(d) as s:
        take(s, BLUE, Owner("c1", "eth0", "blue"))
    assert p.idle(os.path.join(d, FILENAME)) == 0 and p.stats["returned"] == 0


def test_keeping_is_the_daemon_s_start_up_choice_not_a_call_s(tmp_path, monkeypatch):
    """A call carrying services does not turn the pool on (an in-process caller with services is
    not necessarily a warm process); the daemon's start-up (ipam.store.warm) does, and then the
    call's connection is kept."""
    p = pool.Pool()
    monkeypatch.setattr(pool, "POOL", p)

    class Services:   # what the daemon lends its calls (cni/context.py Services)
        def source(self, conf):
            return None

        def observe_plugin(self, *a):
            pass

    def add(cid: str):
        conf = {"cniVersion": "1.1.0", "name": "blue", "type": "multiplex-bridge",
                "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.91.0/24"}]]}}
        req = Request(command="ADD", container_id=cid, netns="/var/run/netns/x", ifname="eth0",
                      args={}, path=[], config=conf, ctx=CallContext(state_dir=str(tmp_path), services=Services()))
        return ipam_plugin.plugin.add(req)

    assert str(add("c1").ips[0].address) == "198.18.91.2/24"
    assert not p.enabled and p.idle(os.path.join(str(tmp_path), "ipam", FILENAME)) == 0
    ipam_store.warm(str(tmp_path))
    assert str(add("c2").ips[0].address) == "198.18.91.3/24"
    assert p.enabled and p.idle(os.path.join(str(tmp_path), "ipam", FILENAME)) == 1
    p.close_all()


def test_warm_opens_an_existing_database_and_never_creates_one(tmp_path, monkeypatch):
    p = pool.Pool()
    monkeypatch.setattr(pool, "POOL", p)
    ipam_store.warm(str(tmp_path))
    assert p.enabled and not os.path.exists(tmp_path / "ipam" / FILENAME)
    with SQLiteStore(str(tmp_path / "ipam")) as s:
        take(s, BLUE, Owner("c1", "eth0", "blue"))
    p.close_all()
    ipam_store.warm(str(tmp_path))
    assert p.idle(str(tmp_path / "ipam" / FILENAME)) == 1
    p.close_all()


@pytest.mark.parametrize("damage", DAMAGES)
def test_damage_behind_a_kept_connection_is_rebuilt_from_the_cache(state, warm, damage):
    """As tests/unit/test_ipam_repair.py's one-shot case, with the daemon's connection kept."""
    held = live_pod(state)
    assert warm.idle(str(state / "ipam" / FILENAME)) == 1
    damage_database(state, damage)
    add_after_damage(state, held, damage)
    assert warm.stats["stale"] == 1
    # damage in place: the old connection is parked, never closed into the damaged file
    assert warm.stats["parked"] == (0 if damage == "delete" else 1)


def test_removed_without_a_cache_is_code_5_as_in_a_one_shot_call(tmp_path, warm):
    d = tmp_path / "state" / "ipam"
    with SQLiteStore(str(d), cache_dir=str(tmp_path / "state" / "cache")) as s:
        take(s, BLUE, Owner("c1", "eth0", "blue"))
    os.unlink(d / FILENAME)
    with pytest.raises(CNIError) as e:
        with SQLiteStore(str(d), cache_dir=str(tmp_path / "state" / "cache")) as s:
            take(s, BLUE, Owner("c2", "eth0", "blue"))
    assert e.value.code == IO_FAILURE and "missing" in e.value.msg


def test_a_database_replaced_behind_a_kept_connection_is_the_one_read(tmp_path, warm):
    """An admin restores another database over the path (a new inode): the next call reads it,
    not the old file the kept connection was opened on."""
    d = tmp_path / "ipam"
    with SQLiteStore(str(d)) as s:
        take(s, BLUE, Owner("old", "eth0", "blue"))
    other = tmp_path / "other"
    with SQLiteStore(str(other)) as s:
        take(s, BLUE, Owner("a", "eth0", "blue"))
        take(s, BLUE, Owner("b", "eth0", "blue"))
    src, dst = sqlite3.connect(other / FILENAME), sqlite3.connect(d / (FILENAME + ".new"))
    src.backup(dst)   # a consistent copy (its leases may still be in its WAL)
    src.close()
    dst.close()
    os.replace(d / (FILENAME + ".new"), d / FILENAME)
    with SQLiteStore(str(d)) as s:
        assert sorted(x.owner.container_id for x in s.leases()) == ["a", "b"]
        take(s, BLUE, Owner("c", "eth0", "blue"))
    assert warm.stats["stale"] == 1
    assert on_disk(d) == ["198.18.90.2", "198.18.90.3", "198.18.90.4"]


def test_a_replacement_with_live_wal_files_is_never_deleted_by_the_stale_close(tmp_path, warm):
    """Moved aside with its -wal/-shm (as recovery does), a new database at the path opened by
    another process: dropping the stale connection must not delete the new -wal/-shm."""
    d = tmp_path / "ipam"
    with SQLiteStore(str(d)) as s:
        take(s, BLUE, Owner("old", "eth0", "blue"))
    db = str(d / FILENAME)
    for suffix in ("", "-wal", "-shm"):
        os.rename(db + suffix, db + ".aside" + suffix)
    # another process's database at the path, open, its commit still in its WAL
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("PRAGMA journal_mode = WAL")
    other.execute("PRAGMA wal_autocheckpoint = 0")
    other.execute("CREATE TABLE t (x)")
    other.execute("INSERT INTO t VALUES (42)")
    wal = os.stat(db + "-wal").st_ino
    try:
        assert warm.take(db) is None                  # stale: dropped
        assert warm.stats["stale"] == 1
        assert os.stat(db + "-wal").st_ino == wal      # the new database's WAL is still there
        fresh = sqlite3.connect(db)
        assert fresh.execute("SELECT x FROM t").fetchall() == [(42,)]
        fresh.close()
    finally:
        other.close()


def test_an_error_on_a_connection_is_never_kept(tmp_path, warm):
    d = str(tmp_path / "ipam")
    with SQLiteStore(d) as s:
        take(s, BLUE, Owner("c1", "eth0", "blue"))
    s = SQLiteStore(d)
    s._connect()
    s._spoil()          # what _db_errors does when SQLite raises
    s.close()
    assert warm.idle(os.path.join(d, FILENAME)) == 0


def test_threads_sharing_kept_connections_never_lease_an_address_twice(tmp_path, warm):
    d = str(tmp_path / "ipam")
    got: list[str] = []

    def worker(n: int) -> None:
        for i in range(10):
            with SQLiteStore(d) as s:
                got.append(str(take(s, BLUE, Owner(f"t{n}-{i}", "eth0", "blue")).address))

    errors = run_in_threads(worker, 8)
    assert not errors
    assert len(got) == 80 and len(set(got)) == 80
    assert sorted(got, key=ipaddress.ip_address) == sorted(on_disk(d), key=ipaddress.ip_address)
    assert warm.idle(os.path.join(d, FILENAME)) <= pool.MAX_IDLE


def test_a_database_moved_away_keeps_its_commits_and_leaves_no_wal_at_the_path(tmp_path, warm):
    """Only leases.db renamed (its -wal/-shm left at the path): the kept connection's commits are
    checkpointed into the moved file, and its -wal/-shm never meet a database put at the path."""
    d = tmp_path / "ipam"
    with SQLiteStore(str(d)) as s:
        take(s, BLUE, Owner("c1", "eth0", "blue"))
    db = str(d / FILENAME)
    assert os.path.getsize(db + "-wal") > 0        # the commit is in the WAL, not yet in the file
    os.rename(db, db + ".moved")
    assert warm.take(db) is None
    assert not os.path.exists(db + "-wal") and not os.path.exists(db + "-shm")
    conn = sqlite3.connect(f"file:{db}.moved?mode=ro&immutable=1", uri=True)   # the file alone
    try:
        assert [r[0] for r in conn.execute("SELECT address FROM leases")] == ["198.18.90.2"]
    finally:
        conn.close()


def test_leases_made_through_kept_connections_survive_the_daemon_being_killed(tmp_path):
    """The daemon killed (SIGKILL) with its connections open, its commits only in the WAL: a
    one-shot open afterwards finds every lease (each commit is synced; nothing waits for close)."""
    import signal
    import subprocess
    import sys

    d = str(tmp_path / "ipam")
    code = f"""
import os, signal
from multiplex.ipam.sqlite import pool
from multiplex.ipam.sqlite.store import SQLiteStore
from multiplex.ipam.store import Owner
from tests.unit.test_ipam_store import conf_of, take
pool.keep_open()
conf = conf_of("blue", [[{{"subnet": "198.18.92.0/24"}}]])
for i in range(5):
    with SQLiteStore({d!r}) as s:
        take(s, conf, Owner(f"c{{i}}", "eth0", "blue"))
assert os.path.getsize({d!r} + "/leases.db-wal") > 0
os.kill(os.getpid(), signal.SIGKILL)
"""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    with SQLiteStore(d) as s:
        assert sorted(x.owner.container_id for x in s.leases()) == [f"c{i}" for i in range(5)]


def test_another_process_s_change_is_seen_through_a_kept_connection(tmp_path, warm):
    """The per-call check reads the file's header without ever closing a descriptor of it: a
    close would drop the POSIX locks of this process's open connections, and another process's
    close would then checkpoint and delete the WAL under them (a stale snapshot here, commits lost)."""
    import subprocess
    import sys

    d = str(tmp_path / "ipam")
    with SQLiteStore(d) as s:
        take(s, BLUE, Owner("c1", "eth0", "blue"))
        take(s, BLUE, Owner("c2", "eth0", "blue"))
    with SQLiteStore(d) as s:          # a kept connection, checked per call
        assert len(s.leases()) == 2
    script = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
              "c.execute(\"DELETE FROM leases WHERE container_id = 'c1'\"); c.close()")
    subprocess.run([sys.executable, "-c", script, os.path.join(d, FILENAME)], check=True)
    assert os.path.exists(os.path.join(d, FILENAME + "-wal"))   # our connection still holds it
    with SQLiteStore(d) as s:
        assert [lease.owner.container_id for lease in s.leases()] == ["c2"]
    assert len(on_disk(d)) == 1
