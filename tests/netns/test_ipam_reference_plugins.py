"""multiplex-ipam as the IPAM of Debian's reference `bridge` and `macvlan` (exec'd from CNI_PATH).

As root, everything in network namespaces this test makes: a node netns where the plugins run, and
pod netns. What a user checks: the leased address is on the pod's interface, pods ping each other
and the gateway, DEL leaves no interface and no lease.
"""
from __future__ import annotations

import os
import shutil

import pytest

from multiplex.ipam.sqlite.store import SQLiteStore
from tests.cnitool import CNI_PATH, addresses, links, nsexec, ping, run_plugin

pytestmark = [pytest.mark.root, pytest.mark.interop,
              pytest.mark.skipif(not os.path.isfile("/usr/lib/cni/bridge"), reason="needs containernetworking-plugins"),
              pytest.mark.skipif(not shutil.which("multiplex-ipam", path=CNI_PATH), reason="multiplex-ipam not installed")]

VERSION = "1.0.0"  # Debian's plugins stop at 1.0.0


def leases(data_dir) -> dict[str, set[str]]:
    with SQLiteStore(str(data_dir)) as s:
        out: dict[str, set[str]] = {}
        for lease in s.leases():
            out.setdefault(lease.owner.container_id, set()).add(str(lease.address))
        return out


def ipam(data_dir, *ranges) -> dict:
    return {"type": "multiplex-ipam", "ranges": [[{"subnet": r}] for r in ranges], "dataDir": str(data_dir)}


def test_reference_bridge_with_multiplex_ipam(node, netns_factory, tmp_path):
    conf = {"cniVersion": VERSION, "name": "refbr", "type": "bridge", "bridge": "mpxrefbr0", "isGateway": True,
            "ipam": ipam(tmp_path, "198.18.11.0/24", "fd00:11::/64")}
    pods = [netns_factory("pod") for _ in range(2)]
    results = []
    for n, pod in enumerate(pods):
        out = run_plugin("bridge", "ADD", conf, node=node, container_id=f"ref-{n}", netns=pod, ifname="eth0")
        assert out.ok, out
        results.append(out.out)
    try:
        for n, (pod, res) in enumerate(zip(pods, results)):
            want = {ip["address"] for ip in res["ips"]}
            assert want == {f"198.18.11.{n + 2}/24", f"fd00:11::{n + 2}/64"}
            assert want <= addresses(pod, "eth0")
            assert leases(tmp_path)[f"ref-{n}"] == {a.split("/")[0] for a in want}
        # the bridge took the gateway the IPAM returned
        assert "198.18.11.1/24" in addresses(node, "mpxrefbr0")
        assert ping(pods[0], "198.18.11.1") and ping(pods[0], "198.18.11.3") and ping(pods[1], "198.18.11.2")
        check = run_plugin("bridge", "CHECK", dict(conf, prevResult=results[0]), node=node, container_id="ref-0",
                           netns=pods[0], ifname="eth0")
        assert check.ok, check
    finally:
        for n, pod in enumerate(pods):
            out = run_plugin("bridge", "DEL", conf, node=node, container_id=f"ref-{n}", netns=pod, ifname="eth0")
            assert out.ok, out
    assert leases(tmp_path) == {}
    assert all("eth0" not in links(pod) for pod in pods)


def test_reference_macvlan_with_multiplex_ipam(node, netns_factory, tmp_path):
    # the master: one end of a veth pair inside the node netns (this kernel has no dummy links)
    nsexec(node, "ip", "link", "add", "mpxmv0", "type", "veth", "peer", "name", "mpxmv1")
    nsexec(node, "ip", "link", "set", "mpxmv0", "up")
    nsexec(node, "ip", "link", "set", "mpxmv1", "up")
    conf = {"cniVersion": VERSION, "name": "refmv", "type": "macvlan", "master": "mpxmv0", "mode": "bridge",
            "ipam": ipam(tmp_path, "198.18.12.0/24")}
    pods = [netns_factory("pod") for _ in range(2)]
    for n, pod in enumerate(pods):
        out = run_plugin("macvlan", "ADD", conf, node=node, container_id=f"mv-{n}", netns=pod, ifname="net1")
        assert out.ok, out
        assert out.out["ips"][0]["address"] == f"198.18.12.{n + 2}/24"
        assert f"198.18.12.{n + 2}/24" in addresses(pod, "net1")
    assert ping(pods[0], "198.18.12.3") and ping(pods[1], "198.18.12.2")
    # a second network sharing the pool: no address is handed out twice
    other = dict(conf, name="refmv-b", ipam=ipam(tmp_path, "198.18.12.0/24"))
    out = run_plugin("macvlan", "ADD", other, node=node, container_id="mv-0", netns=pods[0], ifname="net2")
    assert out.ok and out.out["ips"][0]["address"] == "198.18.12.4/24", out
    assert run_plugin("macvlan", "DEL", other, node=node, container_id="mv-0", netns=pods[0], ifname="net2").ok
    for n, pod in enumerate(pods):
        assert run_plugin("macvlan", "DEL", conf, node=node, container_id=f"mv-{n}", netns=pod, ifname="net1").ok
    assert leases(tmp_path) == {}


def test_refused_address_leaves_no_interface(node, netns_factory, tmp_path):
    """The IPAM refuses (code 103) and takes no lease; the runtime's DEL after the failed ADD (the
    reference bridge leaves its veth to it) removes the rest."""
    conf = {"cniVersion": VERSION, "name": "refbr2", "type": "bridge", "bridge": "mpxrefbr1",
            "ipam": ipam(tmp_path, "198.18.13.0/24"), "args": {"cni": {"ips": ["198.18.14.7/24"]}}}
    pod = netns_factory("pod")
    out = run_plugin("bridge", "ADD", conf, node=node, container_id="refused", netns=pod, ifname="eth0")
    assert out.rc == 1 and out.code == 103 and "out of range" in out.out["msg"], out
    assert leases(tmp_path) == {}
    assert run_plugin("bridge", "DEL", conf, node=node, container_id="refused", netns=pod, ifname="eth0").ok
    assert "eth0" not in links(pod) and leases(tmp_path) == {}
