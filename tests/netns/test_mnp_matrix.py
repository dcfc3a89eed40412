"""MultiNetworkPolicy enforced in each pod's netns: a matrix of TCP, UDP and ICMP probes, IPv4
and IPv6, between five pods on one dual-stack bridge network, for each rule kind, checked against
the matrix NetworkPolicy's semantics expect.

The pods are made by real multiplex ADDs on a simulated node; the engine (the policy
controller's, multiplex/policy/mnp/engine.py) runs in this process over the lab's files, one pass
per scenario, so the test sees exactly what a pass leaves in the pods' netns. Pods: in namespace
`default` a (role=server, named port web=8080), b (role=client), c (role=other); in namespace
`other` (label team=x) d (role=client) and e (role=other).
"""
from __future__ import annotations

import os
import time

import pytest

from multiplex.policy.mnp.engine import Engine, Snapshot
from tests.cnitool import NetnsPool
from tests.netns import mnplab
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = pytest.mark.root

PODS = {"a": ("default", {"role": "server"}, {"web": 8080}), "b": ("default", {"role": "client"}, {}),
        "c": ("default", {"role": "other"}, {}), "d": ("other", {"role": "client"}, {}),
        "e": ("other", {"role": "other"}, {})}
NAMESPACES = [mnplab.namespace("default", {}), mnplab.namespace("other", {"team": "x"})]


class World:
    def __init__(self, lab: Lab, netns: dict[str, str], engine: Engine):
        self.lab, self.netns, self.engine = lab, netns, engine
        self.policies: list[dict] = []
        self.addrs = {n: mnplab.blue_addresses(p) for n, p in
                      ((p["metadata"]["name"], p) for p in mnplab.read_pods(lab.pod_dir))}

    def enforce(self, *policies: dict) -> None:
        self.policies = list(policies)
        self.engine.sync_all()

    def run(self) -> dict:
        cells = [(s, d, k, f) for s in PODS for d in PODS if s != d for k in mnplab.PROBES for f in (4, 6)]
        return mnplab.matrix(self.netns, self.addrs, cells)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    pool = NetnsPool("mpx")
    servers = mnplab.Servers()
    try:
        node = pool.make("node")
        root = str(tmp_path_factory.mktemp("mnp"))
        lab = Lab(node=node, root=root, netns_factory=pool.make, extra={"namespaceIsolation": False})
        tag = f"{os.getpid() % 100000}"
        lab.add_nad("podnet", bridge_conf(f"mnpp{tag}", "198.18.60.0/24"))
        lab.add_nad("blue", bridge_conf(f"mnpb{tag}", "198.18.61.0/24", "fd00:61::/64"))
        netns = {}
        for name, (ns, labels, ports) in PODS.items():
            mnplab.write_pod(lab.pod_dir, mnplab.pod_object(name, ns, labels, "default/blue", ports))
            netns[name] = pool.make("pod")
            out = lab.cni("ADD", name, netns[name], namespace=ns)
            assert out.ok, out.stderr
            servers.start(netns[name])
        holder: dict = {}
        engine = Engine(lambda: Snapshot(holder["w"].policies, NAMESPACES, mnplab.read_pods(lab.pod_dir)),
                        lab.state_dir)
        holder["w"] = w = World(lab, netns, engine)
        assert all(set(a) == {4, 6} for a in w.addrs.values()), w.addrs
        yield w
    finally:
        servers.close()
        pool.close()


def server_ingress(name: str, rule: dict) -> dict:
    return mnplab.policy(name, {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"],
                                "ingress": [rule]})


