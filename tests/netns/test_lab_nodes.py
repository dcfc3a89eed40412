"""`multiplex lab --nodes N`: nodes on one underlay, a node daemon on each, pods attached through it.

Run as a user runs it (the console script, as root), and checked on what the user reads: the nodes
table with each node's underlay addresses (published by the node's registry), the underlay ping
matrix, the BGP table (every session Established, every other node's blocks learned), every pod
with its addresses and MTUs (eth0 in its node's routed block, net1 in its node's part of the
overlay at MTU 1350), every ping matrix cell ok (routed and overlay across all nodes, the bridges
per node), the policy matrix exactly what the policy says, CHECK and DEL done; and, once it has
ended, nothing left: no `mpxlab-` netns, no daemon or BIRD alive among the pids the lab printed (nor
any process of the lab's files), the root netns's nftables untouched, no files under /run/mpxlab.
Also --nodes 1 with --keep (the lab really up: daemon in the node's netns, addresses in the pod
netns) then a daemon killed as in a crash (its BIRD stays) and --down (the BIRD stopped by its
pid), and a Ctrl-C (or SIGTERM) in the middle of a run.
"""
from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.cnitool import ip_json

root = pytest.mark.root

MULTIPLEX = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "multiplex")
STATE = "/run/mpxlab"
TIMEOUT = 600


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}


def lab_processes() -> list[int]:
    """Live processes whose command line names the lab's files (daemons, BIRDs), any we missed."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(a.startswith(STATE.encode()) for a in argv) and is_alive(int(entry)):
                found.append(int(entry))
    return found


def is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def is_bird(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0]) == b"bird" and is_alive(pid)
    except OSError:
        return False


def root_nft() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout


def lab_netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [l.split()[0] for l in out.splitlines() if l.startswith("mpxlab-")]


def is_daemon(pid: int) -> bool:
    """pid is alive (not a zombie) and is a `multiplex daemon`."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"daemon" in argv


def daemon_pids(out: str) -> dict[str, int]:
    """The pids the lab printed: `daemons: n1 pid 123 ready in 0.8 s, n2 pid ...`."""
    return {node: int(pid) for node, pid in re.findall(r"\b(n\d+) pid (\d+) ready", out)}


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    netns_after: list[str]
    files_after: bool
    processes_after: list[int]
    nft_before: str = ""
    nft_after: str = ""

    @property
    def out(self) -> str:
        return self.proc.stdout


def run_lab(*args: str) -> Run:
    before = root_nft()
    proc = subprocess.run([MULTIPLEX, "lab", *args], capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    return Run(proc, lab_netns(), os.path.exists(STATE), lab_processes(), before, root_nft())


def down() -> None:
    subprocess.run([MULTIPLEX, "lab", "--down"], capture_output=True, env=_env(), timeout=120)


@pytest.fixture(scope="module")
def three_nodes():
    try:
        yield run_lab("--nodes", "3")
    finally:
        down()


def nodes_table(out: str) -> dict[str, tuple[str, str, str]]:
    """NODE -> (IPv4, IPv6, MTU) from the nodes table."""
    rows = re.findall(r"^\s+(n\d+)\s+mpxlab-n\d+\s+underlay0\s+(\S+)\s+(\S+)\s+(\S+)\s*$", out, re.M)
    return {n: (v4, v6, mtu) for n, v4, v6, mtu in rows}


@dataclass
class Iface:
    network: str
    mtu: str
    addrs: list[str]


def pods_table(out: str) -> dict[tuple[str, str], dict[str, Iface]]:
    """(node, pod) -> interface -> Iface, from the pods table (node, pod, role on their first row)."""
    header = "  NODE  POD" + out.split("\n  NODE  POD", 1)[1].splitlines()[0]
    lines = out.split(header, 1)[1].split("\n\n", 1)[0].strip("\n").splitlines()
    cols = [header.index(c) for c in ("NODE", "POD", "ROLE", "INTERFACE", "NETWORK", "MTU", "ADDRESSES")]
    table: dict[tuple[str, str], dict[str, Iface]] = {}
    node = pod = ""
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(cols, cols[1:] + [len(line) + 1])]
        node, pod = cells[0] or node, cells[1] or pod
        table.setdefault((node, pod), {})[cells[3]] = Iface(cells[4], cells[5],
                                                            [a for a in cells[6].split(", ") if a != "-"])
    return table


