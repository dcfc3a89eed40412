"""Informers against the test API server over real HTTP: list then watch, a dropped watch resumes
from its resourceVersion (no relist), a 410 relists and reports what vanished meanwhile, the
field selector keeps other nodes' pods out, the API down and back, and KubeObjects' kinds."""
from __future__ import annotations

import pytest

from multiplex.k8s.client import KubeClient, custom
from multiplex.k8s.objects import KubeKind, KubeObjects
from tests.informer_events import Recorder
from tests.waiting import wait_for

NODE = "n1"


@pytest.fixture
def objects(apiserver):
    """KubeObjects for node n1, with fast backoff so recovery is quick; stopped at teardown."""
    client = KubeClient(apiserver.kubeconfig, timeout=5, retries=1, backoff=0.05, max_backoff=0.2)
    objs = KubeObjects(client, NODE, backoff=0.05, max_backoff=0.3)
    yield objs
    objs.stop()
    assert all(not i.running for i in objs.started().values()), "an informer thread outlived stop()"


def pods_informer(objects, recorder: Recorder):
    """The pods informer, synced, with `recorder` seeing only the events after the first list
    (the list's own ADDEDs are delivered before synced() turns true, to whoever was there)."""
    inf = objects.informer("pods")
    inf.add_handler(recorder)
    assert inf.wait_synced(10)
    recorder.clear()
    return inf


def names(inf) -> set[str]:
    return {o["metadata"]["name"] for o in inf.list()}


def test_list_then_watch_keeps_the_cache_current(apiserver, objects):
    store = apiserver.store
    store.add_pod("a", node_name=NODE)
    rec = Recorder()
    inf = pods_informer(objects, rec)
    assert names(inf) == {"a"} and objects.synced()
    store.add_pod("b", node_name=NODE, annotations={"k": "1"})
    store.patch(store.rt("", "v1", "pods"), "default", "b", "merge", {"metadata": {"annotations": {"k": "2"}}})
    store.delete_pod("a")
    wait_for(lambda: rec.of("b") == ["ADDED", "MODIFIED"] and "DELETED" in rec.of("a"), what="watch events")
    assert names(inf) == {"b"}
    assert inf.get("default", "b")["metadata"]["annotations"]["k"] == "2"
    assert inf.get("default", "a") is None
    assert objects.lags() == {"pods": 0.0}
    assert apiserver.count("list", "pods") == 1


def test_field_selector_keeps_other_nodes_pods_out(apiserver, objects):
    store = apiserver.store
    store.add_pod("mine", node_name=NODE)
    store.add_pod("theirs", node_name="n2")
    rec = Recorder()
    inf = pods_informer(objects, rec)
    store.add_pod("theirs-later", node_name="n2")
    store.add_pod("mine-later", node_name=NODE)
    wait_for(lambda: rec.of("mine-later") == ["ADDED"], what="this node's new pod")
    assert names(inf) == {"mine", "mine-later"}
    assert not rec.of("theirs") and not rec.of("theirs-later")


def test_dropped_watch_resumes_from_its_resource_version_without_a_relist(apiserver, objects):
    store = apiserver.store
    store.add_pod("a", node_name=NODE)
    rec = Recorder()
    inf = pods_informer(objects, rec)
    for n in range(3):
        apiserver._httpd.cut_connections()      # the watch's connection dies (a proxy, a LB reset)
        store.add_pod(f"after-cut-{n}", node_name=NODE)
        wait_for(lambda n=n: rec.of(f"after-cut-{n}") == ["ADDED"], what=f"the event after cut {n}")
    assert apiserver.count("list", "pods") == 1          # resumed, never relisted
    assert apiserver.count("watch", "pods") >= 2
    # every event once: the resumed watches replay nothing already seen
    assert sorted(rec.snapshot()) == [("ADDED", "default", f"after-cut-{n}") for n in range(3)]


def test_api_down_then_back_the_informer_catches_up(apiserver, objects):
    store = apiserver.store
    store.add_pod("a", node_name=NODE)
    rec = Recorder()
    inf = pods_informer(objects, rec)
    apiserver.stop()
    # meanwhile, in the cluster
    store.add_pod("born-while-down", node_name=NODE)
    store.delete_pod("a")
    wait_for(lambda: inf.lag() > 0.3, what="lag to grow while the API is down")
    assert names(inf) == {"a"}                 # the cache still serves what it had
    apiserver.reset_counts()
    apiserver.start()
    wait_for(lambda: names(inf) == {"born-while-down"}, what="catching up after the API came back")
    assert rec.of("born-while-down") == ["ADDED"] and rec.of("a") == ["DELETED"]
    assert apiserver.count("list", "pods") == 0          # the history still had it: resumed
    wait_for(lambda: inf.lag() == 0.0, what="lag back to 0")
    assert inf.stats["errors"] >= 1


def compact_history(apiserver) -> None:
    """As etcd compaction does: the events before now are gone, older resourceVersions get 410."""
    with apiserver.store.lock:
        apiserver.store.events.clear()


