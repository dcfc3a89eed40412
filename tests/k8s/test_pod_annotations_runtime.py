"""The pod's annotations from the runtime (`runtimeConfig["io.kubernetes.cri.pod-annotations"]`,
passed by containerd and CRI-O to a config that declares the capability) or, when absent, from
the API / the daemon's cache: which networks a pod gets, and how many pod reads the API serves.
The test API server counts every request; the delegates are fake plugins (no root)."""
from __future__ import annotations

from typing import Optional

import pytest

from multiplex.k8s.source import KubeSource
from tests.fakeplugins import records
from tests.k8s.test_events import POD_UID, node, result  # noqa: F401  (fixture)

PODANN = "io.kubernetes.cri.pod-annotations"
NETWORKS = "k8s.v1.cni.cncf.io/networks"


class CachedPods(KubeSource):
    """What the node daemon lends a call (cni/context.py Services.source): NADs from the API,
    pods from its informer cache (here: the store's objects, copied when the test says so)."""

    def __init__(self, client, pods: dict):
        super().__init__(client=client)
        self.pods = pods

    def get_pod(self, namespace: str, name: str, uid: str = "") -> Optional[dict]:
        return self.pods.get((namespace, name))


class Services:
    def __init__(self, source):
        self._source = source

    def source(self, conf):
        return self._source

    def observe_plugin(self, *args) -> None:
        pass


def declared(node, **runtime_config) -> dict:
    return node.config(capabilities={PODANN: True}, runtimeConfig=runtime_config)


def networks(node) -> list[tuple[str, str]]:
    return [(r["stdin"]["name"], r["env"]["CNI_IFNAME"]) for r in records(node.record) if r["command"] == "ADD"]


@pytest.fixture
def green(node):
    node.nad("green", "fake-c", result=result("net1", "198.18.2.5/24"))
    return node


def test_with_the_runtimes_annotations_no_pod_is_read(green):
    node = green
    node.pod("web", "blue")   # the API's copy says blue; the runtime's (the sandbox's) says green
    rc, out = node.add(declared(node, **{PODANN: {NETWORKS: "green@data0"}}))
    assert rc == 0, out
    assert networks(node) == [("default.podnet", "eth0"), ("default.green", "data0")]
    assert node.api.count("get", "pods") == 0
    assert node.api.count("get", "network-attachment-definitions") == 2   # podnet, green
    assert node.api.count("patch", "pods") == 1                           # network-status


def test_without_them_the_pod_is_read_from_the_api_once(node):
    node.pod("web", "blue")
    rc, out = node.add(declared(node))
    assert rc == 0, out
    assert networks(node) == [("default.podnet", "eth0"), ("default.blue", "net1")]
    assert node.api.count("get", "pods") == 1


def test_a_cached_pod_and_the_runtimes_annotations_cost_no_pod_read(green):
    node = green
    pod = node.pod("web", "blue")
    source = CachedPods(KubeSource(node.api.kubeconfig).client, {("default", "web"): pod})
    rc, out = node.add(declared(node, **{PODANN: {NETWORKS: "green"}}), services=Services(source))
    assert rc == 0, out
    assert networks(node) == [("default.podnet", "eth0"), ("default.green", "net1")]
    assert node.api.count("get", "pods") == 0


def test_a_cached_pod_without_the_runtimes_annotations_costs_no_pod_read(node):
    pod = node.pod("web", "blue")
    source = CachedPods(KubeSource(node.api.kubeconfig).client, {("default", "web"): pod})
    rc, out = node.add(declared(node), services=Services(source))
    assert rc == 0, out
    assert networks(node) == [("default.podnet", "eth0"), ("default.blue", "net1")]
    assert node.api.count("get", "pods") == 0


def test_the_runtimes_annotations_are_the_pod_authors_same_rules(node):
    """A stale or foreign UID cannot be checked against the runtime's copy (it is the sandbox's
    own), but the words are the pod author's: same parsing, limits and opt-in rules."""
    node.pod("web", "")
    for value, code, field in (("blue@lo", 7, f"{NETWORKS}[0].interface"),
                               ("[{\"name\": \"blue\", \"mac\": \"02:00:00:00:00:05\"}]", 2, f"{NETWORKS}[0].mac"),
                               ("x" * (64 * 1024 + 1), 7, NETWORKS)):
        rc, out = node.add(declared(node, **{PODANN: {NETWORKS: value}}))
        assert rc == 1 and out["code"] == code and f"field: {field}" in out["details"], out
    assert records(node.record) == [] and node.api.count("get", "pods") == 0