def roles(out: str) -> dict[str, str]:
    """pod -> role, from the pods table's first row of each pod."""
    return dict(re.findall(r"^\s+(?:n\d+\s+)?(n\d+-pod\d+)\s+(server|client|-)\s", out, re.M))


def block(out: str, title: str) -> list[str]:
    """The lines after the line starting with `title`, to the next empty line."""
    return out.split("\n" + title, 1)[1].split("\n\n", 1)[0].splitlines()[1:]


def matrix(out: str, title: str) -> dict[tuple[str, str], str]:
    """(row, column) -> cell of a matrix printed under `title` (one group)."""
    rows = block(out, title)
    names = rows[0].split()
    return {(r.split()[0], dst): c for r in rows[1:] for dst, c in zip(names, r.split()[1:])}


def underlay_matrix(out: str) -> dict[tuple[str, str], str]:
    block = out.split("underlay ping matrix", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    names = block[0].split()
    return {(row.split()[0], dst): cell for row in block[1:] for dst, cell in zip(names, row.split()[1:])}


@root
def test_the_lab_succeeds_and_says_so(three_nodes):
    assert three_nodes.proc.returncode == 0, three_nodes.out + three_nodes.proc.stderr
    out = three_nodes.out
    assert "CHECK passed for every pod" in out
    assert "all pings ok" in out and "FAIL" not in out and "MISSING" not in out
    assert "DEL done for every pod" in out


@root
def test_three_nodes_with_their_underlay_addresses(three_nodes):
    table = nodes_table(three_nodes.out)
    assert sorted(table) == ["n1", "n2", "n3"], three_nodes.out
    for node, (v4, v6, mtu) in table.items():
        assert ipaddress.ip_address(v4) in ipaddress.ip_network("198.19.0.0/24")
        assert ipaddress.ip_address(v6) in ipaddress.ip_network("fd00:19::/64")
        assert mtu == "1400"
    assert len({v4 for v4, _, _ in table.values()}) == 3 and len({v6 for _, v6, _ in table.values()}) == 3


@root
def test_nodes_ping_each_other_over_the_underlay(three_nodes):
    cells = underlay_matrix(three_nodes.out)
    pairs = [(a, b) for a in ("n1", "n2", "n3") for b in ("n1", "n2", "n3") if a != b]
    assert {p: cells.get(p) for p in pairs} == {p: "ok/ok" for p in pairs}, three_nodes.out


def bird_pids(out: str) -> dict[str, int]:
    """NODE -> BIRD PID, from the BGP table."""
    return {n: int(p) for n, p in re.findall(r"^\s+(n\d+)\s+(\d+)\s+198\.18\.", out, re.M)}


@root
def test_bgp_sessions_established_and_every_block_learned(three_nodes):
    out = three_nodes.out
    assert "converged" in out.split("\nBGP ", 1)[1].splitlines()[0], out
    rows = {l.split()[0]: l for l in block(out, "BGP ")[1:]}
    assert sorted(rows) == ["n1", "n2", "n3"], out
    for i, node in enumerate(("n1", "n2", "n3"), start=1):
        others = [n for n in ("n1", "n2", "n3") if n != node]
        # the node's own blocks, a session Established with each other node, a route per family from each
        assert f"198.18.{63 + i}.0/24, fd00:64:0:{i}::/64" in rows[node]
        assert ", ".join(f"{o} Established" for o in others) in rows[node], rows[node]
        assert rows[node].rstrip().endswith(f"4 ({', '.join(others)})"), rows[node]
    assert sorted(bird_pids(out)) == ["n1", "n2", "n3"]


@root
def test_pods_on_every_node_with_addresses_and_mtus(three_nodes):
    table = pods_table(three_nodes.out)
    for i, node in enumerate(("n1", "n2", "n3"), start=1):
        pods = {pod: ifs for (n, pod), ifs in table.items() if n == node}
        assert sorted(pods) == [f"{node}-pod1", f"{node}-pod2", f"{node}-pod3"], three_nodes.out
        for pod, ifs in pods.items():
            # eth0: the cluster network, bgp-routed: host prefixes from this node's blocks, underlay MTU
            eth0 = ifs["eth0"]
            assert (eth0.network, eth0.mtu) == ("routed", "1400")
            assert [ipaddress.ip_interface(a).network.prefixlen for a in eth0.addrs] == [32, 128]
            v4, v6 = (ipaddress.ip_interface(a).ip for a in eth0.addrs)
            assert v4 in ipaddress.ip_network(f"198.18.{63 + i}.0/24") and v6 in ipaddress.ip_network(f"fd00:64:0:{i}::/64")
            # net1: the overlay, from this node's part of the shared subnet, MTU underlay - 50
            net1 = ifs["net1"]
            assert (net1.network, net1.mtu) == ("default/overlay", "1350"), (pod, net1)
            o4, o6 = (ipaddress.ip_interface(a).ip for a in net1.addrs)
            assert 16 * i <= int(str(o4).rsplit(".", 1)[1]) <= 16 * i + 15   # node i: 198.18.40.16i/28
            assert ipaddress.ip_address(f"fd00:40::{i}00") <= o6 <= ipaddress.ip_address(f"fd00:40::{i}ff")
            assert len(ifs) >= 3, (pod, ifs)     # and at least one bridge network
        # the fixed address pod2 asked violet for
        assert "fd00:3::99/64" in [a for ifs in pods.values() for f in ifs.values() for a in f.addrs]
    assert roles(three_nodes.out) == {f"n{n}-pod{p}": ("server", "client", "-")[p - 1] for n in (1, 2, 3) for p in (1, 2, 3)}


@root
def test_routed_and_overlay_matrices_span_every_node(three_nodes):
    out = three_nodes.out
    pods = [f"n{n}-pod{p}" for n in (1, 2, 3) for p in (1, 2, 3)]
    for network in ("routed", "default/overlay"):
        cells = matrix(out, f"ping matrix, network {network}, IPv4/IPv6 (spans nodes")
        assert {(a, b): cells.get((a, b)) for a in pods for b in pods if a != b} == \
            {(a, b): "ok/ok" for a in pods for b in pods if a != b}, out


@root
def test_every_node_local_matrix_cell_passes(three_nodes):
    out = three_nodes.out
    headers = re.findall(r"^ping matrix, network (\S+), (\S+) \(node-local", out, re.M)
    assert {("default/green", "IPv4/IPv6"), ("default/violet", "IPv6")} <= set(headers), out
    for network, fams in headers:
        rows = block(out, f"ping matrix, network {network}, {fams}")
        text = "\n".join(rows)
        assert set(re.findall(r"\bn\d+\b", text)) == {"n1", "n2", "n3"}, text   # a matrix per node
        cells = [c for l in rows for c in l.split() if c not in ("-",) and not re.match(r"^(n\d+|pod\d+)$", c)]
        assert cells and set(cells) == {"ok/ok" if "/" in fams else "ok"}, text


@root
def test_the_policy_matrix_is_what_the_policy_says(three_nodes):
    out = three_nodes.out
    rows = block(out, "policy matrix, TCP 8080 over default/overlay")
    servers = rows[0].split()
    assert servers == ["n1-pod1", "n2-pod1", "n3-pod1"], out
    got = {}
    for row in rows[1:]:
        if not row.startswith("  "):
            break                                     # the line under the matrix
        src, role, *cells = row.split()
        got.update({(src, role, dst): c for dst, c in zip(servers, cells)})
    want = {(f"n{n}-pod{p}", ("server", "client", "-")[p - 1], dst):
            "-" if f"n{n}-pod{p}" == dst else ("allowed" if p == 2 else "denied")
            for n in (1, 2, 3) for p in (1, 2, 3) for dst in servers}
    assert got == want, out
    assert "enforced on every server" in out and "POLICY" not in out


@root
def test_nothing_is_left_after_the_lab(three_nodes):
    pids = daemon_pids(three_nodes.out)
    assert sorted(pids) == ["n1", "n2", "n3"], three_nodes.out
    assert not [pid for pid in pids.values() if is_daemon(pid)]
    assert not [pid for pid in bird_pids(three_nodes.out).values() if is_bird(pid)]
    assert three_nodes.processes_after == []
    assert three_nodes.netns_after == []
    assert not three_nodes.files_after
    assert three_nodes.nft_after == three_nodes.nft_before     # the root netns's tables untouched


@root
def test_one_node_kept_up_then_down():
    try:
        kept = run_lab("--nodes", "1", "--pods", "2", "--keep")
        assert kept.proc.returncode == 0, kept.out + kept.proc.stderr
        assert "The lab stays up (--keep)" in kept.out and "underlay: one node" in kept.out
        pid = daemon_pids(kept.out)["n1"]
        bird = bird_pids(kept.out)["n1"]
        # the daemon runs, inside the node's netns, and the pods hold the addresses the table shows
        assert is_daemon(pid) and is_bird(bird)
        node_inode = os.stat("/run/netns/mpxlab-n1").st_ino
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == node_inode
        for (node, pod), ifs in pods_table(kept.out).items():
            shown = {a for f in ifs.values() for a in f.addrs}
            real = {f"{a['local']}/{a['prefixlen']}" for link in ip_json(f"mpxlab-{pod.replace('-pod', '-p')}", "addr")
                    for a in link.get("addr_info", []) if a.get("scope") == "global"}
            assert shown == real and shown, (pod, shown, real)
        assert set(lab_netns()) >= {"mpxlab-underlay", "mpxlab-n1", "mpxlab-n1-p1", "mpxlab-n1-p2"}
        # the daemon dies as in a crash: its BIRD stays (a restarted daemon would adopt it) ...
        os.kill(pid, signal.SIGKILL)
        assert is_bird(bird)
    finally:
        down()
    # ... and --down stops it by its pid
    assert not is_bird(bird) and lab_processes() == []
    assert lab_netns() == []
    assert not is_daemon(pid)
    assert not os.path.exists(STATE)


@root
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_mid_run_leaves_nothing(sig):
    proc = subprocess.Popen([MULTIPLEX, "lab", "--nodes", "2", "--pods", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        seen = ""
        for line in proc.stdout:           # interrupt once the daemons are up
            seen += line
            if line.startswith("daemons:"):
                break
        pids = daemon_pids(seen)
        assert sorted(pids) == ["n1", "n2"], seen
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        after_netns, after_files, after_processes = lab_netns(), os.path.exists(STATE), lab_processes()
        down()
    assert proc.returncode != 0
    assert "interrupted" in err
    assert not [pid for pid in pids.values() if is_daemon(pid)]
    assert after_netns == [] and not after_files and after_processes == []


def test_a_network_spanning_nodes_gets_one_matrix_over_every_node(monkeypatch):
    """Where the cluster-wide networks of the next issues plug in: a network whose scope is
    "cluster" is pinged across nodes in one matrix; a node-local one per node. (No netns: the
    pings are answered by a stand-in, one of them failing.)"""
    from multiplex.cli.lab import cluster, report
    from multiplex.cli.lab.topology import Node

    pods = [p for n in (Node(1), Node(2)) for p in n.pods(2)]
    for i, p in enumerate(pods):
        p.networks = {"default/wide": "net1", "default/blue": "net2"}
        p.interfaces = {"net1": [f"198.18.30.{i + 2}/24"], "net2": [f"198.18.1.{i % 2 + 2}/24"]}
    monkeypatch.setitem(cluster.NETWORK_SCOPE, "default/wide", "cluster")
    asked: list[tuple[str, str]] = []

    def pinger(pairs):
        asked.extend(pairs)
        return {p: p != ("mpxlab-n2-p2", "198.18.30.2") for p in pairs}

    lines, ok = report.pod_matrices(pods, pinger)
    text = "\n".join(lines)
    wide = [p for p in asked if p[1].startswith("198.18.30.")]
    blue = [p for p in asked if p[1].startswith("198.18.1.")]
    assert len(wide) == 4 * 3 and ("mpxlab-n1-p1", "198.18.30.4") in wide      # across nodes
    assert sorted(blue) == sorted([("mpxlab-n1-p1", "198.18.1.3"), ("mpxlab-n1-p2", "198.18.1.2"),
                                   ("mpxlab-n2-p1", "198.18.1.3"), ("mpxlab-n2-p2", "198.18.1.2")])  # within
    assert "ping matrix, network default/wide, IPv4 (spans nodes" in text
    assert "ping matrix, network default/blue, IPv4 (node-local" in text
    wide_block = text.split("network default/wide", 1)[1]
    row = next(l for l in wide_block.splitlines() if l.strip().startswith("n2-pod2"))
    assert row.split() == ["n2-pod2", "FAIL", "ok", "ok", "-"]
    assert ok is False


def test_the_policy_matrix_marks_a_cell_the_policy_does_not_explain():
    """The lab fails when a probe disagrees with the policy (no netns: results made up): a denied
    client, an allowed other pod, and a cell whose families disagree are each marked `!`."""
    from multiplex.cli.lab import policy, report
    from multiplex.cli.lab.topology import Node

    pods = Node(1).pods(3) + Node(2).pods(3)
    for p in pods:
        p.role = ("server", "client", "")[int(p.name[-1]) - 1]
    servers = [p for p in pods if p.role == "server"]
    got = {(s.netns, d.name): {4: policy.expected(s, d), 6: policy.expected(s, d)}
           for s in pods for d in servers if s is not d}
    lines, ok = report.policy_matrix(pods, servers, got, policy.expected)
    assert ok and "!" not in "\n".join(lines)
    got[(pods[1].netns, "n2-pod1")] = {4: False, 6: False}     # a client denied
    got[(pods[2].netns, "n1-pod1")] = {4: True, 6: True}       # a pod without a role let in
    got[(pods[4].netns, "n1-pod1")] = {4: True, 6: False}      # IPv6 dropped only
    lines, ok = report.policy_matrix(pods, servers, got, policy.expected)
    rows = {l.split()[0]: l.split()[2:] for l in lines[1:]}
    assert not ok
    assert rows["n1-pod2"] == ["allowed", "denied!"] and rows["n1-pod3"] == ["allowed!", "denied"]
    assert rows["n2-pod2"] == ["yes/no!", "allowed"]


def test_bgp_converged_needs_every_session_and_route():
    from multiplex.cli.lab import bgp
    from multiplex.cli.lab.topology import Node

    nodes = [Node(1), Node(2), Node(3)]

    def status(states=("Established", "Established"), routes=4):
        return {"sessions": [{"peer": "x", "state": s} for s in states],
                "routes": [{"dst": "d", "via": "v", "peer": "x"}] * routes}

    assert bgp.converged(nodes, {n.name: status() for n in nodes})
    assert not bgp.converged(nodes, {**{n.name: status() for n in nodes}, "n2": status(("Established", "Active"))})
    assert not bgp.converged(nodes, {**{n.name: status() for n in nodes}, "n3": status(routes=3)})
    assert bgp.converged(nodes[:1], {"n1": status((), 0)})
