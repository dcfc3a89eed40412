"""Properties of the parsers: every input gives a value or a CNIError with a spec code (naming the
field for codes 4, 6, 7), never another exception. Configs come from the project's JSON schemas
(hypothesis-jsonschema) and from mutations of them; annotations, CNI_ARGS and environments from
text strategies. Pure functions: nothing here touches the node."""
from __future__ import annotations

import json
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from multiplex.cni.errors import CNIError
from tests.property import strategies as S
from tests.property.conftest import check_cni_error

# No shrinking: a failing example is reported as generated (they are small: deep and huge values
# print as placeholders), and a failure never costs minutes of re-running slow inputs.
PROFILE = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                   phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])


def outcome(fn: Callable[[], Any], where: str) -> Any:
    """fn()'s value, or None after checking the CNIError it raised; any other exception fails."""
    try:
        return fn()
    except CNIError as e:
        check_cni_error(e, where)
        return None


# ---- the multiplex config ------------------------------------------------------------------------
@PROFILE
@given(S.schema_strategy("multiplex"))
def test_multiplex_config_valid_under_its_schema_is_accepted(conf):
    from multiplex.meta.config import MultiplexConfig

    S.count("multiplex-config-valid")
    got = outcome(lambda: MultiplexConfig.from_dict(conf), "MultiplexConfig.from_dict")
    assert got is not None, f"a config valid under schemas/multiplex.json was refused: {conf}"


@PROFILE
@given(S.schema_strategy("multiplex").flatmap(S.mutated), st.booleans())
@example({"cniVersion": "1.1.0", "name": "x", "type": "multiplex", "delegates": S.DEEP_MARK}, True)
@example({"cniVersion": "1.1.0", "name": "x", "type": "multiplex", "readinessTimeout": "soon"}, False)
@example({"cniVersion": "1.1.0", "name": "x", "type": "multiplex", "logFile": 7}, False)
def test_multiplex_config_mutated_is_a_config_or_code_7(conf, validate):
    from multiplex.meta.config import MultiplexConfig

    if not validate:  # DEL and GC: Request.from_env has checked these three before
        assume(all(isinstance(conf.get(k), str) and conf.get(k) for k in ("cniVersion", "name", "type")))
    S.count("multiplex-config-mutated")
    data = S.dumps(conf)

    def parse():
        doc = json.loads(data)   # RecursionError for a deep one: what the runtime's stdin gives
        return MultiplexConfig.from_dict(doc, validate=validate)

    try:
        outcome(parse, f"MultiplexConfig.from_dict(validate={validate})")
    except RecursionError:
        assert S.has_deep(conf)  # the stdin bound is Request.from_env's (tested there)


# ---- the bridge and IPAM configs -------------------------------------------------------------------
@PROFILE
@given(S.schema_strategy("bridge").flatmap(lambda c: st.one_of(st.just(c), S.mutated(c))))
def test_bridge_config_is_accepted_or_refused_with_code_7(conf):
    from multiplex.cni.registry import builtin

    assume(not S.has_deep(conf))
    S.count("bridge-config")
    conf = S.materialize(conf)
    bridge = builtin("multiplex-bridge")

    outcome(lambda: bridge.validate(conf), "multiplex-bridge validate")
    if not S.schema_errors("bridge", conf):
        from delegates.bridge import BridgeConfig

        outcome(lambda: BridgeConfig.parse(conf), "BridgeConfig.parse")


def _network(ipam: Any) -> dict:
    return {"cniVersion": "1.1.0", "name": "prop", "type": "multiplex-bridge", "ipam": ipam}


@PROFILE
@given(S.schema_strategy("ipam").flatmap(lambda c: st.one_of(st.just(c), S.mutated(c))), st.booleans())
def test_ipam_config_parses_or_is_refused_with_code_7(ipam, check_schema):
    from multiplex.ipam import config

    assume(not S.has_deep(ipam))
    S.count("ipam-config")
    ipam = S.materialize(ipam)
    outcome(lambda: config.parse(_network(ipam), check_schema=check_schema),
            f"ipam config.parse(check_schema={check_schema})")
    outcome(lambda: config.store_location(_network(ipam)), "ipam config.store_location")


