"""Who is trusted with what (README "Security model"), without root: the meta plugin run in-process
(skel) with fake delegates exec'd from a CNI_PATH of the test's own, and `select` on its own.

- A NAD's config may not name `type: multiplex` nor carry node paths/identity: code 7 naming the
  field, nothing executed, no file created.
- Looking a config up by name never returns a multiplex config (no self-call, no RecursionError).
- A pod's `ips`/`mac` (annotation or cni-args) need the NAD's explicit opt-in: code 2.
- Bounds: maxAttachments, one NAD lookup per distinct namespace/name, annotation size.
- namespaceIsolation is on by default; NAD-sourced networks carry `<namespace>.<name>`.
"""
from __future__ import annotations

import json
import os

import pytest

from multiplex.cni.errors import CNIError
from multiplex.cni.request import Request
from multiplex.meta.config import MultiplexConfig
from multiplex.policy import authorize
from multiplex.meta.selection import identity_name, select
from tests.unit.metaenv import ANN, MetaEnv



class Env(MetaEnv):
    """MetaEnv whose every ADD is container c1, NADs of any config, and a would-be shell: an
    executable `evil` in a directory of its own (`evil_dir`) that touches `marker` when run."""

    def __init__(self, root):
        super().__init__(root, container_id=lambda pod, namespace: "c1")
        evil_dir = root / "evil-bin"
        evil_dir.mkdir()
        self.evil_dir, self.marker = str(evil_dir), root / "pwned"
        evil = evil_dir / "evil"
        evil.write_text(f"#!/bin/sh\ntouch {self.marker}\necho '{{}}'\n")
        evil.chmod(0o755)

    def nad(self, name: str, config, namespace: str = "default") -> None:
        if isinstance(config, dict):
            config = json.dumps(dict({"cniVersion": "1.1.0"}, **config))
        self.write_nad(name, config or "", namespace)


@pytest.fixture
def env(tmp_path):
    """NAD and pod files, a confDir, fake delegates on a private CNI_PATH, and the would-be shell."""
    e = Env(tmp_path)
    e.nad("podnet", e.fake())
    return e


def refused_without_trace(env, rc, out, code: int, field: str) -> None:
    assert rc == 1 and out["code"] == code, out
    assert f"field: {field}" in out["details"], out
    assert env.calls() == [], "a delegate ran"
    assert env.cache_files() == []
    assert not env.marker.exists(), "the would-be shell ran"


# ---- NAD configs are untrusted ------------------------------------------------------------------

def test_nad_naming_multiplex_with_bin_dir_and_a_shell_cluster_network_is_refused(env):
    # the reproduction of issue 15: a tenant's NAD runs the meta plugin with a binDir of its choice
    env.nad("evil", {"type": "multiplex", "name": "evil", "binDir": env.evil_dir,
                     "clusterNetwork": {"type": "evil", "name": "x", "cniVersion": "1.1.0"}}, namespace="default")
    env.pod("p", "evil")
    rc, out = env.add()
    refused_without_trace(env, rc, out, 7, "default/evil:$.type")
    assert "admin" in out["details"] and "multiplex" in out["msg"]


