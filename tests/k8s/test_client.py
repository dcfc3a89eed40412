"""KubeClient against the test API server: objects as dicts, typed errors with CNI codes,
timeouts and bounded retries with backoff, credentials (kubeconfig, in-cluster), lazy import."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("kubernetes")

from multiplex.cni.errors import (INVALID_CONFIG, INVALID_ENVIRONMENT, NOT_FOUND,  # noqa: E402
                                  TRY_AGAIN_LATER)
from multiplex.k8s import client as kclient  # noqa: E402
from multiplex.k8s.client import KubeClient  # noqa: E402
from multiplex.k8s.errors import (AlreadyExists, Conflict, Forbidden, NoCredentials,  # noqa: E402
                                  NotFound, Unavailable)
from tests.concurrently import run_in_threads  # noqa: E402

GROUP, VERSION = "ipam.multiplex.dev", "v1alpha1"


class Sleeps(list):
    """Records backoff delays instead of sleeping (tests never wait on the clock)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def clients(apiserver):
    """`clients(**options)`: a KubeClient of the test API server whose backoff sleeps are recorded
    (`.sleep`, a Sleeps), closed at teardown."""
    made: list[KubeClient] = []

    def make(**options) -> KubeClient:
        c = KubeClient(apiserver.kubeconfig, **options)
        c.sleep = Sleeps()
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def kube(clients):
    return clients(timeout=2, retries=3)


# --- pods, NADs, nodes ------------------------------------------------------------------------

def test_get_pod_and_patch_annotations(apiserver, kube):
    apiserver.store.add_pod("web", "tenant-a", annotations={"k8s.v1.cni.cncf.io/networks": "macvlan"}, uid="uid-1")
    pod = kube.get_pod("tenant-a", "web")
    assert pod["metadata"]["uid"] == "uid-1"
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "macvlan"

    out = kube.patch_pod_annotations("tenant-a", "web", {"k8s.v1.cni.cncf.io/network-status": "[]"}, uid="uid-1")
    assert out["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/networks": "macvlan",
                                              "k8s.v1.cni.cncf.io/network-status": "[]"}
    kube.patch_pod_annotations("tenant-a", "web", {"k8s.v1.cni.cncf.io/network-status": None})
    stored = apiserver.store.get_pod("web", "tenant-a")
    assert "k8s.v1.cni.cncf.io/network-status" not in stored["metadata"]["annotations"]


def test_patch_refuses_a_recreated_pod(apiserver, kube):
    apiserver.store.add_pod("web", uid="new-uid")
    with pytest.raises(Conflict) as e:
        kube.patch_pod_annotations("default", "web", {"a": "b"}, uid="old-uid")
    assert e.value.code == TRY_AGAIN_LATER
    assert "a" not in apiserver.store.get_pod("web")["metadata"]["annotations"]


def test_get_nad_and_missing_nad_is_107_naming_namespace_and_name(apiserver, kube):
    apiserver.store.add_nad("macvlan", "tenant-a", config={"cniVersion": "1.0.0", "type": "macvlan"})
    nad = kube.get_nad("tenant-a", "macvlan")
    assert json.loads(nad["spec"]["config"])["type"] == "macvlan"
    with pytest.raises(NotFound) as e:
        kube.get_nad("tenant-a", "nope")
    err = e.value
    assert err.code == NOT_FOUND and err.status == 404
    assert err.msg == "NetworkAttachmentDefinition tenant-a/nope not found"
    assert "namespace: tenant-a" in err.details and "name: nope" in err.details
    assert kube.stats["retries"] == 0   # a 404 is an answer, not retried


def test_missing_pod_is_107(kube):
    with pytest.raises(NotFound) as e:
        kube.get_pod("default", "ghost")
    assert e.value.code == NOT_FOUND and e.value.msg == "pod default/ghost not found"


