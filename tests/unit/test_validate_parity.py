"""`multiplex validate` refuses exactly what ADD refuses, with the same code, message and field.

Every bad config of the test suite - the adversarial corpus' multiplex-config, plugin-config and
NAD cases (tests/adversarial/corpus.py), the bridge and IPAM bad-config lists of tests/unit - goes
through both: validate (multiplex.cli.validate.check_document, what `multiplex validate FILE`
prints) and an in-process ADD of the meta plugin (skel.run). A plugin config is tried three ways,
as the admin's file (ADD: the inline clusterNetwork), as an inline delegate of a multiplex config,
and as a NAD's spec.config (ADD: a pod selecting it). The ADD stops where it would first touch
the node (chain.add_list is replaced by a refusal of its own), so no root and no netns are needed,
and a config ADD accepts shows up as that refusal: validate must accept it too.

What only the node can answer (NODE_FACTS: a state dir that is a file, a readiness file that never
appears, a kubeconfig or a network name that is not there) validate leaves to ADD: for those ADD
refuses and validate says ok.
"""
from __future__ import annotations

import copy
import io
import json
import os
import re
from typing import Any, Optional

import pytest

from multiplex.cli import validate
from multiplex.cni import skel
from multiplex.cni.errors import CNIError
from multiplex.meta import orchestrator
from tests.adversarial import corpus
from tests.adversarial.corpus import CASES, Case, Ctx, stdin_for
from tests.netns.mpxlab import bridge_conf, nad
from tests.unit import test_bridge_config, test_ipam_config

REACHED = "parity: ADD reached the first plugin call"

#: case id -> why ADD's refusal is a fact of the node, not of the file (validate says ok)
NODE_FACTS = {
    "mpx-stateDir-a-regular-file": "the state dir path is a regular file on this node",
    "mpx-stateDir-under-a-regular-file": "the state dir path is under a regular file on this node",
    "mpx-readiness-file-never-appears": "the readiness file never appears on this node",
    "mpx-kubeconfig-missing-file": "the kubeconfig file is missing on this node",
    "mpx-clusterNetwork-unknown": "no such network on this node",
    "mpx-defaultNetworks-unknown": "no such NAD in the cluster",
    "nad-empty-config-named-like-the-node-conflist": "an empty spec.config names a file in the node's confDir",
}

#: case id -> why validate reads the file as another plugin's config: its `type` is not multiplex,
#: so the runtime would hand it to that plugin, while the corpus hands it to multiplex. Both refuse
#: it (code 7); the words are that plugin's.
OTHER_PLUGIN = {
    "conf-type-of-another-plugin": "type multiplex-bridge: checked as a bridge config",
    "conf-type-a-path": "type ../multiplex: refused as a type that is a path",
}


# ---- the two paths -------------------------------------------------------------------------------

class Lab:
    """A corpus Ctx with the corpus' good NADs (podnet, blue, green), and ADD in-process."""

    def __init__(self, root: str, monkeypatch):
        for d in ("nads", "pods", "state", "outside"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        self.ctx = Ctx(root=root, node="", pod_ns="", cid="parity-1", pod="p", idx=1)
        self.ctx.add_nad("podnet", bridge_conf("mpxc-pod", corpus.POD_NET, isGateway=True))
        self.ctx.add_nad("blue", bridge_conf("mpxc-blue", corpus.BLUE_NET))
        self.ctx.add_nad("green", bridge_conf("mpxc-green", corpus.GREEN_NET))
        from multiplex.cni import chain

        def reached(*_a, **_k):
            raise CNIError(999, REACHED)
        monkeypatch.setattr(chain, "add_list", reached)

    def add(self, stdin: bytes, networks: Any = None) -> Optional[dict]:
        """ADD's refusal (code, msg, details), or None when ADD got as far as running a plugin."""
        self.ctx.add_pod(networks)
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": self.ctx.cid, "CNI_NETNS": "/var/run/netns/mpx-parity-none",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={self.ctx.pod}"}
        out = io.StringIO()
        rc = skel.run(orchestrator.plugin, env, stdin, out)
        res = json.loads(out.getvalue())
        assert rc == 1, res          # ADD never succeeds here: chain.add_list refuses
        return None if res.get("msg") == REACHED else res