@pytest.mark.parametrize("field,config", [
    ("$.binDir", lambda e: e.fake(binDir=e.evil_dir)),
    ("$.logFile", lambda e: e.fake(logFile=str(e.root / "owned.log"))),
    ("$.stateDir", lambda e: e.fake(stateDir=str(e.root / "other-state"))),
    ("$.ipam.kubeconfig", lambda e: e.fake(ipam={"type": "multiplex-ipam", "kubeconfig": str(e.root / "kc")})),
    ("$.ipam.dataDir", lambda e: e.fake(ipam={"type": "multiplex-ipam", "dataDir": str(e.root / "db")})),
    ("$.ipam.nodeName", lambda e: e.fake(ipam={"type": "multiplex-ipam", "nodeName": "other-node"})),
    ("$.ipam.type", lambda e: e.fake(ipam={"type": "multiplex"})),
    ("$.plugins[1].type", lambda e: {"name": "evil", "plugins": [e.fake(), {"type": "multiplex"}]}),
    ("$.plugins[0].args.readinessindicatorfile", lambda e: {"name": "evil", "plugins": [
        e.fake(args={"readinessindicatorfile": "/etc/shadow"})]}),
    ('$["cni.dev/valid-attachments"]', lambda e: e.fake(**{"cni.dev/valid-attachments": []})),
    ('$["multiplex.dev/valid-containers"]', lambda e: e.fake(**{"multiplex.dev/valid-containers": []})),
    ("$.KubeConfig", lambda e: e.fake(KubeConfig="/root/.kube/config")),
])
def test_node_fields_in_a_nad_are_refused_naming_the_field(env, field, config):
    env.nad("evil", config(env))
    env.pod("p", "evil")
    rc, out = env.add()
    refused_without_trace(env, rc, out, 7, f"default/evil:{field}")
    assert "node's own multiplex config" in out["details"]
    for name in ("owned.log", "other-state", "db"):
        assert not (env.root / name).exists()


def test_node_fields_in_a_pods_cni_args_are_refused(env):
    # cni-args reach every plugin of the attachment as args.cni
    env.nad("blue", env.fake())
    env.pod("p", [{"name": "blue", "cni-args": {"ipam": {"dataDir": str(env.root / "db")}}}])
    rc, out = env.add()
    refused_without_trace(env, rc, out, 7, f"{ANN}[0]['cni-args'].ipam.dataDir")


def test_cluster_network_nad_is_checked_too(env):
    env.nad("podnet", env.fake(binDir=env.evil_dir))
    env.pod("p", "")
    rc, out = env.add()
    refused_without_trace(env, rc, out, 7, "default/podnet:$.binDir")


def test_the_admin_config_may_set_node_fields(env):
    # the same fields in the node's own config (an inline delegate) are the admin's to set
    rc, out = env.add(delegates=[env.fake(name="side", logFile=str(env.root / "side.log"))])
    assert rc == 0, out
    assert [c["stdin"]["name"] for c in env.calls()] == ["default.podnet", "side"]


# ---- self-reference -----------------------------------------------------------------------------

def node_conflist(env) -> str:
    path = env.root / "net.d" / "00-multiplex.conflist"
    path.write_text(json.dumps({"cniVersion": "1.1.0", "name": "multiplex",
                                "plugins": [{"type": "multiplex", "clusterNetwork": "multiplex"}]}))
    return str(path)


def test_empty_config_nad_named_like_the_node_conflist_is_not_found(env):
    node_conflist(env)
    env.nad("multiplex", "")
    env.pod("p", "multiplex")
    rc, out = env.add()
    assert rc == 1 and out["code"] == 107, out
    assert "multiplex configs are never used" in out["msg"]
    assert env.calls() == [] and env.cache_files() == []


def test_cluster_network_by_name_never_resolves_to_a_multiplex_config(env):
    node_conflist(env)
    os.remove(env.root / "nads" / "default-podnet.json")
    env.pod("p", "")
    rc, out = env.add(clusterNetwork="multiplex")
    assert rc == 1 and out["code"] == 107, out


def test_cluster_network_file_holding_a_multiplex_config_is_refused(env):
    path = node_conflist(env)
    rc, out = env.add(clusterNetwork=path)
    assert rc == 1 and out["code"] == 7 and "field: clusterNetwork" in out["details"], out


# ---- opt-in requests ----------------------------------------------------------------------------

