"""The corpus of bad inputs, through the real binaries in a simulated node (issue 8).

For every case: exit code 1; stdout one JSON error object with the expected CNI code (never 100),
a message and `details` naming the field; the call finishes (a hang is a failure); and nothing
changed on the node: no link, address, route, FDB entry, nft rule, process, state file or lease
appeared or vanished (tests/adversarial/residue.py). A few live attachments exist for the whole
run (one pod through multiplex, one container through multiplex-bridge, one lease through
multiplex-ipam), so a bad GC that removes what is live shows up as residue too.

The run ends with a summary table (clear / vague / crash / hang / residue): see conftest.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from tests.adversarial import corpus
from tests.adversarial.corpus import (BLUE_NET, CASES, OUTCOMES, POD_NET, REMOVE, Case, Ctx,
                                      bridge_standalone_conf, ipam_standalone_conf, mpx_conf, stdin_for)
from tests.adversarial.residue import Snapshot, Watch, diff
from tests.cnitool import BIN, CNI_PATH, links, nsexec
from tests.netns.mpxlab import bridge_conf

pytestmark = pytest.mark.root

CASE_TIMEOUT = 15.0      # seconds; a bad input must be answered well within this (a busy 2-core CI included)
INTERNAL = 100


@dataclass
class Node:
    """The corpus's node: its netns, the lab root, the residue watch and a reusable pod netns."""
    name: str
    root: str
    pool: Any
    watch: Watch
    pod_ns: str = ""
    last: Optional[Snapshot] = None
    live: Optional[dict] = None

    def ctx(self, idx: int, case: Case) -> Ctx:
        pod = "plain" if case.networks is None else f"p{idx:03d}"
        return Ctx(root=self.root, node=self.name, pod_ns=self.pod_ns, cid=f"corpus-{idx:03d}", pod=pod, idx=idx)

    def fresh_pod_ns(self) -> None:
        if self.pod_ns:
            self.pool.drop(self.pod_ns)
        self.pod_ns = self.pool.make("p")


