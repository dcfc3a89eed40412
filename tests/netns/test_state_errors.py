"""A state directory multiplex cannot use, through the real `multiplex` and `multiplex-bridge`
binaries: a regular file, a relative path, a read-only file system, a full one (a small tmpfs).
Each is a clear CNI error (code 5 naming the path, or 7 naming stateDir), never a traceback, and
leaves no partial state: what a failed ADD began is undone, what a failed DEL could not finish is
still recorded, so the DEL the runtime retries once the disk is fine removes everything."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.cnitool import links, run_plugin
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = pytest.mark.root


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf("mpx-spod", "198.18.40.0/24", isGateway=True))
    lab.add_nad("blue", bridge_conf("mpx-sblue", "198.18.41.0/24"))
    lab.add_pod("p1", "blue")
    lab.add_pod("p2", "blue")
    return lab


@pytest.fixture
def tmpfs_state(lab):
    """The lab's state directory on a tmpfs of its own (1 MiB), unmounted at teardown (also after a
    failure, and after a test left it read-only)."""
    os.makedirs(lab.state_dir, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", f"mpxstate{os.getpid()}", lab.state_dir],
                   check=True)
    yield lab.state_dir
    subprocess.run(["umount", "-l", lab.state_dir], capture_output=True)


def fill(directory: str) -> str:
    """Fill the file system of `directory` to the last block; the filler's path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def remount(directory: str, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", directory], check=True)


def pod_state(lab: Lab, ns: str, cid: str) -> dict:
    """What a user would look at for one pod: its interfaces, its host veths, leases, cache files."""
    return {"pod": links(ns) - {"lo"},
            "leases": sorted(r for r in lab.leases() if cid in r),
            "cache": sorted(f for f in lab.cache_entries() if f.startswith(cid + ":"))}


def assert_no_trace_of(lab: Lab, ns: str, cid: str) -> None:
    assert pod_state(lab, ns, cid) == {"pod": set(), "leases": [], "cache": []}


def assert_code_5_naming(out, path: str) -> None:
    assert out.rc == 1 and out.code == 5, out
    assert path in out.out["msg"] + out.out.get("details", ""), out
    assert "Traceback" not in out.stderr


# ---- the state directory is not a directory, or not absolute ---------------------------------------

@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_state_dir_that_is_a_regular_file_is_code_5_naming_it(lab, command):
    bad = os.path.join(lab.root, "state-file")
    with open(bad, "w") as f:
        f.write("not a directory\n")
    ns = lab.netns_factory("pod")
    out = lab.cni(command, "p1", ns, config=lab.config(stateDir=bad))
    assert_code_5_naming(out, bad)
    with open(bad) as f:
        assert f.read() == "not a directory\n"
    assert links(ns) == {"lo"} and lab.node_links("veth") == set()


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_relative_state_dir_is_code_7_and_nothing_is_made_in_the_cwd(lab, command, tmp_path):
    ns = lab.netns_factory("pod")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = _run_in(lab, command, ns, cwd)
    assert out.rc == 1 and out.code == 7, out
    assert "stateDir" in out.out["details"]
    assert os.listdir(cwd) == []
    assert links(ns) == {"lo"} and lab.node_links("veth") == set()


