"""Interop with Debian's containernetworking-plugins, through multiplex.

Their `bridge` and `macvlan` as external delegates (exec'd from CNI_PATH), with `host-local` and
with our `multiplex-ipam`; their `tuning` chained after our bridge. Each pod is checked from inside
its netns (addresses, MTU, MAC) and pods ping each other.
"""
from __future__ import annotations

import json
import os

import pytest

from tests.cnitool import addresses, ip_json, links, nsexec, ping
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = [pytest.mark.root, pytest.mark.interop]

REFERENCE = "/usr/lib/cni"
# Debian's plugins speak CNI up to 1.0.0: their NADs say so.


@pytest.fixture(autouse=True)
def reference_plugins():
    missing = [p for p in ("bridge", "macvlan", "host-local", "tuning") if not os.path.exists(f"{REFERENCE}/{p}")]
    if missing:
        pytest.fail(f"containernetworking-plugins missing {missing}: scripts/setup.sh installs them")


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf("mpx-pod", "198.18.0.0/24", isGateway=True, isDefaultGateway=True))
    return lab


def ipam(kind: str, subnet: str, lab: Lab) -> dict:
    if kind == "host-local":
        return {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": os.path.join(lab.root, "host-local")}
    return {"type": "multiplex-ipam", "ranges": [[{"subnet": subnet}]]}


def add_network(lab: Lab, name: str, conf: dict) -> None:
    """A NAD for `conf`. A config with a node path (host-local's `dataDir`) may not come from a NAD
    (a NAD writer must not choose node paths): as Multus allows, the admin writes it into confDir and
    the NAD, with an empty spec.config, names it."""
    if "dataDir" not in conf.get("ipam", {}):
        lab.add_nad(name, conf)
        return
    conf_dir = os.path.join(lab.root, "net.d")
    os.makedirs(conf_dir, exist_ok=True)
    with open(os.path.join(conf_dir, f"{name}.conf"), "w") as f:
        json.dump(dict(conf, name=name), f)
    lab.extra["confDir"] = conf_dir
    lab.add_nad(name, {})
    path = os.path.join(lab.nad_dir, f"default-{name}.json")
    with open(path) as f:
        doc = json.load(f)
    doc["spec"]["config"] = ""
    with open(path, "w") as f:
        json.dump(doc, f)


def two_pods(lab: Lab, networks: str) -> tuple[str, str]:
    spaces = []
    for name in ("a", "b"):
        lab.add_pod(name, networks)
        ns = lab.netns_factory("pod")
        out = lab.cni("ADD", name, ns)
        assert out.ok, out
        spaces.append(ns)
    return spaces[0], spaces[1]


def only(addrs: set[str]) -> str:
    assert len(addrs) == 1, addrs
    return next(iter(addrs)).split("/")[0]


@pytest.mark.parametrize("ipam_kind", ["host-local", "multiplex-ipam"])
def test_reference_bridge_as_external_delegate(lab, ipam_kind):
    add_network(lab, "refbr", {"cniVersion": "1.0.0", "type": "bridge", "bridge": "ref-br0", "ipam": ipam(ipam_kind, "198.18.10.0/24", lab)})
    a, b = two_pods(lab, "refbr")
    assert links(a) == {"lo", "eth0", "net1"}
    target = only(addresses(b, "net1"))
    assert target.startswith("198.18.10.")
    assert ping(a, target)
    status = lab.pod_status("a")
    assert [s["name"] for s in status] == ["podnet", "default/refbr"]
    # No CHECK here: the reference bridge's CHECK compares the bridge's MAC with the one in its ADD
    # result, and a Linux bridge takes a new MAC as ports come and go, so it fails on its own.
    for name, ns in (("a", a), ("b", b)):
        assert lab.cni("DEL", name, ns).ok
        assert links(ns) == {"lo"}
    assert lab.leases() == []


@pytest.mark.parametrize("ipam_kind", ["host-local", "multiplex-ipam"])
def test_reference_macvlan_as_external_delegate(lab, ipam_kind):
    # the macvlan master: one end of a veth pair inside the node, up
    nsexec(lab.node, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")
    nsexec(lab.node, "ip", "link", "set", "uplink0", "up")
    nsexec(lab.node, "ip", "link", "set", "uplink0p", "up")
    add_network(lab, "mv", {"cniVersion": "1.0.0", "type": "macvlan", "master": "uplink0", "mode": "bridge",
                       "ipam": ipam(ipam_kind, "198.18.11.0/24", lab)})
    a, b = two_pods(lab, "mv")
    kinds = {l["ifname"]: l.get("linkinfo", {}).get("info_kind") for l in ip_json(a, "-d", "link", "show")}
    assert kinds["net1"] == "macvlan"
    target = only(addresses(b, "net1"))
    assert target.startswith("198.18.11.")
    assert ping(a, target)
    assert lab.cni("CHECK", "a", a).ok
    for name, ns in (("a", a), ("b", b)):
        assert lab.cni("DEL", name, ns).ok
        assert links(ns) == {"lo"}
    assert lab.leases() == []


def test_reference_tuning_chained_after_our_bridge(lab):
    chain = {"cniVersion": "1.0.0", "plugins": [
        bridge_conf("mpx-tuned", "198.18.12.0/24"),
        {"type": "tuning", "mtu": 1280, "mac": "02:00:5e:00:53:01",
         "sysctl": {"net.ipv4.conf.net1.arp_notify": "1"}}]}  # Debian's tuning CHECK does not expand IFNAME
    lab.add_nad("tuned", chain)
    lab.add_pod("t", "tuned")
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "t", ns)
    assert out.ok, out
    link = ip_json(ns, "link", "show", "dev", "net1")[0]
    assert link["mtu"] == 1280 and link["address"] == "02:00:5e:00:53:01"
    assert nsexec(ns, "sysctl", "-n", "net.ipv4.conf.net1.arp_notify").stdout.strip() == "1"
    assert only(addresses(ns, "net1")).startswith("198.18.12.")
    assert lab.cni("CHECK", "t", ns).ok
    assert lab.cni("DEL", "t", ns).ok
    assert links(ns) == {"lo"} and lab.leases() == []