def base_env(case: Case, ctx: Ctx) -> dict[str, str]:
    """A good call's environment for the case's plugin and command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": case.command, "CNI_PATH": CNI_PATH,
                "MULTIPLEX_STATE_DIR": ctx.state_dir,
                "MULTIPLEX_LOG_FILE": os.path.join(ctx.root, "plugins.log")})
    if case.command not in ("GC", "STATUS", "VERSION"):
        env.update({"CNI_CONTAINERID": ctx.cid, "CNI_IFNAME": "eth0", "CNI_NETNS": f"/var/run/netns/{ctx.pod_ns}"})
    env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={ctx.pod}"
    for var, value in case.env.items():
        if value is REMOVE:
            env.pop(var, None)
        else:
            env[var] = value(ctx) if callable(value) else value
    return env


def run_case(case: Case, ctx: Ctx) -> tuple[Optional[int], Any, str]:
    """Exec the case's binary in the node; (None, None, "") when it did not finish in time."""
    env = base_env(case, ctx)
    argv = ["ip", "netns", "exec", ctx.node, os.path.join(BIN, case.plugin)]
    try:
        proc = subprocess.run(argv, input=stdin_for(case, ctx), env=env, capture_output=True, timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, None, ""
    text = proc.stdout.decode(errors="replace")
    try:
        out: Any = json.loads(text) if text.strip() else text
    except ValueError:
        out = text
    return proc.returncode, out, proc.stderr.decode(errors="replace")


def judge(case: Case, rc: Optional[int], out: Any, stderr: str) -> tuple[str, str]:
    """(kind, reason) for the answer alone: clear, vague, crash or hang."""
    if rc is None:
        return "hang", f"no answer within {CASE_TIMEOUT:.0f}s"
    if "Traceback" in stderr:
        return "crash", f"traceback on stderr: {stderr.strip().splitlines()[-1][:160]}"
    if rc == 0:
        return "vague", f"accepted (exit 0), stdout {str(out)[:120]!r}"
    if not isinstance(out, dict) or not isinstance(out.get("code"), int):
        return "crash", f"exit {rc}, stdout is not one JSON error object: {str(out)[:120]!r}"
    code, msg, details = out["code"], out.get("msg", ""), str(out.get("details", ""))
    if code == INTERNAL:
        return "crash", f"code 100: {msg[:120]} | {details[:80]}"
    if rc != 1:
        return "crash", f"exit {rc} with code {code}"
    if code not in case.codes:
        return "vague", f"code {code} (want {'/'.join(map(str, case.codes))}): {msg[:100]} | {details[:100]}"
    if not msg or not any(f in details for f in case.fields):
        return "vague", f"details do not name {' or '.join(case.fields)}: {msg[:80]} | {details[:120]}"
    return "clear", ""


def residue_of(node: Node, ctx: Ctx, case: Case) -> list[str]:
    after = node.watch.snapshot()
    lines = diff(node.last, after)
    lines += [f"+ pod link: {l}" for l in sorted(links(ctx.pod_ns) - {"lo"})]
    lines += [f"+ stray: {ctx.out(s)}" for s in case.strays if os.path.lexists(ctx.out(s))]
    node.last = after
    return lines


def clean_up_after(node: Node, case: Case, ctx: Ctx) -> None:
    """After a case that left something: DEL it with a good config, remove what is still there,
    and start the next case from a fresh snapshot and pod netns (so one leak is reported once)."""
    good = {"multiplex": mpx_conf, "multiplex-bridge": bridge_standalone_conf,
            "multiplex-ipam": ipam_standalone_conf}[case.plugin](ctx)
    env = base_env(Case("cleanup", 0, "", plugin=case.plugin, command="DEL"), ctx)
    subprocess.run(["ip", "netns", "exec", ctx.node, os.path.join(BIN, case.plugin)],
                   input=json.dumps(good).encode(), env=env, capture_output=True, timeout=30)
    before = {l[0] for l in node.last.links} if node.last else set()
    keep = {l[0] for l in node.live["links"]}
    for name in before - keep:
        nsexec(ctx.node, "ip", "link", "del", name, check=False)
    node.fresh_pod_ns()
    node.last = node.watch.snapshot()


# ---- the node, with live attachments the corpus must never touch -----------------------------------

def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _live_attachments(node: Node, ctx: Ctx) -> dict:
    """A pod through multiplex (eth0 + net1), a container through multiplex-bridge, a lease through
    multiplex-ipam: what GC with a malformed keep-list would wrongly collect."""
    live: dict[str, Any] = {"ns": {}}
    for cid, plugin, conf, pod in (("cid-live", "multiplex", mpx_conf(ctx), "live"),
                                   ("cid-live-br", "multiplex-bridge", bridge_standalone_conf(ctx), "x"),
                                   ("cid-live-ipam", "multiplex-ipam", ipam_standalone_conf(ctx), "x")):
        ns = node.pool.make("l")
        c = Ctx(root=ctx.root, node=ctx.node, pod_ns=ns, cid=cid, pod=pod, idx=0)
        env = base_env(Case("live", 0, "", plugin=plugin), c)
        proc = subprocess.run(["ip", "netns", "exec", ctx.node, os.path.join(BIN, plugin)],
                              input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
        assert proc.returncode == 0, (plugin, proc.stdout, proc.stderr)
        live["ns"][cid] = ns
    return live


def make_node(pool: Any, root: str) -> Node:
    """A node netns with the corpus's NADs and pods, and the live attachments (see _live_attachments)."""
    name = pool.make("n")
    for d in ("nads", "pods", "state", "outside"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    ctx0 = Ctx(root=root, node=name, pod_ns="", cid="", pod="", idx=0)
    ctx0.add_nad("podnet", bridge_conf("mpxc-pod", POD_NET, isGateway=True, isDefaultGateway=True, ipMasq=True))
    ctx0.add_nad("blue", bridge_conf("mpxc-blue", BLUE_NET))
    ctx0.add_nad("green", bridge_conf("mpxc-green", corpus.GREEN_NET))
    ctx0.add_pod("blue", name="plain")
    ctx0.add_pod("blue", name="live")
    watch = Watch(node=name, dirs=[os.path.join(root, "state"), os.path.join(root, "outside")])
    node = Node(name=name, root=root, pool=pool, watch=watch)
    node.live = _live_attachments(node, ctx0)
    node.live.update(links=watch.snapshot().links)
    node.fresh_pod_ns()
    node.last = watch.snapshot()
    return node


@dataclass
class Result:
    rc: Optional[int]
    out: Any
    stderr: str
    kind: str
    why: str
    left: list


def run_one(node: Node, idx: int, case: Case) -> Result:
    """One case on one node: setup, the call, the verdict, the residue (then clean up what it left)."""
    ctx = node.ctx(idx, case)
    if case.setup:
        case.setup(ctx)
    if case.networks is not None:
        ctx.add_pod(case.networks)
    rc, out, stderr = run_case(case, ctx)
    kind, why = judge(case, rc, out, stderr)
    left = residue_of(node, ctx, case)
    if left:
        kind = "residue" if kind in ("clear", "vague") else kind
        why = (why + "; " if why else "") + f"residue: {'; '.join(left[:6])}{' ...' if len(left) > 6 else ''}"
        clean_up_after(node, case, ctx)
    OUTCOMES[case.id] = (kind, why)
    return Result(rc, out, stderr, kind, why, left)


WORKERS = max(1, min(int(os.environ.get("MPX_CORPUS_WORKERS", "2")), os.cpu_count() or 1))


@pytest.fixture(scope="module")
def nodes(netns_pool, tmp_path_factory) -> list[Node]:
    return [make_node(netns_pool, str(tmp_path_factory.mktemp(f"corpus{w}"))) for w in range(WORKERS)]


@pytest.fixture(scope="module")
def results(nodes) -> dict[str, Result]:
    """Every case, run up front: one worker per node (its own netns and state dir, so residue is
    attributed to the case that made it), cases dealt round-robin."""
    from concurrent.futures import ThreadPoolExecutor

    numbered = list(enumerate(CASES, 1))

    def work(w: int) -> dict[str, Result]:
        return {case.id: run_one(nodes[w], idx, case) for idx, case in numbered[w::len(nodes)]}

    out: dict[str, Result] = {}
    with ThreadPoolExecutor(len(nodes)) as ex:
        for part in ex.map(work, range(len(nodes))):
            out.update(part)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_and_leaves_nothing(results: dict, case: Case):
    r = results[case.id]
    rc, out, stderr, left = r.rc, r.out, r.stderr, r.left
    assert rc is not None, f"{case.id}: hung (no answer within {CASE_TIMEOUT}s)"
    assert rc == 1, f"{case.id}: exit {rc}, stdout {out!r}, stderr {stderr[-400:]}"
    assert isinstance(out, dict) and out.get("code") != INTERNAL, f"{case.id}: {out!r} {stderr[-400:]}"
    assert out.get("code") in case.codes and out.get("msg"), f"{case.id}: want code {case.codes}, got {out!r}"
    assert any(f in str(out.get("details", "")) for f in case.fields), \
        f"{case.id}: details must name {case.fields}: {out!r}"
    assert "Traceback" not in stderr, f"{case.id}: {stderr[-600:]}"
    assert left == [], f"{case.id}: left behind or removed:\n" + "\n".join(left)


def test_the_corpus_is_at_least_150_named_cases():
    assert len(CASES) >= 150


def test_live_attachments_survived_the_corpus(nodes: list[Node], results: dict):
    """Nothing in the corpus (GC with a malformed list above all) touched what is live."""
    for node in nodes:
        live = node.live
        assert {"eth0", "net1"} <= links(live["ns"]["cid-live"])
        assert "eth0" in links(live["ns"]["cid-live-br"])
        leases = "\n".join(node.watch.snapshot().leases)
        for cid in ("cid-live", "cid-live-br", "cid-live-ipam"):
            assert cid in leases, f"the lease of {cid} is gone"


def test_the_residue_check_sees_a_link_a_rule_a_file_and_a_lease(nodes: list[Node]):
    """The harness itself: what a leak looks like (a veth, an nft rule, a cache file, a lease row)
    appears in the diff, and its removal too; so 'no residue' above means something."""
    import sqlite3

    node = nodes[0]
    before = node.watch.snapshot()
    cache = os.path.join(node.root, "state", "cache", "residue-probe:eth0.json")
    db = os.path.join(node.root, "outside", "probe.db")
    try:
        nsexec(node.name, "ip", "link", "add", "mpxc-probe0", "type", "veth", "peer", "name", "mpxc-probe1")
        nsexec(node.name, "nft", "add table inet mpxc_probe; add chain inet mpxc_probe c; "
                                 "add rule inet mpxc_probe c counter comment \"probe\"")
        _write_json(cache, {"probe": True})
        con = sqlite3.connect(db)
        con.execute("create table leases (ip text)")
        con.execute("insert into leases values ('198.18.100.250')")
        con.commit()
        con.close()
        seen = "\n".join(diff(before, node.watch.snapshot()))
        for what in ("+ links: ('mpxc-probe0'", "+ nft: rule", "residue-probe:eth0.json", "198.18.100.250"):
            assert what in seen, f"{what!r} not in the diff:\n{seen}"
    finally:
        nsexec(node.name, "ip", "link", "del", "mpxc-probe0", check=False)
        nsexec(node.name, "nft", "delete table inet mpxc_probe", check=False)
        for f in (cache, db):
            if os.path.exists(f):
                os.remove(f)
    assert diff(before, node.watch.snapshot()) == []
