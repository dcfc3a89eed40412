"""MultiNetworkPolicy read as NetworkPolicy's semantics have it, and every malformed field refused
with the policy and the field named."""
from __future__ import annotations

import ipaddress

import pytest

from multiplex.policy.mnp.model import (IPBlock, PolicyError, named_ports, parse_policy, parse_selector,
                                        status_addresses)


def mnp(spec: dict, policy_for: str = "blue", namespace: str = "team") -> dict:
    return {"kind": "MultiNetworkPolicy", "metadata": {"name": "p", "namespace": namespace,
                                                       "annotations": {"k8s.v1.cni.cncf.io/policy-for": policy_for}},
            "spec": spec}


def test_policy_types_default_to_ingress_and_egress_when_egress_rules_exist():
    only_in = parse_policy(mnp({"podSelector": {}, "ingress": [{}]}))
    assert only_in.ingress is not None and only_in.egress is None
    both = parse_policy(mnp({"podSelector": {}, "egress": []}))
    assert both.ingress == () and both.egress == ()   # isolated both ways, nothing allowed
    explicit = parse_policy(mnp({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}))
    assert explicit.ingress is None and explicit.egress == ()


def test_policy_for_names_nads_in_the_policy_namespace_or_another():
    p = parse_policy(mnp({"podSelector": {}}, policy_for=" blue, other/red ,blue"))
    assert p.networks == ("team/blue", "other/red")
    assert parse_policy({"metadata": {"name": "x"}, "spec": {"podSelector": {}}}).networks == ()
    with pytest.raises(PolicyError, match=r"policy-for.*'a/b/c' is not NAME or NAMESPACE/NAME"):
        parse_policy(mnp({"podSelector": {}}, policy_for="a/b/c"))


@pytest.mark.parametrize("selector,labels,selected", [
    ({}, {}, True),
    ({"matchLabels": {"role": "db"}}, {"role": "db", "x": "y"}, True),
    ({"matchLabels": {"role": "db"}}, {"role": "web"}, False),
    ({"matchExpressions": [{"key": "role", "operator": "In", "values": ["a", "b"]}]}, {"role": "b"}, True),
    ({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["a"]}]}, {"role": "a"}, False),
    ({"matchExpressions": [{"key": "role", "operator": "Exists"}]}, {"role": ""}, True),
    ({"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, {"role": "a"}, False),
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
])
def test_label_selectors(selector, labels, selected):
    assert parse_selector(selector, "ns/p", "spec.podSelector").matches(labels) is selected


@pytest.mark.parametrize("spec,where,message", [
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]}},
     "spec.podSelector.matchExpressions[0].operator", "'Near' is not one of"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values", "operator In needs at least one value"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
     "spec.podSelector.matchExpressions[0].values", "takes no values"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/33"}}]}]},
     "spec.ingress[0].from[0].ipBlock", "not a CIDR"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/24", "except": ["198.18.1.0/25"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except", "is not inside 198.18.0.0/24"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/24"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0]", "ipBlock cannot be combined"),
    ({"podSelector": {}, "egress": [{"to": [{}]}]}, "spec.egress[0].to[0]", "needs podSelector, namespaceSelector"),
    ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
     "spec.ingress[0].ports[0].protocol", "'ICMP' is not one of TCP, UDP, SCTP"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "web", "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort", "needs a numeric port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 100, "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort", "must be a number from port (100) to 65535"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port", "not in 1-65535"),
    ({"podSelector": {}, "policyTypes": ["Sideways"]}, "spec.policyTypes", "a list of Ingress and Egress"),
])
def test_malformed_policies_name_the_policy_and_the_field(spec, where, message):
    with pytest.raises(PolicyError) as e:
        parse_policy(mnp(spec))
    assert e.value.policy == "team/p" and e.value.where == where and message in e.value.message, str(e.value)
    assert str(e.value).startswith("MultiNetworkPolicy team/p: ")


def test_ports_default_to_tcp_and_numeric_strings_are_numbers():
    p = parse_policy(mnp({"podSelector": {}, "ingress": [{"ports": [{"port": "8080"}, {"protocol": "SCTP"},
                                                                     {"port": 9000, "endPort": 9100}]}]}))
    ports = p.ingress[0].ports
    assert [(x.protocol, x.port, x.end_port) for x in ports] == [("TCP", 8080, None), ("SCTP", None, None),
                                                                 ("TCP", 9000, 9100)]


@pytest.mark.parametrize("cidr,excepts,prefixes", [
    ("198.18.0.0/24", [], ["198.18.0.0/24"]),
    ("198.18.0.0/24", ["198.18.0.128/25"], ["198.18.0.0/25"]),
    ("198.18.0.0/30", ["198.18.0.1/32"], ["198.18.0.0/32", "198.18.0.2/31"]),
    ("198.18.0.0/24", ["198.18.0.0/24"], []),
    ("fd00:1::/64", ["fd00:1::/65"], ["fd00:1:0:0:8000::/65"]),
])
def test_ip_block_is_the_cidr_minus_every_except(cidr, excepts, prefixes):
    block = IPBlock(ipaddress.ip_network(cidr), tuple(ipaddress.ip_network(e) for e in excepts))
    assert [str(p) for p in block.prefixes()] == prefixes
    covered = {a for p in block.prefixes() for a in ([p.network_address, p.broadcast_address])}
    assert not any(a in ipaddress.ip_network(e) for e in excepts for a in covered)


def test_pod_addresses_from_network_status_and_named_ports_from_containers():
    pod = {"metadata": {"annotations": {"k8s.v1.cni.cncf.io/network-status":
                                        '[{"name": "team/blue", "ips": ["198.18.1.2", "fd00::2", "bogus"]},'
                                        ' {"name": "podnet", "ips": ["198.18.0.9/24"]}]'}},
           "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080},
                                              {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                              {"containerPort": 9}]}]}}
    assert status_addresses(pod) == {"team/blue": ["198.18.1.2", "fd00::2"], "podnet": ["198.18.0.9"]}
    assert named_ports(pod) == {"web": [("TCP", 8080)], "dns": [("UDP", 53)]}
    broken = {"metadata": {"annotations": {"k8s.v1.cni.cncf.io/network-status": "{not json"}}}
    assert status_addresses(broken) == {}
