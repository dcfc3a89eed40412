"""Benchmark: MultiNetworkPolicy on nftables, peers in sets against one rule per peer address.

PODS local pods (each its own netns, as on a node), all selected by one policy ("role=client may
reach role=server on TCP 8080", every local pod a server), and PEERS client pods elsewhere in
the cluster (dual stack: two addresses each), as the engine sees them from the watches. Printed:

1. apply the policy to every local pod (one full `nft -f` each): total, per pod, the table's size
   (lines, bytes, set elements);
2. one peer joins, then leaves: the pass that follows (a set update per pod: `add element` or `delete
   element` of that address, one transaction) with the bytes sent to nft per pod;
3. the same three steps with `per_address_rules` (one rule per peer address, what rule-per-address
   implementations do): every join or leave rewrites every pod's rules. Measured on the first
   RULES_PODS pods (it is slow: the suite's time matters), printed per pod beside the sets' per pod.

Nothing is timed against a limit: the figures are printed. Asserted: after each step the table in
a pod's netns holds the peers it should (the joining peer's address in, then out). PODS:
MULTIPLEX_BENCH_POLICY_PODS (200); PEERS: MULTIPLEX_BENCH_POLICY_PEERS (1000); RULES_PODS:
MULTIPLEX_BENCH_POLICY_RULES_PODS (20).
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from multiplex.policy.mnp import compiler
from multiplex.policy.mnp.engine import Engine, LocalPod, Snapshot

pytestmark = [pytest.mark.root, pytest.mark.perf]

PODS = int(os.environ.get("MULTIPLEX_BENCH_POLICY_PODS", "200"))
PEERS = int(os.environ.get("MULTIPLEX_BENCH_POLICY_PEERS", "1000"))
RULES_PODS = int(os.environ.get("MULTIPLEX_BENCH_POLICY_RULES_PODS", "20"))
NETWORK = "default/blue"
POLICY = {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
          "metadata": {"name": "clients", "namespace": "default",
                       "annotations": {"k8s.v1.cni.cncf.io/policy-for": "blue"}},
          "spec": {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                "ports": [{"protocol": "TCP", "port": 8080}]}]}}


def peer(i: int) -> dict:
    ips = [f"198.18.{128 + i // 250}.{1 + i % 250}", f"fd00:99::{i + 1:x}"]
    status = f'[{{"name": "{NETWORK}", "interface": "net1", "ips": ["{ips[0]}", "{ips[1]}"]}}]'
    return {"metadata": {"name": f"client-{i}", "namespace": "default", "labels": {"role": "client"},
                         "annotations": {"k8s.v1.cni.cncf.io/network-status": status}}}


class BenchEngine(Engine):
    """The engine over PODS netns of this benchmark instead of a node's result cache."""

    local: list[LocalPod] = []

    def local_pods(self) -> list[LocalPod]:
        return self.local


@pytest.fixture(scope="module")
def pods():
    names = [f"mpxbp-{uuid.uuid4().hex[:8]}" for _ in range(PODS)]
    made = []
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            made.append(n)
        local = []
        for i, n in enumerate(names):
            server = {"metadata": {"name": f"server-{i}", "namespace": "default", "labels": {"role": "server"}}}
            local.append((LocalPod(f"cid-{i}", f"/var/run/netns/{n}", "default", f"server-{i}",
                                   [("net1", NETWORK, [f"198.18.120.{i % 250 + 1}"])]), server))
        yield local
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def table_has(netns: str, address: str) -> bool:
    out = subprocess.run(["nsenter", f"--net={netns}", "nft", "list", "table", "inet", compiler.TABLE],
                         capture_output=True, text=True).stdout
    return address in out


