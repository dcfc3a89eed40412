"""DaemonServices (multiplex/daemon/services.py): a call is served from the daemon's caches only
when its config names the API server the daemon watches; plugin latency reaches the metrics."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from multiplex.daemon.metrics import Metrics
from multiplex.daemon.services import DaemonServices, in_cluster_server, normalise_server
from multiplex.k8s.cached import CachedSource
from multiplex.k8s.objects import KubeObjects, LocalObjects
from tests.k8s.conftest import apiserver  # noqa: F401

pytestmark = pytest.mark.k8s


def kubeconfig(path, server: str) -> str:
    with open(path, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "c",
                   "clusters": [{"name": "k", "cluster": {"server": server}}],
                   "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                   "users": [{"name": "u", "user": {}}]}, f)
    return str(path)


@pytest.fixture
def kube(apiserver):  # noqa: F811
    objects = KubeObjects(apiserver.kubeconfig, "n1")
    yield objects
    objects.stop()


def test_a_config_naming_the_watched_server_is_served_from_the_caches(apiserver, kube, tmp_path):  # noqa: F811
    apiserver.store.add_nad("blue", config={"cniVersion": "1.0.0", "type": "multiplex-bridge"})
    services = DaemonServices(kube, apiserver.kubeconfig, Metrics())
    nads = kube.informer("nads")
    assert nads.wait_synced(10)
    # the node's multiplex config names another file, same server (spelled differently)
    same = kubeconfig(tmp_path / "node.kubeconfig", apiserver.url.upper() + "/")
    source = services.source(SimpleNamespace(kubeconfig=same))
    assert isinstance(source, CachedSource)
    apiserver.reset_counts()
    assert source.get_nad("default", "blue")["metadata"]["name"] == "blue"
    assert apiserver.count("get") == 0                      # a cache hit: no API read

    other = kubeconfig(tmp_path / "other.kubeconfig", "https://198.18.0.1:6443")
    assert services.source(SimpleNamespace(kubeconfig=other)) is None
    assert services.source(SimpleNamespace(kubeconfig=None)) is None
    assert services.source(SimpleNamespace(kubeconfig=str(tmp_path / "missing"))) is None

    # the file changes to another server: read again (path + mtime), no longer served
    kubeconfig(tmp_path / "node.kubeconfig", "https://198.18.0.1:6443")
    os.utime(same, ns=(1, 1))
    assert services.source(SimpleNamespace(kubeconfig=same)) is None


def test_a_daemon_on_a_local_directory_serves_no_source(tmp_path, apiserver):  # noqa: F811
    objects = LocalObjects(str(tmp_path))
    services = DaemonServices(objects, None, None)
    assert services.source(SimpleNamespace(kubeconfig=apiserver.kubeconfig)) is None
    services.observe_plugin("multiplex-bridge", "ADD", 0.01, 0)     # no metrics: nothing to do


def test_plugin_calls_reach_the_metrics():
    m = Metrics()
    DaemonServices(None, None, m).observe_plugin("multiplex-ipam", "DEL", 0.004, 11)
    assert m.value("multiplex_plugin_calls_total", {"type": "multiplex-ipam", "command": "DEL", "code": "11"}) == 1


def test_server_urls_are_compared_in_one_spelling():
    assert normalise_server("HTTPS://API.example/") == normalise_server("https://api.example:443")
    assert normalise_server("http://127.0.0.1:8080") != normalise_server("https://127.0.0.1:8080")
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}) \
        == "https://10.96.0.1:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00::1"}) == "https://[fd00::1]:443"
    assert in_cluster_server({}) == ""
