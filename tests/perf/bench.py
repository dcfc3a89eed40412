"""Helpers for the ADD/DEL benchmark: the runtime stand-in in the node netns, the networks of both
sides (multiplex NADs and the reference plugins' plain configs), statistics, tables.

Both sides run in the same node netns, on bridges and subnets of their own, exec'd by the same
runner (tests/perf/runner.py) as a container runtime would exec them; pods are fresh netns.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from tests.cnitool import BIN, CNI_PATH, REFERENCE_PLUGINS
from tests.netns.mpxlab import Lab, bridge_conf

PYTHON = sys.executable
MULTIPLEX = os.path.join(BIN, "multiplex")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
ONESHOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oneshot.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: attachments per pod: the cluster network alone, + 1, + 3
SIZES = (1, 2, 4)
#: the networks, in attachment order: (name, bridge suffix, third octet); the first is the cluster
#: network (gateway + default route), as in the lab; all IPv4 so both sides do the same work
NETWORKS = (("podnet", "pod", 0), ("blue", "blue", 1), ("green", "green", 2), ("violet", "violet", 3))
SUBNET = "198.18.{}.0/24"
MPX_BASE, REF_BASE = 10, 20         # 198.18.10-13.0/24: multiplex side; 198.18.20-23.0/24: reference side


# ---- statistics ----------------------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    """The 95th percentile, interpolated between the closest ranks (the max for tiny samples)."""
    if len(xs) < 2:
        return xs[0]
    return statistics.quantiles(xs, n=20, method="inclusive")[18]


def ms(x: float) -> str:
    return f"{x * 1000:6.1f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def mpx_networks() -> list[tuple[str, dict]]:
    """multiplex's side: (NAD name, multiplex-bridge config) in attachment order, the cluster network first."""
    out = []
    for n, (name, suffix, octet) in enumerate(NETWORKS):
        extra = {"isGateway": True, "isDefaultGateway": True} if n == 0 else {}
        out.append((name, bridge_conf(f"mpx-{suffix}", SUBNET.format(MPX_BASE + octet), **extra)))
    return out


# ---- the runtime stand-in ------------------------------------------------------------------------
class Runner:
    """tests/perf/runner.py inside the node netns: exec'd calls timed there, and warm in-process calls."""

    def __init__(self, node: str, log_path: str):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", node, PYTHON, RUNNER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)

    def ask(self, req: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark runner died (exit {self.proc.wait()}); see {self.log_path}")
        ans = json.loads(line)
        if "error" in ans:
            raise RuntimeError(f"the benchmark runner failed: {ans['error']}")
        return ans

    def exec(self, calls: list[dict]) -> "Timed":
        ans = self.ask({"op": "exec", "calls": calls})
        return Timed(ans["seconds"], ans["cpu"], ans["results"])

    def call(self, env: dict, stdin: str) -> "Timed":
        ans = self.ask({"op": "call", "env": env, "stdin": stdin})
        return Timed(ans["seconds"], ans["cpu"], ans["results"])

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.ask_quit()
                self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()

    def ask_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()


@dataclass
class Timed:
    seconds: float          # wall clock
    cpu: float              # CPU time, user + system, of the processes that did the work
    results: list[dict]

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r["rc"] == 0 for r in self.results)

    def clocks(self) -> dict[str, float]:
        """The clocks tests/perf/oneshot.py writes as the last line of its stderr."""
        return json.loads(self.results[0]["stderr"].strip().splitlines()[-1])

    def out(self, k: int = 0) -> Any:
        text = self.results[k]["stdout"]
        return json.loads(text) if text.strip() else None

    def __str__(self) -> str:
        return "; ".join(f"rc={r['rc']} stdout={r['stdout'][:400]} stderr={r['stderr'][-400:]}" for r in self.results)


