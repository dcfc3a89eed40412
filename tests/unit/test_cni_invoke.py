"""Calling a plugin by `type`: in-process for built-ins, exec'd from CNI_PATH otherwise."""
from __future__ import annotations

import json
import os

import pytest

from tests.fakeplugins import fake_builtins, install, records  # noqa: F401  (fixture)
from multiplex.util import log
from multiplex.cni import errors
from multiplex.cni.errors import CNIError
from multiplex.cni.invoke import exec_plugin, find_plugin, invoke
from multiplex.cni.request import Request


@pytest.fixture
def bindir(tmp_path):
    return install(tmp_path / "bin", "fake-a")


@pytest.fixture
def calls(tmp_path):
    return str(tmp_path / "calls.jsonl")


@pytest.fixture
def logfile(tmp_path, monkeypatch):
    """Our log, to a file of the test's own, at info level."""
    path = tmp_path / "multiplex.log"
    monkeypatch.setattr(log, "_logger", log.Logger(str(path), "info"))
    return path


def log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def request(bindir, command="ADD", fake=None, type_="fake-a", version="1.1.0", **over) -> Request:
    config = {"cniVersion": version, "name": "net1", "type": type_, "fake": fake or {}}
    fields = dict(command=command, container_id="c0ffee", netns="/var/run/netns/p1", ifname="net1",
                  args={"IgnoreUnknown": "1", "K8S_POD_NAME": "web"}, path=["/nonexistent", bindir],
                  config=config)
    fields.update(over)
    return Request(**fields)


@pytest.mark.parametrize("bad", ["../bin/bridge", "/usr/lib/cni/bridge", "sub/dir", "..", "a..b"])
def test_type_with_a_path_is_refused(bad, bindir):
    with pytest.raises(CNIError) as e:
        invoke(request(bindir, type_=bad))
    assert e.value.code == errors.INVALID_CONFIG
    assert "field: type" in e.value.details and "'/'" in e.value.details


def test_unknown_type_names_the_search_path(bindir):
    with pytest.raises(CNIError) as e:
        invoke(request(bindir, type_="no-such-plugin"))
    assert e.value.code == errors.NOT_FOUND
    assert "no-such-plugin" in e.value.msg
    assert f"/nonexistent{os.pathsep}{bindir}" in e.value.details


def test_a_file_without_exec_permission_is_not_a_plugin(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "fake-x").write_text("#!/bin/sh\n")
    with pytest.raises(CNIError) as e:
        find_plugin("fake-x", [str(d)])
    assert e.value.code == errors.NOT_FOUND


def test_exec_gets_the_spec_environment_and_config(bindir, calls, monkeypatch):
    monkeypatch.setenv("CNI_STALE", "from-our-own-env")  # never leaks into the plugin's env
    req = request(bindir, fake={"record": calls})
    result = invoke(req)
    (call,) = records(calls)
    assert call["env"] == {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/p1",
        "CNI_IFNAME": "net1", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
        "CNI_PATH": f"/nonexistent{os.pathsep}{bindir}"}
    assert call["stdin"] == req.config
    assert call["pid"] != os.getpid()  # exec'd
    assert result.to_dict("1.1.0") == {"cniVersion": "1.1.0", "interfaces": [{"name": "fake-a"}], "dns": {}}


@pytest.mark.parametrize("command", ["DEL", "CHECK", "STATUS", "GC"])
def test_exec_other_commands(bindir, calls, command):
    assert invoke(request(bindir, command, fake={"record": calls})) is None
    assert records(calls)[0]["env"]["CNI_COMMAND"] == command


def test_gc_exec_has_no_container_variables(bindir, calls):
    invoke(request(bindir, "GC", fake={"record": calls}, container_id="", netns="", ifname="", args={}))
    assert set(records(calls)[0]["env"]) == {"CNI_COMMAND", "CNI_PATH"}