def field_of(details: str) -> str:
    return details.split(";")[0].strip()


def last_key(details: str) -> str:
    """The field's own key (`name` of `field: cnet:$.name`)."""
    return re.findall(r"[A-Za-z_][\w-]*", field_of(details))[-1]


def assert_same(add: Optional[dict], problems: list[CNIError], what: str, key_only: bool = False) -> None:
    """Both accept, or both refuse with the same code, message and field (`key_only`: the same
    key, where validate reads a file as the runtime's stdin and ADD as an inline config, whose
    paths are spelt from different roots)."""
    if add is None:
        assert problems == [], f"{what}: ADD accepts it, validate says {[validate.describe(p) for p in problems]}"
        return
    assert problems, f"{what}: ADD refuses it ({add}), validate says ok"
    first = problems[0]
    if key_only:
        assert (first.code, first.msg, last_key(first.details)) == (add["code"], add["msg"], last_key(add["details"])), \
            f"{what}:\n  ADD:      {add}\n  validate: {validate.describe(first)}"
        return
    assert (first.code, first.msg, field_of(first.details)) == (add["code"], add["msg"], field_of(add.get("details", ""))), \
        f"{what}:\n  ADD:      {add}\n  validate: {validate.describe(first)}"


# ---- the bad configs ------------------------------------------------------------------------------

def config_cases(plugins: tuple) -> list[Case]:
    """Corpus ADD cases that change only the config (no environment, no pod annotation)."""
    return [c for c in CASES if c.plugin in plugins and c.command == "ADD" and not c.env and c.networks is None]


MPX_CASES = config_cases(("multiplex",))
#: plugin configs that are JSON objects (a delegate or a NAD holds an object, not stdin bytes)
PLUGIN_CASES = [c for c in config_cases(("multiplex-bridge", "multiplex-ipam"))
                if not isinstance(c.conf, bytes) and c.id.startswith(("br-", "ipam-")) and "stdin" not in c.id]
NAD_CASES = [c for c in corpus._nad_cases() if c.networks is not None]


def _unit_plugin_configs() -> list[tuple[str, dict]]:
    out = []
    mark = test_bridge_config.test_bad_config_is_code_7_naming_the_field.pytestmark[0]
    for fields, path, _ in mark.args[1]:
        out.append((f"bridge {path} {json.dumps(fields)[:40]}", test_bridge_config.conf(**fields)))
    mark = test_bridge_config.test_mtu_under_1280_with_an_ipv6_range_is_code_7_naming_mtu.pytestmark[0]
    for ipam in mark.args[1]:
        out.append((f"bridge mtu 1200 {json.dumps(ipam)[:40]}", test_bridge_config.conf(mtu=1200, ipam=ipam)))
    for what, ipam, _, _ in test_ipam_config.BAD:
        out.append((f"ipam {what}", test_ipam_config.netconf(ipam)))
    return out


UNIT_CONFIGS = _unit_plugin_configs()


def load(stdin: bytes) -> Any:
    return json.loads(stdin)


# ---- the tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", MPX_CASES, ids=[c.id for c in MPX_CASES])
def test_a_multiplex_config(tmp_path, monkeypatch, case):
    lab = Lab(str(tmp_path), monkeypatch)
    if case.setup:
        case.setup(lab.ctx)
    stdin = stdin_for(case, lab.ctx)
    add = lab.add(stdin)
    problems = validate.check_json(stdin)   # what `multiplex validate FILE` runs on a JSON file
    if case.id in NODE_FACTS:
        assert add is not None and problems == [], (case.id, add, problems)
        return
    if case.id in OTHER_PLUGIN:
        assert add is not None and add["code"] == 7 and [p.code for p in problems] == [7], (case.id, add, problems)
        return
    assert_same(add, problems, case.id)


def _plugin_configs() -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [(c.id, c) for c in PLUGIN_CASES]
    items += UNIT_CONFIGS
    return items


