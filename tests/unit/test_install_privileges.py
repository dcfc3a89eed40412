"""`multiplex install` needs no capability: the DaemonSet's claim (manifests/30-daemonset.yaml, every
capability dropped, uid 0 only as the owner of the host directories) checked by running install
as uid 0 with an empty capability set (setpriv drops the bounding set before exec, so the new
process has none), against a root-owned temporary node root: the first run places everything
(runtime, launchers, kubeconfig from a service account, conflist), an updated token is written by
the second, and nothing is left that the runtime could not read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from multiplex.cli.install import kubeconfig, layout

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs install as uid 0 without capabilities: needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed"),
]

RUN = textwrap.dedent("""
    import json, sys
    from multiplex.cli.install.steps import install
    status = open("/proc/self/status").read()
    caps = {l.split(":")[0]: int(l.split()[1], 16) for l in status.splitlines() if l.startswith("Cap")}
    args = json.loads(sys.argv[1])
    report = install(**args)
    print(json.dumps({"caps": caps, "changes": [(c.path, c.action) for c in report.changes]}))
""")


def install_without_capabilities(args: dict) -> dict:
    cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs",
           sys.executable, "-c", RUN, json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def node(tmp_path):
    """A node root (flannel-like cluster network), a service account, and a runtime to mirror."""
    root = tmp_path / "host"
    (root / "etc/cni/net.d").mkdir(parents=True)
    (root / "opt/cni/bin").mkdir(parents=True)
    (root / "etc/cni/net.d/10-flannel.conflist").write_text(json.dumps(
        {"name": "cbr0", "cniVersion": "0.3.1", "plugins": [{"type": "flannel"}]}))
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("token-1")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    runtime = tmp_path / "runtime"
    (runtime / "bin").mkdir(parents=True)
    (runtime / "bin/python3").write_text("#!/bin/sh\n")
    os.chmod(runtime / "bin/python3", 0o755)
    args = {"root": str(root), "service_account_dir": str(sa), "runtime_src": str(runtime),
            "runtime_dir": "/opt/multiplex",
            "environ": {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}}
    return root, sa, args


def test_install_places_everything_with_no_capability_at_all(node):
    root, sa, args = node
    first = install_without_capabilities(args)
    assert first["caps"]["CapEff"] == 0 and first["caps"]["CapPrm"] == 0 and first["caps"]["CapBnd"] == 0
    conf = root / layout.DEFAULT_CONF_DIR.lstrip("/") / layout.DEFAULT_CONF_NAME
    sub = root / layout.DEFAULT_CONF_DIR.lstrip("/") / layout.STATE_SUBDIR
    assert json.loads(conf.read_text())["plugins"][0]["clusterNetwork"] == "cbr0"
    assert (sub / kubeconfig.TOKEN_NAME).read_text() == "token-1"
    assert oct((sub / kubeconfig.KUBECONFIG_NAME).stat().st_mode & 0o777) == "0o600"
    assert os.access(root / "opt/cni/bin" / layout.META_PLUGIN, os.X_OK)
    assert (root / "opt/multiplex/bin/python3").is_file()
    for cur, dirs, files in os.walk(root):
        for name in dirs + files:
            assert os.lstat(os.path.join(cur, name)).st_uid == 0   # owned by root, as the runtime expects

    (sa / "token").write_text("token-2")                            # the kubelet rotated the token
    second = install_without_capabilities(args)
    assert (sub / kubeconfig.TOKEN_NAME).read_text() == "token-2"
    assert any(action == "updated" for _, action in second["changes"])
