"""Every document in manifests/ is valid for Kubernetes, and every example NAD's config is valid for
its delegate.

- Built-in kinds (ServiceAccount, ClusterRole, DaemonSet, CustomResourceDefinition, ...) are checked
  with `kubernetes-validate` in strict mode (unknown fields are errors) against the oldest and the
  newest Kubernetes release it knows.
- Kinds defined by a CRD in manifests/ (NetworkAttachmentDefinition, and the IPAM resources to
  come) are checked against that CRD's openAPIV3Schema with jsonschema, with unknown fields refused
  where the API server would prune them.
- Each example NAD's spec.config passes schemas/<delegate>.json (and schemas/ipam.json for its
  `multiplex-ipam` block). A delegate whose schema has not landed yet is an expected failure
  (strict xfail), so the test turns into a real check, with no edit, the day the schema arrives.
"""
from __future__ import annotations

import copy
import glob
import json
import os

import pytest
import yaml

from multiplex.cli import install as inst

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFESTS = os.path.join(REPO, "manifests")
SCHEMAS = os.path.join(REPO, "schemas")
K8S_VERSIONS = ("1.29", "latest")
#: kinds newer than the oldest release checked: (apiVersion, kind) -> the first release serving it
FIRST_RELEASE = {("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): "1.30",
                 ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): "1.30"}
OUR_DELEGATES = ("multiplex-bridge", "multiplex-vxlan-overlay", "multiplex-bgp-routed", "multiplex-ipvlan")
#: where each delegate's schema comes from, for the xfail reason while it is missing
SCHEMA_ISSUE = {"ipvlan": "issue 5 (the ipvlan delegate)"}


def manifest_files() -> list[str]:
    return sorted(glob.glob(os.path.join(MANIFESTS, "**", "*.yaml"), recursive=True)
                  + glob.glob(os.path.join(MANIFESTS, "**", "*.yml"), recursive=True))


def load_documents() -> list[tuple[str, int, dict]]:
    docs = []
    for path in manifest_files():
        with open(path) as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    docs.append((os.path.relpath(path, MANIFESTS), i, doc))
    return docs


DOCS = load_documents()


def doc_id(rel: str, i: int, doc: dict) -> str:
    return f"{rel}#{i}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def crds() -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema, for every CRD in manifests/."""
    out = {}
    for _, _, doc in DOCS:
        if doc.get("kind") == "CustomResourceDefinition":
            spec = doc["spec"]
            for v in spec["versions"]:
                out[(spec["group"], v["name"], spec["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


def crd_key(doc: dict) -> tuple[str, str, str]:
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    return group, version, doc.get("kind", "")


def by_kind(kind: str) -> list[dict]:
    return [doc for _, _, doc in DOCS if doc.get("kind") == kind]


# ------------------------------------------------------------------------------------------------
# schema validation of every document


def test_manifests_are_there():
    kinds = {doc["kind"] for _, _, doc in DOCS}
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet",
            "Deployment", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
            "NetworkAttachmentDefinition"} <= kinds


def _pruning(schema: dict) -> dict:
    """The schema as the API server applies it: unknown fields of an object with `properties` are
    pruned (here: refused), unless x-kubernetes-preserve-unknown-fields says keep them. metadata is
    checked by the server itself."""
    s = copy.deepcopy(schema)

    def walk(node: dict, path: tuple) -> None:
        if node.get("type") == "object" and "properties" in node and path != ("metadata",) \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, path + (name,))
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + ("[]",))

    walk(s, ())
    return s


