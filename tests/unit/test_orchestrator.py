"""The meta plugin's logic with fake delegates (exec'd from a CNI_PATH of the test's own): how the
cluster network is resolved, what each delegate receives, ordering of ADD/DEL, rollback, GC and
STATUS forwarding. No kernel work, so no root needed."""
from __future__ import annotations

import io
import json
import os

import pytest

from multiplex.cni.skel import run
from multiplex.meta.orchestrator import plugin
from tests.fakeplugins import fake_builtins, install, records  # noqa: F401  (fixture)


@pytest.fixture
def env(tmp_path):
    bin_dir = install(tmp_path / "bin", "fake-a", "fake-b", "fake-c")
    rec = str(tmp_path / "calls.jsonl")
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    nad_dir = tmp_path / "nads"
    nad_dir.mkdir()
    pod_dir = tmp_path / "pods"
    pod_dir.mkdir()

    class Env:
        path = bin_dir
        record = rec
        root = tmp_path

        def fake(self, type_: str, name: str, caps=None, **fake) -> dict:
            conf = {"cniVersion": "1.1.0", "name": name, "type": type_, "fake": dict(fake, record=rec)}
            if caps:
                conf["capabilities"] = {c: True for c in caps}
            return conf

        def nad(self, name: str, config, namespace: str = "default") -> None:
            doc = {"kind": "NetworkAttachmentDefinition", "metadata": {"name": name, "namespace": namespace},
                   "spec": {"config": json.dumps(config) if config is not None else ""}}
            (nad_dir / f"{namespace}-{name}.json").write_text(json.dumps(doc))

        def pod(self, name: str, networks, namespace: str = "default") -> None:
            value = networks if isinstance(networks, str) else json.dumps(networks)
            doc = {"kind": "Pod", "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                                               "annotations": {"k8s.v1.cni.cncf.io/networks": value}}}
            (pod_dir / f"{namespace}-{name}.json").write_text(json.dumps(doc))

        def config(self, **extra) -> dict:
            conf = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "confDir": str(conf_dir),
                    "nadDir": str(nad_dir), "podDir": str(pod_dir), "stateDir": str(tmp_path / "state")}
            conf.update(extra)
            return conf

        def call(self, command: str, config: dict, pod: str = "p", cid: str = "c1", ifname: str = "eth0",
                 namespace: str = "default"):
            e = {"CNI_COMMAND": command, "CNI_PATH": self.path,
                 "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"}
            if command not in ("GC", "STATUS"):
                e.update({"CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/fake-" + cid, "CNI_IFNAME": ifname})
            out = io.StringIO()
            rc = run(plugin, e, json.dumps(config).encode(), out)
            text = out.getvalue()
            return rc, (json.loads(text) if text else None)

        def calls(self) -> list[tuple[str, str, str]]:
            """(command, network name, CNI_IFNAME) of every delegate call, in order."""
            return [(r["command"], r["stdin"]["name"], r["env"].get("CNI_IFNAME", "")) for r in records(rec)]

    e = Env()
    e.conf_dir = conf_dir
    return e


def test_cluster_network_by_config_name_in_conf_dir(env):
    (env.conf_dir / "10-podnet.conf").write_text(json.dumps(env.fake("fake-a", "podnet")))
    env.pod("p", "")
    rc, out = env.call("ADD", env.config(clusterNetwork="podnet"))
    assert rc == 0, out
    assert env.calls() == [("ADD", "podnet", "eth0")]  # the admin's conf file keeps its own name
    assert out["interfaces"][-1]["name"] == "fake-a"


def test_cluster_network_from_an_absolute_file_and_a_directory(env):
    d = env.root / "cluster"
    d.mkdir()
    (d / "20-second.conf").write_text(json.dumps(env.fake("fake-b", "second")))
    (d / "10-first.conflist").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": "first", "plugins": [dict(env.fake("fake-a", "first"), name=None)]}))
    env.pod("p", "")
    assert env.call("ADD", env.config(clusterNetwork=str(d)), cid="c1")[0] == 0
    assert env.call("ADD", env.config(clusterNetwork=str(d / "20-second.conf")), cid="c2")[0] == 0
    assert [c[1] for c in env.calls()] == ["first", "second"]


