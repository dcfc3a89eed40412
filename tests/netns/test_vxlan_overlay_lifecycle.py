"""An overlay network's node devices over their life, as root: collected when the last pod leaves,
made again by the next ADD; WireGuard's parts with the last encrypted network; `multiplex
uninstall` removing what multiplex made and nothing else.

- a 2-node daemon cluster (netns on an underlay switch, a real `multiplex daemon` per node with
  `--overlay-idle-grace 1`): the last pod's DEL on node 2 -> its bridge and VXLAN device gone, its
  `vxlan/<network>` fact gone from its Node, node 1's FDB entries for node 2 gone; a new ADD on
  node 2 -> devices back, pings across;
- the collection itself in one netns (no daemon): not before the grace, never with a pod port,
  never while an ADD holds the GC lock shared;
- WireGuard (this machine's kernel has none): the port rule and table 47890 are real, the device
  `mpxwg0` a stand-in link of that name (what is removed is found by name, not kind).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading

import pytest

from multiplex.cni.lock import default_path, gc_lock
from multiplex.controllers.vxlan_peers import VxlanPeers
from multiplex.daemon.controller import DaemonContext
from multiplex.netlink.handle import Handle
from tests.cnitool import NetnsPool, ip_json, links, ping
from tests.daemonproc import DaemonProcess
from tests.netns import vxlan_underlay
from tests.netns.vxlan_underlay import Underlay, daemon_node_config, fdb, sh, shim_cni

pytestmark = pytest.mark.root

STATUS = "k8s.v1.cni.cncf.io/network-status"
NETWORK = "default.ovl"          # the delegate's config name of NAD default/ovl
VNI = 4700
WAIT = 20.0


def wait_for(what: str, fn, timeout: float = WAIT) -> float:
    return vxlan_underlay.wait_for(what, fn, timeout)


def write(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def block_of(i: int) -> str:
    """Node i's block of the overlay's subnet (CIDR-aligned, as the cluster IPAM's blocks are)."""
    return f"198.18.82.{16 * i}/28"


class Cluster:
    """Two nodes with daemons; each node's NAD `ovl` leases from its own IPBlock, written beside the
    pods in the shared object directory."""

    def __init__(self, root: str, pool: NetnsPool):
        self.root, self.pool = root, pool
        self.objects = os.path.join(root, "cluster")
        self.underlay = Underlay.build(pool.make, root, 2)
        self.daemons: dict[str, DaemonProcess] = {}
        self.pods: dict[str, dict] = {}
        for node in self.underlay.nodes:
            start = block_of(node.index).split("/")[0]
            last = f"198.18.82.{16 * node.index + 15}"
            conf = {"cniVersion": "1.1.0", "type": "multiplex-vxlan-overlay", "vni": VNI,
                    "ipam": {"type": "multiplex-ipam", "ranges": [
                        [{"subnet": "198.18.82.0/24", "rangeStart": start, "rangeEnd": last}]]}}
            write(os.path.join(node.root, "nads", "ovl.json"),
                  {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                   "metadata": {"name": "ovl", "namespace": "default"}, "spec": {"config": json.dumps(conf)}})
            write(os.path.join(self.objects, "ipblocks", f"{node.name}.json"),
                  {"apiVersion": "ipam.multiplex.dev/v1alpha1", "kind": "IPBlock", "metadata": {"name": node.name},
                   "spec": {"cidr": block_of(node.index), "node": node.name, "pool": "ovl"}})
        os.makedirs(os.path.join(self.objects, "pods"), exist_ok=True)

    def node(self, name: str):
        return next(n for n in self.underlay.nodes if n.name == name)

    def start_daemon(self, node) -> None:
        d = DaemonProcess(node.state_dir, os.path.join(node.root, "d.sock"), netns=node.netns,
                          local_dir=self.objects, node_name=node.name,
                          extra_args=["--overlay-idle-grace", "1", "--cni-conf", os.path.join(node.root, "none")])
        d.start()
        self.daemons[node.name] = d

    def config(self, node) -> dict:
        return daemon_node_config(node, self.objects, "mpxt-lpod", "198.18.83.0/24")

    def cni(self, node, command: str, pod: dict):
        return shim_cni(node, self.daemons[node.name].socket_path, command, self.config(node), pod)

    def add_pod(self, node) -> dict:
        name = f"{node.name}-l{os.getpid()}-{len(self.pods)}"
        pod = {"name": name, "netns": f"/run/netns/{self.pool.make('lp')}", "cid": os.urandom(16).hex(),
               "node": node.name}
        write(self.pod_file(name), {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                                                 "annotations": {"k8s.v1.cni.cncf.io/networks": "ovl@net1"}},
                                    "spec": {"nodeName": node.name}})
        out = self.cni(node, "ADD", pod)
        assert out.ok, out
        self.pods[name] = pod
        return pod

    def del_pod(self, pod: dict) -> None:
        out = self.cni(self.node(pod["node"]), "DEL", pod)
        assert out.ok, out
        self.pods.pop(pod["name"])
        os.unlink(self.pod_file(pod["name"]))

    def pod_file(self, name: str) -> str:
        return os.path.join(self.objects, "pods", f"default-{name}.json")

    def status(self, pod: dict) -> dict:
        with open(self.pod_file(pod["name"])) as f:
            doc = json.load(f)
        return next(e for e in json.loads(doc["metadata"]["annotations"][STATUS]) if e["name"] == "default/ovl")

    def node_facts(self, node) -> dict:
        try:
            with open(os.path.join(self.objects, "nodes", f"{node.name}.json")) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}
        return json.loads(doc["metadata"]["annotations"]["multiplex.dev/node-facts"]).get("facts", {})

    def close(self) -> None:
        for pod in list(self.pods.values()):
            if self.daemons.get(pod["node"]) and self.daemons[pod["node"]].proc.poll() is None:
                self.cni(self.node(pod["node"]), "DEL", pod)
        for d in self.daemons.values():
            d.close()


