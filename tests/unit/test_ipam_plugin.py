"""multiplex-ipam through the CNI protocol, in-process (multiplex.cni.skel.run): every command."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from multiplex.cni import errors, skel
from multiplex.cni.registry import builtin
from multiplex.cni.request import Request
from multiplex.ipam.plugin import plugin
from multiplex.ipam.sqlite.store import SQLiteStore


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "ipam")


def netconf(data_dir: str, ranges=None, version: str = "1.1.0", name: str = "blue", **ipam_extra) -> dict:
    return {"cniVersion": version, "name": name, "type": "bridge",
            "ipam": {"type": "multiplex-ipam", "ranges": ranges or [[{"subnet": "198.18.5.0/29"}]],
                     "dataDir": data_dir, **ipam_extra}}


def call(command: str, conf: dict, cid: str = "c1", ifname: str = "eth0", cni_args: str = "") -> tuple[int, dict]:
    env = {"CNI_COMMAND": command, "CNI_PATH": ""}
    if command not in ("STATUS", "GC"):
        env.update(CNI_CONTAINERID=cid, CNI_NETNS="/var/run/netns/pod", CNI_IFNAME=ifname)
    if cni_args:
        env["CNI_ARGS"] = cni_args
    out = io.StringIO()
    rc = skel.run(plugin, env, json.dumps(conf).encode(), out)
    return rc, (json.loads(out.getvalue()) if out.getvalue() else {})


def leases(data_dir: str) -> list[tuple[str, str, str, str]]:
    if not os.path.isdir(data_dir):
        return []
    with SQLiteStore(data_dir) as s:
        return [(str(x.address), x.owner.network, x.owner.container_id, x.owner.ifname) for x in s.leases()]


def test_plugin_object():
    assert plugin.type_name == "multiplex-ipam" and plugin.capabilities == {"ips"}
    assert builtin("multiplex-ipam") is plugin


def test_add_returns_ips_gateway_routes_dns(data_dir):
    conf = netconf(data_dir, routes=[{"dst": "0.0.0.0/0"}, {"dst": "198.19.0.0/16", "gw": "198.18.5.1"}],
                   dns={"nameservers": ["198.18.5.1"], "search": ["lab"]})
    rc, out = call("ADD", conf)
    assert rc == 0, out
    assert out == {"cniVersion": "1.1.0",
                   "ips": [{"address": "198.18.5.2/29", "gateway": "198.18.5.1"}],
                   "routes": [{"dst": "0.0.0.0/0"}, {"dst": "198.19.0.0/16", "gw": "198.18.5.1"}],
                   "dns": {"nameservers": ["198.18.5.1"], "search": ["lab"]}}
    assert leases(data_dir) == [("198.18.5.2", "blue", "c1", "eth0")]


@pytest.mark.parametrize("version,has_version", [("0.3.0", True), ("0.3.1", True), ("0.4.0", True),
                                                 ("1.0.0", False), ("1.1.0", False)])
def test_result_in_the_configs_version(data_dir, version, has_version):
    rc, out = call("ADD", netconf(data_dir, [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/64"}]], version))
    assert rc == 0 and out["cniVersion"] == version
    assert [ip["address"] for ip in out["ips"]] == ["198.18.5.2/29", "fd00:5::2/64"]
    assert all("interface" not in ip for ip in out["ips"])
    assert [ip.get("version") for ip in out["ips"]] == (["4", "6"] if has_version else [None, None])


def test_add_twice_gives_the_same_addresses(data_dir):
    conf = netconf(data_dir, [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/64"}]])
    first = call("ADD", conf)
    assert call("ADD", conf) == first
    assert len(leases(data_dir)) == 2


def test_ipv6_only(data_dir):
    rc, out = call("ADD", netconf(data_dir, [[{"subnet": "fd00:5::/64", "rangeStart": "fd00:5::100"}]]))
    assert rc == 0 and out["ips"] == [{"address": "fd00:5::100/64", "gateway": "fd00:5::1"}]


@pytest.mark.parametrize("where", ["runtimeConfig", "args", "CNI_ARGS"])
def test_requested_addresses_are_honoured(data_dir, where):
    conf = netconf(data_dir, [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/64"}]])
    cni_args = ""
    if where == "runtimeConfig":
        conf["runtimeConfig"] = {"ips": ["198.18.5.5/29", "fd00:5::55/64"]}
    elif where == "args":
        conf["args"] = {"cni": {"ips": ["198.18.5.5", "fd00:5::55"]}}
    else:
        cni_args = "IgnoreUnknown=1;IP=198.18.5.5,fd00:5::55"
    rc, out = call("ADD", conf, cni_args=cni_args)
    assert rc == 0, out
    assert [ip["address"] for ip in out["ips"]] == ["198.18.5.5/29", "fd00:5::55/64"]


def test_requested_for_one_family_only(data_dir):
    conf = netconf(data_dir, [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/64"}]])
    conf["runtimeConfig"] = {"ips": ["fd00:5::55/64"]}
    rc, out = call("ADD", conf)
    assert [ip["address"] for ip in out["ips"]] == ["198.18.5.2/29", "fd00:5::55/64"]


def test_requested_out_of_range_is_103_and_leaves_nothing(data_dir):
    conf = netconf(data_dir, [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/64"}]])
    conf["runtimeConfig"] = {"ips": ["198.18.5.3/29", "198.18.9.9/24"]}
    rc, out = call("ADD", conf)
    assert rc == 1 and out["code"] == errors.ADDRESS_UNAVAILABLE
    assert "198.18.9.9 is out of range" in out["msg"] and "198.18.5.0/29" in out["msg"]
    assert "field: $.runtimeConfig.ips[1]" in out["details"]
    assert leases(data_dir) == []


def test_requested_taken_is_103_naming_no_other_pod(data_dir):
    conf = netconf(data_dir)
    conf["runtimeConfig"] = {"ips": ["198.18.5.4"]}
    assert call("ADD", conf, cid="first", cni_args="K8S_POD_NAMESPACE=tenant-a;K8S_POD_NAME=p1")[0] == 0
    rc, out = call("ADD", conf, cid="second")
    assert rc == 1 and out["code"] == errors.ADDRESS_UNAVAILABLE
    assert out["msg"] == "requested address 198.18.5.4 is unavailable: in use by another attachment"
    assert "tenant-a" not in json.dumps(out) and "first" not in json.dumps(out)


def test_two_requested_addresses_of_one_family_are_refused(data_dir):
    conf = netconf(data_dir)
    conf["runtimeConfig"] = {"ips": ["198.18.5.3", "198.18.5.4"]}
    rc, out = call("ADD", conf)
    assert out["code"] == errors.ADDRESS_UNAVAILABLE and "one address per family" in out["msg"]
    assert leases(data_dir) == []


def test_a_failing_range_set_undoes_the_others(data_dir):
    """v4 is free, v6 is full: the ADD fails with 102 and leaves no v4 lease behind."""
    conf = netconf(data_dir, [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/126"}]])
    assert call("ADD", conf, cid="a")[0] == 0
    assert call("ADD", conf, cid="b")[0] == 0
    before = leases(data_dir)
    rc, out = call("ADD", conf, cid="c")
    assert rc == 1 and out["code"] == errors.IPAM_EXHAUSTED
    assert out["msg"] == "pool fd00:5::/126 exhausted: 2 of 2 leased"
    assert "field: $.ipam.ranges[1]" in out["details"]
    assert leases(data_dir) == before


def test_bad_config_is_7_and_touches_nothing(data_dir):
    conf = netconf(data_dir, [[{"subnet": "198.18.5.0/24", "rangeStart": "198.18.6.1"}]])
    rc, out = call("ADD", conf)
    assert rc == 1 and out["code"] == errors.INVALID_CONFIG
    assert "field: $.ipam.ranges[0][0].rangeStart" in out["details"]
    assert not os.path.exists(data_dir)


def test_del_releases_and_is_idempotent(data_dir):
    conf = netconf(data_dir, [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/64"}]])
    call("ADD", conf, cid="c1")
    call("ADD", conf, cid="c2")
    assert call("DEL", conf, cid="c1") == (0, {})
    assert call("DEL", conf, cid="c1") == (0, {})
    assert call("DEL", conf, cid="never-added") == (0, {})
    assert [lease[2] for lease in leases(data_dir)] == ["c2", "c2"]


def test_del_works_when_the_ranges_changed_or_broke(data_dir):
    call("ADD", netconf(data_dir), cid="c1")
    broken = netconf(data_dir, [[{"subnet": "not-a-cidr"}]])
    assert call("DEL", broken, cid="c1") == (0, {})
    assert leases(data_dir) == []


def test_check(data_dir):
    conf = netconf(data_dir, [[{"subnet": "198.18.5.0/29"}], [{"subnet": "fd00:5::/64"}]])
    rc, result = call("ADD", conf)
    with_prev = dict(conf, prevResult=result)
    assert call("CHECK", with_prev) == (0, {})
    assert call("CHECK", conf) == (0, {})  # without prevResult: a lease in every range set
    # prevResult names an address this attachment does not hold
    wrong = json.loads(json.dumps(result))
    wrong["ips"][0]["address"] = "198.18.5.6/29"
    rc, out = call("CHECK", dict(conf, prevResult=wrong))
    assert rc == 1 and out["code"] == errors.CHECK_FAILED and "198.18.5.6" in out["msg"]
    assert "field: $.prevResult.ips[0].address" in out["details"]
    # after DEL nothing is leased
    call("DEL", conf)
    rc, out = call("CHECK", with_prev)
    assert rc == 1 and out["code"] == errors.CHECK_FAILED and "no lease in pool 198.18.5.0/29" in out["msg"]


def test_check_before_0_4_0_is_refused(data_dir):
    rc, out = call("CHECK", netconf(data_dir, version="0.3.1"))
    assert rc == 1 and out["code"] == errors.INCOMPATIBLE_VERSION


def test_status_reports_an_exhausted_pool(data_dir):
    conf = netconf(data_dir, [[{"subnet": "fd00:5::/64"}], [{"subnet": "198.18.5.0/29"}]])
    assert call("STATUS", conf) == (0, {})
    for i in range(5):
        assert call("ADD", conf, cid=f"c{i}")[0] == 0
    rc, out = call("STATUS", conf)
    assert rc == 1 and out["code"] == errors.PLUGIN_NOT_AVAILABLE
    assert out["msg"] == "pool 198.18.5.0/29 exhausted: 5 of 5 leased"
    assert "field: $.ipam.ranges[1]" in out["details"]
    call("DEL", conf, cid="c3")
    assert call("STATUS", conf) == (0, {})


def test_gc_releases_attachments_not_listed(data_dir):
    blue, red = netconf(data_dir), netconf(data_dir, [[{"subnet": "198.18.6.0/29"}]], name="red")
    for cid in ("keep", "gone"):
        call("ADD", blue, cid=cid)
        call("ADD", red, cid=cid)
    call("ADD", blue, cid="keep", ifname="net1")
    gc = dict(blue, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert call("GC", gc) == (0, {})
    assert sorted((n, c, i) for _, n, c, i in leases(data_dir)) == [
        ("blue", "keep", "eth0"), ("red", "gone", "eth0"), ("red", "keep", "eth0")]


@pytest.mark.parametrize("valid,path", [
    (None, '$["cni.dev/valid-attachments"]'),
    ("all", '$["cni.dev/valid-attachments"]'),
    ([{"containerID": "x"}], '$["cni.dev/valid-attachments"][0]'),
])
def test_gc_with_bad_valid_attachments_is_7_and_releases_nothing(data_dir, valid, path):
    conf = netconf(data_dir)
    call("ADD", conf)
    gc = dict(conf)
    if valid is not None:
        gc["cni.dev/valid-attachments"] = valid
    rc, out = call("GC", gc)
    assert rc == 1 and out["code"] == errors.INVALID_CONFIG and f"field: {path}" in out["details"]
    assert len(leases(data_dir)) == 1


def test_in_process_call_without_container_is_4(data_dir):
    req = Request(command="ADD", container_id="", ifname="eth0", config=netconf(data_dir))
    with pytest.raises(errors.CNIError) as e:
        plugin.add(req)
    assert e.value.code == errors.INVALID_ENVIRONMENT and "CNI_CONTAINERID" in e.value.details


def test_default_data_dir_is_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(tmp_path / "state"))
    conf = netconf("x")
    del conf["ipam"]["dataDir"]
    assert call("ADD", conf)[0] == 0
    assert leases(str(tmp_path / "state" / "ipam")) == [("198.18.5.2", "blue", "c1", "eth0")]


def test_the_plugin_path_imports_no_heavy_module(data_dir):
    """DEL, STATUS and GC never import jsonschema; no command imports pyroute2 or kubernetes."""
    code = f"""
