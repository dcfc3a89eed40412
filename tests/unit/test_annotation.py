"""The pod annotation k8s.v1.cni.cncf.io/networks: both forms, every field, and a refusal for
every malformed entry that quotes the entry and names the field."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from multiplex.meta.annotation import NETWORKS_ANNOTATION as A, NetworkSelection, parse_networks
from multiplex.cni.errors import CNIError, INVALID_CONFIG


# --- text form --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("macvlan", [("pods", "macvlan", "")]),
    ("tenant-b/macvlan", [("tenant-b", "macvlan", "")]),
    ("macvlan@stor0", [("pods", "macvlan", "stor0")]),
    ("tenant-b/macvlan@stor0", [("tenant-b", "macvlan", "stor0")]),
    (" a , b/c@net7 ,d.e ", [("pods", "a", ""), ("b", "c", "net7"), ("pods", "d.e", "")]),
    ("tenant-b / macvlan @ stor0", [("tenant-b", "macvlan", "stor0")]),
    ("same, same", [("pods", "same", ""), ("pods", "same", "")]),   # one NAD twice: two interfaces
    ("", []),
    ("   ", []),
])
def test_text_form(value, expected):
    got = parse_networks(value, "pods")
    assert [(s.namespace, s.name, s.interface) for s in got] == expected
    assert [s.index for s in got] == list(range(len(expected)))


def test_text_form_keeps_the_entry_for_later_messages():
    sel = parse_networks("a, tenant-b/macvlan@stor0", "pods")[1]
    assert sel.source == "tenant-b/macvlan@stor0"
    assert sel.key == "tenant-b/macvlan"
    assert sel.capability_args() == {}


# --- JSON form --------------------------------------------------------------------------------

def test_json_form_every_field():
    doc = [{"name": "macvlan", "namespace": "tenant-b", "interface": "stor0",
            "ips": ["198.18.4.10/24", "fd00:4::10/64"], "mac": "02:AA:BB:00:00:01",
            "default-route": ["198.18.4.1", "fd00:4::1"], "cni-args": {"vlan": 7, "tag": "x"},
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 1000000, "ingressBurst": 2000, "egressRate": 1000000, "egressBurst": 2000},
            "infiniband-guid": "C2:11:22:33:44:55:66:77", "deviceID": "0000:03:00.1",
            "ipam-claim-reference": "claim-1"},
           {"name": "plain"}]
    a, b = parse_networks(json.dumps(doc), "pods")
    assert (a.namespace, a.name, a.interface) == ("tenant-b", "macvlan", "stor0")
    assert a.ips == ["198.18.4.10/24", "fd00:4::10/64"]
    assert a.mac == "02:aa:bb:00:00:01"
    assert a.default_route == ["198.18.4.1", "fd00:4::1"]
    assert a.cni_args == {"vlan": 7, "tag": "x"}
    assert a.port_mappings == doc[0]["portMappings"]
    assert a.bandwidth == doc[0]["bandwidth"]
    assert a.infiniband_guid == "c2:11:22:33:44:55:66:77"
    assert a.ipam_claim_reference == "claim-1"
    assert a.capability_args() == {
        "ips": ["198.18.4.10/24", "fd00:4::10/64"], "mac": "02:aa:bb:00:00:01",
        "portMappings": doc[0]["portMappings"], "bandwidth": doc[0]["bandwidth"],
        "infinibandGUID": "c2:11:22:33:44:55:66:77", "deviceID": "0000:03:00.1"}
    assert (b.namespace, b.name, b.interface, b.ips, b.cni_args) == ("pods", "plain", "", [], None)
    assert json.loads(a.source) == doc[0]


def test_json_form_addresses_without_prefix_and_normalised():
    (s,) = parse_networks('[{"name": "n", "ips": ["198.18.0.7", "FD00:0:0::7/64"]}]', "pods")
    assert s.ips == ["198.18.0.7", "fd00::7/64"]


def test_json_form_deprecated_interface_request():
    (s,) = parse_networks('[{"name": "n", "interfaceRequest": "old0"}]', "pods")
    assert s.interface == "old0"


def test_json_form_leading_whitespace_and_empty_list():
    assert parse_networks('  [ ]  ', "pods") == []
    assert parse_networks('\n[{"name":"x"}]\n', "pods")[0].name == "x"


def test_default_networks_source_names_the_field():
    with pytest.raises(CNIError) as e:
        parse_networks("good, Bad", "kube-system", source_name="defaultNetworks")
    assert e.value.details.startswith("field: defaultNetworks[1].name")


def test_reserved_interface_of_the_cluster_network():
    with pytest.raises(CNIError) as e:
        parse_networks("macvlan@eth0", "pods", reserved_interfaces=["eth0"])
    assert e.value.code == INVALID_CONFIG
    assert '"macvlan@eth0"' in e.value.msg and "reserved" in e.value.msg
    assert e.value.details.startswith(f"field: {A}[0].interface")


# --- refusals ---------------------------------------------------------------------------------
# (annotation value, the entry the message must quote, the field the details must name)
BAD = [
    # text form
    ("a,,b", '"a,,b"', f"{A}[1]"),
    ("a,", '"a,"', f"{A}[1]"),
    ("ns/sub/name", '"ns/sub/name"', f"{A}[0]"),
    ("name@if1@if2", '"name@if1@if2"', f"{A}[0]"),
    ("MacVLAN", '"MacVLAN"', f"{A}[0].name"),
    ("ok, bad_name", '"bad_name"', f"{A}[1].name"),
    ("-lead", '"-lead"', f"{A}[0].name"),
    ("Tenant/macvlan", '"Tenant/macvlan"', f"{A}[0].namespace"),
    ("/macvlan", '"/macvlan"', f"{A}[0].namespace"),
    ("ns.with.dots/macvlan", '"ns.with.dots/macvlan"', f"{A}[0].namespace"),
    ("macvlan@", '"macvlan@"', f"{A}[0].interface"),
    ("macvlan@averyveryverylongname", '"macvlan@averyveryverylongname"', f"{A}[0].interface"),
    ("macvlan@net 1", '"macvlan@net 1"', f"{A}[0].interface"),
    ("macvlan@..", '"macvlan@.."', f"{A}[0].interface"),
    ("macvlan@lo", '"macvlan@lo"', f"{A}[0].interface"),
    ("a@net1, b@net1", '"b@net1"', f"{A}[1].interface"),
    (f"{'x' * 254}", '"' + "x" * 200 + '..."', f"{A}[0].name"),
    # JSON form
    ('[{"name": "a"', '[{"name": "a"', A),
    ('{"name": "a"}', '{"name": "a"}', A),
    ('[{"interface": "net1"}]', '{"interface":"net1"}', f"{A}[0].name"),
    ('["macvlan"]', None, f"{A}[0]"),
    ('[{"name": "a"}, {"name": "b", "nmae": "c"}]', '{"name":"b","nmae":"c"}', f"{A}[1].nmae"),
    ('[{"name": "UPPER"}]', '{"name":"UPPER"}', f"{A}[0].name"),
    ('[{"name": "a", "namespace": "x/y"}]', '{"name":"a","namespace":"x/y"}', f"{A}[0].namespace"),
    ('[{"name": "a", "interface": "net/1"}]', '{"name":"a","interface":"net/1"}', f"{A}[0].interface"),
    ('[{"name": "a", "interface": "sixteen-chars-xx"}]', None, f"{A}[0].interface"),
    ('[{"name": "a", "ips": ["198.18.0.5/24", "198.18.0.300"]}]', None, f"{A}[0].ips[1]"),
    ('[{"name": "a"}, {"name": "b", "ips": "198.18.0.5"}]', None, f"{A}[1].ips"),
    ('[{"name": "a", "ips": [7]}]', None, f"{A}[0].ips[0]"),
    ('[{"name": "a", "ips": ["198.18.0.5/33"]}]', None, f"{A}[0].ips[0]"),
    ('[{"name": "a", "ips": ["0.0.0.0/0"]}]', None, f"{A}[0].ips[0]"),
    ('[{"name": "a", "ips": ["224.0.0.5"]}]', None, f"{A}[0].ips[0]"),
    ('[{"name": "a", "ips": ["198.18.0.5", "198.18.0.5"]}]', None, f"{A}[0].ips[1]"),
    ('[{"name": "a", "mac": "02:00:00:00:00"}]', None, f"{A}[0].mac"),
    ('[{"name": "a", "mac": "zz:00:00:00:00:01"}]', None, f"{A}[0].mac"),
    ('[{"name": "a", "mac": "01:00:5e:00:00:01"}]', None, f"{A}[0].mac"),
    ('[{"name": "a", "default-route": ["198.18.0.1/24"]}]', None, f"{A}[0]['default-route'][0]"),
    ('[{"name": "a", "default-route": "198.18.0.1"}]', None, f"{A}[0]['default-route']"),
    ('[{"name": "a", "default-route": ["198.18.0.1", "198.18.0.2"]}]', None, f"{A}[0]['default-route'][1]"),
    ('[{"name": "a", "default-route": ["198.18.0.1"]}, {"name": "b", "default-route": ["198.18.1.1"]}]',
     '{"name":"b","default-route":["198.18.1.1"]}', f"{A}[1]['default-route'][0]"),
    ('[{"name": "a", "cni-args": ["x"]}]', None, f"{A}[0]['cni-args']"),
    ('[{"name": "a", "portMappings": [{"hostPort": 80}]}]', None, f"{A}[0].portMappings[0].containerPort"),
    ('[{"name": "a", "portMappings": [{"containerPort": 70000}]}]', None, f"{A}[0].portMappings[0].containerPort"),
    ('[{"name": "a", "portMappings": [{"containerPort": 80, "protocol": "icmp"}]}]', None,
     f"{A}[0].portMappings[0].protocol"),
    ('[{"name": "a", "bandwidth": {"ingressRate": -1}}]', None, f"{A}[0].bandwidth.ingressRate"),
    ('[{"name": "a", "infiniband-guid": "c2:11:22"}]', None, f"{A}[0]['infiniband-guid']"),
    ('[{"name": "a", "interface": "net1"}, {"name": "b", "interface": "net1"}]',
     '{"name":"b","interface":"net1"}', f"{A}[1].interface"),
    # matched whole: a trailing newline is not part of a valid name; interface names count bytes
    ('[{"name": "blue\\n"}]', None, f"{A}[0].name"),
    ('[{"name": "a", "namespace": "pods\\n"}]', None, f"{A}[0].namespace"),
    ('[{"name": "a", "interface": "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"}]', None,
     f"{A}[0].interface"),
    ("a@" + "\u00e9" * 9, json.dumps("a@" + "\u00e9" * 9), f"{A}[0].interface"),
]


@pytest.mark.parametrize("value, quoted, field", BAD, ids=[b[0][:40] for b in BAD])
def test_refused_with_quote_and_field(value, quoted, field):
    with pytest.raises(CNIError) as e:
        parse_networks(value, "pods")
    err = e.value
    assert err.code == INVALID_CONFIG
    assert A in err.msg
    if quoted is None:   # the JSON entry, compact, as the message shows it
        doc = json.loads(value)
        index = int(field[len(A) + 1:].split("]")[0]) if field != A else None
        quoted = json.dumps(doc if index is None else doc[index], separators=(",", ":"))
        if len(quoted) > 200:
            quoted = quoted[:200]
    assert quoted in err.msg, err.msg
    assert err.details.startswith(f"field: {field}"), err.details
    assert "allowed: " in err.details


def test_refusal_table_is_large_enough():
    assert len(BAD) >= 15
    assert sum(1 for v, _, _ in BAD if v.lstrip()[:1] in "[{") >= 15


def test_an_annotation_over_64_kib_is_refused_before_parsing():
    from multiplex.meta.annotation import MAX_ANNOTATION_BYTES

    value = json.dumps([{"name": "a", "cni-args": {"pad": "x" * MAX_ANNOTATION_BYTES}}])
    with pytest.raises(CNIError) as e:
        parse_networks(value, "pods")
    assert e.value.code == INVALID_CONFIG
    assert e.value.details == f"field: {A}; allowed: at most {MAX_ANNOTATION_BYTES} bytes"
    assert parse_networks(json.dumps([{"name": "a", "cni-args": {"pad": "x" * 60000}}]), "pods")[0].name == "a"


def test_long_entry_is_quoted_shortened():
    with pytest.raises(CNIError) as e:
        parse_networks("x" * 1000, "pods")
    assert len(e.value.msg) < 400 and "..." in e.value.msg


def test_parsing_text_imports_no_jsonschema():
    code = ("import sys; from multiplex.meta.annotation import parse_networks; parse_networks('a, b/c@net1', 'p');"
            "print('jsonschema' in sys.modules, 'kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_selection_is_a_dataclass_with_defaults():
    s = NetworkSelection(name="n", namespace="ns")
    assert (s.interface, s.ips, s.default_route, s.port_mappings, s.key) == ("", [], [], [], "ns/n")


@pytest.mark.parametrize("value", ["blue" + " " * 100_000, " " * 70_000 + "blue", "\n" * 70_000,
                                   json.dumps([{"name": "blue"}]) + "\t" * 70_000])
def test_the_size_bound_counts_whitespace_as_written(value):
    from multiplex.meta.annotation import MAX_ANNOTATION_BYTES

    with pytest.raises(CNIError) as e:
        parse_networks(value, "default")
    assert e.value.code == INVALID_CONFIG
    assert e.value.details == f"field: {A}; allowed: at most {MAX_ANNOTATION_BYTES} bytes"


def test_padding_within_the_bound_is_still_stripped():
    from multiplex.meta.annotation import MAX_ANNOTATION_BYTES

    sels = parse_networks("  blue" + " " * (MAX_ANNOTATION_BYTES - 6), "default")
    assert [(s.namespace, s.name) for s in sels] == [("default", "blue")]


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000,
                                   json.dumps([{"name": "blue", "cni-args": {"x": "PLACE"}}]).replace(
                                       '"PLACE"', "[" * 2000 + "]" * 2000)])
def test_json_nested_thousands_deep_is_code_7_not_a_recursion_error(value):
    with pytest.raises(CNIError) as e:
        parse_networks(value, "default")
    assert e.value.code == INVALID_CONFIG and f"field: {A}" in e.value.details
    assert "levels" in e.value.msg


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_in_the_json_form_are_not_json(literal):
    with pytest.raises(CNIError) as e:
        parse_networks('[{"name": "blue", "cni-args": {"x": %s}}]' % literal, "default")
    assert e.value.code == INVALID_CONFIG and f"field: {A}" in e.value.details


def test_cni_args_nested_a_few_levels_are_accepted():
    sels = parse_networks(json.dumps([{"name": "blue", "cni-args": {"a": {"b": [[{"c": 1}]]}}}]), "default")
    assert sels[0].cni_args == {"a": {"b": [[{"c": 1}]]}}