@pytest.mark.parametrize("rel, i, doc", [pytest.param(*d, id=doc_id(*d)) for d in DOCS])
def test_document_is_valid_for_kubernetes(rel, i, doc):
    key = crd_key(doc)
    defined = crds()
    if key in defined:
        import jsonschema

        validator = jsonschema.Draft7Validator(_pruning(defined[key]))
        problems = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                    for e in validator.iter_errors(doc)]
        assert problems == [], f"{rel}#{i} against the {key[2]} CRD"
        return
    assert key[0] not in ("k8s.cni.cncf.io",), f"{rel}#{i}: {key} has no CRD in manifests/"
    from kubernetes_validate import utils

    oldest = FIRST_RELEASE.get((doc.get("apiVersion"), doc.get("kind")), K8S_VERSIONS[0])
    for version in (oldest,) + K8S_VERSIONS[1:]:
        v = utils.latest_version() if version == "latest" else version
        try:
            utils.validate(doc, v, strict=True)
        except utils.ValidationError as e:
            path = "/".join(map(str, e.absolute_path)) or "(top)"
            pytest.fail(f"{rel}#{i} is not a valid {doc.get('kind')} for Kubernetes {v}: {path}: {e.message}")
        except utils.SchemaNotFoundError as e:
            pytest.fail(f"{rel}#{i}: {e.message}")


def test_strict_validation_catches_a_misspelt_field():
    """The check above has teeth: a typo in a built-in kind or in a NAD fails."""
    from kubernetes_validate import utils

    [ds] = by_kind("DaemonSet")
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(utils.ValidationError):
        utils.validate(bad, utils.latest_version(), strict=True)

    import jsonschema

    nad = copy.deepcopy(by_kind("NetworkAttachmentDefinition")[0])
    nad["spec"]["conifg"] = nad["spec"].pop("config")
    schema = _pruning(crds()[crd_key(nad)])
    assert list(jsonschema.Draft7Validator(schema).iter_errors(nad))


# ------------------------------------------------------------------------------------------------
# what the install side promises


def rules_of(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def role_named(name: str) -> dict:
    [role] = [r for r in by_kind("ClusterRole") if r["metadata"]["name"] == name]
    return role


def bound_accounts(role_name: str) -> list[tuple[str, str]]:
    """(namespace, name) of the service accounts bound to a ClusterRole."""
    return [(s["namespace"], s["name"]) for b in by_kind("ClusterRoleBinding") + by_kind("RoleBinding")
            if b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name}
            for s in b["subjects"] if s["kind"] == "ServiceAccount"]


def test_rbac_is_split_by_role_and_is_the_least_each_needs():
    """The node's account (the CNI plugin and its IPAM, the node daemon) and the IPAM collector's are
    separate; each role holds exactly the verbs the code uses (tests/k8s/test_rbac_matches_code.py
    records them)."""
    g = "ipam.multiplex.dev"
    assert rules_of(role_named("multiplex")) == {
        ("", "pods", "get"), ("", "pods", "patch"), ("k8s.cni.cncf.io", "network-attachment-definitions", "get"),
        ("", "events", "create"), ("", "namespaces", "get")}
    watched = [("", "pods"), ("", "namespaces"), ("", "nodes"), ("k8s.cni.cncf.io", "network-attachment-definitions"),
               ("k8s.cni.cncf.io", "multi-networkpolicies"), (g, "ippools"), (g, "ipblocks")]
    assert rules_of(role_named("multiplex-daemon")) == {
        (grp, res, v) for grp, res in watched for v in ("list", "watch")} | {("", "nodes", "patch")}
    assert rules_of(role_named("multiplex-ipam")) == {
        (g, "ippools", "list"), (g, "ipblocks", "get"), (g, "ipblocks", "list"), (g, "ipblocks", "create"),
        (g, "ipblocks", "update"), ("", "nodes", "get")}
    assert rules_of(role_named("multiplex-ipam-gc")) == {
        (g, "ipblocks", "get"), (g, "ipblocks", "list"), (g, "ipblocks", "update"), (g, "ipblocks", "delete"),
        ("", "nodes", "list"), ("", "pods", "list")}
    node = ("kube-system", "multiplex")
    assert bound_accounts("multiplex") == [node] and bound_accounts("multiplex-ipam") == [node]
    assert bound_accounts("multiplex-daemon") == [node]
    assert bound_accounts("multiplex-ipam-gc") == [("kube-system", "multiplex-ipam-gc")]
    accounts = {(sa["metadata"]["namespace"], sa["metadata"]["name"]) for sa in by_kind("ServiceAccount")}
    assert accounts == {node, ("kube-system", "multiplex-ipam-gc")}


