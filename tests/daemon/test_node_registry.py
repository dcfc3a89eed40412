"""The node registry controller (multiplex/controllers/node_registry.py): this node's underlay
facts published as the `multiplex.dev/node-facts` annotation on its Node, through the test API
server and through a local directory, and every node's facts kept as a view with listeners.

The underlay is a dummy interface in a netns of the test's own (198.18.0.0/15, fd00::/8)."""
from __future__ import annotations

import json
import subprocess

import pytest

from multiplex.controllers.node_registry import ANNOTATION, NodeFacts, NodeRegistry, Underlay, read_underlay
from multiplex.daemon.controller import DaemonContext, Runner
from multiplex.k8s.objects import KubeObjects, LocalObjects
from tests.k8s.conftest import apiserver  # noqa: F401
from tests.waiting import eventually

def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@pytest.fixture
def underlay(netns_factory):
    """A node netns whose underlay is `ul0` (MTU 1400, 198.18.77.2/24 + fd00:77::2/64, the default
    route through it); a second up interface `ul1` with its own address. Both are veths whose
    peers (no address) stay in the same netns."""
    ns = netns_factory("reg")
    ip(ns, "link", "add", "ul1", "type", "veth", "peer", "name", "ul1p")
    ip(ns, "addr", "add", "198.18.78.2/24", "dev", "ul1")
    ip(ns, "link", "set", "ul1", "up")
    ip(ns, "link", "set", "ul1p", "up")
    ip(ns, "link", "add", "ul0", "mtu", "1400", "type", "veth", "peer", "name", "ul0p", "mtu", "1400")
    ip(ns, "link", "set", "ul0p", "up")
    ip(ns, "addr", "add", "198.18.77.2/24", "dev", "ul0")
    ip(ns, "addr", "add", "fd00:77::2/64", "dev", "ul0", "nodad")
    ip(ns, "link", "set", "ul0", "up")
    ip(ns, "route", "add", "default", "via", "198.18.77.1", "dev", "ul0")
    return ns


def facts_of(obj) -> dict:
    return json.loads(((obj or {}).get("metadata") or {}).get("annotations", {}).get(ANNOTATION, "null") or "null")


@pytest.fixture
def running():
    made = []

    def start(daemon, *controllers):
        runner = Runner(daemon, controllers)
        made.append((runner, daemon))
        runner.start()
        return runner

    yield start
    for runner, daemon in made:
        runner.stop(5)
        daemon.objects.stop()


@pytest.mark.root
@pytest.mark.k8s
def test_facts_round_trip_through_the_api_server(apiserver, underlay, running):  # noqa: F811
    api = apiserver
    api.store.add_node("n1")
    api.store.add_node("n2")
    other_facts = NodeFacts("n2", "eth1", 1450, "198.18.79.3", "", {"vxlan/blue": {"vtepMAC": "02:00:00:00:00:02"}})
    api.store.patch(api.store.rt("", "v1", "nodes", False), None, "n2", "merge",
                    {"metadata": {"annotations": {ANNOTATION: other_facts.to_json()}}})
    objects = KubeObjects(api.kubeconfig, "n1")
    daemon = DaemonContext(node_name="n1", objects=objects)
    reg = NodeRegistry("n1", netns=f"/var/run/netns/{underlay}")
    reg.resync = 0.2
    seen = []
    reg.add_listener(lambda name, old, new: seen.append((name, old, new)))
    runner = running(daemon, reg)

    published = eventually(lambda: facts_of(api.store.get_object("", "v1", "nodes", "n1")))
    assert published == {"interface": "ul0", "mtu": 1400, "ipv4": "198.18.77.2", "ipv6": "fd00:77::2", "facts": {}}
    assert eventually(lambda: set(reg.nodes()) == {"n1", "n2"}), reg.nodes()
    assert reg.nodes()["n2"] == other_facts
    assert reg.facts("n1").address(4).exploded == "198.18.77.2"
    assert eventually(runner.ready)

    # a resync with nothing changed patches nothing
    api.reset_counts()
    before = runner.status()["node-registry"]["reconciles"]
    assert eventually(lambda: runner.status()["node-registry"]["reconciles"] >= before + 6)   # 2+ resyncs
    assert api.count("patch", "nodes") == 0

    # a delegate's fact is published, and the listener sees this node change
    reg.register("vxlan/blue", {"vtepMAC": "02:00:00:00:00:01"})
    assert eventually(lambda: facts_of(api.store.get_object("", "v1", "nodes", "n1"))["facts"]
                    == {"vxlan/blue": {"vtepMAC": "02:00:00:00:00:01"}})
    assert eventually(lambda: any(n == "n1" and new and new.facts for n, _, new in seen))

    # the underlay's address changes behind the daemon: republished at the next resync
    ip(underlay, "addr", "del", "198.18.77.2/24", "dev", "ul0")
    ip(underlay, "addr", "add", "198.18.77.9/24", "dev", "ul0")
    ip(underlay, "route", "replace", "default", "via", "198.18.77.1", "dev", "ul0")   # went with the address
    assert eventually(lambda: facts_of(api.store.get_object("", "v1", "nodes", "n1"))["ipv4"] == "198.18.77.9")

    # a node that leaves leaves the view, and the listener hears it
    api.store.delete_node("n2")
    assert eventually(lambda: "n2" not in reg.nodes())
    assert any(n == "n2" and old == other_facts and new is None for n, old, new in seen)

    reg.unregister("vxlan/blue")
    assert eventually(lambda: facts_of(api.store.get_object("", "v1", "nodes", "n1"))["facts"] == {})


