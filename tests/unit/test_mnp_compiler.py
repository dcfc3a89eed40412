"""The compiler: what a pod's table holds, when its structure changes (and when only its sets
do), fail closed, and the enforce step's choices (the engine by state root, the one-shot rule)."""
from __future__ import annotations

import json
import os

import pytest

from multiplex.policy.mnp import compiler, hooks
from multiplex.policy.mnp.engine import Engine, LocalPod, Snapshot, local_pod_from_record
from multiplex.policy.mnp.model import PodInfo, PolicyError, parse_policy

NET = "team/blue"


def policy(spec: dict, name: str = "p", policy_for: str = "blue", namespace: str = "team"):
    return parse_policy({"metadata": {"name": name, "namespace": namespace,
                                      "annotations": {"k8s.v1.cni.cncf.io/policy-for": policy_for}}, "spec": spec})


SERVER = PodInfo("team", "server", {"role": "server"}, {"web": [("TCP", 8080)]}, {NET: ["198.18.1.1"]})
CLIENT = PodInfo("team", "client", {"role": "client"}, {}, {NET: ["198.18.1.2", "fd00:1::2"]})
CLIENTS_8080 = {"podSelector": {"matchLabels": {"role": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 8080}]}]}


def compile_server(policies, pods, broken=(), interfaces=(("net1", NET), ("eth0", "podnet"))):
    view = compiler.PolicyView(list(policies), list(broken), {}, list(pods))
    return compiler.compile_pod(view, SERVER, list(interfaces))


def test_no_policy_means_no_table():
    rs = compile_server([], [SERVER, CLIENT])
    assert rs.empty
    assert compile_server([policy(CLIENTS_8080, policy_for="red")], [SERVER, CLIENT]).empty   # another network


def test_a_peer_joining_changes_a_set_not_the_structure():
    before = compile_server([policy(CLIENTS_8080)], [SERVER, CLIENT])
    assert [p.ingress for p in before.interfaces] == [[], ["team/p"]]   # eth0, net1 (sorted by name)
    joiner = PodInfo("team", "client2", {"role": "client"}, {}, {NET: ["198.18.1.3"]})
    after = compile_server([policy(CLIENTS_8080)], [SERVER, CLIENT, joiner])
    assert after.hash == before.hash
    update = compiler.set_update(before.dynamic_sets(), after)
    assert update == "add element inet multiplex_mnp a1_4 { 198.18.1.3 }\n"
    assert compiler.set_update(after.dynamic_sets(), before) == "delete element inet multiplex_mnp a1_4 { 198.18.1.3 }\n"
    assert compiler.set_update(after.dynamic_sets(), after) == ""
    changed = compile_server([policy(dict(CLIENTS_8080, ingress=[dict(CLIENTS_8080["ingress"][0],
                                                                      ports=[{"port": 8081}])]))], [SERVER, CLIENT])
    assert changed.hash != before.hash


def test_the_table_text():
    rs = compile_server([policy(CLIENTS_8080)], [SERVER, CLIENT])
    text = rs.render()
    assert f'comment "multiplex MultiNetworkPolicy {rs.hash}"' in text
    assert "elements = { 198.18.1.2 }" in text and "elements = { fd00:1::2 }" in text
    assert 'iifname "net1" jump in_1' in text and "oifname" not in text          # ingress only
    assert "ip saddr @a1_4 meta l4proto tcp th dport 8080 counter accept" in text
    assert "ct state established,related accept" in text and 'counter drop comment "default deny"' in text
    assert "nd-neighbor-solicit" in text                                           # IPv6 keeps working
    assert compiler.full_replace(rs).startswith("table inet multiplex_mnp\ndelete table inet multiplex_mnp\n")


def test_ingress_named_port_is_the_pods_own_and_an_unknown_one_fails_that_interface_closed():
    named = compile_server([policy({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]})], [SERVER])
    assert "meta l4proto tcp th dport 8080" in named.render()
    rs = compile_server([policy({"podSelector": {}, "ingress": [{"ports": [{"port": "nosuch"}]}]})], [SERVER])
    net1 = next(p for p in rs.interfaces if p.ifname == "net1")
    assert net1.errors and "named port 'nosuch' (TCP) is not a container port of pod team/server" in net1.errors[0]
    text = rs.render()
    assert 'iifname "net1" jump in_1' in text and 'oifname "net1" jump out_1' in text   # closed both ways
    assert "accept comment" not in text and not rs.sets