def test_no_role_has_a_wildcard_or_a_name_restriction_to_forget():
    for role in by_kind("ClusterRole") + by_kind("Role"):
        for rule in role["rules"]:
            assert not any("*" in x for x in rule["verbs"] + rule["resources"] + rule["apiGroups"]), role["metadata"]
            assert set(rule) == {"apiGroups", "resources", "verbs"}, role["metadata"]


def test_each_workload_runs_under_its_own_account():
    [ds] = by_kind("DaemonSet")
    [dep] = by_kind("Deployment")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "multiplex"
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "multiplex-ipam-gc"
    assert dep["metadata"]["namespace"] == "kube-system"


def test_admission_policies_bind_the_node_account_and_deny():
    policies = {p["metadata"]["name"]: p for p in by_kind("ValidatingAdmissionPolicy")}
    bindings = {b["spec"]["policyName"]: b for b in by_kind("ValidatingAdmissionPolicyBinding")}
    assert set(policies) == {"multiplex-node-pod-status", "multiplex-node-ipblocks", "multiplex-node-facts"} \
        == set(bindings)
    for name, policy in policies.items():
        assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
        assert policy["spec"]["failurePolicy"] == "Fail"
        [cond] = policy["spec"]["matchConditions"]
        assert cond["expression"] == "request.userInfo.username == 'system:serviceaccount:kube-system:multiplex'"
        assert bindings[name]["spec"]["validationActions"] == ["Deny"]
    [pods] = policies["multiplex-node-pod-status"]["spec"]["matchConstraints"]["resourceRules"]
    assert (pods["apiGroups"], pods["resources"], pods["operations"]) == ([""], ["pods"], ["UPDATE"])
    [blocks] = policies["multiplex-node-ipblocks"]["spec"]["matchConstraints"]["resourceRules"]
    assert (blocks["apiGroups"], blocks["resources"], sorted(blocks["operations"])) == (
        ["ipam.multiplex.dev"], ["ipblocks"], ["CREATE", "UPDATE"])
    # the daemon's only write, `patch nodes`, is covered: it is an UPDATE of nodes in admission
    [nodes] = policies["multiplex-node-facts"]["spec"]["matchConstraints"]["resourceRules"]
    assert (nodes["apiGroups"], nodes["resources"], nodes["operations"]) == ([""], ["nodes"], ["UPDATE"])
    assert ("", "nodes", "patch") in rules_of(role_named("multiplex-daemon"))


def pod_template() -> dict:
    [ds] = by_kind("DaemonSet")
    return ds["spec"]["template"]["spec"]


def container(name: str) -> dict:
    pod = pod_template()
    [c] = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
    return c


def flags(c: dict) -> dict[str, str]:
    return dict(a.split("=", 1) for a in c["command"] if a.startswith("--") and "=" in a)


def parses(c: dict) -> None:
    """The container's command is one `multiplex` accepts: click parses it (without running it),
    so a flag that does not exist, or a bad value, fails here and not on a node."""
    from multiplex.cli.commands import cli

    assert c["command"][0] == "multiplex"
    sub = cli.commands[c["command"][1]]
    sub.make_context(c["command"][1], list(c["command"][2:]))


