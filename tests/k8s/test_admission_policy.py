"""The ValidatingAdmissionPolicies of manifests/50-admission-policy.yaml, evaluated.

Their CEL runs here with cel-python (PyPI `cel-python`) the way the API server runs it: the
policy's matchConstraints and matchConditions choose the request, its variables are computed in
order, and any validation that is false (or fails to evaluate: failurePolicy Fail) denies it.

The requests are not made up: the pod patch and the IPBlock writes are the ones the code sends
(multiplex.k8s.source and the kubernetes IPAM store, against the test API server), captured with
the object before and after; each is allowed for the node that made it. Then each is tampered with
the way a stolen node credential would (another node's pod, an image, a label, another annotation;
another node's allocation, block or cursor; a block's CIDR) and must be denied.
(kubernetes-validate checks the same documents' shape in tests/unit/test_manifests.py.)
"""
from __future__ import annotations

import copy
import json
import os
from typing import Optional

import pytest
import yaml

from multiplex.ipam.kube.model import GROUP
from multiplex.k8s.client import KubeClient
from multiplex.k8s.source import STATUS_ANNOTATION, KubeSource
from tests.k8s.ipam_kube_support import REPO, cluster, ipam_conf, owner, take  # noqa: F401

import celpy  # noqa: E402  (PyPI cel-python, in the test extras)

POLICY_FILE = os.path.join(REPO, "manifests", "50-admission-policy.yaml")
NODE_USER = "system:serviceaccount:kube-system:multiplex"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"


def policies() -> dict[str, dict]:
    with open(POLICY_FILE) as f:
        return {d["metadata"]["name"]: d for d in yaml.safe_load_all(f)
                if d and d["kind"] == "ValidatingAdmissionPolicy"}


def request(operation: str, resource: str, group: str, obj: Optional[dict], old: Optional[dict],
            node: Optional[str] = "n1", user: str = NODE_USER) -> dict:
    """An admission request as a policy sees it (bound token: the node name in userInfo.extra)."""
    extra = {NODE_NAME_KEY: [node]} if node else {}
    return {"operation": operation, "resource": {"group": group, "resource": resource},
            "userInfo": {"username": user, "extra": extra}, "object": obj, "oldObject": old}


def _matches(policy: dict, req: dict) -> bool:
    for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
        if (req["resource"]["group"] in rule["apiGroups"] and req["resource"]["resource"] in rule["resources"]
                and req["operation"] in rule["operations"]):
            return True
    return False


def evaluate(policy: dict, req: dict) -> Optional[list[str]]:
    """None when the policy does not apply to the request; else the failed validations' messages
    (empty: allowed). An expression that cannot be evaluated counts as failed."""
    if not _matches(policy, req):
        return None
    env = celpy.Environment()
    ctx = {"object": celpy.json_to_cel(req["object"]), "oldObject": celpy.json_to_cel(req["oldObject"]),
           "request": celpy.json_to_cel({k: v for k, v in req.items() if k not in ("object", "oldObject")})}

    def run(expr: str, variables: dict):
        act = dict(ctx, variables=celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()}))
        return env.program(env.compile(expr)).evaluate(act)

    variables: dict = {}
    for cond in policy["spec"].get("matchConditions", []):
        if not run(cond["expression"], variables):
            return None
    for var in policy["spec"].get("variables", []):
        variables[var["name"]] = run(var["expression"], variables)
    failed = []
    for v in policy["spec"]["validations"]:
        try:
            ok = run(v["expression"], variables)
        except celpy.CELEvalError as e:
            failed.append(f"error: {e} in {v['expression']}")
            continue
        if ok is not True and ok != celpy.celtypes.BoolType(True):
            msg = v.get("message") or str(run(v["messageExpression"], variables))
            failed.append(msg)
    return failed


def allowed(policy: dict, req: dict) -> bool:
    out = evaluate(policy, req)
    return out is None or out == []


# --- pods: only the network-status annotation of the node's own pods --------------------------------

@pytest.fixture
def status_patch(apiserver):
    """(pod before, pod after) of the patch multiplex.k8s.source sends for a pod on node n1."""
    apiserver.store.add_pod("web", annotations={"k8s.v1.cni.cncf.io/networks": "blue", "team": "a"},
                            labels={"app": "web"}, node_name="n1")
    before = apiserver.store.get_pod("web")
    source = KubeSource(client=KubeClient(apiserver.kubeconfig, retries=0))
    try:
        assert source.get_pod("default", "web")
        source.set_network_status("default", "web", json.dumps([{"name": "podnet", "interface": "eth0"}]))
    finally:
        source.client.close()
    after = apiserver.store.get_pod("web")
    assert STATUS_ANNOTATION in after["metadata"]["annotations"]
    return before, after


