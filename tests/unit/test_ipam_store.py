"""The SQLite lease store: one file per node, shared by every network, atomic per call."""
from __future__ import annotations

import os
import sqlite3
import stat
import time

import pytest

from multiplex.cni.errors import ADDRESS_UNAVAILABLE, IPAM_EXHAUSTED, TRY_AGAIN_LATER, CNIError
from multiplex.ipam import config
from multiplex.ipam.sqlite.store import FILENAME, SQLiteStore
from multiplex.ipam.store import Owner, open_store
from tests.ipam_contract import check_gc_keeps_whole_containers_of_its_network_only, take


def conf_of(network: str, ranges: list, exclude=(), data_dir: str = "") -> config.IPAMConfig:
    ipam = {"type": "multiplex-ipam", "ranges": ranges, "exclude": list(exclude)}
    if data_dir:
        ipam["dataDir"] = data_dir
    return config.parse({"name": network, "ipam": ipam})


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(str(tmp_path / "ipam"))
    yield s
    s.close()


def owner(cid: str, ifname: str = "eth0", network: str = "blue", **pod) -> Owner:
    return Owner(cid, ifname, network, **pod)


BLUE = conf_of("blue", [[{"subnet": "198.18.5.0/29"}]])


def test_addresses_in_order_and_unique(store):
    got = [take(store, BLUE, owner(f"c{i}")) for i in range(5)]
    assert [str(lease.address) for lease in got] == ["198.18.5.2", "198.18.5.3", "198.18.5.4", "198.18.5.5",
                                                       "198.18.5.6"]
    assert all(lease.fresh and lease.pool == "198.18.5.0/29" for lease in got)


def test_add_is_idempotent_per_container_interface_and_network(store):
    first = take(store, BLUE, owner("c1"))
    again = take(store, BLUE, owner("c1"))
    assert again.address == first.address and not again.fresh
    other_if = take(store, BLUE, owner("c1", "net1"))
    assert other_if.address != first.address
    assert len(store.leases()) == 2


def test_two_networks_sharing_a_pool_never_get_the_same_address(store):
    red = conf_of("red", [[{"subnet": "198.18.5.0/29"}]])
    a = take(store, BLUE, owner("c1", network="blue"))
    b = take(store, red, owner("c1", network="red"))  # same container and ifname, other network
    assert a.address != b.address
    # a slice of the same subnet is the same pool too
    green = conf_of("green", [[{"subnet": "198.18.5.0/29", "rangeStart": "198.18.5.2", "rangeEnd": "198.18.5.4"}]])
    c = take(store, green, owner("c2", network="green"))
    assert str(c.address) == "198.18.5.4"
    with pytest.raises(CNIError) as e:
        take(store, green, owner("c3", network="green"))
    assert e.value.code == IPAM_EXHAUSTED
    assert "pool 198.18.5.0/29 (198.18.5.2-198.18.5.4) exhausted: 3 of 3 leased" == e.value.msg


def test_exhaustion_names_the_pool(store):
    for i in range(5):
        take(store, BLUE, owner(f"c{i}"))
    with pytest.raises(CNIError) as e:
        take(store, BLUE, owner("c5"))
    assert e.value.code == IPAM_EXHAUSTED
    assert e.value.msg == "pool 198.18.5.0/29 exhausted: 5 of 5 leased"
    assert "network: blue" in e.value.details
    assert len(store.leases()) == 5


def test_requested_address_is_honoured(store):
    lease = take(store, BLUE, owner("c1"), requested="198.18.5.5")
    assert str(lease.address) == "198.18.5.5"
    # the dynamic order is not moved by a requested address
    assert str(take(store, BLUE, owner("c2")).address) == "198.18.5.2"
    # asking again for what one holds is fine
    assert take(store, BLUE, owner("c1"), requested="198.18.5.5").address == lease.address


def test_requested_address_taken_never_names_the_holder(store):
    """Error 103 says the address is in use, never whose: the holder may be another tenant's pod."""
    take(store, BLUE, owner("c1", pod_namespace="tenant-a", pod_name="p1"), requested="198.18.5.5")
    with pytest.raises(CNIError) as e:
        take(store, BLUE, owner("c2"), requested="198.18.5.5")
    assert e.value.code == ADDRESS_UNAVAILABLE
    assert e.value.msg == "requested address 198.18.5.5 is unavailable: in use by another attachment"
    assert "tenant-a" not in e.value.msg + e.value.details and "c1" not in e.value.msg + e.value.details
    assert "field: $.runtimeConfig.ips[0]" in e.value.details


