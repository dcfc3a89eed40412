"""multiplex-ipam config: parsing, defaults, and a clear code-7 error for every bad input."""
from __future__ import annotations

import copy
import ipaddress
import json

import pytest

from multiplex.cni.errors import CNIError, INVALID_CONFIG
from multiplex.ipam import config
from multiplex.ipam.plugin import plugin


def netconf(ipam: dict | None = None, **extra) -> dict:
    conf = {"cniVersion": "1.1.0", "name": "blue", "type": "multiplex-bridge",
            "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.5.0/24"}]]}}
    if ipam is not None:
        conf["ipam"] = {"type": "multiplex-ipam", **ipam}
    conf.update(extra)
    return conf


def test_defaults_follow_host_local():
    conf = config.parse(netconf())
    assert conf.network == "blue" and conf.store == "sqlite" and conf.data_dir == ""
    (rs,) = conf.range_sets
    (r,) = rs.ranges
    assert str(r.subnet) == "198.18.5.0/24"
    assert (str(r.start), str(r.end), str(r.gateway)) == ("198.18.5.1", "198.18.5.254", "198.18.5.1")
    assert rs.name == "198.18.5.0/24" and rs.path == "$.ipam.ranges[0]"


def test_ipv6_range_ends_at_the_last_address():
    (rs,) = config.parse(netconf({"ranges": [[{"subnet": "fd00:5::/64"}]]})).range_sets
    r = rs.ranges[0]
    assert (str(r.start), str(r.end), str(r.gateway)) == ("fd00:5::1", "fd00:5::ffff:ffff:ffff:ffff", "fd00:5::1")


def test_full_config():
    conf = config.parse(netconf({
        "ranges": [[{"subnet": "198.18.5.0/24", "rangeStart": "198.18.5.10", "rangeEnd": "198.18.5.20",
                     "gateway": "198.18.5.254"},
                    {"subnet": "198.18.6.0/24"}],
                   [{"subnet": "fd00:5::/64", "rangeStart": "fd00:5::100", "rangeEnd": "fd00:5::1ff"}]],
        "exclude": ["198.18.5.12/31", "198.18.6.7"],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "198.19.0.0/16", "gw": "198.18.5.254", "priority": 10}],
        "dns": {"nameservers": ["198.18.5.254", "fd00:5::1"], "domain": "lab", "search": ["lab"], "options": ["ndots:2"]},
        "dataDir": "/tmp/somewhere", "store": "sqlite"}))
    v4, v6 = conf.range_sets
    assert v4.name == "198.18.5.0/24 (198.18.5.10-198.18.5.20), 198.18.6.0/24"
    assert v4.subnets == ["198.18.5.0/24", "198.18.6.0/24"] and v4.family == 4 and v6.family == 6
    assert [str(g) for g in v4.gateways] == ["198.18.5.254", "198.18.6.1"]
    assert [str(n) for n in conf.exclude] == ["198.18.5.12/31", "198.18.6.7/32"]
    assert [str(r.dst) for r in conf.routes] == ["0.0.0.0/0", "198.19.0.0/16"]
    assert conf.routes[1].priority == 10 and str(conf.routes[1].gw) == "198.18.5.254"
    assert conf.dns.domain == "lab" and conf.dns.options == ["ndots:2"]
    assert conf.data_dir == "/tmp/somewhere"


@pytest.mark.parametrize("shorthand", ["198.18.7.0/28", {"subnet": "198.18.7.0/28", "rangeStart": "198.18.7.1"}])
def test_range_shorthand_is_one_range_set(shorthand):
    conf = config.parse(netconf({"range": shorthand}))
    (rs,) = conf.range_sets
    assert rs.name == "198.18.7.0/28" and rs.path == "$.ipam.range"


