"""The policy controller against the test Kubernetes API server (real HTTP, list + watch): it
watches MultiNetworkPolicies, namespaces and every pod of the cluster, its passes follow the
watches (what it tells one-shot calls: the policed networks per namespace), and without the right
to list policies it is left out with the reason logged instead of holding readiness back forever."""
from __future__ import annotations

import json
import os

import pytest

from multiplex.controllers.policy import controller
from multiplex.daemon.controller import DaemonContext, Runner
from multiplex.k8s.objects import KubeObjects
from multiplex.util import log as _log
from tests.k8s.apiserver import running_apiserver
from tests.waiting import wait_for

pytestmark = pytest.mark.k8s


def mnp(name: str, policy_for: str) -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"k8s.v1.cni.cncf.io/policy-for": policy_for}},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def networks_file(state: str) -> dict:
    try:
        with open(os.path.join(state, "policy", "networks.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def test_the_controller_watches_policies_namespaces_and_every_pod(tmp_path):
    with running_apiserver(str(tmp_path)) as api:
        api.store.add_namespace("default")
        api.store.add_pod("elsewhere", labels={"role": "client"}, node_name="n2",
                          annotations={"k8s.v1.cni.cncf.io/network-status":
                                       '[{"name": "default/blue", "ips": ["198.18.1.7"]}]'})
        objects = KubeObjects(api.kubeconfig, "n1")
        from multiplex.k8s.client import KubeClient

        client = KubeClient(api.kubeconfig)
        client.create_object("k8s.cni.cncf.io", "v1beta1", "multi-networkpolicies", mnp("a", "blue"), namespace="default")
        state = str(tmp_path / "state")
        ctx = DaemonContext(node_name="n1", objects=objects, state_dir=state)
        ctrl = controller(ctx)
        assert ctrl is not None and {"multinetworkpolicies", "namespaces", "policy-pods"} <= set(objects.kinds)
        runner = Runner(ctx, [ctrl])
        runner.start()
        try:
            wait_for(runner.ready)
            snap = ctrl.engine.snapshot()
            assert [p["metadata"]["name"] for p in snap.policies] == ["a"]
            assert [n["metadata"]["name"] for n in snap.namespaces] == ["default"]
            assert [p["metadata"]["name"] for p in snap.pods] == ["elsewhere"]   # another node's pod: a peer
            wait_for(lambda: networks_file(state) == {"default": ["default/blue"]})
            client.create_object("k8s.cni.cncf.io", "v1beta1", "multi-networkpolicies", mnp("b", "other/red"),
                                 namespace="default")
            wait_for(lambda: networks_file(state) == {"default": ["default/blue", "other/red"]})
            assert api.count("list", "multi-networkpolicies") >= 1 and api.count("watch", "pods") >= 1
        finally:
            runner.stop()
            objects.stop()
            client.close()


def test_without_the_right_to_list_policies_the_controller_is_left_out(tmp_path):
    with running_apiserver(str(tmp_path)) as api:
        api.deny("list", "multi-networkpolicies")
        logfile = str(tmp_path / "log.jsonl")
        objects = KubeObjects(api.kubeconfig, "n1")
        try:
            ctx = DaemonContext(node_name="n1", objects=objects, log=_log.Logger(logfile, "debug"))
            assert controller(ctx) is None
            assert "policies" not in " ".join(objects.kinds)
            with open(logfile) as f:
                assert "cannot list multi-networkpolicies (RBAC): the policy controller is not run" in f.read()
        finally:
            objects.stop()


def test_pod_events_cost_a_pass_only_when_what_policies_read_changed():
    from multiplex.controllers.policy import PolicyController

    ctrl = PolicyController()
    pod = {"metadata": {"name": "p", "namespace": "default", "labels": {"role": "client"}, "annotations": {}},
           "status": {"phase": "Pending"}}
    assert list(ctrl.keys_for("policy-pods", "ADDED", pod)) == ["all"]
    assert list(ctrl.keys_for("policy-pods", "MODIFIED", dict(pod, status={"phase": "Running"}))) == []
    status = {"k8s.v1.cni.cncf.io/network-status": '[{"name": "default/blue", "ips": ["198.18.1.2"]}]'}
    moved = dict(pod, metadata=dict(pod["metadata"], annotations=status))
    assert list(ctrl.keys_for("policy-pods", "MODIFIED", moved)) == ["all"]
    relabelled = dict(moved, metadata=dict(moved["metadata"], labels={"role": "server"}))
    assert list(ctrl.keys_for("policy-pods", "MODIFIED", relabelled)) == ["all"]
    assert list(ctrl.keys_for("policy-pods", "DELETED", relabelled)) == ["all"]
    assert list(ctrl.keys_for("multinetworkpolicies", "MODIFIED", {})) == ["all"]
    assert list(ctrl.all_keys()) == ["verify"]