def client_egress(name: str, rule: dict) -> dict:
    return mnplab.policy(name, {"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                                "egress": [rule]})


def ip_block_except_b(w: World) -> dict:
    return {"from": [{"ipBlock": {"cidr": "198.18.61.0/24", "except": [w.addrs["b"][4] + "/32"]}},
                     {"ipBlock": {"cidr": "fd00:61::/64", "except": [w.addrs["b"][6] + "/128"]}}]}


# name -> (policies for the world, expected(src, dst, probe, family))
SCENARIOS = {
    "no-policy": (lambda w: [], lambda s, d, k, f: True),
    "policy-for-another-network": (
        lambda w: [mnplab.policy("deny-podnet", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
                                 policy_for="podnet")],
        lambda s, d, k, f: True),
    "ingress-podSelector-tcp8080": (
        lambda w: [server_ingress("clients", {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                              "ports": [{"protocol": "TCP", "port": 8080}]})],
        lambda s, d, k, f: d != "a" or (s == "b" and k == "tcp8080")),
    "ingress-namespaceSelector": (
        lambda w: [server_ingress("team-x", {"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]})],
        lambda s, d, k, f: d != "a" or s in ("d", "e")),
    "ingress-namespace-and-podSelector": (
        lambda w: [server_ingress("team-x-clients", {"from": [{
            "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["x"]}]},
            "podSelector": {"matchLabels": {"role": "client"}}}]})],
        lambda s, d, k, f: d != "a" or s == "d"),
    "ingress-ipBlock-except": (
        lambda w: [server_ingress("block", ip_block_except_b(w))],
        lambda s, d, k, f: d != "a" or s != "b"),
    "ingress-ports-named-udp-endPort": (
        lambda w: [server_ingress("ports", {"ports": [{"port": "web"}, {"protocol": "UDP", "port": 5353},
                                                      {"protocol": "TCP", "port": 9000, "endPort": 9100}]})],
        lambda s, d, k, f: d != "a" or k != "icmp"),
    "ingress-endPort-range-only": (
        lambda w: [server_ingress("range", {"ports": [{"protocol": "TCP", "port": 9000, "endPort": 9100}]})],
        lambda s, d, k, f: d != "a" or k == "tcp9090"),
    "egress-ipBlock-except": (
        lambda w: [client_egress("block", {"to": [
            {"ipBlock": {"cidr": "198.18.61.0/24", "except": [w.addrs["a"][4] + "/32"]}},
            {"ipBlock": {"cidr": "fd00:61::/64", "except": [w.addrs["a"][6] + "/128"]}}]})],
        lambda s, d, k, f: s != "b" or d != "a"),
    "egress-podSelector-tcp8080": (
        lambda w: [client_egress("to-server", {"to": [{"podSelector": {"matchLabels": {"role": "server"}}}],
                                               "ports": [{"port": 8080}]})],
        # b is the client of `default` (d, a client of `other`, is not selected: other namespace)
        lambda s, d, k, f: s != "b" or (d == "a" and k == "tcp8080")),
    "egress-named-port-any-namespace": (
        lambda w: [client_egress("to-web", {"to": [{"namespaceSelector": {}}], "ports": [{"port": "web"}]})],
        lambda s, d, k, f: s != "b" or (d == "a" and k == "tcp8080")),
    "default-deny-both-directions": (
        lambda w: [mnplab.policy("deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})],
        lambda s, d, k, f: s in ("d", "e") and d in ("d", "e")),
    "two-policies-add-up": (
        lambda w: [server_ingress("clients", {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                              "ports": [{"port": 8080}]}),
                   server_ingress("team-x", {"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                                             "ports": [{"protocol": "UDP", "port": 5353}]})],
        lambda s, d, k, f: d != "a" or (s == "b" and k == "tcp8080") or (s in ("d", "e") and k == "udp5353")),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_matrix_matches_networkpolicy_semantics(world, scenario):
    policies, expected = SCENARIOS[scenario]
    started = time.perf_counter()
    world.enforce(*policies(world))
    applied = time.perf_counter() - started
    got = world.run()
    print(f"\n{scenario}: applied in {applied * 1000:.0f} ms, {len(got)} probes\n"
          + mnplab.render(got, list(PODS)))
    wrong = mnplab.differences(got, expected)
    assert not wrong, f"{scenario}: {len(wrong)} of {len(got)} probes differ:\n" + "\n".join(wrong)
