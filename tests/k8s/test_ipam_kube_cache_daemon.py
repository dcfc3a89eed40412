"""The real `multiplex daemon` serving pods whose cluster network uses the kubernetes IPAM store:
the store reads IPPools and the node's IPBlocks from the daemon's watches, so after the node's
first claim every ADD and every DEL makes one IPBlock write and no IPAM read, where the same
calls made one-shot (a `multiplex` process per call) LIST pools and blocks each time.

The node is a netns; the test API server listens on its loopback (HTTPS + token, as a node's
kubeconfig), the daemon runs in it, and the runtime's calls go through an installed shim."""
from __future__ import annotations

import ipaddress
import os

import pytest

from multiplex.ipam.kube.model import BLOCKS, GROUP, VERSION, Block
from tests.cnitool import CNI_PATH, addresses, run_plugin
from tests.daemon.conftest import daemons, sock_dir  # noqa: F401
from tests.daemonproc import shim_path
from tests.k8s.apiserver import running_apiserver
from tests.k8s.ipam_kube_support import install_crds
from tests.netns.mpxlab import nad

pytestmark = [pytest.mark.root, pytest.mark.k8s]

POOL = "198.18.72.0/24"
IPAM_RESOURCES = ("ipblocks", "ippools")


@pytest.fixture
def node(netns_factory):
    return netns_factory("kc")


@pytest.fixture
def api(node, tmp_path):
    (tmp_path / "api").mkdir()
    with running_apiserver(str(tmp_path / "api"), netns=f"/var/run/netns/{node}", tls=True,
                           token="ipam-token") as server:
        install_crds(server)
        server.store.add({"apiVersion": f"{GROUP}/{VERSION}", "kind": "IPPool", "metadata": {"name": "pods"},
                          "spec": {"cidr": POOL}}, "ippools")
        server.store.add_node(node)
        bridge = f"mkc{os.getpid() % 100000}"
        conf = {"cniVersion": "1.1.0", "name": "podnet", "type": "multiplex-bridge", "bridge": bridge,
                "isGateway": True,
                "ipam": {"type": "multiplex-ipam", "store": "kubernetes", "range": POOL}}   # node: $NODE_NAME
        server.store.add_nad("podnet", "default", nad("podnet", conf)["spec"]["config"])
        yield server


def ipam_requests(api, since: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in api.requests[since:]:
        if r.resource in IPAM_RESOURCES and r.verb != "watch":
            key = f"{r.verb} {r.resource}"
            out[key] = out.get(key, 0) + 1
    return out


def pod_call(api, node, tmp_path, plugin: str, command: str, pod: str, netns: str, path: str):
    uid = api.store.get_pod(pod)["metadata"]["uid"]
    conf = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "clusterNetwork": "podnet",
            "kubeconfig": api.kubeconfig, "stateDir": str(tmp_path / "state"),
            "logFile": str(tmp_path / "multiplex.log")}
    before = len(api.requests)
    out = run_plugin(plugin, command, conf, node=node, container_id=f"cid-{pod}", netns=netns, ifname="eth0",
                     args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_UID={uid}",
                     path=path, extra_env={"NODE_NAME": node})
    assert out.ok, out
    return out, ipam_requests(api, before)


def held(api) -> dict[str, str]:
    """address -> containerID over every IPBlock the server holds."""
    return {a: v.container_id for b in map(Block.from_object, api.store.items(GROUP, VERSION, BLOCKS))
            for a, v in b.allocations.items()}


def test_through_the_daemon_each_add_and_del_is_one_block_write_and_no_ipam_read(  # noqa: F811
        api, node, netns_factory, sock_dir, daemons, tmp_path):  # noqa: F811
    d = daemons(str(tmp_path / "state"), os.path.join(sock_dir, "mpx.sock"), netns=node,
                kubeconfig=api.kubeconfig, node_name=node, controllers="none",
                env=dict(os.environ, NODE_NAME=node))     # as the DaemonSet sets it
    shim_dir = tmp_path / "bin"
    shim_path(shim_dir, d.socket_path, fallback="fail")
    path = f"{shim_dir}:{CNI_PATH}"
    pods = [f"web-{i}" for i in range(5)]
    for p in pods:
        api.store.add_pod(p, node_name=node)
    nets = {p: netns_factory("kp") for p in pods}

    seen, addrs = [], {}
    for p in pods:
        out, reqs = pod_call(api, node, tmp_path, "multiplex", "ADD", p, nets[p], path)
        [addr] = addresses(nets[p], "eth0")          # what the pod got, read back from its netns
        addrs[p] = str(ipaddress.ip_interface(addr).ip)
        assert {"ip": addr} == {"ip": out.out["ips"][0]["address"]}
        seen.append(reqs)
    print(f"\nIPAM requests per ADD through the daemon: {seen}")
    # the first IPAM call starts the daemon's IPAM watches (their first lists, the pools' block-size
    # check: the cache's warm-up, once per daemon), then claims a block with its create
    assert seen[0] == {"list ippools": 1, "list ipblocks": 2, "create ipblocks": 1}
    assert all(r == {"update ipblocks": 1} for r in seen[1:]), seen
    assert held(api) == {addrs[p]: f"cid-{p}" for p in pods}
    assert len(set(addrs.values())) == len(pods)

    _, reqs = pod_call(api, node, tmp_path, "multiplex", "DEL", pods[0], nets[pods[0]], path)
    assert reqs == {"update ipblocks": 1}
    assert addrs[pods[0]] not in held(api)

    # today's figure, same node and API: a one-shot multiplex per call LISTs pools and blocks
    api.store.add_pod("oneshot", node_name=node)
    ns = netns_factory("kp")
    _, reqs = pod_call(api, node, tmp_path, "multiplex", "ADD", "oneshot", ns, CNI_PATH)
    print(f"one-shot ADD: {reqs}")
    assert reqs == {"list ippools": 1, "list ipblocks": 1, "update ipblocks": 1}
    pod_call(api, node, tmp_path, "multiplex", "DEL", "oneshot", ns, CNI_PATH)
    for p in pods[1:]:
        pod_call(api, node, tmp_path, "multiplex", "DEL", p, nets[p], path)
    assert held(api) == {}
    assert d.proc.poll() is None
