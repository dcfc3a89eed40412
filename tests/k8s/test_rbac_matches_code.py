"""The RBAC in manifests/ is exactly what the code does with the API, both ways.

Each role's code paths run against the test API server (tests/k8s/apiserver.py records every
request it serves as verb + resource); each request is mapped to (apiGroup, resource, verb) and
must be granted to the account that role runs under, and every rule granted to that account must
be used by some recorded request (nothing unused, no wildcard).

- the node account (`kube-system/multiplex`, the CNI plugin with the node kubeconfig, and the node
  daemon in the DaemonSet): plugin ADD/CHECK/DEL/GC with the pods and NADs from the API
  (network-status patched back) and a network on the kubernetes IPAM store, plus the store's rarer
  paths (a requested address, a lost claim, a takeover, a borrow, a pool with a nodeSelector,
  release, CNI GC, the routed delegate's view), and the `nad-namespaces` authorize hook (a NAD with
  an allowed-namespace-selector: the pod's Namespace read); and a real `multiplex daemon` run as
  the DaemonSet runs it (its `--controllers`: node-registry, vxlan-peers, bgp with a settings file
  and BIRD, policy with the MultiNetworkPolicy CRD served), with a Namespace, a
  MultiNetworkPolicy, an IPPool and an IPBlock in the API so every watch starts: the informers'
  list + watch of pods (this node's and the cluster's), NADs, nodes, namespaces, policies, pools
  and blocks, and the node registry's patch of its Node's annotation. That patch, captured
  before and after, is also run through manifests/50-admission-policy.yaml's `multiplex-node-facts`
  policy: allowed for its own node, denied when tampered with;
- the IPAM collector's account (`kube-system/multiplex-ipam-gc`, `multiplex ipam gc`): marks,
  frees, a conflict re-read, a block handed over, a block released.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import time
from typing import Optional

import pytest
import yaml

from multiplex.cni.valid import Keep
from multiplex.ipam import gc
from multiplex.ipam.kube.model import API_VERSION, BLOCKS, POOL_KIND, POOLS, Block
from tests.k8s.ipam_kube_support import node_routes, REPO, cluster, install_crds, ipam_conf, owner, take  # noqa: F401

NODE_ACCOUNT = ("kube-system", "multiplex")
GC_ACCOUNT = ("kube-system", "multiplex-ipam-gc")
Rule = tuple[str, str, str]   # (apiGroup, resource, verb)


# --- what the manifests grant ------------------------------------------------------------------

def manifest_documents() -> list[dict]:
    docs = []
    for path in sorted(glob.glob(os.path.join(REPO, "manifests", "*.yaml"))):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def granted(account: tuple[str, str]) -> set[Rule]:
    """Every (apiGroup, resource, verb) the ClusterRoles bound to a service account allow."""
    docs = manifest_documents()
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    out: set[Rule] = set()
    for b in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        if any(s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) == account for s in b["subjects"]):
            role = roles[b["roleRef"]["name"]]
            out |= {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]}
    return out


# --- what the code does --------------------------------------------------------------------------

def used(api) -> set[Rule]:
    """The requests the server saw, as RBAC names them (group from the server's resource types)."""
    group = {plural: g for (g, plural) in api.store.types}
    return {(group[r.resource], r.resource, r.verb) for r in api.requests if r.resource}


def report(role: str, rules: set[Rule]) -> None:
    print(f"\n{role} used: " + ", ".join(f"{g or 'core'}/{r} {v}" for g, r, v in sorted(rules)))


def run_ipam_store_paths(c) -> None:
    """The kubernetes IPAM store as the CNI plugin drives it on nodes n1..n3 (store.py interface)."""
    c.pool("tiny", "198.18.106.0/28", blockSize=30, nodeSelector={"kubernetes.io/os": "linux"})
    for n in ("n1", "n2", "n3"):
        c.node(n, labels={"kubernetes.io/os": "linux"})
    conf = ipam_conf("198.18.106.0/28", network="tiny")
    # claims (create), the hot path (update), until the pool of 3 blocks runs out
    take(c.store("n1"), conf, owner("c1", network="tiny", pod="p1"))
    take(c.store("n1"), conf, owner("c2", network="tiny", pod="p2"))
    take(c.store("n2"), conf, owner("c3", network="tiny", pod="p3"))
    take(c.store("n2"), conf, owner("c4", network="tiny", pod="p4"), requested="198.18.106.10")  # get
    c.store("n2").release(owner("c4", network="tiny", pod="p4"))
    # n3 claims what is left, then takes over an empty block or borrows an address
    take(c.store("n3"), conf, owner("c5", network="tiny", pod="p5"))
    take(c.store("n3"), conf, owner("c6", network="tiny", pod="p6"))
    c.store("n1").gc("tiny", Keep(pairs=frozenset({("c1", "eth0")})))
    node_routes(c.store("n3"))
    c.store("n1").usage(conf.range_sets[0], conf.exclude)
    # a claim whose answer was lost: the retried create answers AlreadyExists, the block is re-read
    store = c.store("n3")
    real_create = store.client.create_object
    calls = []

    def lost_answer(*a, **kw):
        out = real_create(*a, **kw)
        calls.append(1)
        if len(calls) == 1:
            from multiplex.k8s.errors import AlreadyExists
            raise AlreadyExists("lost answer", "test")
        return out

    c.pool("wide", "198.18.107.0/24")
    store.client.create_object = lost_answer
    try:
        take(store, ipam_conf("198.18.107.0/24", network="wide"), owner("c7", network="wide", pod="p7"))
    finally:
        store.client.create_object = real_create


def run_ipam_gc_paths(c) -> None:
    """`multiplex ipam gc` passes: mark, free after the grace period, a conflict re-read, a block
    handed over, an empty block released."""
    c.pool("gcpool", "198.18.108.0/28", blockSize=30)
    for n in ("n1", "n2", "n3"):
        c.node(n)
    conf = ipam_conf("198.18.108.0/28", network="gcpool")
    for i, n in enumerate(("n1", "n2", "n2", "n3"), 1):
        c.api.store.add_pod(f"p{i}", node_name=n, uid=f"u{i}")
        take(c.store(n), conf, owner(f"c{i}", network="gcpool", pod=f"p{i}", uid=f"u{i}"))
    take(c.store("n1"), conf, owner("c9", network="gcpool"))
    c.api.store.delete_pod("p1")
    c.api.store.delete_node("n3")
    c.api.store.delete_node("n2")
    c.api.reset_counts()
    c.api.fail_next(1, 409, verbs="update", resource="ipblocks")   # another writer was first: re-read
    gc.collect(c.client("gc"), grace=10, now=lambda: 100.0)
    gc.collect(c.client("gc"), grace=10, now=lambda: 200.0)
    gc.collect(c.client("gc"), grace=10, now=lambda: 300.0)


# --- the node account: the CNI plugin ------------------------------------------------------------

@pytest.fixture
def node_api(node, tmp_path):
    """The test API server on the simulated node's loopback (multiplex runs inside the node)."""
    from tests.k8s.apiserver import running_apiserver

    (tmp_path / "api").mkdir()
    with running_apiserver(str(tmp_path / "api"), netns=f"/var/run/netns/{node}") as server:
        install_crds(server)
        for doc in manifest_documents():   # the MultiNetworkPolicy CRD, as manifests/ installs it
            if doc["kind"] == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == "MultiNetworkPolicy":
                server.store.add(doc, "customresourcedefinitions")
        yield server


@pytest.fixture
def node_lab(node, netns_factory, tmp_path, node_api):
    from tests.netns.mpxlab import Lab, bridge_conf

    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.extra = {"kubeconfig": node_api.kubeconfig, "nadDir": None, "podDir": None}

    def nad(name: str, conf: dict, annotations: Optional[dict] = None) -> None:
        node_api.store.add_nad(name, "default", json.dumps(dict(conf, cniVersion="1.1.0", name=name)),
                               annotations=annotations)

    nad("podnet", bridge_conf("mpx-pod", "198.18.110.0/24", isGateway=True, isDefaultGateway=True))
    blue = bridge_conf("mpx-blue", "198.18.111.0/24")
    blue["ipam"]["store"] = "kubernetes"
    # the NAD writer's authorize hook: only namespaces labelled team=blue (the pod's Namespace is read)
    nad("blue", blue, annotations={"multiplex.dev/allowed-namespace-selector": "team=blue"})
    node_api.store.add({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "default", "labels": {"team": "blue"}}}, "namespaces")
    node_api.store.add({"apiVersion": API_VERSION, "kind": POOL_KIND, "metadata": {"name": "blue"},
                        "spec": {"cidr": "198.18.111.0/24", "nodeSelector": {"kubernetes.io/os": "linux"}}}, POOLS)
    node_api.store.add_node("n1", labels={"kubernetes.io/os": "linux"})
    lab.api = node_api
    return lab


