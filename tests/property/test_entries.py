"""Properties of the plugins' entry (`multiplex.cni.skel.run`, what a plugin binary runs) for every
built-in plugin and every command: generated configs (a valid base, mutated) and environments
(variables dropped, garbled, too long; CNI_NETNS missing, relative, a regular file, the plugin's
own namespace) give exit 0 with a result, or exit 1 with one JSON error whose code is the spec's
(or a documented one of ours, never 100), never a traceback. A config its schema refuses fails ADD
and CHECK. Nothing is left behind: no veth in the node, nothing in the pod, no lease.

Safety: the test thread enters a scratch node netns before each call (so do the processes it
forks), CNI_NETNS names a scratch pod netns, state, logs and the working directory are in tmp, and
CNI_PATH is an empty directory (no external plugin runs). An ADD that succeeds is DELed at once."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.property import strategies as S
from tests.property.conftest import Scratch, check_outcome, inside, lease_rows, link_kinds, link_names, run_entry

pytestmark = pytest.mark.root

PROFILE = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                   phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])
PLUGINS = ["multiplex", "multiplex-bridge", "multiplex-ipvlan", "multiplex-ipam"]
CID = "cid-prop"


def ipam_block(subnet: str) -> dict:
    return {"type": "multiplex-ipam", "ranges": [[{"subnet": subnet}]]}


def base_config(plugin: str, s: Scratch) -> dict:
    """A valid config of `plugin` whose every path is in the scratch tmp dir."""
    if plugin == "multiplex":
        return {"cniVersion": "1.1.0", "name": "mpx-prop", "type": "multiplex",
                "clusterNetwork": {"cniVersion": "1.1.0", "name": "podnet", "type": "multiplex-bridge",
                                   "bridge": "mpxprop0", "ipam": ipam_block("198.18.200.0/24")},
                "nadDir": s.path("nads"), "podDir": s.path("pods"), "confDir": s.path("conf"),
                "stateDir": s.path("state"), "logFile": s.path("multiplex.log"), "pluginTimeout": 5,
                "cni.dev/valid-attachments": []}
    if plugin == "multiplex-bridge":
        return {"cniVersion": "1.1.0", "name": "prop-br", "type": "multiplex-bridge", "bridge": "mpxprop1",
                "ipam": ipam_block("198.18.201.0/24"), "cni.dev/valid-attachments": []}
    if plugin == "multiplex-ipvlan":
        return {"cniVersion": "1.1.0", "name": "prop-ipvlan", "type": "multiplex-ipvlan", "master": "mpxnomaster",
                "ipam": ipam_block("198.18.202.0/24"), "cni.dev/valid-attachments": []}
    return {"cniVersion": "1.1.0", "name": "prop-ipam", "type": "multiplex-bridge",
            "ipam": ipam_block("198.18.203.0/24"), "cni.dev/valid-attachments": []}


def refused_by_schema(plugin: str, conf: Any) -> bool:
    """True when the plugin's schemas (and those of an inline cluster network) refuse `conf`."""
    if not isinstance(conf, dict):
        return True
    if plugin == "multiplex":
        if S.schema_errors("multiplex", conf):
            return True
        cn = conf.get("clusterNetwork")
        return isinstance(cn, dict) and cn.get("type") == "multiplex-bridge" and refused_by_schema("multiplex-bridge", cn)
    own = {"multiplex-bridge": "bridge", "multiplex-ipvlan": "ipvlan"}.get(plugin)
    if own and S.schema_errors(own, conf):
        return True
    ipam = conf.get("ipam")
    return not isinstance(ipam, dict) or (ipam.get("type") == "multiplex-ipam" and S.schema_errors("ipam", ipam))


def base_env(command: str, s: Scratch) -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": CID, "CNI_NETNS": s.pod_path, "CNI_IFNAME": "eth0",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=prop", "CNI_PATH": s.path("bin")}


def env_changes(s: Scratch) -> st.SearchStrategy:
    """One change to a runtime's environment, or none."""
    netns = st.sampled_from(["", "relative/ns", s.path("no-such-netns"), s.regular_file, s.path("state"),
                             "/proc/thread-self/ns/net"]) | S.env_text
    return st.one_of(
        st.just({}),
        st.fixed_dictionaries({"CNI_NETNS": netns}),
        st.fixed_dictionaries({"CNI_IFNAME": S.ifname_like | st.sampled_from(["é" * 9, "eth0" * 4, "lo", "."])}),
        st.fixed_dictionaries({"CNI_CONTAINERID": S.env_text | st.sampled_from(["a" * 240, "a" * 300, "../x", "-x"])}),
        st.fixed_dictionaries({"CNI_ARGS": S.cni_args_text}),
        st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"])
        .map(lambda k: {k: None}),
    )