def _run_in(lab: Lab, command: str, ns: str, cwd) -> object:
    """`lab.cni` with the plugin's working directory set to `cwd` (a relative stateDir would land there)."""
    import json

    from tests.cnitool import BIN, CNIOutput, cni_env

    env = cni_env(command, "cid-p1", ns, "eth0", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p1")
    proc = subprocess.run(["ip", "netns", "exec", lab.node, os.path.join(BIN, "multiplex")],
                          input=json.dumps(lab.config(stateDir="var/state")).encode(), env=env,
                          capture_output=True, cwd=str(cwd), timeout=120)
    text = proc.stdout.decode()
    return CNIOutput(proc.returncode, json.loads(text) if text.strip() else None, proc.stderr.decode())


def test_bridge_standalone_with_a_state_dir_that_is_a_file_is_code_5(lab, tmp_path):
    bad = str(tmp_path / "state-file")
    with open(bad, "w") as f:
        f.write("x")
    ns = lab.netns_factory("pod")
    conf = dict(bridge_conf("mpx-sbr", "198.18.42.0/24"), cniVersion="1.1.0", name="sbr")
    out = run_plugin("multiplex-bridge", "ADD", conf, node=lab.node, container_id="cid-br", netns=ns,
                     extra_env={"MULTIPLEX_STATE_DIR": bad})
    assert_code_5_naming(out, bad)
    assert links(ns) == {"lo"} and lab.node_links("veth") == set()


def test_bridge_standalone_with_a_relative_state_dir_is_code_7(lab):
    ns = lab.netns_factory("pod")
    conf = dict(bridge_conf("mpx-sbr", "198.18.42.0/24"), cniVersion="1.1.0", name="sbr")
    out = run_plugin("multiplex-bridge", "ADD", conf, node=lab.node, container_id="cid-br", netns=ns,
                     extra_env={"MULTIPLEX_STATE_DIR": "relative/state"})
    assert out.rc == 1 and out.code == 7, out
    assert "stateDir" in out.out["details"]
    assert links(ns) == {"lo"} and lab.node_links("veth") == set()


# ---- a full file system ------------------------------------------------------------------------

def test_add_on_a_full_state_dir_is_code_5_and_leaves_nothing(lab, tmpfs_state):
    ns1 = lab.netns_factory("pod")
    assert lab.cni("ADD", "p1", ns1).ok
    filler = fill(tmpfs_state)
    ns2 = lab.netns_factory("pod")
    out = lab.cni("ADD", "p2", ns2)
    assert_code_5_naming(out, tmpfs_state)
    os.unlink(filler)  # reading the leases database needs a little space itself
    assert_no_trace_of(lab, ns2, "cid-p2")
    assert links(ns1) == {"lo", "eth0", "net1"}  # the other pod is untouched
    assert lab.cni("DEL", "p1", ns1).ok
    assert lab.node_links("veth") == set() and lab.leases() == [] and lab.cache_entries() == []


def test_del_on_a_full_state_dir_is_code_5_and_a_retry_removes_everything(lab, tmpfs_state):
    ns1 = lab.netns_factory("pod")
    assert lab.cni("ADD", "p1", ns1).ok
    filler = fill(tmpfs_state)
    out = lab.cni("DEL", "p1", ns1)
    if out.rc != 0:  # deleting may need space (the database's journal): then a clear code 5
        assert_code_5_naming(out, tmpfs_state)
        os.unlink(filler)
        assert pod_state(lab, ns1, "cid-p1")["cache"], "DEL failed but dropped the record its retry needs"
        assert lab.cni("DEL", "p1", ns1).ok
    else:
        os.unlink(filler)
    assert_no_trace_of(lab, ns1, "cid-p1")
    assert lab.node_links("veth") == set()


# ---- a read-only file system -----------------------------------------------------------------------

def test_add_and_del_on_a_read_only_state_dir_are_code_5_and_touch_nothing(lab, tmpfs_state):
    ns1 = lab.netns_factory("pod")
    assert lab.cni("ADD", "p1", ns1).ok
    before = pod_state(lab, ns1, "cid-p1")
    node_veths = lab.node_links("veth")
    remount(tmpfs_state, "ro")
    try:
        ns2 = lab.netns_factory("pod")
        add = lab.cni("ADD", "p2", ns2)
        dele = lab.cni("DEL", "p1", ns1)
    finally:
        remount(tmpfs_state, "rw")
    assert_code_5_naming(add, tmpfs_state)
    assert_code_5_naming(dele, tmpfs_state)
    assert "read-only" in (add.out["msg"] + add.out.get("details", "")).lower()
    assert_no_trace_of(lab, ns2, "cid-p2")
    assert pod_state(lab, ns1, "cid-p1") == before  # the failed DEL touched nothing
    assert lab.node_links("veth") == node_veths
    assert lab.cni("DEL", "p1", ns1).ok
    assert_no_trace_of(lab, ns1, "cid-p1")
    assert lab.node_links("veth") == set()


def test_bridge_standalone_on_a_read_only_state_dir_is_code_5(lab, tmpfs_state):
    remount(tmpfs_state, "ro")
    ns = lab.netns_factory("pod")
    conf = dict(bridge_conf("mpx-sbr", "198.18.42.0/24"), cniVersion="1.1.0", name="sbr")
    try:
        out = run_plugin("multiplex-bridge", "ADD", conf, node=lab.node, container_id="cid-br", netns=ns,
                         extra_env={"MULTIPLEX_STATE_DIR": tmpfs_state})
    finally:
        remount(tmpfs_state, "rw")
    assert_code_5_naming(out, tmpfs_state)
    assert links(ns) == {"lo"} and lab.node_links("veth") == set()
