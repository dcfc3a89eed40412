"""Cluster-wide IPAM garbage collection (multiplex.ipam.gc) and crashes mid-ADD.

The clock is driven (`now=`), never slept on: a gone pod's address is marked on one pass and
freed on a pass `grace` seconds later, not before.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from multiplex.cni import errors
from multiplex.cni.errors import CNIError
from multiplex.ipam import gc
from tests.cnitool import BIN, CNI_PATH, run_plugin
from tests.k8s.ipam_kube_support import node_routes, cluster, ipam_conf, owner, take  # noqa: F401
from tests.waiting import wait_for

GRACE = 300.0
T0 = 1_800_000_000.0
EXE = os.path.join(BIN, "multiplex-ipam")


def pod(cluster, name: str, uid: str, node: str = "n1"):  # noqa: F811
    return cluster.api.store.add_pod(name, node_name=node, uid=uid)


def collect(cluster, at: float, **kw) -> gc.Report:  # noqa: F811
    report = gc.collect(cluster.client("gc"), GRACE, now=lambda: at, **kw)
    print("\n" + "\n".join(report.lines()))
    return report


def test_a_pod_deleted_without_del_is_freed_after_the_grace_period_and_not_before(cluster):  # noqa: F811
    cluster.pool("blue", "198.18.90.0/24")
    cluster.node("n1")
    conf = ipam_conf("198.18.90.0/24")
    leases = {}
    for name in ("web-0", "web-1", "web-2", "web-3"):
        pod(cluster, name, uid=f"uid-{name}")
        leases[name] = take(cluster.store("n1"), conf, owner(f"ctr-{name}", pod=name, uid=f"uid-{name}"))
    leases["plain"] = take(cluster.store("n1"), conf, owner("no-pod"))      # not a pod's: judged by node only

    cluster.api.store.delete_pod("web-0")                 # the node crashed: no DEL ever comes
    cluster.api.store.delete_pod("web-1")
    pod(cluster, "web-1", uid="uid-web-1-new")            # recreated under the same name
    cluster.api.store.delete_pod("web-2")                 # deleted ... and back with its UID (a stale read)

    first = collect(cluster, T0)
    assert {(a.kind, a.address) for a in first.actions} == {
        ("marked", str(leases["web-0"].address)), ("marked", str(leases["web-1"].address)),
        ("marked", str(leases["web-2"].address))}
    assert any("pod default/web-1 was recreated (uid uid-web-1-new, the lease is for uid-web-1)" in a.reason
               for a in first.actions)
    assert len(cluster.allocations()) == 5              # marked, not freed

    pod(cluster, "web-2", uid="uid-web-2")
    before = collect(cluster, T0 + GRACE - 1)
    assert [(a.kind, a.address) for a in before.actions] == [("unmarked", str(leases["web-2"].address))]
    assert len(cluster.allocations()) == 5

    after = collect(cluster, T0 + GRACE)
    assert sorted((a.kind, a.address) for a in after.actions) == sorted(
        [("freed", str(leases["web-0"].address)), ("freed", str(leases["web-1"].address))])
    assert "gone for 300s" in after.actions[0].reason
    left = cluster.allocations()
    assert set(left.values()) == {"ctr-web-2", "ctr-web-3", "no-pod"}
    # the block stays n1's; freed addresses are handed out again
    assert [b.node for b in cluster.blocks().values()] == ["n1"]
    assert collect(cluster, T0 + 2 * GRACE).actions == []


def test_a_deleted_node_frees_its_block_for_other_nodes(cluster):  # noqa: F811
    cluster.pool("one", "198.18.91.0/29", blockSize=29)   # one block: .2-.6
    for n in ("n1", "n2"):
        cluster.node(n)
    conf = ipam_conf("198.18.91.0/29", network="one")
    for i in range(5):
        pod(cluster, f"p{i}", uid=f"u{i}")
        take(cluster.store("n1"), conf, owner(f"c{i}", network="one", pod=f"p{i}", uid=f"u{i}"))
    with pytest.raises(CNIError) as e:
        take(cluster.store("n2"), conf, owner("new", network="one"))
    assert e.value.code == errors.IPAM_EXHAUSTED

    cluster.api.store.delete_node("n1")                   # the pods' objects may linger: the node decides
    marked = collect(cluster, T0)
    assert marked.count("marked") == 5 and "node n1 no longer exists" in marked.actions[0].reason
    with pytest.raises(CNIError):
        take(cluster.store("n2"), conf, owner("new", network="one"))
    assert collect(cluster, T0 + 10).actions == []        # within the grace period: nothing

    done = collect(cluster, T0 + GRACE)
    assert done.count("freed") == 5 and done.count("released") == 1
    assert cluster.blocks() == {}
    got = take(cluster.store("n2"), conf, owner("new", network="one"))
    assert [b.node for b in cluster.blocks().values()] == ["n2"] and got.fresh


def test_a_block_of_a_deleted_node_is_handed_over_to_the_node_borrowing_from_it(cluster):  # noqa: F811
    cluster.pool("blue", "198.18.93.0/24")
    for n in ("n1", "n2"):
        cluster.node(n)
    conf = ipam_conf("198.18.93.0/24")
    pod(cluster, "a", uid="ua")
    pod(cluster, "b", uid="ub", node="n2")
    mine = take(cluster.store("n1"), conf, owner("ca", pod="a", uid="ua"))
    lent = take(cluster.store("n2"), conf, owner("cb", pod="b", uid="ub"), requested=str(mine.address + 1))
    [block] = cluster.blocks().values()
    assert block.node == "n1" and block.allocations[str(lent.address)].node == "n2"

    cluster.api.store.delete_node("n1")
    cluster.api.store.delete_pod("a")
    first = collect(cluster, T0)       # the node is gone: the block goes to n2 at once
    assert first.count("marked") == 1 and first.count("handed-over") == 1
    assert "handed block over v4-198-18-93-0-26 to node n2: node n1 no longer exists" in first.lines()[2]
    [block] = cluster.blocks().values()
    assert block.node == "n2" and block.allocations[str(mine.address)].missing_since == T0
    done = collect(cluster, T0 + GRACE)
    assert done.count("freed") == 1 and done.count("handed-over") == 0
    [block] = cluster.blocks().values()
    assert block.node == "n2" and list(block.allocations) == [str(lent.address)] and not block.borrowed()
    assert node_routes(cluster.store("n2")).borrowed == ()
    # n2 allocates from it now as its own block (one write, no borrowing)
    assert take(cluster.store("n2"), conf, owner("cc")).address in block.cidr


def test_dry_run_writes_nothing_and_a_conflicting_pass_rereads(cluster):  # noqa: F811
    cluster.pool("blue", "198.18.94.0/24")
    cluster.node("n1")
    conf = ipam_conf("198.18.94.0/24")
    take(cluster.store("n1"), conf, owner("c1", pod="gone", uid="u"))
    before = cluster.objects()
    report = collect(cluster, T0, dry_run=True)
    assert report.count("marked") == 1 and cluster.objects() == before
    cluster.api.fail_next(1, 409, verbs="update", resource="ipblocks")
    report = collect(cluster, T0)
    assert report.conflicts == 1 and report.count("marked") == 1
    assert collect(cluster, T0 + GRACE).count("freed") == 1
    assert cluster.allocations() == {}
    assert report.to_dict()["actions"][0]["action"] == "marked"


def test_run_every_repeats_until_stopped_and_survives_an_api_outage(cluster):  # noqa: F811
    cluster.pool("blue", "198.18.95.0/24")
    cluster.node("n1")
    take(cluster.store("n1"), ipam_conf("198.18.95.0/24"), owner("c1", pod="gone", uid="u"))
    reports, failures, stop = [], [], threading.Event()
    clock = iter([T0, T0 + GRACE, T0 + GRACE, T0 + GRACE])
    client = cluster.client("gc")
    client.sleep = lambda _: None

    def on_report(r):
        reports.append(r)
        if len(reports) == 1:
            cluster.api.stop()
        if len(reports) == 2:
            stop.set()

    def on_error(e):
        failures.append(e)
        cluster.api.start()

    gc.run_every(client, 0.01, GRACE, on_report=on_report, on_error=on_error, stop=stop, now=lambda: next(clock))
    assert [r.count("marked") for r in reports] == [1, 0] and reports[1].count("freed") == 1
    assert len(failures) == 1 and failures[0].code == errors.TRY_AGAIN_LATER


def run_ipam_gc(cluster, *args: str) -> dict:  # noqa: F811
    """`multiplex ipam gc ARGS -o json` as an admin runs it, against the test API server."""
    from click.testing import CliRunner

    from multiplex.cli.commands import cli

    got = CliRunner().invoke(cli, ["ipam", "gc", "--kubeconfig", cluster.api.kubeconfig, *args, "-o", "json"])
    assert got.exit_code == 0, got.output
    return json.loads(got.output)


def test_ipam_gc_grace_0_frees_an_orphan_in_one_pass_and_a_grace_still_marks_first(cluster):  # noqa: F811
    cluster.pool("blue", "198.18.98.0/24")
    cluster.node("n1")
    conf = ipam_conf("198.18.98.0/24")
    for name in ("kept", "gone-a", "gone-b"):
        pod(cluster, name, uid=f"u-{name}")
        take(cluster.store("n1"), conf, owner(f"ctr-{name}", pod=name, uid=f"u-{name}"))
    cluster.api.store.delete_pod("gone-a")

    # grace > 0: unchanged, the orphan is marked and kept
    marked = run_ipam_gc(cluster, "--grace", "60")
    assert [a["action"] for a in marked["actions"]] == ["marked"]
    assert sorted(cluster.allocations().values()) == ["ctr-gone-a", "ctr-gone-b", "ctr-kept"]

    # grace 0: one pass frees both the marked orphan and one never seen before; the live pod stays
    cluster.api.store.delete_pod("gone-b")
    freed = run_ipam_gc(cluster, "--grace", "0")
    assert sorted((a["action"], a["reason"].split(" (")[0]) for a in freed["actions"]) == [
        ("freed", "pod default/gone-a no longer exists"), ("freed", "pod default/gone-b no longer exists")]
    assert sorted(cluster.allocations().values()) == ["ctr-kept"]
    assert run_ipam_gc(cluster, "--grace", "0")["actions"] == []


def test_grace_0_releases_a_gone_nodes_block_in_the_same_pass(cluster):  # noqa: F811
    cluster.pool("one", "198.18.99.0/29", blockSize=29)
    cluster.node("n1")
    conf = ipam_conf("198.18.99.0/29", network="one")
    take(cluster.store("n1"), conf, owner("c1", network="one", pod="p1", uid="u1"))
    cluster.api.store.delete_node("n1")
    report = gc.collect(cluster.client("gc"), 0, now=lambda: T0)
    assert report.count("freed") == 1 and report.count("released") == 1 and report.count("marked") == 0
    assert "(no grace period)" in report.actions[0].reason
    assert cluster.objects() == []


# --- crashes ------------------------------------------------------------------------------------

pytestmark_binary = pytest.mark.skipif(not os.access(EXE, os.X_OK), reason=f"{EXE} is not installed")


def netconf(cluster, tmp_path, cidr: str, node: str = "n1") -> dict:  # noqa: F811
    return {"cniVersion": "1.1.0", "name": "blue", "type": "macvlan",
            "ipam": {"type": "multiplex-ipam", "store": "kubernetes", "range": cidr,
                     "kubeconfig": cluster.api.kubeconfig, "nodeName": node, "dataDir": str(tmp_path / node)}}


def start_add(conf: dict, container_id: str, pod_name: str, uid: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": "ADD", "CNI_PATH": CNI_PATH, "CNI_CONTAINERID": container_id,
                "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0",
                "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_name};K8S_POD_UID={uid}"})
    proc = subprocess.Popen([EXE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    return proc


@pytestmark_binary
@pytest.mark.parametrize("kill_at", ["list", "create", "update"])
def test_a_process_killed_mid_add_leaves_nothing_gc_cannot_recover(cluster, tmp_path, kill_at):  # noqa: F811
    """SIGKILL the plugin while its request is in flight (the server holds each request 0.3 s):
    at a read, at the block claim (create, with the allocation in it), at the allocation write into
    the node's existing block. Then: a double ADD returns the address the dead one got, and GC
    recovers everything once the pod and the node are gone."""
    cidr = "198.18.96.0/24"
    cluster.pool("blue", cidr)
    cluster.node("n1")
    pod(cluster, "victim", uid="uv")
    conf = netconf(cluster, tmp_path, cidr)
    if kill_at == "update":
        take(cluster.store("n1"), ipam_conf(cidr), owner("older"))    # n1 has a block already
    cluster.api.reset_counts()
    cluster.api.latency = 0.3
    proc = start_add(conf, "ctr-victim", "victim", "uv")
    resource = "ippools" if kill_at == "list" else "ipblocks"
    wait_for(lambda: cluster.api.count(kill_at, resource) >= 1 or proc.poll() is not None, 60, what=kill_at)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    time.sleep(0.5)                                           # the server finishes what it received
    cluster.api.latency = 0.0

    victim = {a: c for a, c in cluster.allocations().items() if c == "ctr-victim"}
    print(f"\nkilled at {kill_at}: blocks {sorted(cluster.blocks())}, the victim's allocation {victim}")
    if kill_at == "list":
        assert victim == {}
    else:
        assert len(victim) == 1                                # claim and allocation are one write

    again = run_plugin(EXE, "ADD", conf, container_id="ctr-victim", netns="/var/run/netns/none",
                       args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=victim;K8S_POD_UID=uv")
    assert again.ok, again
    addr = again.out["ips"][0]["address"].split("/")[0]
    if victim:
        assert addr == next(iter(victim))                      # the same address, not a second one
    assert list(cluster.allocations().values()).count("ctr-victim") == 1

    # the node crashes for good: pod and node deleted, no DEL ever comes
    cluster.api.store.delete_pod("victim")
    cluster.api.store.delete_node("n1")
    collect(cluster, T0)
    collect(cluster, T0 + GRACE)
    assert cluster.objects() == []


@pytestmark_binary
def test_add_twice_through_the_binary_returns_the_same_address(cluster, tmp_path):  # noqa: F811
    cidr = "198.18.97.0/24"
    cluster.pool("blue", cidr)
    conf = netconf(cluster, tmp_path, cidr)
    first = run_plugin(EXE, "ADD", conf, container_id="c1", netns="/x")
    assert first.ok, first
    for _ in range(2):
        again = run_plugin(EXE, "ADD", conf, container_id="c1", netns="/x")
        assert again.out["ips"] == first.out["ips"]
    assert len(cluster.allocations()) == 1
