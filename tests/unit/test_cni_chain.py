"""Plugin chains as libcni runs them: prevResult flow, capability filtering, rollback, order."""
from __future__ import annotations

import os

import pytest

from multiplex.cni import chain, errors
from multiplex.cni.conflist import parse
from multiplex.cni.errors import CNIError
from multiplex.cni.request import Request
from multiplex.cni.types import Result
from tests.fakeplugins import fake_builtins, install, records  # noqa: F401  (fixture)

ADDR_A = {"interfaces": [{"name": "net1", "mac": "0a:58:c6:12:00:02", "sandbox": "/var/run/netns/p1"}],
          "ips": [{"interface": 0, "address": "198.18.0.2/24", "gateway": "198.18.0.1"},
                  {"interface": 0, "address": "fd00:12::2/64"}],
          "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.0.1"}]}


@pytest.fixture
def bindir(tmp_path):
    return install(tmp_path / "bin", "fake-a", "fake-b", "fake-c")


@pytest.fixture
def calls(tmp_path):
    return str(tmp_path / "calls.jsonl")


@pytest.fixture
def make(calls):
    """make(plugin, ..., version=, **list keys) -> NetworkList; every plugin records to `calls`."""
    def _make(*plugins, version="1.0.0", **keys):
        ps = []
        for p in plugins:
            p = {"type": p} if isinstance(p, str) else dict(p)
            p["fake"] = {**p.get("fake", {}), "record": calls}
            ps.append(p)
        return parse({"cniVersion": version, "name": "net-a", "plugins": ps, **keys})
    return _make


@pytest.fixture
def rt(bindir):
    return chain.Runtime(container_id="c0ffee", netns="/var/run/netns/p1", ifname="net1",
                         cni_args={"K8S_POD_NAMESPACE": "ns1", "K8S_POD_NAME": "web"},
                         path=[bindir], timeout=60)


def steps(calls):
    return [(c["type"], c["command"]) for c in records(calls)]


def test_prev_result_flows_in_the_lists_version(make, rt, calls):
    nl = make({"type": "fake-a", "fake": {"result": ADDR_A}}, "fake-b", version="0.4.0")
    result = chain.add_list(nl, rt)
    a, b = records(calls)
    for c in (a, b):
        assert c["stdin"]["name"] == "net-a" and c["stdin"]["cniVersion"] == "0.4.0"
        assert c["env"]["CNI_ARGS"] == "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web"
    assert "prevResult" not in a["stdin"]
    prev = b["stdin"]["prevResult"]
    assert prev["cniVersion"] == "0.4.0"
    assert [ip["version"] for ip in prev["ips"]] == ["4", "6"]  # written in 0.4.0's shape
    assert Result.from_dict(prev).to_dict("1.1.0") == Result.from_dict({**ADDR_A, "cniVersion": "0.4.0"}).to_dict("1.1.0")
    # the chain's result is the last plugin's: a's result plus b's interface
    assert result.cni_version == "0.4.0"
    assert [i.name for i in result.interfaces] == ["net1", "fake-b"]
    assert [str(ip.address) for ip in result.ips] == ["198.18.0.2/24", "fd00:12::2/64"]


def test_prev_result_flows_from_a_builtin_to_an_exec_plugin(fake_builtins, make, rt, calls):
    nl = make({"type": "fake-builtin", "fake": {"result": ADDR_A}}, "fake-a", version="1.1.0")
    chain.add_list(nl, rt)
    builtin, ext = records(calls)
    assert builtin["pid"] == os.getpid() and ext["pid"] != os.getpid()
    assert ext["stdin"]["prevResult"]["ips"][0] == {"interface": 0, "address": "198.18.0.2/24",
                                                     "gateway": "198.18.0.1"}


def test_runtime_config_holds_only_declared_capabilities(make, rt, calls):
    nl = make({"type": "fake-a", "capabilities": {"portMappings": True, "bandwidth": False}},
              {"type": "fake-b", "capabilities": {"mac": True, "ips": True}},
              "fake-c")
    rt.capability_args = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                          "mac": "0a:58:c6:12:00:09", "bandwidth": {}}
    chain.add_list(nl, rt)
    a, b, c = records(calls)
    assert a["stdin"]["runtimeConfig"] == {"portMappings": rt.capability_args["portMappings"]}
    assert b["stdin"]["runtimeConfig"] == {"mac": "0a:58:c6:12:00:09"}
    assert "runtimeConfig" not in c["stdin"]