# ---- CNI calls -----------------------------------------------------------------------------------
def process_env(pycache: str = "") -> dict:
    """The environment of an exec'd plugin. With `pycache`, Python's bytecode goes there
    (PYTHONPYCACHEPREFIX) and is reused from the second call on, as in an installed wheel; without
    it, a PYTHONDONTWRITEBYTECODE=1 in the caller's environment makes every call compile multiplex
    from source again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    if pycache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def cni_env(command: str, container_id: str, netns: str, ifname: str, pod: str = "", pycache: str = "") -> dict:
    env = process_env(pycache)
    args = "IgnoreUnknown=1" + (f";K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}" if pod else "")
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": f"/var/run/netns/{netns}",
                "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": CNI_PATH})
    return env


@dataclass
class Bench:
    """Both sides' networks in one node: multiplex's NADs and the reference plugins' configs."""

    lab: Lab
    host_local_dir: str
    pycache: str = ""
    annotations: dict[int, str] = field(default_factory=dict)

    @classmethod
    def build(cls, lab: Lab, root: str, pycache: str = "") -> "Bench":
        for name, conf in mpx_networks():
            lab.add_nad(name, conf)
        names = [name for name, _, _ in NETWORKS[1:]]
        bench = cls(lab=lab, host_local_dir=os.path.join(root, "host-local"), pycache=pycache)
        bench.annotations = {size: ", ".join(names[:size - 1]) for size in SIZES}
        return bench

    # ---- multiplex: one call per pod ----------------------------------------------------------
    def mpx_pod(self, pod: str, size: int) -> None:
        self.lab.add_pod(pod, self.annotations[size] or None)

    def mpx_stdin(self) -> str:
        return json.dumps(self.lab.config(logLevel="info"))

    def mpx_env(self, command: str, pod: str, netns: str, pycache: Optional[str] = None) -> dict:
        return cni_env(command, f"cid-{pod}", netns, "eth0", pod=pod,
                       pycache=self.pycache if pycache is None else pycache)

    def mpx_exec(self, command: str, pod: str, netns: str, argv: Optional[list[str]] = None,
                 pycache: Optional[str] = None) -> dict:
        return {"argv": argv or [MULTIPLEX], "env": self.mpx_env(command, pod, netns, pycache),
                "stdin": self.mpx_stdin()}

    # ---- reference: bridge + host-local, one exec per attachment ------------------------------
    def ref_config(self, n: int) -> dict:
        name, suffix, octet = NETWORKS[n]
        conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": f"ref-{name}", "type": "bridge",
                                "bridge": f"ref-{suffix}",
                                "ipam": {"type": "host-local", "dataDir": self.host_local_dir,
                                         "ranges": [[{"subnet": SUBNET.format(REF_BASE + octet)}]]}}
        if n == 0:
            conf.update(isGateway=True, isDefaultGateway=True)
        return conf

    def ref_calls(self, command: str, pod: str, netns: str, size: int,
                  prev: Optional[list[dict]] = None) -> list[dict]:
        """ADD in attachment order; DEL in reverse, each with its ADD result as prevResult (libcni)."""
        order = range(size) if command == "ADD" else reversed(range(size))
        calls = []
        for n in order:
            conf = self.ref_config(n)
            if prev is not None:
                conf["prevResult"] = prev[n]
            calls.append({"argv": [os.path.join(REFERENCE_PLUGINS, "bridge")],
                          "env": cni_env(command, f"ref-{pod}", netns, "eth0" if n == 0 else f"net{n}", pod=pod),
                          "stdin": json.dumps(conf)})
        return calls

    def host_local_leases(self) -> list[str]:
        out = []
        for top, _, files in os.walk(self.host_local_dir):
            out += [f for f in files if re.fullmatch(r"[0-9a-f.:]+", f)]
        return out


def expected_links(size: int) -> set[str]:
    return {"lo", "eth0"} | {f"net{n}" for n in range(1, size)}


# ---- start-up figures ----------------------------------------------------------------------------
@dataclass
class ImportCost:
    name: str
    self_us: int
    cumulative_us: int
    depth: int


def parse_importtime(stderr: str) -> list[ImportCost]:
    """`python -X importtime` lines: `import time: self [us] | cumulative | <indent>package`."""
    out = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            out.append(ImportCost(m.group(4), int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2))
    return out


def import_groups(costs: list[ImportCost]) -> dict[str, int]:
    """Self time (us) summed by top-level package (pyroute2, jsonschema, multiplex, ...)."""
    groups: dict[str, int] = {}
    for c in costs:
        root = c.name.split(".")[0]
        groups[root] = groups.get(root, 0) + c.self_us
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))