def run_plugin_paths(lab) -> None:
    """A pod with the cluster network and one on the kubernetes IPAM store: ADD, CHECK, GC, DEL."""
    conf = {k: v for k, v in lab.config().items() if v is not None}
    env = {"NODE_NAME": "n1"}
    pods = []
    for name in ("web", "db"):
        pod = lab.api.store.add_pod(name, "default", annotations={"k8s.v1.cni.cncf.io/networks": "blue"},
                                    node_name="n1")
        pods.append((name, lab.netns_factory("pod"), pod["metadata"]["uid"]))
    for name, ns, uid in pods:
        out = lab.cni("ADD", name, ns, config=conf, uid=uid, env=env)
        assert out.ok, out
        assert lab.api.store.get_pod(name)["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
    name, ns, uid = pods[0]
    assert lab.cni("CHECK", name, ns, config=conf, uid=uid, env=env).ok
    valid = {"cni.dev/valid-attachments": [{"containerID": f"cid-{name}", "ifname": i} for i in ("eth0", "net1")]}
    assert lab.cni("GC", None, None, config=dict(conf, **valid), env=env).ok
    for name, ns, uid in pods:
        assert lab.cni("DEL", name, ns, config=conf, uid=uid, env=env).ok


def daemon_args() -> list[str]:
    """The daemon container's flags in the DaemonSet that choose what it watches and runs."""
    [ds] = [d for d in manifest_documents() if d["kind"] == "DaemonSet"]
    [c] = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "daemon"]
    return [a for a in c["command"] if a.startswith("--controllers")]


