"""The vxlan-peers controller's choices (multiplex/controllers/vxlan_peers.py), without a kernel:
what a device should hold, from every node's facts and the pods' network-status; and the kind
of every pod of the cluster it watches (the daemon's `pods` are this node's only), through the
test API server and a local directory.

The kernel side (entries programmed, repaired, removed when a node leaves) is tested on real
nodes in tests/netns/test_vxlan_overlay.py."""
from __future__ import annotations

import ipaddress
import json
import time

import pytest

from multiplex.controllers.node_registry import NodeFacts
from multiplex.controllers.vxlan_peers import (PODS_KIND, STATUS_ANNOTATION, Device, VxlanPeers, controller,
                                               desired, may_claim, status_network)
from multiplex.daemon.controller import DaemonContext
from multiplex.k8s.objects import KubeObjects, LocalObjects
from multiplex.netlink.handle import Link
from tests.k8s.conftest import apiserver  # noqa: F401


def pod(name: str, node: str, *entries: dict, namespace: str = "default") -> dict:
    return {"metadata": {"name": name, "namespace": namespace,
                         "annotations": {STATUS_ANNOTATION: json.dumps(list(entries))}},
            "spec": {"nodeName": node}}


def entry(network: str, mac: str, *ips: str) -> dict:
    return {"name": network, "interface": "net1", "ips": list(ips), "mac": mac}


def facts(name: str, v4: str = "", v6: str = "", **overlays: int) -> NodeFacts:
    return NodeFacts(name, "ul0", 1400, v4, v6,
                     {f"vxlan/{net.replace('_', '.')}": {"vtepMAC": "02:00:00:00:00:99", "vni": vni, "port": 4789}
                      for net, vni in overlays.items()})


DEV4 = Device(network="default.ov", link=Link(index=5, name="mpxvx-00000000"), vni=100, port=4789, family=4)
DEV6 = Device(network="default.ov", link=Link(index=5, name="mpxvx-00000000"), vni=100, port=4789, family=6)


def test_status_names_map_to_the_config_names_multiplex_gives_delegates():
    assert status_network("default/ov") == "default.ov"
    assert status_network("podnet") == "podnet"


def test_peers_are_the_other_nodes_with_the_network_and_its_vni_at_their_address_of_the_devices_family():
    nodes = {"n1": facts("n1", "198.18.90.1", "fd00:90::1", default_ov=100),
             "n2": facts("n2", "198.18.90.2", "fd00:90::2", default_ov=100),
             "n3": facts("n3", "198.18.90.3", "", default_ov=100),        # no IPv6 underlay
             "n4": facts("n4", "198.18.90.4", "fd00:90::4", default_ov=101),  # another VNI: another L2 domain
             "n5": facts("n5", "198.18.90.5", "fd00:90::5")}               # without the network
    assert desired(DEV4, "n1", nodes, []).peers == {"198.18.90.2", "198.18.90.3"}
    assert desired(DEV6, "n1", nodes, []).peers == {"fd00:90::2"}


def test_remote_pods_get_an_fdb_entry_and_a_neighbour_per_address_from_their_network_status():
    nodes = {"n1": facts("n1", "198.18.90.1", default_ov=100), "n2": facts("n2", "198.18.90.2", default_ov=100),
             "n4": facts("n4", "198.18.90.4", default_ov=101)}
    pods = [
        pod("a", "n2", entry("default/ov", "02:AA:00:00:00:01", "198.18.91.21", "fd00:91::21"),
            entry("default/other", "02:aa:00:00:00:09", "198.18.92.1")),
        pod("local", "n1", entry("default/ov", "02:aa:00:00:00:02", "198.18.91.11")),    # this node's own
        pod("elsewhere", "n4", entry("default/ov", "02:aa:00:00:00:03", "198.18.91.41")),  # VNI differs
        pod("gone-node", "n9", entry("default/ov", "02:aa:00:00:00:04", "198.18.91.91")),  # node left
        pod("bad-mac", "n2", entry("default/ov", "not-a-mac", "198.18.91.22")),
        pod("bad-ip", "n2", entry("default/ov", "02:aa:00:00:00:05", "nope", "198.18.91.23/24")),
        {"metadata": {"name": "junk", "annotations": {STATUS_ANNOTATION: "{"}}, "spec": {"nodeName": "n2"}},
    ]
    want = desired(DEV4, "n1", nodes, pods)
    assert want.fdb == {"02:aa:00:00:00:01": "198.18.90.2", "02:aa:00:00:00:05": "198.18.90.2"}
    assert want.neighbours == {"198.18.91.21": "02:aa:00:00:00:01", "fd00:91::21": "02:aa:00:00:00:01",
                               "198.18.91.23": "02:aa:00:00:00:05"}
    assert all(ipaddress.ip_address(ip) for ip in want.neighbours)