def test_builtin_declares_its_own_capabilities(fake_builtins, make, rt, calls):
    nl = make("fake-builtin-mac", "fake-builtin")
    rt.capability_args = {"mac": "0a:58:c6:12:00:09", "ips": ["198.18.0.9/24"]}
    chain.add_list(nl, rt)
    mac, plain = records(calls)
    assert mac["stdin"]["runtimeConfig"] == {"mac": "0a:58:c6:12:00:09", "ips": ["198.18.0.9/24"]}
    assert "runtimeConfig" not in plain["stdin"]


def test_explicit_false_turns_a_builtin_capability_off(fake_builtins, make, rt, calls):
    nl = make({"type": "fake-builtin-mac", "capabilities": {"mac": False}})
    rt.capability_args = {"mac": "0a:58:c6:12:00:09"}
    with pytest.raises(CNIError) as e:
        chain.add_list(nl, rt)
    assert e.value.code == errors.UNSUPPORTED_FIELD


def test_unsupported_capability_refused_before_anything_runs(make, rt, calls):
    nl = make({"type": "fake-a", "capabilities": {"portMappings": True}}, "fake-b")
    rt.capability_args = {"mac": "0a:58:c6:12:00:09", "portMappings": []}
    with pytest.raises(CNIError) as e:
        chain.add_list(nl, rt)
    assert e.value.code == errors.UNSUPPORTED_FIELD
    assert e.value.details.startswith("field: runtimeConfig.mac")
    assert "network: net-a" in e.value.details and "'mac'" in e.value.msg
    assert records(calls) == []


def test_empty_capability_values_are_not_requests(make, rt, calls):
    """Runtimes send `portMappings: []` for every pod; that asks for nothing."""
    nl = make("fake-a")
    rt.capability_args = {"portMappings": [], "bandwidth": {}, "mac": "", "ips": None}
    chain.add_list(nl, rt)
    assert "runtimeConfig" not in records(calls)[0]["stdin"]


def test_failure_at_plugin_2_deletes_plugin_2_and_1_then_raises_its_error(make, rt, calls):
    err = {"code": 7, "msg": "vlan 5000 out of range", "details": "field: vlan"}
    nl = make({"type": "fake-a", "fake": {"result": ADDR_A}}, {"type": "fake-b", "fake": {"fail": {"ADD": err}}},
              "fake-c")
    with pytest.raises(CNIError) as e:
        chain.add_list(nl, rt)
    assert (e.value.code, e.value.details) == (7, "field: vlan")
    assert "vlan 5000" in e.value.msg
    assert steps(calls) == [("fake-a", "ADD"), ("fake-b", "ADD"), ("fake-b", "DEL"), ("fake-a", "DEL")]
    dels = [c for c in records(calls) if c["command"] == "DEL"]
    for d in dels:  # the undo tells each plugin what had been made so far
        assert d["stdin"]["prevResult"]["ips"][0]["address"] == "198.18.0.2/24"
        assert d["env"]["CNI_CONTAINERID"] == "c0ffee" and d["env"]["CNI_IFNAME"] == "net1"


def test_failure_of_the_undo_does_not_hide_the_original_error(make, rt, calls):
    nl = make({"type": "fake-a", "fake": {"fail": {"DEL": {"code": 5, "msg": "disk full"}}}},
              {"type": "fake-b", "fake": {"crash": {"ADD": "segfault"}}})
    with pytest.raises(CNIError) as e:
        chain.add_list(nl, rt)
    assert e.value.code == errors.DELEGATE_FAILED and "fake-b" in e.value.msg
    assert steps(calls) == [("fake-a", "ADD"), ("fake-b", "ADD"), ("fake-b", "DEL"), ("fake-a", "DEL")]


def test_failure_at_the_first_plugin_deletes_it(make, rt, calls):
    nl = make({"type": "fake-a", "fake": {"fail": {"ADD": {"code": 102, "msg": "pool full"}}}}, "fake-b")
    with pytest.raises(CNIError) as e:
        chain.add_list(nl, rt)
    assert e.value.code == errors.IPAM_EXHAUSTED
    assert steps(calls) == [("fake-a", "ADD"), ("fake-a", "DEL")]
    assert "prevResult" not in records(calls)[1]["stdin"]