def test_egress_named_port_pairs_each_peer_with_its_own_number():
    other = PodInfo("team", "other", {}, {"web": [("TCP", 9443)]}, {NET: ["198.18.1.4"]})
    rs = compile_server([policy({"podSelector": {}, "policyTypes": ["Egress"],
                                 "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "web"}]}]})],
                        [SERVER, CLIENT, other])
    v4 = next(s for s in rs.sets.values() if s.type == "ipv4_addr . inet_service")
    assert v4.elements == ["198.18.1.1 . 8080", "198.18.1.4 . 9443"]      # the client has no "web"
    assert "meta l4proto tcp ip daddr . th dport @" in rs.render()


def test_a_broken_policy_closes_only_what_it_may_police():
    err = PolicyError("team/bad", "spec.podSelector", "bad")
    mine = compile_server([], [SERVER], broken=[("team", ("team/blue",), err)])
    assert [bool(p.errors) for p in mine.interfaces] == [False, True]
    assert compile_server([], [SERVER], broken=[("elsewhere", None, err)]).empty
    assert compile_server([], [SERVER], broken=[("team", ("team/red",), err)]).empty
    unknown_networks = compile_server([], [SERVER], broken=[("team", None, err)])
    assert all(p.errors for p in unknown_networks.interfaces)


def test_ip_block_and_namespace_selectors():
    spec = {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.1.0/24"]}},
        {"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {"matchLabels": {"role": "client"}}}]}]}
    elsewhere = PodInfo("x-ns", "c", {"role": "client"}, {}, {NET: ["198.18.2.9"]})
    view = compiler.PolicyView([policy(spec)], [], {"x-ns": {"team": "x"}}, [SERVER, CLIENT, elsewhere])
    rs = compiler.compile_pod(view, SERVER, [("net1", NET)])
    pods = next(s for s in rs.sets.values() if s.name.startswith("a") and s.type == "ipv4_addr")
    assert pods.elements == ["198.18.2.9"]                     # not the client of the policy's own namespace
    block = next(s for s in rs.sets.values() if s.name.startswith("b"))
    assert block.interval and not block.dynamic and "198.18.0.0/24" in block.elements
    assert not any(e.startswith("198.18.1.") for e in block.elements)


def test_the_engine_serves_a_call_only_with_the_same_state_root(tmp_path):
    engine = Engine(lambda: Snapshot([], [], []), str(tmp_path / "a"))
    hooks.register(engine)
    try:
        assert hooks.engine_for(str(tmp_path / "a")) is engine
        assert hooks.engine_for(str(tmp_path / "b")) is None
    finally:
        hooks.unregister(engine)
    assert hooks.engine_for(str(tmp_path / "a")) is None


def test_one_shot_add_closes_networks_that_policies_of_its_namespace_name(tmp_path):
    state = str(tmp_path)
    os.makedirs(os.path.join(state, "policy"))
    with open(os.path.join(state, "policy", "networks.json"), "w") as f:
        json.dump({"team": ["team/blue"], "other": ["*"]}, f)
    assert hooks._policed_networks(state, "team") == {"team/blue"}
    assert hooks._policed_networks(state, "nobody") == set()
    assert hooks._policed_networks(str(tmp_path / "none"), "team") == set()


def test_local_pods_come_from_complete_cache_records():
    record = {"netns": "/var/run/netns/p", "cniArgs": {"K8S_POD_NAMESPACE": "team", "K8S_POD_NAME": "web"},
              "attachments": [{"network": "podnet", "ifname": "eth0", "result": {"ips": [{"address": "198.18.0.2/24"}]}},
                              {"network": NET, "ifname": "net1", "result": {"ips": [{"address": "fd00:1::5/64"}]}},
                              {"network": "team/red", "ifname": "net2", "result": None}]}
    pod = local_pod_from_record("cid", record)
    assert pod == LocalPod("cid", "/var/run/netns/p", "team", "web",
                           [("eth0", "podnet", ["198.18.0.2"]), ("net1", NET, ["fd00:1::5"])])
    assert local_pod_from_record("cid", dict(record, cniArgs={})) is None


@pytest.mark.root   # setns(2), even into its own netns, needs CAP_SYS_ADMIN
def test_tcp_probes_of_the_lab_matrix_on_loopback():
    """multiplex/policy/mnp/matrix.py (the lab's allowed/denied matrix): a listener answers, a
    closed port does not, in the caller's own netns (given as its /proc path)."""
    from multiplex.policy.mnp.matrix import serve_tcp, tcp_matrix

    me = f"/proc/{os.getpid()}/task/{__import__('threading').get_native_id()}/ns/net"
    import socket

    with socket.socket() as s:      # a free port, then a closed one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    close = serve_tcp(me, port)
    try:
        got = tcp_matrix([(me, "127.0.0.1", port), (me, "::1", port), (me, "127.0.0.1", 1)], timeout=0.5)
    finally:
        close()
    assert list(got.values()) == [True, True, False]


class _RecordingApplier:
    """Stands for apply.Applier: records (netns, structure hash or "" for no table)."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.during = None

    def apply(self, netns, ruleset, verify=False):
        self.calls.append((netns, "" if ruleset.empty else ruleset.hash))
        if self.during is not None:
            hook, self.during = self.during, None
            hook()
        return "full"

    def forget(self, netns):
        pass

    def remove(self, netns):
        self.calls.append((netns, "removed"))


def test_a_pass_leaves_alone_a_pod_that_an_add_touched_after_the_pass_read_its_view(tmp_path):
    """The ADD applied the pod's rules with its labels; a pass that read its view before (the
    pod then unknown: no labels, no policy) must not put back an older, open, table."""
    applier = _RecordingApplier()
    spec = {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
            "metadata": {"name": "p", "namespace": "team", "annotations": {"k8s.v1.cni.cncf.io/policy-for": "blue"}},
            "spec": CLIENTS_8080}
    engine = Engine(lambda: Snapshot([spec], [], []), str(tmp_path), applier=applier)
    n1, n2 = tmp_path / "n1", tmp_path / "n2"          # stand-ins for the pods' netns paths
    n1.mkdir()
    n2.mkdir()
    first = LocalPod("cid-1", str(n1), "team", "client", [("net1", NET, ["198.18.1.2"])])
    late = LocalPod("cid-2", str(n2), "team", "server", [("net1", NET, ["198.18.1.1"])])
    server = {"metadata": {"name": "server", "namespace": "team", "labels": {"role": "server"}}}
    engine.local_pods = lambda: [first, late]           # the pass sees the server without its labels
    applier.during = lambda: engine.enforce_add(late, server)   # its ADD lands while the pass is under way
    engine.sync_all()
    on_server = [h for netns, h in applier.calls if netns == str(n2)]
    assert len(on_server) == 1 and on_server[0] != "", applier.calls   # the ADD's table, nothing after it
    engine.sync_all()                                   # the pass the ADD queued: the server with its labels
    assert [h for netns, h in applier.calls if netns == str(n2)] == on_server * 2


def test_a_local_pod_whose_labels_are_unknown_is_closed_not_left_open(tmp_path):
    """Neither watched nor readable: compiled without labels, a pod would escape every policy that
    selects by label (fail open). It is closed on the networks its namespace's policies police,
    until a pass knows its labels; a network no policy names stays open."""
    spec = {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
            "metadata": {"name": "p", "namespace": "team", "annotations": {"k8s.v1.cni.cncf.io/policy-for": "blue"}},
            "spec": CLIENTS_8080}
    engine = Engine(lambda: Snapshot([spec], [], []), str(tmp_path), applier=_RecordingApplier())
    pod = LocalPod("cid-s", str(tmp_path / "ns"), "team", "server", [("net1", NET, ["198.18.1.1"]),
                                                                     ("eth0", "podnet", ["198.18.0.9"])])
    unknown = engine.compile(engine.view(engine.snapshot(), [pod]), pod)
    assert not unknown.empty
    net1 = next(p for p in unknown.interfaces if p.ifname == "net1")
    assert net1.errors and "labels" in str(net1.errors[0])
    assert all(not p.errors for p in unknown.interfaces if p.ifname == "eth0")
    # known labels: the server is selected and gets its real rules; a pod no policy selects, none
    engine._labels["cid-s"] = {"metadata": {"name": "server", "namespace": "team", "labels": {"role": "server"}}}
    known = engine.compile(engine.view(engine.snapshot(), [pod]), pod)
    assert all(not p.errors for p in known.interfaces) and not known.empty
    engine._labels["cid-s"] = {"metadata": {"name": "server", "namespace": "team", "labels": {"role": "other"}}}
    assert engine.compile(engine.view(engine.snapshot(), [pod]), pod).empty