def run_side(pods, per_address_rules: bool) -> dict:
    peers = [peer(i) for i in range(PEERS)]
    state: dict = {"peers": peers}
    engine = BenchEngine(lambda: Snapshot([POLICY], [], state["peers"] + [obj for _p, obj in pods]),
                         state_dir=None, per_address_rules=per_address_rules)
    engine.local = [p for p, _obj in pods]
    engine._write_status = lambda pod, rs: None      # the benchmark measures nft, not status files
    engine._write_networks = lambda view: None
    out: dict = {}
    started = time.perf_counter()
    counts = engine.sync_all()
    out["apply"] = time.perf_counter() - started
    assert counts["full"] == len(pods), counts
    view = engine.view(engine.snapshot(), engine.local)
    rs = engine.compile(view, engine.local[0])
    text = rs.render()
    out["lines"], out["bytes"] = text.count("\n"), len(text)
    out["elements"] = sum(len(s.elements) for s in rs.sets.values())
    out["rules"] = sum(c.count("accept comment") for c in rs.chains)

    joiner = peer(PEERS)
    joiner_ip = "198.18.132.1" if PEERS == 1000 else None
    state["peers"] = peers + [joiner]
    old = engine.applier.state[engine.local[0].netns].sets
    started = time.perf_counter()
    counts = engine.sync_all()
    out["join"] = time.perf_counter() - started
    out["join_counts"] = counts
    new = engine.compile(engine.view(engine.snapshot(), engine.local), engine.local[0])
    out["join_bytes"] = len(compiler.full_replace(new) if per_address_rules else compiler.set_update(old, new))
    joiner_v6 = "fd00:99::" + f"{PEERS + 1:x}"
    assert table_has(engine.local[0].netns, joiner_v6) and table_has(engine.local[-1].netns, joiner_v6)
    if joiner_ip:
        assert table_has(engine.local[0].netns, joiner_ip)

    state["peers"] = peers
    started = time.perf_counter()
    counts = engine.sync_all()
    out["leave"] = time.perf_counter() - started
    out["leave_counts"] = counts
    assert not table_has(engine.local[0].netns, joiner_v6)
    return out


def test_bench_policy_sets_against_rules(pods):
    sets = run_side(pods, per_address_rules=False)
    rules = run_side(pods[:RULES_PODS], per_address_rules=True)
    n, m = len(pods), min(RULES_PODS, len(pods))
    print(f"\nMultiNetworkPolicy: one policy selecting every local pod, {PEERS} peer pods (2 addresses each)")
    print(f"{'':34} {'peers in sets':>16} {'a rule per address':>20}")
    print(f"{'local pods measured':34} {n:>16} {m:>20}")
    print(f"{'apply to every pod (s)':34} {sets['apply']:>16.2f} {rules['apply']:>20.2f}")
    print(f"{'  per pod (ms)':34} {sets['apply'] / n * 1000:>16.1f} {rules['apply'] / m * 1000:>20.1f}")
    print(f"{'one peer joins: pass (s)':34} {sets['join']:>16.2f} {rules['join']:>20.2f}")
    print(f"{'  per pod (ms)':34} {sets['join'] / n * 1000:>16.1f} {rules['join'] / m * 1000:>20.1f}")
    print(f"{'  bytes to nft per pod':34} {sets['join_bytes']:>16} {rules['join_bytes']:>20}")
    print(f"{'  done as':34} {'sets x%d' % sets['join_counts']['sets']:>16} "
          f"{'full x%d' % rules['join_counts']['full']:>20}")
    print(f"{'one peer leaves: pass (s)':34} {sets['leave']:>16.2f} {rules['leave']:>20.2f}")
    print(f"{'  per pod (ms)':34} {sets['leave'] / n * 1000:>16.1f} {rules['leave'] / m * 1000:>20.1f}")
    print(f"{'ruleset per pod: lines':34} {sets['lines']:>16} {rules['lines']:>20}")
    print(f"{'  bytes':34} {sets['bytes']:>16} {rules['bytes']:>20}")
    print(f"{'  accept rules / set elements':34} {'%d / %d' % (sets['rules'], sets['elements']):>16} "
          f"{'%d / %d' % (rules['rules'], rules['elements']):>20}")
    assert sets["join_counts"]["sets"] == n and rules["join_counts"]["full"] == m
