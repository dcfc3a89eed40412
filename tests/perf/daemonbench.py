"""Helpers for the daemon benchmark (tests/perf/test_bench_daemon.py): the raw netlink floor's
process, the burst driver's run, the daemon's metrics read from its endpoint, peak RSS, and the
statistics the tables need beyond tests/perf/bench.py's.

The processes that do the work live in the node netns, as in tests/perf/bench.py: the floor
(tests/perf/floor.py) and the burst driver (tests/perf/burst.py) are started with `ip netns exec`
and then time themselves, so nothing here pays `ip netns exec` inside a clock. The daemon's metrics
endpoint listens on the node netns' loopback: `scrape` opens its socket from inside that netns
(multiplex.netlink.netns.entered, the calling thread only) and reads /metrics over it.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import re
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any, Optional

from multiplex.netlink.netns import entered
from tests.perf.bench import PYTHON, REPO

HERE = os.path.dirname(os.path.abspath(__file__))
FLOOR = os.path.join(HERE, "floor.py")
BURST = os.path.join(HERE, "burst.py")


# ---- statistics ----------------------------------------------------------------------------------
def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: an observed value, as a latency SLO reads it."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


# ---- the raw netlink floor -----------------------------------------------------------------------
class FloorProcess:
    """tests/perf/floor.py in the node netns, one warm process; `pod(netns)` times one pod there."""

    def __init__(self, node: str, bridge: str, subnet: str, log_path: str):
        self.count = 0
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", node, PYTHON, FLOOR], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
        self.ask({"op": "setup", "bridge": bridge, "subnet": subnet})

    def ask(self, req: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the floor process died (exit {self.proc.wait()}); see {self.log_path}")
        ans = json.loads(line)
        if "error" in ans:
            raise RuntimeError(f"the floor process failed: {ans['error']}")
        return ans

    def pod(self, netns: str, interfaces: int = 1) -> dict:
        """ADD then DEL of a pod's `interfaces` in /var/run/netns/`netns`: {"add": s, "del": s, "links"}."""
        self.count += 1
        return self.ask({"op": "pod", "netns": f"/var/run/netns/{netns}", "index": self.count,
                         "interfaces": interfaces})

    def close(self) -> None:
        """Deletes the floor's bridge (the process does it on quit) and waits for the process."""
        try:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


# ---- the burst driver ----------------------------------------------------------------------------
@dataclass
class PodOutcome:
    seconds: float
    rc: int
    retries: int
    codes: list[int]
    outputs: list[str]
    stderr: str

    def out(self, k: int = 0) -> Any:
        return json.loads(self.outputs[k])


@dataclass
class BurstRun:
    """One burst: every pod's outcome, and the wall clock from the start to the last pod's end."""
    wall: float
    pods: list[PodOutcome]

    @property
    def failed(self) -> list[PodOutcome]:
        return [p for p in self.pods if p.rc != 0]

    @property
    def retries(self) -> int:
        return sum(p.retries for p in self.pods)

    def codes(self) -> dict[int, int]:
        """CNI codes of every failed attempt (retried or not), with their count."""
        out: dict[int, int] = {}
        for p in self.pods:
            for c in p.codes:
                out[c] = out.get(c, 0) + 1
        return out

    def seconds(self) -> list[float]:
        return [p.seconds for p in self.pods]

    @property
    def rate(self) -> float:
        return len(self.pods) / self.wall if self.wall else 0.0


def run_burst(node: str, pods: list[list[dict]], timeout: float = 300.0, **retry: float) -> BurstRun:
    """Runs tests/perf/burst.py in the node netns on `pods` (each a chain of exec calls)."""
    req = json.dumps({"pods": pods, "retry": retry})
    proc = subprocess.run(["ip", "netns", "exec", node, PYTHON, BURST], input=req, capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the burst driver failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    ans = json.loads(proc.stdout)
    return BurstRun(ans["wall"], [PodOutcome(**p) for p in ans["pods"]])


# ---- the daemon: its metrics and its memory ------------------------------------------------------
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Metrics:
    """One scrape of a Prometheus text exposition: (name, {labels}) -> value."""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        out = cls()
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if m:
                labels = dict(_LABEL.findall(m.group(2) or ""))
                out.samples.append((m.group(1), labels, float(m.group(3))))
        return out

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
        return sum(v for n, ls, v in self.samples
                   if n == name and all(ls.get(k) == want for k, want in labels.items()))

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


def scrape(netns: str, address: str, path: str = "/metrics", timeout: float = 5.0) -> tuple[int, str]:
    """GET http://`address``path` from inside /var/run/netns/`netns`: (status, body)."""
    host, port = address.rsplit(":", 1)
    with entered(f"/var/run/netns/{netns}"):
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def metrics(netns: str, address: str) -> Metrics:
    status, body = scrape(netns, address)
    assert status == 200, f"/metrics answered {status}: {body[:400]}"
    return Metrics.parse(body)


def status_kb(pid: int, field_name: str) -> Optional[int]:
    """A `kB` field of /proc/PID/status (VmHWM: peak RSS, VmRSS: RSS now), or None when gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None