def test_requested_address_taken_in_another_network_of_the_pool(store):
    take(store, BLUE, owner("c1"), requested="198.18.5.5")
    red = conf_of("red", [[{"subnet": "198.18.5.0/29"}]])
    with pytest.raises(CNIError) as e:
        take(store, red, owner("c9", network="red"), requested="198.18.5.5")
    assert e.value.code == ADDRESS_UNAVAILABLE and "in use by another attachment" in e.value.msg


@pytest.mark.parametrize("address,words", [
    ("198.18.5.1", "gateway"),
    ("198.18.5.3", "excluded by 198.18.5.3/32"),
    ("198.18.6.3", "outside pool"),
    ("198.18.5.7", "broadcast"),
])
def test_requested_address_not_allocatable(store, address, words):
    conf = conf_of("blue", [[{"subnet": "198.18.5.0/29"}]], exclude=["198.18.5.3"])
    with pytest.raises(CNIError) as e:
        take(store, conf, owner("c1"), requested=address)
    assert e.value.code == ADDRESS_UNAVAILABLE and words in e.value.msg
    assert store.leases() == []


def test_requested_address_other_than_the_held_one(store):
    take(store, BLUE, owner("c1"))
    with pytest.raises(CNIError) as e:
        take(store, BLUE, owner("c1"), requested="198.18.5.6")
    assert e.value.code == ADDRESS_UNAVAILABLE and "already holds 198.18.5.2" in e.value.msg


