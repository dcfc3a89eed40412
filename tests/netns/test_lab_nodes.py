"""`multiplex lab --nodes N`: nodes on one underlay, a node daemon on each, pods attached through it.

Run as a user runs it (the console script, as root), and checked on what the user reads: the nodes
table with each node's underlay addresses (published by the node's registry), the underlay ping
matrix, every pod with its addresses, every ping matrix cell ok, CHECK and DEL done; and, once it
has ended, nothing left: no `mpxlab-` netns, no daemon alive among the pids the lab printed, no
files under /run/mpxlab. Also --nodes 1 with --keep (the lab really up: daemon in the node's
netns, addresses in the pod netns) then --down, and a Ctrl-C (or SIGTERM) in the middle of a run.
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

    @property
    def out(self) -> str:
        return self.proc.stdout


def run_lab(*args: str) -> Run:
    proc = subprocess.run([MULTIPLEX, "lab", *args], capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    return Run(proc, lab_netns(), os.path.exists(STATE))


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


def pods_table(out: str) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(node, pod) -> interface -> addresses, from the pods table (node and pod named on their first row)."""
    lines = out.split("NODE  POD", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    header = "  NODE  POD" + out.split("NODE  POD", 1)[1].splitlines()[0]
    cols = [header.index(c) for c in ("NODE", "POD", "INTERFACE", "NETWORK", "ADDRESSES")]
    table: dict[tuple[str, str], dict[str, list[str]]] = {}
    node = pod = ""
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(cols, cols[1:] + [len(line) + 1])]
        node, pod = cells[0] or node, cells[1] or pod
        table.setdefault((node, pod), {})[cells[2]] = [a for a in cells[4].split(", ") if a != "-"]
    return table


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


@root
def test_pods_on_every_node_with_addresses(three_nodes):
    table = pods_table(three_nodes.out)
    for node in ("n1", "n2", "n3"):
        pods = {pod: ifs for (n, pod), ifs in table.items() if n == node}
        assert sorted(pods) == [f"{node}-pod1", f"{node}-pod2", f"{node}-pod3"], three_nodes.out
        for pod, ifs in pods.items():
            # the cluster network on eth0, IPv4 from podnet's subnet, and at least one more network
            assert [ipaddress.ip_interface(a).network for a in ifs["eth0"]] == [ipaddress.ip_network("198.18.0.0/24")]
            assert len(ifs) >= 3, (pod, ifs)
        # the fixed address pod2 asked violet for
        assert "fd00:3::99/64" in [a for ifs in pods.values() for addrs in ifs.values() for a in addrs]


@root
def test_every_pod_matrix_cell_passes(three_nodes):
    out = three_nodes.out
    headers = re.findall(r"^ping matrix, network (\S+), IPv(\d)", out, re.M)
    assert {("podnet", "4"), ("default/blue", "4"), ("default/green", "4"), ("default/green", "6"),
            ("default/violet", "6")} <= set(headers), out
    for header in headers:
        block = out.split(f"ping matrix, network {header[0]}, IPv{header[1]}", 1)[1].split("\n\n", 1)[0]
        rows = block.splitlines()[1:]
        assert set(re.findall(r"\bn\d+\b", block)) == {"n1", "n2", "n3"}, block   # a matrix per node
        cells = [c for l in rows for c in l.split() if c in ("ok", "FAIL")]
        assert cells and set(cells) == {"ok"}, block


@root
def test_nothing_is_left_after_the_lab(three_nodes):
    pids = daemon_pids(three_nodes.out)
    assert sorted(pids) == ["n1", "n2", "n3"], three_nodes.out
    assert not [pid for pid in pids.values() if is_daemon(pid)]
    assert three_nodes.netns_after == []
    assert not three_nodes.files_after


@root
def test_one_node_kept_up_then_down():
    try:
        kept = run_lab("--nodes", "1", "--pods", "2", "--keep")
        assert kept.proc.returncode == 0, kept.out + kept.proc.stderr
        assert "The lab stays up (--keep)" in kept.out and "underlay: one node" in kept.out
        pid = daemon_pids(kept.out)["n1"]
        # the daemon runs, inside the node's netns, and the pods hold the addresses the table shows
        assert is_daemon(pid)
        node_inode = os.stat("/run/netns/mpxlab-n1").st_ino
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == node_inode
        for (node, pod), ifs in pods_table(kept.out).items():
            shown = {a for addrs in ifs.values() for a in addrs}
            real = {f"{a['local']}/{a['prefixlen']}" for link in ip_json(f"mpxlab-{pod.replace('-pod', '-p')}", "addr")
                    for a in link.get("addr_info", []) if a.get("scope") == "global"}
            assert shown == real and shown, (pod, shown, real)
        assert set(lab_netns()) >= {"mpxlab-underlay", "mpxlab-n1", "mpxlab-n1-p1", "mpxlab-n1-p2"}
    finally:
        down()
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
        after_netns, after_files = lab_netns(), os.path.exists(STATE)
        down()
    assert proc.returncode != 0
    assert "interrupted" in err
    assert not [pid for pid in pids.values() if is_daemon(pid)]
    assert after_netns == [] and not after_files


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
