"""The vxlan-peers controller's choices (multiplex/controllers/vxlan_peers.py), without a kernel:
what a device should hold, from every node's facts and the pods' network-status; and the kind
of every pod of the cluster it watches (the daemon's `pods` are this node's only), through the
test API server and a local directory.

The kernel side (entries programmed, repaired, removed when a node leaves) is tested on real
nodes in tests/netns/test_vxlan_overlay.py."""
from __future__ import annotations

import ipaddress
import json

import pytest

from multiplex.controllers.node_registry import NodeFacts
from multiplex.controllers.vxlan_peers import (BLOCKS_KIND, PODS_KIND, STATUS_ANNOTATION, Device, VxlanPeers,
                                               controller, ipam_blocks, may_claim, status_network)
from multiplex.controllers import vxlan_peers
from multiplex.daemon.controller import DaemonContext
from multiplex.k8s.objects import KubeObjects, LocalObjects
from multiplex.netlink.handle import Link
from tests.k8s.conftest import apiserver  # noqa: F401
from tests.waiting import eventually


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


def block(cidr: str, node: str, **holders: str) -> dict:
    """An IPBlock object as the cluster IPAM writes it; `holders`: address (dots/colons as _) -> ns/name."""
    allocs = {a.replace("_", ":" if a.count("_") > 3 else "."): {"podNamespace": who.split("/")[0],
                                                                  "podName": who.split("/")[1], "node": node}
              for a, who in holders.items()}
    return {"apiVersion": "multiplex.dev/v1", "kind": "IPBlock", "metadata": {"name": cidr},
            "spec": {"cidr": cidr, "node": node, "pool": "p", "allocations": allocs}}


def vouching(pods: list[dict]) -> list:
    """Blocks that vouch for every claim of `pods`: one single-address block per claimed IP, affine
    to the claiming pod's node (what the tests written before the IPAM rule assume)."""
    out = []
    for p in pods:
        text = (p.get("metadata") or {}).get("annotations", {}).get(STATUS_ANNOTATION, "[]")
        try:
            entries = json.loads(text)
        except ValueError:
            continue
        for e in entries:
            for ip in e.get("ips") or []:
                try:
                    a = ipaddress.ip_address(ip.split("/")[0])
                except ValueError:
                    continue
                out.append(block(f"{a}/{a.max_prefixlen}", p["spec"]["nodeName"]))
    return ipam_blocks(out)


def desired(dev, me, nodes, pods, global_namespaces=(), blocks=None, isolation=True):
    """The controller's `desired` with blocks vouching for every claim unless `blocks` is given."""
    return vxlan_peers.desired(dev, me, nodes, pods, global_namespaces,
                               vouching(pods) if blocks is None else ipam_blocks(blocks), isolation)


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


#: the IPAM's blocks: n1 198.18.91.0/28 (.0-.15), n2 .16/28 (.16-.31), n3 .32/28 (.32-.47), n2 fd00:91::/120;
#: in n3's block .40 is recorded for default/borrower (a pod of n2 that borrowed it)
BLOCKS = [block("198.18.91.0/28", "n1"), block("198.18.91.16/28", "n2"),
          block("198.18.91.32/28", "n3", **{"198_18_91_40": "default/borrower"}), block("fd00:91::/120", "n2")]


