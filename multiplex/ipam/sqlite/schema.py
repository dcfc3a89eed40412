"""The SQLite store's files and tables: names, the schema and its migrations, rows as leases.

Shared by the store (multiplex.ipam.sqlite.store) and its recovery (multiplex.ipam.sqlite.recovery),
which rebuilds a database with the same schema and salvages rows of a damaged one.
"""
from __future__ import annotations

import ipaddress
import sqlite3
from typing import Optional

from ...util import log as _log
from ..store import Lease, Owner

FILENAME = "leases.db"
MARKER_SUFFIX = ".init"          # leases.db.init: the store was initialised here
SCHEMA_VERSION = 2
HEADER = b"SQLite format 3\x00"  # the first bytes of every SQLite database file

SCHEMA = """
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
UNIQUE_ADDRESS = "CREATE UNIQUE INDEX IF NOT EXISTS leases_by_address ON leases (address)"
COLUMNS = "pool, address, network, container_id, ifname, pod_namespace, pod_name, pod_uid, created"


def migrate(conn: sqlite3.Connection, version: int, log: Optional[_log.Logger] = None) -> None:
    """Bring a database of schema `version` to SCHEMA_VERSION in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        migrate_in(conn, version, log)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def migrate_in(conn: sqlite3.Connection, version: int, log: Optional[_log.Logger] = None) -> None:
    """Schema 1: the tables. Schema 2: one address space (a UNIQUE index on the address). A
    database that already holds one address twice (made before 2) gets no index and says so; the
    allocator keeps every address unique whatever the index."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return   # another call migrated it meanwhile
    for stmt in filter(str.strip, SCHEMA.split(";")):
        conn.execute(stmt)
    dups = conn.execute("SELECT address, COUNT(*) FROM leases GROUP BY address HAVING COUNT(*) > 1").fetchall()
    if dups:   # the index cannot be made; the allocator still never leases an address again
        (log or _log.get()).error("IPAM database holds addresses leased twice (made before one address "
                                  "space); `multiplex ipam check` lists them, DEL of one holder fixes each",
                                  addresses=[a for a, _ in dups])
    else:
        conn.execute(UNIQUE_ADDRESS)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def lease_of_row(row: tuple) -> Lease:
    """A row of `SELECT {COLUMNS} FROM leases` as a Lease."""
    pool, addr, network, cid, ifname, ns, name, uid, created = row
    return Lease(pool=pool, address=ipaddress.ip_address(addr),
                 owner=Owner(cid, ifname, network, ns, name, uid), created=created)


def lease_order(lease: Lease) -> tuple:
    """How listings are ordered: family, pool, address."""
    return (lease.address.version, lease.pool, int(lease.address))