def pod_policy() -> dict:
    return policies()["multiplex-node-pod-status"]


def pod_update(new: dict, old: dict, **kw) -> dict:
    return request("UPDATE", "pods", "", new, old, **kw)


def test_the_network_status_patch_of_a_pod_on_its_own_node_is_allowed(status_patch):
    before, after = status_patch
    assert evaluate(pod_policy(), pod_update(after, before)) == []
    # a pod that had no annotation at all, and removing the status again, are allowed too
    bare = copy.deepcopy(before)
    del bare["metadata"]["annotations"]
    first = copy.deepcopy(bare)
    first["metadata"]["annotations"] = {STATUS_ANNOTATION: "[]"}
    assert evaluate(pod_policy(), pod_update(first, bare)) == []
    assert evaluate(pod_policy(), pod_update(before, after)) == []


def test_a_patch_of_anything_else_is_denied(status_patch):
    before, after = status_patch

    def tampered(change) -> dict:
        new = copy.deepcopy(after)
        change(new)
        return new

    cases = {
        "image": lambda p: p["spec"]["containers"][0].update(image="evil:latest"),
        "spec field": lambda p: p["spec"].update(activeDeadlineSeconds=1),
        "label": lambda p: p["metadata"]["labels"].update(app="db"),
        "label removed": lambda p: p["metadata"].pop("labels"),
        "finalizer": lambda p: p["metadata"].update(finalizers=["example.com/hold"]),
        "owner": lambda p: p["metadata"].update(ownerReferences=[{"apiVersion": "v1", "kind": "Node",
                                                                   "name": "n1", "uid": "x"}]),
        "networks annotation": lambda p: p["metadata"]["annotations"].update(
            {"k8s.v1.cni.cncf.io/networks": "tenant-b/red"}),
        "annotation added": lambda p: p["metadata"]["annotations"].update(other="x"),
        "annotation removed": lambda p: p["metadata"]["annotations"].pop("team"),
    }
    for what, change in cases.items():
        out = evaluate(pod_policy(), pod_update(tampered(change), before))
        assert out, f"{what}: allowed"
        assert not any(m.startswith("error:") for m in out), (what, out)


def test_only_pods_on_the_callers_node_and_only_with_a_node_bound_token(status_patch):
    before, after = status_patch
    out = evaluate(pod_policy(), pod_update(after, before, node="n2"))
    assert out == ["multiplex on node n2 may only patch pods scheduled on that node"]
    pending = copy.deepcopy(before)
    del pending["spec"]["nodeName"]
    assert evaluate(pod_policy(), pod_update(dict(after, spec=pending["spec"]), pending)) == [
        "multiplex on node n1 may only patch pods scheduled on that node"]
    legacy = evaluate(pod_policy(), pod_update(after, before, node=None))
    assert legacy and "bound service-account token" in legacy[0]


def test_other_users_and_other_requests_are_not_this_policys_business(status_patch):
    before, after = status_patch
    image = copy.deepcopy(after)
    image["spec"]["containers"][0]["image"] = "new:1"
    assert evaluate(pod_policy(), pod_update(image, before, user="kubernetes-admin", node=None)) is None
    collector = "system:serviceaccount:kube-system:multiplex-ipam-gc"
    assert evaluate(pod_policy(), pod_update(image, before, user=collector)) is None
    assert evaluate(pod_policy(), request("UPDATE", "configmaps", "", {}, {})) is None


# --- IPBlocks: only what is the node's own ------------------------------------------------------------

def block_policy() -> dict:
    return policies()["multiplex-node-ipblocks"]


def record_writes(c, node: str, writes: list) -> object:
    """A store for `node` whose block writes are captured as (operation, node, new, old)."""
    store = c.store(node)
    client = store.client
    create, replace = client.create_object, client.replace_object

    def recording_create(group, version, plural, body, namespace=None):
        out = create(group, version, plural, body, namespace)
        writes.append(("CREATE", node, copy.deepcopy(body), None))
        return out

    def recording_replace(group, version, plural, name, body, namespace=None, subresource=""):
        old = c.api.store.get_object(group, version, plural, name)
        out = replace(group, version, plural, name, body, namespace, subresource)
        writes.append(("UPDATE", node, copy.deepcopy(body), old))
        return out

    store.client = type("Recording", (), {})()
    for attr in ("list_objects", "get_object", "get_node", "delete_object", "close"):
        setattr(store.client, attr, getattr(client, attr))
    store.client.create_object, store.client.replace_object = recording_create, recording_replace
    return store