def keep_lists() -> st.SearchStrategy:
    """`cni.dev/valid-attachments` as written right and wrong (misspelt keys, not a list, ...)."""
    good = st.lists(st.fixed_dictionaries({"containerID": st.just(CID) | st.text(max_size=8),
                                           "ifname": st.just("eth0") | st.text(max_size=8)}), max_size=3)
    bad = (S.json_scalars | st.lists(S.json_values, max_size=3)
           | st.just([{"containerId": CID, "ifName": "eth0"}]) | st.just("all"))
    return good | bad


def apply_env(env: dict, changes: dict) -> dict:
    out = dict(env)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def residue(s: Scratch) -> list[str]:
    """What generated calls left: links in the node other than bridges, links in the pod, leases."""
    found = []
    with inside(s.node):
        extra = {n for n in link_names() if n != "lo" and not n.startswith("mpxprop") and not n.startswith("mpxbr-")}
    if extra:
        found.append(f"links in the node: {sorted(extra)}")
    with inside(s.pod):
        pod = link_names() - {"lo"}
    if pod:
        found.append(f"links in the pod: {sorted(pod)}")
    rows = lease_rows(s.path("state"))
    if rows:
        found.append(f"leases: {rows}")
    return found


def call(plugin_name: str, env: dict, conf: Any, s: Scratch, where: str) -> tuple[int, Any]:
    from multiplex.cni.registry import builtin

    rc, out, err = run_entry(builtin(plugin_name), env, S.dumps(conf), s)
    return rc, check_outcome(rc, out, err, where)


def one_call(plugin: str, data, s: Scratch) -> None:
    command = data.draw(st.sampled_from(S.COMMANDS), label="command")
    base = base_config(plugin, s)
    if command == "GC":
        base["cni.dev/valid-attachments"] = data.draw(keep_lists(), label="keep-list")
    conf = data.draw(st.one_of(st.just(base), S.mutated(base)), label="config")
    env = apply_env(base_env(command, s), data.draw(env_changes(s), label="env changes"))
    S.count(f"entry {plugin}")
    where = f"{plugin} {command}"
    rc, doc = call(plugin, env, conf, s, where)
    if command in ("ADD", "CHECK") and refused_by_schema(plugin, S.loads_lenient(S.dumps(conf))):
        assert rc == 1, f"{where}: a config its schema refuses was accepted: {doc}"
    if command == "ADD" and rc == 0:
        rc_del, _ = call(plugin, dict(env, CNI_COMMAND="DEL"), conf, s, f"{plugin} DEL after ADD")
        assert rc_del == 0, f"{plugin}: DEL after a successful ADD failed"
    left = residue(s)
    assert not left, f"{where}: left behind {left}"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_entry_answers_every_generated_call_with_a_result_or_a_spec_error(plugin, scratch):
    @PROFILE
    @given(st.data())
    def prop(data):
        one_call(plugin, data, scratch)

    prop()


@PROFILE
@given(st.sampled_from(PLUGINS), st.sampled_from(S.COMMANDS[:-1]),
       st.binary(max_size=40) | st.sampled_from([b"", b"null", b"[]", b"\xff", b"{" * S.DEEP, b"[" * S.DEEP + b"]" * S.DEEP,
                                                 {"cniVersion": "1.1.0", "name": "x", "type": S.HUGE_MARK.format(char="t", size=S.HUGE)}]))
def test_entry_answers_undecodable_stdin_with_code_6_or_7(scratch, plugin, command, stdin):
    """stdin that is not JSON, not an object, nested too deep, or a config whose type is a megabyte."""
    from multiplex.cni.registry import builtin

    S.count("entry stdin")
    if not isinstance(stdin, bytes):
        stdin = S.dumps(stdin)
    rc, out, err = run_entry(builtin(plugin), base_env(command, scratch), stdin, scratch)
    doc = check_outcome(rc, out, err, f"{plugin} {command} stdin={stdin[:20]!r}")
    assert rc == 1 and doc["code"] in (6, 7), f"{plugin} {command}: {doc}"


#: A field of the node's multiplex config with a value of the wrong type: ADD refuses it (schema),
#: and the runtime then DELs with the same config; DEL and GC (which skip the schema) must still
#: answer in the protocol.
WRONG_FIELDS = [("readinessTimeout", "soon"), ("pluginTimeout", "x"), ("logFile", 7), ("logLevel", ["debug"]),
                ("stateDir", 7), ("delegates", "podnet"), ("delegates", [7]), ("clusterNetwork", 7),
                ("defaultNetworks", "a, b"), ("systemNamespaces", 5), ("nadDir", False), ("confDir", {}),
                ("multusNamespace", []), ("namespaceIsolation", "yes")]


@pytest.mark.parametrize("command", ["DEL", "GC", "STATUS"])
@pytest.mark.parametrize("field,value", WRONG_FIELDS, ids=[f"{f}={v!r}" for f, v in WRONG_FIELDS])
def test_multiplex_teardown_with_a_field_of_the_wrong_type_answers_in_the_protocol(scratch, command, field, value):
    from multiplex.cni.registry import builtin

    S.count("entry multiplex wrong field")
    conf = dict(base_config("multiplex", scratch), **{field: value})
    rc, out, err = run_entry(builtin("multiplex"), base_env(command, scratch), S.dumps(conf), scratch)
    check_outcome(rc, out, err, f"multiplex {command} with {field}={value!r}")
    assert not residue(scratch)


