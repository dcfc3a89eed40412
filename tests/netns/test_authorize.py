"""Authorize hooks through the real multiplex binary, as root: a node netns, pods as netns, real
bridges and IPAM (tests/netns/mpxlab.py), and through the node daemon's shim.

What a user would check: a pod asking for three networks, the third refused by a hook, gets code
106 naming the hook and its reason, and nothing of the first two (no interface in the pod, no veth
or bridge on the node, no lease, no cache entry); lift the refusal and the same pod gets all three
and pings across; DEL leaves nothing. The admin's external hook answers the same way when the call
goes through the daemon, and a hook slower than its timeout denies or allows as configured.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat
import tempfile

import pytest

from tests.cnitool import addresses, links, ping
from tests.daemonproc import DaemonProcess, shim_path
from tests.netns.mpxlab import Lab, bridge_conf, nad

pytestmark = pytest.mark.root

POD_NET, BLUE, RED = "198.18.70.0/24", "198.18.71.0/24", "198.18.72.0/24"
ALLOWED = "multiplex.dev/allowed-namespaces"

# an admin's hook: refuses network default/red unless the file OPEN exists, allows everything else
HOOK = """#!/bin/sh
request=$(cat)
case "$request" in
  *'"network": "default/red"'*)
    if [ -e {open} ]; then echo '{{"allowed": true}}'
    else echo '{{"allowed": false, "reason": "red is for the payments team"}}'; fi;;
  *) echo '{{"allowed": true}}';;
