"""multiplex-bridge without root: config validation and defaults, names, gateways, nft rule shapes.

The bad-config cases go through the plugin's process entry (skel.run), so they show what a runtime
gets back: code 7 with the field's JSON path, before anything on the node is touched.
"""
from __future__ import annotations

import io
import ipaddress
import json

import pytest

from delegates import bridge
from multiplex.netlink import nft
from multiplex.cni import skel
from multiplex.cni.types import IPConfig, Result, Route
from multiplex.netlink import sysctl


def conf(**fields) -> dict:
    c = {"cniVersion": "1.1.0", "name": "blue", "type": "multiplex-bridge",
         "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.0.0/24"}]]}}
    c.update(fields)
    return {k: v for k, v in c.items() if v is not None}


def run(command: str, config: dict, ifname: str = "eth0") -> dict:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/mpx-unit-none",
           "CNI_IFNAME": ifname, "CNI_PATH": "/nonexistent"}
    out = io.StringIO()
    rc = skel.run(bridge.plugin, env, json.dumps(config).encode(), out)
    res = json.loads(out.getvalue())
    assert rc == 1, res
    return res


@pytest.mark.parametrize("fields, path, allowed", [
    ({"bridge": "a" * 16}, "$.bridge", "1-15 characters"),
    ({"bridge": "br 0"}, "$.bridge", "no '/', ':' or spaces"),
    ({"bridge": ".."}, "$.bridge", "interface name"),
    ({"bridge": ""}, "$.bridge", "interface name"),
    ({"colour": "blue"}, "$.colour", "known fields: cniVersion"),
    ({"vlan": 4095}, "$.vlan", "1 to 4094"),
    ({"vlan": 1.5}, "$.vlan", "1 to 4094"),
    ({"mtu": 70000}, "$.mtu", "68 to 65535"),
    ({"hairpinMode": 1}, "$.hairpinMode", "true or false"),
    ({"isGateway": "true"}, "$.isGateway", "true or false"),
    ({"ipam": None}, "$.ipam", "IPAM config"),
    ({"ipam": {}}, "$.ipam.type", "IPAM plugin's name"),
    ({"ipam": {"type": "a/b"}}, "$.ipam.type", "never a path"),
    ({"type": "bridge"}, "$.type", "multiplex-bridge"),
    ({"runtimeConfig": {"mac": "zz:00:00:00:00:01"}}, "$.runtimeConfig.mac", "unicast MAC"),
    ({"runtimeConfig": {"mac": "03:00:00:00:00:01"}}, "$.runtimeConfig.mac", "unicast MAC"),
    ({"dns": {"nameserver": "x"}}, "$.dns.nameserver", "known fields"),
    ({"cni.dev/valid-attachments": [{"containerID": "c1"}]}, "$['cni.dev/valid-attachments'][0].ifname", ""),
])
def test_bad_config_is_code_7_naming_the_field(fields, path, allowed):
    err = run("ADD", conf(**fields))
    assert err["code"] == 7
    assert err["details"].startswith(f"field: {path};"), err
    assert allowed in err["details"], err