def test_410_gone_relists_and_delivers_what_vanished(apiserver, objects):
    store = apiserver.store
    for name in ("stays", "goes", "changes"):
        store.add_pod(name, node_name=NODE)
    rec = Recorder()
    inf = pods_informer(objects, rec)
    apiserver.stop()
    store.delete_pod("goes")
    store.add_pod("new", node_name=NODE)
    store.patch(store.rt("", "v1", "pods"), "default", "changes", "merge", {"metadata": {"labels": {"x": "y"}}})
    compact_history(apiserver)
    apiserver.start()
    wait_for(lambda: names(inf) == {"stays", "changes", "new"}, what="the relist after 410")
    assert rec.of("goes") == ["DELETED"]
    assert rec.of("new") == ["ADDED"]
    assert rec.of("changes") == ["MODIFIED"]
    assert rec.of("stays") == []                          # unchanged: no synthetic event
    assert inf.get("default", "changes")["metadata"]["labels"] == {"x": "y"}
    assert apiserver.count("list", "pods") == 2 and inf.stats["relists"] == 1
    # and it watches again afterwards
    store.add_pod("later", node_name=NODE)
    wait_for(lambda: rec.of("later") == ["ADDED"], what="events after the relist")


def test_a_failing_handler_does_not_stop_the_informer(apiserver, objects):
    inf = objects.informer("nads")

    def broken(etype, obj):
        raise RuntimeError("controller bug")

    rec = Recorder()
    inf.add_handler(broken)
    inf.add_handler(rec)
    assert inf.wait_synced(10)
    apiserver.store.add_nad("blue", "default", {"type": "multiplex-bridge"})
    apiserver.store.add_nad("green", "other", {"type": "multiplex-bridge"})
    wait_for(lambda: len(rec.snapshot()) == 2, what="both NAD events")
    assert inf.get("other", "green")["spec"]["config"]
    assert inf.running


def test_kinds_nodes_patch_and_a_registered_custom_resource(apiserver, objects):
    apiserver.store.add_node(NODE)
    nodes = objects.informer("nodes")
    assert nodes.wait_synced(10)
    objects.patch_node_annotations(NODE, {"multiplex.io/facts": '{"mtu": 1400}', "gone": None})
    wait_for(lambda: (nodes.get(None, NODE)["metadata"].get("annotations") or {}).get("multiplex.io/facts")
             == '{"mtu": 1400}', what="the node annotation through the watch")
    assert apiserver.store.get(apiserver.store.rt("", "v1", "nodes", False), None, NODE)[
        "metadata"]["annotations"]["multiplex.io/facts"] == '{"mtu": 1400}'
    objects.patch_node_annotations(NODE, {"multiplex.io/facts": None})
    wait_for(lambda: "multiplex.io/facts" not in (nodes.get(None, NODE)["metadata"].get("annotations") or {}),
             what="the annotation removed")

    # a later kind (cluster IPAM's blocks of this node) plugs in by its Resource and selectors
    objects.register("ipblocks", KubeKind(custom("ipam.multiplex.io", "v1", "ipblocks"),
                                          label_selector="multiplex.io/node={node}"))
    blocks = objects.informer("ipblocks")
    assert blocks.wait_synced(10)
    for name, node in (("b1", NODE), ("b2", "n2")):
        apiserver.store.add({"apiVersion": "ipam.multiplex.io/v1", "kind": "IPBlock",
                             "metadata": {"name": name, "labels": {"multiplex.io/node": node}}}, plural="ipblocks")
    wait_for(lambda: [o["metadata"]["name"] for o in blocks.list()] == ["b1"], what="this node's block")
    with pytest.raises(ValueError, match="ipblocks"):
        objects.register("ipblocks", KubeKind(custom("ipam.multiplex.io", "v1", "ipblocks")))
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        objects.informer("nope")
    assert objects.synced() and set(objects.lags()) == {"nodes", "ipblocks"}


def test_stop_ends_an_open_watch_at_once(apiserver, objects):
    inf = objects.informer("pods")
    assert inf.wait_synced(10)
    wait_for(lambda: inf.stats["watches"] == 1, what="the watch open")
    inf.stop(timeout=5)
    assert not inf.running


def test_a_watch_answered_410_over_http_relists_too(apiserver, objects):
    rec = Recorder()
    inf = pods_informer(objects, rec)
    wait_for(lambda: inf.stats["watches"] == 1, what="the first watch open")   # else the 410 meets it
    apiserver.fail_next(1, 410, verbs="watch", resource="pods")   # the watch request itself: 410 Gone
    apiserver._httpd.cut_connections()
    apiserver.store.add_pod("after", node_name=NODE)
    wait_for(lambda: rec.of("after") == ["ADDED"], what="the pod after the relist")
    assert apiserver.count("list", "pods") == 2 and inf.stats["relists"] == 1
