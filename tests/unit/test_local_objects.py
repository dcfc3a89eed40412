"""LocalObjects: the node daemon's objects without a cluster. Files added, changed and removed under
the directory become ADDED / MODIFIED / DELETED events on the informer of their `kind`; a broken
file keeps the previous state; patch_node_annotations writes nodes/<node>.json and comes back as
an event."""
from __future__ import annotations

import json
import os
import time

import pytest

from multiplex.k8s.objects import LocalKind, LocalObjects
from tests.informer_events import Recorder
from tests.waiting import wait_for

NODE_ANN = "multiplex.io/node-facts"


def write(path, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(obj)
    tmp = f"{path}.partial"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def pod(name: str, namespace: str = "", **annotations) -> dict:
    meta = {"name": name, "annotations": annotations}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta}


@pytest.fixture
def local(tmp_path):
    objs = LocalObjects(str(tmp_path / "objects"), interval=0.05)
    yield objs
    objs.stop()
    assert objs._thread is None or not objs._thread.is_alive()


def test_files_become_events_on_the_informer_of_their_kind(local, tmp_path):
    root = tmp_path / "objects"
    write(root / "pods" / "web.json", pod("web", "apps", **{"k8s.v1.cni.cncf.io/networks": "blue"}))
    write(root / "nads" / "blue.json", {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                                        "metadata": {"name": "blue"}, "spec": {"config": "{}"}})
    pods, nads, nodes = (local.informer(k) for k in ("pods", "nads", "nodes"))
    rec = Recorder()
    pods.add_handler(rec)
    for inf in (pods, nads, nodes):
        assert inf.wait_synced(10)
    rec.clear()      # from here on, only what the changes below make
    assert pods.get("apps", "web")["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "blue"
    assert nads.get("default", "blue") is not None       # no namespace in the file: "default"
    assert nodes.list() == [] and local.synced()

    # a list file with two pods and a NAD: each object goes to the informer of its kind
    write(root / "pods" / "more.json", {"items": [pod("a"), pod("b"), {
        "kind": "NetworkAttachmentDefinition", "metadata": {"name": "red", "namespace": "apps"}}]})
    wait_for(lambda: {o["metadata"]["name"] for o in pods.list()} == {"web", "a", "b"}, what="the list file")
    wait_for(lambda: nads.get("apps", "red") is not None, what="the NAD in the pods file")

    write(root / "pods" / "web.json", pod("web", "apps", **{"k8s.v1.cni.cncf.io/networks": "green"}))
    wait_for(lambda: ("MODIFIED", "apps", "web") in rec.snapshot(), what="the change")
    assert pods.get("apps", "web")["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "green"

    os.unlink(root / "pods" / "more.json")
    wait_for(lambda: ("DELETED", "default", "b") in rec.snapshot(), what="the deletion")
    assert {o["metadata"]["name"] for o in pods.list()} == {"web"}
    assert nads.get("apps", "red") is None
    events = rec.snapshot()
    # each change once, no event for what did not change
    assert [e for e in events if e[2] == "web"] == [("MODIFIED", "apps", "web")]
    assert sorted(e for e in events if e[2] in ("a", "b")) == [
        ("ADDED", "default", "a"), ("ADDED", "default", "b"), ("DELETED", "default", "a"), ("DELETED", "default", "b")]
    assert local.lags()["pods"] < 5


def test_a_broken_file_keeps_the_previous_state(local, tmp_path):
    root = tmp_path / "objects"
    write(root / "pods" / "web.json", pod("web"))
    pods = local.informer("pods")
    rec = Recorder()
    pods.add_handler(rec)
    assert pods.wait_synced(10)
    rec.clear()
    (root / "pods" / "web.json").write_text('{"kind": "Pod", "metadata": ')   # half written
    (root / "pods" / "other.json").write_text(json.dumps(pod("other")))
    time.sleep(0.3)                                                            # several polls
    assert pods.get("default", "web") is not None and rec.snapshot() == []
    write(root / "pods" / "web.json", pod("web", note="fixed"))
    wait_for(lambda: pods.get("default", "other") is not None, what="reading after the fix")
    assert ("DELETED", "default", "web") not in rec.snapshot()
    assert pods.get("default", "web")["metadata"]["annotations"] == {"note": "fixed"}


def test_patch_node_annotations_round_trip(local, tmp_path):
    nodes = local.informer("nodes")
    rec = Recorder()
    nodes.add_handler(rec)
    assert nodes.wait_synced(10)
    local.patch_node_annotations("node-1", {NODE_ANN: '{"mtu": 1400}'})     # no file yet: created
    path = tmp_path / "objects" / "nodes" / "node-1.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["kind"] == "Node" and on_disk["metadata"] == {"name": "node-1", "annotations": {NODE_ANN: '{"mtu": 1400}'}}
    wait_for(lambda: nodes.get(None, "node-1") is not None, what="the node's ADDED")
    assert nodes.get(None, "node-1")["metadata"]["annotations"][NODE_ANN] == '{"mtu": 1400}'

    # merged into what is there; None removes one; the rest of the object is kept
    on_disk["status"] = {"addresses": [{"type": "InternalIP", "address": "198.18.0.10"}]}
    on_disk["metadata"]["annotations"]["keep"] = "me"
    write(path, on_disk)
    wait_for(lambda: "keep" in nodes.get(None, "node-1")["metadata"]["annotations"], what="the edit")
    local.patch_node_annotations("node-1", {NODE_ANN: None, "other": "x"})
    wait_for(lambda: NODE_ANN not in nodes.get(None, "node-1")["metadata"]["annotations"], what="the removal")
    got = nodes.get(None, "node-1")
    assert got["metadata"]["annotations"] == {"keep": "me", "other": "x"}
    assert got["status"]["addresses"][0]["address"] == "198.18.0.10"
    assert rec.snapshot()[0] == ("ADDED", "", "node-1") and ("MODIFIED", "", "node-1") in rec.snapshot()
    assert not [f for f in os.listdir(path.parent) if f.startswith(".tmp-")]

    for bad in ("../etc", "a/b", "", "UPPER"):
        with pytest.raises(ValueError, match="invalid node name"):
            local.patch_node_annotations(bad, {NODE_ANN: "x"})


def test_another_kind_plugs_in(local, tmp_path):
    local.register("ippools", LocalKind("IPPool", namespaced=False))
    write(tmp_path / "objects" / "ippools" / "p.json",
          {"apiVersion": "ipam.multiplex.io/v1", "kind": "IPPool", "metadata": {"name": "p", "namespace": "x"}})
    pools = local.informer("ippools")
    assert pools.wait_synced(10)
    assert pools.get(None, "p") is not None                 # cluster-scoped: the file's namespace dropped
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        local.informer("nope")


def test_a_missing_directory_is_empty_and_synced(local):
    pods = local.informer("pods")
    assert pods.wait_synced(10) and pods.list() == []
