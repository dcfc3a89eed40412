"""The test API server behaves like a real one for the unchanged `kubernetes` client: CRUD,
errors as Status objects, resourceVersion and optimistic concurrency, selectors, paging, watch,
and the test controls (down/up, counts, faults, RBAC, auth, TLS)."""
from __future__ import annotations

import json
import os
import socket
import threading

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client as k8s, config as k8s_config, watch as k8s_watch  # noqa: E402

from tests.concurrently import run_in_threads  # noqa: E402
from tests.k8s import fakestore  # noqa: E402
from tests.k8s.apiserver import ApiServer  # noqa: E402

GROUP, VERSION = "ipam.multiplex.dev", "v1alpha1"


def api_client(server: ApiServer, retries=None) -> k8s.ApiClient:
    cfg = k8s.Configuration()
    k8s_config.load_kube_config(config_file=server.kubeconfig, client_configuration=cfg, persist_config=False)
    if retries is not None:
        cfg.retries = retries
    return k8s.ApiClient(cfg)


@pytest.fixture
def core(apiserver):
    with api_client(apiserver) as c:
        yield k8s.CoreV1Api(c)


@pytest.fixture
def crd(apiserver):
    with api_client(apiserver) as c:
        yield k8s.CustomObjectsApi(c)


def pod_body(name, labels=None, node=""):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


def block(name, **spec):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "IPAMBlock", "metadata": {"name": name}, "spec": spec}


def status_of(exc) -> dict:
    return json.loads(exc.body)


# --- CRUD -------------------------------------------------------------------------------------

def test_pod_crud_through_the_client(core):
    created = core.create_namespaced_pod("default", pod_body("web", {"app": "web"}))
    assert created.metadata.uid and created.metadata.creation_timestamp
    rv1 = int(created.metadata.resource_version)

    got = core.read_namespaced_pod("web", "default")
    assert got.metadata.uid == created.metadata.uid and got.metadata.namespace == "default"

    patched = core.patch_namespaced_pod("web", "default", {"metadata": {"annotations": {"k": "v"}}})
    assert patched.metadata.annotations == {"k": "v"}
    assert int(patched.metadata.resource_version) > rv1
    assert patched.metadata.uid == created.metadata.uid

    patched.metadata.labels["tier"] = "front"
    replaced = core.replace_namespaced_pod("web", "default", patched)
    assert replaced.metadata.labels == {"app": "web", "tier": "front"}
    assert int(replaced.metadata.resource_version) > int(patched.metadata.resource_version)

    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["web"]
    core.delete_namespaced_pod("web", "default")
    assert core.list_namespaced_pod("default").items == []


def test_not_found_is_a_status_object(core):
    with pytest.raises(k8s.ApiException) as e:
        core.read_namespaced_pod("missing", "default")
    assert e.value.status == 404
    st = status_of(e.value)
    assert st["kind"] == "Status" and st["status"] == "Failure" and st["reason"] == "NotFound"
    assert st["message"] == 'pods "missing" not found' and st["details"]["name"] == "missing"
    with pytest.raises(k8s.ApiException) as e:
        core.delete_namespaced_pod("missing", "default")
    assert e.value.status == 404


def test_create_twice_is_409_already_exists(core):
    core.create_namespaced_pod("default", pod_body("dup"))
    with pytest.raises(k8s.ApiException) as e:
        core.create_namespaced_pod("default", pod_body("dup"))
    assert e.value.status == 409 and status_of(e.value)["reason"] == "AlreadyExists"
    assert status_of(e.value)["message"] == 'pods "dup" already exists'


def test_same_name_in_two_namespaces(core):
    core.create_namespaced_pod("a", pod_body("p"))
    core.create_namespaced_pod("b", pod_body("p"))
    assert {p.metadata.namespace for p in core.list_pod_for_all_namespaces().items} == {"a", "b"}


def test_resource_version_is_one_counter_across_kinds(apiserver, core, crd):
    rvs = [int(core.create_namespaced_pod("default", pod_body("p1")).metadata.resource_version),
           int(crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", block("b1"))
               ["metadata"]["resourceVersion"]),
           int(core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name="n1"))).metadata.resource_version),
           int(core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"x": "y"}}})
               .metadata.resource_version)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 4
    listed = core.list_namespaced_pod("default")
    assert int(listed.metadata.resource_version) == rvs[-1]


# --- custom resources and optimistic concurrency ----------------------------------------------