def test_nodes_and_pods_of_a_node(apiserver, kube):
    apiserver.store.add_node("n1", labels={"zone": "a"})
    apiserver.store.add_node("n2", labels={"zone": "b"})
    apiserver.store.add_pod("p1", node_name="n1")
    apiserver.store.add_pod("p2", "other", node_name="n2")
    assert kube.get_node("n1")["metadata"]["labels"] == {"zone": "a"}
    assert [n["metadata"]["name"] for n in kube.list_nodes()] == ["n1", "n2"]
    assert [n["metadata"]["name"] for n in kube.list_nodes("zone=b")] == ["n2"]
    assert [p["metadata"]["name"] for p in kube.list_pods(field_selector="spec.nodeName=n2")] == ["p2"]
    assert [p["metadata"]["name"] for p in kube.list_pods("default")] == ["p1"]
    with pytest.raises(NotFound) as e:
        kube.get_node("n9")
    assert e.value.msg == "node n9 not found"


def test_list_pages_through_everything(apiserver, kube, monkeypatch):
    monkeypatch.setattr(kclient, "PAGE_SIZE", 2)
    for i in range(5):
        apiserver.store.add_pod(f"p{i}")
    apiserver.reset_counts()
    pods = kube.list_pods("default")
    assert [p["metadata"]["name"] for p in pods] == [f"p{i}" for i in range(5)]
    assert pods.resource_version and apiserver.count("list") == 3


# --- custom objects ---------------------------------------------------------------------------

def test_custom_object_lifecycle_and_typed_errors(kube):
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "IPAMBlock",
            "metadata": {"name": "198-18-0-0-26"}, "spec": {"node": "n1", "allocations": {}}}
    made = kube.create_object(GROUP, VERSION, "ipamblocks", body)
    assert made["metadata"]["resourceVersion"] and "namespace" not in made["metadata"]

    with pytest.raises(AlreadyExists) as e:
        kube.create_object(GROUP, VERSION, "ipamblocks", body)
    assert e.value.code == TRY_AGAIN_LATER and "198-18-0-0-26" in e.value.msg

    fresh = kube.get_object(GROUP, VERSION, "ipamblocks", "198-18-0-0-26")
    fresh["spec"]["allocations"]["198.18.0.1"] = {"containerID": "c1"}
    updated = kube.replace_object(GROUP, VERSION, "ipamblocks", "198-18-0-0-26", fresh)
    assert int(updated["metadata"]["resourceVersion"]) > int(made["metadata"]["resourceVersion"])

    made["spec"]["allocations"]["198.18.0.1"] = {"containerID": "c2"}   # stale copy
    with pytest.raises(Conflict) as e:
        kube.replace_object(GROUP, VERSION, "ipamblocks", "198-18-0-0-26", made)
    assert e.value.code == TRY_AGAIN_LATER and e.value.status == 409
    assert "resourceVersion" in e.value.details
    assert kube.stats["retries"] == 0   # conflicts go back to the caller at once

    with pytest.raises(Conflict):
        kube.delete_object(GROUP, VERSION, "ipamblocks", "198-18-0-0-26",
                           resource_version=made["metadata"]["resourceVersion"])
    kube.delete_object(GROUP, VERSION, "ipamblocks", "198-18-0-0-26",
                       resource_version=updated["metadata"]["resourceVersion"])
    with pytest.raises(NotFound) as e:
        kube.delete_object(GROUP, VERSION, "ipamblocks", "198-18-0-0-26")
    assert e.value.code == NOT_FOUND


def test_namespaced_custom_objects_and_label_selector(kube):
    for name, node in (("b1", "n1"), ("b2", "n2")):
        kube.create_object(GROUP, VERSION, "blocks", {"metadata": {"name": name, "labels": {"node": node}}},
                           namespace="kube-system")
    listed = kube.list_objects(GROUP, VERSION, "blocks", "kube-system", label_selector="node=n2")
    assert [o["metadata"]["name"] for o in listed] == ["b2"]
    assert kube.get_object(GROUP, VERSION, "blocks", "b1", "kube-system")["metadata"]["namespace"] == "kube-system"


