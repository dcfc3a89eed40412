"""multiplex-vxlan-overlay across 3 nodes, peers programmed by the node daemon, as root.

Three nodes (netns) on an underlay switch of MTU 1400, a real `multiplex daemon` in each (its
`--local-dir` the shared object directory: pods, nodes), pods attached through each node's shim
by the meta plugin (annotation `ov4@net1, ov6@net2`), which writes their network-status. `ov4`
rides the IPv4 underlay with dual-stack pods, `ov6` the IPv6 underlay with IPv6 pods. Without a
cluster, each node's NADs give it its own CIDR-aligned block of the network's subnets (per-node
nadDir), so addresses never collide, and the blocks are written as the cluster IPAM's IPBlocks
(`ipblocks/n<i>.json`), since the controller programs only addresses the IPAM vouches for.

What a user checks: the ping matrix across nodes on both networks; pod MTU 1350 / 1330; the FDB
(all-zeros per peer, one entry per remote pod) and neighbour entries read back with `bridge` and
`ip`; no ARP crosses the underlay to a third node (answered by the local device's proxy); an
entry deleted by hand is restored by the resync; a node that leaves is removed from the others,
and reachable again when it comes back (both timed, printed); a don't-fragment ping of exactly the
pod MTU crosses nodes and one byte more fails with "message too long" (IPv4 and IPv6 pods on the
IPv4 underlay, IPv6 pods on the IPv6 underlay); a node that never existed joins the running
cluster and is reached from node 1 (timed, printed), then leaves again.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.cnitool import NetnsPool, nsexec, ping
from tests.daemonproc import DaemonProcess
from tests.netns import vxlan_underlay
from tests.netns.vxlan_underlay import (Underlay, daemon_node_config, fdb, link_mtu, neighbours, ping_df, shim_cni,
                                        vxlan_links)

pytestmark = pytest.mark.root

ZERO = "00:00:00:00:00:00"
STATUS = "k8s.v1.cni.cncf.io/network-status"
WAIT = 20.0


def blocks(i: int) -> dict[str, str]:
    """Node i's CIDR-aligned blocks of the networks' subnets (what the cluster IPAM would give it):
    network/family -> CIDR."""
    return {"ov4-v4": f"198.18.80.{16 * i}/28", "ov4-v6": f"fd00:80::{i:x}00/120", "ov6-v6": f"fd00:86::{i:x}00/120"}


def block_range(cidr: str) -> dict:
    import ipaddress

    net = ipaddress.ip_network(cidr)
    return {"rangeStart": str(net[0]), "rangeEnd": str(net[-1])}


def ov4_nad(i: int) -> dict:
    b = blocks(i)
    return {"cniVersion": "1.1.0", "type": "multiplex-vxlan-overlay", "vni": 4100,
            "ipam": {"type": "multiplex-ipam", "ranges": [
                [{"subnet": "198.18.80.0/24", **block_range(b["ov4-v4"])}],
                [{"subnet": "fd00:80::/64", **block_range(b["ov4-v6"])}]]}}


def ov6_nad(i: int) -> dict:
    return {"cniVersion": "1.1.0", "type": "multiplex-vxlan-overlay", "vni": 4600, "underlayFamily": "ipv6",
            "ipam": {"type": "multiplex-ipam", "ranges": [
                [{"subnet": "fd00:86::/64", **block_range(blocks(i)["ov6-v6"])}]]}}


def block_objects(node_name: str, i: int) -> dict:
    """Node i's blocks as the cluster IPAM's IPBlocks: the vxlan-peers controller programs a pod's
    address only when an IPBlock of the pod's node holds it (docs/controllers.md)."""
    return {"items": [{"apiVersion": "ipam.multiplex.dev/v1alpha1", "kind": "IPBlock",
                       "metadata": {"name": f"{node_name}-{key}"},
                       "spec": {"cidr": cidr, "node": node_name, "pool": key}} for key, cidr in blocks(i).items()]}


def nad(name: str, config: dict) -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"config": json.dumps(config)}}