def test_unknown_plugin_midway_undoes_the_ones_before(make, rt, calls):
    nl = make("fake-a", "fake-missing")
    with pytest.raises(CNIError) as e:
        chain.add_list(nl, rt)
    assert e.value.code == errors.NOT_FOUND
    assert steps(calls) == [("fake-a", "ADD"), ("fake-a", "DEL")]


def test_del_runs_in_reverse_with_the_cached_result(make, rt, calls):
    nl = make("fake-a", "fake-b", "fake-c")
    cached = Result.from_dict({**ADDR_A, "cniVersion": "1.0.0"})
    chain.del_list(nl, rt, cached)
    assert steps(calls) == [("fake-c", "DEL"), ("fake-b", "DEL"), ("fake-a", "DEL")]
    for c in records(calls):
        assert c["stdin"]["prevResult"] == cached.to_dict("1.0.0")


def test_del_attempts_every_plugin_and_raises_the_first_error(make, rt, calls):
    nl = make({"type": "fake-a"},
              {"type": "fake-b", "fake": {"fail": {"DEL": {"code": 5, "msg": "b failed"}}}},
              {"type": "fake-c", "fake": {"fail": {"DEL": {"code": 11, "msg": "c busy"}}}})
    with pytest.raises(CNIError) as e:
        chain.del_list(nl, rt, None)
    assert e.value.code == 11 and "c busy" in e.value.msg
    assert steps(calls) == [("fake-c", "DEL"), ("fake-b", "DEL"), ("fake-a", "DEL")]


def test_del_without_netns_or_cache(make, rt, calls):
    rt.netns = ""
    chain.del_list(make("fake-a"), rt, None)
    (c,) = records(calls)
    assert "CNI_NETNS" not in c["env"] and "prevResult" not in c["stdin"]


def test_del_before_0_4_0_passes_no_prev_result(make, rt, calls):
    chain.del_list(make("fake-a", version="0.3.1"), rt, Result.from_dict({**ADDR_A, "cniVersion": "0.3.1"}))
    assert "prevResult" not in records(calls)[0]["stdin"]


def test_check_runs_in_order_with_the_cached_result_and_stops_at_the_first_failure(make, rt, calls):
    nl = make("fake-a", {"type": "fake-b", "fake": {"fail": {"CHECK": {"code": 104, "msg": "address gone"}}}},
              "fake-c")
    cached = Result.from_dict({**ADDR_A, "cniVersion": "1.0.0"})
    with pytest.raises(CNIError) as e:
        chain.check_list(nl, rt, cached)
    assert e.value.code == errors.CHECK_FAILED
    assert steps(calls) == [("fake-a", "CHECK"), ("fake-b", "CHECK")]
    assert records(calls)[0]["stdin"]["prevResult"] == cached.to_dict("1.0.0")


def test_check_filters_capabilities_but_never_refuses(make, rt, calls):
    rt.capability_args = {"mac": "0a:58:c6:12:00:09"}
    chain.check_list(make("fake-a"), rt, None)
    assert steps(calls) == [("fake-a", "CHECK")]


def test_check_skipped_with_disable_check(make, rt, calls):
    chain.check_list(make("fake-a", disableCheck=True), rt, None)
    assert records(calls) == []


@pytest.mark.parametrize("v", ["0.3.0", "0.3.1"])
def test_check_refused_before_0_4_0(make, rt, calls, v):
    with pytest.raises(CNIError) as e:
        chain.check_list(make("fake-a", version=v), rt, None)
    assert e.value.code == errors.INCOMPATIBLE_VERSION and "field: cniVersion" in e.value.details
    assert records(calls) == []


def test_gc_sends_the_valid_attachments_to_every_plugin(make, bindir, calls):
    nl = make({"type": "fake-a", "fake": {"fail": {"GC": {"code": 5, "msg": "a failed"}}}}, "fake-b",
              version="1.1.0")
    with pytest.raises(CNIError) as e:
        chain.gc_list(nl, [("c1", "eth0"), {"containerID": "c2", "ifname": "net1"}], path=[bindir])
    assert e.value.code == 5
    assert steps(calls) == [("fake-a", "GC"), ("fake-b", "GC")]  # all attempted
    for c in records(calls):
        assert c["stdin"]["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"},
                                                           {"containerID": "c2", "ifname": "net1"}]
        assert c["stdin"]["name"] == "net-a" and c["stdin"]["cniVersion"] == "1.1.0"
        assert set(c["env"]) == {"CNI_COMMAND", "CNI_PATH"}