@pytest.mark.parametrize("ipam", [
    {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.0.0/24"}], [{"subnet": "fd00:1::/64"}]]},
    {"type": "multiplex-ipam", "range": "fd00:1::/64"},
    {"type": "multiplex-ipam", "range": {"subnet": "fd00:1::/64"}},
    {"type": "host-local", "subnet": "fd00:1::/64"},
])
def test_mtu_under_1280_with_an_ipv6_range_is_code_7_naming_mtu(ipam):
    err = run("ADD", conf(mtu=1200, ipam=ipam))
    assert err["code"] == 7 and err["details"].startswith("field: $.mtu;"), err
    assert "IPv6" in err["msg"] and "1280" in err["details"]


@pytest.mark.parametrize("ipam", [
    {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.0.0/24"}]]},
    {"type": "dhcp"},                                    # an IPAM whose ranges we cannot read
    {"type": "multiplex-ipam", "ranges": [[{"subnet": "not a subnet"}]]},  # its own error, later
])
def test_mtu_under_1280_without_a_readable_ipv6_range_passes_validation(ipam):
    bridge.plugin.validate(conf(mtu=1200, ipam=ipam))


def test_gc_with_a_malformed_keep_list_is_code_7_before_anything(monkeypatch):
    from multiplex import netlink

    def touched(*a, **k):
        raise AssertionError("GC touched the node before reading its keep-list")

    monkeypatch.setattr(netlink, "open_node", touched)
    monkeypatch.setattr(nft, "delete_rules", touched)
    for bad, field in [(None, '$["cni.dev/valid-attachments"]'),
                       ("c1", '$["cni.dev/valid-attachments"]'),
                       ([{"containerId": "c1", "ifName": "eth0"}], '$["cni.dev/valid-attachments"][0].containerID')]:
        c = conf(**{"cni.dev/valid-attachments": bad}) if bad is not None else conf()
        env = {"CNI_COMMAND": "GC", "CNI_PATH": "/nonexistent"}
        out = io.StringIO()
        assert skel.run(bridge.plugin, env, json.dumps(c).encode(), out) == 1
        err = json.loads(out.getvalue())
        assert err["code"] == 7 and err["details"].startswith(f"field: {field}"), err


def test_another_networks_default_bridge_cannot_be_named():
    # tenant-b cannot put its pods on tenant-a's default bridge by computing its name
    victim = bridge.default_bridge_name("tenant-a.blue")
    err = run("ADD", conf(name="tenant-b.blue", bridge=victim))
    assert err["code"] == 7 and err["details"].startswith("field: $.bridge;"), err
    bridge.plugin.validate(conf(name="tenant-a.blue", bridge=victim))  # its own default, spelled out: fine
    bridge.plugin.validate(conf(name="tenant-b.blue", bridge="shared-br"))  # a name of the admin's choice


def test_ifname_too_long_is_code_4():
    err = run("ADD", conf(), ifname="x" * 16)
    assert err["code"] == 4 and "CNI_IFNAME" in err["details"]


def test_validation_happens_before_the_netns_is_opened():
    # the netns in `run` does not exist: a good config fails on it (code 3), a bad one on the field (7)
    assert run("ADD", conf())["code"] == 3
    assert run("ADD", conf(vlan=9999))["code"] == 7
    assert run("CHECK", conf(vlan=9999, prevResult={"cniVersion": "1.1.0"}))["code"] == 7
    # DEL is lenient by design (teardown must work with whatever config the runtime still has);
    # tests/netns/test_startup_imports.py checks it never imports jsonschema.


def test_defaults():
    c = bridge.BridgeConfig.parse(conf())
    assert c.bridge == bridge.default_bridge_name("blue") and len(c.bridge) <= 15
    assert bridge.default_bridge_name("blue") != bridge.default_bridge_name("green")
    assert (c.is_gateway, c.is_default_gateway, c.ip_masq, c.hairpin, c.vlan, c.mtu, c.mac) == \
        (False, False, False, False, 0, None, "")


def test_default_gateway_implies_gateway_and_mac_is_normalised():
    c = bridge.BridgeConfig.parse(conf(isDefaultGateway=True, isGateway=False,
                                       runtimeConfig={"mac": "02-AB-00-00-00-01"}))
    assert c.is_gateway and c.is_default_gateway
    assert c.mac == "02:ab:00:00:00:01"


def test_config_dns_overrides_and_empty_dns_does_not():
    assert bridge.BridgeConfig.parse(conf(dns={"nameservers": ["198.18.0.53"]})).dns.nameservers == ["198.18.0.53"]
    assert bridge.BridgeConfig.parse(conf(dns={})).dns is None


def test_host_veth_name_is_deterministic_and_fits():
    a = bridge.host_veth_name("c" * 64, "net1")
    assert a == bridge.host_veth_name("c" * 64, "net1") and len(a) == 15 and a.startswith("mpx")
    assert a != bridge.host_veth_name("c" * 64, "net2")
    assert a != bridge.host_veth_name("d" * 64, "net1")


def test_owner_comment_round_trips_and_stays_short():
    assert bridge.owner("cid", "net1", "default.blue") == "cid/net1/default.blue"
    assert nft.parse_owner("cid/net1/default.blue") == ("cid", "net1", "default.blue")
    assert nft.parse_owner("cid/net1/default/blue") == ("cid", "net1", "default/blue")
    assert nft.parse_owner("not ours") is None


@pytest.mark.parametrize("cid_len", [64, 94, 95, 255])
def test_owner_of_the_longest_namespaced_network_fits_nft_and_the_alias(cid_len):
    # a namespace of 63 and a NAD name of 253 characters: the identity the meta plugin sets as `name`
    network = "n" * 63 + "." + "a" * 253
    cid = "c" * cid_len
    comment = bridge.owner(cid, "net1-with-15ch", network)
    assert len(comment.encode()) <= nft.COMMENT_MAX  # nft's limit; the alias (255) is the same string
    o = nft.parse_owner(comment)
    assert o.of_network(network) and not o.of_network("n" * 63 + ".b")
    assert o.of_container(cid) and not o.of_container("d" * cid_len)
    assert nft.container_marks(["x", cid])[o.container] == cid and o.ifname == "net1-with-15ch"


def test_owner_comments_of_the_previous_version_still_match():
    # before identities, the network part was the bare config name, or `#` + 16 hex when too long
    old_short = "c1/net1/blue"
    old_long = "c" * 64 + "/net1/#" + __import__("hashlib").sha256(("n" * 200).encode()).hexdigest()[:16]
    assert nft.parse_owner(old_short).of_network("blue")
    assert nft.parse_owner(old_long).of_network("n" * 200)
    assert nft.parse_owner(old_long).of_container("c" * 64)


def test_vlan_gateway_names_fit():
    assert bridge.vlan_gateway_names("mpxbr0", 42)[0] == "mpxbr0.42"
    gw, port = bridge.vlan_gateway_names("a-fifteen-chars", 4094)
    assert len(gw) <= 15 and len(port) <= 15 and gw != port


def _ipam(*addrs: str, gw: dict | None = None) -> Result:
    gw = gw or {}
    return Result(ips=[IPConfig(address=ipaddress.ip_interface(a),
                                gateway=ipaddress.ip_address(gw[a]) if a in gw else None) for a in addrs])


def test_gateways_from_ipam_or_the_subnets_first_address():
    c = bridge.BridgeConfig.parse(conf(isGateway=True))
    got = bridge.gateways_for(c, _ipam("198.18.0.5/24", "fd00::5/64", gw={"fd00::5/64": "fd00::fe"}))
    assert {k: str(v) for k, v in got.items()} == {0: "198.18.0.1", 1: "fd00::fe"}
    # no isGateway, no IPAM gateway: none
    assert bridge.gateways_for(bridge.BridgeConfig.parse(conf()), _ipam("198.18.0.5/24")) == {}


def test_gateway_equal_to_the_pods_address_is_refused():
    c = bridge.BridgeConfig.parse(conf(isGateway=True))
    with pytest.raises(Exception) as e:
        bridge.gateways_for(c, _ipam("198.18.0.1/24"))
    assert e.value.code == 7


def test_default_routes_one_per_family_unless_ipam_gave_one():
    res = Result(ips=[IPConfig(ipaddress.ip_interface("198.18.0.5/24"), ipaddress.ip_address("198.18.0.1")),
                      IPConfig(ipaddress.ip_interface("fd00::5/64"), ipaddress.ip_address("fd00::1"))],
                 routes=[Route(dst=ipaddress.ip_network("::/0"), gw=ipaddress.ip_address("fd00::2"))])
    assert [(str(r.dst), str(r.gw)) for r in bridge.default_routes(res)] == [("0.0.0.0/0", "198.18.0.1")]


def test_masquerade_rule_shape():
    rule = nft._masq_rule(ipaddress.ip_interface("198.18.0.5/24"), "c/eth0/blue")["add"]["rule"]
    assert (rule["family"], rule["table"], rule["chain"], rule["comment"]) == \
        ("inet", "multiplex_masq", "postrouting", "c/eth0/blue")
    saddr, not_subnet, not_mc, masq = rule["expr"]
    assert saddr["match"]["right"] == "198.18.0.5"
    assert not_subnet["match"]["right"] == {"prefix": {"addr": "198.18.0.0", "len": 24}}
    assert not_mc["match"]["right"] == {"prefix": {"addr": "224.0.0.0", "len": 4}}
    assert masq == {"masquerade": None}
    v6 = nft._masq_rule(ipaddress.ip_interface("fd00::5/64"), "x")["add"]["rule"]["expr"]
    assert v6[0]["match"]["left"]["payload"]["protocol"] == "ip6"


def test_sysctl_paths():
    assert sysctl._path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert sysctl._path("net.ipv6.conf.eth0.100.accept_dad") == "/proc/sys/net/ipv6/conf/eth0.100/accept_dad"
    assert sysctl._path("net/ipv6/conf/all/forwarding") == "/proc/sys/net/ipv6/conf/all/forwarding"


def test_plugin_declares_type_and_capabilities():
    assert bridge.plugin.type_name == "multiplex-bridge"
    assert bridge.plugin.capabilities == frozenset({"ips", "mac"})