BAD = [
    # (what, ipam block or None for "no ipam", json path in details, words in the message)
    ("missing ranges", {}, "$.ipam.ranges", "ranges"),
    ("empty ranges", {"ranges": []}, "$.ipam.ranges", ""),
    ("empty range set", {"ranges": [[]]}, "$.ipam.ranges[0]", ""),
    ("ranges and range", {"ranges": [[{"subnet": "198.18.5.0/24"}]], "range": "198.18.6.0/24"}, "$.ipam.range", "either"),
    ("unknown field", {"range": "198.18.5.0/24", "rangez": 1}, "$.ipam.rangez", "rangez"),
    ("unknown range field", {"ranges": [[{"subnet": "198.18.5.0/24", "start": "198.18.5.2"}]]},
     "$.ipam.ranges[0][0]", "start"),
    ("subnet missing", {"ranges": [[{"rangeStart": "198.18.5.2"}]]}, "$.ipam.ranges[0][0]", "subnet"),
    ("subnet not a string", {"ranges": [[{"subnet": 5}]]}, "$.ipam.ranges[0][0].subnet", ""),
    ("bad prefix", {"ranges": [[{"subnet": "198.18.5.0/33"}]]}, "$.ipam.ranges[0][0].subnet", "198.18.5.0/33"),
    ("not a CIDR", {"ranges": [[{"subnet": "banana/24"}]]}, "$.ipam.ranges[0][0].subnet", "banana"),
    ("address not CIDR", {"ranges": [[{"subnet": "198.18.5.0"}]]}, "$.ipam.ranges[0][0].subnet", "not a CIDR"),
    ("host bits", {"ranges": [[{"subnet": "198.18.5.1/24"}]]}, "$.ipam.ranges[0][0].subnet", "host bits"),
    ("too small v4", {"range": "198.18.5.0/31"}, "$.ipam.range.subnet", "too small"),
    ("too small v6", {"range": "fd00:5::/127"}, "$.ipam.range.subnet", "too small"),
    ("rangeStart outside", {"ranges": [[{"subnet": "198.18.5.0/24", "rangeStart": "198.18.6.10"}]]},
     "$.ipam.ranges[0][0].rangeStart", "outside subnet 198.18.5.0/24"),
    ("rangeEnd outside", {"ranges": [[{"subnet": "198.18.5.0/24", "rangeEnd": "198.18.9.1"}]]},
     "$.ipam.ranges[0][0].rangeEnd", "outside"),
    ("rangeStart not an IP", {"ranges": [[{"subnet": "198.18.5.0/24", "rangeStart": "198.18.5.x"}]]},
     "$.ipam.ranges[0][0].rangeStart", "not an IP"),
    ("rangeStart after rangeEnd", {"ranges": [[{"subnet": "198.18.5.0/24", "rangeStart": "198.18.5.50",
                                                "rangeEnd": "198.18.5.40"}]]},
     "$.ipam.ranges[0][0].rangeEnd", "before rangeStart"),
    ("rangeStart network address", {"ranges": [[{"subnet": "198.18.5.0/24", "rangeStart": "198.18.5.0"}]]},
     "$.ipam.ranges[0][0].rangeStart", "network address"),
    ("rangeEnd broadcast", {"ranges": [[{"subnet": "198.18.5.0/24", "rangeEnd": "198.18.5.255"}]]},
     "$.ipam.ranges[0][0].rangeEnd", "broadcast"),
    ("rangeStart other family", {"ranges": [[{"subnet": "198.18.5.0/24", "rangeStart": "fd00::5"}]]},
     "$.ipam.ranges[0][0].rangeStart", "IPv6"),
    ("gateway outside", {"ranges": [[{"subnet": "198.18.5.0/24", "gateway": "198.18.4.1"}]]},
     "$.ipam.ranges[0][0].gateway", "outside"),
    ("mixed families in a range set", {"ranges": [[{"subnet": "198.18.5.0/24"}, {"subnet": "fd00:5::/64"}]]},
     "$.ipam.ranges[0][1].subnet", "mixes IPv4"),
    ("two IPv4 range sets", {"ranges": [[{"subnet": "198.18.5.0/24"}], [{"subnet": "198.18.6.0/24"}]]},
     "$.ipam.ranges[1]", "one address per family"),
    ("overlapping ranges", {"ranges": [[{"subnet": "198.18.5.0/24", "rangeEnd": "198.18.5.100"},
                                        {"subnet": "198.18.5.0/24", "rangeStart": "198.18.5.50"}]]},
     "$.ipam.ranges[0][1]", "overlaps"),
    ("overlapping subnets", {"ranges": [[{"subnet": "198.18.0.0/16"}, {"subnet": "198.18.5.0/24"}]]},
     "$.ipam.ranges[0][1].subnet", "overlaps"),
    ("bad exclude", {"range": "198.18.5.0/24", "exclude": ["198.18.5.300/32"]}, "$.ipam.exclude[0]", "exclude"),
    ("route without dst", {"range": "198.18.5.0/24", "routes": [{"gw": "198.18.5.1"}]}, "$.ipam.routes[0]", "dst"),
    ("bad route dst", {"range": "198.18.5.0/24", "routes": [{"dst": "default"}]}, "$.ipam.routes[0].dst", "default"),
    ("route gw family", {"range": "198.18.5.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]},
     "$.ipam.routes[0].gw", "IPv6"),
    ("bad nameserver", {"range": "198.18.5.0/24", "dns": {"nameservers": ["dns.example"]}},
     "$.ipam.dns.nameservers[0]", "dns.example"),
    ("unknown store", {"range": "198.18.5.0/24", "store": "etcd"}, "$.ipam.store", "etcd"),
    ("relative dataDir", {"range": "198.18.5.0/24", "dataDir": "leases"}, "$.ipam.dataDir", ""),
]


@pytest.mark.parametrize("what,ipam,path,words", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_code_7_naming_the_field(what, ipam, path, words):
    with pytest.raises(CNIError) as e:
        config.parse(netconf(ipam))
    assert e.value.code == INVALID_CONFIG
    assert f"field: {path}" in e.value.details, e.value
    assert words in e.value.msg + e.value.details


SEMANTIC = [b for b in BAD if "not a string" not in b[0] and "route without" not in b[0]
            and "empty" not in b[0] and "unknown range" not in b[0] and "subnet missing" not in b[0]]


@pytest.mark.parametrize("what,ipam,path,words", SEMANTIC, ids=[b[0] for b in SEMANTIC])
def test_the_parser_alone_catches_them_too(what, ipam, path, words):
    """DEL, STATUS and GC skip the jsonschema import: the parser must still name the field."""
    with pytest.raises(CNIError) as e:
        config.parse(netconf(ipam), check_schema=False)
    assert e.value.code == INVALID_CONFIG and f"field: {path}" in e.value.details, e.value


@pytest.mark.parametrize("conf,path", [
    ({"cniVersion": "1.1.0", "name": "blue", "type": "x"}, "$.ipam"),
    ({"cniVersion": "1.1.0", "name": "blue", "type": "x", "ipam": "host-local"}, "$.ipam"),
    ({"cniVersion": "1.1.0", "name": "", "type": "x", "ipam": {"type": "multiplex-ipam", "range": "198.18.5.0/24"}},
     "$.name"),
])
def test_network_config_without_ipam_or_name(conf, path):
    with pytest.raises(CNIError) as e:
        config.parse(conf)
    assert e.value.code == INVALID_CONFIG and f"field: {path}" in e.value.details


def test_errors_name_the_field_under_the_callers_path():
    """The meta plugin validates a NAD's plugin and wants the path inside what the user wrote."""
    bad = netconf({"ranges": [[{"subnet": "198.18.5.0/24", "gateway": "198.18.9.1"}]]})
    with pytest.raises(CNIError) as e:
        plugin.validate(bad, "blue:$.plugins[0]")
    assert "field: blue:$.plugins[0].ipam.ranges[0][0].gateway" in e.value.details
    with pytest.raises(CNIError) as e:
        plugin.validate(netconf({"range": "198.18.5.0/24", "bogus": True}), "blue:$")
    assert "field: blue:$.ipam.bogus" in e.value.details
    plugin.validate(netconf(), "blue:$")  # a good one passes


def test_config_is_not_modified():
    conf = netconf({"range": "198.18.5.0/24", "routes": [{"dst": "0.0.0.0/0"}]})
    before = copy.deepcopy(conf)
    config.parse(conf)
    assert conf == before


def test_store_location_needs_no_ranges():
    """DEL and GC only need where the leases are: a broken range does not stop them."""
    loc = config.store_location(netconf({"ranges": "garbage", "dataDir": "/tmp/x"}))
    assert loc == config.StoreLocation("sqlite", "/tmp/x")
    assert config.store_location({"name": "n"}) == config.StoreLocation("sqlite", "")


# --- requested addresses ----------------------------------------------------------------------

def test_requested_addresses_from_every_source():
    conf = netconf(runtimeConfig={"ips": ["198.18.5.10/24", "fd00:5::10/64"]},
                   args={"cni": {"ips": ["198.18.5.10", "198.18.5.11"]}})
    found = config.requested_addresses(conf, {"IP": "198.18.5.12,fd00:5::12"})
    assert [str(r.address) for r in found] == ["198.18.5.10", "fd00:5::10", "198.18.5.11", "198.18.5.12", "fd00:5::12"]
    assert found[0].source == "$.runtimeConfig.ips[0]" and found[2].source == "$.args.cni.ips[1]"
    assert found[3].source == "CNI_ARGS IP"
    assert config.requested_addresses(netconf(), {}) == []


@pytest.mark.parametrize("conf,cni_args,path", [
    (netconf(runtimeConfig={"ips": ["198.18.5.300/24"]}), {}, "$.runtimeConfig.ips[0]"),
    (netconf(runtimeConfig={"ips": "198.18.5.3"}), {}, "$.runtimeConfig.ips"),
    (netconf(args={"cni": {"ips": ["ok", 4]}}), {}, "$.args.cni.ips[0]"),
    (netconf(), {"IP": "198.18.5.3,nope"}, "CNI_ARGS IP"),
])
def test_bad_requested_address_is_code_7(conf, cni_args, path):
    with pytest.raises(CNIError) as e:
        config.requested_addresses(conf, cni_args)
    assert e.value.code == INVALID_CONFIG and f"field: {path}" in e.value.details


def test_schema_file_is_a_valid_json_schema():
    import jsonschema

    from multiplex.util import schema

    jsonschema.Draft202012Validator.check_schema(schema.load("ipam"))
    # every property says what is allowed (the error's "allowed:" comes from descriptions)
    props = schema.load("ipam")["properties"]
    assert all("description" in p for p in props.values())
    assert set(props) == {"type", "ranges", "range", "exclude", "routes", "dns", "dataDir", "store",
                          "kubeconfig", "nodeName"}


def test_example_from_the_docs_parses():
    """docs/ipam.md's full example is a valid config."""
    import os
    import re

    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "ipam.md"), encoding="utf-8").read()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", doc, re.S)]
    nets = [b for b in blocks if isinstance(b, dict) and "ipam" in b]
    assert nets, "docs/ipam.md has network config examples"
    for b in nets:
        conf = config.parse(b)
        assert conf.range_sets and all(isinstance(r.ranges[0].subnet, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                                       for r in conf.range_sets)
