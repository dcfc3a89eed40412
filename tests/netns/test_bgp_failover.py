"""bgp-routed failover as an admin and a user see it, on the clusters of test_bgp_routed_cluster.py
(netns nodes on one L2 underlay, a node daemon per node running its BIRD):

- a node *dies* (its underlay bridge port goes down, in the underlay netns: no TCP close, no
  BFD AdminDown, only silence): the time until its block leaves another node's kernel, with BFD
  and without it (then the hold time decides: a short one here, `timers.holdTime`, so the test
  stays fast), printed side by side with BIRD's default hold time; BIRD's own reason is checked
  (BFD session down / hold timer expired); the link comes back, and so do the routes and pings;
- the node daemon restarted as an admin would (SIGTERM, a new daemon process) while pods on two
  nodes ping each other every 100 ms: BIRD stopped for a graceful restart, started again with
  `bird -R`, no ping lost beyond one interval (the count printed);
- a 4th node joins a running cluster: the time until its block is in every node's kernel and
  theirs in its kernel, printed; a pod on it pings a pod on node 1.
Figures are printed, never asserted. Everything made is removed by the fixtures' finalizers.
"""
from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from multiplex.bgp import bird as birdmod
from multiplex.bgp import settings
from tests.netns.test_bgp_routed_cluster import (add_node, attach, bgp_status, bird_routes, start_cluster,
                                                 start_daemon, wait_for)
from tests.cnitool import nsexec, ping

pytestmark = [pytest.mark.root, pytest.mark.k8s]

HOLD, KEEPALIVE = 6, 2          # the no-BFD cluster's timers: the hold timer decides, kept short for CI
BFD = {"enabled": True, "intervalMs": 100, "multiplier": 3}


def block_of(address: str) -> str:
    a = ipaddress.ip_interface(address).ip
    return str(ipaddress.ip_network(f"{a}/{26 if a.version == 4 else 122}", strict=False))


def with_pods(c: dict, netns_factory, which: tuple) -> dict:
    """Pods on the nodes `which` (1-based): {i: (pod netns, [addresses], [blocks])}."""
    out = {}
    for i in which:
        pod, res = attach(c, netns_factory, i)
        addrs = [str(ipaddress.ip_interface(ip["address"]).ip) for ip in res["ips"]]
        out[i] = (pod, addrs, [block_of(ip["address"]) for ip in res["ips"]])
    return out


def has_route(ns: str, block: str) -> bool:
    return block in bird_routes(ns, "-6" if ":" in block else "-4")


def everywhere(c: dict, pods: dict) -> bool:
    """Every pod's blocks (both families) in every other node's kernel, `proto bird`."""
    return all(has_route(c["nodes"][j - 1], b) for i, (_, _, blocks) in pods.items() for b in blocks
               for j in range(1, len(c["nodes"]) + 1) if j != i)


def bird_socket(c: dict, i: int) -> str:
    return str(c["tmp"] / f"n{i}" / "state" / "bgp" / birdmod.SOCK)


def last_error(c: dict, i: int, peer: str) -> str:
    """BIRD's `Last error` of node i's session to node `peer` (why it went down)."""
    name = "node_" + "".join(ch if ch.isalnum() else "_" for ch in peer)
    text = birdmod.command(bird_socket(c, i), f"show protocols all {name}").text
    m = re.search(r"Last error:\s*(.*)", text)
    return m.group(1).strip() if m else ""


def set_port(c: dict, i: int, state: str) -> None:
    """Node i's port on the underlay bridge, in the underlay netns (the node's own netns untouched)."""
    nsexec(c["ul"], "ip", "link", "set", f"to{i}", state)


def test_a_dead_node_is_withdrawn_with_and_without_bfd(netns_factory, tmp_path, request):
    """Two clusters side by side, node 3 of each dies at the same moment (its bridge port down)."""
    cases = {"BFD 100 ms x 3": {"bfd": BFD},
             f"no BFD, hold {HOLD} s": {"timers": {"holdTime": HOLD, "keepaliveTime": KEEPALIVE}}}
    clusters, pods = {}, {}
    for k, (label, bgp) in enumerate(cases.items()):
        root = tmp_path / f"c{k}"
        root.mkdir()
        clusters[label] = start_cluster(netns_factory, root, request, rogue_peer=False, bgp=bgp)
        pods[label] = with_pods(clusters[label], netns_factory, (1, 3))
    for label, c in clusters.items():
        wait_for(f"{label}: every block everywhere", lambda c=c, label=label: everywhere(c, pods[label]))

    t0 = time.monotonic()
    for c in clusters.values():
        set_port(c, 3, "down")
    gone: dict[str, float] = {}
    while len(gone) < len(clusters) and time.monotonic() - t0 < HOLD * 3 + 10:
        for label, c in clusters.items():
            if label not in gone and not has_route(c["nodes"][0], pods[label][3][2][0]):
                gone[label] = time.monotonic() - t0
        time.sleep(0.01)
    assert set(gone) == set(clusters), f"node 3's block still on node 1 after {HOLD * 3 + 10} s: {gone}"
    for label, c in clusters.items():
        assert not has_route(c["nodes"][0], pods[label][3][2][1]), f"{label}: node 3's IPv6 block kept"
        assert has_route(c["nodes"][1], pods[label][1][2][0]), f"{label}: node 1's block left node 2"
        reason = last_error(c, 1, c["nodes"][2]).lower()
        assert ("bfd session down" if "BFD" in label and "no BFD" not in label else "hold timer expired") in reason, \
            f"{label}: node 1's session to node 3 went down for {reason!r}"
    print(f"\ndead node (underlay port down): its block left node 1's kernel after "
          + ", ".join(f"{gone[label]:.2f} s ({label})" for label in clusters)
          + f"; BIRD's (and Calico's) default hold time: {settings.DEFAULT_HOLD_TIME} s")

    t0 = time.monotonic()
    for c in clusters.values():
        set_port(c, 3, "up")
    for label, c in clusters.items():
        wait_for(f"{label}: node 3's blocks back everywhere", lambda c=c, label=label: everywhere(c, pods[label]),
                 timeout=60)
        back = time.monotonic() - t0
        for a in pods[label][3][1]:
            assert ping(pods[label][1][0], a), f"{label}: {a} on node 3 unreachable after the link came back"
        print(f"link back: node 3's blocks everywhere again after {back:.2f} s ({label})")