def test_custom_object_crud_and_stale_resource_version(crd):
    b = crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", block("b1", cidr="198.18.0.0/26"))
    assert b["metadata"]["uid"] and b["metadata"]["generation"] == 1
    stale = json.loads(json.dumps(b))

    b["spec"]["allocations"] = {"198.18.0.1": "c1"}
    updated = crd.replace_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1", b)
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(b["metadata"]["resourceVersion"])

    stale["spec"]["allocations"] = {"198.18.0.1": "c2"}
    with pytest.raises(k8s.ApiException) as e:
        crd.replace_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1", stale)
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(e.value)["message"]
    got = crd.get_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1")
    assert got["spec"]["allocations"] == {"198.18.0.1": "c1"}


def test_custom_object_update_needs_a_resource_version(crd):
    b = crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", block("b1"))
    del b["metadata"]["resourceVersion"]
    with pytest.raises(k8s.ApiException) as e:
        crd.replace_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1", b)
    assert e.value.status == 422 and "must be specified for an update" in status_of(e.value)["message"]


def test_create_with_a_resource_version_is_refused(crd):
    body = block("b1")
    body["metadata"]["resourceVersion"] = "5"
    with pytest.raises(k8s.ApiException) as e:
        crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", body)
    assert e.value.status == 400


def test_cluster_scoped_custom_objects(crd):
    crd.create_cluster_custom_object(GROUP, VERSION, "ipampools", {"metadata": {"name": "pool-a"},
                                                                   "spec": {"cidr": "198.18.0.0/16"}})
    got = crd.get_cluster_custom_object(GROUP, VERSION, "ipampools", "pool-a")
    assert "namespace" not in got["metadata"] and got["kind"] == "Ipampool"
    assert [o["metadata"]["name"] for o in crd.list_cluster_custom_object(GROUP, VERSION, "ipampools")["items"]] == ["pool-a"]
    crd.delete_cluster_custom_object(GROUP, VERSION, "ipampools", "pool-a")
    with pytest.raises(k8s.ApiException) as e:
        crd.get_cluster_custom_object(GROUP, VERSION, "ipampools", "pool-a")
    assert e.value.status == 404 and status_of(e.value)["message"] == f'ipampools.{GROUP} "pool-a" not found'


def test_crd_registration_gives_kind_and_scope(apiserver, crd):
    apiserver.store.add({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                         "metadata": {"name": f"ipampools.{GROUP}"},
                         "spec": {"group": GROUP, "scope": "Cluster", "versions": [{"name": VERSION}],
                                  "names": {"plural": "ipampools", "kind": "IPAMPool"}}},
                        plural="customresourcedefinitions")
    crd.create_cluster_custom_object(GROUP, VERSION, "ipampools", {"metadata": {"name": "p"}})
    assert crd.get_cluster_custom_object(GROUP, VERSION, "ipampools", "p")["kind"] == "IPAMPool"


def test_merge_and_json_patch(crd):
    crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks",
                                        block("b1", allocations={"a": 1, "b": 2}, node="n1"))
    merged = crd.patch_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1",
                                                {"spec": {"allocations": {"a": None, "c": 3}}})
    assert merged["spec"]["allocations"] == {"b": 2, "c": 3}
    ops = [{"op": "test", "path": "/spec/node", "value": "n1"},
           {"op": "replace", "path": "/spec/node", "value": "n2"},
           {"op": "add", "path": "/spec/allocations/d", "value": 4},
           {"op": "remove", "path": "/spec/allocations/b"}]
    jp = "application/json-patch+json"   # the client sends merge patches unless told
    patched = crd.patch_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1", ops, _content_type=jp)
    assert patched["spec"] == {"allocations": {"c": 3, "d": 4}, "node": "n2"}
    with pytest.raises(k8s.ApiException) as e:   # a failed test op changes nothing
        crd.patch_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1",
                                           [{"op": "test", "path": "/spec/node", "value": "n1"},
                                            {"op": "remove", "path": "/spec/node"}], _content_type=jp)
    assert e.value.status == 422
    assert crd.get_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1")["spec"]["node"] == "n2"


def test_patch_naming_a_stale_resource_version_conflicts(crd):
    b = crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", block("b1"))
    crd.patch_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1", {"spec": {"x": 1}})
    with pytest.raises(k8s.ApiException) as e:
        crd.patch_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1",
                                           {"metadata": {"resourceVersion": b["metadata"]["resourceVersion"]},
                                            "spec": {"x": 2}})
    assert e.value.status == 409