def test_nad_with_empty_spec_config_uses_the_conf_file_of_that_name(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    (env.conf_dir / "30-storage.conf").write_text(json.dumps(env.fake("fake-b", "storage")))
    env.nad("storage", None)
    env.pod("p", "storage")
    rc, out = env.call("ADD", env.config(clusterNetwork="podnet"))
    assert rc == 0, out
    # NAD-sourced networks are named with their namespace (two namespaces' NADs never share one)
    assert env.calls() == [("ADD", "default.podnet", "eth0"), ("ADD", "default.storage", "net1")]


def test_annotation_requests_reach_the_delegate_and_runtime_config_only_the_cluster_network(env):
    env.nad("podnet", env.fake("fake-a", "podnet", caps=["portMappings"]))
    env.nad("data", env.fake("fake-b", "data", caps=["ips", "mac", "portMappings"]))
    env.pod("p", [{"name": "data", "interface": "data0", "ips": ["198.18.1.5/24"], "mac": "02:00:00:00:00:05",
                   "cni-args": {"color": "blue"}, "portMappings": [{"containerPort": 80, "hostPort": 8080}]}])
    conf = env.config(clusterNetwork="podnet",
                      runtimeConfig={"portMappings": [{"containerPort": 53, "hostPort": 5353, "protocol": "udp"}]})
    rc, out = env.call("ADD", conf)
    assert rc == 0, out
    cluster, data = [r["stdin"] for r in records(env.record)]
    assert cluster["runtimeConfig"] == {"portMappings": [{"containerPort": 53, "hostPort": 5353, "protocol": "udp"}]}
    assert data["runtimeConfig"] == {"ips": ["198.18.1.5/24"], "mac": "02:00:00:00:00:05",
                                     "portMappings": [{"containerPort": 80, "hostPort": 8080}]}
    assert data["args"]["cni"] == {"color": "blue"}
    assert records(env.record)[1]["env"]["CNI_IFNAME"] == "data0"
    assert "K8S_POD_NAME=p" in records(env.record)[1]["env"]["CNI_ARGS"]


def test_failure_at_the_third_attachment_undoes_two_and_one_in_reverse(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("one", env.fake("fake-b", "one"))
    env.nad("two", env.fake("fake-c", "two", fail={"ADD": {"code": 11, "msg": "no capacity", "details": "x"}}))
    env.pod("p", "one, two")
    rc, out = env.call("ADD", env.config(clusterNetwork="podnet"))
    assert rc == 1 and out["code"] == 11 and "no capacity" in out["msg"]
    assert env.calls() == [("ADD", "default.podnet", "eth0"), ("ADD", "default.one", "net1"),
                           ("ADD", "default.two", "net2"), ("DEL", "default.two", "net2"),
                           ("DEL", "default.one", "net1"), ("DEL", "default.podnet", "eth0")]
    assert not os.listdir(env.root / "state" / "cache") or all(
        f.startswith(".") for f in os.listdir(env.root / "state" / "cache"))


def test_del_runs_in_reverse_from_the_cache_even_when_definitions_are_gone(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("one", env.fake("fake-b", "one"))
    env.pod("p", "one")
    assert env.call("ADD", env.config(clusterNetwork="podnet"))[0] == 0
    for f in os.listdir(env.root / "nads"):  # the definitions disappear: DEL works from the cache
        os.unlink(env.root / "nads" / f)
    assert env.call("DEL", env.config(clusterNetwork="podnet"))[0] == 0
    assert env.calls()[2:] == [("DEL", "default.one", "net1"), ("DEL", "default.podnet", "eth0")]
    dels = [r for r in records(env.record) if r["command"] == "DEL"]
    assert all(r["stdin"].get("prevResult") for r in dels), "DEL gets the cached result as prevResult"
    # again: no cache entry; the config's own cluster network is DELeted best effort, and it succeeds
    assert env.call("DEL", env.config(clusterNetwork=env.fake("fake-a", "podnet")))[0] == 0


def test_gc_removes_stale_pods_and_forwards_the_valid_attachments(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("one", env.fake("fake-b", "one"))
    env.pod("p", "one")
    assert env.call("ADD", env.config(clusterNetwork="podnet"), cid="keep")[0] == 0
    assert env.call("ADD", env.config(clusterNetwork="podnet"), cid="stale")[0] == 0
    conf = env.config(clusterNetwork="podnet")
    conf["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"}]
    rc, out = env.call("GC", conf)
    assert rc == 0, out
    recs = records(env.record)
    dels = [(r["env"]["CNI_CONTAINERID"], r["stdin"]["name"]) for r in recs if r["command"] == "DEL"]
    assert dels == [("stale", "default.one"), ("stale", "default.podnet")]
    gcs = {r["stdin"]["name"]: r["stdin"]["cni.dev/valid-attachments"] for r in recs if r["command"] == "GC"}
    # exec'd plugins get the spec's pairs: every interface of the listed pod, none of the stale one
    both = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "keep", "ifname": "net1"}]
    assert gcs == {"default.podnet": both, "default.one": both}


def test_status_names_the_network_that_is_not_ready(env):
    env.nad("podnet", env.fake("fake-a", "podnet", fail={"STATUS": {"code": 50, "msg": "pool empty"}}))
    rc, out = env.call("STATUS", env.config(clusterNetwork="podnet"))
    assert rc == 1 and out["code"] == 50 and "podnet" in out["msg"] and "pool empty" in out["msg"]


def test_add_twice_returns_the_cached_result_without_calling_delegates_again(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.pod("p", "")
    first = env.call("ADD", env.config(clusterNetwork="podnet"))
    second = env.call("ADD", env.config(clusterNetwork="podnet"))
    assert first == second and first[0] == 0
    assert env.calls() == [("ADD", "default.podnet", "eth0")]


def test_status_answers_with_status_codes_even_for_other_errors(env):
    env.nad("podnet", env.fake("fake-a", "podnet", fail={"STATUS": {"code": 11, "msg": "busy"}}))
    rc, out = env.call("STATUS", env.config(clusterNetwork="podnet"))
    assert rc == 1 and out["code"] == 50 and "busy" in out["msg"]
    rc, out = env.call("STATUS", env.config(clusterNetwork="no-such-network"))
    assert rc == 1 and out["code"] == 50 and "no-such-network" in out["msg"] + out.get("details", "")


def test_gc_still_collects_cached_pods_when_the_cluster_network_cannot_be_resolved(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.pod("p", "")
    assert env.call("ADD", env.config(clusterNetwork="podnet"), cid="stale")[0] == 0
    os.unlink(env.root / "nads" / "default-podnet.json")
    conf = env.config(clusterNetwork="podnet")
    conf["cni.dev/valid-attachments"] = []
    rc, out = env.call("GC", conf)
    assert rc == 0, out
    calls = [(r["command"], r["env"].get("CNI_CONTAINERID"), r["stdin"]["name"]) for r in records(env.record)]
    # the stale pod is DELeted from its cache entry, and its network still gets GC (nothing listed)
    assert calls[1:] == [("DEL", "stale", "default.podnet"), ("GC", None, "default.podnet")]
    assert records(env.record)[-1]["stdin"]["cni.dev/valid-attachments"] == []


# ---- GC keeps exactly what the runtime lists; DEL cleans without its cache (issue 8) ------------

def cache_dir(env) -> str:
    return str(env.root / "state" / "cache")


def cache_files(env) -> list[str]:
    d = cache_dir(env)
    return sorted(f for f in os.listdir(d) if not f.startswith(".")) if os.path.isdir(d) else []


def gc_conf(env, valid, **extra) -> dict:
    conf = env.config(clusterNetwork="podnet", **extra)
    if valid is not None:
        conf["cni.dev/valid-attachments"] = valid
    return conf


def two_pods(env) -> None:
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("one", env.fake("fake-b", "one"))
    env.pod("p", "one")
    for cid in ("keep", "stale"):
        assert env.call("ADD", env.config(clusterNetwork="podnet"), cid=cid)[0] == 0


@pytest.mark.parametrize("valid, field", [
    (None, '$["cni.dev/valid-attachments"]'),
    ("keep/eth0", '$["cni.dev/valid-attachments"]'),
    ([{"containerId": "keep", "ifName": "eth0"}], '$["cni.dev/valid-attachments"][0].containerID'),
    ([{"containerID": "keep", "ifName": "eth0"}], '$["cni.dev/valid-attachments"][0].ifname'),
])
def test_gc_with_a_malformed_keep_list_is_code_7_and_touches_nothing(env, valid, field):
    two_pods(env)
    before = records(env.record)
    rc, out = env.call("GC", gc_conf(env, valid))
    assert rc == 1 and out["code"] == 7, out
    assert f"field: {field}" in out["details"]
    assert records(env.record) == before          # no DEL, no GC reached any delegate
    assert cache_files(env) == ["keep:eth0.json", "stale:eth0.json"]


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_gc_keeps_a_listed_pod_whose_cache_entry_is_missing_or_corrupt(env, fake_builtins, damage):
    env.nad("podnet", env.fake("fake-builtin", "podnet"))
    env.nad("one", env.fake("fake-a", "one"))
    env.pod("p", "one")
    assert env.call("ADD", env.config(clusterNetwork="podnet"), cid="keep")[0] == 0
    path = os.path.join(cache_dir(env), "keep:eth0.json")
    if damage == "missing":
        os.unlink(path)
    else:
        with open(path, "w") as f:
            f.write('{"kind": "multiplex-cache/v1", "containerID": "keep", "rec')
    n = len(records(env.record))
    rc, out = env.call("GC", gc_conf(env, [{"containerID": "keep", "ifname": "eth0"}]))
    assert rc == 0, out
    calls = records(env.record)[n:]
    assert [c["command"] for c in calls] == ["GC"]  # nothing DELeted
    # the built-in is told to keep the whole container (its net1 included) ...
    assert calls[0]["type"] == "fake-builtin"
    assert calls[0]["stdin"]["multiplex.dev/valid-containers"] == ["keep"]
    # ... and the exec'd plugin of `one` gets no GC: its pairs could not name keep's net1
    assert (os.path.exists(path)) == (damage == "corrupt")  # a listed pod's entry is never removed


def test_gc_skips_a_stale_entry_whose_container_lock_is_held(env, fake_builtins):
    import threading

    from multiplex.cni.lock import LOCK_FILE, container_lock

    env.nad("podnet", env.fake("fake-builtin", "podnet"))
    env.pod("p", "")
    for cid in ("keep", "busy"):
        assert env.call("ADD", env.config(clusterNetwork="podnet"), cid=cid)[0] == 0
    held, release = threading.Event(), threading.Event()

    def hold():  # a DEL (or any call) for `busy` in flight
        with container_lock("busy", timeout=30, path=str(env.root / "state" / "locks" / LOCK_FILE)):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30)
        n = len(records(env.record))
        rc, out = env.call("GC", gc_conf(env, [{"containerID": "keep", "ifname": "eth0"}]))
    finally:
        release.set()
        t.join(30)
    assert rc == 0, out
    calls = records(env.record)[n:]
    assert [c["command"] for c in calls] == ["GC"]
    assert calls[0]["stdin"]["multiplex.dev/valid-containers"] == ["busy", "keep"]
    assert cache_files(env) == ["busy:eth0.json", "keep:eth0.json"]


def test_gc_while_adds_are_in_flight_waits_for_them_and_keeps_them(env):
    import threading

    env.nad("podnet", env.fake("fake-a", "podnet", hang={"ADD": 1}))
    env.pod("p", "")
    results: dict[str, tuple] = {}
    threads = [threading.Thread(target=lambda c=c: results.__setitem__(c, env.call(
        "ADD", env.config(clusterNetwork="podnet"), cid=c))) for c in ("a1", "a2")]
    for t in threads:
        t.start()
    try:
        # both ADDs have written their first cache entry: they are inside their attachment
        import time
        while len(cache_files(env)) < 2 and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        rc, out = env.call("GC", gc_conf(env, [{"containerID": "a1", "ifname": "eth0"},
                                               {"containerID": "a2", "ifname": "eth0"}]))
    finally:
        for t in threads:
            t.join(30)
    assert rc == 0, out
    assert results["a1"][0] == 0 and results["a2"][0] == 0
    recs = records(env.record)
    assert [r["command"] for r in recs] == ["ADD", "ADD", "GC"]  # nothing DELeted
    gc = recs[-1]
    assert gc["start"] >= max(r["end"] for r in recs[:2])   # GC ran after both ADDs were done
    assert gc["stdin"]["cni.dev/valid-attachments"] == [{"containerID": "a1", "ifname": "eth0"},
                                                         {"containerID": "a2", "ifname": "eth0"}]
    assert cache_files(env) == ["a1:eth0.json", "a2:eth0.json"]


def test_gc_with_same_named_nads_in_two_namespaces_keeps_both_and_reaches_each(env):
    for ns in ("default", "tenant-b"):
        env.nad("blue", env.fake("fake-b", "blue"), namespace=ns)
        env.pod("p", "blue", namespace=ns)
    env.nad("podnet", env.fake("fake-a", "podnet"))
    conf = env.config(clusterNetwork="podnet")
    assert env.call("ADD", conf, cid="pa", namespace="default")[0] == 0
    assert env.call("ADD", conf, cid="pb", namespace="tenant-b")[0] == 0
    n = len(records(env.record))
    rc, out = env.call("GC", gc_conf(env, [{"containerID": "pa", "ifname": "eth0"},
                                           {"containerID": "pb", "ifname": "eth0"}]))
    assert rc == 0, out
    calls = records(env.record)[n:]
    assert {c["command"] for c in calls} == {"GC"}
    by_name = {c["stdin"]["name"]: c["stdin"]["cni.dev/valid-attachments"] for c in calls}
    assert set(by_name) == {"default.podnet", "default.blue", "tenant-b.blue"}
    for valid in by_name.values():
        assert {"containerID": "pa", "ifname": "net1"} in valid and {"containerID": "pb", "ifname": "net1"} in valid


def sweeps(monkeypatch) -> list[tuple[str, str]]:
    """Record every sweep a built-in is asked for: (type, container ID)."""
    from tests.fakeplugins.inproc import FakeBuiltin

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(FakeBuiltin, "sweep", lambda self, req: seen.append((self.type_name, req.container_id)),
                        raising=False)
    return seen


@pytest.mark.parametrize("damage", ["missing", "corrupt", "netconf"])
def test_del_without_a_usable_cache_entry_sweeps_every_built_in_and_removes_the_file(env, fake_builtins,
                                                                                     monkeypatch, damage):
    env.nad("podnet", env.fake("fake-builtin", "podnet"))
    env.pod("p", "")
    assert env.call("ADD", env.config(clusterNetwork="podnet"), cid="c1")[0] == 0
    path = os.path.join(cache_dir(env), "c1:eth0.json")
    if damage == "missing":
        os.unlink(path)
    elif damage == "corrupt":
        with open(path, "w") as f:
            f.write("{half a rec")
    else:  # a record whose netconf no longer parses (a plugin list that is not a list)
        with open(path) as f:
            doc = json.load(f)
        doc["record"]["attachments"][0]["netconf"] = {"cniVersion": "1.1.0", "name": "x", "plugins": "nope"}
        with open(path, "w") as f:
            json.dump(doc, f)
    seen = sweeps(monkeypatch)
    for _ in range(2):  # and DEL twice
        rc, out = env.call("DEL", env.config(clusterNetwork="podnet"), cid="c1")
        assert rc == 0, out
    assert ("fake-builtin", "c1") in seen and ("fake-builtin-mac", "c1") in seen
    assert cache_files(env) == []


def test_an_entry_cached_before_identities_still_dels_and_gcs_with_its_old_name(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("one", env.fake("fake-b", "one"))
    from multiplex.cni.cache import ResultCache

    def v1_record(cid: str) -> dict:  # what the meta plugin wrote before identities: no configName
        atts = [{"network": "podnet", "ifname": "eth0", "netconf": env.fake("fake-a", "podnet"), "cluster": True,
                 "capabilityArgs": {}, "cniArgs": None, "defaultRoute": [], "namespace": "default",
                 "result": {"cniVersion": "1.1.0", "interfaces": [{"name": "fake-a"}]}},
                {"network": "default/one", "ifname": "net1", "netconf": env.fake("fake-b", "one"), "cluster": False,
                 "capabilityArgs": {}, "cniArgs": None, "defaultRoute": [], "namespace": "default",
                 "result": {"cniVersion": "1.1.0", "interfaces": [{"name": "fake-b"}]}}]
        return {"version": 1, "containerID": cid, "ifname": "eth0", "netns": "", "cniArgs": {},
                "attachments": atts, "complete": True, "default": 0}

    cache = ResultCache(cache_dir(env))
    for cid in ("old1", "old2", "old3"):
        cache.save(cid, "eth0", v1_record(cid))
    assert env.call("DEL", env.config(clusterNetwork="podnet"), cid="old1")[0] == 0
    assert env.calls() == [("DEL", "one", "net1"), ("DEL", "podnet", "eth0")]
    rc, out = env.call("GC", gc_conf(env, [{"containerID": "old2", "ifname": "eth0"}]))
    assert rc == 0, out
    recs = records(env.record)[2:]
    assert [(r["command"], r["env"].get("CNI_CONTAINERID"), r["stdin"]["name"]) for r in recs if r["command"] == "DEL"] \
        == [("DEL", "old3", "one"), ("DEL", "old3", "podnet")]
    gcs = {r["stdin"]["name"]: r["stdin"]["cni.dev/valid-attachments"] for r in recs if r["command"] == "GC"}
    kept = [{"containerID": "old2", "ifname": "eth0"}, {"containerID": "old2", "ifname": "net1"}]
    assert gcs["one"] == kept and gcs["podnet"] == kept   # the old names are reached
    assert cache_files(env) == ["old2:eth0.json"]


def test_an_add_that_cannot_write_its_cache_is_code_5_and_leaves_nothing(env, monkeypatch):
    import errno

    from multiplex.cni.cache import ResultCache

    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("one", env.fake("fake-b", "one"))
    env.pod("p", "one")
    real_save, real_fsync = ResultCache.save, os.fsync
    saves: list[int] = []

    def save(self, cid, ifname, record):
        saves.append(1)
        return real_save(self, cid, ifname, record)

    def fsync(fd):
        if len(saves) == 3:  # the entry written after the second attachment: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(ResultCache, "save", save)
    monkeypatch.setattr(os, "fsync", fsync)
    rc, out = env.call("ADD", env.config(clusterNetwork="podnet"))
    assert rc == 1 and out["code"] == 5, out
    assert "c1:eth0.json" in out["msg"] and "No space left" in out["msg"]
    assert env.calls() == [("ADD", "default.podnet", "eth0"), ("ADD", "default.one", "net1"),
                           ("DEL", "default.one", "net1"), ("DEL", "default.podnet", "eth0")]
    assert cache_files(env) == []


def test_a_state_dir_that_is_a_regular_file_is_code_5_for_add_and_del(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.pod("p", "")
    state = env.root / "state-file"
    state.write_text("")
    for command in ("ADD", "DEL"):
        rc, out = env.call(command, env.config(clusterNetwork="podnet", stateDir=str(state)))
        assert rc == 1 and out["code"] == 5, out
        assert str(state) in out["msg"] + out["details"]
    assert env.calls() == []
