"""A damaged leases database is never silently emptied: it is moved aside and rebuilt from the
meta plugin's cache, or the IPAM refuses with code 5. `multiplex ipam check [--repair]`."""
from __future__ import annotations

import glob
import io
import json
import os

import pytest
from click.testing import CliRunner

from multiplex.cli.commands import cli
from multiplex.cni import errors, skel
from multiplex.cni.cache import ResultCache
from multiplex.ipam import repair
from multiplex.ipam.plugin import plugin
from multiplex.ipam.sqlite.store import FILENAME, SQLiteStore


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A state root of its own: <root>/ipam (the default dataDir) and <root>/cache."""
    root = tmp_path / "state"
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(root))
    return root


def ipam_block(**extra) -> dict:
    return {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.73.0/29"}]], **extra}


def netconf(name: str = "tenant-a.blue", **extra) -> dict:
    return {"cniVersion": "1.1.0", "name": name, "type": "multiplex-bridge", "ipam": ipam_block(**extra)}


def call(command: str, conf: dict, cid: str, ifname: str = "net1", pod: str = "") -> tuple[int, dict]:
    env = {"CNI_COMMAND": command, "CNI_PATH": "", "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": ifname}
    if pod:
        env["CNI_ARGS"] = f"K8S_POD_NAMESPACE=tenant-a;K8S_POD_NAME={pod}"
    out = io.StringIO()
    rc = skel.run(plugin, env, json.dumps(conf).encode(), out)
    return rc, (json.loads(out.getvalue()) if out.getvalue() else {})


def cache_pod(root, cid: str, result: dict, netconf_: dict, *, config_name: str = "tenant-a.blue",
              ifname: str = "net1", netns: str = "") -> None:
    """What the meta plugin caches for a pod with one NAD attachment (orchestrator's record)."""
    att = {"network": "tenant-a/blue", "ifname": ifname, "netconf": netconf_, "cluster": False,
           "capabilityArgs": {}, "cniArgs": None, "defaultRoute": [], "namespace": "tenant-a",
           "configName": config_name, "result": result}
    record = {"version": 1, "containerID": cid, "ifname": "eth0", "netns": netns,
              "cniArgs": {"K8S_POD_NAMESPACE": "tenant-a", "K8S_POD_NAME": cid}, "attachments": [att],
              "complete": True}
    ResultCache(str(root / "cache")).save(cid, "eth0", record)


def leases(root) -> list[tuple[str, str, str, str]]:
    with SQLiteStore(str(root / "ipam")) as s:
        return [(str(x.address), x.owner.network, x.owner.container_id, x.owner.ifname) for x in s.leases()]


def live_pod(root, cid: str = "live") -> str:
    """A pod added through the IPAM and cached as the meta plugin does; returns its address."""
    conf = netconf()
    rc, res = call("ADD", conf, cid, pod=cid)
    assert rc == 0, res
    # the NAD's config as written: its name is the NAD's, the plugins saw configName
    cache_pod(root, cid, res, dict(conf, name="blue"))
    return res["ips"][0]["address"].split("/")[0]


def damaged_files(root) -> list[str]:
    """The damaged databases moved aside (without their -wal and -shm companions)."""
    return [p for p in glob.glob(str(root / "ipam" / (FILENAME + ".damaged-*")))
            if not p.endswith(("-wal", "-shm"))]


DAMAGES = ["truncate", "garbage", "delete"]


def damage_database(root, how: str) -> None:
    """Damage the leases database under `root` as a crash or a full disk might (one of DAMAGES)."""
    db = root / "ipam" / FILENAME
    if how == "truncate":
        os.truncate(db, 0)
    elif how == "garbage":
        db.write_bytes(b"this is not a database" * 10)
    else:
        db.unlink()


def add_after_damage(root, held: str, how: str) -> str:
    """The next pod's ADD after `damage_database(root, how)` under the live pod holding `held`:
    it succeeds with another address, both pods' leases are in the rebuilt database, and a
    damaged file (not a deleted one) is moved aside. Returns the new address."""
    rc, res = call("ADD", netconf(), "next", pod="next")
    assert rc == 0, res
    new = res["ips"][0]["address"].split("/")[0]
    assert new != held       # never the live pod's address
    assert sorted(leases(root)) == sorted([(held, "tenant-a.blue", "live", "net1"),
                                           (new, "tenant-a.blue", "next", "net1")])
    assert len(damaged_files(root)) == (0 if how == "delete" else 1)
    return new


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_database_under_a_live_pod_is_rebuilt_from_the_cache(state, damage):
    held = live_pod(state)
    damage_database(state, damage)
    add_after_damage(state, held, damage)


def test_a_legacy_record_keys_the_lease_by_the_netconf_name(state):
    """Records cached before namespaced names have no configName: the plugins saw the netconf's name."""
    conf = netconf(name="blue")
    rc, res = call("ADD", conf, "old")
    assert rc == 0
    cache_pod(state, "old", res, conf, config_name="")
    os.truncate(state / "ipam" / FILENAME, 0)
    assert call("DEL", conf, "other")[0] == 0       # any call notices and rebuilds
    assert leases(state) == [(res["ips"][0]["address"].split("/")[0], "blue", "old", "net1")]


def test_a_conflist_attachment_and_another_store_are_told_apart(state, tmp_path):
    conf = netconf()
    rc, res = call("ADD", conf, "chained")
    chained = {"cniVersion": "1.1.0", "name": "blue",
               "plugins": [{"type": "multiplex-bridge", "ipam": ipam_block()}, {"type": "tuning"}]}
    cache_pod(state, "chained", res, chained)
    elsewhere = dict(conf, ipam=ipam_block(dataDir=str(tmp_path / "elsewhere")))
    cache_pod(state, "elsewhere", {"cniVersion": "1.1.0", "ips": [{"address": "198.18.73.6/29"}]}, elsewhere)
    os.truncate(state / "ipam" / FILENAME, 0)
    assert call("DEL", conf, "x")[0] == 0
    assert leases(state) == [(res["ips"][0]["address"].split("/")[0], "tenant-a.blue", "chained", "net1")]


def test_no_cache_to_rebuild_from_is_code_5_and_hands_out_nothing(state):
    assert call("ADD", netconf(), "first")[0] == 0         # no meta plugin on this node: no cache at all
    os.truncate(state / "ipam" / FILENAME, 0)
    for _ in range(2):                                     # it stays refused, never an empty store
        rc, out = call("ADD", netconf(), "second")
        assert rc == 1 and out["code"] == errors.IO_FAILURE
        assert "cannot be rebuilt" in out["msg"] and "no cache directory" in out["msg"]
        assert "multiplex ipam check --repair --force" in out["details"]
    assert not os.path.exists(state / "ipam" / FILENAME)
    assert len(damaged_files(state)) == 1


def test_an_unreadable_cache_entry_refuses_and_check_repair_force_rebuilds(state):
    held = live_pod(state)
    (state / "cache" / "broken:eth0.json").write_text("{not json")
    os.truncate(state / "ipam" / FILENAME, 0)
    rc, out = call("ADD", netconf(), "next")
    assert rc == 1 and out["code"] == errors.IO_FAILURE and "broken:eth0.json" in out["msg"]

    result = CliRunner().invoke(cli, ["ipam", "check", "-o", "json"])
    assert result.exit_code == 1
    assert "missing" in json.loads(result.stdout)["damaged"]

    result = CliRunner().invoke(cli, ["ipam", "check", "--repair", "--force", "-o", "json"])
    report = json.loads(result.stdout)
    assert report["repaired"] and report["damaged"]
    assert leases(state) == [(held, "tenant-a.blue", "live", "net1")]
    rc, res = call("ADD", netconf(), "next")
    assert rc == 0 and res["ips"][0]["address"].split("/")[0] != held


def test_check_reports_and_repairs_missing_orphan_and_gone(state, tmp_path):
    held = live_pod(state)
    gone_netns = str(tmp_path / "netns-gone")
    rc, res = call("ADD", netconf(), "stopped")
    cache_pod(state, "stopped", res, netconf(name="blue"), netns=gone_netns)
    assert call("ADD", netconf(), "orphan")[0] == 0               # a lease no cache entry accounts for
    with SQLiteStore(str(state / "ipam")) as s:                   # a cached attachment lost its lease
        s.release_container("live")

    result = CliRunner().invoke(cli, ["ipam", "check", "-o", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [(m["address"], m["containerID"]) for m in report["missing"]] == [(held, "live")]
    assert [o["containerID"] for o in report["orphans"]] == ["orphan"]
    assert [g["containerID"] for g in report["netnsGone"]] == ["stopped"]
    assert not report["damaged"]

    result = CliRunner().invoke(cli, ["ipam", "check", "--repair"])
    assert result.exit_code == 0, result.output
    assert f"leased {held} to live/net1 again" in result.output
    assert {(c, i) for _, _, c, i in leases(state)} == {("live", "net1"), ("stopped", "net1")}
    again = CliRunner().invoke(cli, ["ipam", "check", "-o", "json"])
    assert json.loads(again.stdout)["missing"] == [] and json.loads(again.stdout)["orphans"] == []


def test_check_of_a_healthy_store_is_clean(state):
    live_pod(state)
    result = CliRunner().invoke(cli, ["ipam", "check"])
    assert result.exit_code == 0 and result.output.rstrip().endswith("ok")


def test_the_marker_is_written_for_a_database_made_before_it(state):
    live_pod(state)
    marker = state / "ipam" / (FILENAME + ".init")
    marker.unlink()
    assert leases(state)                      # an existing, healthy database: marked now
    assert marker.exists()


def test_the_repair_path_imports_no_heavy_module(state):
    import subprocess
    import sys

    live_pod(state)
    os.truncate(state / "ipam" / FILENAME, 0)
    code = f"""
import sys
from multiplex.ipam.sqlite.store import SQLiteStore
with SQLiteStore({str(state / 'ipam')!r}, cache_dir={str(state / 'cache')!r}) as s:
    assert len(s.leases()) == 1
print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'jsonschema', 'pyroute2', 'kubernetes', 'click'}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_read_cache_names_networks_as_the_plugins_saw_them(state):
    assert repair.network_name({"configName": "ns.blue", "netconf": {"name": "blue"}, "network": "ns/blue"}) \
        == "ns.blue"
    assert repair.network_name({"configName": "", "netconf": {"name": "blue"}, "network": "ns/blue"}) == "blue"
    assert repair.network_name({"netconf": {}, "network": "ns/blue"}) == "blue"


def test_a_malformed_page_met_mid_call_is_recovered_with_the_rows_sqlite_still_reads(state):
    """Damage inside the file (not its header): the call that meets it moves it aside, rebuilds
    from the cache plus the rows still readable, and goes on: no lease is lost."""
    (state / "cache").mkdir(parents=True)
    conf = dict(netconf(), ipam=dict(ipam_block(), ranges=[[{"subnet": "198.18.74.0/24"}]]))
    for i in range(200):
        assert call("ADD", conf, f"c{i}")[0] == 0
    before = leases(state)
    with open(state / "ipam" / FILENAME, "r+b") as f:     # two pages of the table's b-tree
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096 * 2)
    rc, res = call("ADD", conf, "new")
    assert rc == 0, res
    assert res["ips"][0]["address"].split("/")[0] not in {a for a, _, _, _ in before}
    assert set(before) < set(leases(state)) and len(leases(state)) == 201
    assert len(damaged_files(state)) == 1


def test_check_without_a_database_says_so_and_creates_none(state):
    result = CliRunner().invoke(cli, ["ipam", "check"])
    assert result.exit_code == 0 and "no IPAM database" in result.output
    assert not os.path.exists(state / "ipam" / FILENAME)


def _add_in_child(cid: str) -> tuple[int, str]:
    rc, res = call("ADD", netconf(), cid)
    return rc, res["ips"][0]["address"].split("/")[0] if rc == 0 else json.dumps(res)


def test_concurrent_calls_on_a_truncated_database_repair_it_once(state):
    import multiprocessing

    held = live_pod(state)
    os.truncate(state / "ipam" / FILENAME, 0)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        got = pool.map(_add_in_child, [f"p{i}" for i in range(4)])
    assert [rc for rc, _ in got] == [0, 0, 0, 0], got
    addresses = [a for _, a in got]
    assert held not in addresses and len(set(addresses)) == 4
    assert len(damaged_files(state)) == 1
    assert sorted(c for _, _, c, _ in leases(state)) == ["live", "p0", "p1", "p2", "p3"]