def test_delete_preconditions(crd):
    b = crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", block("b1"))
    crd.patch_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1", {"spec": {"x": 1}})
    with pytest.raises(k8s.ApiException) as e:
        crd.delete_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1",
                                            body={"preconditions": {"resourceVersion": b["metadata"]["resourceVersion"]}})
    assert e.value.status == 409
    crd.delete_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1",
                                        body={"preconditions": {"uid": b["metadata"]["uid"]}})


def test_finalizers_hold_deletion_until_removed(crd):
    body = block("b1")
    body["metadata"]["finalizers"] = ["multiplex.dev/ipam"]
    crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", body)
    crd.delete_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1")
    held = crd.get_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1")
    assert held["metadata"]["deletionTimestamp"]
    crd.patch_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1",
                                       {"metadata": {"finalizers": None}})
    with pytest.raises(k8s.ApiException) as e:
        crd.get_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "b1")
    assert e.value.status == 404


def test_concurrent_read_modify_write_loses_nothing(apiserver):
    """Threads increment one counter with replace + resourceVersion: every success counts once,
    every lost race is a 409, as the IPAM store relies on."""
    counter = block("counter", n=0)
    counter["metadata"]["namespace"] = "default"
    apiserver.store.add(counter, plural="ipamblocks")
    successes, conflicts = [], []

    def worker(_: int) -> None:
        with api_client(apiserver) as c:
            api = k8s.CustomObjectsApi(c)
            for _ in range(15):
                while True:
                    obj = api.get_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "counter")
                    obj["spec"]["n"] += 1
                    try:
                        api.replace_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", "counter", obj)
                        successes.append(1)
                        break
                    except k8s.ApiException as e:
                        assert e.status == 409
                        conflicts.append(1)

    assert run_in_threads(worker, 4) == []     # a status other than 409 fails the test
    final = apiserver.store.get_object(GROUP, VERSION, "ipamblocks", "counter", "default")
    assert final["spec"]["n"] == len(successes) == 60
    assert apiserver.count("update", "ipamblocks", 409) == len(conflicts)
    print(f"4 writers, 60 increments, {len(conflicts)} conflicts")


# --- selectors and paging ---------------------------------------------------------------------

def test_label_and_field_selectors(core):
    core.create_namespaced_pod("default", pod_body("a", {"app": "web", "tier": "front"}, node="n1"))
    core.create_namespaced_pod("default", pod_body("b", {"app": "web", "tier": "back"}, node="n2"))
    core.create_namespaced_pod("default", pod_body("c", {"app": "db"}, node="n1"))

    def names(**kw):
        return sorted(p.metadata.name for p in core.list_namespaced_pod("default", **kw).items)

    assert names(label_selector="app=web") == ["a", "b"]
    assert names(label_selector="app==web,tier!=front") == ["b"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!tier") == ["c"]
    assert names(label_selector="app in (db, cache)") == ["c"]
    assert names(label_selector="tier notin (front)") == ["b", "c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="spec.nodeName=n1") == ["a", "c"]
    assert names(field_selector="spec.nodeName!=n1,metadata.namespace=default") == ["b"]


def test_bad_selector_is_400(core):
    with pytest.raises(k8s.ApiException) as e:
        core.list_namespaced_pod("default", label_selector="a in b")
    assert e.value.status == 400


def test_paging_with_limit_and_continue(apiserver, core):
    for i in range(7):
        apiserver.store.add_pod(f"p{i}")
    seen, cont = [], None
    while True:
        page = core.list_namespaced_pod("default", limit=3, _continue=cont)
        seen += [p.metadata.name for p in page.items]
        cont = page.metadata._continue
        if not cont:
            break
    assert seen == [f"p{i}" for i in range(7)]


# --- watch ------------------------------------------------------------------------------------

def test_watch_streams_added_modified_deleted(apiserver, core):
    apiserver.store.add_pod("before")
    rv = core.list_namespaced_pod("default").metadata.resource_version
    events = []

    def changes():
        apiserver.store.add_pod("p1")
        core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"x": "1"}}})
        core.delete_namespaced_pod("p1", "default")
        apiserver.store.add_pod("other", namespace="elsewhere")

    w = k8s_watch.Watch()
    stream = w.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=30)
    t = threading.Thread(target=changes)
    t.start()
    for ev in stream:
        events.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()
    t.join()
    assert events == [("ADDED", "p1"), ("MODIFIED", "p1"), ("DELETED", "p1")]


