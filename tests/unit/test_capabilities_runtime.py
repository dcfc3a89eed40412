"""Capabilities as libcni has them (cni/chain.py): what the runtime supplies goes to the cluster
network when it declares it and is dropped otherwise; what a pod's annotation asks of a NAD
network is refused (code 2) when no plugin of it declares it. And the pod's annotations handed
over by the runtime (`io.kubernetes.cri.pod-annotations`) choose the networks, with the same
parsing and limits as the pod's annotations read from a pod source.

Fake delegates exec'd from the test's own CNI_PATH (tests/fakeplugins): no root, no kernel."""
from __future__ import annotations

import json

from tests.fakeplugins import records
from tests.unit.test_orchestrator import env  # noqa: F401  (fixture)

PODANN = "io.kubernetes.cri.pod-annotations"
NETWORKS = "k8s.v1.cni.cncf.io/networks"
DNS = {"servers": ["198.18.0.53"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]}
PORTS = [{"containerPort": 80, "hostPort": 8080, "protocol": "tcp"}]


def cached_attachments(env, cid: str = "c1") -> list[dict]:
    from multiplex.cni.cache import ResultCache

    return ResultCache(str(env.root / "state" / "cache")).load(cid, "eth0")["attachments"]


def test_runtime_capabilities_the_cluster_network_does_not_declare_are_dropped_not_refused(env):
    env.nad("podnet", env.fake("fake-a", "podnet", caps=["portMappings"]))
    env.pod("p", "")
    conf = env.config(clusterNetwork="podnet", logLevel="debug", logFile=str(env.root / "mpx.log"),
                      capabilities={"dns": True, PODANN: True, "portMappings": True},
                      runtimeConfig={"dns": DNS, PODANN: {"team": "blue"}, "portMappings": PORTS})
    rc, out = env.call("ADD", conf)
    assert rc == 0, out
    (cluster,) = [r["stdin"] for r in records(env.record)]
    assert cluster["runtimeConfig"] == {"portMappings": PORTS}   # dns and the annotations dropped
    assert cached_attachments(env)[0]["capabilityArgs"] == {"portMappings": PORTS}
    lines = [json.loads(x) for x in (env.root / "mpx.log").read_text().splitlines() if x.strip()]
    dropped = [x for x in lines if x.get("dropped")]
    assert dropped and dropped[0]["level"] == "debug" and dropped[0]["dropped"] == ["dns", PODANN]
    assert env.call("DEL", conf)[0] == 0


def test_a_cluster_network_that_declares_dns_gets_it(env):
    env.nad("podnet", env.fake("fake-a", "podnet", caps=["dns"]))
    env.pod("p", "")
    rc, out = env.call("ADD", env.config(clusterNetwork="podnet", runtimeConfig={"dns": DNS, "portMappings": PORTS}))
    assert rc == 0, out
    assert records(env.record)[0]["stdin"]["runtimeConfig"] == {"dns": DNS}


def test_annotation_requested_capabilities_keep_the_refusal(env):
    env.nad("podnet", env.fake("fake-a", "podnet", caps=["portMappings"]))
    env.nad("data", env.fake("fake-b", "data"))
    env.pod("p", [{"name": "data", "portMappings": PORTS}])
    rc, out = env.call("ADD", env.config(clusterNetwork="podnet"))
    assert rc == 1 and out["code"] == 2, out
    assert "'portMappings'" in out["msg"] and "field: runtimeConfig.portMappings" in out["details"]
    assert records(env.record) == []      # refused before anything ran


def test_networks_come_from_the_runtimes_pod_annotations_when_it_passes_them(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("data", env.fake("fake-b", "data"))
    env.nad("blue", env.fake("fake-c", "blue"))
    env.pod("p", "blue")  # what a pod source says: not read when the runtime hands the annotations over
    conf = env.config(clusterNetwork="podnet", capabilities={PODANN: True},
                      runtimeConfig={PODANN: {NETWORKS: "data@data0", "other": "x"}})
    rc, out = env.call("ADD", conf)
    assert rc == 0, out
    assert env.calls() == [("ADD", "default.podnet", "eth0"), ("ADD", "default.data", "data0")]


def test_without_the_runtimes_annotations_the_pod_source_is_read(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("blue", env.fake("fake-c", "blue"))
    env.pod("p", "blue")
    for cid, runtime_config in (("c1", {}), ("c2", {PODANN: "not an object"})):
        rc, out = env.call("ADD", env.config(clusterNetwork="podnet", runtimeConfig=runtime_config), cid=cid)
        assert rc == 0, out
    assert [c[1:] for c in env.calls()] == [("default.podnet", "eth0"), ("default.blue", "net1")] * 2


def test_the_runtimes_annotations_get_the_same_parsing_and_limits(env):
    env.nad("podnet", env.fake("fake-a", "podnet"))
    env.nad("blue", env.fake("fake-c", "blue"))
    for value, field in (("blue@eth0", f"field: {NETWORKS}[0].interface"),
                         (", ".join(["blue"] * 20000), f"field: {NETWORKS};"),
                         (json.dumps([{"name": "blue", "ips": ["198.18.1.5/24"]}]), f"field: {NETWORKS}[0].ips")):
        rc, out = env.call("ADD", env.config(clusterNetwork="podnet", runtimeConfig={PODANN: {NETWORKS: value}}))
        assert rc == 1 and out["code"] in (2, 7) and field in out["details"], out
    assert records(env.record) == []