def test_an_ip_claimed_by_two_pods_the_ipam_vouches_for_is_programmed_for_neither():
    # n2's block records no holder for .21: both pods of n2 are vouched for, so it is disputed
    pods = [pod("victim", "n2", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.21", "fd00:91::21")),
            pod("spoof", "n2", entry("default/ov", "02:bb:00:00:00:01", "198.18.91.21", "198.18.91.22"))]
    for order in (pods, pods[::-1]):
        want = desired(DEV4, "n1", TRUST_NODES, order, blocks=BLOCKS)
        assert want.neighbours == {"fd00:91::21": "02:aa:00:00:00:01", "198.18.91.22": "02:bb:00:00:00:01"}
        assert want.fdb == {"02:aa:00:00:00:01": "198.18.90.2", "02:bb:00:00:00:01": "198.18.90.2"}
        assert want.refused == [("conflict", "default/spoof", "198.18.91.21"),
                                ("conflict", "default/victim", "198.18.91.21")]


def test_a_claim_the_ipam_does_not_vouch_for_is_dropped_and_cannot_knock_off_the_holder():
    pods = [pod("victim", "n2", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.21")),
            # n3 claims n2's address (a dispute), a free address of n2's block, one in no block at all
            pod("spoof", "n3", entry("default/ov", "02:bb:00:00:00:01", "198.18.91.21", "198.18.91.30",
                                     "198.18.99.1", "198.18.91.33")),
            # borrowed: .40 of n3's block is recorded for this pod of n2; .41 is not
            pod("borrower", "n2", entry("default/ov", "02:aa:00:00:00:02", "198.18.91.40", "198.18.91.41")),
            # a pod of n3 (the block's node) claiming .40, which the block records for another pod
            pod("squatter", "n3", entry("default/ov", "02:bb:00:00:00:02", "198.18.91.40"))]
    want = desired(DEV4, "n1", TRUST_NODES, pods, blocks=BLOCKS)
    # .33 is free in n3's block, which the cluster IPAM keeps (it records .40): not spoof's either
    assert want.neighbours == {"198.18.91.21": "02:aa:00:00:00:01", "198.18.91.40": "02:aa:00:00:00:02"}
    assert sorted(r for r in want.refused if r[0] == "ipam") == [
        ("ipam", "default/borrower", "198.18.91.41"), ("ipam", "default/spoof", "198.18.91.21"),
        ("ipam", "default/spoof", "198.18.91.30"), ("ipam", "default/spoof", "198.18.91.33"),
        ("ipam", "default/spoof", "198.18.99.1"), ("ipam", "default/squatter", "198.18.91.40")]
    assert not [r for r in want.refused if r[0] == "conflict"]
    # without any IPBlock nothing is programmed (the programmed mode needs the cluster IPAM's blocks)
    bare = desired(DEV4, "n1", TRUST_NODES, pods, blocks=[])
    assert bare.neighbours == {} and bare.peers == {"198.18.90.2", "198.18.90.3"}


def test_a_free_address_of_the_cluster_ipams_block_of_the_pods_own_node_is_not_vouched_for():
    """A tenant's pod may not claim an address its pod was never given (a released one, whose old
    holder's peers still send to it) just because it lies in its own node's block: a block of an
    IPPool, or one recording any allocation, is the cluster IPAM's, which records every address it
    hands out. A block of no IPPool recording nothing (static per-node ranges, the lab's) vouches
    for its node's pods."""
    pods = [pod("squatter", "n2", entry("default/ov", "02:bb:00:00:00:01", "198.18.91.21", "fd00:91::21"))]
    for blocks, pools in (([block("198.18.91.16/28", "n2"), block("fd00:91::/120", "n2")], ["p"]),
                          ([block("198.18.91.16/28", "n2", **{"198_18_91_17": "default/other"}),
                            block("fd00:91::/120", "n2", **{"fd00_91_0_0_0_0_0_17": "default/other"})], [])):
        want = vxlan_peers.desired(DEV4, "n1", TRUST_NODES, pods, (), ipam_blocks(blocks, pools))
        assert want.neighbours == {} and want.fdb == {"02:bb:00:00:00:01": "198.18.90.2"}
        assert sorted(r for r in want.refused if r[0] == "ipam") == [
            ("ipam", "default/squatter", "198.18.91.21"), ("ipam", "default/squatter", "fd00:91::21")]
    static = ipam_blocks([block("198.18.91.16/28", "n2"), block("fd00:91::/120", "n2")], ["another-pool"])
    want = vxlan_peers.desired(DEV4, "n1", TRUST_NODES, pods, (), static)
    assert want.neighbours == {"198.18.91.21": "02:bb:00:00:00:01", "fd00:91::21": "02:bb:00:00:00:01"}


def test_a_malformed_ipblock_vouches_for_nothing():
    bad = [{"kind": "IPBlock", "spec": {"cidr": "nope", "node": "n2"}},
           {"kind": "IPBlock", "spec": {"cidr": "198.18.91.16/28", "node": "n2", "allocations": {"x": {}}}}]
    pods = [pod("a", "n2", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.21"))]
    assert desired(DEV4, "n1", TRUST_NODES, pods, blocks=bad).neighbours == {}


def test_a_remote_claim_of_a_local_pods_ip_or_a_mac_another_pod_has_is_dropped():
    pods = [pod("local", "n1", entry("default/ov", "02:aa:00:00:00:11", "198.18.91.11")),
            pod("spoof", "n1", entry("default/ov", "02:bb:00:00:00:01", "198.18.91.11")),
            pod("victim", "n2", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.21")),
            pod("macspoof", "n3", entry("default/ov", "02:aa:00:00:00:01", "198.18.91.34"))]
    want = desired(DEV4, "n1", TRUST_NODES, pods, blocks=BLOCKS)
    assert want.neighbours == {} and want.fdb == {}
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


@pytest.mark.k8s
def test_it_watches_every_pod_of_the_cluster_not_only_this_nodes(apiserver):  # noqa: F811
    api = apiserver
    api.store.add_pod("here", node_name="n1")
    api.store.add_pod("there", node_name="n2")
    objects = KubeObjects(api.kubeconfig, "n1")
    try:
        ctrl = controller(DaemonContext(node_name="n1", objects=objects))
        assert ctrl.watches == (PODS_KIND, BLOCKS_KIND, "ippools")
        names = eventually(lambda: sorted(p["metadata"]["name"] for p in objects.informer(PODS_KIND).list()))
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
        names = eventually(lambda: sorted(p["metadata"]["name"] for p in objects.informer(PODS_KIND).list()))
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


# ---- the admin's namespaceIsolation / globalNamespaces, from the installed config ----------------
def conflist(**fields) -> str:
    return json.dumps({"cniVersion": "1.1.0", "name": "multiplex",
                       "plugins": [dict({"type": "multiplex", "clusterNetwork": "podnet"}, **fields)]})


def test_the_daemon_reads_global_namespaces_from_the_installed_config_and_follows_its_changes(tmp_path):
    import os

    class Log:
        def __init__(self):
            self.lines = []

        def info(self, msg, **f):
            self.lines.append(("info", msg))

        def warning(self, msg, **f):
            self.lines.append(("warning", msg))

    conf = tmp_path / "00-multiplex.conflist"
    log = Log()
    ctrl = controller(DaemonContext(node_name="n1", objects=object(), log=log, options={"cni_conf": str(conf)}))
    assert ctrl.settings.get().global_namespaces == () and ctrl.settings.get().namespace_isolation
    assert log.lines == [("warning", "multiplex config not usable: namespace isolation strict, no global namespaces")]
    conf.write_text(conflist(globalNamespaces=["default"]))
    pods = [pod("tenant", "n3", entry("default/ov", "02:bb:00:00:00:01", "198.18.91.31"), namespace="tenant")]
    s = ctrl.settings.get()
    assert s.global_namespaces == ("default",)
    assert desired(DEV4, "n1", TRUST_NODES, pods, s.global_namespaces).neighbours == {
        "198.18.91.31": "02:bb:00:00:00:01"}
    conf.write_text(conflist(globalNamespaces=["other"], namespaceIsolation=True) + " ")
    os.utime(conf, ns=(1, 1))
    assert ctrl.settings.get().global_namespaces == ("other",)
    conf.write_text(conflist(namespaceIsolation=False))
    s = ctrl.settings.get()
    assert not s.namespace_isolation
    assert desired(DEV4, "n1", TRUST_NODES, pods, s.global_namespaces, isolation=s.namespace_isolation).neighbours
    conf.write_text(conflist(globalNamespaces="default"))   # malformed: strict again, and said so
    assert ctrl.settings.get().namespace_isolation and ctrl.settings.get().global_namespaces == ()
    assert "globalNamespaces is not a list" in ctrl.settings.get().problem
    conf.write_text(json.dumps({"cniVersion": "1.1.0", "name": "x", "plugins": [{"type": "bridge"}]}))
    assert "not of type multiplex" in ctrl.settings.get().problem


def test_multiplex_daemon_passes_the_cni_conf_and_the_idle_grace_to_the_controller(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import multiplex.daemon.main as main
    from multiplex.cli.commands import cli

    seen = {}
    monkeypatch.setattr(main, "run", lambda **options: seen.update(options) or 0)
    r = CliRunner().invoke(cli, ["daemon", "--cni-conf", str(tmp_path / "x.conflist"), "--overlay-idle-grace", "2.5"])
    assert r.exit_code == 0, r.output
    assert seen["cni_conf"] == str(tmp_path / "x.conflist") and seen["overlay_idle_grace"] == 2.5
    ctrl = controller(DaemonContext(node_name="n1", objects=object(),
                                    options={"cni_conf": seen["cni_conf"], "overlay_idle_grace": 2.5}))
    assert ctrl.idle_grace == 2.5 and ctrl.settings.path == str(tmp_path / "x.conflist")
    r = CliRunner().invoke(cli, ["daemon"])
    assert seen["cni_conf"] == "/etc/cni/net.d/00-multiplex.conflist" and seen["overlay_idle_grace"] == 30.0
