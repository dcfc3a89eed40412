"""Input limits and the errors a user sees for them: every bad input is a CNI error with a spec
code and details naming the field, never a traceback or code 100.

Limits under test (multiplex.cni.request): CNI_IFNAME 15 bytes in UTF-8, container ID 128
characters, stdin 1 MiB, JSON nesting 64 levels; the state root absolute and usable; the log file
private, never followed through a symlink, rotated by size."""
from __future__ import annotations

import io
import json
import os
import stat
import sys

import pytest

from multiplex.util import log, state
from multiplex.cni import errors, skel
from multiplex.cni.errors import CNIError
from multiplex.cni.plugin import Plugin
from multiplex.cni.registry import check_type_name
from multiplex.cni.request import (CONTAINER_ID_MAX, JSON_DEPTH_MAX, STDIN_MAX, Request, check_container_id,
                                   check_ifname)
from tests.unit.test_cni_request import Echo, assert_error, call, conf, env


# ---- CNI_IFNAME ------------------------------------------------------------------------------

def test_ifname_is_measured_in_bytes_nine_e_acute_are_18():
    rc, out = call(env(CNI_IFNAME="é" * 9), conf())
    assert_error(rc, out, errors.INVALID_ENVIRONMENT, "CNI_IFNAME")
    assert "18 bytes" in out["msg"]


def test_ifname_of_15_bytes_with_multibyte_characters_is_accepted():
    name = "é" * 7 + "x"  # 15 bytes
    rc, out = call(env(CNI_IFNAME=name), conf())
    assert rc == 0 and out["interfaces"][0]["name"] == name


@pytest.mark.parametrize("name", ["a/b", "a:b", "a b", "a\tb", "eth0\n", "a\x00b", ".", "..", "a\u00a0b"])
def test_ifname_with_a_character_the_kernel_refuses(name):
    with pytest.raises(CNIError) as e:
        check_ifname(name)
    assert e.value.code == errors.INVALID_ENVIRONMENT and "field: CNI_IFNAME" in e.value.details


def test_ifname_check_names_the_callers_field_and_code():
    with pytest.raises(CNIError) as e:
        check_ifname("é" * 9, "k8s.v1.cni.cncf.io/networks: default/blue interface", errors.INVALID_CONFIG)
    assert e.value.code == errors.INVALID_CONFIG
    assert "field: k8s.v1.cni.cncf.io/networks: default/blue interface" in e.value.details


# ---- container ID ----------------------------------------------------------------------------

@pytest.mark.parametrize("length", [CONTAINER_ID_MAX + 1, 240, 300])
def test_container_id_over_the_limit_is_code_4(length):
    rc, out = call(env(CNI_CONTAINERID="a" * length), conf())
    assert_error(rc, out, errors.INVALID_ENVIRONMENT, "CNI_CONTAINERID")
    assert str(length) in out["msg"] and str(CONTAINER_ID_MAX) in out["details"]


def test_container_id_at_the_limit_is_accepted():
    rc, out = call(env(CNI_CONTAINERID="a" * CONTAINER_ID_MAX), conf())
    assert rc == 0, out


@pytest.mark.parametrize("cid", ["c0ffee\n", "-c0ffee", "c0/ffee", "c0ffee\n\n", "é"])
def test_container_id_is_matched_whole(cid):
    with pytest.raises(CNIError) as e:
        check_container_id(cid)
    assert e.value.code == errors.INVALID_ENVIRONMENT and "field: CNI_CONTAINERID" in e.value.details


@pytest.mark.parametrize("name", ["bridge\n", "bridge\n\n", "\nbridge"])
def test_plugin_type_with_a_trailing_newline_is_refused(name):
    with pytest.raises(CNIError) as e:
        check_type_name(name, "plugins[0].type")
    assert e.value.code == errors.INVALID_CONFIG and "field: plugins[0].type" in e.value.details


# ---- stdin -----------------------------------------------------------------------------------

def test_stdin_over_the_size_limit_is_refused_before_parsing():
    big = conf(padding="x" * (STDIN_MAX + 10))
    rc, out = call(env(), big)
    assert_error(rc, out, errors.INVALID_CONFIG, "stdin")
    assert str(len(big)) in out["msg"] and str(STDIN_MAX) in out["details"]


def test_stdin_over_the_size_limit_that_is_not_even_json_is_the_size_error():
    rc, out = call(env(), b"{" + b"x" * STDIN_MAX)
    assert_error(rc, out, errors.INVALID_CONFIG, "stdin")


def test_deep_nesting_is_refused_naming_the_limit():
    deep = b'{"cniVersion": "1.1.0", "name": "n", "type": "echo", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    rc, out = call(env(), deep)
    assert_error(rc, out, errors.INVALID_CONFIG, "stdin")
    assert str(JSON_DEPTH_MAX) in out["details"]


