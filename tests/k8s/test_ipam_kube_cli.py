"""The kubernetes IPAM store end to end: the `multiplex-ipam` binary with `"store": "kubernetes"`
(ADD, CHECK, STATUS, GC, DEL, bad inputs), `multiplex ipam show` and `multiplex ipam gc`, and the
RBAC manifest covering every request the IPAM made."""
from __future__ import annotations

import ipaddress
import json
import os

import pytest
import yaml
from click.testing import CliRunner

from multiplex.cli.commands import cli
from multiplex.cni import errors
from multiplex.ipam.kube import model as kube_model
from tests.cnitool import BIN, run_plugin
from tests.k8s.ipam_kube_support import REPO, cluster, ipam_conf, owner, take  # noqa: F401

EXE = os.path.join(BIN, "multiplex-ipam")
needs_binary = pytest.mark.skipif(not os.access(EXE, os.X_OK), reason=f"{EXE} is not installed (pip install -e .)")
POD_ARGS = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=uid-web-0"


def netconf(cluster, tmp_path, ranges, node: str = "n1", **extra) -> dict:  # noqa: F811
    ipam = {"type": "multiplex-ipam", "store": "kubernetes", "ranges": ranges,
            "kubeconfig": cluster.api.kubeconfig, "nodeName": node, "dataDir": str(tmp_path / node),
            "routes": [{"dst": "0.0.0.0/0"}], **extra}
    return {"cniVersion": "1.1.0", "name": "blue", "type": "macvlan", "ipam": ipam}


@needs_binary
def test_the_plugin_binary_with_the_kubernetes_store(cluster, tmp_path):  # noqa: F811
    cluster.pool("blue4", "198.18.100.0/24")
    cluster.pool("blue6", "fd00:100::/64")
    cluster.api.store.add_pod("web-0", node_name="n1", uid="uid-web-0")
    conf = netconf(cluster, tmp_path, [[{"subnet": "198.18.100.0/24"}], [{"subnet": "fd00:100::/64"}]])

    add = run_plugin(EXE, "ADD", conf, container_id="ctr1", netns="/var/run/netns/none", ifname="net1",
                     args=POD_ARGS)
    assert add.ok, add
    v4, v6 = (ipaddress.ip_interface(ip["address"]) for ip in add.out["ips"])
    assert v4.network == ipaddress.ip_network("198.18.100.0/24") and v6.network == ipaddress.ip_network("fd00:100::/64")
    assert [ip["gateway"] for ip in add.out["ips"]] == ["198.18.100.1", "fd00:100::1"]
    assert add.out["routes"] == [{"dst": "0.0.0.0/0"}]
    v4, v6 = str(v4.ip), str(v6.ip)
    blocks = cluster.blocks()
    assert {b.node for b in blocks.values()} == {"n1"} and sorted(b.cidr.prefixlen for b in blocks.values()) == [26, 122]
    a = next(b.allocations[v4] for b in blocks.values() if v4 in b.allocations)
    assert (a.container_id, a.ifname, a.network, a.pod_name, a.pod_uid) == ("ctr1", "net1", "blue", "web-0", "uid-web-0")

    check = run_plugin(EXE, "CHECK", dict(conf, prevResult=add.out), container_id="ctr1", netns="/x", ifname="net1")
    assert check.ok, check
    assert run_plugin(EXE, "STATUS", conf, ifname="").ok
    again = run_plugin(EXE, "ADD", conf, container_id="ctr1", netns="/x", ifname="net1", args=POD_ARGS)
    assert again.out["ips"] == add.out["ips"]

    other = run_plugin(EXE, "ADD", conf, container_id="ctr2", netns="/x", ifname="net1")
    assert other.ok
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "net1"}]})
    assert run_plugin(EXE, "GC", gc_conf, ifname="").ok
    assert set(cluster.allocations().values()) == {"ctr1"}

    for _ in range(2):
        gone = run_plugin(EXE, "DEL", conf, container_id="ctr1", ifname="net1")
        assert gone.ok and gone.out is None, gone
    assert cluster.allocations() == {}


