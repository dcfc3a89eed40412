"""The README's lab on a kernel with ipvlan (the VM tier here): it attaches the pods to an ipvlan
network on the node's uplink as well, pings across pods and to the host outside, and cleans up."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.root, pytest.mark.vm]

MULTIPLEX = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "multiplex")


def test_lab_shows_ipvlan_when_the_kernel_has_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    try:
        proc = subprocess.run([MULTIPLEX, "lab", "--nodes", "1", "--pods", "2"], capture_output=True, text=True, env=env,
                              timeout=1200)
    finally:
        subprocess.run([MULTIPLEX, "lab", "--down"], capture_output=True, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "default/wire" in out and "this kernel has ipvlan" in out
    assert "ping matrix, network default/wire, IPv4" in out
    assert "all pings ok" in out and "FAIL" not in out
    assert out.count("  ok") >= 2, "the pods did not reach the host outside over ipvlan"
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "mpxlab-" not in names