def test_nesting_at_the_limit_is_accepted():
    inner = "[" * (JSON_DEPTH_MAX - 1) + "]" * (JSON_DEPTH_MAX - 1)
    rc, out = call(env(), b'{"cniVersion": "1.1.0", "name": "n", "type": "echo", "x": ' + inner.encode() + b"}")
    assert rc == 0, out


def test_brackets_inside_strings_do_not_count():
    rc, out = call(env(), conf(note="[" * 1000 + '\\"{' * 1000))
    assert rc == 0, out


def test_main_reads_at_most_the_limit_and_reports_the_real_size():
    stream = io.BytesIO(b"x" * (3 * STDIN_MAX))
    data, size = skel.read_stdin(stream)
    assert len(data) == STDIN_MAX + 1 and size == 3 * STDIN_MAX
    assert stream.read() == b""  # drained: the writer never sees a broken pipe
    rc, out = call_sized(env(), data, size)
    assert_error(rc, out, errors.INVALID_CONFIG, "stdin")
    assert str(3 * STDIN_MAX) in out["msg"]


def call_sized(environ, stdin, size):
    out = io.StringIO()
    rc = skel.run(Echo(), environ, stdin, out, stdin_size=size)
    return rc, json.loads(out.getvalue())


# ---- failures inside a plugin ----------------------------------------------------------------

class Raises(Plugin):
    type_name = "echo"

    def __init__(self, exc: BaseException):
        self.exc = exc

    def add(self, req):
        raise self.exc

    delete = check = add


def test_recursion_inside_a_plugin_is_code_7_not_100():
    class Recurses(Plugin):
        type_name = "echo"

        def add(self, req):
            return self.add(req)

    rc, out = call(env(), conf(), Recurses())
    assert_error(rc, out, errors.INVALID_CONFIG, "stdin")
    assert "refers to itself" in out["details"] or "deeply" in out["msg"]


def test_an_oserror_no_layer_caught_is_code_5_naming_the_path(tmp_path):
    missing = str(tmp_path / "state" / "cache")
    rc, out = call(env(command="DEL"), conf(), Raises(PermissionError(13, "Permission denied", missing)))
    assert rc == 1 and out["code"] == errors.IO_FAILURE
    assert missing in out["msg"] and f"path: {missing}" in out["details"] and "Permission denied" in out["msg"]


def test_a_bug_is_still_100():
    rc, out = call(env(), conf(), Raises(KeyError("x")))
    assert rc == 1 and out["code"] == errors.INTERNAL


# ---- one deadline per call ---------------------------------------------------------------------

class Sees(Plugin):
    type_name = "echo"

    def __init__(self):
        self.deadlines: list = []

    def delete(self, req):
        self.deadlines.append(req.deadline)


def test_every_call_gets_a_deadline_and_keeps_one_already_set():
    p = Sees()
    assert call(env(command="DEL"), conf(), p)[0] == 0
    assert p.deadlines[0] is not None
    req = Request(command="DEL", container_id="c", ifname="eth0",
                  config={"cniVersion": "1.1.0", "name": "n", "type": "echo"}, deadline=12345.0)
    skel.dispatch(p, req)
    assert p.deadlines[1] == 12345.0
    assert req.derive(command="CHECK").deadline == 12345.0


# ---- CNI_NETNS -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/proc/self/ns/net", "/proc/thread-self/ns/net", "/proc/{pid}/ns/net",
                                  "/proc/{pid}/task/{pid}/ns/net"])
@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_our_own_netns_is_refused_for_add_and_check(path, command):
    p = Echo()
    c = conf(prevResult={"cniVersion": "1.1.0"}) if command == "CHECK" else conf()
    rc, out = call(env(command=command, CNI_NETNS=path.format(pid=os.getpid())), c, p)
    assert_error(rc, out, errors.INVALID_ENVIRONMENT, "CNI_NETNS")
    assert p.seen == []  # the plugin never ran


def test_del_with_our_own_netns_still_cleans_up():
    p = Echo()
    rc, _ = call(env(command="DEL", CNI_NETNS="/proc/self/ns/net"), conf(), p)
    assert rc == 0 and len(p.seen) == 1


def test_a_netns_that_does_not_exist_is_left_to_the_plugin():
    assert not skel.is_own_netns("/var/run/netns/no-such-netns-here")


# ---- the state directory -----------------------------------------------------------------------

@pytest.mark.parametrize("configured", ["state", "./var/lib/cni", "../x"])
def test_a_relative_state_dir_is_code_7_never_resolved_against_the_cwd(configured, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CNIError) as e:
        state.subdir("cache", configured)
    assert e.value.code == errors.INVALID_CONFIG and "field: stateDir" in e.value.details
    assert os.listdir(tmp_path) == []


