"""The routed network's BGP, as the lab shows it: each node's sessions and learned routes.

Read the way `multiplex bgp status` reads them (multiplex.cli.bgp.sessions: BIRD's control socket,
a file the lab can reach from the root netns), and the kernel routes BIRD installed with
`ip -n <node netns> route show proto bird`: no Python process per node (under the VM tier's
emulation each one costs seconds). The lab waits until every node has a session Established
with every other node and a learned route to each other node's blocks before the routed
network's pings: BGP takes a moment (BIRD's first connect) that the pings should not race.
"""
from __future__ import annotations

import json
import time

from . import daemons
from .cluster import routed_ranges
from .topology import Node, sh

TIMEOUT = 30.0


def node_status(node: Node, nodes: list[Node]) -> dict:
    """{"blocks", "sessions": [{"peer", "state"}], "routes": [{"dst", "via", "peer"}], "error", "bird_pid"}."""
    from ..bgp import sessions
    from ...bgp.bird import BirdError

    by_addr = {n.underlay_v4: n.name for n in nodes} | {n.underlay_v6: n.name for n in nodes}
    out: dict = {"blocks": list(routed_ranges(node)), "sessions": [], "routes": [], "error": "",
                 "bird_pid": daemons.bird_pid(node)}
    try:
        for s in sessions(daemons.bird_socket(node)):
            peer = by_addr.get(s.get("neighbor", ""), s.get("description") or s.get("name", "?"))
            out["sessions"].append({"peer": peer, "state": s.get("bgpState") or s.get("state", "?")})
    except (BirdError, OSError) as e:
        out["error"] = str(e) or type(e).__name__
    for family in ("-4", "-6"):
        r = sh("ip", "-n", node.netns, family, "-j", "route", "show", "proto", "bird", check=False)
        for route in json.loads(r.stdout or "[]") if r.returncode == 0 else []:
            via = route.get("gateway", "")
            out["routes"].append({"dst": route.get("dst", ""), "via": via, "peer": by_addr.get(via, via)})
    return out


def converged(nodes: list[Node], status: dict[str, dict]) -> bool:
    """Every node: a session Established with every other node, and a route via each of them per family."""
    others = len(nodes) - 1
    for node in nodes:
        st = status[node.name]
        up = [s for s in st["sessions"] if s["state"] == "Established"]
        learned = [r for r in st["routes"] if r["via"]]
        if len(up) < others or len(learned) < 2 * others:
            return False
    return True


def wait_converged(nodes: list[Node], timeout: float = TIMEOUT) -> tuple[dict[str, dict], bool, float]:
    """(status per node, converged, seconds waited)."""
    started = time.monotonic()
    while True:
        status = {n.name: node_status(n, nodes) for n in nodes}
        if converged(nodes, status):
            return status, True, time.monotonic() - started
        if time.monotonic() - started > timeout:
            return status, False, time.monotonic() - started
        time.sleep(0.2)