@needs_binary
def test_bad_inputs_through_the_binary_are_clear_errors(cluster, tmp_path):  # noqa: F811
    cluster.pool("blue", "198.18.101.0/24")
    good = netconf(cluster, tmp_path, [[{"subnet": "198.18.101.0/24"}]])
    cases = [
        ({"kubeconfig": "relative/kubeconfig"}, errors.INVALID_CONFIG, "field: $.ipam.kubeconfig"),
        ({"nodeName": "Node_1"}, errors.INVALID_CONFIG, "field: $.ipam.nodeName"),
        ({"store": "etcd"}, errors.INVALID_CONFIG, "field: $.ipam.store"),
        ({"ranges": [[{"subnet": "198.18.102.0/24"}]]}, errors.INVALID_CONFIG, "field: $.ipam.ranges[0][0].subnet"),
        ({"kubeconfig": str(tmp_path / "missing.kubeconfig")}, errors.INVALID_CONFIG, "field: kubeconfig"),
    ]
    for change, code, where in cases:
        conf = json.loads(json.dumps(good))
        conf["ipam"].update(change)
        out = run_plugin(EXE, "ADD", conf, container_id="c1", netns="/x")
        assert out.code == code and where in out.out.get("details", ""), (change, out)
    bad_del = json.loads(json.dumps(good))
    bad_del["ipam"]["nodeName"] = "-x-"
    out = run_plugin(EXE, "DEL", bad_del, container_id="c1")
    assert out.code == errors.INVALID_CONFIG and "field: $.ipam.nodeName" in out.out["details"]

    cluster.api.stop()
    down = run_plugin(EXE, "ADD", good, container_id="c1", netns="/x")
    assert down.code == errors.TRY_AGAIN_LATER and "unreachable" in down.out["msg"]
    status = run_plugin(EXE, "STATUS", good, ifname="")
    assert status.code == errors.PLUGIN_NOT_AVAILABLE and "IPAM store unavailable" in status.out["msg"]
    cluster.api.start()
    assert cluster.objects() == []


# --- the CLI -----------------------------------------------------------------------------------

def test_ipam_show_table_and_json(cluster):  # noqa: F811
    cluster.pool("tiny", "198.18.103.0/28", blockSize=30)
    cluster.pool("v6", "fd00:103::/120", disabled=True)
    conf = ipam_conf("198.18.103.0/28", network="tiny")
    for n in range(1, 5):
        take(cluster.store(f"n{n}"), conf, owner(f"c{n}", network="tiny", pod=f"p{n}"))
    lent = take(cluster.store("n5"), conf, owner("c5", network="tiny"))

    runner = CliRunner()
    res = runner.invoke(cli, ["ipam", "show", "--store", "kubernetes", "--kubeconfig", cluster.api.kubeconfig])
    assert res.exit_code == 0, res.output
    print("\n" + res.output)
    lines = res.output.splitlines()
    assert lines[0] == "pool tiny 198.18.103.0/28 /30 blocks: 4 of 4 claimed, 5 used, 9 free, 1 borrowed"
    assert lines[1].split() == ["BLOCK", "NODE", "USED", "FREE", "BORROWED"]
    [lender] = [ln for ln in lines if "(n5)" in ln]
    assert lender.split()[2:] == ["2", lender.split()[3], "1", "(n5)"]
    assert any(ln.startswith("pool v6 fd00:103::/120 /122") and ln.endswith("disabled") for ln in lines)

    res = runner.invoke(cli, ["ipam", "show", "--store", "kubernetes", "--kubeconfig", cluster.api.kubeconfig,
                              "-o", "json"])
    report = json.loads(res.output)
    tiny = report[0]
    assert (tiny["pool"], tiny["used"], tiny["borrowed"], tiny["blocks"], tiny["blocksTotal"]) == ("tiny", 5, 1, 4, 4)
    allocs = [a for b in tiny["blockList"] for a in b["allocations"]]
    assert {a["address"]: a["borrowed"] for a in allocs}[str(lent.address)] is True
    assert {a["podName"] for a in allocs} >= {"p1", "p2", "p3", "p4"}

    res = runner.invoke(cli, ["ipam", "show", "--store", "kubernetes", "--kubeconfig", cluster.api.kubeconfig,
                              "--allocations"])
    assert f"{lent.address}" in res.output and "borrowed" in res.output


def test_ipam_show_keeps_the_node_view(tmp_path):
    res = CliRunner().invoke(cli, ["ipam", "show", "--data-dir", str(tmp_path), "-o", "json"])
    assert res.exit_code == 0 and json.loads(res.output) == []