# ---- trust: a network-status is the pod's to edit --------------------------------------------------
TRUST_NODES = {"n1": facts("n1", "198.18.90.1", default_ov=100), "n2": facts("n2", "198.18.90.2", default_ov=100),
               "n3": facts("n3", "198.18.90.3", default_ov=100), "n5": facts("n5", "198.18.90.5")}


def test_only_the_networks_namespace_may_claim_addresses_on_a_nad_network():
    pods = [pod("mine", "n2", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.21")),
            pod("tenant", "n3", entry("default/ov", "02:bb:00:00:00:01", "198.18.91.31"), namespace="tenant")]
    want = desired(DEV4, "n1", TRUST_NODES, pods)
    assert want.fdb == {"02:aa:00:00:00:01": "198.18.90.2"}
    assert want.neighbours == {"198.18.91.21": "02:aa:00:00:00:01"}
    assert want.refused == [("namespace", "tenant/tenant", "default/ov")]
    # a NAD in a global namespace may be used, so claimed, from every namespace (when the daemon is
    # told the global namespaces; it is not yet, so it is strict)
    assert may_claim("tenant", "default/ov", ["default"]) and not may_claim("tenant", "default/ov", ["kube-system"])
    assert desired(DEV4, "n1", TRUST_NODES, pods, ["default"]).neighbours == {
        "198.18.91.21": "02:aa:00:00:00:01", "198.18.91.31": "02:bb:00:00:00:01"}
    # the cluster's network (no namespace in its status name) is every pod's
    assert may_claim("tenant", "podnet") and may_claim("default", "podnet")


def test_a_claim_from_a_pod_on_a_node_without_the_networks_vtep_is_ignored():
    pods = [pod("a", "n5", entry("default/ov", "02:aa:00:00:00:05", "198.18.91.51")),     # n5: no VTEP
            pod("b", "", entry("default/ov", "02:aa:00:00:00:06", "198.18.91.61"))]       # not scheduled
    want = desired(DEV4, "n1", TRUST_NODES, pods)
    assert want.fdb == {} and want.neighbours == {}


def test_an_ip_claimed_by_two_pods_is_programmed_for_neither():
    pods = [pod("victim", "n2", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.21", "fd00:91::21")),
            pod("spoof", "n3", entry("default/ov", "02:bb:00:00:00:01", "198.18.91.21", "198.18.91.31"))]
    for order in (pods, pods[::-1]):
        want = desired(DEV4, "n1", TRUST_NODES, order)
        assert want.neighbours == {"fd00:91::21": "02:aa:00:00:00:01", "198.18.91.31": "02:bb:00:00:00:01"}
        assert want.fdb == {"02:aa:00:00:00:01": "198.18.90.2", "02:bb:00:00:00:01": "198.18.90.3"}
        assert want.refused == [("conflict", "default/spoof", "198.18.91.21"),
                                ("conflict", "default/victim", "198.18.91.21")]


def test_a_remote_claim_of_a_local_pods_ip_or_a_mac_another_pod_has_is_dropped():
    pods = [pod("local", "n1", entry("default/ov", "02:aa:00:00:00:11", "198.18.91.11")),
            pod("spoof", "n3", entry("default/ov", "02:bb:00:00:00:01", "198.18.91.11")),
            pod("victim", "n2", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.21")),
            pod("macspoof", "n3", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.32"))]
    want = desired(DEV4, "n1", TRUST_NODES, pods)
    assert want.neighbours == {} and want.fdb == {"02:bb:00:00:00:01": "198.18.90.3"}
    assert ("conflict", "default/macspoof", "02:aa:00:00:00:01") in want.refused
    assert ("conflict", "default/spoof", "198.18.91.11") in want.refused


def test_refused_claims_are_logged_when_they_change_and_counted():
    from multiplex.daemon.metrics import Metrics

    class Log:
        def __init__(self):
            self.lines = []

        def warning(self, msg, **f):
            self.lines.append((msg, f))

    metrics, log = Metrics(), Log()
    ctrl = VxlanPeers("n1")
    ctrl.daemon = DaemonContext(node_name="n1", objects=object(), metrics=metrics, log=log)
    refused = [("conflict", "default/a", "198.18.91.21"), ("conflict", "default/b", "198.18.91.21")]
    ctrl.report_refused("default.ov", refused)
    ctrl.report_refused("default.ov", refused)
    assert len(log.lines) == 2 and log.lines[0][1]["reason"] == "conflict"
    assert metrics.value("multiplex_vxlan_refused_claims", {"network": "default.ov", "reason": "conflict"}) == 2
    ctrl.report_refused("default.ov", [])
    assert metrics.value("multiplex_vxlan_refused_claims", {"network": "default.ov", "reason": "conflict"}) == 0


def wait_for(fn, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    return fn()


@pytest.mark.k8s
def test_it_watches_every_pod_of_the_cluster_not_only_this_nodes(apiserver):  # noqa: F811
    api = apiserver
    api.store.add_pod("here", node_name="n1")
    api.store.add_pod("there", node_name="n2")
    objects = KubeObjects(api.kubeconfig, "n1")
    try:
        ctrl = controller(DaemonContext(node_name="n1", objects=objects))
        assert ctrl.watches == (PODS_KIND,)
        names = wait_for(lambda: sorted(p["metadata"]["name"] for p in objects.informer(PODS_KIND).list()))
        assert names == ["here", "there"]
        assert objects.informer("pods").wait_synced(10)
        assert [p["metadata"]["name"] for p in objects.informer("pods").list()] == ["here"]
        controller(DaemonContext(node_name="n1", objects=objects))   # a second factory call is harmless
    finally:
        objects.stop()


def test_it_reads_every_pod_of_a_local_directory(tmp_path):
    (tmp_path / "pods").mkdir()
    for name, node in (("here", "n1"), ("there", "n2")):
        (tmp_path / "pods" / f"{name}.json").write_text(json.dumps(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"nodeName": node}}))
    objects = LocalObjects(str(tmp_path), interval=0.1)
    try:
        controller(DaemonContext(node_name="n1", objects=objects))
        names = wait_for(lambda: sorted(p["metadata"]["name"] for p in objects.informer(PODS_KIND).list()))
        assert names == ["here", "there"]
    finally:
        objects.stop()


def test_without_the_node_registry_setup_says_what_is_missing():
    ctrl = controller(DaemonContext(node_name="n1", objects=object()))
    with pytest.raises(RuntimeError, match="node-registry"):
        ctrl.setup(DaemonContext(node_name="n1", objects=object()))


# ---- WireGuard keys (multiplex/netlink/wireguard.py) ---------------------------------------------
def test_x25519_matches_rfc_7748_and_public_keys_are_wireguards():
    import base64

    from multiplex.netlink.wireguard import public_key, x25519

    # RFC 7748, section 6.1: Alice's and Bob's key pairs and their shared secret
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    nine = (9).to_bytes(32, "little")
    alice_pub, bob_pub = x25519(alice, nine), x25519(bob, nine)
    assert alice_pub.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob_pub.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert x25519(alice, bob_pub).hex() == shared == x25519(bob, alice_pub).hex()
    assert public_key(base64.b64encode(alice).decode()) == base64.b64encode(alice_pub).decode()


def test_the_private_key_is_made_once_0600_and_rotation_changes_it(tmp_path):
    import os

    from multiplex.netlink import wireguard

    root = str(tmp_path)
    key = wireguard.load_or_create_key(root)
    assert os.stat(wireguard.key_path(root)).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(wireguard.key_path(root))).st_mode & 0o777 == 0o700
    assert wireguard.load_or_create_key(root) == key, "a second call made another key"
    new_public = wireguard.rotate_key(root)
    assert wireguard.read_key(root) != key
    assert new_public == wireguard.public_key(wireguard.read_key(root)) != wireguard.public_key(key)
    assert os.stat(wireguard.key_path(root)).st_mode & 0o777 == 0o600
    assert [f for f in os.listdir(os.path.dirname(wireguard.key_path(root)))] == ["wireguard.key"]


def test_rotate_key_command_prints_the_new_public_key_or_says_there_is_none(tmp_path, capsys):
    from multiplex.cli.vxlan import rotate_key
    from multiplex.netlink import wireguard

    root = str(tmp_path)
    assert rotate_key(root) == 1
    assert "no WireGuard key" in capsys.readouterr().err
    old = wireguard.load_or_create_key(root)
    printed = []
    assert rotate_key(root, output=printed.append) == 0
    assert wireguard.public_key(wireguard.read_key(root)) in printed[0] and wireguard.read_key(root) != old
