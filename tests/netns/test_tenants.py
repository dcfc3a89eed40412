"""Tenants through the real multiplex binary, as root: a node netns, pods as netns, NAD and pod
files (tests/netns/mpxlab.py).

What a tenant or an admin would check: two namespaces' NADs of one name get their own bridges (no
ping across, pods of one tenant ping), GC of one tenant leaves the other, pods made before the
identity change keep working and are cleaned by DEL; isolation on by default; the per-pod bound;
`cni-args.ips` without the NAD's opt-in refused; a NAD that names the meta plugin with a binDir
of its choice runs nothing and writes nothing.
"""
from __future__ import annotations

import ipaddress

import pytest

from delegates.bridge import default_bridge_name
from tests.cnitool import addresses, links, ping, run_plugin
from tests.netns.mpxlab import Lab, bridge_conf, old_multiplex

pytestmark = pytest.mark.root

ANN = "k8s.v1.cni.cncf.io/networks"


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    """The cluster network in `default`; `blue` in tenant-a and in tenant-b with the same config
    except their address ranges (one /24, disjoint ranges): on one bridge they would reach
    each other on-link."""
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf("mpx-pod", "198.18.0.0/24", isGateway=True, isDefaultGateway=True))
    for tenant, first, last in (("tenant-a", "198.18.10.10", "198.18.10.19"),
                                ("tenant-b", "198.18.10.20", "198.18.10.29")):
        lab.add_nad("blue", blue_conf(first, last), namespace=tenant)
    return lab


def blue_conf(first: str, last: str, **extra) -> dict:
    """A multiplex-bridge network without an explicit `bridge`: its default bridge is named after
    the network's identity."""
    return {"type": "multiplex-bridge", **extra,
            "ipam": {"type": "multiplex-ipam",
                     "ranges": [[{"subnet": "198.18.10.0/24", "rangeStart": first, "rangeEnd": last}]]}}


def add(lab: Lab, pod: str, networks, namespace: str, **config) -> tuple[str, object]:
    lab.add_pod(pod, networks, namespace=namespace)
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", pod, ns, container_id=f"cid-{namespace}-{pod}", namespace=namespace,
                  config=lab.config(**config) if config else None)
    return ns, out


def v4(ns: str, ifname: str) -> str:
    return [a.split("/")[0] for a in addresses(ns, ifname) if ipaddress.ip_interface(a).version == 4][0]


def node_bridges(lab: Lab) -> set[str]:
    return lab.node_links("bridge")


def test_same_named_nads_of_two_tenants_get_separate_bridges_and_no_traffic_across(lab):
    a1, out = add(lab, "a1", "blue", "tenant-a")
    assert out.ok, out
    a2, out = add(lab, "a2", "blue", "tenant-a")
    assert out.ok, out
    b1, out = add(lab, "b1", "blue", "tenant-b")
    assert out.ok, out

    bridges = node_bridges(lab)
    assert {default_bridge_name("tenant-a.blue"), default_bridge_name("tenant-b.blue")} <= bridges
    assert default_bridge_name("blue") not in bridges  # the bare name is nobody's bridge any more
    addr = {name: v4(ns, "net1") for name, ns in (("a1", a1), ("a2", a2), ("b1", b1))}
    assert all(ipaddress.ip_address(x) in ipaddress.ip_network("198.18.10.0/24") for x in addr.values())
    assert ping(a1, addr["a2"]) and ping(a2, addr["a1"]), "pods of one tenant cannot reach each other"
    assert not ping(b1, addr["a1"], timeout=1) and not ping(b1, addr["a2"], timeout=1)
    assert not ping(a1, addr["b1"], timeout=1)
    # network-status names each network with its namespace
    assert [s["name"] for s in lab.pod_status("b1", namespace="tenant-b")] == ["podnet", "tenant-b/blue"]


def test_gc_of_one_tenant_leaves_the_other(lab):
    a1, out = add(lab, "a1", "blue", "tenant-a")
    assert out.ok, out
    b1, out = add(lab, "b1", "blue", "tenant-b")
    assert out.ok, out
    out = lab.cni("GC", None, None, config=lab.gc_config("cid-tenant-a-a1", "cid-tenant-b-b1"))
    assert out.ok, out
    assert links(a1) == links(b1) == {"lo", "eth0", "net1"}
    out = lab.cni("GC", None, None, config=lab.gc_config("cid-tenant-a-a1"))
    assert out.ok, out
    assert links(b1) == {"lo"}
    assert links(a1) == {"lo", "eth0", "net1"}
    assert set(lab.lease_owners()) == {"cid-tenant-a-a1"}