# ---- the meta plugin with generated NADs and annotations ----------------------------------------
NAD_NAMES = [("default", "blue"), ("default", "green"), ("tenant", "blue")]


def without_path_keys(doc: Any) -> Any:
    """`doc` without keys naming node paths (a NAD may not carry them; a test never lets one try)."""
    if isinstance(doc, dict):
        return {k: without_path_keys(v) for k, v in doc.items() if k not in S.PATH_KEYS}
    if isinstance(doc, list):
        return [without_path_keys(v) for v in doc]
    return doc


def good_bridge(n: int) -> dict:
    return {"cniVersion": "1.1.0", "type": "multiplex-bridge", "ipam": ipam_block(f"198.18.{210 + n}.0/24")}


def nad_configs(n: int) -> st.SearchStrategy:
    """What a NAD writer may put in spec.config: a good bridge config, one mutated, a schema-valid
    one with odd values, a conflist, any JSON, any text."""
    docs = st.one_of(st.just(good_bridge(n)), S.mutated(good_bridge(n)), S.schema_strategy("bridge"),
                     st.builds(lambda c: {"cniVersion": "1.1.0", "plugins": [c]}, S.mutated(good_bridge(n))),
                     S.json_values)
    return docs.map(without_path_keys).map(lambda d: S.dumps(d).decode("utf-8", "surrogatepass")) | st.text(max_size=20)


annotations = st.one_of(
    st.lists(st.sampled_from(["blue", "green", "tenant/blue", "default/green@net7", "blue@eth0", "missing",
                              "tenant/blue@x" * 3]), min_size=1, max_size=4).map(", ".join),
    st.lists(st.fixed_dictionaries({"name": st.sampled_from(["blue", "green"])}, optional={
        "namespace": st.sampled_from(["default", "tenant", "Bad_NS"]),
        "interface": S.ifname_like, "ips": st.lists(st.sampled_from(["198.18.210.9/24", "fd00::1/64", "x"]), max_size=2),
        "mac": st.sampled_from(["02:00:00:00:00:01", "01:00:5e:00:00:01", "zz"]),
        "default-route": st.lists(st.sampled_from(["198.18.210.1", "fd00::1", "nope"]), max_size=2),
        "cni-args": S.json_values}), min_size=1, max_size=3).map(lambda v: S.dumps(v).decode()),
    S.annotation_text)


def write_nads_and_pod(s: Scratch, configs: list[str], annotation: str) -> None:
    import json as _json
    import os

    for (ns, name), config in zip(NAD_NAMES, configs):
        nad = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": name, "namespace": ns}, "spec": {"config": config}}
        with open(os.path.join(s.path("nads"), f"{ns}-{name}.json"), "w", encoding="utf-8", errors="surrogatepass") as f:
            _json.dump(nad, f)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "prop", "namespace": "default", "uid": "uid-prop",
                                                           "annotations": {"k8s.v1.cni.cncf.io/networks": annotation}}}
    with open(os.path.join(s.path("pods"), "default-prop.json"), "w", encoding="utf-8", errors="surrogatepass") as f:
        _json.dump(pod, f)


def veths_left(s: Scratch) -> list[str]:
    """Host veths in the node and any link in the pod: what an attachment leaves (bridges stay)."""
    with inside(s.node):
        left = [f"node {n}" for n, kind in link_kinds().items() if kind == "veth"]
    with inside(s.pod):
        left += [f"pod {n}" for n in link_names() - {"lo"}]
    rows = lease_rows(s.path("state"))
    return left + ([f"leases {rows}"] if rows else [])


@PROFILE
@given(st.tuples(*(nad_configs(n) for n in range(len(NAD_NAMES)))), annotations, st.booleans())
def test_multiplex_add_with_generated_nads_and_annotation_answers_and_leaves_nothing(scratch, configs, annotation,
                                                                                      isolation):
    """NADs and annotations are written by tenants: whatever they hold, ADD answers with a result
    or a spec error and leaves nothing when it fails; an ADD that worked is DELed to nothing."""
    S.count("entry multiplex with generated NADs")
    write_nads_and_pod(scratch, list(configs), annotation)
    conf = dict(base_config("multiplex", scratch), namespaceIsolation=isolation)
    conf.pop("cni.dev/valid-attachments")
    env = base_env("ADD", scratch)
    rc, doc = call("multiplex", env, conf, scratch, f"multiplex ADD with NADs {configs} and annotation {annotation!r}")
    if rc == 0:
        rc_del, _ = call("multiplex", dict(env, CNI_COMMAND="DEL"), conf, scratch, "multiplex DEL after ADD")
        assert rc_del == 0
    left = veths_left(scratch)
    assert not left, f"ADD (exit {rc}, {doc}) left {left}"
