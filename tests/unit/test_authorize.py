"""Authorize hooks, without root: the meta plugin run in-process (skel) with fake delegates exec'd
from a CNI_PATH of the test's own, NAD/pod/namespace files, and hook executables the test writes.

What a user checks: the ADD's answer (code 106 naming the hook and its reason, or success), that no
delegate ran and no cache entry was written on a refusal, and what a hook was given on stdin.

- `nad-namespaces`: the NAD's `multiplex.dev/allowed-namespaces` (list) and
  `multiplex.dev/allowed-namespace-selector` (labels of namespaces) allow and deny; they narrow the
  admin's namespaceIsolation/globalNamespaces, never widen it; a malformed one is code 7.
- external hooks (`authorizeHooks`): allow, deny with a reason, timeout (deny, and allow when
  configured), the call's deadline, a crash, garbage, a missing executable, a hook whose children
  outlive it; the JSON it reads; only the admin may name one.
"""
from __future__ import annotations

import json
import stat
import time

import pytest

from multiplex.cni.errors import CNIError
from multiplex.cni.request import Request
from multiplex.meta.config import MultiplexConfig
from multiplex.meta.selection import select
from multiplex.policy import authorize
from multiplex.policy.selector import SelectorError, parse as parse_selector
from tests.unit.metaenv import ANN, MetaEnv

LIST = "multiplex.dev/allowed-namespaces"
SELECTOR = "multiplex.dev/allowed-namespace-selector"


class Env(MetaEnv):
    """MetaEnv with hooks/ for executables, and NADs of the fake delegate whose annotations say
    which namespaces may use them."""

    def __init__(self, root):
        super().__init__(root)
        (root / "hooks").mkdir()

    def nad(self, name: str, namespace: str = "default", annotations: dict | None = None) -> None:
        self.write_nad(name, json.dumps(dict({"cniVersion": "1.1.0"}, **self.fake())), namespace, annotations)

    def namespace(self, name: str, **labels: str) -> None:
        doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        (self.root / "nads" / f"ns-{name}.json").write_text(json.dumps(doc))

    def hook(self, name: str, body: str) -> str:
        """An executable shell script `name` in hooks/; its path."""
        path = self.root / "hooks" / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    e.nad("podnet")
    return e


def refused(env, rc, out, hook: str, *reason_parts: str) -> None:
    """Code 106 naming `hook` and a reason containing `reason_parts`; no delegate ran, no cache."""
    assert rc == 1 and out["code"] == 106, out
    assert f"hook: {hook}" in out["details"], out
    for part in reason_parts:
        assert part in out["msg"] and part in out["details"], (part, out)
    assert env.calls() == [], "a delegate ran although the attachment was refused"
    assert env.cache_files() == []


def allowed(env, rc, out, networks: int = 2) -> None:
    assert rc == 0, out
    assert len([c for c in env.calls() if c["env"]["CNI_COMMAND"] == "ADD"]) == networks


# ---- label selectors ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,labels,want", [
    ("team=red", {"team": "red"}, True),
    ("team==red", {"team": "blue"}, False),
    ("team!=red", {}, True),                       # as Kubernetes: a missing key is "not red"
    ("team!=red", {"team": "red"}, False),
    ("env in (prod, staging)", {"env": "staging"}, True),
    ("env notin (prod,staging)", {"env": "prod"}, False),
    ("env notin (prod)", {}, True),
    ("team", {"team": ""}, True),
    ("!quarantined", {"quarantined": "yes"}, False),
    ("team=red, env in (prod,dev), !quarantined", {"team": "red", "env": "dev"}, True),
    ("example.com/tier=gold", {"example.com/tier": "gold"}, True),
])
def test_label_selectors_match_as_kubernetes_does(text, labels, want):
    assert parse_selector(text).matches(labels) is want


@pytest.mark.parametrize("text", ["", " ", "team=red,", "a in (b", "a in ()", "=x", "a=b c", "x=-y", "a) in (b"])
def test_a_selector_that_does_not_parse_says_so(text):
    with pytest.raises(SelectorError):
        parse_selector(text)


# ---- nad-namespaces -------------------------------------------------------------------------------