@pytest.mark.parametrize("entry,field", [
    ({"ips": ["198.18.1.7/24"]}, "networks[0].ips"),
    ({"mac": "02:00:00:00:00:07"}, "networks[0].mac"),
    ({"cni-args": {"ips": ["198.18.1.7/24"]}}, "networks[0]['cni-args'].ips"),
    ({"cni-args": {"mac": "02:00:00:00:00:07"}}, "networks[0]['cni-args'].mac"),
])
def test_ips_and_mac_without_the_nads_opt_in_are_code_2(env, entry, field):
    env.nad("blue", env.fake(capabilities={"ips": False}))
    env.pod("p", [dict({"name": "blue"}, **entry)])
    rc, out = env.add()
    assert rc == 1 and out["code"] == 2, out
    assert f"field: {ANN}[0]" in out["details"] and field.split("[0]")[1] in out["details"]
    assert '"capabilities"' in out["details"]
    assert env.calls() == [] and env.cache_files() == []


def test_ips_and_mac_with_the_opt_in_reach_the_delegate(env):
    env.nad("blue", {"name": "blue", "plugins": [env.fake(), env.fake(capabilities={"ips": True, "mac": True})]})
    env.pod("p", [{"name": "blue", "ips": ["198.18.1.7/24"], "mac": "02:00:00:00:00:07",
                   "cni-args": {"ips": ["198.18.1.7/24"]}}])
    rc, out = env.add()
    assert rc == 0, out
    second = [c["stdin"] for c in env.calls()][2]
    assert second["runtimeConfig"] == {"ips": ["198.18.1.7/24"], "mac": "02:00:00:00:00:07"}
    assert second["args"]["cni"] == {"ips": ["198.18.1.7/24"]}


def select_only(env, pod_ns: str = "default", source=None, **extra):
    from multiplex.meta.sources import LocalSource

    conf = MultiplexConfig.from_dict(env.config(**extra))
    req = Request(command="ADD", container_id="c1", netns="/var/run/netns/x", ifname="eth0",
                  args={"K8S_POD_NAMESPACE": pod_ns, "K8S_POD_NAME": "p"}, config=conf.raw)
    return select(conf, req, source or LocalSource(conf.nad_dir, conf.pod_dir), authorize=authorize)


def test_a_built_in_delegates_own_capabilities_do_not_count_as_the_nads_opt_in(env):
    # multiplex-bridge declares ips and mac itself; the NAD did not opt in
    env.nad("blue", {"type": "multiplex-bridge", "ipam": {"type": "multiplex-ipam",
                                                           "ranges": [[{"subnet": "198.18.1.0/24"}]]}})
    env.pod("p", [{"name": "blue", "ips": ["198.18.1.7/24"]}])
    with pytest.raises(CNIError) as e:
        select_only(env)
    assert e.value.code == 2 and f"field: {ANN}[0].ips" in e.value.details


# ---- bounds -------------------------------------------------------------------------------------

class CountingSource:
    def __init__(self, inner):
        self.inner, self.gets = inner, []

    def get_nad(self, ns, name):
        self.gets.append((ns, name))
        return self.inner.get_nad(ns, name)

    def get_pod(self, ns, name, uid=""):
        return self.inner.get_pod(ns, name, uid)


def test_more_attachments_than_max_attachments_is_code_7_before_any_lookup(env):
    from multiplex.meta.sources import LocalSource

    env.nad("blue", env.fake())
    env.pod("p", ", ".join(f"blue@b{n}" for n in range(40)))
    src = CountingSource(LocalSource(str(env.root / "nads"), str(env.root / "pods")))
    with pytest.raises(CNIError) as e:
        select_only(env, source=src)
    assert e.value.code == 7 and f"field: {ANN}" in e.value.details and "32" in e.value.details
    assert src.gets == [("default", "podnet")]      # the cluster network only: no NAD per entry
    # a smaller bound from the node's config
    env.pod("p", "blue@b1, blue@b2, blue@b3")
    with pytest.raises(CNIError) as e:
        select_only(env, maxAttachments=3)
    assert e.value.code == 7 and "at most 3" in e.value.details
    assert len(select_only(env, maxAttachments=4)) == 4


