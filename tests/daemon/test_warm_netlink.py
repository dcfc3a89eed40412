"""The daemon's warm-up leaves pyroute2 imported and its link messages built, although a Handle now
builds its pyroute2 IPRoute only on first use (multiplex/netlink/handle.py): else the first call
that creates a bridge would pay pyroute2's import. Counted by what is imported, never timed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

PROBE = r"""
import json, sys
from multiplex.util import log
from multiplex.daemon.main import _warm_netlink
before = "pyroute2.iproute.linux" in sys.modules
_warm_netlink(log.get())
print(json.dumps({"before": before, "after": "pyroute2.iproute.linux" in sys.modules,
                  "ifinfmsg": "pyroute2.netlink.rtnl.ifinfmsg" in sys.modules}))
"""


def test_warm_up_imports_pyroute2_for_the_first_call(netns_factory):
    ns = netns_factory("wn")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"before": False, "after": True, "ifinfmsg": True}
