"""MultiNetworkPolicy through a real node daemon (`multiplex daemon --controllers policy` on a
local directory) and its shim, as a runtime would call it.

What a user checks: the rules are in place when ADD returns (a probe right after it is already
denied), a policy changed, deleted and added while a client keeps connecting takes effect (the
time printed), a policy that cannot be applied closes the pod's interface and shows in the log,
the metrics and `multiplex policy show`, CHECK fails once the table was removed by hand, DEL takes
the table away, and a chained reference plugin (bandwidth) enforces beside the policy.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.cnitool import NetnsPool, ip_json, nsexec, run_plugin
from tests.daemonproc import MULTIPLEX, DaemonProcess, shim_path
from tests.netns import mnplab
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = pytest.mark.root

CLIENT_8080 = {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                            "ports": [{"protocol": "TCP", "port": 8080}]}]}


class Node:
    """A node netns with a lab (objects under root/objects, state under root/state), a daemon
    serving it, its shim, pods with servers."""

    def __init__(self, tmp: str, pool: NetnsPool, servers: mnplab.Servers, sock_dir: str):
        self.pool, self.servers = pool, servers
        self.objects = os.path.join(tmp, "objects")
        self.state = os.path.join(tmp, "state")
        self.node = pool.make("node")
        self.lab = Lab(node=self.node, root=self.objects, netns_factory=pool.make,
                       extra={"stateDir": self.state, "namespaceIsolation": False})
        tag = f"{os.getpid() % 100000}"
        self.lab.add_nad("podnet", bridge_conf(f"mndp{tag}", "198.18.70.0/24"))
        self.lab.add_nad("blue", bridge_conf(f"mndb{tag}", "198.18.71.0/24", "fd00:71::/64"))
        self.daemon = DaemonProcess(self.state, os.path.join(sock_dir, "mpx.sock"), netns=self.node,
                                    local_dir=self.objects, controllers="policy")
        self.shim = shim_path(os.path.join(tmp, "bin"), self.daemon.socket_path, fallback="fail")
        self.netns: dict[str, str] = {}

    def write(self, kind_dir: str, name: str, obj: dict) -> None:
        d = os.path.join(self.objects, kind_dir)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".tmp-{name}.json")
        with open(tmp, "w") as f:
            json.dump(obj, f)
        os.rename(tmp, os.path.join(d, f"{name}.json"))

    def remove(self, kind_dir: str, name: str) -> None:
        os.unlink(os.path.join(self.objects, kind_dir, f"{name}.json"))

    def cni(self, command: str, pod: str, config: dict = None):
        return run_plugin(self.shim, command, config or self.lab.config(), node=self.node,
                          container_id=f"cid-{pod}", netns=self.netns[pod],
                          args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}")

    def add_pod(self, name: str, labels: dict, ports: dict = None, networks: str = "blue", config: dict = None) -> dict:
        mnplab.write_pod(self.lab.pod_dir, mnplab.pod_object(name, "default", labels, networks, ports))
        self.netns[name] = self.pool.make("pod")
        self.servers.start(self.netns[name])
        out = self.cni("ADD", name, config)
        assert out.ok, (out, self.daemon.stderr())
        return out.out

    def addrs(self) -> dict[str, dict[int, str]]:
        return {p["metadata"]["name"]: mnplab.blue_addresses(p) for p in mnplab.read_pods(self.lab.pod_dir)}

    def probe(self, src: str, dst: str, kind: str, family: int = 4) -> bool:
        return mnplab.probe(self.netns[src], self.addrs()[dst][family], kind)

    def tables(self, pod: str) -> str:
        return nsexec(self.netns[pod], "nft", "list", "tables").stdout


@pytest.fixture
def node(tmp_path):
    pool, servers = NetnsPool("mpx"), mnplab.Servers()
    sock_dir = tempfile.mkdtemp(prefix="mpxm-")
    n = None
    try:
        n = Node(str(tmp_path), pool, servers, sock_dir)
        yield n
    finally:
        if n is not None:
            n.daemon.close()
        servers.close()
        pool.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def wait_until(check, timeout: float = 15.0, step: float = 0.05) -> float:
    """Seconds until check() is true (AssertionError after `timeout`)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {check.__doc__ or check}")
        time.sleep(step)
    return time.monotonic() - started