def test_one_lookup_per_distinct_nad_in_one_call(env):
    from multiplex.meta.sources import LocalSource

    env.nad("blue", env.fake())
    env.nad("green", env.fake())
    env.pod("p", "blue@b1, blue@b2, green, default/blue@b3, green@g2")
    src = CountingSource(LocalSource(str(env.root / "nads"), str(env.root / "pods")))
    assert len(select_only(env, source=src)) == 6
    assert sorted(src.gets) == [("default", "blue"), ("default", "green"), ("default", "podnet")]


def test_an_annotation_larger_than_64_kib_is_code_7(env):
    env.pod("p", json.dumps([{"name": "blue", "cni-args": {"pad": "x" * 70000}}]))
    rc, out = env.add()
    assert rc == 1 and out["code"] == 7 and f"field: {ANN}" in out["details"], out


# ---- isolation, identity, names -----------------------------------------------------------------

def test_namespace_isolation_is_on_by_default_and_global_namespaces_open_it(env):
    env.nad("blue", env.fake(), namespace="tenant-a")
    env.pod("p", "tenant-a/blue", namespace="tenant-b")
    rc, out = env.add(namespace="tenant-b")
    assert rc == 1 and out["code"] == 106 and "tenant-a/blue" in out["msg"], out
    assert env.calls() == []
    atts = select_only(env, pod_ns="tenant-b", globalNamespaces=["tenant-a"])
    assert [a.network for a in atts] == ["podnet", "tenant-a/blue"]
    rc, out = env.add(namespace="tenant-b", namespaceIsolation=False)
    assert rc == 0, out


def test_default_networks_are_the_admins_choice_and_not_subject_to_isolation(env):
    env.nad("blue", env.fake())                      # in multusNamespace (default)
    env.pod("p", "", namespace="tenant-b")
    rc, out = env.add(namespace="tenant-b", defaultNetworks=["blue"])
    assert rc == 0, out
    assert [c["stdin"]["name"] for c in env.calls()] == ["default.podnet", "default.blue"]


def test_nad_sourced_attachments_carry_their_namespaced_identity(env):
    env.nad("blue", env.fake(), namespace="tenant-a")
    env.nad("blue", env.fake(), namespace="tenant-b")
    env.pod("p", "blue, tenant-a/blue@a0", namespace="tenant-a")
    atts = select_only(env, pod_ns="tenant-a", globalNamespaces=["tenant-b"],
                       delegates=[env.fake(name="side")], defaultNetworks=["tenant-b/blue@d0"])
    assert [(a.network, a.config_name) for a in atts] == [
        ("podnet", identity_name("default", "podnet")), ("side", ""), ("tenant-b/blue", "tenant-b.blue"),
        ("tenant-a/blue", "tenant-a.blue"), ("tenant-a/blue", "tenant-a.blue")]


@pytest.mark.parametrize("key", ["delegates", "clusterNetwork"])
def test_inline_config_without_a_name_is_code_7(env, key):
    value = [env.fake()] if key == "delegates" else env.fake()
    rc, out = env.add(**{key: value})
    where = "$.delegates[0]" if key == "delegates" else "$.clusterNetwork"
    assert rc == 1 and out["code"] == 7 and f"field: {where}.name" in out["details"], out
    assert env.calls() == []


@pytest.mark.parametrize("entry,field", [
    ({"name": "blue\n"}, "name"), ({"name": "blue", "namespace": "default\n"}, "namespace"),
])
def test_a_trailing_newline_is_not_a_valid_name(env, entry, field):
    env.nad("blue", env.fake())
    env.pod("p", [entry])
    rc, out = env.add()
    assert rc == 1 and out["code"] == 7 and f"field: {ANN}[0].{field}" in out["details"], out


def test_a_network_name_with_a_trailing_newline_is_refused_by_the_conflist_parser():
    from multiplex.cni.conflist import parse

    with pytest.raises(CNIError) as e:
        parse({"cniVersion": "1.1.0", "name": "blue\n", "type": "fake-a"})
    assert e.value.code == 7 and "field: $.name" in e.value.details
