"""Bad input to multiplex: each a clear CNI error (code, message, details naming the field),
and nothing left behind: no link in the pod or node, no lease, no cache entry."""
from __future__ import annotations

import json

import pytest

from tests.cnitool import run_plugin
from tests.netns.mpxlab import Lab, bridge_conf, bridge_lab

pytestmark = pytest.mark.root


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    return bridge_lab(node, str(tmp_path), netns_factory, ("mpx-pod", "198.18.0.0/24"),
                      blue=("mpx-blue", "198.18.1.0/24"), green=("mpx-green", "198.18.2.0/24"))


def assert_nothing_left(lab: Lab, ns: str) -> None:
    """No link in the pod nor veth on the node, no lease, no cache entry."""
    assert lab.residue(ns) == []


def refused_add(lab: Lab, networks: str, code: int):
    """ADD of pod `bad` whose annotation is `networks`: refused with `code`, nothing left behind.
    Returns the error (msg, details) for the test's own checks of what it names."""
    lab.add_pod("bad", networks)
    ns = lab.netns_factory("pod")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == code, out
    assert_nothing_left(lab, ns)
    return out.out


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


def plugin_conf(lab: Lab, plugin: str, name: str) -> dict:
    """The config a test sends `plugin`: the lab's multiplex config, or a standalone bridge `mpx-<name>`."""
    if plugin == "multiplex":
        return lab.config()
    return dict(bridge_conf(f"mpx-{name}", "198.18.3.0/24"), cniVersion="1.1.0", name=name)


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
    error = refused_add(lab, "blue, broken", 7)
    assert "default/broken" in error["details"] and "subnet" in error["details"]


def test_type_with_a_path_is_refused(lab):
    lab.add_nad("evil", {"type": "../../bin/sh"})
    assert "type" in refused_add(lab, "evil", 7)["details"]


def test_unknown_delegate_is_not_found_naming_cni_path(lab):
    lab.add_nad("nosuch", {"type": "no-such-plugin"})
    error = refused_add(lab, "blue, nosuch", 107)
    assert "no-such-plugin" in error["msg"] and "CNI_PATH" in error["details"]


def test_interface_name_over_15_characters(lab):
    ns = lab.netns_factory("pod")
    rc, out = add_raw(lab, ns, lab.config(), CNI_IFNAME="a-very-long-ifname0")
    assert (rc, err(out)[0]) == (1, 4) and "CNI_IFNAME" in err(out)[2]
    lab.add_pod("bad", "blue@a-very-long-ifname0")
    out = lab.cni("ADD", "bad", ns, container_id="cid-bad")
    assert out.rc == 1 and out.code == 7, out
    assert_nothing_left(lab, ns)


def test_duplicate_interface_names_are_refused(lab):
    error = refused_add(lab, "blue@x0, green@x0", 7)
    assert "x0" in error["msg"] + error["details"]


def test_unknown_nad_names_namespace_and_name(lab):
    # the pod's own namespace: isolation allows it
    assert "default/missing" in refused_add(lab, "blue, default/missing", 107)["msg"]


def test_unsupported_capability_is_refused(lab):
    lab.add_nad("plain", {"type": "bridge", "bridge": "mpx-plain",
                          "ipam": {"type": "host-local", "subnet": "198.18.7.0/24"}})
    error = refused_add(lab, json.dumps([{"name": "plain", "mac": "02:00:00:00:00:01"}]), 2)
    assert "mac" in error["details"].split(";")[0]  # the field: the annotation's or runtimeConfig's mac