def write(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


class Cluster:
    """The 3 nodes, their daemons, one pod per node."""

    def __init__(self, root: str, pool: NetnsPool):
        self.root = root
        self.pool = pool
        self.objects = os.path.join(root, "cluster")
        os.makedirs(os.path.join(self.objects, "pods"))
        self.underlay = Underlay.build(pool.make, root, 3)
        self.daemons: dict[str, DaemonProcess] = {}
        self.pods: dict[str, dict] = {}          # node name -> {"netns", "cid", "name", "result"}
        for node in self.underlay.nodes:
            self.write_node_files(node)

    def write_node_files(self, node) -> None:
        """The node's NADs (its own ranges: no cluster IPAM here) and its IPBlocks."""
        write(os.path.join(node.root, "nads", "ov4.json"), nad("ov4", ov4_nad(node.index)))
        write(os.path.join(node.root, "nads", "ov6.json"), nad("ov6", ov6_nad(node.index)))
        write(self.block_file(node.name), block_objects(node.name, node.index))

    def block_file(self, node_name: str) -> str:
        return os.path.join(self.objects, "ipblocks", f"{node_name}.json")

    def node(self, name: str):
        return next(n for n in self.underlay.nodes if n.name == name)

    def start_daemon(self, node) -> DaemonProcess:
        d = DaemonProcess(node.state_dir, os.path.join(node.root, "d.sock"), netns=node.netns,
                          local_dir=self.objects, node_name=node.name)
        d.start()
        self.daemons[node.name] = d
        return d

    def multiplex_config(self, node) -> dict:
        return daemon_node_config(node, self.objects, "mpxt-pod", "198.18.81.0/24")

    def cni(self, node, command: str, pod: dict):
        return shim_cni(node, self.daemons[node.name].socket_path, command, self.multiplex_config(node), pod)

    def add_pod(self, node) -> dict:
        name = f"{node.name}-pod-{os.getpid()}"
        pod = {"name": name, "netns": self.pool.make("vp"), "cid": os.urandom(16).hex()}
        write(self.pod_file(name), {"apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                                                 "annotations": {"k8s.v1.cni.cncf.io/networks": "ov4@net1, ov6@net2"}},
                                    "spec": {"nodeName": node.name}})
        out = self.cni(node, "ADD", pod)
        assert out.ok, out
        pod["result"] = out.out
        self.pods[node.name] = pod
        return pod

    def pod_file(self, name: str) -> str:
        return os.path.join(self.objects, "pods", f"default-{name}.json")

    def status(self, node_name: str) -> dict[str, dict]:
        """network name -> the pod's network-status entry."""
        with open(self.pod_file(self.pods[node_name]["name"])) as f:
            doc = json.load(f)
        return {e["name"]: e for e in json.loads(doc["metadata"]["annotations"][STATUS])}

    def address(self, node_name: str, network: str, family: int) -> str:
        return next(ip for ip in self.status(node_name)[network]["ips"] if (":" in ip) == (family == 6))

    def device(self, node, vni: int) -> str:
        return next(n for n, l in vxlan_links(node.netns).items() if l["linkinfo"]["info_data"]["id"] == vni)

    def close(self) -> None:
        for node_name, pod in self.pods.items():
            if node_name in self.daemons and self.daemons[node_name].proc.poll() is None:
                self.cni(self.node(node_name), "DEL", pod)
        for d in self.daemons.values():
            d.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pool = NetnsPool("mpx")
    c = None
    try:
        c = Cluster(str(tmp_path_factory.mktemp("vxo")), pool)
        for node in c.underlay.nodes:
            c.start_daemon(node)
        for node in c.underlay.nodes:
            c.add_pod(node)
        yield c
    finally:
        if c is not None:
            c.close()
        pool.close()


def wait_for(what: str, fn, timeout: float = WAIT) -> float:
    return vxlan_underlay.wait_for(what, fn, timeout)


def programmed(c: Cluster) -> bool:
    """Every node's ov4 and ov6 devices hold an all-zeros entry for both other nodes and an entry per
    remote pod."""
    for node in c.underlay.nodes:
        for vni, fam in ((4100, 4), (4600, 6)):
            try:
                dev = c.device(node, vni)
            except StopIteration:
                return False
            have = fdb(node.netns, dev)
            for other in c.underlay.nodes:
                if other is node:
                    continue
                addr = other.v4 if fam == 4 else other.v6
                net = "default/ov4" if vni == 4100 else "default/ov6"
                if (ZERO, addr) not in have or (c.status(other.name)[net]["mac"], addr) not in have:
                    return False
    return True


def test_pods_ping_across_nodes_on_both_underlays(cluster):
    wait_for("peers programmed on every node", lambda: programmed(cluster))
    failures = []
    for src in cluster.underlay.nodes:
        ns = cluster.pods[src.name]["netns"]
        assert link_mtu(ns, "net1") == 1350, "pod MTU over the IPv4 underlay"
        assert link_mtu(ns, "net2") == 1330, "pod MTU over the IPv6 underlay"
        for dst in cluster.underlay.nodes:
            if dst is src:
                continue
            for net, fam in (("default/ov4", 4), ("default/ov4", 6), ("default/ov6", 6)):
                addr = cluster.address(dst.name, net, fam)
                if not ping(ns, addr, count=1, timeout=3):
                    failures.append(f"{src.name} -> {dst.name} {net} IPv{fam} {addr}")
    assert not failures, failures


def test_entries_read_back_learning_off_proxy_on(cluster):
    wait_for("peers programmed on every node", lambda: programmed(cluster))
    n1, n2, n3 = cluster.underlay.nodes
    dev = cluster.device(n1, 4100)
    info = vxlan_links(n1.netns)[dev]["linkinfo"]["info_data"]
    assert info["learning"] is False and info["proxy"] is True and info["local"] == n1.v4
    want = {(ZERO, n2.v4), (ZERO, n3.v4)}
    for other in (n2, n3):
        want.add((cluster.status(other.name)["default/ov4"]["mac"], other.v4))
    assert fdb(n1.netns, dev) == want
    neigh = neighbours(n1.netns, dev)
    for other in (n2, n3):
        entry = cluster.status(other.name)["default/ov4"]
        for ip in entry["ips"]:
            assert neigh.get(ip) == entry["mac"], f"no neighbour entry for {ip} ({other.name}'s pod)"
    # the node's VTEP, published through the node registry
    with open(os.path.join(cluster.objects, "nodes", "n1.json")) as f:
        facts = json.loads(json.load(f)["metadata"]["annotations"]["multiplex.dev/node-facts"])
    mac = vxlan_links(n1.netns)[dev]["address"]
    assert facts["facts"]["vxlan/default.ov4"] == {"vtepMAC": mac, "vni": 4100, "port": 4789}


def test_arp_for_a_remote_pod_is_answered_on_the_node(cluster):
    """The pod's ARP request for n2's pod never reaches n3 (no head-end copy): the device's proxy answers it."""
    wait_for("peers programmed on every node", lambda: programmed(cluster))
    n1, n2, n3 = cluster.underlay.nodes
    cluster.underlay.count_udp()
    target = cluster.address("n2", "default/ov4", 4)
    ns = cluster.pods["n1"]["netns"]
    nsexec(ns, "ip", "neigh", "flush", "dev", "net1")
    assert ping(ns, target, count=1, timeout=3)
    learned = {n["dst"]: n.get("lladdr") for n in json.loads(nsexec(ns, "ip", "-j", "neigh", "show", "dev", "net1").stdout)}
    assert learned.get(target) == cluster.status("n2")["default/ov4"]["mac"], learned
    counts = cluster.underlay.udp_packets()
    assert counts["n2"] >= 1, counts            # the echo request crossed to n2
    assert counts["arp-n3"] == 0 and counts["arp-n2"] == 0, counts   # no ARP crossed the underlay at all


def test_resync_restores_entries_deleted_by_hand(cluster):
    wait_for("peers programmed on every node", lambda: programmed(cluster))
    n1, n2, _ = cluster.underlay.nodes
    dev = cluster.device(n1, 4100)
    entry = cluster.status("n2")["default/ov4"]
    nsexec(n1.netns, "bridge", "fdb", "del", ZERO, "dev", dev, "dst", n2.v4)
    nsexec(n1.netns, "bridge", "fdb", "del", entry["mac"], "dev", dev, "dst", n2.v4)
    nsexec(n1.netns, "ip", "neigh", "del", entry["ips"][0], "dev", dev)
    assert (ZERO, n2.v4) not in fdb(n1.netns, dev)
    wait_for("entries deleted by hand restored", lambda: (ZERO, n2.v4) in fdb(n1.netns, dev)
             and (entry["mac"], n2.v4) in fdb(n1.netns, dev)
             and neighbours(n1.netns, dev).get(entry["ips"][0]) == entry["mac"])


def test_node_that_leaves_is_removed_and_comes_back(cluster):
    wait_for("peers programmed on every node", lambda: programmed(cluster))
    n1, n2, n3 = cluster.underlay.nodes
    gone_mac = cluster.status("n3")["default/ov4"]["mac"]
    gone_ips = cluster.status("n3")["default/ov4"]["ips"]
    cluster.daemons["n3"].stop()
    os.unlink(os.path.join(cluster.objects, "nodes", "n3.json"))

    def n3_gone() -> bool:
        for node in (n1, n2):
            dev = cluster.device(node, 4100)
            if any(dst == n3.v4 for _, dst in fdb(node.netns, dev)):
                return False
            if any(ip in neighbours(node.netns, dev) for ip in gone_ips):
                return False
            if any(dst == n3.v6 for _, dst in fdb(node.netns, cluster.device(node, 4600))):
                return False
        return True

    wait_for("node n3 left: its FDB and neighbour entries gone from n1 and n2", n3_gone)
    assert (gone_mac, n3.v4) not in fdb(n1.netns, cluster.device(n1, 4100))
    assert (ZERO, n2.v4) in fdb(n1.netns, cluster.device(n1, 4100)), "n2's entries went too"

    cluster.start_daemon(n3)
    wait_for("node n3 back: reachable from n1 and n2", lambda: programmed(cluster))
    assert ping(cluster.pods["n1"]["netns"], cluster.address("n3", "default/ov4", 4), count=1, timeout=3)
    assert ping(cluster.pods["n2"]["netns"], cluster.address("n3", "default/ov6", 6), count=1, timeout=3)


@pytest.mark.parametrize("network, family, mtu", [("default/ov4", 4, 1350), ("default/ov4", 6, 1350),
                                                  ("default/ov6", 6, 1330)],
                         ids=["ipv4-underlay-ipv4-pod", "ipv4-underlay-ipv6-pod", "ipv6-underlay-ipv6-pod"])
def test_dont_fragment_ping_of_the_pod_mtu_crosses_nodes_one_byte_more_does_not(cluster, network, family, mtu):
    """The pod MTU is the underlay's (1400) less VXLAN's 50 (IPv4) or 70 (IPv6): a packet of exactly
    that size, encapsulated, fills the underlay and crosses; one byte more is refused in the pod."""
    wait_for("peers programmed on every node", lambda: programmed(cluster))
    ns = cluster.pods["n1"]["netns"]
    for dst in ("n2", "n3"):
        addr = cluster.address(dst, network, family)
        fits = ping_df(ns, addr, mtu)
        assert fits.returncode == 0, f"{mtu}-byte DF ping n1 -> {dst} {addr}: {fits.stdout}{fits.stderr}"
        too_big = ping_df(ns, addr, mtu + 1)
        out = (too_big.stdout + too_big.stderr).lower()
        assert too_big.returncode != 0 and "message too long" in out, too_big


def drop_node(c: Cluster, node) -> None:
    """Remove a node the test added: its pod (DEL through its daemon), its daemon, its pod and Node
    objects, its netns (and so its underlay port); then wait (bounded, not failing) until the other
    nodes dropped its entries, so the tests after see the 3 nodes alone."""
    pod = c.pods.pop(node.name, None)
    d = c.daemons.pop(node.name, None)
    try:
        if pod is not None and d is not None and d.proc.poll() is None:
            c.daemons[node.name] = d
            try:
                c.cni(node, "DEL", pod)
            finally:
                del c.daemons[node.name]
    finally:
        if d is not None:
            d.close()
        if pod is not None and os.path.exists(c.pod_file(pod["name"])):
            os.unlink(c.pod_file(pod["name"]))
        for path in (os.path.join(c.objects, "nodes", f"{node.name}.json"), c.block_file(node.name)):
            if os.path.exists(path):
                os.unlink(path)
        if node in c.underlay.nodes:
            c.underlay.nodes.remove(node)
        c.pool.drop(node.netns)
    limit = time.monotonic() + WAIT
    while time.monotonic() < limit:
        if all(not any(dst in (node.v4, node.v6) for _, dst in fdb(n.netns, c.device(n, vni)))
               for n in c.underlay.nodes for vni in (4100, 4600)):
            return
        time.sleep(0.2)


def test_a_node_that_never_existed_joins_the_running_cluster(cluster):
    """Node added -> reachable: a fourth node (its netns on the underlay, its daemon, a pod) joins
    without a restart of the others; timed from its daemon's start until node 1's pod pings its pod
    (printed, never asserted), then removed again."""
    wait_for("peers programmed on every node", lambda: programmed(cluster))
    index = len(cluster.underlay.nodes) + 1
    node = cluster.underlay.add_node(cluster.pool.make("vn"), os.path.join(cluster.root, f"n{index}"), index)
    try:
        assert not os.path.exists(os.path.join(cluster.objects, "nodes", f"{node.name}.json")), "not a new node"
        cluster.write_node_files(node)
        start = time.monotonic()
        cluster.start_daemon(node)
        ready = time.monotonic() - start
        cluster.add_pod(node)
        attached = time.monotonic() - start
        n1_pod = cluster.pods["n1"]["netns"]
        target = cluster.address(node.name, "default/ov4", 4)
        wait_for(f"new node {node.name}: n1's pod pings its pod {target} (after the pod's ADD)",
                 lambda: ping(n1_pod, target, count=1, timeout=1))
        print(f"new node {node.name}: daemon ready {ready:.2f} s, pod attached {attached:.2f} s, "
              f"reachable from n1 {time.monotonic() - start:.2f} s after its daemon started")
        wait_for(f"new node {node.name}: programmed on every node", lambda: programmed(cluster))
        assert ping(cluster.pods["n2"]["netns"], cluster.address(node.name, "default/ov6", 6), count=1, timeout=3)
        assert ping(cluster.pods[node.name]["netns"], cluster.address("n3", "default/ov4", 6), count=1, timeout=3)
    finally:
        drop_node(cluster, node)
