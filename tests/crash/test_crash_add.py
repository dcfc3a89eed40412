"""Crash injection: SIGKILL at each step of a 3-attachment ADD (eth0, then two NADs the pod asks
for by annotation: one plain, one with a masquerade rule), the real multiplex process in a
simulated node netns. After each kill, DEL (or, in the other test, GC with an empty
`cni.dev/valid-attachments`) must leave nothing: no veth in the node, no interface in the pod, no
lease row, no cache file, no nft rule; and ADD again must succeed with the pod's addresses in its
netns. Steps are counted by tests/crash/hook.py (Undo.push after each change a delegate made,
ResultCache.save before and after each write), so each trial kills at one exact step."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.cnitool import addresses, cni_env
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = pytest.mark.root

SUBNETS = {"eth0": "198.18.40.0/24", "net1": "198.18.41.0/24", "net2": "198.18.42.0/24"}
BRIDGES = ("mpxc-pod", "mpxc-blue", "mpxc-masq")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: trials run on this many simulated nodes at once (each its own netns, state and pod): a trial
#: mostly waits (process start, the kernel's RCU grace period on veth deletion)
WORKERS = 3


def make_lab(netns_factory, root: str) -> Lab:
    """A node with the three networks and the pod `crash` asking for two of them."""
    os.makedirs(root, exist_ok=True)
    lab = Lab(node=netns_factory("cnode"), root=root, netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf("mpxc-pod", SUBNETS["eth0"], isGateway=True, isDefaultGateway=True))
    lab.add_nad("blue", bridge_conf("mpxc-blue", SUBNETS["net1"]))
    lab.add_nad("masq", bridge_conf("mpxc-masq", SUBNETS["net2"], isGateway=True, ipMasq=True))
    lab.add_pod("crash", "blue, masq")
    return lab


@pytest.fixture
def labs(netns_factory, tmp_path):
    """WORKERS nodes; netns_factory deletes every node and pod netns (with their links and nft
    tables) at teardown, whatever a failed assertion left."""
    return [make_lab(netns_factory, str(tmp_path / f"node{k}")) for k in range(WORKERS)]


def add_with_crash(lab: Lab, pod_ns: str, crash_at: int, step_log: str = "") -> subprocess.CompletedProcess:
    """ADD through tests/crash/hook.py in the node netns, killed at step `crash_at` (0: never)."""
    env = cni_env("ADD", "cid-crash", pod_ns, "eth0", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=crash",
                  extra_env={"MPX_CRASH_AT": str(crash_at), "MPX_CRASH_LOG": step_log,
                             "PYTHONPATH": REPO})
    return subprocess.run(["ip", "netns", "exec", lab.node, sys.executable, "-m", "tests.crash.hook"],
                          input=json.dumps(lab.config()).encode(), env=env, capture_output=True, timeout=120,
                          cwd=REPO)


def links(ns: str) -> set[str]:
    """The links of netns `ns`, read from this thread inside it (no `ip` process per look)."""
    from multiplex.netlink.netns import entered

    with entered(f"/var/run/netns/{ns}"):
        return {name for _, name in socket.if_nameindex()}


def remove_bridges(lab: Lab) -> None:
    """Bridges stay after DEL by design; removing them makes every trial an ADD on a fresh node,
    with the same steps as the probe (creating a bridge is a step too)."""
    subprocess.run(["ip", "-n", lab.node, "-force", "-batch", "-"], capture_output=True,
                   input="".join(f"link del {b}\n" for b in BRIDGES).encode())


def residue(lab: Lab, pod_ns: str) -> list[str]:
    """Everything an attachment of the pod could have left, as a user would look for it."""
    left = []
    node_links = {n for n in links(lab.node) if n != "lo" and n not in BRIDGES}
    if node_links:
        left.append(f"links in the node: {sorted(node_links)}")
    pod_links = links(pod_ns) - {"lo"} if os.path.exists(f"/var/run/netns/{pod_ns}") else set()
    if pod_links:
        left.append(f"interfaces in the pod: {sorted(pod_links)}")
    if lab.leases():
        left.append(f"lease rows: {lab.leases()}")
    if lab.cache_entries():
        left.append(f"cache files: {lab.cache_entries()}")
    nft = lab.node_nft()
    if "cid-crash" in nft or "198.18.42." in nft:
        left.append("nft rules: " + " | ".join(l.strip() for l in nft.splitlines() if "cid-crash" in l or "198.18.42." in l))
    return left


def pod_is_attached(pod_ns: str) -> list[str]:
    """What is wrong with the pod after a successful ADD (empty: eth0, net1, net2 addressed)."""
    wrong = []
    got = {name: addresses(pod_ns, name) for name in links(pod_ns) - {"lo"}}
    if set(got) != set(SUBNETS):
        wrong.append(f"interfaces {sorted(got)}, expected {sorted(SUBNETS)}")
    for ifname, subnet in SUBNETS.items():
        inside = [a for a in got.get(ifname, ()) if ipaddress.ip_interface(a) in ipaddress.ip_network(subnet)]
        if len(inside) != 1:
            wrong.append(f"{ifname} has {sorted(got.get(ifname, ()))}, expected one address of {subnet}")
    return wrong


@dataclass
class Trial:
    step: int
    what: str
    killed: bool
    left_by_kill: int = 0     # kinds of state the killed ADD left (links, leases, cache, rules)
    cleanup: str = ""
    residue: str = ""
    readd: str = ""

    @property
    def ok(self) -> bool:
        return self.killed and not (self.cleanup or self.residue or self.readd)


def count_steps(lab: Lab, pod_ns: str) -> list[str]:
    """Every step of a full ADD (nothing killed), then DEL: the steps to kill at, in order."""
    log = os.path.join(lab.root, "steps.log")
    remove_bridges(lab)
    proc = add_with_crash(lab, pod_ns, 0, log)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()[-2000:]
    assert not pod_is_attached(pod_ns)
    assert lab.cni("DEL", "crash", pod_ns).ok
    assert residue(lab, pod_ns) == []
    with open(log) as f:
        return [line.rstrip("\n").split("\t", 1)[1] for line in f]


def run_trials(labs: list[Lab], cleanup: str) -> list[Trial]:
    """Probe the steps on the first node, then kill at each step, the steps shared out among the
    nodes (each runs its share in order, one pod of its own)."""
    pods = [lab.netns_factory("cpod") for lab in labs]
    steps = count_steps(labs[0], pods[0])
    assert len(steps) >= 6, steps   # 4 cache saves (x2) and the delegates' steps at least
    numbered = list(enumerate(steps, 1))
    with ThreadPoolExecutor(max_workers=len(labs)) as pool:
        shares = pool.map(lambda k: trials_on(labs[k], pods[k], numbered[k::len(labs)], cleanup), range(len(labs)))
        return sorted((t for share in shares for t in share), key=lambda t: t.step)


def trials_on(lab: Lab, pod_ns: str, steps: list[tuple[int, str]], cleanup: str) -> list[Trial]:
    trials = []
    for n, what in steps:
        t = Trial(n, what, killed=False)
        remove_bridges(lab)
        proc = add_with_crash(lab, pod_ns, n)
        t.killed = proc.returncode in (-9, 137)
        t.left_by_kill = len(residue(lab, pod_ns))
        if cleanup == "DEL":
            out = lab.cni("DEL", "crash", pod_ns)
        else:
            out = lab.cni("GC", None, None, config=lab.gc_config())
        if not out.ok:
            t.cleanup = f"{cleanup} failed: {out.out}"
        t.residue = "; ".join(residue(lab, pod_ns))
        if t.residue:  # clean by hand so the next trial starts from nothing
            lab.cni("DEL", "crash", pod_ns)
        again = lab.cni("ADD", "crash", pod_ns)
        if not again.ok:
            t.readd = f"ADD again failed: {again.out}"
        else:
            t.readd = "; ".join(pod_is_attached(pod_ns))
        lab.cni("DEL", "crash", pod_ns)
        trials.append(t)
    return trials


def report(trials: list[Trial], cleanup: str) -> str:
    bad = [t for t in trials if not t.ok]
    lines = [f"crash injection, cleanup by {cleanup}: {len(trials)} trials (one per step), "
             f"{sum(1 for t in trials if t.left_by_kill)} kills left state behind for {cleanup} to clean, "
             f"{sum(1 for t in trials if t.residue)} with residue after {cleanup}, {len(bad)} failed"]
    for t in trials:
        state = "ok" if t.ok else f"killed={t.killed} {t.cleanup} {t.residue} {t.readd}".rstrip()
        lines.append(f"  step {t.step:2} {t.what}: left {t.left_by_kill} kinds of state; {state}")
    return "\n".join(lines)


@pytest.mark.parametrize("cleanup", ["DEL", "GC"])
def test_sigkill_at_each_step_of_add_then_cleanup_leaves_nothing_and_add_again_works(labs, cleanup):
    trials = run_trials(labs, cleanup)
    summary = report(trials, cleanup)
    print("\n" + summary)
    assert all(t.ok for t in trials), summary