def test_allowed_namespaces_list_allows_the_listed_and_refuses_the_others(env):
    env.nad("blue", "infra", {LIST: "team-a, team-b"})
    env.pod("p", "infra/blue", namespace="team-a")
    allowed(env, *env.add(namespace="team-a", globalNamespaces=["infra"]))

    env.pod("q", "infra/blue", namespace="team-c")
    before = len(env.calls())
    rc, out = env.add("q", namespace="team-c", globalNamespaces=["infra"])
    assert rc == 1 and out["code"] == 106, out
    assert "hook: nad-namespaces" in out["details"] and "'team-c'" in out["msg"], out
    assert f"{LIST}: team-a, team-b" in out["msg"], out
    assert len(env.calls()) == before, "a delegate ran for the refused pod"
    assert len(env.cache_files()) == 1, env.cache_files()   # the allowed pod's entry only


def test_allowed_namespaces_as_a_json_list(env):
    env.nad("blue", "infra", {LIST: '["team-a"]'})
    env.pod("p", "infra/blue", namespace="team-b")
    refused(env, *env.add(namespace="team-b", globalNamespaces=["infra"]), "nad-namespaces", "team-b")


def test_the_list_is_exact_its_own_namespace_must_be_listed_too(env):
    env.nad("blue", "infra", {LIST: "team-a"})
    env.pod("p", "blue", namespace="infra")
    refused(env, *env.add(namespace="infra"), "nad-namespaces", "'infra'")


def test_the_annotation_narrows_isolation_never_widens_it(env):
    # a NAD writer of tenant-a lists tenant-b: without the admin's globalNamespaces, isolation still refuses
    env.nad("blue", "tenant-a", {LIST: "tenant-a, tenant-b"})
    env.pod("p", "tenant-a/blue", namespace="tenant-b")
    refused(env, *env.add(namespace="tenant-b"), "namespace-isolation")
    # the admin opens tenant-a: now the writer's list decides
    allowed(env, *env.add(namespace="tenant-b", globalNamespaces=["tenant-a"]))


def test_selector_on_namespace_labels_allows_and_refuses(env):
    env.namespace("team-a", team="red", env="prod")
    env.namespace("team-b", team="blue", env="prod")
    env.nad("blue", "infra", {SELECTOR: "team=red, env in (prod,staging)"})
    env.pod("p", "infra/blue", namespace="team-a")
    allowed(env, *env.add(namespace="team-a", globalNamespaces=["infra"]))
    env.pod("q", "infra/blue", namespace="team-b")
    rc, out = env.add("q", namespace="team-b", globalNamespaces=["infra"])
    assert rc == 1 and out["code"] == 106 and "hook: nad-namespaces" in out["details"], out
    assert "team=red, env in (prod,staging)" in out["msg"], out


def test_selector_by_the_name_label_and_a_namespace_without_a_file(env):
    env.nad("blue", "infra", {SELECTOR: "kubernetes.io/metadata.name in (team-x)"})
    env.pod("p", "infra/blue", namespace="team-x")      # no Namespace file: it still has its name label
    allowed(env, *env.add(namespace="team-x", globalNamespaces=["infra"]))


def test_list_or_selector_either_admits(env):
    env.namespace("team-b", team="red")
    env.nad("blue", "infra", {LIST: "team-a", SELECTOR: "team=red"})
    env.pod("p", "infra/blue", namespace="team-b")
    allowed(env, *env.add(namespace="team-b", globalNamespaces=["infra"]))


@pytest.mark.parametrize("annotations,key", [
    ({LIST: ""}, LIST),
    ({LIST: "Team_A"}, LIST),
    ({LIST: '["a", 1]'}, LIST),
    ({LIST: "[not json"}, LIST),
    ({SELECTOR: "team in (red"}, SELECTOR),
    ({SELECTOR: ""}, SELECTOR),
])
def test_a_malformed_annotation_is_code_7_naming_it_and_nothing_runs(env, annotations, key):
    env.nad("blue", annotations=annotations)
    env.pod("p", "blue")
    rc, out = env.add()
    assert rc == 1 and out["code"] == 7, out
    assert f'field: metadata.annotations["{key}"] of NetworkAttachmentDefinition default/blue' in out["details"]
    assert env.calls() == [] and env.cache_files() == []