@pytest.mark.parametrize("v", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_exec_result_in_each_version(bindir, v):
    res = {"interfaces": [{"name": "net1", "sandbox": "/var/run/netns/p1"}],
           "ips": [{"address": "198.18.5.2/24", "interface": 0,
                    **({"version": "4"} if v.startswith("0.") else {})}]}
    r = invoke(request(bindir, version=v, fake={"result": res}))
    assert r.cni_version == v
    assert [str(ip.address) for ip in r.ips] == ["198.18.5.2/24"]


def test_plugin_error_passed_through(bindir, calls, logfile):
    err = {"code": 7, "msg": "invalid subnet", "details": "field: ipam.subnet"}
    with pytest.raises(CNIError) as e:
        invoke(request(bindir, fake={"fail": {"ADD": err}, "stderr": "subnet 198.18.0.0/33 rejected"}))
    assert e.value.code == 7
    assert e.value.msg == "fake-a: invalid subnet"
    assert e.value.details == "field: ipam.subnet"
    stderr_lines = [r for r in log_lines(logfile) if r["msg"] == "plugin stderr"]
    assert stderr_lines[0]["level"] == "warning"
    assert "198.18.0.0/33 rejected" in stderr_lines[0]["stderr"]


def test_plugin_own_codes_pass_through(bindir):
    with pytest.raises(CNIError) as e:
        invoke(request(bindir, "STATUS", fake={"fail": {"STATUS": {"code": 50, "msg": "no pool"}}}))
    assert e.value.code == errors.PLUGIN_NOT_AVAILABLE


def test_crash_without_cni_error_is_delegate_failed(bindir):
    with pytest.raises(CNIError) as e:
        invoke(request(bindir, fake={"crash": {"ADD": "panic: runtime error: nil pointer"}}))
    assert e.value.code == errors.DELEGATE_FAILED
    assert "fake-a" in e.value.msg and "exit code 2" in e.value.msg
    assert "crashed on ADD" in e.value.details  # the plugin's stderr says what happened


def test_success_but_result_not_json_is_decode_failure(bindir, tmp_path):
    p = tmp_path / "bin" / "fake-liar"
    p.write_text("#!/bin/sh\ncat >/dev/null\necho 'all good'\n")
    p.chmod(0o755)
    with pytest.raises(CNIError) as e:
        invoke(request(bindir, type_="fake-liar"))
    assert e.value.code == errors.DECODE_FAILURE
    assert "all good" in e.value.details


def test_hanging_plugin_times_out_with_try_again_later(bindir, calls):
    with pytest.raises(CNIError) as e:
        invoke(request(bindir, fake={"hang": {"ADD": 120}, "record": calls}), timeout=0.5)
    assert e.value.code == errors.TRY_AGAIN_LATER
    assert "pluginTimeout 0.5s" in e.value.msg and "killed" in e.value.msg
    assert records(calls) == []  # killed before it did anything


def test_exec_is_bounded_by_what_is_left_of_the_calls_deadline(bindir, calls):
    import time

    req = request(bindir, fake={"hang": {"ADD": 120}, "record": calls}, deadline=time.monotonic() + 0.5)
    with pytest.raises(CNIError) as e:
        invoke(req, timeout=60)  # pluginTimeout is 60 s, but the call has 0.5 s left
    assert e.value.code == errors.TRY_AGAIN_LATER
    assert "deadline" in e.value.msg and "fake-a" in e.value.msg
    assert records(calls) == []


def test_no_exec_once_the_calls_deadline_has_passed(bindir, calls):
    import time

    req = request(bindir, fake={"record": calls}, deadline=time.monotonic() - 1)
    with pytest.raises(CNIError) as e:
        invoke(req)
    assert e.value.code == errors.TRY_AGAIN_LATER and "deadline" in e.value.msg
    assert records(calls) == []  # never started


def test_stderr_of_a_successful_plugin_is_logged(bindir, logfile):
    invoke(request(bindir, fake={"stderr": "bridge cni0 created"}))
    lines = [r for r in log_lines(logfile) if r["msg"] == "plugin stderr"]
    assert lines and lines[0]["plugin"] == "fake-a" and "cni0 created" in lines[0]["stderr"]
    assert lines[0]["level"] == "info"


def test_exec_of_a_missing_binary_is_io_failure(tmp_path, bindir):
    with pytest.raises(CNIError) as e:
        exec_plugin(str(tmp_path / "gone"), request(bindir))
    assert e.value.code == errors.IO_FAILURE


def test_builtin_runs_in_process(fake_builtins, bindir, calls):
    r = invoke(request(bindir, type_="fake-builtin", fake={"record": calls}))
    (call,) = records(calls)
    assert call["pid"] == os.getpid()
    assert call["env"]["CNI_IFNAME"] == "net1"
    assert r.interfaces[0].name == "fake-builtin"


def test_builtin_error_is_raised_as_is(fake_builtins, bindir):
    with pytest.raises(CNIError) as e:
        invoke(request(bindir, type_="fake-builtin",
                       fake={"fail": {"ADD": {"code": 102, "msg": "pool 198.18.0.0/30 is full"}}}))
    assert e.value.code == errors.IPAM_EXHAUSTED


def test_broken_builtin_entry_point_is_an_internal_error(monkeypatch, bindir):
    from multiplex.cni import registry

    registry.builtin.cache_clear()
    monkeypatch.setattr(registry, "_entry_points", lambda: {"fake-broken": "no_such_module_here:plugin"})
    try:
        with pytest.raises(CNIError) as e:
            invoke(request(bindir, type_="fake-broken"))
    finally:
        registry.builtin.cache_clear()
    assert e.value.code == errors.INTERNAL
    assert "fake-broken" in e.value.msg and "no_such_module_here" in e.value.details


def test_invoke_ipam_type_with_a_path_is_refused(bindir):
    from multiplex.cni.invoke import invoke_ipam

    req = request(bindir)
    req.config["ipam"] = {"type": "../host-local"}
    with pytest.raises(CNIError) as e:
        invoke_ipam(req)
    assert e.value.code == errors.INVALID_CONFIG and "field: ipam.type" in e.value.details


def test_a_timed_out_plugin_is_killed_with_everything_it_started(tmp_path):
    """A hanging plugin that started a child: on timeout both are gone (its own process group)."""
    import time

    from multiplex.cni.errors import CNIError
    from multiplex.cni.invoke import exec_plugin
    from multiplex.cni.request import Request

    pidfile = tmp_path / "child.pid"
    plugin = tmp_path / "spawner"
    plugin.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    plugin.chmod(0o755)
    req = Request(command="ADD", container_id="c1", netns="/x", ifname="eth0",
                  config={"cniVersion": "1.1.0", "name": "n", "type": "spawner"})
    with pytest.raises(CNIError) as e:
        exec_plugin(str(plugin), req, timeout=0.5)
    assert e.value.code == 11
    child = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the plugin's child outlived the timeout")
