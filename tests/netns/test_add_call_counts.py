"""How often an ADD/DEL repeats work it needs once: counted, never timed.

One warm process in the node netns (as the node daemon is) serves pods of 4 bridge attachments
through `cni/skel.run` with the meta plugin, with counters wrapped around the IPAM config parser
(`multiplex.ipam.config.parse_uncached`) and around the making of netlink sockets in a pod netns
(`multiplex.netlink.handle._open_sockets`). What a user would check is checked too: each ADD
answers with the cluster network's address and the pod has eth0 and net1..net3; each DEL leaves
it with `lo` alone.

- the IPAM block of an attachment is parsed at most twice in the first ADD that sees it (the meta
  plugin's validation names its path in the NAD, the IPAM's ADD its own), never in later ADDs of
  the same configs (multiplex/ipam/config.py remembers a parse);
- the pod netns gets one netlink handle per call, whatever number of delegates work in it
  (multiplex/netlink/scope.py), where it got one per delegate and one for the default route.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from tests.cnitool import cni_env, links
from tests.netns.mpxlab import Lab, bridge_lab

pytestmark = pytest.mark.root

ATTACHMENTS = ("blue", "green", "violet")        # + the cluster network: 4 interfaces

#: runs in the node netns: each [env, config] of stdin through skel.run, counting as it goes
COUNTING_PROCESS = r"""
import io, json, sys
from multiplex.cni import skel
from multiplex.ipam import config
from multiplex.meta.orchestrator import plugin
from multiplex.netlink import handle

counts = {}
parse_uncached, open_sockets = config.parse_uncached, handle._open_sockets

def counted_parse(*args, **kwargs):
    counts["parses"] += 1
    return parse_uncached(*args, **kwargs)

def counted_open(netns, field):
    if netns:
        counts["pod_handles"] += 1
    return open_sockets(netns, field)

config.parse_uncached, handle._open_sockets = counted_parse, counted_open
answers = []
for env, conf in json.loads(sys.stdin.read()):
    counts.update(parses=0, pod_handles=0)
    out = io.StringIO()
    rc = skel.run(plugin, env, json.dumps(conf).encode(), out)
    answers.append(dict(counts, rc=rc, out=json.loads(out.getvalue()) if out.getvalue() else None))
print(json.dumps(answers))
"""


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    return bridge_lab(node, str(tmp_path), netns_factory, ("mpc-pod", "198.18.40.0/24"),
                      **{name: (f"mpc-{name}", f"198.18.{41 + n}.0/24") for n, name in enumerate(ATTACHMENTS)})


def serve(lab: Lab, calls: list[tuple[str, str, str]]) -> list[dict]:
    """(command, pod, netns) calls served in order by one counting process in the node netns."""
    payload = []
    for command, pod, ns in calls:
        env = cni_env(command, f"cid-{pod}", ns, "eth0", f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}")
        payload.append([env, lab.config()])
    proc = subprocess.run(["ip", "netns", "exec", lab.node, sys.executable, "-c", COUNTING_PROCESS],
                          input=json.dumps(payload), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_add_parses_each_ipam_config_once_and_opens_the_pod_netns_once_per_call(lab):
    pods = {}
    for pod in ("p1", "p2"):
        lab.add_pod(pod, ", ".join(ATTACHMENTS))
        pods[pod] = lab.netns_factory("pc")
    calls = [("ADD", pod, ns) for pod, ns in pods.items()] + [("DEL", pod, ns) for pod, ns in pods.items()]
    answers = serve(lab, calls)

    add1, add2, del1, del2 = answers
    for add, ns in zip((add1, add2), pods.values()):
        assert add["rc"] == 0, add
        assert [ipaddress.ip_interface(ip["address"]) in ipaddress.ip_network("198.18.40.0/24")
                for ip in add["out"]["ips"]] == [True]
    # (the interfaces themselves: the next test; here the DELs ran in the same process)
    assert del1["rc"] == 0 and del2["rc"] == 0, (del1, del2)
    assert links(pods["p1"]) == {"lo"} and links(pods["p2"]) == {"lo"}
    assert lab.leases() == [] and lab.node_links("veth") == set()

    # 4 attachments, each config parsed at most twice the first time (two JSON paths), then never
    assert 4 <= add1["parses"] <= 8, add1["parses"]
    assert add2["parses"] == 0, add2["parses"]
    # one pod-netns handle per call, not one per delegate (4) plus one for the default route
    assert add1["pod_handles"] == 1 and add2["pod_handles"] == 1, (add1, add2)
    assert del1["pod_handles"] <= 1 and del2["pod_handles"] <= 1, (del1, del2)


def test_each_add_gives_the_pod_its_four_interfaces(lab):
    lab.add_pod("p3", ", ".join(ATTACHMENTS))
    ns = lab.netns_factory("pc")
    add, = serve(lab, [("ADD", "p3", ns)])
    assert add["rc"] == 0, add
    assert links(ns) == {"lo", "eth0", "net1", "net2", "net3"}
    assert add["pod_handles"] == 1
    dele, = serve(lab, [("DEL", "p3", ns)])
    assert dele["rc"] == 0, dele
    assert links(ns) == {"lo"} and lab.leases() == []