def test_without_annotations_nothing_changes(env):
    env.nad("blue")
    env.pod("p", "blue")
    allowed(env, *env.add())


# ---- external hooks -------------------------------------------------------------------------------

def hooks(*entries: dict) -> dict:
    return {"authorizeHooks": list(entries)}


def test_an_external_hook_that_allows_gets_the_pod_the_nad_and_the_request(env):
    seen = env.root / "seen.json"
    path = env.hook("corp", f"cat > {seen}\necho '{{\"allowed\": true}}'")
    env.nad("blue", annotations={"team": "a"})
    env.pod("p", [{"name": "blue", "interface": "data0"}], labels={"app": "web"})
    allowed(env, *env.add(**hooks({"name": "corp", "path": path})))
    got = json.loads(seen.read_text())
    assert got["kind"] == "AuthorizeRequest" and got["hook"] == "corp" and got["network"] == "default/blue"
    assert got["pod"]["namespace"] == "default" and got["pod"]["name"] == "p" and got["pod"]["labels"] == {"app": "web"}
    assert ANN in got["pod"]["annotations"]
    assert got["nad"]["metadata"]["name"] == "blue" and got["nad"]["metadata"]["annotations"] == {"team": "a"}
    assert got["request"]["command"] == "ADD" and got["request"]["ifname"] == "data0"
    assert got["request"]["containerID"] == "c-default-p"


def test_an_external_hook_that_denies_is_code_106_with_its_reason(env):
    path = env.hook("corp", 'cat >/dev/null\necho \'{"allowed": false, "reason": "no VLAN 42 for this team"}\'')
    env.nad("blue")
    env.pod("p", "blue")
    refused(env, *env.add(**hooks({"name": "corp", "path": path})), "corp", "no VLAN 42 for this team")


def test_the_first_refusal_wins_in_config_order(env):
    ok = env.hook("ok", "cat >/dev/null; echo '{\"allowed\": true}'")
    no = env.hook("no", "cat >/dev/null; echo '{\"allowed\": false, \"reason\": \"second says no\"}'")
    never = env.root / "never"
    third = env.hook("third", f"touch {never}; echo '{{\"allowed\": true}}'")
    env.nad("blue")
    env.pod("p", "blue")
    refused(env, *env.add(**hooks({"name": "ok", "path": ok}, {"name": "no", "path": no},
                                   {"name": "third", "path": third})), "no", "second says no")
    assert not never.exists()


def test_a_hook_that_times_out_is_killed_and_denies(env):
    child_pid = env.root / "child.pid"
    # the shell's child holds the pipes too: the hook's whole session must go
    path = env.hook("slow", f"sleep 60 &\necho $! > {child_pid}\nwait")
    env.nad("blue")
    env.pod("p", "blue")
    refused(env, *env.add(**hooks({"name": "slow", "path": path, "timeout": 0.5})), "slow",
            "no answer within its timeout of 0.5s")
    pid = int(child_pid.read_text())
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.05)
    assert not _alive(pid), "the hook's child was left running"


def test_a_hook_that_times_out_allows_when_configured(env):
    path = env.hook("slow", "exec sleep 60")
    env.nad("blue")
    env.pod("p", "blue")
    allowed(env, *env.add(**hooks({"name": "slow", "path": path, "timeout": 0.3, "onTimeout": "allow"})))


def test_the_calls_deadline_bounds_the_hook_whatever_on_timeout_says(env):
    from multiplex.policy import external
    from multiplex.policy.hooks import AttachmentAsk

    path = env.hook("slow", "exec sleep 60")
    req = Request(command="ADD", container_id="c1", netns="/x", ifname="eth0",
                  args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "p"}, config={})
    req.deadline = time.monotonic() + 0.4
    ask = AttachmentAsk(network="default/blue", nad_namespace="default", nad_name="blue", nad={},
                        ifname="net1", selection=None, request=req, pod={"namespace": "default", "name": "p"})
    hook = external.ExternalHook("slow", path, timeout=30, on_timeout="allow")
    with pytest.raises(CNIError) as e:
        external.run(hook, ask)
    assert e.value.code == 106 and "call's deadline" in e.value.msg and "hook: slow" in e.value.details