def policy_show(node: Node, pod: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", node.node, MULTIPLEX, "policy", "show", f"default/{pod}",
                          "--state-dir", node.state], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_rules_before_add_returns_then_live_changes_check_and_del(node):
    node.write("multinetworkpolicies", "clients", mnplab.policy("clients", CLIENT_8080))
    node.daemon.start()
    node.add_pod("b", {"role": "client"})
    node.add_pod("c", {"role": "other"})
    node.add_pod("a", {"role": "server"}, {"web": 8080})
    # no wait: the ADD of a returned, so its rules are there
    assert not node.probe("c", "a", "tcp8080"), "c reached a right after ADD: the policy was not in place"
    assert not node.probe("c", "a", "tcp8080", 6)
    assert node.probe("b", "a", "tcp8080") and node.probe("b", "a", "tcp8080", 6)
    assert not node.probe("b", "a", "tcp9090") and not node.probe("b", "a", "icmp")
    assert node.probe("a", "c", "tcp9090") and node.probe("c", "b", "udp5353")   # unselected pods stay open
    shown = policy_show(node, "a")
    print("\n$ multiplex policy show default/a\n" + shown)
    assert "default/clients" in shown and "net1" in shown and "ingress" in shown, shown

    # CHECK passes, then fails once the table is removed by hand
    assert node.cni("CHECK", "a").ok
    nsexec(node.netns["a"], "nft", "delete", "table", "inet", "multiplex_mnp")
    bad = node.cni("CHECK", "a")
    assert bad.code == 104 and "MultiNetworkPolicy table is missing" in bad.out["msg"], bad

    # while c keeps connecting: the policy changed (c allowed), deleted, added again; the change
    # also puts back the table removed by hand (a set update that fails is a full replace)
    c_reaches_a = lambda: "multiplex_mnp" in node.tables("a") and node.probe("c", "a", "tcp8080", 4)  # noqa: E731
    node.write("multinetworkpolicies", "clients", mnplab.policy("clients", dict(
        CLIENT_8080, ingress=[{"from": [{"podSelector": {"matchExpressions": [
            {"key": "role", "operator": "In", "values": ["client", "other"]}]}}], "ports": [{"port": 8080}]}])))
    changed = wait_until(c_reaches_a)
    assert not node.probe("c", "a", "tcp9090")
    node.remove("multinetworkpolicies", "clients")
    deleted = wait_until(lambda: node.probe("c", "a", "tcp9090"))
    assert "multiplex_mnp" not in node.tables("a")
    node.write("multinetworkpolicies", "deny", mnplab.policy("deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    added = wait_until(lambda: not node.probe("b", "a", "tcp8080", 6))
    print(f"\npolicy changed -> c reaches a: {changed:.2f} s; deleted -> open: {deleted:.2f} s; "
          f"added -> closed: {added:.2f} s (the daemon polls its local directory every 1 s)")
    assert not node.probe("a", "b", "tcp8080")   # b is selected too now

    # DEL: the table goes with the pod (its netns is still there)
    assert "multiplex_mnp" in node.tables("a")
    assert node.cni("DEL", "a").ok
    assert "multiplex_mnp" not in node.tables("a")
    assert not os.path.exists(os.path.join(node.state, "policy", "pods", "cid-a.json"))


def test_a_policy_that_cannot_be_applied_fails_closed_and_is_reported(node):
    node.daemon.start()
    node.add_pod("b", {"role": "client"})
    node.add_pod("c", {"role": "other"})
    node.add_pod("a", {"role": "server"}, {"web": 8080})
    assert node.probe("b", "a", "tcp8080")
    bad_selector = dict(CLIENT_8080, ingress=[{"from": [{"podSelector": {"matchExpressions": [
        {"key": "role", "operator": "Near", "values": ["client"]}]}}]}])
    node.write("multinetworkpolicies", "broken", mnplab.policy("broken", bad_selector))
    wait_until(lambda: not node.probe("b", "a", "tcp8080"))
    # closed both ways on that network, for every pod of the namespace (the selector cannot say which)
    assert not node.probe("a", "b", "udp5353", 6) and not node.probe("b", "a", "icmp")
    status, metrics = node.daemon.get("/metrics")
    assert 'multiplex_policy_errors_total{policy="default/broken"}' in metrics, metrics[-2000:]
    assert "'Near' is not one of In, NotIn, Exists, DoesNotExist" in node.daemon.stderr()
    assert "fail closed" in policy_show(node, "a") or "Near" in policy_show(node, "a")

    assert not node.probe("b", "c", "tcp9090")
    # fixed, but naming a port the server does not have: only the server's interface closes (both ways)
    node.write("multinetworkpolicies", "broken", mnplab.policy("broken", dict(
        CLIENT_8080, ingress=[{"ports": [{"port": "nosuch"}]}])))
    wait_until(lambda: node.probe("b", "c", "udp5353", 6))
    assert not node.probe("b", "a", "tcp8080") and not node.probe("b", "a", "tcp9090")
    assert not node.probe("a", "c", "tcp8080")
    assert "named port 'nosuch'" in policy_show(node, "a")
    node.write("multinetworkpolicies", "broken", mnplab.policy("broken", dict(
        CLIENT_8080, ingress=[{"ports": [{"port": "web"}]}])))
    wait_until(lambda: node.probe("b", "a", "tcp8080"))
    assert not node.probe("b", "a", "tcp9090")


def test_a_chained_reference_plugin_enforces_beside_the_policy(node):
    """A NAD conflist [multiplex-bridge, bandwidth]: the reference bandwidth plugin shapes the
    pod's traffic on the host veth (a tbf qdisc), the policy filters in the pod: both hooks on one
    attachment, both undone by DEL."""
    if not os.path.exists("/usr/lib/cni/bandwidth"):
        pytest.fail("the reference bandwidth plugin is missing: apt-get install containernetworking-plugins")
    bridge = f"mnds{os.getpid() % 100000}"
    conflist = {"cniVersion": "1.0.0", "name": "shaped", "plugins": [
        bridge_conf(bridge, "198.18.72.0/24"),
        {"type": "bandwidth", "ingressRate": 8000000, "ingressBurst": 65536}]}
    node.lab.add_nad("shaped", mnplab_nad("shaped", conflist))
    node.write("multinetworkpolicies", "shaped", mnplab.policy(
        "shaped", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 8080}]}]},
        policy_for="shaped"))
    node.daemon.start()
    node.add_pod("s", {"role": "server"}, networks="shaped")
    host_veths = [link["ifname"] for link in ip_json(node.node, "link", "show", "master", bridge)]
    assert len(host_veths) == 1, host_veths
    qdiscs = "".join(nsexec(node.node, "tc", "qdisc", "show", "dev", v).stdout for v in host_veths)
    assert "tbf" in qdiscs, (host_veths, qdiscs)
    ruleset = nsexec(node.netns["s"], "nft", "list", "table", "inet", "multiplex_mnp").stdout
    assert 'iifname "net1" jump' in ruleset and "tcp dport 8080 counter" in ruleset, ruleset
    assert node.cni("DEL", "s").ok
    assert "multiplex_mnp" not in node.tables("s")
    assert not any(v in nsexec(node.node, "ip", "link", "show").stdout for v in host_veths)


def mnplab_nad(name: str, conflist: dict) -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"config": json.dumps(conflist)}}