def test_daemonset_runs_on_every_node():
    [ds] = by_kind("DaemonSet")
    [sa] = [sa for sa in by_kind("ServiceAccount") if sa["metadata"]["name"] == "multiplex"]
    pod = pod_template()
    assert ds["metadata"]["namespace"] == sa["metadata"]["namespace"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in pod["tolerations"]  # also on tainted and not-ready nodes
    assert pod["priorityClassName"] == "system-node-critical"
    assert [c["name"] for c in pod["initContainers"]] == ["install"]
    assert [c["name"] for c in pod["containers"]] == ["daemon"]


def test_install_writes_the_shim_for_the_daemons_socket():
    """The init container (a native sidecar, re-running every 300 s) installs daemon mode: the shim
    names the socket the daemon serves; every host directory install writes appears under --root at
    its own path, as install() resolves it, and nothing else of the host is mounted."""
    c, daemon = container("install"), container("daemon")
    parses(c)
    assert c["command"][:2] == ["multiplex", "install"] and "--daemon" in c["command"]
    assert c["restartPolicy"] == "Always" and float(flags(c)["--every"]) > 0
    args = flags(c)
    assert args["--socket"] == flags(daemon)["--socket"]
    assert args["--fallback"] == "fail"   # the image's venv cannot run on the host (docs/install.md)
    root = args["--root"]
    hostpaths = {v["name"]: v["hostPath"]["path"] for v in pod_template()["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: hostpaths[m["name"]] for m in c["volumeMounts"]}
    wanted = (inst.DEFAULT_BIN_DIR, inst.DEFAULT_CONF_DIR)
    for host_dir in wanted:
        assert mounts.get(root + host_dir) == host_dir, f"{host_dir} is not mounted at {root}{host_dir}"
    assert sorted(mounts.values()) == sorted(wanted)
    assert all(not m.get("readOnly") for m in c["volumeMounts"])
    probe = c["readinessProbe"]["exec"]["command"]
    assert probe[-1] == root + inst.DEFAULT_CONF_DIR + "/" + inst.DEFAULT_CONF_NAME


def test_install_is_not_privileged():
    """install writes files into root-owned host directories: uid 0 as their owner, no capability."""
    sc = container("install")["securityContext"]
    assert sc.get("privileged") is not True
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == 0 and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod_template().get("hostIPC")


def test_the_daemon_container_serves_the_shim_with_the_hosts_state():
    """`multiplex daemon` as the host sees it: privileged in the host's network and PID namespaces
    (CNI_NETNS is /proc/<pid>/ns/net or /run/netns/<name>), its node from the downward API, the
    socket directory, the state dir and the CNI directories at the host's own paths."""
    from multiplex.util.state import DEFAULT_ROOT

    c, pod = container("daemon"), pod_template()
    parses(c)
    assert c["command"][:2] == ["multiplex", "daemon"]
    assert c["securityContext"]["privileged"] is True
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    [node] = [e for e in c["env"] if e["name"] == "NODE_NAME"]
    assert node["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    args = flags(c)
    assert args["--state-dir"] == DEFAULT_ROOT   # the same state as a plain `multiplex` exec uses
    # the IPAM GC runs in 42-ipam-gc.yaml (its delete rights stay off the nodes)
    assert args["--controllers"].split(",") == ["node-registry", "vxlan-peers", "bgp", "policy"]
    from importlib.metadata import entry_points

    known = {e.name for e in entry_points(group="multiplex.controllers")}
    assert set(args["--controllers"].split(",")) <= known, known
    hostpaths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: (hostpaths[m["name"]], m) for m in c["volumeMounts"] if m["name"] in hostpaths}

    def from_host(path: str, writable: bool) -> None:
        """`path` is under a mount of the same host path (writable when asked)."""
        found = [(mp, m) for mp, (hp, m) in mounts.items() if mp == hp and (path + "/").startswith(mp + "/")]
        assert found, f"{path} is not the host's in the daemon container"
        assert not (writable and found[0][1].get("readOnly")), f"{path} is mounted read-only"

    from_host(os.path.dirname(args["--socket"]), writable=True)
    from_host(args["--state-dir"], writable=True)
    from_host(inst.DEFAULT_CONF_DIR, writable=False)
    from_host(inst.DEFAULT_BIN_DIR, writable=False)
    from_host("/run/netns", writable=False)
    assert mounts["/run/netns"][1]["mountPropagation"] == "HostToContainer"


def settings_file(configmap: str, key: str) -> str:
    """Where the daemon container sees `key` of the ConfigMap `configmap` (a projected source of
    the volume mounted read-only), asserting the source is optional (no ConfigMap: no file, the
    pod still starts)."""
    c, pod = container("daemon"), pod_template()
    for vol in pod["volumes"]:
        for source in vol.get("projected", {}).get("sources", []):
            cm = source.get("configMap") or {}
            if cm.get("name") != configmap:
                continue
            assert cm["optional"] is True, f"ConfigMap {configmap} is not optional"
            [item] = [i for i in cm["items"] if i["key"] == key]
            [mount] = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
            assert mount["readOnly"] is True
            return os.path.join(mount["mountPath"], item["path"])
    raise AssertionError(f"no projected ConfigMap {configmap} in the daemon's volumes")


def test_the_bgp_settings_are_an_optional_configmap_where_the_controller_looks():
    """The bgp controller runs only where /etc/multiplex/bgp.json exists: the admin's ConfigMap,
    optional (no ConfigMap: no file, no BGP, the pod still starts), read-only."""
    from multiplex.bgp.settings import DEFAULT_PATH

    assert settings_file("multiplex-bgp", "bgp.json") == DEFAULT_PATH
    assert "MULTIPLEX_BGP_CONFIG" not in {e["name"] for e in container("daemon").get("env", [])}


def test_the_vni_ranges_are_an_optional_configmap_where_the_delegate_looks():
    """The VNI ranges per namespace (delegates/vxlan_settings.py) are read from
    /etc/multiplex/vxlan.json in the daemon, which serves every ADD (--fallback=fail): the admin's
    ConfigMap, optional (no ConfigMap: no file, no restriction), read-only, beside bgp.json."""
    from delegates.vxlan_settings import DEFAULT_PATH, PATH_ENV

    assert settings_file("multiplex-vxlan", "vxlan.json") == DEFAULT_PATH
    assert PATH_ENV not in {e["name"] for e in container("daemon").get("env", [])}
    args = container("install")["command"]
    assert "--fallback=fail" in args, "a one-shot call on the host would not see the container's file"


def test_the_multinetworkpolicy_crd_is_what_the_policy_controller_reads():
    from multiplex.controllers import policy

    [crd] = [d for d in by_kind("CustomResourceDefinition")
             if d["metadata"]["name"] == "multi-networkpolicies.k8s.cni.cncf.io"]
    spec = crd["spec"]
    assert (spec["group"], spec["names"]["plural"], spec["names"]["kind"], spec["scope"]) == (
        policy.MNP_GROUP, policy.MNP_PLURAL, "MultiNetworkPolicy", "Namespaced")
    assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [(policy.MNP_VERSION, True, True)]


def test_the_daemons_probes_reach_its_loopback_metrics_port():
    """The daemon serves /readyz and /healthz on --metrics-address, a loopback address: with
    hostNetwork kubelet reaches it only with `host` set to that address (the default would be the
    pod IP, the node's)."""
    c = container("daemon")
    host, port = flags(c)["--metrics-address"].rsplit(":", 1)
    assert host == "127.0.0.1"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (host, int(port), path), probe


def test_termination_grace_lets_in_flight_calls_finish():
    """SIGTERM: the daemon answers the calls it admitted, each within the call budget."""
    from multiplex.cni.request import CALL_BUDGET

    assert pod_template()["terminationGracePeriodSeconds"] > CALL_BUDGET


def test_every_workload_runs_the_image_named_in_manifests_image():
    """One place names the image: manifests/image. Every container of ours runs it, its tag is the
    package version, and scripts/image.sh tags what it builds with it."""
    import subprocess
    import tomllib

    with open(os.path.join(MANIFESTS, "image")) as f:
        image = f.read().strip()
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert image.rsplit(":", 1)[1] == version
    images = {c["image"] for kind in ("DaemonSet", "Deployment") for w in by_kind(kind)
              for c in w["spec"]["template"]["spec"].get("initContainers", []) + w["spec"]["template"]["spec"]["containers"]}
    assert images == {image}
    out = subprocess.run([os.path.join(REPO, "scripts", "image.sh"), "name"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == image


def test_nad_crd_is_the_network_plumbing_wg_one():
    [crd] = [d for d in by_kind("CustomResourceDefinition")
             if d["metadata"]["name"] == "network-attachment-definitions.k8s.cni.cncf.io"]
    assert crd["metadata"]["name"] == "network-attachment-definitions.k8s.cni.cncf.io"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == "NetworkAttachmentDefinition"
    [v1] = crd["spec"]["versions"]
    assert v1["name"] == "v1" and v1["served"] and v1["storage"]
    assert v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["config"] == {
        "description": v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["config"]["description"],
        "type": "string"}


# ------------------------------------------------------------------------------------------------
# example NADs against our own schemas


def example_nads() -> list[tuple[str, dict]]:
    return [(rel, doc) for rel, _, doc in DOCS if doc.get("kind") == "NetworkAttachmentDefinition"]


def plugin_configs(nad: dict) -> list[dict]:
    """The plugin configs a NAD's spec.config holds, with name and cniVersion as libcni injects them."""
    conf = json.loads(nad["spec"]["config"])
    if "plugins" in conf:
        return [dict(p, name=conf["name"], cniVersion=conf["cniVersion"]) for p in conf["plugins"]]
    return [conf]


def delegate_schema(type_name: str) -> tuple[str, str | None]:
    """(short name, schema file name or None when it has not landed yet)."""
    short = type_name.removeprefix("multiplex-")
    for fname in (f"{short}.json", f"{short.replace('-', '_')}.json"):
        if os.path.isfile(os.path.join(SCHEMAS, fname)):
            return short, fname
    return short, None


def nad_params():
    params = []
    for rel, nad in example_nads():
        missing = []
        for conf in plugin_configs(nad):
            if conf.get("type", "").startswith("multiplex-") and conf["type"] != "multiplex-ipam":
                short, fname = delegate_schema(conf["type"])
                if fname is None:
                    missing.append(short)
        marks = [pytest.mark.xfail(strict=True, reason=f"schemas/{m}.json lands with "
                                   f"{SCHEMA_ISSUE.get(m, f'the {m} delegate (a later issue)')}")
                 for m in missing]
        params.append(pytest.param(rel, nad, id=f"{rel}:{nad['metadata']['name']}", marks=marks))
    return params


@pytest.mark.parametrize("rel, nad", nad_params())
def test_example_nad_config_passes_our_schema(rel, nad):
    from multiplex.util import schema

    confs = plugin_configs(nad)
    assert confs, f"{rel}: spec.config holds no plugin"
    assert json.loads(nad["spec"]["config"])["name"] == nad["metadata"]["name"]
    for conf in confs:
        type_name = conf.get("type", "")
        assert type_name.startswith("multiplex-"), f"{rel}: an example of ours uses our delegates, got {type_name!r}"
        short, fname = delegate_schema(type_name)
        assert fname is not None, f"{rel}: schemas/{short}.json does not exist yet"
        assert schema.errors(fname, conf) == [], f"{rel} against schemas/{fname}"
        ipam = conf.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "multiplex-ipam":
            assert schema.errors("ipam", ipam, prefix="$.ipam") == [], f"{rel}: ipam against schemas/ipam.json"


def test_every_delegate_of_ours_has_an_example():
    from multiplex.cni import registry

    delegates = set(OUR_DELEGATES) | {n for n in registry.builtin_names() if n not in ("multiplex", "multiplex-ipam")}
    shown = {conf.get("type") for _, nad in example_nads() for conf in plugin_configs(nad)}
    assert delegates <= shown, f"no example NAD for {sorted(delegates - shown)}"