def test_release_is_idempotent_and_frees_the_address(store):
    dual = conf_of("blue", [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/64"}]])
    take(store, dual, owner("c1"))
    take(store, dual, owner("c1"), n=1)
    take(store, dual, owner("c2"))
    gone = store.release(owner("c1"))
    assert sorted(str(lease.address) for lease in gone) == ["198.18.5.2", "fd00:5::2"]
    assert store.release(owner("c1")) == []
    assert store.release(owner("never")) == []
    assert [str(lease.address) for lease in store.leases()] == ["198.18.5.3"]
    # next after the last handed out (.3), not the freed .2 first; then wrap
    assert [str(take(store, dual, owner(f"n{i}")).address) for i in range(4)] == \
        ["198.18.5.4", "198.18.5.5", "198.18.5.6", "198.18.5.2"]


def test_release_only_touches_its_own_network(store):
    red = conf_of("red", [[{"subnet": "198.18.6.0/29"}]])
    take(store, BLUE, owner("c1", network="blue"))
    take(store, red, owner("c1", network="red"))
    store.release(owner("c1", network="blue"))
    assert [lease.owner.network for lease in store.leases()] == ["red"]


def test_gc_releases_attachments_that_are_gone(store):
    red = conf_of("red", [[{"subnet": "198.18.6.0/29"}]])
    take(store, BLUE, owner("keep"))
    take(store, BLUE, owner("keep", "net1"))
    take(store, BLUE, owner("gone"))
    take(store, red, owner("gone", network="red"))
    released = store.gc("blue", {("keep", "eth0")})
    assert sorted((lease.owner.container_id, lease.owner.ifname) for lease in released) == [("gone", "eth0"),
                                                                                             ("keep", "net1")]
    left = {(lease.owner.network, lease.owner.container_id, lease.owner.ifname) for lease in store.leases()}
    assert left == {("blue", "keep", "eth0"), ("red", "gone", "eth0")}
    assert store.gc("blue", {("keep", "eth0")}) == []


def test_dual_stack_and_ipv6(store):
    dual = conf_of("blue", [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/120"}]])
    v4 = take(store, dual, owner("c1"))
    v6 = take(store, dual, owner("c1"), n=1)
    assert (str(v4.address), str(v6.address)) == ("198.18.5.2", "fd00:5::2")
    assert take(store, dual, owner("c1"), n=1).address == v6.address
    assert {lease.address.version for lease in store.leases(owner=owner("c1"))} == {4, 6}


def test_lease_from_an_older_config_is_replaced(store):
    take(store, BLUE, owner("c1"))
    moved = conf_of("blue", [[{"subnet": "198.18.7.0/29"}]])
    lease = take(store, moved, owner("c1"))
    assert str(lease.address) == "198.18.7.2" and lease.fresh
    assert [str(x.address) for x in store.leases()] == ["198.18.7.2"]


def test_usage_and_pools(store):
    for i in range(3):
        take(store, BLUE, owner(f"c{i}"))
    usage = store.usage(BLUE.range_sets[0], BLUE.exclude)
    assert (usage.pool, usage.size, usage.leased, usage.free) == ("198.18.5.0/29", 5, 3, 2)
    v6 = conf_of("violet", [[{"subnet": "fd00:5::/64"}]])
    take(store, v6, owner("c1", network="violet"))
    pools = {p.pool: p for p in store.pools()}
    assert pools["198.18.5.0/29"].leased == 3 and pools["198.18.5.0/29"].free == 2
    assert pools["fd00:5::/64"].size == 2 ** 64 - 2 and len(pools["fd00:5::/64"].leases) == 1
    d = pools["198.18.5.0/29"].to_dict(with_leases=True)
    assert d["used"] == 3 and d["leases"][0]["containerID"] == "c0" and d["leases"][0]["address"] == "198.18.5.2"


def test_database_file_is_private_and_in_wal_mode(store):
    take(store, BLUE, owner("c1"))
    path = os.path.join(store.data_dir, FILENAME)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.data_dir).st_mode) == 0o700
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT address, network, container_id, ifname FROM leases").fetchall() == \
            [("198.18.5.2", "blue", "c1", "eth0")]
    finally:
        con.close()


def test_a_busy_database_is_try_again_later(tmp_path):
    store = SQLiteStore(str(tmp_path / "ipam"), timeout=0.2)
    take(store, BLUE, owner("c1"))
    store.close()
    holder = sqlite3.connect(os.path.join(store.data_dir, FILENAME), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of an allocation
    try:
        with pytest.raises(CNIError) as e:
            take(store, BLUE, owner("c2"))
        assert e.value.code == TRY_AGAIN_LATER and FILENAME in e.value.details
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()
    assert str(take(store, BLUE, owner("c2")).address) == "198.18.5.3"
    store.close()


def test_an_unusable_data_dir_is_an_io_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SQLiteStore(str(blocker / "ipam"))
    with pytest.raises(CNIError) as e:
        take(store, BLUE, owner("c1"))
    assert e.value.code == 5 and str(blocker) in e.value.details


def test_open_store_uses_the_state_dir_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(tmp_path / "state"))
    with open_store(BLUE) as s:
        take(s, BLUE, owner("c1"))
    assert os.path.isfile(tmp_path / "state" / "ipam" / FILENAME)
    conf = conf_of("blue", [[{"subnet": "198.18.5.0/29"}]], data_dir=str(tmp_path / "elsewhere"))
    with open_store(conf) as s:
        assert s.leases() == []


# --- one address space ---------------------------------------------------------------------

def test_overlapping_but_different_subnets_share_one_address_space(store):
    """A /24 on one network and a /25 of it on another never hand one address to two interfaces."""
    wide = conf_of("tenant-a.wide", [[{"subnet": "198.18.72.0/24"}]])
    half = conf_of("tenant-b.half", [[{"subnet": "198.18.72.0/25"}]])
    got = []
    for i in range(4):
        got.append(take(store, wide, owner(f"p{i}", "eth0", "tenant-a.wide")))
        got.append(take(store, half, owner(f"p{i}", "net1", "tenant-b.half")))
    addresses = [str(lease.address) for lease in got]
    assert len(set(addresses)) == len(addresses) == 8
    assert {lease.pool for lease in got} == {"198.18.72.0/24", "198.18.72.0/25"}


def test_a_requested_address_held_in_an_overlapping_pool_is_103(store):
    wide = conf_of("wide", [[{"subnet": "198.18.72.0/24"}]])
    half = conf_of("half", [[{"subnet": "198.18.72.0/25"}]])
    take(store, wide, owner("a", network="wide"), requested="198.18.72.9")
    with pytest.raises(CNIError) as e:
        take(store, half, owner("b", "net1", "half"), requested="198.18.72.9")
    assert e.value.code == ADDRESS_UNAVAILABLE and "in use by another attachment" in e.value.msg


def test_an_overlapping_pool_counts_the_other_networks_leases_when_exhausted(store):
    wide = conf_of("wide", [[{"subnet": "198.18.72.0/29"}]])      # .2-.6 (the gateway is .1)
    tail = conf_of("tail", [[{"subnet": "198.18.72.0/29", "rangeStart": "198.18.72.5"}]])
    for i in range(3):
        take(store, wide, owner(f"w{i}", network="wide"))           # .2 .3 .4
    take(store, tail, owner("t0", network="tail"))                   # .5
    take(store, wide, owner("w3", network="wide"))                   # .6: skips .5
    with pytest.raises(CNIError) as e:
        take(store, tail, owner("t1", network="tail"))
    assert e.value.code == IPAM_EXHAUSTED


def test_schema_2_refuses_a_second_row_for_one_address(store):
    take(store, BLUE, owner("c1"))
    con = sqlite3.connect(os.path.join(store.data_dir, FILENAME))
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 2
        with pytest.raises(sqlite3.IntegrityError):
            con.execute("INSERT INTO leases (pool, address, family, network, container_id, ifname, created) "
                        "VALUES ('198.18.5.0/25', '198.18.5.2', 4, 'other', 'c9', 'eth0', 0)")
    finally:
        con.close()


# --- one deadline --------------------------------------------------------------------------

def test_the_undo_of_a_failed_add_never_waits_past_the_deadline(tmp_path, monkeypatch):
    """Dual stack: v4 is leased, then the lock is held by another process before v6. The ADD
    waits for what is left of its deadline once; the undo of the v4 lease does not wait again (the
    lease stays the container's for DEL to free), and the message states the wait."""
    import time

    from multiplex.cni.request import Request
    from multiplex.ipam.plugin import plugin

    data_dir = str(tmp_path / "ipam")
    conf = {"cniVersion": "1.1.0", "name": "blue", "type": "x",
            "ipam": {"type": "multiplex-ipam", "dataDir": data_dir,
                     "ranges": [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/120"}]]}}
    holder = {}
    stores = []
    real = SQLiteStore.allocate

    def allocate_then_lock(self, *args, **kwargs):
        stores.append(self)
        lease = real(self, *args, **kwargs)
        if "con" not in holder:             # another process starts a long transaction
            holder["con"] = sqlite3.connect(self.path, isolation_level=None)
            holder["con"].execute("BEGIN IMMEDIATE")
        return lease

    monkeypatch.setattr(SQLiteStore, "allocate", allocate_then_lock)
    req = Request(command="ADD", container_id="c1", ifname="eth0", config=conf,
                  deadline=time.monotonic() + 0.4)
    try:
        with pytest.raises(CNIError) as e:
            plugin.add(req)
    finally:
        holder["con"].execute("ROLLBACK")
        holder["con"].close()
    assert e.value.code == TRY_AGAIN_LATER
    assert e.value.msg.startswith("IPAM database is busy: waited ") and "the call's deadline" in e.value.msg
    store = stores[0]
    assert store.stats["busy"] == 2          # the v6 allocation and the undo of the v4 lease
    assert store.stats["waited"] == 1        # only the first one waited: the undo found no time left
    monkeypatch.setattr(SQLiteStore, "allocate", real)
    with SQLiteStore(data_dir) as s:          # the v4 lease stays the container's ...
        assert [(lease.owner.container_id, lease.address.version) for lease in s.leases()] == [("c1", 4)]
    plugin.delete(Request(command="DEL", container_id="c1", ifname="eth0", config=conf))
    with SQLiteStore(data_dir) as s:          # ... and DEL frees it
        assert s.leases() == []


def test_without_a_deadline_each_wait_is_the_stores_timeout(tmp_path):
    store = SQLiteStore(str(tmp_path / "ipam"), timeout=0.1)
    take(store, BLUE, owner("c1"))
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(CNIError) as e:
            take(store, BLUE, owner("c2"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()
    assert "the lock timeout: 0.1s" in e.value.msg and store.stats["waited"] == 1


# --- sweep and GC --------------------------------------------------------------------------

def test_release_container_frees_every_network_and_interface(store):
    red = conf_of("red", [[{"subnet": "198.18.6.0/29"}]])
    take(store, BLUE, owner("gone"))
    take(store, red, owner("gone", "net1", "red"))
    take(store, BLUE, owner("stays"))
    assert len(store.release_container("gone")) == 2
    assert [lease.owner.container_id for lease in store.leases()] == ["stays"]
    assert store.release_container("gone") == []


def test_gc_keeps_whole_containers_and_matches_the_network_exactly(store):
    check_gc_keeps_whole_containers_of_its_network_only(
        store, conf_of("tenant-a.blue", [[{"subnet": "198.18.5.0/29"}]]),
        conf_of("tenant-b.blue", [[{"subnet": "198.18.6.0/29"}]]))


def test_a_schema_1_database_with_an_address_leased_twice_keeps_working(tmp_path):
    """Made before one address space: the same address in a /24 and a /25 pool. The upgrade keeps
    both rows (DEL of one holder ends it), and no third holder ever gets that address."""
    d = tmp_path / "ipam"
    d.mkdir()
    con = sqlite3.connect(str(d / FILENAME), isolation_level=None)
    from multiplex.ipam.sqlite.schema import SCHEMA as _SCHEMA

    for stmt in filter(str.strip, _SCHEMA.split(";")):
        con.execute(stmt)
    for pool, net, cid in (("198.18.72.0/24", "wide", "a"), ("198.18.72.0/25", "half", "a")):
        con.execute("INSERT INTO leases (pool, address, family, network, container_id, ifname, created) "
                    "VALUES (?, '198.18.72.2', 4, ?, ?, 'eth0', 0)", (pool, net, cid))
    con.execute("PRAGMA user_version = 1")
    con.close()
    with SQLiteStore(str(d)) as s:
        assert len(s.leases()) == 2
        half = conf_of("half", [[{"subnet": "198.18.72.0/25"}]])
        assert str(take(s, half, owner("b", network="half")).address) == "198.18.72.3"
        with pytest.raises(CNIError):
            take(s, half, owner("c", network="half"), requested="198.18.72.2")
    from multiplex.ipam import repair

    (tmp_path / "cache").mkdir()
    with SQLiteStore(str(d), cache_dir=str(tmp_path / "cache")) as s:
        report = repair.check(s)
    assert report.problems == ["address 198.18.72.2 is leased 2 times (made before one address space): "
                               "DEL of all but one holder ends it"]


# ---- BEGIN IMMEDIATE answered "locked" -----------------------------------------------------------
class _LockedAtFirst:
    """A connection whose BEGIN IMMEDIATE answers "database is locked" `times` times, each answer
    `slow` seconds late (a loaded node: the process slept between the two answers), then works."""

    def __init__(self, times: int, slow: float):
        self.times, self.slow, self.begins, self.in_transaction = times, slow, 0, False

    def execute(self, sql: str):
        if sql == "BEGIN IMMEDIATE":
            self.begins += 1
            if self.begins <= self.times:
                time.sleep(self.slow)
                raise sqlite3.OperationalError("database is locked")
        return self

    def fetchall(self):
        return []


def test_a_slow_locked_answer_is_retried_within_the_deadline(tmp_path):
    """A "locked" answer is retried until the deadline, however long the attempt took: the old
    rule (an attempt over 50 ms meant the busy handler had waited) gave up after 0.1 s when 50
    parallel ADDs loaded the node."""
    store = SQLiteStore(str(tmp_path), deadline=time.monotonic() + 5.0)
    db = _LockedAtFirst(times=3, slow=0.1)
    store._begin_immediate(db)
    assert db.begins == 4


def test_locked_until_the_deadline_gives_up_at_the_deadline(tmp_path):
    store = SQLiteStore(str(tmp_path), deadline=time.monotonic() + 0.5)
    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError):
        store._begin_immediate(_LockedAtFirst(times=10 ** 6, slow=0.0))
    assert time.monotonic() - t0 >= 0.4