@pytest.fixture
def daemon_run(node, node_api, tmp_path):
    """A real `multiplex daemon` for node n1 (in the node's netns, against the test API server, with
    the DaemonSet's controllers), until its node registry has published n1's facts. Returns
    (the requests it made, Node n1 before, Node n1 after). Stopped by its pid at the end."""
    from multiplex.controllers.node_registry import ANNOTATION
    from tests.daemonproc import DaemonProcess

    link = f"mpxu{os.getpid() % 100000}"
    # the node's underlay: a veth pair inside the node netns (this kernel has no dummy links)
    subprocess.run(["ip", "-n", node, "link", "add", link, "type", "veth", "peer", "name", link + "p"], check=True)
    subprocess.run(["ip", "-n", node, "addr", "add", "198.18.120.2/24", "dev", link], check=True)
    subprocess.run(["ip", "-n", node, "link", "set", link, "up"], check=True)
    before = _node(node_api, "n1")
    if before is None:   # node_lab adds it; alone, this fixture does
        node_api.store.add_node("n1", labels={"kubernetes.io/os": "linux"})
        before = _node(node_api, "n1")
    add_watched_objects(node_api)
    bgp_settings = tmp_path / "bgp.json"   # the DaemonSet's optional ConfigMap: here, BGP is asked for
    bgp_settings.write_text(json.dumps({"asn": 64512}))
    env = dict(os.environ, MULTIPLEX_BGP_CONFIG=str(bgp_settings))
    node_api.reset_counts()
    try:
        with DaemonProcess(tmp_path / "dstate", tmp_path / "d.sock", netns=node, kubeconfig=node_api.kubeconfig,
                           node_name="n1", extra_args=daemon_args() + ["--underlay-interface", link], env=env) as d:
            limit = time.monotonic() + 30
            while (ANNOTATION not in (_node(node_api, "n1")["metadata"].get("annotations") or {})
                   or not DAEMON_WATCHES <= used(node_api)):
                assert time.monotonic() < limit, (
                    f"within 30 s: {ANNOTATION} on n1? watches missing: {sorted(DAEMON_WATCHES - used(node_api))}"
                    f"\n{d.stderr()}")
                time.sleep(0.1)
            seen = used(node_api)
            # the bgp controller really ran (it leaves itself out without its settings file)
            assert (tmp_path / "dstate" / "bgp" / "bird.conf").exists(), d.stderr()
    finally:
        stop_leftover_bird(tmp_path / "dstate" / "bgp" / "bird.pid")
    return seen, before, _node(node_api, "n1")


