"""The shared IPAM through multiplex, in network namespaces: one address space across networks
whose subnets overlap, and a leases database truncated under a live pod.

What a user checks: the addresses on each pod's interfaces, the lease rows, the damaged file kept
beside the rebuilt database, and that DEL leaves no lease behind.
"""
from __future__ import annotations

import glob
import ipaddress
import json
import os
import subprocess

import pytest

from tests.cnitool import addresses
from tests.netns.mpxlab import Lab, bridge_lab

pytestmark = pytest.mark.root


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    """The cluster network on 198.18.72.0/24 (eth0) and a NAD `half` on 198.18.72.0/25 (net1)."""
    return bridge_lab(node, str(tmp_path), netns_factory, ("mpx-wide", "198.18.72.0/24"),
                      half=("mpx-half", "198.18.72.0/25"))


def v4(ns: str, dev: str) -> list[str]:
    return [a.split("/")[0] for a in addresses(ns, dev) if ipaddress.ip_interface(a).version == 4]


def add_pod(lab: Lab, name: str) -> str:
    return lab.attach(name, "half")


def test_eth0_on_a_24_and_net1_on_a_25_of_it_never_share_an_address(lab):
    held: dict[str, list[tuple[str, str]]] = {}
    pods = {}
    for name in ("a", "b", "c"):
        pods[name] = ns = add_pod(lab, name)
        for ifname in ("eth0", "net1"):
            got = v4(ns, ifname)
            assert len(got) == 1, (name, ifname, got)
            held.setdefault(got[0], []).append((name, ifname))
    assert all(len(owners) == 1 for owners in held.values()), held
    assert len(held) == 6
    for name, ns in pods.items():
        assert lab.cni("DEL", name, ns).ok
    assert lab.leases() == []


def test_a_truncated_database_under_a_live_pod_never_hands_out_its_addresses(lab):
    live = add_pod(lab, "live")
    live_addrs = set(v4(live, "eth0") + v4(live, "net1"))
    db = os.path.join(lab.state_dir, "ipam", "leases.db")
    os.truncate(db, 0)                                     # the disk lost the database

    nxt = add_pod(lab, "next")
    next_addrs = set(v4(nxt, "eth0") + v4(nxt, "net1"))
    assert len(next_addrs) == 2 and not (next_addrs & live_addrs)
    assert glob.glob(db + ".damaged-*"), "the damaged file is kept for the admin"
    leased = {row[1]: row[4] for row in lab.leases()}       # address -> container
    assert {a: leased.get(a) for a in live_addrs} == {a: "cid-live" for a in live_addrs}

    assert lab.cni("DEL", "live", live).ok and lab.cni("DEL", "next", nxt).ok
    assert lab.leases() == []


def ipam_check(lab: Lab, *extra: str) -> tuple[int, dict]:
    from click.testing import CliRunner

    from multiplex.cli.commands import cli

    result = CliRunner().invoke(cli, ["ipam", "check", "--data-dir", os.path.join(lab.state_dir, "ipam"),
                                      "--cache-dir", os.path.join(lab.state_dir, "cache"), "-o", "json", *extra])
    return result.exit_code, json.loads(result.stdout)


def test_ipam_check_looks_into_the_pods_netns(lab):
    pod = add_pod(lab, "p")
    rc, report = ipam_check(lab)
    assert rc == 0 and report["clean"], json.dumps(report)
    assert report["notLive"] == [] and report["cachedAttachments"] == 2
    subprocess.run(["ip", "-n", pod, "link", "del", "net1"], check=True)   # the interface is gone
    rc, report = ipam_check(lab)
    assert [(i["containerID"], i["ifname"], i["network"]) for i in report["notLive"]] == \
        [("cid-p", "net1", "default.half")]
    assert lab.cni("DEL", "p", pod).ok
    assert lab.leases() == []