def test_gc_gives_built_ins_the_containers_and_exec_d_plugins_the_pairs_only(make, bindir, calls, fake_builtins):
    from multiplex.cni.valid import keep_of

    nl = make({"type": "fake-builtin", "multiplex.dev/valid-containers": ["a-nad-said-so"]},
              {"type": "fake-a", "multiplex.dev/valid-containers": ["a-nad-said-so"]}, version="1.1.0")
    chain.gc_list(nl, keep_of([("c1", "eth0"), ("c1", "net1")], ["c1", "c2"]), path=[bindir])
    builtin, external = [c["stdin"] for c in records(calls)]
    pairs = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c1", "ifname": "net1"}]
    assert builtin["cni.dev/valid-attachments"] == pairs
    assert builtin["multiplex.dev/valid-containers"] == ["c1", "c2"]   # the meta plugin's, not the NAD's
    assert external["cni.dev/valid-attachments"] == pairs
    assert "multiplex.dev/valid-containers" not in external


def test_gc_not_forwarded_to_exec_d_plugins_when_the_pairs_are_incomplete(make, bindir, calls, fake_builtins):
    from multiplex.cni.valid import keep_of

    nl = make("fake-builtin", "fake-a", version="1.1.0")
    chain.gc_list(nl, keep_of([("c1", "eth0")], ["c1"]), path=[bindir], external=False)
    assert steps(calls) == [("fake-builtin", "GC")]


def test_gc_skipped_before_1_1_0_and_with_disable_gc(make, bindir, calls):
    chain.gc_list(make("fake-a", version="1.0.0"), [], path=[bindir])
    chain.gc_list(make("fake-a", version="1.1.0", disableGC=True), [], path=[bindir])
    assert records(calls) == []


def test_status_raises_the_first_plugins_error(make, bindir, calls):
    nl = make({"type": "fake-a", "fake": {"fail": {"STATUS": {"code": 50, "msg": "pool exhausted"}}}}, "fake-b",
              version="1.1.0")
    with pytest.raises(CNIError) as e:
        chain.status_list(nl, path=[bindir])
    assert e.value.code == errors.PLUGIN_NOT_AVAILABLE
    assert steps(calls) == [("fake-a", "STATUS")]


def test_status_all_fine_and_skipped_before_1_1_0(make, bindir, calls):
    chain.status_list(make("fake-a", "fake-b", version="1.1.0"), path=[bindir])
    chain.status_list(make("fake-c", version="1.0.0"), path=[bindir])
    assert steps(calls) == [("fake-a", "STATUS"), ("fake-b", "STATUS")]


def test_args_are_merged_into_each_plugin_config(make, rt, calls):
    nl = make({"type": "fake-a", "args": {"cni": {"own": "1"}, "other": True}}, "fake-b")
    rt.args = {"cni": {"isolated": "true"}}
    chain.add_list(nl, rt)
    a, b = records(calls)
    assert a["stdin"]["args"] == {"cni": {"own": "1", "isolated": "true"}, "other": True}
    assert b["stdin"]["args"] == {"cni": {"isolated": "true"}}


def test_build_config_never_changes_the_list(make, rt):
    nl = make({"type": "fake-a", "prevResult": {"stale": True}})
    before = [dict(p) for p in nl.plugins]
    conf = chain.build_config(nl, 0, rt, Result.from_dict({"cniVersion": "1.0.0"}))
    conf["fake"]["record"] = "changed"
    assert nl.plugins == before
    assert conf["prevResult"] == {"cniVersion": "1.0.0", "dns": {}}


def test_every_plugin_request_carries_the_runtime_context(make):
    from multiplex.cni.context import CallContext

    ctx = CallContext(state_dir="/run/mpx-a", kubeconfig="/etc/a.kubeconfig")
    rt = chain.Runtime(container_id="c1", ifname="eth0", deadline=123.0, ctx=ctx)
    req = chain._request("ADD", chain.build_config(make({"type": "fake-a"}), 0, rt), rt)
    assert req.ctx is ctx and req.deadline == 123.0
    assert req.env({})["MULTIPLEX_STATE_DIR"] == "/run/mpx-a"