import io, json, sys
from multiplex.cni import skel
from multiplex.ipam.plugin import plugin
conf = {json.dumps(netconf(data_dir))}
heavy = lambda: sorted({{m.split('.')[0] for m in sys.modules}} & {{'jsonschema', 'pyroute2', 'kubernetes'}})
env = {{"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}}
assert skel.run(plugin, env, json.dumps(conf).encode(), io.StringIO()) == 0
env = {{"CNI_COMMAND": "STATUS"}}
assert skel.run(plugin, env, json.dumps(conf).encode(), io.StringIO()) == 0
conf["cni.dev/valid-attachments"] = []
env = {{"CNI_COMMAND": "GC"}}
assert skel.run(plugin, env, json.dumps(conf).encode(), io.StringIO()) == 0
print(json.dumps(heavy()))
env = {{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}}
assert skel.run(plugin, env, json.dumps(conf).encode(), io.StringIO()) == 0
print(json.dumps(heavy()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert json.loads(out[0]) == []
    assert json.loads(out[1]) == ["jsonschema"]


def test_gc_keeps_listed_containers_and_only_its_own_namespaced_network(data_dir):
    """The meta plugin forwards GC with the namespaced name and multiplex.dev/valid-containers."""
    a, b = netconf(data_dir, name="tenant-a.blue"), netconf(data_dir, [[{"subnet": "198.18.6.0/29"}]],
                                                                name="tenant-b.blue")
    call("ADD", a, cid="pod-a", ifname="net1")
    call("ADD", a, cid="stale", ifname="net1")
    call("ADD", b, cid="pod-b", ifname="net1")
    gc = dict(a, **{"cni.dev/valid-attachments": [{"containerID": "pod-a", "ifname": "eth0"}],
                    "multiplex.dev/valid-containers": ["pod-a"]})
    assert call("GC", gc) == (0, {})
    assert sorted((n, c) for _, n, c, _ in leases(data_dir)) == [("tenant-a.blue", "pod-a"),
                                                                  ("tenant-b.blue", "pod-b")]


def test_gc_with_malformed_valid_containers_is_7_and_releases_nothing(data_dir):
    conf = netconf(data_dir)
    call("ADD", conf)
    gc = dict(conf, **{"cni.dev/valid-attachments": [], "multiplex.dev/valid-containers": "c1"})
    rc, out = call("GC", gc)
    assert rc == 1 and out["code"] == errors.INVALID_CONFIG and "multiplex.dev/valid-containers" in out["details"]
    assert len(leases(data_dir)) == 1


def test_sweep_releases_every_lease_of_the_container(data_dir):
    blue, red = netconf(data_dir), netconf(data_dir, [[{"subnet": "198.18.6.0/29"}]], name="red")
    call("ADD", blue, cid="gone", ifname="eth0")
    call("ADD", red, cid="gone", ifname="net1")
    call("ADD", blue, cid="stays")
    plugin.sweep(Request(command="DEL", container_id="gone", ifname="eth0", config=red))
    assert [c for _, _, c, _ in leases(data_dir)] == ["stays"]
    plugin.sweep(Request(command="DEL", container_id="gone", ifname="eth0", config=red))   # idempotent


def test_sweep_without_an_ipam_block_uses_the_node_store_and_never_creates_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(tmp_path / "state"))
    bare = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex"}
    plugin.sweep(Request(command="DEL", container_id="gone", ifname="eth0", config=bare))
    assert not os.path.exists(tmp_path / "state" / "ipam" / "leases.db")
    conf = netconf("x")
    del conf["ipam"]["dataDir"]
    call("ADD", conf, cid="gone")
    call("ADD", conf, cid="stays")
    plugin.sweep(Request(command="DEL", container_id="gone", ifname="eth0", config=bare))
    assert [c for _, _, c, _ in leases(str(tmp_path / "state" / "ipam"))] == ["stays"]
