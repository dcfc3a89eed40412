"""multiplex-bridge refusing bad input and undoing a failed ADD, as root: each case is a CNI error
that names the field (or the link/address), and leaves no link, lease or rule behind."""
from __future__ import annotations

import pytest

from tests.cnitool import links, nsexec
from tests.netns.test_bridge_lab import BridgeLab

pytestmark = pytest.mark.root


@pytest.fixture
def hl(node, netns_factory, tmp_path):
    return BridgeLab(node=node, root=str(tmp_path), make_ns=netns_factory, ipam_type="host-local")


def assert_nothing_left(lab: BridgeLab, ns: str, node_links: frozenset = frozenset({"lo"})) -> None:
    assert lab.node_links() == set(node_links), "a link was left in the node"
    assert links(ns) == {"lo"}, "an interface was left in the pod"
    assert lab.leases() == [], "an IPAM lease was left"
    assert [r for r in lab.masq_rules() if r.get("comment")] == [], "a masquerade rule was left"


BAD_CONFIGS = [
    pytest.param({"bridge": "mpx-much-too-long"}, "$.bridge", id="bridge-name-over-15"),
    pytest.param({"bridge": "br/0"}, "$.bridge", id="bridge-name-with-slash"),
    pytest.param({"bridgeName": "x"}, "$.bridgeName", id="unknown-field"),
    pytest.param({"vlan": 4095}, "$.vlan", id="vlan-over-4094"),
    pytest.param({"vlan": -1}, "$.vlan", id="vlan-negative"),
    pytest.param({"vlan": "42"}, "$.vlan", id="vlan-a-string"),
    pytest.param({"mtu": 40}, "$.mtu", id="mtu-too-small"),
    pytest.param({"ipMasq": "yes"}, "$.ipMasq", id="ipmasq-not-boolean"),
    pytest.param({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}, "$.runtimeConfig.mac", id="multicast-mac"),
    pytest.param({"ipam": None}, "$.ipam", id="missing-ipam"),
    pytest.param({"ipam": {"subnet": "198.18.30.0/24"}}, "$.ipam.type", id="ipam-without-type"),
    pytest.param({"ipam": {"type": "../host-local"}}, "$.ipam.type", id="ipam-type-a-path"),
]


@pytest.mark.parametrize("change, field", BAD_CONFIGS)
def test_bad_config_is_refused_naming_the_field_and_touches_nothing(hl, change, field):
    conf = hl.conf("198.18.30.0/24", bridge="mpxt-bad", ipMasq=True)
    for k, v in change.items():
        if v is None:
            conf.pop(k)
        else:
            conf[k] = v
    ns = hl.make_ns("pod")
    out = hl.cni("ADD", conf, "cbad", ns)
    assert out.rc == 1 and out.code == 7, out
    assert f"field: {field}" in out.out["details"], out
    assert_nothing_left(hl, ns)


def test_ifname_over_15_characters_is_refused(hl):
    ns = hl.make_ns("pod")
    out = hl.cni("ADD", hl.conf("198.18.31.0/24", bridge="mpxt-if"), "cif", ns, ifname="eth0-much-too-long")
    assert out.rc == 1 and out.code == 4, out
    assert "CNI_IFNAME" in out.out["details"]
    assert_nothing_left(hl, ns)


def test_missing_pod_netns_is_refused(hl):
    out = hl.cni("ADD", hl.conf("198.18.32.0/24", bridge="mpxt-nons"), "cnons", "/var/run/netns/mpx-no-such-ns")
    assert out.rc == 1 and out.code == 3, out
    assert "CNI_NETNS" in out.out["details"]
    assert hl.node_links() == {"lo"} and hl.leases() == []


def test_bridge_name_taken_by_a_non_bridge_link(hl):
    nsexec(hl.node, "ip", "link", "add", "mpxt-taken", "type", "veth", "peer", "name", "mpxt-takenp")
    ns = hl.make_ns("pod")
    out = hl.cni("ADD", hl.conf("198.18.33.0/24", bridge="mpxt-taken"), "ctaken", ns)
    assert out.rc == 1 and out.code == 105, out
    assert "mpxt-taken" in out.out["msg"] and "not a bridge" in out.out["msg"]
    assert_nothing_left(hl, ns, frozenset({"lo", "mpxt-taken", "mpxt-takenp"}))


