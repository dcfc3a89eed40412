"""The meta plugin's logic with fake delegates (exec'd from a CNI_PATH of the test's own): how the
cluster network is resolved, what each delegate receives, ordering of ADD/DEL, rollback, GC and
STATUS forwarding. No kernel work, so no root needed."""
from __future__ import annotations

import io
import json
import os

import pytest

from multiplex.cni.skel import run
from multiplex.orchestrator import plugin
from tests.fakeplugins import install, records


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

        def call(self, command: str, config: dict, pod: str = "p", cid: str = "c1", ifname: str = "eth0"):
            e = {"CNI_COMMAND": command, "CNI_PATH": self.path,
                 "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"}
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