esac
"""


@pytest.fixture
def lab(netns_factory, tmp_path):
    sfx = f"{os.getpid() % 10000}"
    lab = Lab(node=netns_factory("anode"), root=str(tmp_path / "lab"), netns_factory=netns_factory)
    os.makedirs(lab.root)
    lab.add_nad("podnet", bridge_conf(f"mpxa-p{sfx}", POD_NET, isGateway=True, isDefaultGateway=True))
    lab.add_nad("blue", bridge_conf(f"mpxa-b{sfx}", BLUE))
    lab.add_nad("red", bridge_conf(f"mpxa-r{sfx}", RED))
    lab.open_file = str(tmp_path / "open")
    lab.hook = str(tmp_path / "hook")
    with open(lab.hook, "w") as f:
        f.write(HOOK.format(open=lab.open_file))
    os.chmod(lab.hook, 0o755)
    return lab


def refuse_red(lab: Lab, how: str) -> dict:
    """Make `red` refused by `how` (the NAD's own annotation, or the admin's hook); the config."""
    if how == "nad-namespaces":
        obj = nad("red", bridge_conf(f"mpxa-r{os.getpid() % 10000}", RED))
        obj["metadata"]["annotations"] = {ALLOWED: "payments"}
        lab.add_nad("red", obj)
        return lab.config()
    return lab.config(authorizeHooks=[{"name": "corp", "path": lab.hook, "timeout": 10}])


def allow_red(lab: Lab, how: str) -> None:
    if how == "nad-namespaces":
        obj = nad("red", bridge_conf(f"mpxa-r{os.getpid() % 10000}", RED))
        obj["metadata"]["annotations"] = {ALLOWED: "payments, default"}
        lab.add_nad("red", obj)
    else:
        open(lab.open_file, "w").close()


@pytest.mark.parametrize("how,reason", [
    ("nad-namespaces", "namespace 'default' is not among the namespaces"),
    ("corp", "red is for the payments team"),
])
def test_a_refusal_at_attachment_3_of_3_leaves_nothing_of_1_and_2(lab, how, reason):
    config = refuse_red(lab, how)
    lab.add_pod("web", "blue, red")
    pod_ns = lab.netns_factory("apod")
    out = lab.cni("ADD", "web", pod_ns, config=config)
    assert out.rc == 1 and out.code == 106, out
    assert f"hook: {how}" in out.out["details"] and reason in out.out["msg"], out
    assert "default/red" in out.out["msg"], out
    assert lab.residue(pod_ns, kinds=("veth", "bridge")) == []

    # the refusal lifted, the same pod gets all three networks: the set-up could have attached them
    allow_red(lab, how)
    out = lab.cni("ADD", "web", pod_ns, config=config)
    assert out.ok, out
    assert links(pod_ns) == {"lo", "eth0", "net1", "net2"}
    red = [a.split("/")[0] for a in addresses(pod_ns, "net2")]
    assert red and ipaddress.ip_address(red[0]) in ipaddress.ip_network(RED)
    assert lab.cni("DEL", "web", pod_ns, config=config).ok
    assert links(pod_ns) == {"lo"} and lab.leases() == [] and lab.cache_entries() == []


def test_a_selector_admits_a_labelled_namespace_and_pods_ping_on_the_network(lab):
    """Two pods of namespace team-a (labelled team=red) on `infra/shared`, whose NAD admits
    namespaces by that label; a pod of team-b (team=blue) is refused."""
    for ns, team in (("team-a", "red"), ("team-b", "blue")):
        with open(os.path.join(lab.nad_dir, f"ns-{ns}.json"), "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": team}}}, f)
    obj = nad("shared", bridge_conf(f"mpxa-s{os.getpid() % 10000}", BLUE))
    obj["metadata"].update(namespace="infra", annotations={"multiplex.dev/allowed-namespace-selector": "team=red"})
    lab.add_nad("shared", obj, namespace="infra")
    config = lab.config(globalNamespaces=["infra"])
    pods = {}
    for name in ("a1", "a2"):
        lab.add_pod(name, "infra/shared", namespace="team-a")
        pods[name] = lab.netns_factory("apod")
        out = lab.cni("ADD", name, pods[name], container_id=f"cid-{name}", namespace="team-a", config=config)
        assert out.ok, out
    a2 = [a.split("/")[0] for a in addresses(pods["a2"], "net1")][0]
    assert ping(pods["a1"], a2)

    lab.add_pod("b1", "infra/shared", namespace="team-b")
    b1 = lab.netns_factory("apod")
    out = lab.cni("ADD", "b1", b1, container_id="cid-b1", namespace="team-b", config=config)
    assert out.rc == 1 and out.code == 106 and "hook: nad-namespaces" in out.out["details"], out
    assert "team=red" in out.out["msg"] and links(b1) == {"lo"}
    for name in ("a1", "a2"):
        assert lab.cni("DEL", name, pods[name], container_id=f"cid-{name}", namespace="team-a", config=config).ok
    assert lab.leases() == [] and lab.cache_entries() == []


@pytest.fixture
def daemon(lab, tmp_path):
    """A real multiplex daemon in the lab's node netns (local objects), stopped by its pid; the
    shim that calls it, with no fallback (a call that reaches the shim is served by the daemon)."""
    sock_dir = tempfile.mkdtemp(prefix="mpxz-")
    d = DaemonProcess(lab.state_dir, os.path.join(sock_dir, "mpx.sock"), netns=lab.node, local_dir=lab.root,
                      controllers="none")
    try:
        d.start()
        d.shim = shim_path(tmp_path / "bin", d.socket_path, fallback="fail")
        yield d
    finally:
        d.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_through_the_daemon_the_external_hook_allows_denies_and_times_out(lab, daemon):
    from tests.cnitool import run_plugin

    def add(pod: str, pod_ns: str, config: dict):
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"
        return run_plugin(daemon.shim, "ADD", config, node=lab.node, container_id=f"cid-{pod}", netns=pod_ns,
                          ifname="eth0", args=args)

    hooked = lab.config(authorizeHooks=[{"name": "corp", "path": lab.hook, "timeout": 10}])
    lab.add_pod("ok", "blue")
    ok_ns = lab.netns_factory("apod")
    out = add("ok", ok_ns, hooked)
    assert out.ok, (out, daemon.stderr())
    assert links(ok_ns) == {"lo", "eth0", "net1"}

    lab.add_pod("no", "blue, red")
    no_ns = lab.netns_factory("apod")
    out = add("no", no_ns, hooked)
    assert out.rc == 1 and out.code == 106 and "red is for the payments team" in out.out["msg"], out
    assert "hook: corp" in out.out["details"] and links(no_ns) == {"lo"}

    slow = os.path.join(os.path.dirname(lab.hook), "slow")
    with open(slow, "w") as f:
        f.write("#!/bin/sh\nexec sleep 60\n")
    os.chmod(slow, os.stat(slow).st_mode | stat.S_IXUSR)
    lab.add_pod("late", "blue")
    late_ns = lab.netns_factory("apod")
    out = add("late", late_ns, lab.config(authorizeHooks=[{"name": "slow", "path": slow, "timeout": 0.5}]))
    assert out.rc == 1 and out.code == 106 and "no answer within its timeout of 0.5s" in out.out["msg"], out
    assert links(late_ns) == {"lo"}
    out = add("late", late_ns, lab.config(authorizeHooks=[{"name": "slow", "path": slow, "timeout": 0.5,
                                                             "onTimeout": "allow"}]))
    assert out.ok, out
    assert links(late_ns) == {"lo", "eth0", "net1"}
    for pod, pod_ns in (("ok", ok_ns), ("late", late_ns)):
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"
        assert run_plugin(daemon.shim, "DEL", hooked, node=lab.node, container_id=f"cid-{pod}", netns=pod_ns,
                          ifname="eth0", args=args).ok
    assert lab.node_links("veth") == set() and lab.leases() == [] and lab.cache_entries() == []