@pytest.fixture
def block_writes(cluster):  # noqa: F811
    """Every write the store makes in a small pool (2 blocks): claims, the hot path, a borrow into
    another node's block and its release, a takeover of an empty block."""
    writes: list = []
    cluster.pool("duo", "198.18.120.0/29", blockSize=30)
    conf = ipam_conf("198.18.120.0/29", network="duo")

    def store(node):
        return record_writes(cluster, node, writes)

    take(store("n1"), conf, owner("c1", network="duo"))                            # n1 claims block .0/30
    store("n1").release(owner("c1", network="duo"))                               # ... and empties it
    take(store("n3"), conf, owner("c3", network="duo"))                            # n3 claims .4/30
    take(store("n3"), conf, owner("c4", network="duo"))                            # hot path on its own
    take(store("n2"), conf, owner("c2", network="duo"))                            # n2 takes over .0/30
    take(store("n1"), conf, owner("c5", network="duo"), requested="198.18.120.6")  # n1 borrows in n3's
    store("n1").release(owner("c5", network="duo"))                               # ... and gives it back
    kinds = {(op, node, (old or {}).get("spec", {}).get("node"), new["spec"]["node"]) for op, node, new, old in writes}
    assert {("CREATE", "n1", None, "n1"), ("UPDATE", "n2", "n1", "n2"), ("UPDATE", "n1", "n3", "n3")} <= kinds, kinds
    return writes


def block_request(op: str, node: str, new: dict, old: Optional[dict]) -> dict:
    return request(op, "ipblocks", GROUP, new, old, node=node)


def test_every_block_write_the_store_makes_is_allowed_for_its_node(block_writes):
    for op, node, new, old in block_writes:
        assert evaluate(block_policy(), block_request(op, node, new, old)) == [], (op, node, new, old)


def test_a_node_writing_what_is_not_its_own_is_denied(block_writes):
    policy = block_policy()
    create = next(w for w in block_writes if w[0] == "CREATE")
    borrow = next(w for w in block_writes if w[0] == "UPDATE" and w[1] == "n1" and w[2]["spec"]["node"] == "n3"
                  and len(w[2]["spec"]["allocations"]) > len(w[3]["spec"]["allocations"]))
    hot = next(w for w in block_writes if w[0] == "UPDATE" and w[1] == "n3" and w[3]["spec"]["node"] == "n3")

    def denied(op, node, new, old, why: str) -> None:
        out = evaluate(policy, block_request(op, node, new, old))
        assert out and not any(m.startswith("error:") for m in out), (why, out)

    _, _, new, _ = create
    denied("CREATE", "n2", new, None, "a block created for another node")
    foreign = copy.deepcopy(new)
    foreign["spec"]["allocations"] = {a: dict(v, node="n9") for a, v in foreign["spec"]["allocations"].items()}
    denied("CREATE", "n1", foreign, None, "another node's allocation in a new block")

    _, _, new, old = borrow
    mine = next(a for a, v in new["spec"]["allocations"].items() if v["node"] == "n1")
    theirs = next(a for a, v in new["spec"]["allocations"].items() if v["node"] == "n3")
    t = copy.deepcopy(new)
    del t["spec"]["allocations"][theirs]
    denied("UPDATE", "n1", t, old, "removing another node's allocation")
    t = copy.deepcopy(new)
    t["spec"]["allocations"][theirs]["containerID"] = "stolen"
    denied("UPDATE", "n1", t, old, "changing another node's allocation")
    t = copy.deepcopy(new)
    t["spec"]["allocations"][mine]["node"] = "n3"
    denied("UPDATE", "n1", t, old, "an allocation written in another node's name")
    t = copy.deepcopy(new)
    t["spec"]["node"] = "n1"
    denied("UPDATE", "n1", t, old, "taking over a block that holds allocations")
    t = copy.deepcopy(new)
    t["spec"]["last"] = mine
    denied("UPDATE", "n1", t, old, "moving another node's cursor")

    _, _, new, old = hot
    t = copy.deepcopy(new)
    t["spec"]["cidr"] = "198.18.120.0/29"
    denied("UPDATE", "n3", t, old, "changing a block's CIDR")
    t = copy.deepcopy(new)
    t["spec"]["node"] = "n2"
    denied("UPDATE", "n3", t, old, "handing a block to another node")
    assert evaluate(policy, request("UPDATE", "ipblocks", GROUP, new, old, node=None))  # no node claim


def test_the_collector_is_not_bound_by_the_node_policy(block_writes):
    _, _, new, old = next(w for w in block_writes if w[0] == "UPDATE")
    handed = copy.deepcopy(new)
    handed["spec"]["node"] = "n7"
    req = request("UPDATE", "ipblocks", GROUP, handed, old, node=None,
                  user="system:serviceaccount:kube-system:multiplex-ipam-gc")
    assert evaluate(block_policy(), req) is None