@pytest.mark.parametrize("body,reason", [
    ("echo 'policy db unreachable' >&2; exit 3", "exited with code 3: policy db unreachable"),
    ("kill -9 $$", "was killed by signal 9"),
    ("echo 'yes please'", "answered 'yes please', not a JSON object"),
    ("echo '{\"allowed\": \"yes\"}'", "not a JSON object"),
    ("echo '[true]'", "not a JSON object"),
    ("true", "answered nothing"),
])
def test_a_hook_that_crashes_or_prints_garbage_denies_with_a_clear_reason(env, body, reason):
    path = env.hook("flaky", "cat >/dev/null\n" + body)
    env.nad("blue")
    env.pod("p", "blue")
    refused(env, *env.add(**hooks({"name": "flaky", "path": path})), "flaky", reason)


def _hook_ask(req_deadline: float = 30.0):
    from multiplex.policy.hooks import AttachmentAsk

    req = Request(command="ADD", container_id="c1", netns="/x", ifname="eth0",
                  args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "p"}, config={})
    req.deadline = time.monotonic() + req_deadline
    return AttachmentAsk(network="default/blue", nad_namespace="default", nad_name="blue", nad={},
                         ifname="net1", selection=None, request=req, pod={"namespace": "default", "name": "p"})


def test_a_hook_that_floods_stdout_is_killed_at_once_and_memory_stays_bounded(env, monkeypatch):
    """An answer longer than MAX_ANSWER is a refusal: the hook (an endless writer) is killed as
    soon as it passes the bound, not at its timeout, and no more than the bound is kept."""
    from multiplex.policy import external

    seen = []
    real = external.verdict
    monkeypatch.setattr(external, "verdict", lambda h, rc, out, err: seen.append(len(out)) or real(h, rc, out, err))
    path = env.hook("chatty", "cat >/dev/null; exec yes allowed")
    started = time.monotonic()
    with pytest.raises(CNIError) as e:
        external.run(external.ExternalHook("chatty", path, timeout=20), _hook_ask())
    assert time.monotonic() - started < 10, "the flooding hook ran until its timeout"
    assert e.value.code == 106 and f"more than {external.MAX_ANSWER} bytes" in e.value.msg
    assert seen == [external.MAX_ANSWER + 1]


def test_a_hook_that_floods_stderr_keeps_only_its_tail_and_its_answer_counts(env, monkeypatch):
    from multiplex.policy import external

    seen = []
    real = external.verdict
    monkeypatch.setattr(external, "verdict", lambda h, rc, out, err: seen.append(len(err)) or real(h, rc, out, err))
    path = env.hook("noisy", "cat >/dev/null; head -c 4000000 /dev/zero | tr '\\0' x >&2; echo >&2; "
                             "echo 'last words' >&2; echo '{\"allowed\": false, \"reason\": \"no\"}'")
    with pytest.raises(CNIError) as e:
        external.run(external.ExternalHook("noisy", path, timeout=20), _hook_ask())
    assert "no" in e.value.msg and seen and seen[0] <= external.STDERR_KEEP


def test_a_hook_that_never_reads_a_large_request_still_times_out(env):
    """stdin is written without blocking: a hook that reads nothing cannot hold the call past its
    timeout however large the request (more than a pipe holds)."""
    from multiplex.policy import external

    ask = _hook_ask()
    ask.pod["annotations"] = {"big": "x" * 1_000_000}
    path = env.hook("deaf", "exec sleep 60")
    started = time.monotonic()
    with pytest.raises(CNIError) as e:
        external.run(external.ExternalHook("deaf", path, timeout=0.5), ask)
    assert time.monotonic() - started < 5
    assert "no answer within its timeout of 0.5s" in e.value.msg


def test_a_hook_that_reads_a_large_request_gets_all_of_it(env):
    from multiplex.policy import external

    ask = _hook_ask()
    ask.pod["annotations"] = {"big": "x" * 1_000_000}
    seen = env.root / "seen.json"
    path = env.hook("reader", f"cat > {seen}; echo '{{\"allowed\": true}}'")
    external.run(external.ExternalHook("reader", path, timeout=20), ask)
    assert json.loads(seen.read_text())["pod"]["annotations"]["big"] == "x" * 1_000_000


