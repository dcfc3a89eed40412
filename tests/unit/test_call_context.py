"""Two meta-plugin calls at once in one process (what the node daemon will do): each call's state
root, kubeconfig, log and delete batch are its own, passed down on its requests, never shared
through os.environ, a module global or a thread-local.

The delegate and its IPAM are in-process probes that record the context their request carries and
log through it. Both calls are held inside their delegate together (a barrier), so whatever one
call left in process state would be what the other one reads.
"""
from __future__ import annotations

import io
import json
import os
import threading

import pytest

from multiplex.cni import registry
from multiplex.cni.invoke import invoke_ipam
from multiplex.cni.plugin import Plugin
from multiplex.cni.request import Request
from multiplex.cni.skel import run
from multiplex.cni.types import Result
from multiplex.meta.orchestrator import plugin as multiplex
from multiplex.util import state

CALLS = ("a", "b")


class Probe(Plugin):
    """Records what its request's context says; the delegate also waits for the other call."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        self.seen: list[dict] = []
        self.barrier: threading.Barrier = threading.Barrier(len(CALLS), timeout=20)
        self.lock = threading.Lock()

    def _probe(self, req: Request) -> None:
        if self.type_name == "ctx-probe":
            self.barrier.wait()  # both calls are in flight: each has loaded its config by now
        ctx = req.ctx
        req.ctx.log.info("probe ran", probe=self.type_name)
        with self.lock:
            self.seen.append({"container": req.container_id, "command": req.command, "probe": self.type_name,
                              "root": state.root(ctx.state_dir), "kubeconfig": ctx.kubeconfig,
                              "batch": None if ctx.batch is None else ctx.batch.group})

    def add(self, req: Request) -> Result:
        self._probe(req)
        if self.type_name == "ctx-probe":
            invoke_ipam(req)
        return Result.from_dict({"cniVersion": "1.1.0", "interfaces": [{"name": req.ifname,
                                                                        "sandbox": req.netns}]})

    def delete(self, req: Request) -> None:
        self._probe(req)
        if self.type_name == "ctx-probe":
            invoke_ipam(req)


probe, probe_ipam = Probe("ctx-probe"), Probe("ctx-probe-ipam")


@pytest.fixture
def probes(monkeypatch):
    """The probes as the only built-in plugins, with fresh records and barriers."""
    for p in (probe, probe_ipam):
        p.seen.clear()
        p.barrier.reset()
    registry.builtin.cache_clear()
    monkeypatch.setattr(registry, "_entry_points", lambda: {"ctx-probe": f"{__name__}:probe",
                                                            "ctx-probe-ipam": f"{__name__}:probe_ipam"})
    yield probe, probe_ipam
    registry.builtin.cache_clear()


@pytest.fixture
def calls(tmp_path):
    """Per call: its own state dir, kubeconfig and log file; one node's conf dir and pods."""
    conf_dir, pod_dir = tmp_path / "net.d", tmp_path / "pods"
    conf_dir.mkdir()
    pod_dir.mkdir()
    (conf_dir / "10-podnet.conf").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": "podnet", "type": "ctx-probe", "ipam": {"type": "ctx-probe-ipam"}}))
    out = {}
    for c in CALLS:
        (pod_dir / f"default-pod-{c}.json").write_text(json.dumps(
            {"kind": "Pod", "metadata": {"name": f"pod-{c}", "namespace": "default", "uid": f"uid-{c}"}}))
        out[c] = {"state": str(tmp_path / f"state-{c}"), "kubeconfig": str(tmp_path / f"kubeconfig-{c}"),
                  "log": tmp_path / f"multiplex-{c}.log",
                  "config": {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex",
                             "clusterNetwork": "podnet", "confDir": str(conf_dir), "podDir": str(pod_dir),
                             "stateDir": str(tmp_path / f"state-{c}"), "logFile": str(tmp_path / f"multiplex-{c}.log"),
                             "logLevel": "info"}}
    return out


