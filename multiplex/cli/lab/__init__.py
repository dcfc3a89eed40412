"""The lab: N nodes on one underlay, a node daemon on each, pods attached through it. No cluster.

`multiplex lab --nodes N --pods M` (the README's first command, through scripts/lab.sh):
1. the underlay (a bridge in netns `mpxlab-underlay`, MTU 1400) and N node netns on it
   (topology.py), the shared object directory and each node's NADs (cluster.py: why each node has
   its own NAD directory, standing in for the cluster IPAM's per-node blocks);
2. one `multiplex daemon` per node, in its netns, reading that directory, with the node-registry,
   vxlan-peers, bgp (a BIRD per node) and policy controllers (daemons.py); the lab waits for each
   socket and /readyz, then for each node registry's facts in `nodes/<name>.json`;
3. prints the nodes table and the underlay ping matrix, ADDs every pod by exec'ing the node's shim
   in the node's netns (as the runtime does), waits for BGP (every session Established, every
   block learned: bgp.py), CHECKs the pods, prints the BGP table, the pods table (with MTU) and a
   ping matrix per network: `routed` (eth0, bgp-routed) and `default/overlay` (net1,
   vxlan-overlay) across every node, the bridges per node (report.py);
4. writes a MultiNetworkPolicy for the overlay (clients may reach servers on TCP 8080, nothing
   else may) and prints the allowed/denied matrix once the daemons enforce it (policy.py);
5. DELs every pod, stops the daemons by their pids (each stops its BIRD; a BIRD left by a killed
   daemon is stopped by its own pid), deletes every netns and file, unless --keep (then
   `multiplex lab --down` does it). Ctrl-C, SIGTERM or a failure anywhere still cleans up.

The last line gives the time of each phase. Addresses come from 198.18.0.0/15 and fd00::/8 only;
nothing leaves the lab's namespaces and nothing is changed in the root netns.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import bgp, cluster, daemons, policy, report, topology
from .cluster import CLUSTER, MAX_NODES, STATE
from .topology import OUTSIDE_ADDR, UNDERLAY_NS, UPLINK, Node, Pod, sh

__all__ = ["run_lab", "teardown_lab"]

FACTS_TIMEOUT = 30.0


class Phases:
    """Seconds per phase, for the last line (where a slow lab spends its time)."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self._t = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, now - self._t))
        self._t = now

    def line(self) -> str:
        return ", ".join(f"{n} {t:.1f}" for n, t in self.times)