def test_a_relative_state_dir_from_the_environment_names_the_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", "rel/state")
    with pytest.raises(CNIError) as e:
        state.subdir("locks")
    assert e.value.code == errors.INVALID_CONFIG and "stateDir" in e.value.details
    assert os.listdir(tmp_path) == []


def test_a_state_dir_that_is_a_regular_file_is_code_5_naming_it(tmp_path):
    f = tmp_path / "state"
    f.write_text("not a directory")
    with pytest.raises(CNIError) as e:
        state.subdir("cache", str(f))
    assert e.value.code == errors.IO_FAILURE
    assert str(f) in e.value.msg and "not a directory" in e.value.msg + e.value.details


def test_a_state_dir_without_permission_is_code_5(tmp_path):
    """Root ignores directory permissions through CAP_DAC_OVERRIDE: the call runs as root with every
    capability dropped (setpriv), as a confined runtime would, or as the user that owns nothing."""
    import subprocess
    import sys

    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    code = ("import json, sys\n"
            "from multiplex.cni.errors import CNIError\n"
            "from multiplex.util import state\n"
            "try:\n"
            f"    state.subdir('cache', {str(d)!r})\n"
            "except CNIError as e:\n"
            "    print(json.dumps({'code': e.code, 'msg': e.msg}))\n")
    drop = (["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs"]
            if os.geteuid() == 0 else [])
    out = subprocess.run(drop + [sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    err = json.loads(out.stdout)
    assert err["code"] == errors.IO_FAILURE and "permission" in err["msg"]
    assert not (d / "cache").exists()


# ---- the log file ------------------------------------------------------------------------------

def test_log_file_is_created_0600(tmp_path):
    path = tmp_path / "multiplex.log"
    log.Logger(str(path), "info").info("hello")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text())["msg"] == "hello"


def test_an_existing_world_readable_log_file_is_made_private(tmp_path):
    path = tmp_path / "multiplex.log"
    path.write_text("")
    os.chmod(path, 0o644)
    log.Logger(str(path), "info").info("hello")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_symlink_at_the_log_path_is_never_written_through(tmp_path, capsys):
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link = tmp_path / "multiplex.log"
    link.symlink_to(target)
    logger = log.Logger(str(link), "info")
    logger.info("first")
    logger.info("second")
    assert target.read_text() == "precious\n"
    lines = [json.loads(l) for l in capsys.readouterr().err.splitlines()]
    notes = [l for l in lines if l["msg"] == "log file not used, logging to stderr"]
    assert len(notes) == 1 and "symbolic link" in notes[0]["reason"]  # one note, not one per line
    assert [l["msg"] for l in lines if l not in notes] == ["first", "second"]  # the lines: on stderr


def test_a_fifo_at_the_log_path_is_refused_without_blocking(tmp_path, capsys):
    path = tmp_path / "multiplex.log"
    os.mkfifo(path)
    log.Logger(str(path), "info").info("hello")  # returns: no reader, and never waits for one
    lines = [json.loads(l) for l in capsys.readouterr().err.splitlines()]
    assert [l["msg"] for l in lines] == ["log file not used, logging to stderr", "hello"]


def test_a_relative_log_path_is_not_resolved_against_the_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    log.Logger("multiplex.log", "info").info("hello")
    assert os.listdir(tmp_path) == []
    lines = [json.loads(l) for l in capsys.readouterr().err.splitlines()]
    assert lines[0]["reason"] == "not an absolute path" and lines[1]["msg"] == "hello"


def test_the_log_rotates_by_size_keeping_one(tmp_path, monkeypatch):
    monkeypatch.setattr(log, "ROTATE_BYTES", 2000)
    path = tmp_path / "multiplex.log"
    logger = log.Logger(str(path), "info")
    for i in range(100):
        logger.info("line", n=i, pad="x" * 50)
    rotated = tmp_path / "multiplex.log.1"
    assert rotated.exists() and sorted(os.listdir(tmp_path)) == ["multiplex.log", "multiplex.log.1"]
    assert os.path.getsize(path) <= 2000 and os.path.getsize(rotated) <= 2000
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    last = [json.loads(l) for l in path.read_text().splitlines()]
    assert last[-1]["n"] == 99  # nothing lost at the end; older lines went to .1, then away


# ---- Kubernetes without the kubernetes package ---------------------------------------------------

def test_a_kubeconfig_without_the_kubernetes_package_says_to_install_the_extra(monkeypatch, tmp_path):
    for mod in [m for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes -> ImportError
    from multiplex.k8s.client import KubeClient

    kc = tmp_path / "kubeconfig"
    kc.write_text("apiVersion: v1\n")
    with pytest.raises(CNIError) as e:
        KubeClient(str(kc)).get_pod("default", "web")
    assert e.value.code == errors.INVALID_CONFIG
    assert "multiplex[k8s]" in e.value.msg and "field: kubeconfig" in e.value.details
    assert "No module named" not in e.value.msg.split("(")[0]


# ---- JSON Schema patterns: `$` is the end of the string, as JSON Schema (ECMA-262) means it ----------

@pytest.mark.parametrize("bridge, ipam_type, field", [("br0\n", "multiplex-ipam", "$.bridge"),
                                                      ("br0", "host-local\n", "$.ipam.type")])
def test_schema_patterns_refuse_a_trailing_newline(bridge, ipam_type, field):
    from multiplex.util import schema

    conf = {"cniVersion": "1.1.0", "name": "net", "type": "multiplex-bridge", "bridge": bridge,
            "ipam": {"type": ipam_type, "ranges": [[{"subnet": "198.18.0.0/24"}]]}}
    with pytest.raises(CNIError) as e:
        schema.validate("bridge", conf)
    assert e.value.code == errors.INVALID_CONFIG and f"field: {field};" in e.value.details
    conf.update(bridge=bridge.strip(), ipam=dict(conf["ipam"], type=ipam_type.strip()))
    schema.validate("bridge", conf)


@pytest.mark.parametrize("pattern, expected", [("^a$", r"^a\Z"), ("^[$]+$", r"^[$]+\Z"),
                                               (r"^a\$$", r"^a\$\Z"), ("^(a|b$)$", r"^(a|b\Z)\Z")])
def test_only_anchor_dollars_are_rewritten(pattern, expected):
    from multiplex.util.schema import ecma_anchors

    assert ecma_anchors(pattern) == expected


# ---- the result cache's key: the same rules as the environment --------------------------------

@pytest.mark.parametrize("cid, ifname, field", [
    ("c0ffee\n", "eth0", "CNI_CONTAINERID"), ("a" * (CONTAINER_ID_MAX + 1), "eth0", "CNI_CONTAINERID"),
    ("../x", "eth0", "CNI_CONTAINERID"), ("c0ffee", "eth0\n", "CNI_IFNAME"), ("c0ffee", "eth%d", "CNI_IFNAME"),
    ("c0ffee", "é" * 9, "CNI_IFNAME"), ("c0ffee", "..", "CNI_IFNAME"),
])
def test_cache_refuses_a_key_the_environment_would_refuse(tmp_path, cid, ifname, field):
    from multiplex.cni.cache import ResultCache

    cache = ResultCache(str(tmp_path / "cache"))
    for op in (lambda: cache.save(cid, ifname, {"x": 1}), lambda: cache.load(cid, ifname),
               lambda: cache.delete(cid, ifname)):
        with pytest.raises(CNIError) as e:
            op()
        assert e.value.code == errors.INVALID_ENVIRONMENT and f"field: {field}" in e.value.details
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_cache_accepts_the_longest_key_the_environment_accepts(tmp_path):
    from multiplex.cni.cache import ResultCache

    cache = ResultCache(str(tmp_path / "cache"))
    cid, ifname = "a" * CONTAINER_ID_MAX, "é" * 7 + "x"
    cache.save(cid, ifname, {"x": 1})
    assert cache.load(cid, ifname) == {"x": 1}


# ---- whole-string matching where `^...$` used to accept a trailing newline ----------------------

@pytest.mark.parametrize("name, target", [("multiplex-bridge\n", "multiplex.bridge:plugin"),
                                          ("multiplex-bridge", "multiplex.bridge:plugin\n")])
def test_install_refuses_a_launcher_with_a_trailing_newline(name, target):
    from multiplex.cli.install import InstallError, Launcher, launcher_script

    with pytest.raises(InstallError):
        launcher_script(Launcher(name, target, "plugin"), sys.executable)


def test_install_writes_a_launcher_for_a_plain_name():
    from multiplex.cli.install import Launcher, launcher_script

    assert "multiplex.bridge" in launcher_script(Launcher("multiplex-bridge", "multiplex.bridge:plugin", "plugin"),
                                                 sys.executable)


@pytest.mark.parametrize("node", ["node-1\n", "node-1\n\n", "Node-1", "-node"])
def test_ipam_node_name_is_matched_whole(node):
    from multiplex.ipam.config import _node_name

    with pytest.raises(CNIError) as e:
        _node_name(node, "$.ipam.nodeName")
    assert e.value.code == errors.INVALID_CONFIG and "nodeName" in e.value.details


def test_ipam_node_name_of_a_dns_name_is_accepted():
    from multiplex.ipam.config import _node_name

    assert _node_name("node-1.example.com", "$.ipam.nodeName") == "node-1.example.com"