# --- failures: retries, timeouts, down, RBAC --------------------------------------------------

def test_api_down_is_code_11_naming_the_server_after_bounded_retries(apiserver, kube):
    apiserver.stop()
    with pytest.raises(Unavailable) as e:
        kube.get_nad("default", "macvlan")
    err = e.value
    assert err.code == TRY_AGAIN_LATER
    assert apiserver.url in err.msg and "refused" in err.msg
    assert "NetworkAttachmentDefinition default/macvlan" in err.msg
    assert f"server: {apiserver.url}" in err.details
    assert kube.stats["requests"] == 4 and kube.stats["retries"] == 3
    # jittered exponential backoff: each delay within [base*2^n/2, base*2^n], capped
    assert len(kube.sleep) == 3
    for n, delay in enumerate(kube.sleep):
        assert kube.backoff * 2 ** n / 2 <= delay <= min(kube.max_backoff, kube.backoff * 2 ** n)


def test_api_back_after_restart_with_the_same_client(apiserver, kube):
    apiserver.store.add_pod("p")
    assert kube.get_pod("default", "p")
    apiserver.stop()
    with pytest.raises(Unavailable):
        kube.get_pod("default", "p")
    apiserver.start()
    assert kube.get_pod("default", "p")["metadata"]["name"] == "p"


def test_5xx_is_retried_then_succeeds(apiserver, kube):
    apiserver.store.add_pod("p")
    apiserver.reset_counts()
    apiserver.fail_next(2, 503, verbs="get")
    assert kube.get_pod("default", "p")["metadata"]["name"] == "p"
    assert apiserver.count("get", "pods") == 3 and apiserver.count("get", "pods", 503) == 2
    assert kube.stats["retries"] == 2


def test_5xx_that_persists_is_code_11_after_retries(apiserver, kube):
    apiserver.store.add_pod("p")
    apiserver.reset_counts()
    apiserver.fail_next(100, 500)
    with pytest.raises(Unavailable) as e:
        kube.patch_pod_annotations("default", "p", {"a": "b"})
    assert e.value.code == TRY_AGAIN_LATER and "HTTP 500" in e.value.msg and apiserver.url in e.value.msg
    assert apiserver.count("patch", "pods") == 4


def test_429_honours_retry_after_capped(apiserver, kube):
    apiserver.store.add_pod("p")
    apiserver.fail_next(1, 429, retry_after=3)
    kube.max_backoff = 2.0
    assert kube.get_pod("default", "p")
    assert kube.sleep == [2.0]


def test_timeout_is_retried_and_counted(apiserver, apiserver_latency_client):
    kube = apiserver_latency_client
    apiserver.store.add_pod("p")
    apiserver.reset_counts()
    apiserver.latency = 5.0
    with pytest.raises(Unavailable) as e:
        kube.get_pod("default", "p")
    apiserver.latency = 0.0
    assert e.value.code == TRY_AGAIN_LATER and "timed out" in e.value.msg and apiserver.url in e.value.msg
    assert kube.stats["requests"] == 2
    assert apiserver.count("get", "pods") == 2


@pytest.fixture
def apiserver_latency_client(clients):
    return clients(timeout=0.3, retries=1)


def test_forbidden_names_verb_and_resource(apiserver, kube):
    apiserver.store.add_pod("p")
    apiserver.deny("patch", "pods")
    with pytest.raises(Forbidden) as e:
        kube.patch_pod_annotations("default", "p", {"a": "b"})
    err = e.value
    assert err.code == INVALID_ENVIRONMENT and err.status == 403
    assert err.msg.startswith("not allowed to patch pods in namespace default (pod default/p)")
    assert "verb: patch; resource: pods" in err.details and "manifests/rbac" in err.details
    assert kube.stats["retries"] == 0


# --- credentials ------------------------------------------------------------------------------