def test_version_command_needs_nothing(lab):
    out = run_plugin("multiplex", "VERSION", {"cniVersion": "1.1.0"}, ifname="")
    assert out.ok and out.out["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


# ---- input limits (issue 8): each a clear error before anything is touched -----------------------

@pytest.mark.parametrize("command", ["ADD", "CHECK"])
@pytest.mark.parametrize("which", ["node-netns-bind-mount", "proc-self"])
def test_cni_netns_naming_the_plugins_own_netns_is_code_4(lab, command, which):
    """The plugin runs in the node's netns: CNI_NETNS naming it (by its bind mount or by
    /proc/self) would put the pod's interfaces on the node."""
    lab.add_pod("bad", "blue")
    netns = f"/var/run/netns/{lab.node}" if which == "node-netns-bind-mount" else "/proc/self/ns/net"
    node_links = lab.node_links("veth") | lab.node_links("bridge")
    rc, out = add_raw(lab, lab.node, lab.config(), CNI_COMMAND=command, CNI_NETNS=netns,
                      CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bad")
    code, msg, details = err(out)
    assert (rc, code) == (1, 4) and "field: CNI_NETNS" in details, out
    assert lab.node_links("veth") | lab.node_links("bridge") == node_links
    assert lab.leases() == [] and lab.cache_entries() == []


def test_bridge_standalone_refuses_its_own_netns(lab):
    conf = dict(bridge_conf("mpx-own", "198.18.3.0/24"), cniVersion="1.1.0", name="own")
    out = run_plugin("multiplex-bridge", "ADD", conf, node=lab.node, container_id="cid-own",
                     netns=f"/var/run/netns/{lab.node}",
                     extra_env={"MULTIPLEX_STATE_DIR": lab.state_dir})
    assert out.rc == 1 and out.code == 4 and "field: CNI_NETNS" in out.out["details"], out
    assert lab.node_links("veth") == set() and lab.node_links("bridge") == set()


@pytest.mark.parametrize("plugin", ["multiplex", "multiplex-bridge"])
def test_ifname_of_nine_e_acute_is_18_bytes_and_code_4(lab, plugin):
    ns = lab.netns_factory("pod")
    conf = plugin_conf(lab, plugin, "ifb")
    out = run_plugin(plugin, "ADD", conf, node=lab.node, container_id="cid-bad", netns=ns, ifname="é" * 9,
                     args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=bad",
                     extra_env={"MULTIPLEX_STATE_DIR": lab.state_dir})
    assert out.rc == 1 and out.code == 4 and "field: CNI_IFNAME" in out.out["details"], out
    assert "18 bytes" in out.out["msg"]
    assert_nothing_left(lab, ns)


@pytest.mark.parametrize("length", [129, 240, 300])
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_container_id_over_128_characters_is_code_4(lab, length, command):
    lab.add_pod("bad", "blue")
    ns = lab.netns_factory("pod")
    rc, out = add_raw(lab, ns, lab.config(), CNI_COMMAND=command, CNI_CONTAINERID="c" * length)
    code, msg, details = err(out)
    assert (rc, code) == (1, 4) and "field: CNI_CONTAINERID" in details and "128" in details, out
    assert_nothing_left(lab, ns)


def test_container_id_with_a_trailing_newline_is_code_4(lab):
    ns = lab.netns_factory("pod")
    rc, out = add_raw(lab, ns, lab.config(), CNI_CONTAINERID="cid-bad\n")
    assert (rc, err(out)[0]) == (1, 4) and "field: CNI_CONTAINERID" in err(out)[2]
    assert_nothing_left(lab, ns)


@pytest.mark.parametrize("plugin", ["multiplex", "multiplex-bridge"])
def test_config_over_1_mib_is_refused_before_parsing(lab, plugin):
    ns = lab.netns_factory("pod")
    conf = plugin_conf(lab, plugin, "big")
    conf["padding"] = "x" * (10 * 1024 * 1024)
    out = run_plugin(plugin, "ADD", conf, node=lab.node, container_id="cid-bad", netns=ns,
                     args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=bad",
                     extra_env={"MULTIPLEX_STATE_DIR": lab.state_dir})
    assert out.rc == 1 and out.code == 7 and "field: stdin" in out.out["details"], out
    assert "1048576" in out.out["details"] and str(len(json.dumps(conf))) in out.out["msg"]
    assert_nothing_left(lab, ns)


@pytest.mark.parametrize("plugin", ["multiplex", "multiplex-bridge"])
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_deeply_nested_config_is_code_7_not_a_recursion_traceback(lab, plugin, command):
    ns = lab.netns_factory("pod")
    head = json.dumps(plugin_conf(lab, plugin, "deep"))[:-1]
    data = (head + ', "deep": ' + "[" * 200000 + "]" * 200000 + "}").encode()
    rc, out = add_raw(lab, ns, data, CNI_COMMAND=command) if plugin == "multiplex" else _raw(lab, plugin, ns, data,
                                                                                               command)
    code, msg, details = err(out)
    assert (rc, code) == (1, 7) and "field: stdin" in details and "64" in details, out
    assert_nothing_left(lab, ns)


def _raw(lab: Lab, plugin: str, ns: str, data: bytes, command: str):
    import os
    import subprocess

    from tests.cnitool import BIN, cni_env

    env = cni_env(command, "cid-bad", ns, "eth0", extra_env={"MULTIPLEX_STATE_DIR": lab.state_dir})
    proc = subprocess.run(["ip", "netns", "exec", lab.node, os.path.join(BIN, plugin)], input=data, env=env,
                          capture_output=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)