ranges = st.lists(st.lists(st.fixed_dictionaries(
    {"subnet": st.sampled_from(["198.18.7.0/24", "198.18.7.0/25", "198.18.7.0/31", "fd00:7::/64", "fd00:7::/127",
                                "198.18.7.1/24", "0.0.0.0/0", "::/0", "198.18.7.0", "x"])},
    optional={"rangeStart": st.sampled_from(["198.18.7.10", "198.18.7.0", "198.18.7.255", "fd00:7::5", "1.2.3.4", ""]),
              "rangeEnd": st.sampled_from(["198.18.7.20", "198.18.7.9", "fd00:7::ffff", "198.18.8.1"]),
              "gateway": st.sampled_from(["198.18.7.1", "fd00:7::1", "198.18.9.1", "zz"])}),
    min_size=1, max_size=3), min_size=1, max_size=3)


@PROFILE
@given(ranges, st.lists(st.sampled_from(["198.18.7.0/28", "198.18.7.5", "fd00:7::/120", "nope", "198.18.7.0/33"]),
                        max_size=3))
def test_ipam_ranges_semantics_are_checked_with_code_7(range_sets, exclude):
    """Plausible but wrong ranges (host bits set, start after end, gateway outside, families mixed,
    overlaps): a parsed config or a code 7 naming the field."""
    from multiplex.ipam import config

    S.count("ipam-ranges")
    outcome(lambda: config.parse(_network({"type": "multiplex-ipam", "ranges": range_sets, "exclude": exclude})),
            "ipam config.parse(ranges)")


# ---- NADs ------------------------------------------------------------------------------------------
nad_config = (S.json_values.map(json.dumps) | st.text(max_size=40) | S.json_scalars
              | S.schema_strategy("bridge").map(json.dumps))
# A NAD reached by a lookup has the metadata it was found by (a name, maybe a namespace); the rest
# is whatever its writer put in a file of nadDir (the API server checks spec.config is a string).
nads = st.fixed_dictionaries({"metadata": st.fixed_dictionaries({"name": S.dns_label}, optional={"namespace": S.dns_label})},
                             optional={
    "spec": st.fixed_dictionaries({}, optional={"config": nad_config}) | S.json_scalars | S.json_values,
    "apiVersion": st.just("k8s.cni.cncf.io/v1"), "kind": st.just("NetworkAttachmentDefinition")})


@PROFILE
@given(nads)
def test_nad_netconf_gives_a_config_or_a_cni_error(tmp_path_factory, nad):
    """A NAD as a file in nadDir or from the API may hold anything: a config dict or a CNI error."""
    from multiplex.meta.selection import nad_netconf

    S.count("nad")
    conf_dir = str(tmp_path_factory.getbasetemp() / "empty-confdir")
    got = outcome(lambda: nad_netconf(nad, conf_dir), "selection.nad_netconf")
    assert got is None or isinstance(got, dict)


# ---- the pod annotation ----------------------------------------------------------------------------
annotation_json = S.schema_strategy("annotation").flatmap(lambda a: st.one_of(st.just(a), S.mutated(a, protect=())))


@PROFILE
@given(S.annotation_text | annotation_json, S.dns_label | st.text(max_size=6),
       st.lists(S.ifname_like, max_size=2))
@example([S.DEEP_MARK], "default", [])
@example([{"name": S.HUGE_MARK.format(char="a", size=S.HUGE)}], "default", [])
@example(", ".join(["blue"] * 5000), "default", [])
def test_annotation_gives_selections_or_code_7(value, namespace, reserved):
    """Either form of the annotation (JSON ones as the pod's author wrote them, placeholders
    expanded: nested thousands deep, megabytes long)."""
    from multiplex.meta.annotation import parse_networks

    S.count("annotation")
    if not isinstance(value, str):
        value = S.dumps(value).decode("utf-8", "surrogatepass")
    got = outcome(lambda: parse_networks(value, namespace, reserved_interfaces=reserved), "parse_networks")
    assert got is None or isinstance(got, list)


