"""Where the `nad-namespaces` hook reads a namespace's labels (multiplex/policy/namespaces.py), against
the test Kubernetes API server: one GET through KubeSource (what the one-shot path uses), none
through the daemon's CachedSource once "namespaces" is watched (register_namespaces), a namespace
that does not exist has only its name label, an API that cannot be reached is code 11 (never an
allow), and the daemon's local objects read Namespace files. Through the meta plugin, in-process
with a kubeconfig: a selector on the NAD admits a labelled namespace and refuses another."""
from __future__ import annotations

import io
import json
import time

import pytest

from multiplex.cni.errors import CNIError
from multiplex.k8s.cached import CachedSource
from multiplex.k8s.client import KubeClient
from multiplex.k8s.objects import KubeObjects, LocalObjects
from multiplex.k8s.source import KubeSource
from multiplex.policy.namespaces import NAME_LABEL, namespace_labels, register_namespaces
from tests.k8s.conftest import apiserver  # noqa: F401  (the fixture)

pytestmark = pytest.mark.k8s


def add_namespace(api, name: str, **labels: str) -> None:
    api.store.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
                  plural="namespaces")


def test_one_get_through_the_api_and_a_missing_namespace_has_its_name_label(apiserver):
    add_namespace(apiserver, "team-a", team="red")
    source = KubeSource(apiserver.kubeconfig, timeout=5, retries=1)
    apiserver.reset_counts()
    assert namespace_labels(source, "team-a") == {"team": "red", NAME_LABEL: "team-a"}
    assert apiserver.count("get", "namespaces") == 1
    assert namespace_labels(source, "nowhere") == {NAME_LABEL: "nowhere"}


def test_an_api_that_cannot_be_reached_is_an_error_not_an_allow(apiserver):
    source = KubeSource(apiserver.kubeconfig, timeout=1, retries=1)
    apiserver.stop()
    with pytest.raises(CNIError) as e:
        namespace_labels(source, "team-a")
    assert e.value.code == 11


def test_the_daemons_cache_answers_without_a_read_once_namespaces_are_watched(apiserver):
    add_namespace(apiserver, "team-a", team="red")
    client = KubeClient(apiserver.kubeconfig, timeout=5, retries=1, backoff=0.05)
    objects = KubeObjects(client, "n1", backoff=0.05, max_backoff=0.3)
    try:
        register_namespaces(objects)
        register_namespaces(objects)            # idempotent
        assert objects.informer("namespaces").wait_synced(10)
        end = time.monotonic() + 10
        while not objects.informer("namespaces").stats["watches"] and time.monotonic() < end:
            time.sleep(0.01)
        apiserver.reset_counts()
        assert namespace_labels(CachedSource(objects, client), "team-a") == {"team": "red", NAME_LABEL: "team-a"}
        assert apiserver.count("get") == 0 and apiserver.count("list") == 0
        register_namespaces(objects)            # already started: left as it is
    finally:
        objects.stop()


def test_without_a_namespaces_watch_the_daemon_asks_the_api(apiserver):
    add_namespace(apiserver, "team-a", team="red")
    client = KubeClient(apiserver.kubeconfig, timeout=5, retries=1, backoff=0.05)
    objects = KubeObjects(client, "n1")
    apiserver.reset_counts()
    assert namespace_labels(CachedSource(objects, client), "team-a")["team"] == "red"
    assert apiserver.count("get", "namespaces") == 1


def test_local_objects_read_namespace_files(tmp_path):
    (tmp_path / "namespaces").mkdir()
    (tmp_path / "namespaces" / "a.json").write_text(json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"team": "red"}}}))
    objects = LocalObjects(str(tmp_path), interval=0.05)
    try:
        register_namespaces(objects)
        inf = objects.informer("namespaces")
        assert inf.wait_synced(10)
        assert (inf.get(None, "team-a") or {}).get("metadata", {}).get("labels") == {"team": "red"}

        class Source:   # what a daemon-served call's source looks like without a client
            pass
        src = Source()
        src.objects = objects
        assert namespace_labels(src, "team-a") == {"team": "red", NAME_LABEL: "team-a"}
    finally:
        objects.stop()


def test_through_the_meta_plugin_with_a_kubeconfig(apiserver, tmp_path):
    from multiplex.cni.skel import run
    from multiplex.meta.orchestrator import plugin
    from tests.fakeplugins import install

    bin_dir = install(tmp_path / "bin", "fake-a")
    fake = json.dumps({"cniVersion": "1.1.0", "type": "fake-a", "fake": {"record": str(tmp_path / "calls")}})
    store = apiserver.store
    add_namespace(apiserver, "team-a", team="red")
    add_namespace(apiserver, "team-b", team="blue")
    store.add_nad("podnet", "default", fake)
    store.add({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": "shared", "namespace": "infra",
                            "annotations": {"multiplex.dev/allowed-namespace-selector": "team=red"}},
               "spec": {"config": fake}}, plural="network-attachment-definitions")
    conf = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "clusterNetwork": "podnet",
            "kubeconfig": apiserver.kubeconfig, "globalNamespaces": ["infra"], "stateDir": str(tmp_path / "state")}

    def add(ns: str) -> tuple[int, dict]:
        store.add_pod("p", namespace=ns, annotations={"k8s.v1.cni.cncf.io/networks": "infra/shared"})
        env = {"CNI_COMMAND": "ADD", "CNI_PATH": bin_dir, "CNI_CONTAINERID": f"c-{ns}", "CNI_NETNS": "/x",
               "CNI_IFNAME": "eth0", "CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME=p"}
        out = io.StringIO()
        rc = run(plugin, env, json.dumps(conf).encode(), out)
        return rc, json.loads(out.getvalue() or "null")

    rc, out = add("team-a")
    assert rc == 0, out
    rc, out = add("team-b")
    assert rc == 1 and out["code"] == 106 and "hook: nad-namespaces" in out["details"], out
    assert "team=red" in out["msg"]
