"""Network configs: single plugin configs and conflists, each bad input a clear error."""
from __future__ import annotations

import json

import pytest

from multiplex.cni import errors
from multiplex.cni.conflist import NetworkList, load, parse
from multiplex.cni.errors import CNIError

BRIDGE = {"type": "bridge", "bridge": "mpx0", "ipam": {"type": "host-local", "subnet": "198.18.0.0/24"}}
TUNING = {"type": "tuning", "capabilities": {"mac": True}}


def conflist(**over):
    c = {"cniVersion": "1.0.0", "name": "net-a", "plugins": [BRIDGE, TUNING]}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def refused(data, code, field, **kw) -> CNIError:
    with pytest.raises(CNIError) as e:
        parse(data, **kw)
    assert e.value.code == code, e.value
    assert e.value.details.startswith(f"field: {field}"), e.value.details
    return e.value


def test_conflist():
    nl = parse(conflist(disableCheck=True))
    assert nl == NetworkList(name="net-a", cni_version="1.0.0", plugins=[BRIDGE, TUNING],
                             disable_check=True, disable_gc=False, raw=conflist(disableCheck=True))
    assert nl.types == ["bridge", "tuning"]


def test_single_plugin_config_is_a_list_of_one():
    single = {"cniVersion": "0.4.0", "name": "net-b", **BRIDGE}
    nl = parse(single)
    assert (nl.name, nl.cni_version, nl.plugins) == ("net-b", "0.4.0", [single])


def test_plugins_are_copies():
    data = conflist()
    nl = parse(data)
    nl.plugins[0]["bridge"] = "changed"
    assert data["plugins"][0]["bridge"] == "mpx0"


def test_json_text_such_as_a_nad_spec_config():
    nl = parse(json.dumps(conflist()))
    assert nl.name == "net-a"
    nl = parse(json.dumps(conflist()).encode())
    assert nl.types == ["bridge", "tuning"]


def test_text_that_is_not_json_is_a_decode_failure():
    refused('{"cniVersion": "1.0.0", "plugins": [', errors.DECODE_FAILURE, "$.spec.config",
            where="$.spec.config")


def test_not_an_object():
    refused("[1, 2]", errors.INVALID_CONFIG, "$")


def test_neither_type_nor_plugins():
    refused({"cniVersion": "1.0.0", "name": "x"}, errors.INVALID_CONFIG, "$.type")


@pytest.mark.parametrize("plugins, field", [
    ([], "$.plugins"),
    ({"type": "bridge"}, "$.plugins"),
    ([BRIDGE, "tuning"], "$.plugins[1]"),
    ([BRIDGE, {"capabilities": {"mac": True}}], "$.plugins[1].type"),
    ([BRIDGE, {"type": 5}], "$.plugins[1].type"),
    ([BRIDGE, {"type": ""}], "$.plugins[1].type"),
    ([BRIDGE, {"type": "../../bin/sh"}], "$.plugins[1].type"),
    ([{"type": "/usr/lib/cni/bridge"}], "$.plugins[0].type"),
    ([BRIDGE, {"type": "tuning", "capabilities": ["mac"]}], "$.plugins[1].capabilities"),
    ([BRIDGE, {"type": "tuning", "capabilities": {"mac": "yes"}}], "$.plugins[1].capabilities.mac"),
    ([{"type": "bridge", "ipam": "host-local"}], "$.plugins[0].ipam"),
    ([{"type": "bridge", "ipam": {"type": "../host-local"}}], "$.plugins[0].ipam.type"),
])
def test_malformed_plugins_name_the_field(plugins, field):
    refused(conflist(plugins=plugins), errors.INVALID_CONFIG, field)


def test_type_with_a_path_says_what_is_allowed():
    e = refused(conflist(plugins=[{"type": "../bridge"}]), errors.INVALID_CONFIG, "$.plugins[0].type")
    assert "no '/' or '..'" in e.details


def test_single_config_type_with_a_path():
    refused({"cniVersion": "1.0.0", "name": "x", "type": "a/b"}, errors.INVALID_CONFIG, "$.type")


def test_where_prefixes_every_path():
    refused(conflist(plugins=[BRIDGE, {"type": "x/y"}]), errors.INVALID_CONFIG,
            "ns1/net-a:$.plugins[1].type", where="ns1/net-a:$")


@pytest.mark.parametrize("name", [None, "", "-starts-with-dash", "has space", "a/b", 7])
def test_bad_or_missing_name(name):
    refused(conflist(name=name), errors.INVALID_CONFIG, "$.name")


def test_default_name_fills_a_missing_one():
    assert parse(conflist(name=None), default_name="from-nad").name == "from-nad"
    assert parse(conflist(), default_name="from-nad").name == "net-a"


def test_missing_version_is_invalid_config():
    refused(conflist(cniVersion=None), errors.INVALID_CONFIG, "$.cniVersion")
    refused(conflist(cniVersion=1.0), errors.INVALID_CONFIG, "$.cniVersion")


def test_default_version_fills_a_missing_one():
    assert parse(conflist(cniVersion=None), default_version="0.4.0").cni_version == "0.4.0"


@pytest.mark.parametrize("v", ["0.2.0", "1.2.0", "2.0", "x"])
def test_unsupported_version_is_incompatible(v):
    e = refused(conflist(cniVersion=v), errors.INCOMPATIBLE_VERSION, "$.cniVersion")
    assert "1.1.0" in e.details


def test_cni_versions_picks_the_highest_supported():
    nl = parse(conflist(cniVersion="0.4.0", cniVersions=["0.4.0", "1.0.0", "1.1.0", "1.2.0", "0.2.0"]))
    assert nl.cni_version == "1.1.0"
    nl = parse(conflist(cniVersion=None, cniVersions=["1.0.0", "0.3.1"]))
    assert nl.cni_version == "1.0.0"


def test_cni_versions_none_supported_falls_back_to_cni_version():
    assert parse(conflist(cniVersion="0.4.0", cniVersions=["9.0.0"])).cni_version == "0.4.0"
    refused(conflist(cniVersion=None, cniVersions=["9.0.0", "2.1.0"]), errors.INCOMPATIBLE_VERSION,
            "$.cniVersions")


@pytest.mark.parametrize("versions, field", [("1.1.0", "$.cniVersions"), (["1.1.0", 1], "$.cniVersions[1]"),
                                              (["1.1.0", "one"], "$.cniVersions[1]")])
def test_malformed_cni_versions(versions, field):
    refused(conflist(cniVersions=versions), errors.INVALID_CONFIG, field)


@pytest.mark.parametrize("key, attr", [("disableCheck", "disable_check"), ("disableGC", "disable_gc")])
def test_disable_flags(key, attr):
    assert getattr(parse(conflist(**{key: True})), attr) is True
    assert getattr(parse(conflist(**{key: "true"})), attr) is True  # libcni accepts the string
    assert getattr(parse(conflist()), attr) is False
    refused(conflist(**{key: "yes"}), errors.INVALID_CONFIG, f"$.{key}")


def test_load_file(tmp_path):
    p = tmp_path / "10-net.conflist"
    p.write_text(json.dumps(conflist()))
    assert load(str(p)).name == "net-a"
    with pytest.raises(CNIError) as e:
        load(str(tmp_path / "missing.conf"))
    assert e.value.code == errors.IO_FAILURE and "missing.conf" in e.value.details