# ---- CNI_ARGS and the environment ------------------------------------------------------------------
@PROFILE
@given(S.cni_args_text)
@example("K=V;" * 100000)
@example("IgnoreUnknown=1;K8S_POD_NAME=" + "a" * S.HUGE)
def test_cni_args_parse_or_code_4(raw):
    from multiplex.cni.request import parse_cni_args

    S.count("cni-args")
    got = outcome(lambda: parse_cni_args(raw), "parse_cni_args")
    assert got is None or all(isinstance(k, str) and isinstance(v, str) for k, v in got.items())


def _env(command, cid, netns, ifname, args, path) -> dict:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_ARGS": args, "CNI_PATH": path}
    return {k: v for k, v in env.items() if v is not None}


opt = lambda s: st.none() | s  # noqa: E731
envs = st.builds(_env, opt(st.sampled_from(S.COMMANDS) | S.env_text),
                 opt(st.just("cid-1") | S.env_text | st.sampled_from(["a" * 64, "a" * 240, "a" * 300, "é" * 9])),
                 opt(st.just("/var/run/netns/x") | S.env_text), opt(st.just("eth0") | S.ifname_like),
                 opt(S.cni_args_text), opt(S.env_text))
stdins = (S.schema_strategy("bridge") | st.binary(max_size=64)
          | S.schema_strategy("bridge").flatmap(S.mutated)
          | st.sampled_from([b"", b"null", b"[]", b"{}", b'{"cniVersion": 1}', b"\xff\xfe",
                             b"[" * S.DEEP + b"]" * S.DEEP, b'{"a":' * S.DEEP + b"1" + b"}" * S.DEEP]))


ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cid-1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0"}


@PROFILE
@given(envs, stdins)
@example(ADD_ENV, b"[" * S.DEEP + b"]" * S.DEEP)
@example(dict(ADD_ENV, CNI_COMMAND="DEL"), b'{"a":' * S.DEEP + b"1" + b"}" * S.DEEP)
@example(ADD_ENV, {"cniVersion": "1.1.0", "name": "x", "type": "multiplex-bridge", "ipam": {"type": S.HUGE_MARK.format(char="t", size=10 * S.HUGE)}})
@example(dict(ADD_ENV, CNI_CONTAINERID="a" * 300), b'{"cniVersion": "1.1.0", "name": "x", "type": "multiplex-bridge"}')
@example(dict(ADD_ENV, CNI_IFNAME="\u00e9" * 9), b'{"cniVersion": "1.1.0", "name": "x", "type": "multiplex-bridge"}')
def test_request_from_env_gives_a_request_or_a_cni_error(env, stdin):
    from multiplex.cni.request import Request

    S.count("request-from-env")
    if not isinstance(stdin, bytes):
        stdin = S.dumps(stdin)
    got = outcome(lambda: Request.from_env(env, stdin), "Request.from_env")
    if got is not None:
        assert got.command in S.COMMANDS


# ---- GC's keep-list ---------------------------------------------------------------------------------
pairs = st.fixed_dictionaries({"containerID": st.text(min_size=1, max_size=10), "ifname": st.text(min_size=1, max_size=6)})
keep_values = (st.lists(pairs, max_size=4) | S.json_values
               | st.lists(st.fixed_dictionaries({"containerId": st.text(max_size=4), "ifName": st.text(max_size=4)}), max_size=2))


@PROFILE
@given(st.fixed_dictionaries({}, optional={"cni.dev/valid-attachments": keep_values,
                                           "multiplex.dev/valid-containers": st.lists(st.text(max_size=6), max_size=3)
                                           | S.json_values}))
def test_keep_list_is_read_exactly_or_refused_with_code_7(conf):
    """A keep-list that cannot be read is refused (never read as "nothing is valid"); one that can
    is kept exactly: every listed pair and container, and it renders back to itself."""
    from multiplex.cni.valid import VALID_ATTACHMENTS, VALID_CONTAINERS, parse_keep

    S.count("keep-list")
    keep = outcome(lambda: parse_keep(conf), "parse_keep")
    if keep is None:
        return
    for item in conf[VALID_ATTACHMENTS]:
        assert keep.keeps(item["containerID"], item["ifname"])
    for cid in conf.get(VALID_CONTAINERS) or []:
        assert keep.keeps(cid, "any-interface")
    assert parse_keep(keep.to_config()) == keep
