"""The CNI call as a runtime makes it: env + stdin parsed, each error reached through a real bad
input, printed as the spec's error JSON on stdout with exit code 1 and nothing else."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from multiplex.cni import errors, skel
from multiplex.cni.plugin import Plugin
from multiplex.cni.request import Request
from multiplex.cni.types import Interface, IPConfig, Result

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Echo(Plugin):
    """Answers ADD with one interface/address; records what it was given."""
    type_name = "echo"

    def __init__(self):
        self.seen: list[Request] = []

    def add(self, req):
        import ipaddress
        self.seen.append(req)
        r = Result()
        r.add_interface(Interface(name=req.ifname, sandbox=req.netns))
        r.ips.append(IPConfig(address=ipaddress.ip_interface("198.18.3.4/24"), interface=0))
        return r

    def delete(self, req):
        self.seen.append(req)

    def check(self, req):
        self.seen.append(req)


def env(command="ADD", **over):
    e = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/p1",
         "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}
    e.update(over)
    return {k: v for k, v in e.items() if v is not None}


def conf(**over):
    c = {"cniVersion": "1.1.0", "name": "net1", "type": "echo"}
    c.update(over)
    return json.dumps({k: v for k, v in c.items() if v is not None}).encode()


def call(environ, stdin, plugin=None):
    out = io.StringIO()
    rc = skel.run(plugin or Echo(), environ, stdin, out)
    text = out.getvalue()
    return rc, json.loads(text) if text else None  # DEL, CHECK, GC, STATUS print nothing on success


def assert_error(rc, out, code, field):
    assert rc == 1
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert out["code"] == code, out
    assert out["msg"]
    assert f"field: {field}" in out.get("details", ""), out


def test_add_parses_every_variable():
    p = Echo()
    rc, out = call(env(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web;K8S_POD_UID=u-1"),
                   conf(), p)
    assert rc == 0
    assert out["interfaces"] == [{"name": "eth0", "sandbox": "/var/run/netns/p1"}]
    req = p.seen[0]
    assert (req.container_id, req.netns, req.ifname) == ("c0ffee", "/var/run/netns/p1", "eth0")
    assert req.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert req.args["IgnoreUnknown"] == "1"
    assert req.pod == ("ns1", "web", "u-1")


@pytest.mark.parametrize("v", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_printed_in_the_configs_version(v):
    rc, out = call(env(), conf(cniVersion=v))
    assert rc == 0 and out["cniVersion"] == v
    assert ("version" in out["ips"][0]) == (v in ("0.3.0", "0.3.1", "0.4.0"))


def test_missing_cni_command():
    e = env()
    del e["CNI_COMMAND"]
    assert_error(*call(e, conf()), errors.INVALID_ENVIRONMENT, "CNI_COMMAND")


def test_unknown_cni_command():
    assert_error(*call(env("SETUP"), conf()), errors.INVALID_ENVIRONMENT, "CNI_COMMAND")


@pytest.mark.parametrize("command, var", [("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_NETNS"),
                                          ("ADD", "CNI_IFNAME"), ("DEL", "CNI_CONTAINERID"),
                                          ("CHECK", "CNI_NETNS")])
def test_missing_required_variable(command, var):
    assert_error(*call(env(command, **{var: None}), conf()), errors.INVALID_ENVIRONMENT, var)


def test_del_without_netns_is_fine():
    """DEL after the netns is gone: the runtime may leave CNI_NETNS empty."""
    rc, out = call(env("DEL", CNI_NETNS=None), conf())
    assert (rc, out) == (0, None)


def test_bad_json_stdin_is_decode_failure():
    assert_error(*call(env(), b'{"cniVersion": "1.1.0", "name": '), errors.DECODE_FAILURE, "stdin")


def test_stdin_not_an_object_is_decode_failure():
    assert_error(*call(env(), b'["a"]'), errors.DECODE_FAILURE, "stdin")


def test_missing_cni_version_is_invalid_config():
    assert_error(*call(env(), conf(cniVersion=None)), errors.INVALID_CONFIG, "cniVersion")


def test_empty_network_name_is_invalid_config():
    assert_error(*call(env(), conf(name="")), errors.INVALID_CONFIG, "name")


def test_missing_type_is_invalid_config():
    assert_error(*call(env(), conf(type=None)), errors.INVALID_CONFIG, "type")


@pytest.mark.parametrize("v", ["0.2.0", "2.0.0", "1.1", "banana"])
def test_unknown_version_is_incompatible(v):
    rc, out = call(env(), conf(cniVersion=v))
    assert_error(rc, out, errors.INCOMPATIBLE_VERSION, "cniVersion")
    assert "1.1.0" in out["details"]  # says what would be right


def test_ifname_over_15_characters():
    assert_error(*call(env(CNI_IFNAME="a-very-long-name"), conf()), errors.INVALID_ENVIRONMENT, "CNI_IFNAME")


@pytest.mark.parametrize("name", ["eth/0", "eth 0", "eth:0", ".."])
def test_ifname_with_bad_characters(name):
    assert_error(*call(env(CNI_IFNAME=name), conf()), errors.INVALID_ENVIRONMENT, "CNI_IFNAME")


def test_malformed_cni_args():
    assert_error(*call(env(CNI_ARGS="K8S_POD_NAME=web;garbage"), conf()), errors.INVALID_ENVIRONMENT, "CNI_ARGS")


def test_bad_container_id():
    assert_error(*call(env(CNI_CONTAINERID="../etc"), conf()), errors.INVALID_ENVIRONMENT, "CNI_CONTAINERID")


@pytest.mark.parametrize("v", ["0.3.0", "0.3.1"])
def test_check_refused_before_0_4_0(v):
    p = Echo()
    rc, out = call(env("CHECK"), conf(cniVersion=v), p)
    assert_error(rc, out, errors.INCOMPATIBLE_VERSION, "cniVersion")
    assert out["cniVersion"] == v
    assert p.seen == []  # the plugin never ran


@pytest.mark.parametrize("v", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_runs_from_0_4_0(v):
    p = Echo()
    rc, _ = call(env("CHECK"), conf(cniVersion=v, prevResult={"cniVersion": v}), p)
    assert rc == 0 and len(p.seen) == 1


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_1_1_0(command):
    assert_error(*call(env(command), conf(cniVersion="1.0.0")), errors.INCOMPATIBLE_VERSION, "cniVersion")
    rc, _ = call({"CNI_COMMAND": command, "CNI_PATH": ""}, conf())
    assert rc == 0


def test_prev_result_not_an_object():
    assert_error(*call(env(), conf(prevResult="x")), errors.INVALID_CONFIG, "prevResult")


def test_plugin_error_printed_in_the_configs_version():
    class Refuses(Plugin):
        def add(self, req):
            raise errors.invalid_config("bad subnet", "ipam.subnet", "a CIDR such as 198.18.0.0/24")

    rc, out = call(env(), conf(cniVersion="0.4.0"), Refuses())
    assert rc == 1
    assert out == {"cniVersion": "0.4.0", "code": 7, "msg": "bad subnet",
                   "details": "field: ipam.subnet; allowed: a CIDR such as 198.18.0.0/24"}


def test_a_bug_is_an_internal_error_not_a_traceback_on_stdout():
    class Buggy(Plugin):
        def add(self, req):
            raise KeyError("oops")

    rc, out = call(env(), conf(), Buggy())
    assert rc == 1 and out["code"] == errors.INTERNAL and "KeyError" in out["msg"]


PLUGIN_MAIN = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.fakeplugins.inproc import plain; "
               "from multiplex.cni.skel import main; main(plain)")


def run_process(environ: dict, stdin: bytes):
    e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    e.update(environ)
    return subprocess.run([sys.executable, "-c", PLUGIN_MAIN, ROOT], input=stdin, env=e,
                          capture_output=True, timeout=60)


def test_process_prints_only_the_error_json_and_exits_1():
    p = run_process({"CNI_COMMAND": "ADD", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0"},
                    conf(type="fake-builtin"))
    assert p.returncode == 1
    out = json.loads(p.stdout)  # exactly one JSON document, nothing else
    assert out["code"] == errors.INVALID_ENVIRONMENT
    assert out["details"] == "field: CNI_CONTAINERID"
    assert "CNI_CONTAINERID" in out["msg"]
    assert b"CNI_CONTAINERID" in p.stderr  # logged on stderr, never on stdout


def test_process_version():
    p = run_process({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.1.0"}')
    assert p.returncode == 0
    assert json.loads(p.stdout)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_process_add_prints_only_the_result():
    p = run_process(env(), conf(type="fake-builtin", cniVersion="0.3.1"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout) == {"cniVersion": "0.3.1", "interfaces": [{"name": "fake-builtin"}], "dns": {}}


# ---- the network name, CNI_ARGS' pod fields, JSON constants, '%' in CNI_IFNAME -------------------

@pytest.mark.parametrize("name", ["multi/plex", "multiplex\n", "cnet\n", "-net", ".net", "net work", "nét",
                                  "net;x", "a\x00b"])
@pytest.mark.parametrize("command", ["ADD", "CHECK", "GC", "STATUS"])
def test_network_name_outside_the_specs_alphabet_is_code_7(command, name):
    rc, out = call(env(command), conf(name=name))
    assert_error(rc, out, errors.INVALID_CONFIG, "name")


@pytest.mark.parametrize("name", ["net1", "default.blue", "tenant-b.macvlan_2", "0net", "A.B-c_d"])
def test_network_names_of_the_specs_alphabet_are_accepted(name):
    rc, out = call(env(), conf(name=name))
    assert rc == 0, out


def test_del_with_a_name_an_older_version_accepted_still_tears_down():
    p = Echo()
    rc, _ = call(env("DEL"), conf(name="cnet\n"), p)
    assert rc == 0 and p.seen[0].name == "cnet\n"


@pytest.mark.parametrize("args, key", [
    ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=../../pods/default-x", "K8S_POD_NAME"),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\n", "K8S_POD_NAME"),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=Web", "K8S_POD_NAME"),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + "a" * 254, "K8S_POD_NAME"),
    ("K8S_POD_NAMESPACE=Bad_NS!;K8S_POD_NAME=p", "K8S_POD_NAMESPACE"),
    ("K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=p", "K8S_POD_NAMESPACE"),
    ("K8S_POD_NAMESPACE=" + "a" * 64 + ";K8S_POD_NAME=p", "K8S_POD_NAMESPACE"),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;K8S_POD_UID=../x", "K8S_POD_UID"),
    ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;K8S_POD_UID=a b", "K8S_POD_UID"),
])
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_pod_fields_of_cni_args_are_what_kubernetes_allows(command, args, key):
    assert_error(*call(env(command, CNI_ARGS=args), conf()), errors.INVALID_ENVIRONMENT, f"CNI_ARGS.{key}")


def test_pod_fields_kubernetes_allows_are_accepted():
    p = Echo()
    uid = "0b5d6c1e-8f3a-4d2b-9c7e-123456789abc"
    rc, out = call(env(CNI_ARGS=f"K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=web-0.a-b;K8S_POD_UID={uid}"),
                   conf(), p)
    assert rc == 0, out
    assert p.seen[0].pod == ("kube-system", "web-0.a-b", uid)


@pytest.mark.parametrize("args", ["=value", "IgnoreUnknown=1;=value", "K8S_POD_NAME=web;="])
def test_cni_args_pair_with_an_empty_key_is_code_4(args):
    assert_error(*call(env(CNI_ARGS=args), conf()), errors.INVALID_ENVIRONMENT, "CNI_ARGS")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_on_stdin_are_not_json(literal):
    stdin = b'{"cniVersion": "1.1.0", "name": "net1", "type": "echo", "x": %s}' % literal.encode()
    rc, out = call(env(), stdin)
    assert_error(rc, out, errors.DECODE_FAILURE, "stdin")
    assert literal.lstrip("-") in out["msg"]


@pytest.mark.parametrize("name", ["eth%d", "%d", "net%"])
def test_ifname_with_a_percent_is_a_kernel_template_and_refused(name):
    assert_error(*call(env(CNI_IFNAME=name), conf()), errors.INVALID_ENVIRONMENT, "CNI_IFNAME")
