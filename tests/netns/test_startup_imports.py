"""What each per-call process imports (Python start-up is the cost of a CNI plugin).

VERSION and error paths import almost nothing; DEL from the cache never imports the Kubernetes
client, even when the config names a kubeconfig; a config without a Kubernetes source never does.
Observed as a user could: `PYTHONPROFILEIMPORTTIME=1` makes Python list every import on stderr.
"""
from __future__ import annotations

import pytest

from tests.cnitool import links, run_plugin
from tests.netns.mpxlab import Lab, bridge_conf

HEAVY = ("pyroute2", "jsonschema", "kubernetes", "click", "yaml")


def imported(stderr: str) -> set[str]:
    """Top-level packages imported, from -X importtime lines ('import time: self | cumulative | name')."""
    mods = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                mods.add(name.split(".")[0])
    return mods


def test_version_imports_nothing_heavy():
    out = run_plugin("multiplex", "VERSION", {"cniVersion": "1.1.0"}, ifname="",
                     extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert out.ok
    assert imported(out.stderr) & set(HEAVY) == set()
    assert "multiplex" in imported(out.stderr)


def test_error_path_imports_nothing_heavy():
    out = run_plugin("multiplex", "ADD", {"cniVersion": "9.9.9", "name": "x", "type": "multiplex"},
                     container_id="c1", netns="/var/run/netns/none", extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert out.code == 1
    assert imported(out.stderr) & set(HEAVY) == set()


@pytest.mark.root
def test_add_without_kubernetes_and_del_from_cache_never_import_the_kubernetes_client(node, netns_factory, tmp_path):
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf("mpx-pod", "198.18.0.0/24"))
    lab.add_nad("blue", bridge_conf("mpx-blue", "198.18.1.0/24"))
    lab.add_pod("p", "blue")
    ns = netns_factory("pod")
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    add = lab.cni("ADD", "p", ns, env=env)
    assert add.ok, add
    assert "kubernetes" not in imported(add.stderr)
    # the same pod deleted with a config that names a kubeconfig whose server does not exist
    conf = lab.config(kubeconfig=str(tmp_path / "no-such-kubeconfig"))
    dele = lab.cni("DEL", "p", ns, config=conf, env=env)
    assert dele.ok, dele
    assert "kubernetes" not in imported(dele.stderr)
    assert "jsonschema" not in imported(dele.stderr), "DEL should not re-validate schemas"
    assert links(ns) == {"lo"} and lab.leases() == []
