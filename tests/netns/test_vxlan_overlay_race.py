"""multiplex-vxlan-overlay, as root: the undo of a failed first ADD never removes the network's
bridge while a concurrent ADD of the same network is between finding it and putting its veth on
it (both hold the GC lock shared; the network's own lock orders them: delegates/vxlan_overlay.py
`network_lock`).

- the undo's removal (`remove_overlay_if_unused`) waits while another call holds the network's
  lock, and then keeps the bridge that call put a port on;
- an ADD (the plugin exec'd as a runtime would) makes nothing of the network while another call
  holds its lock, and attaches its pod once the lock is free.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from delegates.vxlan_overlay import OverlayConfig, network_lock, remove_overlay_if_unused
from multiplex.cni.context import CallContext
from multiplex.cni.request import Request
from tests.cnitool import NetnsPool
from tests.netns.vxlan_underlay import Underlay, cni, container_id, overlay_conf, sh

pytestmark = pytest.mark.root

NETWORK = f"race{os.getpid()}"
VNI = 4800 + os.getpid() % 100


def links(ns: str) -> dict[str, dict]:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"]: link for link in json.loads(out.stdout)}


@pytest.fixture
def pool():
    p = NetnsPool("mpx")
    try:
        yield p
    finally:
        p.close()


def request(state_dir: str) -> Request:
    return Request(command="ADD", container_id="c1", ifname="net1", ctx=CallContext(state_dir=state_dir))


def test_the_undo_of_a_failed_first_add_keeps_a_bridge_a_concurrent_add_is_putting_its_veth_on(pool, tmp_path):
    from multiplex import netlink

    ns = pool.make("vr")
    conf = OverlayConfig.parse(overlay_conf(NETWORK, VNI, [{"subnet": "198.18.84.0/24"}]))
    # what the failed first ADD made: the network's bridge with its VXLAN device, no pod port yet
    sh("ip", "-n", ns, "link", "add", conf.bridge, "type", "bridge")
    sh("ip", "-n", ns, "link", "add", conf.device, "type", "vxlan", "id", str(VNI), "dstport", "4789")
    sh("ip", "-n", ns, "link", "set", conf.device, "master", conf.bridge, "up")
    req = request(str(tmp_path))
    holding, undone = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def concurrent_add() -> None:
        """The second ADD: it has found the bridge and now puts its veth on it."""
        try:
            with network_lock(req, conf.network):
                holding.set()
                undone.wait(timeout=2.0)    # without the lock, the undo has run by now
                sh("ip", "-n", ns, "link", "add", "mpxrace0", "type", "veth", "peer", "name", "mpxrace1")
                sh("ip", "-n", ns, "link", "set", "mpxrace0", "master", conf.bridge, "up")
        except BaseException as e:  # noqa: BLE001 - reported by the test's thread below
            failures.append(e)

    def undo() -> None:
        try:
            with netlink.open_netns(f"/run/netns/{ns}") as node:
                remove_overlay_if_unused(req, node, conf)
        except BaseException as e:  # noqa: BLE001
            failures.append(e)
        finally:
            undone.set()

    adder = threading.Thread(target=concurrent_add)
    adder.start()
    assert holding.wait(timeout=30)
    undoer = threading.Thread(target=undo)
    undoer.start()
    adder.join(timeout=60)
    undoer.join(timeout=60)
    assert not failures, failures
    now = links(ns)
    assert conf.bridge in now and conf.device in now, sorted(now)
    assert now["mpxrace0"].get("master") == conf.bridge


def test_an_add_makes_nothing_of_its_network_while_another_call_holds_the_network_lock(pool, tmp_path):
    underlay = Underlay.build(pool.make, str(tmp_path), 1)
    node = underlay.nodes[0]
    nconf = overlay_conf(NETWORK, VNI, [{"subnet": "198.18.85.0/24"}], peers=["198.18.70.99"])
    conf = OverlayConfig.parse(nconf)
    pod, cid = pool.make("vp"), container_id()
    held = request(node.state_dir)
    outcome: list = []
    with network_lock(held, conf.network):
        adder = threading.Thread(target=lambda: outcome.append(cni(node, "ADD", nconf, cid, f"/run/netns/{pod}")))
        adder.start()
        adder.join(timeout=1.5)     # a slow machine only makes this check weaker, never wrong
        made = links(node.netns)
        assert conf.bridge not in made and conf.device not in made, sorted(made)
        assert not outcome, outcome
    adder.join(timeout=60)
    try:
        assert outcome and outcome[0].ok, outcome
        assert links(node.netns)[conf.device].get("master") == conf.bridge
        assert "net1" in links(pod)
    finally:
        cni(node, "DEL", nconf, cid, f"/run/netns/{pod}")