def test_missing_kubeconfig_file_is_code_7(tmp_path):
    c = KubeClient(str(tmp_path / "nope.yaml"))
    with pytest.raises(NoCredentials) as e:
        c.get_pod("default", "p")
    assert e.value.code == INVALID_CONFIG and "nope.yaml" in e.value.msg
    assert e.value.details.startswith("field: kubeconfig")


def test_no_credentials_at_all_is_code_7(tmp_path, monkeypatch):
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(NoCredentials) as e:
        KubeClient().get_pod("default", "p")
    assert e.value.code == INVALID_CONFIG and "no Kubernetes credentials" in e.value.msg


def test_kubeconfig_env_fallback(apiserver, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", apiserver.kubeconfig)
    apiserver.store.add_pod("p")
    assert KubeClient().get_pod("default", "p")["metadata"]["name"] == "p"


def test_in_cluster_service_account(apiserver_tls, tmp_path, monkeypatch):
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(apiserver_tls.token)
    (sa / "ca.crt").write_text(open(apiserver_tls.ca_file).read())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", apiserver_tls.host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(apiserver_tls.port))
    apiserver_tls.store.add_pod("p")
    c = KubeClient(service_account_dir=str(sa))
    assert c.get_pod("default", "p")["metadata"]["name"] == "p"
    assert c.server == apiserver_tls.url

    (sa / "token").write_text("revoked")
    stale = KubeClient(service_account_dir=str(sa))
    with pytest.raises(Forbidden) as e:
        stale.get_pod("default", "p")
    assert e.value.status == 401 and e.value.msg.startswith("not authenticated to get pods")


def test_in_cluster_without_token_file_is_code_7(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(NoCredentials) as e:
        KubeClient(service_account_dir=str(tmp_path)).get_pod("default", "p")
    assert e.value.code == INVALID_CONFIG and str(tmp_path) in e.value.msg


# --- a long-lived, shared client --------------------------------------------------------------

def test_one_client_shared_by_threads(apiserver, kube):
    for i in range(8):
        apiserver.store.add_pod(f"p{i}")

    def work(i: int) -> None:
        for _ in range(10):
            assert kube.get_pod("default", f"p{i}")["metadata"]["name"] == f"p{i}"

    errors = run_in_threads(work, 8)
    assert errors == [] and kube.stats["requests"] == 80


def test_import_and_construction_do_not_import_kubernetes():
    code = ("import sys; from multiplex.k8s.client import KubeClient; KubeClient('/nonexistent');"
            "import multiplex.meta.annotation, multiplex.meta.netstatus;"
            "print('kubernetes' in sys.modules, 'urllib3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- the orchestrator's Source ----------------------------------------------------------------

def test_kube_source(apiserver):
    from multiplex.k8s.source import STATUS_ANNOTATION, KubeSource

    apiserver.store.add_pod("web", "tenant-a", uid="uid-1")
    apiserver.store.add_nad("macvlan", "tenant-a", config={"type": "macvlan"})
    src = KubeSource(apiserver.kubeconfig, timeout=2, retries=0)
    assert src.get_nad("tenant-a", "macvlan")["metadata"]["name"] == "macvlan"
    assert src.get_pod("tenant-a", "ghost") is None
    assert src.get_pod("tenant-a", "web")["metadata"]["uid"] == "uid-1"
    src.set_network_status("tenant-a", "web", '[{"name": "x"}]')
    assert apiserver.store.get_pod("web", "tenant-a")["metadata"]["annotations"][STATUS_ANNOTATION] == '[{"name": "x"}]'

    apiserver.store.delete_pod("web", "tenant-a")           # recreated under the same name
    apiserver.store.add_pod("web", "tenant-a", uid="uid-2")
    with pytest.raises(Conflict):
        src.set_network_status("tenant-a", "web", "[]")
    assert STATUS_ANNOTATION not in apiserver.store.get_pod("web", "tenant-a")["metadata"]["annotations"]
