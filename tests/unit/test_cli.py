"""The `multiplex` command line as an admin uses it: validate, install/uninstall, VERSION."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BIN = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "multiplex")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mpx(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    e.update(env or {})
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=e)


def write(tmp_path, name: str, doc) -> str:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


GOOD_BRIDGE = {"cniVersion": "1.1.0", "name": "blue", "type": "multiplex-bridge", "bridge": "mpx-blue",
               "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.1.0/24"}]]}}


def test_validate_accepts_the_example_nads_and_a_good_config(tmp_path):
    path = write(tmp_path, "blue.conf", GOOD_BRIDGE)
    r = mpx("validate", path, os.path.join(REPO, "manifests/examples/nad-bridge.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": ok") == 2


@pytest.mark.parametrize("change,field", [
    ({"ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.300.0/24"}]]}}, "subnet"),
    ({"ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.1.0/24", "rangeStart": "198.18.2.1"}]]}},
     "rangeStart"),
    ({"bridge": "a-bridge-name-too-long"}, "bridge"),
    ({"vlan": 5000}, "vlan"),
    ({"type": "../bin/sh"}, "type"),
    ({"colour": "blue"}, "colour"),
])
def test_validate_names_the_bad_field(tmp_path, change, field):
    path = write(tmp_path, "bad.conf", dict(GOOD_BRIDGE, **change))
    r = mpx("validate", path)
    assert r.returncode == 1
    assert "invalid" in r.stdout and field in r.stdout, r.stdout


def test_validate_a_nad_with_a_bad_spec_config(tmp_path):
    nad = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "x"}, "spec": {"config": '{"cniVersion": "1.1.0", "type": "multiplex-bridge"'}}
    r = mpx("validate", write(tmp_path, "nad.json", nad))
    assert r.returncode == 1 and "spec.config" in r.stdout


def test_validate_a_multiplex_config(tmp_path):
    good = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "clusterNetwork": "podnet",
            "nadDir": "/etc/cni/multiplex/nads"}
    assert mpx("validate", write(tmp_path, "m.conf", good)).returncode == 0
    bad = dict(good, logLevel="loud")
    r = mpx("validate", write(tmp_path, "m2.conf", bad))
    assert r.returncode == 1 and "logLevel" in r.stdout


def test_install_then_again_then_uninstall_through_the_cli(tmp_path):
    root = tmp_path / "root"
    conf_dir = root / "etc/cni/net.d"
    conf_dir.mkdir(parents=True)
    (root / "opt/cni/bin").mkdir(parents=True)
    flannel = {"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    (conf_dir / "10-flannel.conflist").write_text(json.dumps(flannel))
    r = mpx("install", "--root", str(root), "--no-kubeconfig")
    assert r.returncode == 0, r.stdout + r.stderr
    ours = json.loads((conf_dir / "00-multiplex.conflist").read_text())
    plugin = ours["plugins"][0]
    assert plugin["type"] == "multiplex" and plugin["clusterNetwork"] == "cbr0"
    assert plugin["capabilities"].get("portMappings") is True
    assert os.access(root / "opt/cni/bin/multiplex", os.X_OK)
    again = mpx("install", "--root", str(root), "--no-kubeconfig")
    assert again.returncode == 0 and "unchanged" in again.stdout
    out = mpx("uninstall", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(conf_dir)) == ["10-flannel.conflist"]
    assert json.loads((conf_dir / "10-flannel.conflist").read_text()) == flannel
    assert not (root / "opt/cni/bin/multiplex").exists()


def test_no_cni_command_and_no_cni_env_is_the_cli():
    r = mpx("--help")
    assert r.returncode == 0 and "lab" in r.stdout and "validate" in r.stdout


def _fake_net(tmp_path, **fake) -> tuple[str, str]:
    """A multiplex config whose cluster network is an exec'd fake plugin; (config path, CNI_PATH)."""
    from tests.fakeplugins import install

    bin_dir = install(tmp_path / "bin", "fake-a")
    conf = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "stateDir": str(tmp_path / "state"),
            "clusterNetwork": {"cniVersion": "1.1.0", "name": "podnet", "type": "fake-a",
                               "fake": dict(fake, record=str(tmp_path / "calls.jsonl"))}}
    return write(tmp_path, "00-multiplex.conf", conf), bin_dir


def test_status_command_reports_ready_and_not_ready(tmp_path):
    path, bin_dir = _fake_net(tmp_path)
    r = mpx("status", "--config", path, env={"CNI_PATH": bin_dir})
    assert r.returncode == 0 and "ready" in r.stdout
    path, bin_dir = _fake_net(tmp_path, fail={"STATUS": {"code": 50, "msg": "pool empty"}})
    r = mpx("status", "--config", path, env={"CNI_PATH": bin_dir})
    assert r.returncode == 1 and "pool empty" in r.stdout


def test_gc_command_removes_stale_pods_and_forwards_the_valid_ones(tmp_path):
    from tests.cnitool import run_plugin
    from tests.fakeplugins import records

    path, bin_dir = _fake_net(tmp_path)
    with open(path) as f:
        conf = json.load(f)
    for cid in ("abc123", "def456"):
        out = run_plugin(BIN, "ADD", conf, container_id=cid, netns="/var/run/netns/none", path=bin_dir)
        assert out.ok, out
    r = mpx("gc", "--config", path, "--valid", "abc123", env={"CNI_PATH": bin_dir})
    assert r.returncode == 0, r.stdout + r.stderr
    calls = records(tmp_path / "calls.jsonl")
    assert [(c["command"], c["env"].get("CNI_CONTAINERID")) for c in calls if c["command"] == "DEL"] == \
        [("DEL", "def456")]
    gc = [c for c in calls if c["command"] == "GC"]
    assert len(gc) == 1 and gc[0]["stdin"]["cni.dev/valid-attachments"] == [{"containerID": "abc123", "ifname": "eth0"}]