def test_a_hook_that_cannot_be_run_denies(env):
    env.nad("blue")
    env.pod("p", "blue")
    missing = str(env.root / "hooks" / "missing")
    refused(env, *env.add(**hooks({"name": "gone", "path": missing})), "gone", f"cannot run {missing}")
    not_exec = env.root / "hooks" / "plain"
    not_exec.write_text("#!/bin/sh\necho '{\"allowed\": true}'\n")
    # exec needs an x bit, even for root
    refused(env, *env.add(**hooks({"name": "plain", "path": str(not_exec)})), "plain", "cannot run", "denied")


def test_hooks_are_not_asked_about_the_admins_networks(env):
    never = env.root / "never"
    path = env.hook("corp", f"touch {never}; echo '{{\"allowed\": false}}'")
    env.nad("extra")
    env.pod("p", "")
    allowed(env, *env.add(defaultNetworks=["extra"], **hooks({"name": "corp", "path": path})))
    assert not never.exists()


@pytest.mark.parametrize("bad,field", [
    ({"name": "corp", "path": "relative/hook"}, "authorizeHooks"),
    ({"name": "corp"}, "authorizeHooks"),
    ({"name": "corp", "path": "/bin/true", "onTimeout": "maybe"}, "authorizeHooks"),
    ({"name": "Corp Policy", "path": "/bin/true"}, "authorizeHooks"),
    ({"name": "corp", "path": "/bin/true", "timeout": 0}, "authorizeHooks"),
])
def test_a_bad_hook_config_is_code_7(env, bad, field):
    env.nad("blue")
    env.pod("p", "blue")
    rc, out = env.add(**hooks(bad))
    assert rc == 1 and out["code"] == 7 and field in out["details"], out
    assert env.calls() == []


def test_two_hooks_of_one_name_are_code_7(env):
    env.nad("blue")
    env.pod("p", "blue")
    rc, out = env.add(**hooks({"name": "corp", "path": "/bin/true"}, {"name": "corp", "path": "/bin/false"}))
    assert rc == 1 and out["code"] == 7 and "authorizeHooks[1].name" in out["details"], out


def test_a_nad_cannot_name_an_authorize_hook(env):
    doc = {"kind": "NetworkAttachmentDefinition", "metadata": {"name": "evil", "namespace": "default"},
           "spec": {"config": json.dumps({"cniVersion": "1.1.0", "type": "fake-a",
                                          "authorizeHooks": [{"name": "x", "path": "/bin/true"}]})}}
    (env.root / "nads" / "default-evil.json").write_text(json.dumps(doc))
    env.pod("p", "evil")
    rc, out = env.add()
    assert rc == 1 and out["code"] == 7 and "default/evil:$.authorizeHooks" in out["details"], out


def test_select_runs_the_hooks_for_every_requested_attachment_before_returning(env):
    """`select` (what ADD runs before any delegate) refuses the third attachment: nothing of the
    first two was made, because nothing is made before every attachment is authorized."""
    from multiplex.meta.sources import LocalSource

    path = env.hook("corp", 'read -r line; case "$line" in *default/red*) '
                    'echo \'{"allowed": false, "reason": "red is closed"}\';; '
                    '*) echo \'{"allowed": true}\';; esac')
    env.nad("blue")
    env.nad("red")
    env.pod("p", "blue, red")
    conf = MultiplexConfig.from_dict(env.config(**hooks({"name": "corp", "path": path})))
    req = Request(command="ADD", container_id="c1", netns="/x", ifname="eth0",
                  args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "p"}, config=conf.raw)
    with pytest.raises(CNIError) as e:
        select(conf, req, LocalSource(conf.nad_dir, conf.pod_dir), authorize=authorize)
    assert e.value.code == 106 and "red is closed" in e.value.msg and "default/red" in e.value.msg
    assert env.calls() == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_two_hooks_of_one_name_are_code_7_even_for_a_pod_without_networks(env):
    env.pod("p", "")
    rc, out = env.add(**hooks({"name": "corp", "path": "/bin/true"}, {"name": "corp", "path": "/bin/false"}))
    assert rc == 1 and out["code"] == 7 and "authorizeHooks[1].name" in out["details"], out
    assert env.calls() == []
