"""multiplex-ipvlan without a kernel: config checks, MAC refusal, routes per mode, the one-mode-per-
master record. These run in the main suite (no VM, no root); the kernel side is in test_ipvlan.py."""
from __future__ import annotations

import io
import ipaddress
import json
import os
import time

import pytest

from delegates import ipvlan
from multiplex.cni import skel
from multiplex.cni.errors import CNIError
from multiplex.cni.valid import keep_of
from multiplex.cni.types import IPConfig, Result, Route
from multiplex.util import log


def conf(**extra) -> dict:
    c = {"cniVersion": "1.1.0", "name": "wire", "type": "multiplex-ipvlan", "master": "eth1",
         "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.64.0/24"}]]}}
    c.update(extra)
    return c


def call(command: str, config: dict, **env) -> tuple[int, dict]:
    environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/nonexistent-pod",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    environ.update(env)
    out = io.StringIO()
    rc = skel.run(ipvlan.plugin, environ, json.dumps(config).encode(), out)
    return rc, json.loads(out.getvalue()) if out.getvalue() else {}


def test_the_plugin_object():
    assert ipvlan.plugin.type_name == "multiplex-ipvlan"
    assert ipvlan.plugin.capabilities == frozenset({"ips"})


def test_defaults():
    c = ipvlan.IpvlanConfig.parse(conf(master=None))
    assert (c.master, c.mode, c.mtu, c.link_in_container, c.routed) == ("", "l2", None, False, False)
    assert ipvlan.IpvlanConfig.parse(conf(mode="l3s")).routed


@pytest.mark.parametrize("bad,field,words", [
    ({"mode": "l4"}, "$.mode", '"l2"'),
    ({"mode": "L2"}, "$.mode", '"l3s"'),
    ({"mtu": 10}, "$.mtu", "68"),
    ({"mtu": "1500"}, "$.mtu", ""),
    ({"master": "a/b"}, "$.master", "no '/'"),
    ({"master": "much-too-long-name"}, "$.master", "1-15"),
    ({"linkInContainer": "yes"}, "$.linkInContainer", "true"),
    ({"mater": "eth1"}, "$.mater", "known fields"),
    ({"ipam": {}}, "$.ipam", ""),
    ({"ipam": {"type": "../x"}}, "$.ipam.type", "never a path"),
])
def test_bad_config_is_code_7_naming_the_field(bad, field, words):
    rc, err = call("ADD", conf(**bad))
    assert rc == 1 and err["code"] == 7, err
    assert f"field: {field}" in err["details"] and words in err["details"], err


def test_missing_ipam_is_code_7():
    c = conf()
    del c["ipam"]
    rc, err = call("ADD", c)
    assert err["code"] == 7 and "ipam" in err["msg"] + err["details"], err


@pytest.mark.parametrize("where,field", [
    ({"runtimeConfig": {"mac": "02:00:00:00:00:01"}}, "$.runtimeConfig.mac"),
    ({"args": {"cni": {"mac": "02:00:00:00:00:01"}}}, "$.args.cni.mac"),
    ({"mac": "02:00:00:00:00:01"}, "$.mac"),
])
def test_a_mac_in_the_config_is_refused_before_anything(where, field):
    with pytest.raises(CNIError) as e:
        ipvlan.plugin.validate(conf(**where))
    assert e.value.code == 2 and f"field: {field}" in e.value.details
    assert "02:00:00:00:00:01" in e.value.msg and "master's MAC" in e.value.msg


def test_a_mac_in_cni_args_is_refused():
    rc, err = call("ADD", conf(), CNI_ARGS="IgnoreUnknown=1;MAC=02:00:00:00:00:09")
    assert err["code"] == 2 and "field: CNI_ARGS MAC" in err["details"] and "02:00:00:00:00:09" in err["msg"]


def test_an_empty_mac_is_no_request():
    ipvlan.plugin.validate(conf(runtimeConfig={"mac": "", "ips": ["198.18.64.5/24"]}))


def ipam_result(gateway: bool = True) -> Result:
    gw4 = ipaddress.ip_address("198.18.64.1") if gateway else None
    return Result(ips=[IPConfig(ipaddress.ip_interface("198.18.64.10/24"), gw4),
                       IPConfig(ipaddress.ip_interface("fd00:64::10/64"), ipaddress.ip_address("fd00:64::1"))],
                  routes=[Route(ipaddress.ip_network("0.0.0.0/0")), Route(ipaddress.ip_network("::/0")),
                          Route(ipaddress.ip_network("198.19.0.0/16"), ipaddress.ip_address("198.18.64.7"))])