def run_both(calls, command: str, config_of, environ_of) -> None:
    """`command` for both calls at once, each in a thread of its own, through skel.run."""
    answers: dict[str, tuple[int, str]] = {}

    def one(c: str) -> None:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"ctx-{c}", "CNI_NETNS": f"/var/run/netns/fake-ctx-{c}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{c}", **environ_of(c)}
        out = io.StringIO()
        rc = run(multiplex, env, json.dumps(config_of(c)).encode(), out)
        answers[c] = (rc, out.getvalue())

    threads = [threading.Thread(target=one, args=(c,)) for c in CALLS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {c: a[0] for c, a in answers.items()} == {c: 0 for c in CALLS}, answers


def seen_by_call(command: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {c: [] for c in CALLS}
    for s in probe.seen + probe_ipam.seen:
        if s["command"] == command:
            out[s["container"].removeprefix("ctx-")].append(s)
    return out


def test_two_concurrent_calls_each_see_only_their_own_context(calls, probes, monkeypatch):
    monkeypatch.delenv("MULTIPLEX_KUBECONFIG", raising=False)
    before = {k: os.environ.get(k) for k in ("MULTIPLEX_STATE_DIR", "MULTIPLEX_KUBECONFIG")}

    # ADD: the kubeconfig comes from each call's environment (the runtime's), the state dir from its config
    run_both(calls, "ADD", lambda c: calls[c]["config"], lambda c: {"MULTIPLEX_KUBECONFIG": calls[c]["kubeconfig"]})
    # DEL: both from each call's config
    run_both(calls, "DEL", lambda c: dict(calls[c]["config"], kubeconfig=calls[c]["kubeconfig"]), lambda c: {})

    for command in ("ADD", "DEL"):
        for c, seen in seen_by_call(command).items():
            # the delegate and the IPAM it ran, each with this call's state root and kubeconfig
            assert sorted(s["probe"] for s in seen) == ["ctx-probe", "ctx-probe-ipam"]
            assert {(s["root"], s["kubeconfig"]) for s in seen} == {(calls[c]["state"], calls[c]["kubeconfig"])}
    # each DEL deletes its links in a batch of its own, shared by its delegate and IPAM
    groups = {c: {s["batch"] for s in seen} for c, seen in seen_by_call("DEL").items()}
    assert all(len(g) == 1 and None not in g for g in groups.values()) and groups["a"] != groups["b"]
    assert {s["batch"] for s in seen_by_call("ADD")["a"] + seen_by_call("ADD")["b"]} == {None}

    # each call's cache entry was written in its own state dir (and removed there by its DEL)
    for c in CALLS:
        cache = os.path.join(calls[c]["state"], "cache")
        assert os.path.isdir(cache) and os.listdir(cache) == []
    # each call's log holds its own lines only: its pod, and the probes' lines among them
    for c in CALLS:
        lines = [json.loads(line) for line in calls[c]["log"].read_text().splitlines()]
        assert {line.get("pod") for line in lines} == {f"default/pod-{c}"}
        assert {line.get("container") for line in lines} == {f"ctx-{c}"}
        ran = [(line["command"], line["probe"]) for line in lines if line["msg"] == "probe ran"]
        assert sorted(ran) == sorted((cmd, p) for cmd in ("ADD", "DEL") for p in ("ctx-probe", "ctx-probe-ipam"))
    # and the process was left as it was
    assert {k: os.environ.get(k) for k in before} == before


def test_a_cache_entry_is_written_in_the_calls_own_state_dir(calls, probes):
    """While both ADDs are in flight, each one's cache entry is already in its own state dir."""
    found: dict[str, list[str]] = {}

    def look() -> None:  # run once both delegates are waiting
        for c in CALLS:
            found[c] = sorted(os.listdir(os.path.join(calls[c]["state"], "cache")))

    probe.barrier = threading.Barrier(len(CALLS), timeout=20, action=look)
    try:
        run_both(calls, "ADD", lambda c: calls[c]["config"], lambda c: {})
    finally:
        probe.barrier = threading.Barrier(len(CALLS), timeout=20)
    assert found == {c: [f"ctx-{c}:eth0.json"] for c in CALLS}