def test_ipam_gc_once_and_its_errors(cluster):  # noqa: F811
    cluster.pool("blue", "198.18.104.0/24")
    cluster.node("n1")
    take(cluster.store("n1"), ipam_conf("198.18.104.0/24"), owner("c1", pod="gone", uid="u"))
    runner = CliRunner()
    args = ["ipam", "gc", "--kubeconfig", cluster.api.kubeconfig, "--grace", "0"]
    res = runner.invoke(cli, args + ["--dry-run", "-o", "json"])   # reports, writes nothing
    assert res.exit_code == 0 and json.loads(res.output)["actions"][0]["action"] == "freed"
    assert cluster.allocations()
    res = runner.invoke(cli, args)   # --grace 0: freed in this one pass
    assert "freed 1" in res.output and "freed 198.18.104.2" in res.output
    assert "pod default/gone no longer exists" in res.output
    assert cluster.allocations() == {}

    cluster.api.stop()
    res = runner.invoke(cli, args)
    assert res.exit_code == 1 and "ipam gc:" in res.output and "unreachable" in res.output
    res = runner.invoke(cli, ["ipam", "show", "--store", "kubernetes", "--kubeconfig", cluster.api.kubeconfig])
    assert res.exit_code == 1 and "ipam show:" in res.output


# --- RBAC and the manifests ----------------------------------------------------------------------

def manifest(name: str) -> list[dict]:
    with open(os.path.join(REPO, "manifests", name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def role_rules(name: str = "multiplex-ipam", file: str = "41-rbac-ipam.yaml") -> set[tuple[str, str, str]]:
    [role] = [d for d in manifest(file) if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name]
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_rbac_covers_what_the_ipam_store_and_ipam_gc_do(cluster):  # noqa: F811
    """The node's IPAM role (bound to the node account) covers every request the store makes on a
    node; the GC's own role (its own account) covers `ipam gc`. (Exactness, both
    ways, is tests/k8s/test_rbac_matches_code.py.)"""
    g = kube_model.GROUP
    [binding] = [d for d in manifest("41-rbac-ipam.yaml") if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "multiplex-ipam"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "multiplex", "namespace": "kube-system"}]

    # every request of a busy life: claims, borrow, takeover, requested, node selector, DEL, CNI GC, sweep
    cluster.pool("tiny", "198.18.105.0/28", blockSize=30, nodeSelector={"kubernetes.io/os": "linux"})
    for n in range(1, 6):
        cluster.node(f"n{n}", labels={"kubernetes.io/os": "linux"})
    conf = ipam_conf("198.18.105.0/28", network="tiny")
    cluster.api.reset_counts()
    for n in range(1, 5):
        take(cluster.store(f"n{n}"), conf, owner(f"c{n}", network="tiny", pod=f"p{n}"))
    take(cluster.store("n5"), conf, owner("c5", network="tiny"))
    take(cluster.store("n5"), conf, owner("c6", network="tiny"), requested="198.18.105.14")
    cluster.store("n5").release(owner("c5", network="tiny"))
    cluster.store("n1").gc("tiny", [])
    cluster.store("n4").release_container("c4")
    cluster.store("n1").usage(conf.range_sets[0], conf.exclude)
    groups = {"ippools": g, "ipblocks": g, "pods": "", "nodes": ""}
    used = {(groups[r.resource], r.resource, r.verb) for r in cluster.api.requests}
    print(f"\nrequests the IPAM store made: {sorted(used)}")
    assert used <= role_rules()
    assert {(g, "ipblocks", v) for v in ("create", "update")} <= used

    from multiplex.ipam import gc

    cluster.api.reset_counts()
    cluster.api.store.delete_node("n2")      # one of these two blocks lends nothing: released
    cluster.api.store.delete_node("n3")
    gc.collect(cluster.client("gc"), grace=0, now=lambda: 1.0)
    gc.collect(cluster.client("gc"), grace=0, now=lambda: 2.0)
    used = {(groups[r.resource], r.resource, r.verb) for r in cluster.api.requests}
    print(f"requests ipam gc made: {sorted(used)}")
    assert used <= role_rules("multiplex-ipam-gc", "42-ipam-gc.yaml")
    assert (g, "ipblocks", "delete") in used


def test_the_gc_deployment_runs_ipam_gc_every_minute_under_its_own_account():
    [dep] = [d for d in manifest("42-ipam-gc.yaml") if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 1 and pod["serviceAccountName"] == "multiplex-ipam-gc"
    [c] = pod["containers"]
    assert c["command"][:3] == ["multiplex", "ipam", "gc"] and "--every=60" in c["command"]
    args = c["command"][3:]
    res = CliRunner().invoke(cli, ["ipam", "gc", "--help"])
    for a in args:
        assert a.split("=")[0] in res.output
