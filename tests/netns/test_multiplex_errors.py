"""Bad input to multiplex: each a clear CNI error (code, message, details naming the field),
and nothing left behind: no link in the pod or node, no lease, no cache entry."""
from __future__ import annotations

import json

import pytest

from tests.cnitool import links, run_plugin
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = pytest.mark.root


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf("mpx-pod", "198.18.0.0/24", isGateway=True, isDefaultGateway=True))
    lab.add_nad("blue", bridge_conf("mpx-blue", "198.18.1.0/24"))
    lab.add_nad("green", bridge_conf("mpx-green", "198.18.2.0/24"))
    return lab


def assert_nothing_left(lab: Lab, ns: str) -> None:
    assert links(ns) == {"lo"}
    assert lab.node_links("veth") == set()
    assert lab.leases() == []
    assert lab.cache_entries() == []


def add_raw(lab: Lab, ns: str, stdin: bytes | dict, **env) -> "object":
    """ADD with a raw stdin and/or environment overrides."""
    base = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cid-bad", "CNI_NETNS": f"/var/run/netns/{ns}",
            "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bad"}
    base.update(env)
    import os
    import subprocess

    from tests.cnitool import CNI_PATH, BIN

    full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    full["CNI_PATH"] = CNI_PATH
    full.update({k: v for k, v in base.items() if v is not None})
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    proc = subprocess.run(["ip", "netns", "exec", lab.node, os.path.join(BIN, "multiplex")], input=data, env=full,
                          capture_output=True)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out


def err(out) -> tuple[int, str, str]:
    return out["code"], out["msg"], out.get("details", "")


@pytest.mark.parametrize("missing", ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
def test_missing_env_var_is_code_4_naming_it(lab, missing):
    ns = lab.netns_factory("pod")
    rc, out = add_raw(lab, ns, lab.config(), **{missing: None})
    assert rc == 1
    code, msg, details = err(out)
    assert code == 4 and missing in details
    assert_nothing_left(lab, ns)


def test_unknown_version_is_code_1(lab):
    ns = lab.netns_factory("pod")
    rc, out = add_raw(lab, ns, lab.config(version="9.9.9"))
    code, msg, details = err(out)
    assert (rc, code) == (1, 1) and "cniVersion" in details and "1.1.0" in details
    assert_nothing_left(lab, ns)


def test_bad_json_is_code_6(lab):
    ns = lab.netns_factory("pod")
    rc, out = add_raw(lab, ns, b'{"cniVersion": "1.1.0", "name": ')
    assert (rc, err(out)[0]) == (1, 6)
    assert_nothing_left(lab, ns)


def test_bad_cidr_in_third_network_is_code_7_naming_the_field_before_anything_is_made(lab):
    lab.add_nad("broken", bridge_conf("mpx-broken", "198.18.300.0/24"))
    lab.add_pod("bad", "blue, broken")
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == 7, out
    assert "default/broken" in out.out["details"] and "subnet" in out.out["details"]
    assert_nothing_left(lab, ns)


def test_type_with_a_path_is_refused(lab):
    lab.add_nad("evil", {"type": "../../bin/sh"})
    lab.add_pod("bad", "evil")
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == 7, out
    assert "type" in out.out["details"]
    assert_nothing_left(lab, ns)


def test_unknown_delegate_is_not_found_naming_cni_path(lab):
    lab.add_nad("nosuch", {"type": "no-such-plugin"})
    lab.add_pod("bad", "blue, nosuch")
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == 107, out
    assert "no-such-plugin" in out.out["msg"] and "CNI_PATH" in out.out["details"]
    assert_nothing_left(lab, ns)


def test_interface_name_over_15_characters(lab):
    ns = lab.netns_factory("pod")
    rc, out = add_raw(lab, ns, lab.config(), CNI_IFNAME="a-very-long-ifname0")
    assert (rc, err(out)[0]) == (1, 4) and "CNI_IFNAME" in err(out)[2]
    lab.add_pod("bad", "blue@a-very-long-ifname0")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == 7, out
    assert_nothing_left(lab, ns)


def test_duplicate_interface_names_are_refused(lab):
    lab.add_pod("bad", "blue@x0, green@x0")
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == 7, out
    assert "x0" in out.out["msg"] + out.out["details"]
    assert_nothing_left(lab, ns)


def test_unknown_nad_names_namespace_and_name(lab):
    lab.add_pod("bad", "blue, other/missing")
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == 107, out
    assert "other/missing" in out.out["msg"]
    assert_nothing_left(lab, ns)


def test_unsupported_capability_is_refused(lab):
    lab.add_nad("plain", {"type": "bridge", "bridge": "mpx-plain",
                          "ipam": {"type": "host-local", "subnet": "198.18.7.0/24"}})
    lab.add_pod("bad", json.dumps([{"name": "plain", "mac": "02:00:00:00:00:01"}]))
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == 2, out
    assert "runtimeConfig.mac" in out.out["details"]
    assert_nothing_left(lab, ns)


def test_version_command_needs_nothing(lab):
    out = run_plugin("multiplex", "VERSION", {"cniVersion": "1.1.0"}, ifname="")
    assert out.ok and out.out["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
