"""Result conversion between every supported CNI version, and the VERSION answer."""
from __future__ import annotations

import io
import json

import pytest

from multiplex.cni import skel, version
from multiplex.cni.errors import DECODE_FAILURE, CNIError
from multiplex.cni.plugin import Plugin
from multiplex.cni.types import Result

ALL = list(version.SUPPORTED)
OLD = ["0.3.0", "0.3.1", "0.4.0"]
NEW = ["1.0.0", "1.1.0"]

# A 1.1.0 result using every field, dual stack, two interfaces.
FULL = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "br0", "mac": "0a:58:c6:12:00:01", "mtu": 1450},
        {"name": "eth0", "mac": "0a:58:c6:12:00:02", "mtu": 1450, "sandbox": "/var/run/netns/p1",
         "socketPath": "/run/vhost.sock", "pciID": "0000:00:1f.6"},
    ],
    "ips": [
        {"interface": 1, "address": "198.18.0.2/24", "gateway": "198.18.0.1"},
        {"interface": 1, "address": "fd00:1::2/64", "gateway": "fd00:1::1"},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "198.18.0.1", "mtu": 1400, "advmss": 1360, "priority": 10,
         "table": 100, "scope": 0},
        {"dst": "::/0"},
    ],
    "dns": {"nameservers": ["198.18.0.53"], "domain": "cluster.local", "search": ["svc.cluster.local"],
            "options": ["ndots:5"]},
}
NEW_ONLY_IFACE = ("mtu", "socketPath", "pciID")
NEW_ONLY_ROUTE = ("mtu", "advmss", "priority", "table", "scope")


@pytest.mark.parametrize("v", ALL)
def test_result_written_in_each_version_carries_ip_version_only_before_1_0(v):
    out = Result.from_dict(FULL).to_dict(v)
    assert out["cniVersion"] == v
    for ip in out["ips"]:
        if v in OLD:
            assert ip["version"] == ("4" if "." in ip["address"] else "6")
        else:
            assert "version" not in ip


@pytest.mark.parametrize("v", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_fields_new_in_1_1_are_dropped_for_older_versions(v):
    out = Result.from_dict(FULL).to_dict(v)
    for iface in out["interfaces"]:
        assert not set(NEW_ONLY_IFACE) & set(iface), iface
    for route in out["routes"]:
        assert not set(NEW_ONLY_ROUTE) & set(route), route
    # what every version has stays
    assert out["interfaces"][1] == {"name": "eth0", "mac": "0a:58:c6:12:00:02", "sandbox": "/var/run/netns/p1"}
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "198.18.0.1"}
    assert out["dns"] == FULL["dns"]


def test_1_1_keeps_every_field():
    assert Result.from_dict(FULL).to_dict("1.1.0") == FULL


@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", ALL)
def test_round_trip_between_any_two_versions(src, dst):
    """A result written in `src`, read back and written in `dst`, equals FULL written in `dst`,
    minus what `src` cannot carry."""
    written = Result.from_dict(FULL).to_dict(src)
    again = Result.from_dict(json.loads(json.dumps(written))).to_dict(dst)
    expected = Result.from_dict(FULL).to_dict(dst)
    if src != "1.1.0":  # the 1.1.0-only fields were lost on the way through `src`
        expected = Result.from_dict(Result.from_dict(FULL).to_dict("1.0.0")).to_dict(dst)
    assert again == expected


def test_old_result_with_version_fields_reads_back():
    old = {"cniVersion": "0.3.1",
           "interfaces": [{"name": "eth0", "sandbox": "/proc/1/ns/net"}],
           "ips": [{"version": "4", "interface": 0, "address": "198.18.1.5/24", "gateway": "198.18.1.1"},
                   {"version": "6", "address": "fd00:2::5/64"}],
           "routes": [{"dst": "198.19.0.0/16", "gw": "198.18.1.1"}],
           "dns": {}}
    r = Result.from_dict(old)
    assert [str(ip.address) for ip in r.ips] == ["198.18.1.5/24", "fd00:2::5/64"]
    assert [ip.family for ip in r.ips] == [4, 6]
    assert r.ips[0].interface == 0 and r.ips[1].interface is None
    assert r.to_dict("1.0.0")["ips"] == [
        {"interface": 0, "address": "198.18.1.5/24", "gateway": "198.18.1.1"},
        {"address": "fd00:2::5/64"}]


@pytest.mark.parametrize("bad, field", [
    ({"ips": [{"address": "198.18.0.300/24"}]}, "ips[0].address"),
    ({"ips": [{"address": "198.18.0.2/24", "gateway": "nope"}]}, "ips[0].gateway"),
    ({"ips": [{"gateway": "198.18.0.1"}]}, "ips[0]"),
    ({"routes": [{"gw": "198.18.0.1"}]}, "routes[0]"),
    ({"routes": [{"dst": "198.18.0.0/33"}]}, "routes[0].dst"),
])
def test_bad_result_is_a_decode_failure_naming_the_field(bad, field):
    with pytest.raises(CNIError) as e:
        Result.from_dict({"cniVersion": "1.0.0", **bad})
    assert e.value.code == DECODE_FAILURE
    assert f"field: {field}" in e.value.details


def test_version_command_lists_every_supported_version():
    out = io.StringIO()
    rc = skel.run(Plugin(), {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}', out)
    assert rc == 0
    answer = json.loads(out.getvalue())
    assert answer == {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