def test_l2_routes_go_via_their_gateway():
    routes = ipvlan.pod_routes(ipvlan.IpvlanConfig("n", mode="l2"), ipam_result())
    assert [(str(r.dst), str(r.gw)) for r in routes] == [
        ("0.0.0.0/0", "198.18.64.1"), ("::/0", "fd00:64::1"), ("198.19.0.0/16", "198.18.64.7")]


def test_l2_route_without_any_gateway_stays_a_device_route():
    routes = ipvlan.pod_routes(ipvlan.IpvlanConfig("n", mode="l2"), ipam_result(gateway=False))
    assert routes[0].gw is None


@pytest.mark.parametrize("mode", ["l3", "l3s"])
def test_routed_modes_route_via_the_device(mode):
    routes = ipvlan.pod_routes(ipvlan.IpvlanConfig("n", mode=mode), ipam_result())
    assert [r.gw for r in routes] == [None, None, None]


# ---- one mode per master -------------------------------------------------------------------------
@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(tmp_path))  # for calls through skel.run
    return str(tmp_path)


@pytest.fixture
def recs(state_dir) -> ipvlan.ModeRecords:
    """The mode records of this test's state root, as a call with 5 s left would see them."""
    return ipvlan.ModeRecords(state_dir, time.monotonic() + 5, log.get())


@pytest.fixture
def records(state_dir):
    """A netns path that exists (a live pod)."""
    live = os.path.join(state_dir, "netns-live")
    open(live, "w").close()
    return live


def test_one_master_keeps_one_mode(recs, records):
    recs.claim("eth1", None, "l2", "a", "c1/eth0", records)
    recs.claim("eth1", None, "l2", "b", "c2/eth0", records)
    with pytest.raises(CNIError) as e:
        recs.claim("eth1", None, "l3", "c", "c3/eth0", records)
    assert e.value.code == 7 and "field: $.mode" in e.value.details and "mode l2" in e.value.msg
    assert "c1" not in e.value.msg and "c2" not in e.value.msg  # never names others' attachments
    assert "2 ipvlan sub-interface(s)" in e.value.msg and "0 of them on this network" in e.value.msg
    recs.claim("eth2", None, "l3", "c", "c3/eth0", records)  # another master is free
    recs.release("c1/eth0")
    recs.release("c2/eth0", "b")
    recs.claim("eth1", None, "l3", "c", "c4/eth0", records)


def test_attachments_whose_netns_is_gone_do_not_hold_the_mode(recs, records):
    recs.claim("eth1", None, "l2", "a", "c1/eth0", "/var/run/netns/gone-long-ago")
    recs.claim("eth1", None, "l3", "a", "c2/eth0", records)


def recorded() -> set[str]:
    d = os.path.join(os.environ["MULTIPLEX_STATE_DIR"], "ipvlan")
    out: set[str] = set()
    for name in os.listdir(d):
        with open(os.path.join(d, name)) as f:
            out |= set(json.load(f)["attachments"])
    return out


def test_gc_forgets_only_its_own_networks_stale_attachments(recs, records):
    recs.claim("eth1", None, "l2", "default.a", "c1/eth0", records)
    recs.claim("eth1", None, "l2", "default.a", "c2/eth0", records)
    recs.claim("eth1", None, "l2", "tenant-b.a", "c3/eth0", records)  # same NAD name, other namespace
    assert recs.release_stale("default.a", keep_of([("c1", "eth0")])) == 1
    assert recorded() == {"c1/eth0", "c3/eth0"}


def test_gc_keeps_every_interface_of_a_listed_container(recs, records):
    for key in ("c1/net1", "c1/net2", "c2/net1"):
        recs.claim("eth1", None, "l2", "default.a", key, records)
    assert recs.release_stale("default.a", keep_of([("c1", "eth0")], ["c1"])) == 1
    assert recorded() == {"c1/net1", "c1/net2"}


@pytest.mark.parametrize("bad", [None, "c1", [{"containerId": "c1", "ifName": "eth0"}]])
def test_gc_with_a_malformed_keep_list_is_code_7_and_forgets_nothing(recs, records, bad):
    recs.claim("eth1", None, "l2", "wire", "c1/eth0", records)
    c = conf() if bad is None else conf(**{"cni.dev/valid-attachments": bad})
    rc, err = call("GC", c)
    assert rc == 1 and err["code"] == 7 and "cni.dev/valid-attachments" in err["details"], err
    assert recorded() == {"c1/eth0"}