#: what the DaemonSet's controllers watch: the pods (this node's; the cluster's for vxlan-peers and
#: policy), NADs, nodes (registry, bgp), namespaces and MultiNetworkPolicies (policy), IPPools and
#: IPBlocks (bgp, the IPAM cache)
DAEMON_WATCHES = {(g, r, v) for g, r in (("", "pods"), ("", "nodes"), ("", "namespaces"),
                                         ("k8s.cni.cncf.io", "network-attachment-definitions"),
                                         ("k8s.cni.cncf.io", "multi-networkpolicies"),
                                         ("ipam.multiplex.dev", "ippools"), ("ipam.multiplex.dev", "ipblocks"))
                  for v in ("list", "watch")}


def add_watched_objects(api) -> None:
    """One object of each kind the daemon's controllers watch, so each informer lists something."""
    api.store.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-red", "labels": {"team": "red"}}},
                  "namespaces")
    api.store.add({"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
                   "metadata": {"name": "clients", "namespace": "team-red",
                                "annotations": {"k8s.v1.cni.cncf.io/policy-for": "blue"}},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "red"}}}]}]}},
                  "multi-networkpolicies")
    api.store.add({"apiVersion": API_VERSION, "kind": POOL_KIND, "metadata": {"name": "rbac-routed"},
                   "spec": {"cidr": "198.18.122.0/24", "blockSize": 26}}, POOLS)
    import ipaddress

    block = Block(ipaddress.ip_network("198.18.122.0/26"), "rbac-routed", "198.18.122.0/24", "n1")
    api.store.add(block.to_object(), BLOCKS)
    api.store.add_pod("elsewhere", "team-red", labels={"team": "red"}, node_name="n2")   # another node's pod


def stop_leftover_bird(pidfile) -> None:
    """A BIRD the daemon did not stop (it crashed): stopped by its pid, if that pid is still BIRD."""
    import signal

    try:
        pid = int(open(pidfile).read().split()[0])
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "bird":
                return
    except (OSError, ValueError, IndexError):
        return
    os.kill(pid, signal.SIGTERM)


def _node(api, name: str) -> Optional[dict]:
    """The Node as the API server stores it (None: not there)."""
    from multiplex.k8s.errors import NotFound

    try:
        return copy.deepcopy(api.store.get_object("", "v1", "nodes", name))
    except Exception as e:  # noqa: BLE001 - the store raises its own not-found
        if isinstance(e, NotFound) or getattr(e, "code", None) == 404:
            return None
        raise


@pytest.mark.root
def test_the_node_account_is_granted_exactly_what_the_plugin_its_ipam_and_the_daemon_use(
        node_lab, cluster, daemon_run):  # noqa: F811
    node_lab.api.reset_counts()   # the daemon's requests are daemon_run's
    run_plugin_paths(node_lab)
    plugin = used(node_lab.api)
    report("plugin (ADD/CHECK/GC/DEL)", plugin)
    run_ipam_store_paths(cluster)
    store = used(cluster.api)
    report("kubernetes IPAM store", store)
    daemon = daemon_run[0]
    report("node daemon (informers, node registry)", daemon)
    rules = granted(NODE_ACCOUNT)
    assert plugin <= rules, f"used but not granted to the node account: {sorted(plugin - rules)}"
    assert store <= rules, f"used but not granted to the node account: {sorted(store - rules)}"
    assert daemon <= rules, f"used by the daemon but not granted to the node account: {sorted(daemon - rules)}"
    assert rules <= plugin | store | daemon, (
        f"granted to the node account but never used: {sorted(rules - plugin - store - daemon)}")
    # the daemon watches what its controllers cache and writes only its Node
    assert daemon == DAEMON_WATCHES | {("", "nodes", "patch")}, sorted(daemon ^ (DAEMON_WATCHES | {("", "nodes", "patch")}))
    # the plugin alone reads pods, NADs and (for the authorize hook) the pod's Namespace, writes
    # network-status and the pod's events
    assert {("", "pods", "get"), ("", "pods", "patch"), ("", "events", "create"), ("", "namespaces", "get"),
            ("k8s.cni.cncf.io", "network-attachment-definitions", "get")} <= plugin


def test_the_ipam_store_uses_only_what_the_node_account_has(cluster):  # noqa: F811
    """Without root (no netns): the store's side of the node account, one way."""
    run_ipam_store_paths(cluster)
    store = used(cluster.api)
    report("kubernetes IPAM store", store)
    assert store <= granted(NODE_ACCOUNT), sorted(store - granted(NODE_ACCOUNT))