def run_lab(pods: int = 3, keep: bool = False, nodes: int = 3) -> int:
    if os.geteuid() != 0:
        print("the lab needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if not 1 <= nodes <= MAX_NODES or pods < 1:
        print(f"the lab runs 1 to {MAX_NODES} nodes (the overlay's per-node ranges) and at least 1 pod per node",
              file=sys.stderr)
        return 2
    if not shutil.which("bird"):
        print("the lab's routed network needs BIRD 2 (`bird`): run scripts/setup.sh (Debian package bird2)",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    phases = Phases()
    teardown_lab(quiet=True)          # what a crashed lab left
    ipvlan = topology.kernel_has_ipvlan()
    lab_nodes = [Node(i) for i in range(1, nodes + 1)]
    lab_pods = [p for n in lab_nodes for p in n.pods(pods)]
    added: list[Pod] = []
    closers: list = []
    ok = True
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _build(lab_nodes, lab_pods, ipvlan)
        phases.done("build")
        _start_daemons(lab_nodes)
        phases.done("daemons")
        facts_ok, underlay_ok = _show_nodes(lab_nodes)
        phases.done("facts")
        _add_pods(lab_nodes, lab_pods, added)
        phases.done("ADD")
        bgp_ok = _show_bgp(lab_nodes)
        phases.done("BGP")
        ok = _show_pods(lab_nodes, lab_pods, ipvlan, underlay_ok) and facts_ok and bgp_ok
        phases.done("CHECK+pings")
        ok = _show_policy(lab_pods, closers) and ok
        phases.done("policy")
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{f' ({e})' if str(e) else ''}: removing the lab", file=sys.stderr)
        ok, keep = False, False
    except Exception as e:  # the lab is a demo: report, then clean up
        print(f"lab failed: {e}", file=sys.stderr)
        ok, keep = False, False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if keep:
            n1, p1 = lab_nodes[0], lab_pods[0]
            print(f"\nThe lab stays up (--keep); files and logs in {STATE}. Try:\n"
                  f"  ip netns exec {p1.netns} ip addr\n"
                  f"  ip netns exec {n1.netns} {daemons.multiplex_bin()} inspect default/{p1.name} --state-dir {STATE}/{n1.name}/state\n"
                  f"  ip netns exec {n1.netns} {daemons.multiplex_bin()} bgp status --state-dir {STATE}/{n1.name}/state\n"
                  f"  ip netns exec {n1.netns} {daemons.multiplex_bin()} policy show default/{p1.name} --state-dir {STATE}/{n1.name}/state\n"
                  f"  ip netns exec {n1.netns} curl -s 127.0.0.1:{daemons.METRICS_PORT}/metrics   "
                  f"(the node daemon's metrics)\n"
                  f"Remove it with: multiplex lab --down  (the TCP listeners of the policy matrix closed with this command)")
            policy.close(closers)
        else:
            policy.close(closers)
            deleted = _delete_pods(lab_nodes, added)
            removed = teardown_lab(quiet=True)
            phases.done("DEL+removal")
            print(f"\n{'DEL done for every pod' if deleted else 'DEL FAILED for some pods (above)'}; "
                  f"{'daemons and BIRDs stopped, lab removed' if removed else 'REMOVAL INCOMPLETE (above)'} "
                  f"({time.monotonic() - started:.1f} s in all).\nseconds per phase: {phases.line()}")
            ok = ok and deleted and removed
    return 0 if ok else 1


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP clean up as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _build(nodes: list[Node], pods: list[Pod], ipvlan: bool) -> None:
    cluster.write_cluster(nodes, pods, ipvlan)
    topology.make_underlay()
    for node in nodes:
        topology.make_node(node)
        if ipvlan:
            topology.make_outside_host(node)
    for pod in pods:
        topology.make_pod_netns(pod)


def _start_daemons(nodes: list[Node]) -> None:
    running = [daemons.start(n) for n in nodes]
    daemons.wait_ready(running)
    print(f"lab: {len(nodes)} node{'s' if len(nodes) > 1 else ''} on the underlay {UNDERLAY_NS} (bridge "
          f"{topology.UNDERLAY_BRIDGE}, MTU {topology.UNDERLAY_MTU});\n"
          f"     objects in {CLUSTER}, node files in {STATE}/<node>")
    print("daemons: " + ", ".join(f"{d.node.name} pid {d.proc.pid} ready in {d.ready_after:.1f} s"
                                  for d in running))


def _show_nodes(nodes: list[Node]) -> tuple[bool, bool]:
    """The nodes as their registries published them, then the underlay ping matrix; returns
    (every fact published, every underlay ping ok)."""
    deadline = time.monotonic() + FACTS_TIMEOUT
    while True:
        objects = {n.name: cluster.read_node_object(n) for n in nodes}
        lines, missing = report.nodes_table(nodes, objects)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print("\nnodes (as each node's registry published them in nodes/<name>.json):")
    print("\n".join("  " + l for l in lines))
    for m in missing:
        print(f"  MISSING after {FACTS_TIMEOUT:.0f} s: {m}; see {STATE}/<node>/daemon.log")
    lines, ok = report.underlay_matrix(nodes)
    print("\n" + "\n".join(lines))
    return not missing, ok


def _add_pods(nodes: list[Node], pods: list[Pod], added: list[Pod]) -> None:
    """ADD through each node's shim; the nodes in parallel, a node's pods one after another."""
    def add_on(node: Node) -> list[float]:
        timings = []
        for pod in (p for p in pods if p.node == node.name):
            if stop.is_set():    # interrupted: the main thread is already cleaning up
                break
            t = time.monotonic()
            added.append(pod)   # before the call: a half-done ADD is DELed too
            daemons.cni("ADD", pod, node)
            timings.append(time.monotonic() - t)
        return timings

    stop = threading.Event()
    t = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=len(nodes))
    try:
        results = list(pool.map(add_on, nodes))
    except BaseException:
        stop.set()              # interrupted or failed: the other nodes add no more pods
        raise
    finally:
        pool.shutdown(wait=True)
    each = sorted(x for r in results for x in r)
    print(f"\nADD through each node's shim and daemon: {len(pods)} pods in {time.monotonic() - t:.1f} s "
          f"(the nodes at once; a pod {each[0]:.1f} to {each[-1]:.1f} s)")


def _show_bgp(nodes: list[Node]) -> bool:
    """Wait for the routed network's BGP to converge; print each node's blocks, sessions, routes."""
    status, converged, waited = bgp.wait_converged(nodes)
    print(f"\nBGP of network routed (full mesh, AS 64512; {'converged' if converged else 'NOT CONVERGED'} "
          f"{waited:.1f} s after the ADDs):")
    print("\n".join("  " + l for l in report.bgp_table(nodes, status)))
    for name, st in status.items():
        if st["error"] or not converged:
            print(f"  {name}: {st['error'] or 'sessions or routes missing'}; see {STATE}/{name}/state/bgp/bird.log")
    return converged


def _show_pods(nodes: list[Node], pods: list[Pod], ipvlan: bool, underlay_ok: bool) -> bool:
    """CHECK every pod, then the pods table and the ping matrices; True when every ping passed."""
    by_name = {n.name: n for n in nodes}

    def check_on(node: Node) -> None:       # the nodes at once, a node's pods in turn (as ADD)
        for pod in (p for p in pods if p.node == node.name):
            _read_interfaces(pod)
            cluster.read_network_status(pod)
            daemons.cni("CHECK", pod, by_name[pod.node])

    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        list(pool.map(check_on, nodes))
    print("\nCHECK passed for every pod (through the shim).\n")
    print("pods (eth0: routed, across nodes; net1: default/overlay, VXLAN across nodes, MTU = underlay - 50;\n"
          "the bridges are node-local: the same addresses may appear on several nodes):")
    print("\n".join("  " + l for l in report.pods_table(pods)))
    lines, ok = report.pod_matrices(pods)
    print("\n".join(lines))
    if ipvlan:
        ok &= _outside_pings(nodes, pods)
    ok &= underlay_ok
    print("\nall pings ok (underlay and pods)" if ok else "\nSOME PINGS FAILED")
    print(_ipvlan_note(ipvlan))
    return ok


def _show_policy(pods: list[Pod], closers: list) -> bool:
    """Servers listening on TCP 8080, the policy written, then the allowed/denied matrix."""
    sources, servers = policy.members(pods)
    if not servers or len(sources) < 2:
        print("\npolicy: no server and client pods on the overlay (--pods 2 or more shows the policy matrix)")
        return True
    closers.extend(policy.serve(servers))
    cluster.write_policy()
    got, waited, no_table = policy.wait_for_policy(sources, servers)
    lines, ok = report.policy_matrix(sources, servers, got, policy.expected)
    print(f"\npolicy matrix, TCP {cluster.POLICY_PORT} over {cluster.POLICY_NETWORK}, IPv4 and IPv6 "
          f"(row connects to column):")
    print("\n".join(lines))
    print(f"MultiNetworkPolicy default/{cluster.POLICY_NAME}: only role=client may reach role=server on TCP "
          f"{cluster.POLICY_PORT};\n" +
          (f"written after the pings, enforced on every server {waited:.1f} s later." if ok and not no_table else
           f"POLICY MATRIX DIFFERS from the policy (cells marked !) {waited:.1f} s after it was written."
           if not ok else f"POLICY NOT APPLIED: no table {' '.join(policy.TABLE)} in {', '.join(no_table)} "
           f"after {waited:.1f} s."))
    return ok and not no_table


def _read_interfaces(pod: Pod) -> None:
    for link in json.loads(sh("ip", "-n", pod.netns, "-j", "addr", "show").stdout):
        if link["ifname"] != "lo":
            pod.interfaces[link["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                                              if a.get("scope") == "global"]
            pod.mtus[link["ifname"]] = link.get("mtu", 0)


def _outside_pings(nodes: list[Node], pods: list[Pod]) -> bool:
    """Pods on the ipvlan network reach their node's outside host."""
    members = [p for p in pods if "default/wire" in p.networks]
    got = report.ping_all([(p.netns, OUTSIDE_ADDR) for p in members])
    print(f"\nping each node's outside host ({OUTSIDE_ADDR}) over default/wire:")
    for p in members:
        print(f"  {p.node:<4}{p.name:<10}{'ok' if got[(p.netns, OUTSIDE_ADDR)] else 'FAIL'}")
    return all(got.values())


def _ipvlan_note(ipvlan: bool) -> str:
    if ipvlan:
        return (f"ipvlan: this kernel has ipvlan; network default/wire is multiplex-ipvlan (l2) on each node's\n"
                f"uplink {UPLINK}, whose other end is a host outside the node ({OUTSIDE_ADDR}).")
    return ("ipvlan: this kernel has no ipvlan support, so the lab shows no ipvlan network here\n"
            "(the test suite runs the ipvlan delegate in its VM tier, tests/vm).")


def _delete_pods(nodes: list[Node], added: list[Pod]) -> bool:
    """DEL through each node's shim, the nodes at once, a node's pods in reverse order of ADD."""
    by_name = {n.name: n for n in nodes}

    def delete_on(node: Node) -> bool:
        ok = True
        for pod in (p for p in reversed(added) if p.node == node.name):
            try:
                daemons.cni("DEL", pod, node)
            except Exception as e:
                print(f"DEL {pod.name}: {e}", file=sys.stderr)
                ok = False
        return ok

    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return all(list(pool.map(delete_on, [by_name[n] for n in dict.fromkeys(p.node for p in added)] or nodes)))


def teardown_lab(quiet: bool = False) -> bool:
    """Stop the daemons by their recorded pids (and any BIRD a killed daemon left, by its pid),
    delete every mpxlab netns, remove the files. True when nothing is left."""
    stuck = daemons.stop_all()
    topology.delete_netns()
    if stuck:   # keep the pid files, so the next `multiplex lab --down` tries again
        print(f"lab: daemon or BIRD pid(s) {', '.join(map(str, stuck))} would not stop; {STATE} kept", file=sys.stderr)
    else:
        shutil.rmtree(STATE, ignore_errors=True)
    left = topology.lab_netns()
    if left:
        print(f"lab: could not delete netns {', '.join(left)}", file=sys.stderr)
    if not quiet:
        print("lab removed")
    return not stuck and not left