def test_facts_round_trip_through_a_local_directory(tmp_path, running):
    (tmp_path / "nodes").mkdir()
    other = NodeFacts("n2", "eth1", 1400, "198.18.80.3", "fd00:80::3")
    (tmp_path / "nodes" / "n2.json").write_text(json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2", "annotations": {ANNOTATION: other.to_json()}}}))
    (tmp_path / "nodes" / "n3.json").write_text(json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n3", "annotations": {ANNOTATION: "{not json"}}}))
    objects = LocalObjects(str(tmp_path), interval=0.05)
    reg = NodeRegistry("n1", read=lambda: Underlay("eth9", 1400, "198.18.80.2", ""))
    running(DaemonContext(node_name="n1", objects=objects), reg)

    path = tmp_path / "nodes" / "n1.json"
    assert eventually(path.exists)
    written = json.loads(path.read_text())
    assert written["kind"] == "Node" and written["metadata"]["name"] == "n1"
    assert facts_of(written) == {"interface": "eth9", "mtu": 1400, "ipv4": "198.18.80.2", "facts": {}}
    assert eventually(lambda: set(reg.nodes()) == {"n1", "n2"})     # n3's malformed facts are left out
    assert reg.nodes()["n2"] == other
    reg.register("bgp/asn", 64512)
    assert eventually(lambda: facts_of(json.loads(path.read_text()))["facts"] == {"bgp/asn": 64512})
    assert eventually(lambda: reg.facts("n1") and reg.facts("n1").facts == {"bgp/asn": 64512})


@pytest.mark.root
def test_the_underlay_is_the_named_interface_else_the_default_route_else_the_first_with_an_address(underlay):
    path = f"/var/run/netns/{underlay}"
    assert read_underlay("", path) == Underlay("ul0", 1400, "198.18.77.2", "fd00:77::2")
    assert read_underlay("ul1", path) == Underlay("ul1", 1500, "198.18.78.2", "")
    ip(underlay, "route", "del", "default")
    assert read_underlay("", path).interface == "ul1"      # index order: ul1 was made first
    with pytest.raises(ValueError, match=r"underlay interface 'eth7' does not exist \(--underlay-interface\); "
                                         r"interfaces: lo, ul0, ul0p, ul1, ul1p"):
        read_underlay("eth7", path)


@pytest.mark.parametrize("text,error", [
    ("{", "is not JSON"),
    ("[]", "is not a JSON object"),
    ('{"mtu": "1400"}', "mtu must be a int"),
    ('{"ipv4": "fd00::1"}', "ipv4 'fd00::1' is not IPv4"),
    ('{"ipv6": "nope"}', "ipv6 'nope' is not an address"),
])
def test_malformed_facts_are_refused_with_the_reason(text, error):
    with pytest.raises(ValueError, match=error):
        NodeFacts.from_json("n9", text)


def test_facts_text_is_stable_so_equal_facts_never_patch():
    a = NodeFacts("n1", "eth0", 1500, "198.18.0.1", "", {"b": 1, "a": {"y": 2, "x": 1}})
    b = NodeFacts("n1", "eth0", 1500, "198.18.0.1", "", {"a": {"x": 1, "y": 2}, "b": 1})
    assert a.to_json() == b.to_json()
    assert NodeFacts.from_json("n1", a.to_json()) == a


@pytest.mark.root
def test_a_real_daemon_publishes_its_node_facts_and_reports_its_controllers(underlay, tmp_path):
    """End to end: `multiplex daemon --local-dir` in the node netns (tests/daemonproc.py) runs the
    node registry (and no IPAM GC: no cluster); the node file appears with the underlay's facts,
    and /metrics counts the registry's reconciles."""
    from tests.daemonproc import DaemonProcess

    objects = tmp_path / "objects"
    (objects / "nodes").mkdir(parents=True)
    with DaemonProcess(tmp_path / "state", tmp_path / "d.sock", netns=underlay, local_dir=objects,
                       extra_args=["--underlay-interface", "ul0"]) as d:
        path = objects / "nodes" / f"{d.node_name}.json"
        assert eventually(lambda: path.exists() and facts_of(json.loads(path.read_text()))), d.stderr()
        assert facts_of(json.loads(path.read_text())) == {
            "interface": "ul0", "mtu": 1400, "ipv4": "198.18.77.2", "ipv6": "fd00:77::2", "facts": {}}
        status, text = d.get("/metrics")
        assert status == 200
        assert 'multiplex_controller_reconciles_total{controller="node-registry",result="ok"}' in text
        assert 'controller="ipam-gc"' not in text
        assert d.get("/readyz") == (200, "ok\n")
