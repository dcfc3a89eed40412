"""What the lab prints: the nodes table, the underlay ping matrix, the BGP table, the pods table, a
ping matrix per pod network and the policy's allowed/denied matrix.

A ping matrix is drawn per *group* of pods that should reach each other: for a node-local network
(the bridges) one group per node, drawn side by side; for a network that spans nodes
(cluster.NETWORK_SCOPE "cluster": routed, overlay) one group of the pods of every node, one wide
matrix, drawn first. Both families of a network share one matrix (cells `ok/ok`: IPv4/IPv6), so
the screen stays short. All pings of a screen run at once (a thread each), so a matrix costs about
one round trip, not one per cell.
"""
from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from .cluster import node_facts, scope
from .topology import UNDERLAY_IF, UNDERLAY_MTU, Node, Pod, ping

Table = list[tuple[str, ...]]
#: what gets pinged: (source netns, address) -> reached?
Pinger = Callable[[list[tuple[str, str]]], dict[tuple[str, str], bool]]


def ping_all(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    """Every (source netns, address) pinged at once."""
    unique = sorted(set(pairs))
    with ThreadPoolExecutor(max_workers=64) as pool:
        return dict(zip(unique, pool.map(lambda p: ping(*p), unique)))


def format_table(rows: Table) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def nodes_table(nodes: list[Node], objects: dict[str, Optional[dict]]) -> tuple[list[str], list[str]]:
    """The nodes as their registries published them; returns (lines, missing facts)."""
    rows: Table = [("NODE", "NETNS", "UNDERLAY", "IPv4", "IPv6", "MTU")]
    missing = []
    for node in nodes:
        obj = objects.get(node.name)
        facts = node_facts(obj)
        lacking = [key for key in ("interface", "ipv4", "ipv6", "mtu") if not facts.get(key)]
        if obj is None:
            missing.append(f"{node.name}: no nodes/{node.name}.json (its daemon's node registry wrote none)")
        elif "error" in facts:
            missing.append(f"{node.name}: {facts['error']}")
        elif lacking:
            missing.append(f"{node.name}: nodes/{node.name}.json publishes no {', '.join(lacking)}")
        rows.append((node.name, node.netns, facts.get("interface") or "?", facts.get("ipv4") or "?",
                     facts.get("ipv6") or "?", facts.get("mtu") or "?"))
    return format_table(rows), missing


def pods_table(pods: list[Pod]) -> list[str]:
    """One row per pod interface; a node, pod or role named once, on its first row."""
    rows: Table = [("NODE", "POD", "ROLE", "INTERFACE", "NETWORK", "MTU", "ADDRESSES")]
    last_node = ""
    for pod in pods:
        by_if = {v: k for k, v in pod.networks.items()}
        for k, (ifname, addrs) in enumerate(sorted(pod.interfaces.items(), key=lambda kv: (kv[0] != "eth0", kv[0]))):
            rows.append((pod.node if pod.node != last_node else "", pod.name if k == 0 else "",
                         (pod.role or "-") if k == 0 else "", ifname, by_if.get(ifname, "?"),
                         str(pod.mtus.get(ifname, "?")), ", ".join(addrs) or "-"))
            last_node = pod.node
    return format_table(rows)


def bgp_table(nodes: list[Node], status: dict[str, dict]) -> list[str]:
    """Per node: its blocks, its BGP sessions (peer and state, from its BIRD) and the routes BIRD
    put in its kernel. `status`: node name -> {"blocks": [...], "sessions": [...], "routes": [...]}."""
    rows: Table = [("NODE", "BIRD PID", "BLOCKS (announced)", "BGP SESSIONS", "ROUTES LEARNED")]
    for node in nodes:
        st = status.get(node.name) or {}
        sessions = ", ".join(f"{s['peer']} {s['state']}" for s in st.get("sessions", [])) or \
            ("none (one node)" if len(nodes) == 1 else "none")
        learned = [r for r in st.get("routes", []) if r.get("via")]
        rows.append((node.name, str(st.get("bird_pid") or "-"), ", ".join(st.get("blocks", [])), sessions,
                     f"{len(learned)} ({', '.join(sorted({r['peer'] for r in learned}))})" if learned else "0"))
    return format_table(rows)


def _matrix(title: str, labels: list[str], cell: Callable[[int, int], str]) -> list[str]:
    """Rows ping columns; the diagonal is '-'."""
    w = max(6, len(title), *(len(l) for l in labels)) + 2
    lines = [title.ljust(w) + "".join(l.ljust(w) for l in labels)]
    for i, src in enumerate(labels):
        lines.append(src.ljust(w) + "".join(("-" if i == j else cell(i, j)).ljust(w) for j in range(len(labels))))
    return ["  " + l.rstrip() for l in lines]


def side_by_side(blocks: list[list[str]], per_row: int = 3, gap: str = "   ") -> list[str]:
    """Matrices next to each other, `per_row` to a row of the screen."""
    out: list[str] = []
    for start in range(0, len(blocks), per_row):
        row = blocks[start:start + per_row]
        widths = [max(len(l) for l in b) for b in row]
        for k in range(max(len(b) for b in row)):
            out.append(gap.join((b[k] if k < len(b) else "").ljust(w) for b, w in zip(row, widths)).rstrip())
        out.append("")
    return out[:-1]


def underlay_matrix(nodes: list[Node], pinger: Pinger = ping_all) -> tuple[list[str], bool]:
    """Every node pings every other node's underlay address, IPv4 and IPv6."""
    pairs = [(a.netns, addr) for a in nodes for b in nodes if a is not b for addr in (b.underlay_v4, b.underlay_v6)]
    got = pinger(pairs)
    ok = all(got.values())

    def cell(i: int, j: int) -> str:
        res = [got[(nodes[i].netns, nodes[j].underlay_v4)], got[(nodes[i].netns, nodes[j].underlay_v6)]]
        return "/".join("ok" if r else "FAIL" for r in res)

    title = f"underlay ping matrix, IPv4/IPv6 over {UNDERLAY_IF} (MTU {UNDERLAY_MTU}; row pings column):"
    lines = [title] + _matrix("", [n.name for n in nodes], cell)
    if len(nodes) == 1:
        lines = [f"underlay: one node, nothing to ping across ({nodes[0].name} is alone on the underlay)."]
    return lines, ok


def _address(pod: Pod, network: str, family: int) -> Optional[str]:
    for a in pod.interfaces.get(pod.networks.get(network, ""), []):
        if ipaddress.ip_interface(a).version == family:
            return a.split("/")[0]
    return None


def pod_groups(pods: list[Pod], network: str) -> list[tuple[str, list[Pod]]]:
    """Who should reach whom on `network`: per node, or everyone (a network spanning nodes)."""
    members = [p for p in pods if network in p.networks]
    if scope(network) == "cluster":
        return [("all nodes", members)]
    nodes = sorted({p.node for p in members}, key=lambda n: int(n[1:]) if n[1:].isdigit() else 0)
    return [(f"node {n}", [p for p in members if p.node == n]) for n in nodes]


def _families(pods: list[Pod], network: str) -> list[int]:
    return [f for f in (4, 6) if any(_address(p, network, f) for p in pods)]


def pod_matrices(pods: list[Pod], pinger: Pinger = ping_all) -> tuple[list[str], bool]:
    """A ping matrix per network (both families in each cell); its groups side by side; the
    networks spanning nodes first."""
    plan = []   # (network, families, [(group title, [(pod, {family: address})])])
    networks = sorted({n for p in pods for n in p.networks}, key=lambda n: (scope(n) != "cluster", "/" in n, n))
    for network in networks:
        groups = []
        for title, members in pod_groups(pods, network):
            with_addr = [(p, a) for p in members
                         if (a := {f: addr for f in (4, 6) if (addr := _address(p, network, f))})]
            if len(with_addr) >= 2:
                groups.append((title, with_addr))
        if groups:
            plan.append((network, _families([p for _, m in groups for p, _ in m], network), groups))
    got = pinger([(src.netns, addr) for _, _, groups in plan for _, members in groups
                  for src, mine in members for dst, theirs in members if src is not dst
                  for f, addr in theirs.items() if f in mine])

    def cell(members: list, i: int, j: int) -> str:
        (src, mine), (_, theirs) = members[i], members[j]
        return "/".join("ok" if got[(src.netns, theirs[f])] else "FAIL" for f in (4, 6) if f in mine and f in theirs)

    lines: list[str] = []
    for network, families, groups in plan:
        where = "spans nodes" if scope(network) == "cluster" else "node-local: one bridge per node"
        fams = "/".join(f"IPv{f}" for f in families)
        lines += ["", f"ping matrix, network {network}, {fams} ({where}; row pings column):"]
        blocks = []
        for title, members in groups:
            short = [p.name.split("-", 1)[-1] if scope(network) == "node" else p.name for p, _ in members]
            corner = "" if scope(network) == "cluster" else title.replace("node ", "")
            blocks.append(_matrix(corner, short, lambda i, j, m=members: cell(m, i, j)))
        lines += side_by_side(blocks)
    return lines, all(got.values())


def policy_matrix(sources: list[Pod], servers: list[Pod], got: dict[tuple[str, str], dict[int, bool]],
                  expected: Callable[[Pod, Pod], bool]) -> tuple[list[str], bool]:
    """Rows connect to columns: `allowed` or `denied` (both families agree), a cell that differs
    from what the policy says marked `!`. `got`: (source netns, server name) -> family -> reached."""
    ok = True

    def cell(src: Pod, dst: Pod) -> str:
        nonlocal ok
        res = got.get((src.netns, dst.name), {})
        want = expected(src, dst)
        if res and all(v == want for v in res.values()):
            return "allowed" if want else "denied"
        ok = False
        if len(set(res.values())) > 1:
            return "/".join(f"{'yes' if res[f] else 'no'}" for f in sorted(res)) + "!"
        return ("allowed" if any(res.values()) else "denied") + "!"

    labels = [f"{p.name} {p.role or '-'}" for p in sources]
    w = max(len(l) for l in labels + ["denied!"]) + 2
    cw = max(9, *(len(p.name) + 2 for p in servers))
    lines = [("  " + "".ljust(w) + "".join(p.name.ljust(cw) for p in servers)).rstrip()]
    for src, label in zip(sources, labels):
        lines.append("  " + label.ljust(w) + "".join(("-" if src is dst else cell(src, dst)).ljust(cw)
                                                      for dst in servers).rstrip())
    return lines, ok