def overlay_links(ns: str) -> set[str]:
    return {n for n in links(ns) if n.startswith(("mpxvb-", "mpxvx-"))}


def vxlan_dev(ns: str) -> str:
    return next(n for n in overlay_links(ns) if n.startswith("mpxvx-"))


@pytest.fixture
def cluster(tmp_path):
    pool = NetnsPool("mpxl")
    c = None
    try:
        c = Cluster(str(tmp_path), pool)
        for node in c.underlay.nodes:
            c.start_daemon(node)
        yield c
    finally:
        if c is not None:
            c.close()
        pool.close()



@contextlib.contextmanager
def add_in_flight(state_dir: str):
    """An ADD in flight, as far as GC is concerned: another thread holds the GC lock of `state_dir`
    shared for the body."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with gc_lock(False, path=default_path(state_dir)):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        yield
    finally:
        release.set()
        t.join()

def test_last_pod_leaves_devices_and_fact_go_everywhere_then_an_add_brings_them_back(cluster):
    n1, n2 = cluster.underlay.nodes
    p1, p2 = cluster.add_pod(n1), cluster.add_pod(n2)
    ip2 = cluster.status(p2)["ips"][0].split("/")[0]
    wait_for("n1 programmed for n2's pod", lambda: (cluster.status(p2)["mac"], n2.v4) in fdb(n1.netns, vxlan_dev(n1.netns)))
    assert ping(p1["netns"].rsplit("/", 1)[1], ip2, count=2)
    assert f"vxlan/{NETWORK}" in cluster.node_facts(n2)

    cluster.del_pod(p2)
    wait_for("n2's bridge and VXLAN device removed", lambda: not overlay_links(n2.netns))
    wait_for("n2's vxlan fact withdrawn", lambda: f"vxlan/{NETWORK}" not in cluster.node_facts(n2))
    wait_for("n1's entries for n2 removed", lambda: not [e for e in fdb(n1.netns, vxlan_dev(n1.netns)) if e[1] == n2.v4])
    # node 1 still has its pod: its devices stay (its bridge has a pod port)
    assert len(overlay_links(n1.netns)) == 2

    p3 = cluster.add_pod(n2)
    ip3 = cluster.status(p3)["ips"][0].split("/")[0]
    assert len(overlay_links(n2.netns)) == 2
    wait_for("n1 programmed for the new pod", lambda: (cluster.status(p3)["mac"], n2.v4) in fdb(n1.netns, vxlan_dev(n1.netns)))
    wait_for("ping to the new pod", lambda: ping(p1["netns"].rsplit("/", 1)[1], ip3))


# ---- the collection, without a daemon -------------------------------------------------------------
@pytest.fixture
def node_ns():
    pool = NetnsPool("mpxc")
    try:
        ns = pool.make("n")
        sh("ip", "-n", ns, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
        sh("ip", "-n", ns, "addr", "add", "198.18.84.1/24", "dev", "ul0")
        sh("ip", "-n", ns, "link", "set", "ul0", "up")
        yield ns
    finally:
        pool.close()


def make_overlay(ns: str, suffix: str, vni: int, network: str, port: int = 4789) -> tuple[str, str]:
    br, vx = f"mpxvb-{suffix}", f"mpxvx-{suffix}"
    sh("ip", "-n", ns, "link", "add", br, "type", "bridge")
    sh("ip", "-n", ns, "link", "add", vx, "type", "vxlan", "id", str(vni), "local", "198.18.84.1", "dstport",
       str(port), "nolearning", "proxy", "dev", "ul0")
    sh("ip", "-n", ns, "link", "set", vx, "alias", f"vxlan-overlay/{network}", "master", br, "up")
    sh("ip", "-n", ns, "link", "set", br, "up")
    return br, vx


def wireguard_stand_in(ns: str) -> None:
    """A link named mpxwg0, up (this kernel has neither WireGuard nor dummy links: a bridge)."""
    sh("ip", "-n", ns, "link", "add", "mpxwg0", "type", "bridge")
    sh("ip", "-n", ns, "link", "set", "mpxwg0", "up")


def collector(ns: str, state: str, grace: float) -> VxlanPeers:
    ctrl = VxlanPeers("n1", netns=f"/run/netns/{ns}", state_dir=state, idle_grace=grace)
    ctrl.daemon = DaemonContext(node_name="n1", objects=object(), state_dir=state)
    return ctrl


def collect(ctrl: VxlanPeers) -> list[str]:
    with Handle(ctrl.netns) as h:
        return ctrl.collect_unused(h)


def test_collection_waits_for_the_grace_keeps_pod_ports_and_never_runs_beside_an_add(node_ns, tmp_path):
    ns, state = node_ns, str(tmp_path / "state")
    used_br, used_vx = make_overlay(node_ns, "aaaa0001", 101, "default.used")
    sh("ip", "-n", ns, "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p")
    sh("ip", "-n", ns, "link", "set", "pod0", "master", used_br, "up")
    idle_br, idle_vx = make_overlay(node_ns, "aaaa0002", 102, "default.idle")
    sh("ip", "-n", ns, "link", "add", "mpxvb-foreign", "type", "bridge")    # a port-less orphan bridge
    sh("ip", "-n", ns, "link", "add", "br-keep", "type", "bridge")          # not multiplex's
    sh("ip", "-n", ns, "link", "add", "vx-keep", "type", "vxlan", "id", "103", "dstport", "4789", "dev", "ul0")

    patient = collector(ns, state, grace=3600)
    assert collect(patient) == ["mpxvb-foreign"]            # an orphan goes at once; the idle network waits
    assert {idle_br, idle_vx, used_br, used_vx} <= links(ns)
    # a pod restart (a port back on the bridge, then gone again) restarts the idle clock
    patient._idle_since["default.idle"] -= 7200              # as if idle for two hours
    sh("ip", "-n", ns, "link", "add", "pod1", "type", "veth", "peer", "name", "pod1p")
    sh("ip", "-n", ns, "link", "set", "pod1", "master", idle_br, "up")
    assert collect(patient) == []
    sh("ip", "-n", ns, "link", "del", "pod1")
    assert collect(patient) == [] and {idle_br, idle_vx} <= links(ns)

    # an ADD in flight holds the GC lock shared: nothing is removed, the next pass does it
    eager = collector(ns, state, grace=0)
    with add_in_flight(state):
        assert collect(eager) == [] and {idle_br, idle_vx} <= links(ns)
    assert sorted(collect(eager)) == sorted([idle_vx, idle_br])
    left = links(ns)
    assert {used_br, used_vx, "pod0", "br-keep", "vx-keep"} <= left and not {idle_br, idle_vx} & left


def test_wireguards_rule_table_and_device_go_with_the_last_encrypted_network(node_ns, tmp_path):
    from multiplex.netlink import wireguard

    ns, state = node_ns, str(tmp_path / "state")
    br, vx = make_overlay(ns, "bbbb0001", 201, "default.enc", port=4790)
    wireguard_stand_in(ns)
    with Handle(f"/run/netns/{ns}") as h:
        assert wireguard.ensure_port_rule(h, 4, 4790)
        wireguard.add_peer_route(h, h.require_link(wireguard.DEVICE), "198.18.84.2")
        assert wireguard.ensure_port_rule(h, 4, 4791)     # a port no overlay uses any more
    sh("ip", "-n", ns, "rule", "add", "priority", "17890", "table", "100")     # not multiplex's
    sh("ip", "-n", ns, "route", "add", "198.18.85.0/24", "dev", "ul0", "table", "100")

    def rules() -> list[int]:
        return [r["dport"] if isinstance(r.get("dport"), int) else int(str(r.get("dport")).split("-")[0])
                for r in ip_json(ns, "rule", "show", "table", str(wireguard.TABLE))]

    ctrl = collector(ns, state, grace=3600)
    removed = collect(ctrl)
    assert removed == [f"rule udp dport 4791 (IPv4) -> table {wireguard.TABLE}"]
    assert rules() == [4790] and wireguard.DEVICE in links(ns)
    ctrl.idle_grace = 0
    removed = collect(ctrl)
    assert vx in removed and br in removed and wireguard.DEVICE in removed
    assert rules() == [] and wireguard.DEVICE not in links(ns)
    assert ip_json(ns, "route", "show", "table", str(wireguard.TABLE)) == []
    assert ip_json(ns, "rule", "show", "table", "100") and ip_json(ns, "route", "show", "table", "100")


# ---- uninstall --------------------------------------------------------------------------------------
def test_uninstall_removes_the_node_devices_multiplex_made_and_nothing_else(node_ns, tmp_path):
    from multiplex.cli.install.uninstall import on_the_node, uninstall
    from multiplex.netlink import wireguard

    ns = node_ns
    br, vx = make_overlay(ns, "cccc0001", 301, "default.busy")
    sh("ip", "-n", ns, "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p")
    sh("ip", "-n", ns, "link", "set", "pod0", "master", br, "up")
    make_overlay(ns, "cccc0002", 302, "default.idle")
    sh("ip", "-n", ns, "link", "add", "mpxbgp0", "type", "vxlan", "id", "4097", "dstport", "4789", "dev", "ul0")
    wireguard_stand_in(ns)
    with Handle(f"/run/netns/{ns}") as h:
        wireguard.ensure_port_rule(h, 4, 4789)
        wireguard.add_peer_route(h, h.require_link(wireguard.DEVICE), "198.18.84.2")
    sh("ip", "-n", ns, "link", "add", "br-keep", "type", "bridge")
    sh("ip", "-n", ns, "link", "add", "vx-keep", "type", "vxlan", "id", "303", "dstport", "4789", "dev", "ul0")
    sh("ip", "-n", ns, "link", "set", "vx-keep", "alias", "not-multiplex/x")
    sh("ip", "-n", ns, "rule", "add", "priority", "17890", "table", "100")
    before_keep = {"lo", "ul0", "ul0p", "pod0", "pod0p", "br-keep", "vx-keep"}

    root = tmp_path / "root"
    root.mkdir()
    assert not on_the_node(str(root))      # a test root: the machine's links are never touched by default
    report = uninstall(str(root), node_devices=True, netns=f"/run/netns/{ns}")
    assert links(ns) == before_keep
    assert ip_json(ns, "rule", "show", "table", str(wireguard.TABLE)) == []
    assert ip_json(ns, "route", "show", "table", str(wireguard.TABLE)) == []
    assert ip_json(ns, "rule", "show", "table", "100")
    removed = [c.path for c in report.changes if c.action == "removed"]
    assert {f"node: {n}" for n in (br, vx, "mpxbgp0", wireguard.DEVICE)} <= set(removed)
    assert any("pods were still on them" in w and br in w for w in report.warnings)
    again = uninstall(str(root), node_devices=True, netns=f"/run/netns/{ns}")
    assert not [c for c in again.changes if c.path.startswith("node: ")]
    assert subprocess.run(["ip", "-n", ns, "link", "show", "pod0"], capture_output=True).returncode == 0


def test_collection_also_waits_for_an_add_locking_the_installed_configs_state_dir(node_ns, tmp_path):
    from multiplex.controllers.cni_settings import InstalledSettings

    ns, daemon_state, conf_state = node_ns, str(tmp_path / "daemon"), str(tmp_path / "conf")
    conf = tmp_path / "00-multiplex.conflist"
    conf.write_text(json.dumps({"cniVersion": "1.1.0", "name": "multiplex",
                                "plugins": [{"type": "multiplex", "stateDir": conf_state}]}))
    br, vx = make_overlay(ns, "dddd0001", 401, "default.idle")
    ctrl = collector(ns, daemon_state, grace=0)
    ctrl.settings = InstalledSettings(str(conf))
    with add_in_flight(conf_state):     # the meta plugin's ADD locks the config's stateDir, not the daemon's
        assert collect(ctrl) == [] and {br, vx} <= links(ns)
    assert sorted(collect(ctrl)) == sorted([vx, br])