# --- the IPAM collector's account ---------------------------------------------------------------

def test_the_gc_account_is_granted_exactly_what_ipam_gc_uses(cluster):  # noqa: F811
    run_ipam_gc_paths(cluster)
    rules, seen = granted(GC_ACCOUNT), used(cluster.api)
    report("ipam gc", seen)
    assert seen <= rules, f"used but not granted to the collector: {sorted(seen - rules)}"
    assert rules <= seen, f"granted to the collector but never used: {sorted(rules - seen)}"


def test_the_accounts_share_nothing_they_do_not_both_use():
    """The split: the node account deletes nothing (releasing blocks is the collector's); its lists
    and watches are the daemon's informers (pods, nodes, NADs, namespaces, MultiNetworkPolicies,
    IPPools, IPBlocks), which include the IPAM's block and pool lists;
    of Nodes it reads and patches (the annotation, narrowed by the admission policy). The collector
    cannot touch pods, NADs or create blocks."""
    node, collector = granted(NODE_ACCOUNT), granted(GC_ACCOUNT)
    assert not {r for r in node if r[2] in ("delete", "deletecollection", "*")}
    # the daemon's informers list and watch (the one-shot IPAM lists pools and blocks too); it writes
    # only its Node (an annotation, by the policy)
    assert {r for r in node if r[2] in ("list", "watch")} == DAEMON_WATCHES
    assert {r for r in node if r[1] == "namespaces"} == {("", "namespaces", v) for v in ("get", "list", "watch")}
    assert {r for r in node if r[1] == "nodes"} == {("", "nodes", v) for v in ("get", "list", "watch", "patch")}
    assert not {r for r in collector if r[1] in ("pods", "nodes") and r[2] != "list"}
    assert not {r for r in collector if r[1] == "network-attachment-definitions" or r[2] in ("create", "patch")}


# --- the daemon's Node patch through the admission policy ---------------------------------------

def facts_policy() -> dict:
    from tests.k8s.test_admission_policy import policies

    return policies()["multiplex-node-facts"]


def node_update(new: dict, old: dict, **kw) -> dict:
    from tests.k8s.test_admission_policy import request

    return request("UPDATE", "nodes", "", new, old, **kw)


@pytest.mark.root
def test_the_node_registrys_patch_is_allowed_only_on_its_own_node(node_api, daemon_run):
    """The patch the daemon sent passes the policy for n1; the same change made by another node, or
    with a legacy token, or anything else changed on the Node, is denied."""
    from multiplex.controllers.node_registry import ANNOTATION
    from tests.k8s.test_admission_policy import evaluate

    _, before, after = daemon_run
    assert evaluate(facts_policy(), node_update(after, before)) == []
    assert evaluate(facts_policy(), node_update(before, after)) == []   # removing it again

    def tampered(change) -> dict:
        new = copy.deepcopy(after)
        change(new)
        return new

    cases = {
        "taint": lambda n: n["spec"].update(taints=[{"key": "x", "effect": "NoSchedule"}]),
        "unschedulable": lambda n: n["spec"].update(unschedulable=True),
        "label": lambda n: n["metadata"]["labels"].update({"node-role.kubernetes.io/control-plane": ""}),
        "other annotation": lambda n: n["metadata"]["annotations"].update(other="x"),
        # the per-node ASN is the admin's (docs/bgp-routed.md): a node cannot pick its own
        "bgp-asn": lambda n: n["metadata"]["annotations"].update({"multiplex.dev/bgp-asn": "65001"}),
        "finalizer": lambda n: n["metadata"].update(finalizers=["example.com/hold"]),
    }
    for what, change in cases.items():
        out = evaluate(facts_policy(), node_update(tampered(change), before))
        assert out, f"{what}: allowed"
        assert not any(m.startswith("error:") for m in out), (what, out)
    assert evaluate(facts_policy(), node_update(after, before, node="n2")) == [
        "multiplex on node n2 may only annotate its own Node"]
    legacy = evaluate(facts_policy(), node_update(after, before, node=None))
    assert legacy and "bound service-account token" in legacy[0]
    # other users (kubelet, an admin) are not this policy's business
    assert evaluate(facts_policy(), node_update(tampered(cases["taint"]), before, user="kubernetes-admin")) is None
    assert ANNOTATION in after["metadata"]["annotations"]
