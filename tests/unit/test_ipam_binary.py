"""The `multiplex-ipam` binary, exec'd as a runtime or a parent plugin would (tests/cnitool.py).

No root needed: an IPAM plugin touches no network, only its lease database (a tmp dataDir here).
"""
from __future__ import annotations

import ipaddress
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from multiplex.cni import errors
from multiplex.ipam.sqlite.store import SQLiteStore
from tests.cnitool import BIN, run_plugin

EXE = os.path.join(BIN, "multiplex-ipam")

pytestmark = pytest.mark.skipif(not os.access(EXE, os.X_OK), reason=f"{EXE} is not installed (pip install -e .)")


def netconf(data_dir, ranges, version="1.1.0", name="blue", **extra) -> dict:
    return {"cniVersion": version, "name": name, "type": "macvlan",
            "ipam": {"type": "multiplex-ipam", "ranges": ranges, "dataDir": str(data_dir), **extra}}


def lease_count(data_dir) -> int:
    with SQLiteStore(str(data_dir)) as s:
        return len(s.leases())


def test_version():
    out = run_plugin(EXE, "VERSION", {}, ifname="")
    assert out.ok and "1.1.0" in out.out["supportedVersions"] and "0.3.1" in out.out["supportedVersions"]


def test_add_del_through_the_binary(tmp_path):
    conf = netconf(tmp_path, [[{"subnet": "198.18.8.0/24", "rangeStart": "198.18.8.10"}], [{"subnet": "fd00:8::/64"}]],
                   routes=[{"dst": "0.0.0.0/0"}], dns={"nameservers": ["198.18.8.1"]})
    add = run_plugin(EXE, "ADD", conf, container_id="ctr1", netns="/var/run/netns/none", ifname="net1")
    assert add.ok, add
    assert add.out == {"cniVersion": "1.1.0",
                       "ips": [{"address": "198.18.8.10/24", "gateway": "198.18.8.1"},
                               {"address": "fd00:8::2/64", "gateway": "fd00:8::1"}],
                       "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["198.18.8.1"]}}
    old = run_plugin(EXE, "ADD", dict(conf, cniVersion="0.3.1"), container_id="ctr1", netns="/x", ifname="net1")
    assert old.ok and [ip["version"] for ip in old.out["ips"]] == ["4", "6"]
    assert [ip["address"] for ip in old.out["ips"]] == ["198.18.8.10/24", "fd00:8::2/64"]
    for _ in range(2):
        gone = run_plugin(EXE, "DEL", conf, container_id="ctr1", ifname="net1")
        assert gone.ok and gone.out is None, gone
    assert lease_count(tmp_path) == 0


def test_error_codes_through_the_binary(tmp_path):
    bad = run_plugin(EXE, "ADD", netconf(tmp_path, [[{"subnet": "198.18.8.0/33"}]]), container_id="c", netns="/x")
    assert bad.rc == 1 and bad.code == errors.INVALID_CONFIG
    assert "field: $.ipam.ranges[0][0].subnet" in bad.out["details"]

    tiny = netconf(tmp_path, [[{"subnet": "198.18.8.0/30"}]])
    assert run_plugin(EXE, "ADD", tiny, container_id="c1", netns="/x").ok
    full = run_plugin(EXE, "ADD", tiny, container_id="c2", netns="/x")
    assert full.code == errors.IPAM_EXHAUSTED and full.out["msg"] == "pool 198.18.8.0/30 exhausted: 1 of 1 leased"

    taken = run_plugin(EXE, "ADD", dict(tiny, runtimeConfig={"ips": ["198.18.8.2/30"]}), container_id="c3", netns="/x")
    assert taken.code == errors.ADDRESS_UNAVAILABLE and "in use by another attachment" in taken.out["msg"]
    assert "c1" not in taken.out["msg"]

    status = run_plugin(EXE, "STATUS", tiny, ifname="")
    assert status.code == errors.PLUGIN_NOT_AVAILABLE and "exhausted: 1 of 1" in status.out["msg"]

    missing = run_plugin(EXE, "ADD", tiny, netns="/x")  # no CNI_CONTAINERID
    assert missing.code == errors.INVALID_ENVIRONMENT
    assert not [line for line in bad.stderr.splitlines() if line.strip() and not line.startswith("{")], \
        "stderr carries JSON log lines only"


def test_50_parallel_adds_get_50_distinct_addresses(tmp_path):
    """50 plugin processes at once on one pool: SQLite's write lock serializes them."""
    conf = netconf(tmp_path, [[{"subnet": "198.18.9.0/24"}]])

    def add(n: int):
        return run_plugin(EXE, "ADD", conf, container_id=f"ctr{n:02d}", netns="/x", ifname="eth0")

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(add, range(50)))
    failed = [r for r in results if not r.ok]
    assert not failed, failed[:3]
    addresses = [r.out["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == 50
    assert all(ipaddress.ip_interface(a) in ipaddress.ip_network("198.18.9.0/24") for a in addresses)
    with SQLiteStore(str(tmp_path)) as s:
        held = {(x.owner.container_id, f"{x.address}/24") for x in s.leases()}
    assert held == {(f"ctr{n:02d}", addresses[n]) for n in range(50)}

    def delete(n: int):
        return run_plugin(EXE, "DEL", conf, container_id=f"ctr{n:02d}", ifname="eth0")

    with ThreadPoolExecutor(max_workers=50) as pool:
        assert all(r.ok for r in pool.map(delete, range(50)))
    assert lease_count(tmp_path) == 0


@pytest.mark.skipif(not shutil.which("host-local", path="/usr/lib/cni"), reason="containernetworking-plugins")
def test_same_range_format_as_host_local(tmp_path):
    """The reference host-local answers the same config with the same addresses (order and defaults)."""
    ranges = [[{"subnet": "198.18.10.0/29"}], [{"subnet": "fd00:10::/64", "rangeStart": "fd00:10::5"}]]
    ours = netconf(tmp_path / "ours", ranges, version="1.0.0")  # Debian's plugins stop at 1.0.0
    theirs = {**ours, "ipam": {"type": "host-local", "ranges": ranges, "dataDir": str(tmp_path / "hl")}}
    def both(command: str, cid: str) -> None:
        a = run_plugin(EXE, command, ours, container_id=cid, netns="/x")
        b = run_plugin("/usr/lib/cni/host-local", command, theirs, container_id=cid, netns="/x")
        assert a.ok and b.ok, (a, b)
        if command == "ADD":
            assert [(ip["address"], ip["gateway"]) for ip in a.out["ips"]] == \
                [(ip["address"], ip["gateway"]) for ip in b.out["ips"]]

    for n in range(3):
        both("ADD", f"c{n}")
    both("DEL", "c0")  # the freed address is not the next one: both go on after the last handed out
    for n in range(3, 6):
        both("ADD", f"c{n}")  # ... and wrap around to it at the end of the range
