"""multiplex-vxlan-overlay with `encrypt: wireguard` on a kernel that has WireGuard (the VM tier:
this machine's kernel has none; Debian's has the module).

Two nodes (netns) on an underlay switch of MTU 1400. Each node's node registry and vxlan-peers
controller run in this process (a Runner per node over the shared local directory, each
controller on its node's netns): a daemon process per node would cost a fresh interpreter each,
about 20 s under emulation. Pods are attached by the delegate as a runtime would (a warm fork, in
the node's netns), and their network-status written as multiplex would.

What a user checks: the pods ping across nodes; their MTU is 1400 - 60 (WireGuard) - 50 (VXLAN) =
1290; the underlay switch counts WireGuard's UDP and not one plain VXLAN packet; the private key
is 0600 in the state dir and only the public key is in the node facts; after `rotate_key` the peer
holds the new public key and the pods still ping (the lost pings printed).
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.cnitool import NetnsPool, ping
from tests.netns import vxlan_underlay
from tests.netns.vxlan_underlay import Underlay, fdb, link_mtu, vxlan_links
from tests.vm.cnifork import run_cni

pytestmark = [pytest.mark.root, pytest.mark.vm]

WAIT = 120.0     # under emulation


def wait_for(what: str, fn, timeout: float = WAIT) -> float:
    return vxlan_underlay.wait_for(what, fn, timeout, every=0.2)


def conf(index: int) -> dict:
    return {"cniVersion": "1.1.0", "name": "default.sec", "type": "multiplex-vxlan-overlay", "vni": 7100,
            "encrypt": "wireguard",
            "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.84.0/24",
                                                             "rangeStart": f"198.18.84.{index * 16 + 1}",
                                                             "rangeEnd": f"198.18.84.{index * 16 + 14}"}]]}}


def write_blocks(directory: str, node: str, index: int) -> None:
    """Node `index`'s range as an IPBlock (198.18.84.16i/28): the vxlan-peers controller programs a
    pod's address only when the IPAM vouches for it, here a block of the pod's node."""
    path = os.path.join(directory, "ipblocks", f"{node}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"items": [{"apiVersion": "ipam.multiplex.dev/v1alpha1", "kind": "IPBlock",
                              "metadata": {"name": f"{node}-sec"},
                              "spec": {"cidr": f"198.18.84.{index * 16}/28", "node": node, "pool": "sec"}}]}, f)


def write_pod(directory: str, name: str, node: str, result: dict) -> None:
    """The pod object with the network-status multiplex writes after ADD."""
    pod_if = next(i for i in result["interfaces"] if i.get("sandbox"))
    status = [{"name": "default/sec", "interface": "net1", "mac": pod_if["mac"],
               "ips": [ip["address"].split("/")[0] for ip in result["ips"]]}]
    path = os.path.join(directory, "pods", f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "default",
                                "annotations": {"k8s.v1.cni.cncf.io/network-status": json.dumps(status)}},
                   "spec": {"nodeName": node}}, f)
    os.rename(path + ".tmp", path)


@pytest.fixture
def nodes(tmp_path):
    """Two nodes with their controllers running; yields (underlay, pods: node name -> (netns, result))."""
    from multiplex.controllers.node_registry import NodeRegistry
    from multiplex.controllers.bgp import register_kinds
    from multiplex.controllers.vxlan_peers import VxlanPeers, register_pods_kind
    from multiplex.daemon.controller import DaemonContext, Runner
    from multiplex.k8s.objects import LocalObjects

    subprocess.run(["modprobe", "wireguard"], capture_output=True)
    pool = NetnsPool("mpx")
    runners, made = [], []
    objects_dir = str(tmp_path / "cluster")
    os.makedirs(os.path.join(objects_dir, "pods"))
    try:
        ul = Underlay.build(pool.make, str(tmp_path), 2)
        pods = {}
        for node in ul.nodes:
            ns, cid = pool.make("vp"), os.urandom(16).hex()
            out = run_cni("multiplex-vxlan-overlay", "ADD", conf(node.index), node=node.netns, container_id=cid,
                          netns=ns, ifname="net1", extra_env={"MULTIPLEX_STATE_DIR": node.state_dir})
            assert out.ok, f"{out.out} {out.stderr[-2000:]}"
            made.append((node, cid, ns))
            pods[node.name] = (ns, out.out)
            write_pod(objects_dir, f"{node.name}-pod", node.name, out.out)
            write_blocks(objects_dir, node.name, node.index)
        for node in ul.nodes:
            objects = LocalObjects(objects_dir, interval=0.2)
            register_pods_kind(objects)
            register_kinds(objects)
            path = f"/var/run/netns/{node.netns}"
            reg = NodeRegistry(node.name, netns=path)
            peers = VxlanPeers(node.name, netns=path, state_dir=node.state_dir)
            peers.resync = 1.0
            ctx = DaemonContext(node_name=node.name, objects=objects, state_dir=node.state_dir,
                                controllers={"node-registry": reg, "vxlan-peers": peers})
            runner = Runner(ctx, [reg, peers])
            runners.append(runner)
            runner.start()
        yield ul, pods, objects_dir
    finally:
        for runner in runners:
            runner.stop(10)
            runner.daemon.objects.stop()
        for node, cid, ns in made:
            run_cni("multiplex-vxlan-overlay", "DEL", conf(node.index), node=node.netns, container_id=cid, netns=ns,
                    ifname="net1", extra_env={"MULTIPLEX_STATE_DIR": node.state_dir})
        pool.close()


def wg_peers(node) -> dict:
    from multiplex.netlink import wireguard

    return wireguard.peers(f"/var/run/netns/{node.netns}")


def node_facts(objects_dir: str, name: str) -> dict:
    try:
        with open(os.path.join(objects_dir, "nodes", f"{name}.json")) as f:
            return json.loads(json.load(f)["metadata"]["annotations"]["multiplex.dev/node-facts"])
    except (OSError, KeyError, ValueError):
        return {}


def test_encrypted_overlay_pods_ping_and_the_underlay_carries_only_wireguard(nodes):
    from multiplex.netlink import wireguard

    ul, pods, objects_dir = nodes
    n1, n2 = ul.nodes

    def ready() -> bool:
        for a, b in ((n1, n2), (n2, n1)):
            if not any(p.address == b.v4 for p in wg_peers(a).values()):
                return False
            dev = next(iter(vxlan_links(a.netns)))
            if (pods[b.name][1]["interfaces"][2]["mac"], b.v4) not in fdb(a.netns, dev):
                return False
        return True

    wait_for("WireGuard peers and FDB programmed on both nodes", ready)
    ns1, r1 = pods["n1"]
    ns2, r2 = pods["n2"]
    assert link_mtu(ns1, "net1") == 1290 and r1["interfaces"][2]["mtu"] == 1290
    ul.count_udp(4789, also=(wireguard.LISTEN_PORT,))
    addr2 = r2["ips"][0]["address"].split("/")[0]
    addr1 = r1["ips"][0]["address"].split("/")[0]
    assert ping(ns1, addr2, count=3, timeout=10), "pod on n1 cannot reach n2's over the encrypted overlay"
    assert ping(ns2, addr1, count=3, timeout=10)
    counts = ul.udp_packets()
    assert counts[f"port-{wireguard.LISTEN_PORT}"] >= 6, counts
    assert counts["all"] == 0, f"plain VXLAN crossed the underlay: {counts}"

    # the key: private in the state dir (0600), public in the node facts
    path = wireguard.key_path(n1.state_dir)
    assert os.stat(path).st_mode & 0o777 == 0o600
    private = wireguard.read_key(n1.state_dir)
    facts = node_facts(objects_dir, "n1")
    assert facts["facts"]["wireguard"]["publicKey"] == wireguard.public_key(private)
    assert private not in json.dumps(facts)

    # rotation: the peer takes the new public key; the pods keep reaching each other
    pinger = subprocess.Popen(["ip", "netns", "exec", ns1, "ping", "-i", "0.2", "-W", "1", "-c", "40", addr2],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)
    new = wireguard.rotate_key(n1.state_dir)
    wait_for("n2 holds n1's rotated public key", lambda: new in wg_peers(n2))
    out, _ = pinger.communicate(timeout=300)
    print("ping every 0.2 s during the rotation:", out.strip().splitlines()[-2])
    assert ping(ns1, addr2, count=2, timeout=10) and ping(ns2, addr1, count=2, timeout=10)
    assert node_facts(objects_dir, "n1")["facts"]["wireguard"]["publicKey"] == new