def test_watch_without_resource_version_starts_with_current_objects(apiserver, core):
    apiserver.store.add_pod("p1")
    apiserver.store.add_pod("p2")
    w = k8s_watch.Watch()
    got = []
    for ev in w.stream(core.list_namespaced_pod, "default", timeout_seconds=1):
        got.append((ev["type"], ev["object"].metadata.name))
    assert got == [("ADDED", "p1"), ("ADDED", "p2")]


def test_watch_custom_objects_with_label_selector(apiserver, crd):
    rv = crd.list_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks")["metadata"]["resourceVersion"]
    for name, node in (("b1", "n1"), ("b2", "n2")):
        body = block(name)
        body["metadata"]["labels"] = {"node": node}
        crd.create_namespaced_custom_object(GROUP, VERSION, "default", "ipamblocks", body)
    w = k8s_watch.Watch()
    got = [ev["object"]["metadata"]["name"] for ev in
           w.stream(crd.list_namespaced_custom_object, GROUP, VERSION, "default", "ipamblocks",
                    label_selector="node=n2", resource_version=rv, timeout_seconds=1)]
    assert got == ["b2"]


def test_watch_from_a_compacted_resource_version_is_410(apiserver, core, monkeypatch):
    monkeypatch.setattr(fakestore, "HISTORY", 3)
    for i in range(6):
        apiserver.store.add_pod(f"p{i}")
    w = k8s_watch.Watch()
    with pytest.raises(k8s.ApiException) as e:
        for _ in w.stream(core.list_namespaced_pod, "default", resource_version="1", timeout_seconds=2):
            pass
    assert e.value.status == 410


# --- test controls ----------------------------------------------------------------------------

def test_stop_refuses_connections_and_start_keeps_objects(apiserver, core):
    apiserver.store.add_pod("kept")
    port = apiserver.port
    apiserver.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with api_client(apiserver, retries=False) as c:
        with pytest.raises(Exception) as e:
            k8s.CoreV1Api(c).read_namespaced_pod("kept", "default")
        assert "refused" in str(e.value).lower()
    apiserver.start()
    assert apiserver.port == port
    assert core.read_namespaced_pod("kept", "default").metadata.name == "kept"


def test_stop_cuts_an_open_watch(apiserver, core):
    w = k8s_watch.Watch()
    stream = w.stream(core.list_namespaced_pod, "default", timeout_seconds=60, _request_timeout=30)
    apiserver.store.add_pod("p1")
    first = next(stream)
    assert first["object"].metadata.name == "p1"
    threading.Timer(0.2, apiserver.stop).start()
    with pytest.raises(Exception):
        for _ in stream:
            pass


def test_counts_by_verb_resource_and_code(apiserver, core):
    apiserver.store.add_pod("p")
    apiserver.reset_counts()
    core.read_namespaced_pod("p", "default")
    core.list_namespaced_pod("default")
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(k8s.ApiException):
        core.read_namespaced_pod("nope", "default")
    assert apiserver.counts() == {"get": 2, "list": 1, "patch": 1}
    assert apiserver.count("get", "pods", 404) == 1 and apiserver.count(code=200) == 3


def test_injected_faults_and_denials(apiserver, core):
    apiserver.store.add_pod("p")
    apiserver.fail_next(1, 503, verbs="get")
    with api_client(apiserver, retries=False) as c:
        api = k8s.CoreV1Api(c)
        with pytest.raises(k8s.ApiException) as e:
            api.read_namespaced_pod("p", "default")
        assert e.value.status == 503
        assert api.read_namespaced_pod("p", "default").metadata.name == "p"
        apiserver.deny("patch", "pods")
        with pytest.raises(k8s.ApiException) as e:
            api.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "b"}}})
        assert e.value.status == 403 and "cannot patch resource \"pods\"" in status_of(e.value)["message"]


def test_tls_and_token(apiserver_tls, tmp_path):
    apiserver_tls.store.add_pod("p")
    with api_client(apiserver_tls) as c:
        assert k8s.CoreV1Api(c).read_namespaced_pod("p", "default").metadata.name == "p"
    wrong = json.load(open(apiserver_tls.kubeconfig))
    wrong["users"][0]["user"]["token"] = "not-the-token"
    path = tmp_path / "wrong"
    path.write_text(json.dumps(wrong))
    cfg = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(path), client_configuration=cfg, persist_config=False)
    with k8s.ApiClient(cfg) as c:
        with pytest.raises(k8s.ApiException) as e:
            k8s.CoreV1Api(c).read_namespaced_pod("p", "default")
    assert e.value.status == 401
    assert apiserver_tls.url.startswith("https://") and os.path.isfile(apiserver_tls.ca_file)