def test_ifname_already_in_the_pod(hl):
    ns = hl.make_ns("pod")
    nsexec(ns, "ip", "link", "add", "net1", "type", "veth", "peer", "name", "other")
    out = hl.cni("ADD", hl.conf("198.18.34.0/24", bridge="mpxt-dup"), "cdup", ns, ifname="net1")
    assert out.rc == 1 and out.code == 105, out
    assert "net1" in out.out["msg"] and "already exists" in out.out["msg"]
    assert hl.node_links() == {"lo"} and hl.leases() == []
    assert links(ns) == {"lo", "net1", "other"}  # the pod's own links are untouched


def test_mtu_too_small_for_ipv6_is_refused_naming_mtu(hl):
    # IPv6 needs an MTU of 1280: refused at validation (code 7), not by the kernel after the veth
    # and the lease exist (code 105 EINVAL, as before)
    ns = hl.make_ns("pod")
    out = hl.cni("ADD", hl.conf("fd00:35::/64", bridge="mpxt-undo", mtu=1200), "cundo", ns)
    assert out.rc == 1 and out.code == 7, out
    assert out.out["details"].startswith("field: $.mtu;"), out
    assert_nothing_left(hl, ns)


def test_failure_after_ipam_undoes_veth_lease_and_the_new_bridge(hl):
    # a route whose gateway is off the pod's subnet: the kernel refuses it after the veth and the lease
    ns = hl.make_ns("pod")
    conf = hl.conf("198.18.35.0/24", bridge="mpxt-undo", routes=[{"dst": "198.19.35.0/24", "gw": "198.19.255.1"}])
    out = hl.cni("ADD", conf, "cundo", ns)
    assert out.rc == 1 and out.code == 105, out
    assert "198.19.35.0/24" in out.out["msg"]
    assert_nothing_left(hl, ns)


def test_failure_after_masquerade_undoes_the_rules_too(hl):
    # a route whose gateway is off the pod's subnet fails last, after addresses and masquerade rules
    conf = hl.conf("198.18.36.0/24", bridge="mpxt-undo2", isGateway=True, ipMasq=True,
                   routes=[{"dst": "198.19.36.0/24", "gw": "198.19.255.1"}])
    ns = hl.make_ns("pod")
    out = hl.cni("ADD", conf, "cundo2", ns)
    assert out.rc == 1 and out.code == 105, out
    assert "198.19.36.0/24" in out.out["msg"]
    # the bridge keeps its gateway address only while it exists: it was made by this call, so it is gone
    assert_nothing_left(hl, ns)


def test_a_failed_add_keeps_a_bridge_others_use(hl):
    conf = hl.conf("198.18.37.0/24", bridge="mpxt-shared")
    ok_ns = hl.make_ns("pod")
    res = hl.add(conf, "cok", ok_ns)
    bad_ns = hl.make_ns("pod")
    out = hl.cni("ADD", dict(conf, runtimeConfig={"ips": ["198.18.99.9/24"]}), "cbad", bad_ns)
    assert out.rc == 1, out
    assert hl.node_links() == {"lo", "mpxt-shared", res["interfaces"][1]["name"]}
    assert links(bad_ns) == {"lo"}
    assert len(hl.leases()) == 1


def test_exhausted_pool_leaves_no_veth(hl):
    conf = hl.conf("198.18.38.0/30", bridge="mpxt-full")  # host-local: one usable address (.2)
    first = hl.make_ns("pod")
    res = hl.add(conf, "cfull1", first)
    ns = hl.make_ns("pod")
    out = hl.cni("ADD", conf, "cfull2", ns)
    assert out.rc == 1, out
    assert "host-local" in out.out["msg"]
    assert links(ns) == {"lo"}
    assert hl.node_links("veth") == {res["interfaces"][1]["name"]}


def test_check_without_prev_result_names_the_field(hl):
    ns = hl.make_ns("pod")
    conf = hl.conf("198.18.39.0/24", bridge="mpxt-noprev")
    hl.add(conf, "cnp", ns)
    out = hl.cni("CHECK", conf, "cnp", ns)
    assert out.rc == 1 and out.code == 7 and "prevResult" in out.out["details"], out


def test_check_after_the_pod_interface_is_deleted_by_hand(hl):
    ns = hl.make_ns("pod")
    conf = hl.conf("198.18.40.0/24", bridge="mpxt-gone")
    res = hl.add(conf, "cgone", ns, "net4")
    nsexec(ns, "ip", "link", "del", "net4")
    out = hl.check(conf, res, "cgone", ns, "net4")
    assert out.code == 104 and "net4" in out.out["msg"], out