def test_pods_made_before_the_upgrade_keep_working_and_del_and_gc_clean_them(lab, tmp_path):
    old = old_multiplex(str(tmp_path))   # multiplex before namespaced identities
    pre = {}
    for name in ("pre1", "pre2"):
        lab.add_pod(name, "blue", namespace="tenant-a")
        pre[name] = lab.netns_factory("pod")
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=tenant-a;K8S_POD_NAME={name}"
        out = run_plugin(old, "ADD", lab.config(), node=lab.node, container_id=f"cid-{name}",
                         netns=pre[name], args=args)
        assert out.ok, out
    assert default_bridge_name("blue") in node_bridges(lab)    # the old name's bridge
    a1, out = add(lab, "a1", "blue", "tenant-a")                # the new binary, next to them
    assert out.ok, out
    assert default_bridge_name("tenant-a.blue") in node_bridges(lab)
    # the new binary checks and deletes an old pod
    assert lab.cni("CHECK", "pre1", pre["pre1"], container_id="cid-pre1", namespace="tenant-a").ok
    assert lab.cni("DEL", "pre1", pre["pre1"], container_id="cid-pre1", namespace="tenant-a").ok
    assert links(pre["pre1"]) == {"lo"}
    # GC keeps what is listed (the new pod, the other old pod), then collects the old pod
    assert lab.cni("GC", None, None, config=lab.gc_config("cid-tenant-a-a1", "cid-pre2")).ok
    assert links(pre["pre2"]) == {"lo", "eth0", "net1"} and links(a1) == {"lo", "eth0", "net1"}
    assert lab.cni("GC", None, None, config=lab.gc_config("cid-tenant-a-a1")).ok
    assert links(pre["pre2"]) == {"lo"}
    assert set(lab.lease_owners()) == {"cid-tenant-a-a1"}
    assert links(a1) == {"lo", "eth0", "net1"}


def test_namespace_isolation_is_on_by_default(lab):
    ns, out = add(lab, "nosy", "tenant-a/blue", "tenant-b")
    assert out.rc == 1 and out.code == 106, out
    assert "tenant-a/blue" in out.out["msg"]
    assert links(ns) == {"lo"} and lab.leases() == [] and lab.cache_entries() == []
    # globalNamespaces opens tenant-a's NADs to every namespace
    out = lab.cni("ADD", "nosy", ns, container_id="cid-tenant-b-nosy", namespace="tenant-b",
                  config=lab.config(globalNamespaces=["tenant-a"]))
    assert out.ok, out
    assert links(ns) == {"lo", "eth0", "net1"}


def test_more_attachments_than_allowed_is_refused_and_leaves_nothing(lab):
    many = ", ".join(f"blue@b{n}" for n in range(40))
    ns, out = add(lab, "greedy", many, "tenant-a")
    assert out.rc == 1 and out.code == 7, out
    assert f"field: {ANN}" in out.out["details"] and "32" in out.out["details"]
    assert links(ns) == {"lo"} and lab.leases() == [] and lab.cache_entries() == []
    ns, out = add(lab, "greedy2", "blue@b1, blue@b2", "tenant-a", maxAttachments=2)
    assert out.rc == 1 and out.code == 7 and "at most 2" in out.out["details"], out
    assert links(ns) == {"lo"}


def test_cni_args_ips_without_the_capability_is_refused(lab):
    want = [{"name": "blue", "cni-args": {"ips": ["198.18.10.15/24"]}}]
    ns, out = add(lab, "picky", want, "tenant-a")
    assert out.rc == 1 and out.code == 2, out
    assert f"field: {ANN}[0]['cni-args'].ips" in out.out["details"]
    assert links(ns) == {"lo"} and lab.leases() == []
    # the NAD opts in: the address is given
    lab.add_nad("blue", blue_conf("198.18.10.10", "198.18.10.19", capabilities={"ips": True}), namespace="tenant-a")
    out = lab.cni("ADD", "picky", ns, container_id="cid-tenant-a-picky", namespace="tenant-a")
    assert out.ok, out
    assert addresses(ns, "net1") == {"198.18.10.15/24"}


def test_a_nad_naming_the_meta_plugin_with_its_own_bin_dir_runs_nothing(lab, tmp_path):
    evil_bin = tmp_path / "evil-bin"
    evil_bin.mkdir()
    marker = tmp_path / "pwned"
    (evil_bin / "sh-evil").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (evil_bin / "sh-evil").chmod(0o755)
    log_file = tmp_path / "nad-chose-this.log"
    lab.add_nad("evil", {"type": "multiplex", "binDir": str(evil_bin), "logFile": str(log_file),
                         "clusterNetwork": {"type": "sh-evil", "name": "x", "cniVersion": "1.1.0"}},
                namespace="tenant-a")
    ns, out = add(lab, "victim", "evil", "tenant-a")
    assert out.rc == 1 and out.code == 7, out
    assert "field: tenant-a/evil:$." in out.out["details"] and "admin" in out.out["details"]
    assert not marker.exists() and not log_file.exists()
    assert links(ns) == {"lo"} and lab.cache_entries() == []
    lab.add_nad("logger", blue_conf("198.18.10.10", "198.18.10.19", logFile=str(log_file)), namespace="tenant-a")
    ns, out = add(lab, "victim2", "logger", "tenant-a")
    assert out.rc == 1 and out.code == 7 and "field: tenant-a/logger:$.logFile" in out.out["details"], out
    assert not log_file.exists()