def pinger(pod: str, address: str) -> subprocess.Popen:
    """`ping -i 0.1` from `pod` until SIGINT (then it prints its summary)."""
    flag = "-6" if ":" in address else "-4"
    return subprocess.Popen(["ip", "netns", "exec", pod, "ping", flag, "-n", "-i", "0.1", "-W", "1", address],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def ping_summary(proc: subprocess.Popen) -> tuple[int, int]:
    """(sent, received) after SIGINT to the ping's own pid."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_a_daemon_restart_loses_no_ping(netns_factory, tmp_path, request):
    """Node 2's daemon restarted (SIGTERM, a new process) under pings both ways, 100 ms apart."""
    c = start_cluster(netns_factory, tmp_path, request, rogue_peer=False, bgp={})   # defaults: GR on, BFD off
    pods = with_pods(c, netns_factory, (1, 2))
    wait_for("every block everywhere", lambda: everywhere(c, pods))
    pings = {"node 1 -> node 2 (IPv4)": pinger(pods[1][0], pods[2][1][0]),
             "node 2 -> node 1 (IPv6)": pinger(pods[2][0], pods[1][1][1])}
    for p in pings.values():
        request.addfinalizer(lambda p=p: p.poll() is None and (p.kill(), p.wait()))
    time.sleep(1.0)

    bgp_dir = c["tmp"] / "n2" / "state" / "bgp"
    old_bird = int((bgp_dir / birdmod.PIDFILE).read_text())
    # sampled until recovery is done: node 2's own kernel keeps node 1's block (`persist`, then
    # recovery holds the kernel sync back until End-of-RIB), node 1 keeps node 2's (stale, GR)
    missing, sampling = [], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for who, ns, block in (("node 2 lost node 1's block", c["nodes"][1], pods[1][2][0]),
                                   ("node 1 lost node 2's block", c["nodes"][0], pods[2][2][0])):
                if not has_route(ns, block):
                    missing.append(f"{who} at {time.monotonic() - t0:.2f} s")
            time.sleep(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    request.addfinalizer(sampling.set)
    t0 = time.monotonic()
    sampler.start()
    assert c["daemons"][1].stop() == 0, c["daemons"][1].stderr()
    assert not birdmod._is_bird(old_bird) and (bgp_dir / birdmod.GR_MARKER).exists()
    assert "graceful restart" in (bgp_dir / birdmod.LOG).read_text().lower()
    # BIRD is down: node 1 keeps node 2's block (stale, graceful restart), node 2 keeps node 1's (persist)
    assert has_route(c["nodes"][0], pods[2][2][0]) and has_route(c["nodes"][1], pods[1][2][0])
    c["daemons"][1] = start_daemon(c, 2)
    new_bird = int((bgp_dir / birdmod.PIDFILE).read_text())
    assert "-R" in open(f"/proc/{new_bird}/cmdline").read().split("\0"), "BIRD not started in recovery"
    wait_for("the graceful restart marker removed (recovery done)", lambda: not (bgp_dir / birdmod.GR_MARKER).exists(),
             timeout=60)
    converged = time.monotonic() - t0
    sampling.set()
    sampler.join(5)
    assert not missing, missing
    wait_for("node 2's session Established", lambda: "Established" in bgp_status(c, 2).stdout, timeout=30)
    time.sleep(1.0)
    results = {label: ping_summary(p) for label, p in pings.items()}
    print(f"\nnode 2's daemon restarted (graceful restart, bird -R): recovery done {converged:.2f} s after "
          f"the SIGTERM; " + "; ".join(f"{label}: {sent - got} of {sent} pings lost" for label, (sent, got)
                                         in results.items()))
    for label, (sent, got) in results.items():
        assert sent - got <= 1, f"{label}: {sent - got} of {sent} pings lost across the restart"
    assert everywhere(c, pods)


def test_a_node_joins_a_running_cluster(netns_factory, tmp_path, request):
    c = start_cluster(netns_factory, tmp_path, request, rogue_peer=False)
    pods = with_pods(c, netns_factory, (1, 2, 3))
    wait_for("every block everywhere", lambda: everywhere(c, pods))
    n4 = add_node(netns_factory, c["ul"], 4)
    c["api"].store.add_node(n4)
    c["nodes"].append(n4)
    t0 = time.monotonic()
    c["daemons"].append(start_daemon(c, 4))
    ready = time.monotonic() - t0
    t_add = time.monotonic()
    pods.update(with_pods(c, netns_factory, (4,)))
    wait_for("node 4's blocks everywhere and everyone's on node 4", lambda: everywhere(c, pods), every=0.02)
    done = time.monotonic()
    assert ping(pods[4][0], pods[1][1][0]) and ping(pods[4][0], pods[1][1][1])
    assert ping(pods[1][0], pods[4][1][0])
    print(f"\nnode 4 joins: daemon ready {ready:.2f} s after its start; every block in every kernel "
          f"{done - t0:.2f} s after its start ({done - t_add:.2f} s after its first pod's ADD)")
