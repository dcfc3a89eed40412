"""VNI ownership: the admin's /etc/multiplex/vxlan.json (delegates/vxlan_settings.py) as
`multiplex validate` and ADD's checks see it. What an admin checks: a tenant's NAD with another
namespace's VNI is refused naming `$.vni` and the granted ranges; a namespace absent from the map
gets no VNI; the admin's own network may not take a granted VNI; no file, no restriction; a bad
file is refused naming the file and the field."""
from __future__ import annotations

import json

import pytest

from delegates import vxlan_settings as vs
from multiplex.cli.validate import check_file, validate_file


def nad(ns: str, name: str, vni: int) -> dict:
    config = {"cniVersion": "1.1.0", "type": "multiplex-vxlan-overlay", "vni": vni,
              "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.90.0/24"}]]}}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": ns}, "spec": {"config": json.dumps(config)}}


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """write(body) -> the settings file the checks read ($MULTIPLEX_VXLAN_CONFIG)."""
    path = tmp_path / "vxlan.json"
    monkeypatch.setenv(vs.PATH_ENV, str(path))

    def write(body) -> str:
        path.write_text(body if isinstance(body, str) else json.dumps(body))
        return str(path)

    return write


def write_nad(tmp_path, ns: str, name: str, vni: int) -> str:
    p = tmp_path / f"{ns}-{name}.json"
    p.write_text(json.dumps(nad(ns, name, vni)))
    return str(p)


GRANTS = {"vniRanges": {"tenant-a": ["1000-1999"], "tenant-b": ["2000-2999", 5000]}}


def test_a_tenant_taking_another_namespaces_vni_is_refused_naming_vni_and_its_ranges(tmp_path, settings):
    settings(GRANTS)
    [e] = check_file(write_nad(tmp_path, "tenant-b", "steal", 1500))
    assert e.code == 7, e
    assert "field: tenant-b/steal:$.vni;" in e.details and "2000-2999, 5000" in e.details, e.details
    assert "tenant-b" in e.msg and "1500" in e.msg, e.msg
    assert check_file(write_nad(tmp_path, "tenant-b", "own", 2500)) == []
    assert check_file(write_nad(tmp_path, "tenant-b", "single", 5000)) == []
    assert check_file(write_nad(tmp_path, "tenant-a", "own", 1000)) == []


def test_a_namespace_absent_from_the_map_gets_no_vni(tmp_path, settings):
    settings(GRANTS)
    [e] = check_file(write_nad(tmp_path, "tenant-c", "net", 7000))
    assert e.code == 7 and "field: tenant-c/net:$.vni;" in e.details and "no VNI" in e.msg, e


def test_the_admins_own_network_may_not_take_a_granted_vni(tmp_path, settings):
    """An admin's config (named without a `.`: no NAD can give a delegate such a name) may use any
    VNI no namespace is granted."""
    settings(GRANTS)
    conf = {"cniVersion": "1.1.0", "name": "admin-ov", "type": "multiplex-vxlan-overlay", "vni": 1500,
            "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.90.0/24"}]]}}
    p = tmp_path / "admin.conf"
    p.write_text(json.dumps(conf))
    [e] = check_file(str(p))
    assert e.code == 7 and "field: admin-ov:$.vni;" in e.details and "tenant-a" in e.msg, e
    p.write_text(json.dumps(dict(conf, vni=9000)))
    assert check_file(str(p)) == []


def test_no_file_no_restriction(tmp_path, monkeypatch):
    monkeypatch.setenv(vs.PATH_ENV, str(tmp_path / "absent.json"))
    assert check_file(write_nad(tmp_path, "tenant-z", "net", 1500)) == []


@pytest.mark.parametrize("body, field", [
    ("{not json", "$"),
    ([], "$"),
    ({"vniranges": {}}, "$.vniranges"),
    ({"vniRanges": []}, "$.vniRanges"),
    ({"vniRanges": {"Tenant_A": ["1-2"]}}, "$.vniRanges.Tenant_A"),
    ({"vniRanges": {"a": "1-2"}}, "$.vniRanges.a"),
    ({"vniRanges": {"a": ["1-2", "x"]}}, "$.vniRanges.a[1]"),
    ({"vniRanges": {"a": ["0-10"]}}, "$.vniRanges.a[0]"),
    ({"vniRanges": {"a": ["20-10"]}}, "$.vniRanges.a[0]"),
    ({"vniRanges": {"a": [16777216]}}, "$.vniRanges.a[0]"),
    ({"vniRanges": {"a": [True]}}, "$.vniRanges.a[0]"),
    ({"vniRanges": {"a": ["100-199"], "b": ["300-399", "150-160"]}}, "$.vniRanges.b[1]"),
], ids=["not-json", "not-object", "unknown-field", "ranges-not-map", "bad-namespace", "list-not-list",
        "not-a-range", "zero", "reversed", "too-big", "bool", "overlap"])
def test_a_bad_file_is_refused_naming_the_file_and_field(tmp_path, settings, body, field):
    path = settings(body)
    with pytest.raises(vs.SettingsError) as err:
        vs.load()
    assert err.value.field == field and err.value.path == path, err.value
    # ADD's check (so validate's): code 7, the file and the field, whatever the NAD asks
    [e] = check_file(write_nad(tmp_path, "a", "net", 150))
    assert e.code == 7 and f"file: {path}; field: {field}" == e.details, e
    assert path in e.msg, e.msg


def test_overlap_names_both_namespaces(settings):
    settings({"vniRanges": {"a": ["100-199"], "b": ["150"]}})
    with pytest.raises(vs.SettingsError, match=r"150 overlaps 100-199 of namespace a \(\$\.vniRanges\.a\[0\]\)"):
        vs.load()


def test_one_namespace_may_list_overlapping_ranges_of_its_own(settings):
    settings({"vniRanges": {"a": ["100-199", "150-250"]}})
    assert vs.load().owner(220) == "a"


def test_a_changed_file_is_read_again(settings):
    """kubelet updates a mounted ConfigMap in place: the next ADD sees the new grants."""
    settings(GRANTS)
    assert vs.load().owner(1500) == "tenant-a"
    settings({"vniRanges": {"tenant-c": ["1000-1999"]}})
    assert vs.load().owner(1500) == "tenant-c"


def test_validate_prints_the_refusal(tmp_path, settings):
    settings(GRANTS)
    [line] = validate_file(write_nad(tmp_path, "tenant-b", "steal", 1500))
    assert line.startswith("code 7:") and "tenant-b/steal:$.vni" in line, line


def test_the_namespace_is_the_config_names_part_before_the_first_dot():
    from multiplex.meta.selection import identity_name

    assert vs.namespace_of(identity_name("tenant-a", "ov.v2")) == "tenant-a"
    assert vs.namespace_of("podnet") is None
