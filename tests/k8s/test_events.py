"""Kubernetes Events on the pod (multiplex/k8s/events.py), seen through the test API server: an
`AddedInterface` Normal event per attachment after a good ADD, a Warning naming the NAD and the
error after a failed one, and an API that refuses events (or fails them) never fails the ADD nor
gets a retry. The delegates are fake plugins exec'd from the test's own CNI_PATH: no root."""
from __future__ import annotations

import io
import json

import pytest

from multiplex.cni import skel
from multiplex.meta.orchestrator import plugin
from tests.fakeplugins import install

POD_UID = "0f1e2d3c-uid-of-web"


def result(ifname: str, *addresses: str) -> dict:
    return {"cniVersion": "1.1.0", "interfaces": [{"name": ifname, "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": a, "interface": 0} for a in addresses]}


class Node:
    """A node whose multiplex reads pods and NADs from the test API server."""

    def __init__(self, tmp_path, apiserver):
        self.api = apiserver
        self.root = tmp_path
        self.path = install(tmp_path / "bin", "fake-a", "fake-b", "fake-c")
        self.record = str(tmp_path / "calls.jsonl")

    def nad(self, name: str, type_: str, namespace: str = "default", caps=None, **fake) -> None:
        conf = {"cniVersion": "1.1.0", "name": name, "type": type_, "fake": dict(fake, record=self.record)}
        if caps:
            conf["capabilities"] = {c: True for c in caps}
        self.api.store.add_nad(name, namespace, conf)

    def pod(self, name: str, networks: str, namespace: str = "default", uid: str = POD_UID) -> dict:
        return self.api.store.add_pod(name, namespace, annotations={"k8s.v1.cni.cncf.io/networks": networks},
                                      uid=uid)

    def config(self, **extra) -> dict:
        conf = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "clusterNetwork": "podnet",
                "kubeconfig": self.api.kubeconfig, "stateDir": str(self.root / "state"),
                "logFile": str(self.root / "multiplex.log"), "logLevel": "debug"}
        conf.update(extra)
        return conf

    def add(self, conf: dict, pod: str = "web", cid: str = "c1", uid: str = POD_UID, services=None,
            command: str = "ADD") -> tuple[int, dict]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/fake-" + cid,
               "CNI_IFNAME": "eth0", "CNI_PATH": self.path,
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_UID={uid}"}
        out = io.StringIO()
        rc = skel.run(plugin, env, json.dumps(conf).encode(), out, services=services)
        text = out.getvalue()
        return rc, (json.loads(text) if text else {})

    def events(self, namespace: str = "default") -> list[dict]:
        return self.api.store.items("", "v1", "events", namespace)

    def log_lines(self) -> list[dict]:
        return [json.loads(x) for x in (self.root / "multiplex.log").read_text().splitlines() if x.strip()]


@pytest.fixture
def node(tmp_path, apiserver) -> Node:
    n = Node(tmp_path, apiserver)
    n.nad("podnet", "fake-a", result=result("eth0", "198.18.0.5/24"))
    n.nad("blue", "fake-b", result=result("net1", "198.18.1.5/24", "fd00:1::5/64"))
    return n


def test_a_good_add_leaves_an_added_interface_event_per_attachment(node):
    node.pod("web", "blue")
    rc, out = node.add(node.config())
    assert rc == 0, out
    events = sorted(node.events(), key=lambda e: e["message"])
    assert [(e["reason"], e["type"], e["message"]) for e in events] == [
        ("AddedInterface", "Normal", "Add eth0 [198.18.0.5/24] from podnet"),
        ("AddedInterface", "Normal", "Add net1 [198.18.1.5/24 fd00:1::5/64] from default/blue")]
    for e in events:
        assert e["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": "web",
                                       "uid": POD_UID}
        assert e["source"]["component"] == "multiplex" and e["count"] == 1 and e["lastTimestamp"]
    # a second ADD of the same container answers from the cache: no new events
    assert node.add(node.config())[0] == 0 and len(node.events()) == 2


def test_a_failed_add_leaves_a_warning_naming_the_nad_and_the_error(node):
    node.nad("broken", "fake-c", fail={"ADD": {"code": 11, "msg": "no capacity left", "details": "x"}})
    node.pod("web", "blue, broken")
    rc, out = node.add(node.config())
    assert rc == 1 and out["code"] == 11
    (warning,) = [e for e in node.events() if e["type"] == "Warning"]
    assert warning["reason"] == "AddInterfaceFailed"
    assert warning["message"] == "Add net2 from default/broken failed: [code 11] fake-c: no capacity left"
    assert warning["involvedObject"]["name"] == "web" and warning["involvedObject"]["uid"] == POD_UID
    # the undone attachments are not announced as added
    assert [e for e in node.events() if e["reason"] == "AddedInterface"] == []


def test_a_missing_nad_is_a_warning_naming_it(node):
    node.pod("web", "nope")
    rc, out = node.add(node.config())
    assert rc == 1 and out["code"] == 107
    (warning,) = node.events()
    assert warning["type"] == "Warning" and "default/nope" in warning["message"] and "[code 107]" in warning["message"]


def test_an_api_that_refuses_events_does_not_fail_the_add(node):
    node.api.deny("create", "events")
    node.pod("web", "blue")
    rc, out = node.add(node.config())
    assert rc == 0 and out["ips"][0]["address"] == "198.18.0.5/24", out
    assert node.events() == []
    # one attempt, refused: no retry, and not a second event after the first refusal
    assert node.api.count("create", "events") == 1 and node.api.count("create", "events", 403) == 1
    refused = [x for x in node.log_lines() if x.get("msg") == "event not recorded"]
    assert refused and refused[0]["level"] == "debug" and "forbidden" in refused[0]["error"].lower()
    assert node.api.store.get_pod("web")["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]


def test_an_api_failing_events_is_not_retried_and_the_add_stands(node):
    node.pod("web", "blue")
    node.api.fail_next(5, 503, verbs="create", resource="events")
    rc, out = node.add(node.config())
    assert rc == 0, out
    assert node.api.count("create", "events") == 1 and node.events() == []


def test_a_failed_add_with_events_refused_keeps_its_own_error(node):
    node.api.deny("create", "events")
    node.nad("broken", "fake-c", fail={"ADD": {"code": 11, "msg": "no capacity left"}})
    node.pod("web", "broken")
    rc, out = node.add(node.config())
    assert rc == 1 and out["code"] == 11 and out["msg"] == "fake-c: no capacity left"


def test_no_events_without_a_kubernetes_source(tmp_path, apiserver):
    """Local files (the lab): no event stream, and nothing is sent to any API server."""
    n = Node(tmp_path, apiserver)
    nads = tmp_path / "nads"
    nads.mkdir()
    conf = {"cniVersion": "1.1.0", "name": "podnet", "type": "fake-a",
            "fake": {"record": n.record, "result": result("eth0", "198.18.0.6/24")}}
    (nads / "podnet.json").write_text(json.dumps({"kind": "NetworkAttachmentDefinition",
                                                  "metadata": {"name": "podnet", "namespace": "default"},
                                                  "spec": {"config": json.dumps(conf)}}))
    cfg = n.config(nadDir=str(nads))
    del cfg["kubeconfig"]
    rc, out = n.add(cfg)
    assert rc == 0, out
    assert apiserver.count() == 0