PLUGIN_CONFIGS = _plugin_configs()


@pytest.mark.parametrize("what,source", PLUGIN_CONFIGS, ids=[w for w, _ in PLUGIN_CONFIGS])
def test_a_plugin_config_as_a_file_a_delegate_and_a_nad(tmp_path, monkeypatch, what, source):
    lab = Lab(str(tmp_path), monkeypatch)
    if isinstance(source, Case):
        if source.setup:
            source.setup(lab.ctx)
        conf = load(stdin_for(source, lab.ctx))
    else:
        conf = copy.deepcopy(source)
    base = lab.ctx.config()
    # the admin's file: ADD runs it as the inline cluster network
    add = lab.add(json.dumps(dict(base, clusterNetwork=conf)).encode())
    as_file = validate.check_json(json.dumps(conf).encode())
    if "name" in conf:
        assert_same(add, as_file, f"{what} (file)", key_only=True)
    else:  # a file without a name is refused as stdin is (field: name), an inline one by the schema
        assert add is not None and [(p.code, field_of(p.details)) for p in as_file] == [(7, "field: name")], as_file
    # an inline delegate of a multiplex config
    mpx = dict(base, delegates=[conf])
    assert_same(lab.add(json.dumps(mpx).encode()), validate.check_document(copy.deepcopy(mpx)), f"{what} (delegate)")
    # a NAD's spec.config, selected by a pod
    obj = nad("parity", conf, "default")
    lab.ctx.add_nad("parity", obj)
    assert_same(lab.add(json.dumps(base).encode(), networks="parity"), validate.check_document(copy.deepcopy(obj)),
                f"{what} (NAD)")


@pytest.mark.parametrize("case", NAD_CASES, ids=[c.id for c in NAD_CASES])
def test_a_nad(tmp_path, monkeypatch, case):
    lab = Lab(str(tmp_path), monkeypatch)
    before = set(os.listdir(lab.ctx.nad_dir))
    if case.setup:
        case.setup(lab.ctx)
    stdin = stdin_for(case, lab.ctx)
    add = lab.add(stdin, networks=case.networks)
    problems: list[CNIError] = []
    for name in sorted(set(os.listdir(lab.ctx.nad_dir)) - before):
        with open(os.path.join(lab.ctx.nad_dir, name)) as f:
            problems += validate.check_document(json.load(f))
    if case.id in NODE_FACTS:
        assert add is not None and problems == [], (case.id, add, problems)
        return
    assert_same(add, problems, case.id)


@pytest.mark.parametrize("config, field", [
    # the example: a delegate with `vlan: 5000` and subnet 198.18.0.0/33, `ok` before, code 7 from ADD
    ({"delegates": [dict(bridge_conf("mpxc-v", "198.18.0.0/33", vlan=5000), cniVersion="1.1.0", name="vlan5000")]},
     "field: vlan5000:$.vlan"),
    # a refusal is known by its hook's name, so ADD refuses a config naming one twice: so does validate
    ({"authorizeHooks": [{"name": "corp", "path": "/bin/true"}, {"name": "corp", "path": "/bin/false"}]},
     "authorizeHooks[1].name"),
], ids=["issue-example-vlan-5000", "two-authorize-hooks-of-one-name"])
def test_a_config_add_refuses_is_refused_by_validate_with_the_same_words(tmp_path, monkeypatch, config, field):
    lab = Lab(str(tmp_path), monkeypatch)
    mpx = lab.ctx.config(**config)
    path = tmp_path / "multiplex.conf"
    path.write_text(json.dumps(mpx))
    lines = validate.validate_file(str(path))
    add = lab.add(json.dumps(mpx).encode())
    assert add is not None and add["code"] == 7
    assert lines == [f"code 7: {add['msg']} [{add['details']}]"]
    assert field in lines[0]


def test_the_corpus_and_the_unit_lists_are_all_here():
    assert len(MPX_CASES) >= 40 and len(PLUGIN_CASES) >= 40 and len(NAD_CASES) >= 20 and len(UNIT_CONFIGS) >= 50
