"""network-status entries: one per pod interface, the fields a user reads with kubectl, valid
against schemas/network-status.json."""
from __future__ import annotations

import json

import pytest

from multiplex.util import schema
from multiplex.cni.types import Result
from multiplex.meta.netstatus import AttachmentStatus, network_status, network_status_entries, status_entry


def parse_network_status(text: str) -> list[dict]:
    """The entries of an annotation value ([] when empty), as a reader of the pod would get them."""
    return json.loads(text) if text and text.strip() else []


CLUSTER = Result.from_dict({
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "veth1234", "mac": "ee:ee:ee:00:00:01"},
                   {"name": "eth0", "mac": "0a:58:c6:12:00:05", "mtu": 1450, "sandbox": "/var/run/netns/p"}],
    "ips": [{"interface": 1, "address": "198.18.0.5/24", "gateway": "198.18.0.1"},
            {"interface": 1, "address": "fd00:12::5/64", "gateway": "fd00:12::1"}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.0.1"}],
    "dns": {"nameservers": ["198.18.0.53"], "search": ["svc.cluster.local"]},
})
MACVLAN = Result.from_dict({
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:07", "sandbox": "/var/run/netns/p"}],
    "ips": [{"interface": 0, "address": "198.18.4.10/24"}],
})
OLD_STYLE = Result.from_dict({      # a 0.3-era result: no interface index on the IP
    "cniVersion": "0.3.1", "ips": [{"version": "4", "address": "198.18.9.2/24", "gateway": "198.18.9.1"}],
})
DEVICE = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:03:00.1"}}


def test_one_entry_per_interface_with_every_field():
    text = network_status([("cbr0", "eth0", CLUSTER, True, None),
                           ("tenant-b/macvlan", "net1", MACVLAN, False, DEVICE)])
    cluster, macvlan = json.loads(text)
    assert cluster == {"name": "cbr0", "interface": "eth0", "ips": ["198.18.0.5", "fd00:12::5"],
                       "mac": "0a:58:c6:12:00:05", "mtu": 1450, "default": True,
                       "dns": {"nameservers": ["198.18.0.53"], "search": ["svc.cluster.local"]},
                       "gateway": ["198.18.0.1", "fd00:12::1"]}
    assert macvlan == {"name": "tenant-b/macvlan", "interface": "net1", "ips": ["198.18.4.10"],
                       "mac": "02:00:00:00:00:07", "default": False, "dns": {}, "device-info": DEVICE}


def test_output_matches_the_schema():
    text = network_status([("cbr0", "eth0", CLUSTER, True, None),
                           ("tenant-b/macvlan", "net1", MACVLAN, False, DEVICE),
                           ("default/old", "net2", OLD_STYLE, False, None)])
    assert schema.errors("network-status", json.loads(text)) == []


def test_schema_refuses_a_prefix_in_ips():
    bad = [{"name": "x", "interface": "eth0", "ips": ["198.18.0.5/24"], "default": True}]
    assert schema.errors("network-status", bad)


def test_ips_without_interface_index_belong_to_the_interface():
    (entry,) = network_status_entries([AttachmentStatus("default/old", "net2", OLD_STYLE)])
    assert entry["ips"] == ["198.18.9.2"] and entry["gateway"] == ["198.18.9.1"]
    assert "mac" not in entry and entry["default"] is False


def test_only_the_named_pod_interface_counts():
    res = Result.from_dict({"interfaces": [{"name": "host-side", "mac": "ee:00:00:00:00:01"},
                                           {"name": "net3", "mac": "02:00:00:00:00:03", "sandbox": "/p"}],
                            "ips": [{"interface": 0, "address": "198.18.7.1/32"},
                                    {"interface": 1, "address": "198.18.7.2/24"}]})
    entry = status_entry(AttachmentStatus("a/b", "net3", res))
    assert entry["ips"] == ["198.18.7.2"] and entry["mac"] == "02:00:00:00:00:03"


def test_parse_roundtrip_and_empty():
    text = network_status([("cbr0", "eth0", CLUSTER, True, None)])
    assert parse_network_status(text)[0]["interface"] == "eth0"
    assert parse_network_status("") == []


def test_accepts_tuples_and_dataclasses_alike():
    a = network_status_entries([("n", "eth0", MACVLAN, True, None)])
    b = network_status_entries([AttachmentStatus("n", "eth0", MACVLAN, True)])
    assert a == b


@pytest.mark.parametrize("bad_field, value", [("mtu", 10), ("default", "yes"), ("device-info", {"type": "pci"})])
def test_schema_checks_fields(bad_field, value):
    entry = {"name": "x", "interface": "eth0", "ips": [], "default": True, bad_field: value}
    assert schema.errors("network-status", [entry])