def test_gc_config_may_carry_the_meta_plugins_container_list():
    # the meta plugin adds multiplex.dev/valid-containers; the schema accepts it
    ipvlan.plugin.validate(conf(**{"cni.dev/valid-attachments": [], "multiplex.dev/valid-containers": ["c1"]}))


def test_sweep_forgets_every_record_of_the_container(recs, records, state_dir):
    from multiplex.cni.context import CallContext
    from multiplex.cni.request import Request

    recs.claim("eth1", None, "l2", "default.a", "c1/net1", records)
    recs.claim("eth2", None, "l3", "tenant-b.b", "c1/net2", records)
    recs.claim("eth1", None, "l2", "default.a", "c10/net1", records)  # a prefix is another container
    req = Request(command="DEL", container_id="c1", ifname="eth0", config={"name": "multiplex", "type": "multiplex"},
                  ctx=CallContext(state_dir=state_dir))
    ipvlan.plugin.sweep(req)
    assert recorded() == {"c10/net1"}
    ipvlan.plugin.sweep(req)  # twice: nothing to do
    assert recorded() == {"c10/net1"}


def test_sweep_where_ipvlan_was_never_used_makes_nothing(tmp_path, monkeypatch):
    from multiplex.cni.request import Request

    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(tmp_path))
    ipvlan.plugin.sweep(Request(command="DEL", container_id="c1", ifname="eth0"))
    assert os.listdir(tmp_path) == []


def test_records_live_under_the_calls_own_state_root(tmp_path, records):
    # two calls with different state roots in one process: each sees only its own records
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ipvlan.ModeRecords(a, time.monotonic() + 5, log.get()).claim("eth1", None, "l2", "n", "c1/eth0", records)
    in_b = ipvlan.ModeRecords(b, time.monotonic() + 5, log.get())
    in_b.claim("eth1", None, "l3", "n", "c2/eth0", records)  # another root: the l2 claim is not seen
    assert in_b.release_container("c1") == 0 and in_b.release_container("c2") == 1
    assert os.listdir(os.path.join(a, "ipvlan")) and not os.path.exists(os.path.join(tmp_path, "ipvlan"))


def test_a_record_is_replaced_whole_and_private(recs, records, state_dir):
    recs.claim("eth1", None, "l2", "n", "c1/eth0", records)
    recs.claim("eth1", None, "l2", "n", "c2/eth0", records)
    d = os.path.join(state_dir, "ipvlan")
    (name,) = os.listdir(d)  # no temporary file left beside it
    assert name.endswith("-eth1.json") and os.stat(os.path.join(d, name)).st_mode & 0o777 == 0o600
    assert recorded() == {"c1/eth0", "c2/eth0"}


def test_records_held_by_another_call_past_the_deadline_are_code_11(recs, records, state_dir):
    import fcntl
    import re

    recs.claim("eth1", None, "l2", "n", "c1/eth0", records)  # makes the records directory
    d = os.path.join(state_dir, "ipvlan")
    holder = os.open(d, os.O_RDONLY | os.O_DIRECTORY)  # another call (its own open file) holds the lock
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        late = ipvlan.ModeRecords(state_dir, time.monotonic() + 0.1, log.get())
        for attempt in (lambda: late.claim("eth1", None, "l2", "n", "c2/eth0", records),
                        lambda: late.release("c1/eth0")):
            with pytest.raises(CNIError) as e:
                attempt()
            assert e.value.code == 11 and "ipvlan mode records" in e.value.msg and d in e.value.msg
            assert re.search(r"after \d+\.\ds", e.value.msg), e.value.msg
    finally:
        os.close(holder)
    assert recorded() == {"c1/eth0"}  # the refused calls changed nothing
    recs.release("c1/eth0")  # the lock is free again
    assert recorded() == set()


@pytest.mark.parametrize("ipam", [
    {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.64.0/24"}], [{"subnet": "fd00:64::/64"}]]},
    {"type": "multiplex-ipam", "range": "fd00:64::/64"},
])
def test_mtu_under_1280_with_an_ipv6_range_is_code_7_naming_mtu(ipam):
    rc, err = call("ADD", conf(mtu=1200, ipam=ipam))
    assert rc == 1 and err["code"] == 7 and err["details"].startswith("field: $.mtu;"), err
    ipvlan.plugin.validate(conf(mtu=1200))  # IPv4 only: fine


def test_del_without_netns_or_ipam_is_fine(state_dir):
    c = conf()
    del c["ipam"]
    rc, out = call("DEL", c, CNI_NETNS="")
    assert rc == 0 and out == {}
