"""Benchmark: ADD and DEL of a pod with 1, 2 and 4 bridge attachments, multiplex against Debian's
reference `bridge` + `host-local` exec'd once per attachment, and where multiplex's time goes.

Everything runs in one node netns, exec'd by a runtime stand-in living there (tests/perf/runner.py),
so neither side pays `ip netns exec`. Each run is a fresh pod netns; the sides are interleaved run
by run, so load from other work on the machine falls on all of them alike. Printed, in one run:

- ADD and DEL latency, median and p95 over RUNS runs, for multiplex exec'd as a runtime would (one
  call per pod, the cluster network on eth0 and the rest as attachments) and for the reference
  chain (one `bridge` exec per attachment, as a runtime with a plain conflist per network would),
  with their ratio;
- multiplex's split: the same ADD/DEL in a warm process that has imported everything (the work);
  start-up = cold total - warm work, itself split by a self-timing one-shot process
  (tests/perf/oneshot.py) into the interpreter's start and exit, the entry path's imports, and what
  the call imports lazily and builds on first use;
- the bare interpreter start, `multiplex` VERSION, and `python -X importtime` costs on the ADD path.

No figure fails a test (the machine is shared); what is asserted is that every call did its job:
the pod has its interfaces after ADD, nothing is left after DEL, no lease or cache entry remains.
Exec'd multiplex processes keep their bytecode in a tmp dir (PYTHONPYCACHEPREFIX), as an installed
wheel has it. Figures are written down in docs/performance.md. RUNS: MULTIPLEX_BENCH_RUNS (15).
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Optional

import pytest

from tests.cnitool import links
from tests.netns.mpxlab import Lab
from tests.perf.bench import (MPX_BASE, MULTIPLEX, ONESHOT, PYTHON, SIZES, Bench, Runner, Timed, expected_links,
                              import_groups, median, ms, p95, parse_importtime, process_env, table)

pytestmark = [pytest.mark.perf, pytest.mark.root]

RUNS = int(os.environ.get("MULTIPLEX_BENCH_RUNS", "15"))


@pytest.fixture(scope="module")
def pycache(tmp_path_factory) -> str:
    """Bytecode of exec'd multiplex processes, kept across calls as an installed wheel's would be."""
    return str(tmp_path_factory.mktemp("pycache"))


@pytest.fixture
def bench(node, netns_factory, tmp_path, pycache):
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    return Bench.build(lab, str(tmp_path), pycache=pycache)


@pytest.fixture
def runner(node, tmp_path):
    r = Runner(node, str(tmp_path / "runner.log"))
    yield r
    r.close()


# ---- one pod -------------------------------------------------------------------------------------
def multiplex_pod(bench: Bench, runner: Runner, pod: str, size: int, how: str = "exec",
                  argv: Optional[list[str]] = None, pycache: Optional[str] = None) -> tuple[Timed, Timed]:
    """ADD then DEL one pod through multiplex: exec'd as a runtime would (`how="exec"`, `argv` how
    the process starts) or called in the runner's warm process (`how="warm"`). Checked: the pod's
    interfaces and the cluster network's address after ADD, nothing in the pod after DEL."""
    bench.mpx_pod(pod, size)
    ns = bench.lab.netns_factory("bp")
    calls = {}
    for command in ("ADD", "DEL"):
        if how == "warm":
            calls[command] = runner.call(bench.mpx_env(command, pod, ns), bench.mpx_stdin())
        else:
            calls[command] = runner.exec([bench.mpx_exec(command, pod, ns, argv=argv, pycache=pycache)])
        assert calls[command].ok, calls[command]
        if command == "ADD":
            result = calls["ADD"].out()
            assert [ipaddress.ip_interface(ip["address"]) in ipaddress.ip_network(f"198.18.{MPX_BASE}.0/24")
                    for ip in result["ips"]] == [True], result
            assert links(ns) == expected_links(size)
    assert links(ns) == {"lo"}
    return calls["ADD"], calls["DEL"]


def reference_pod(bench: Bench, runner: Runner, pod: str, size: int) -> tuple[Timed, Timed]:
    """ADD then DEL one pod through the reference bridge + host-local, one exec per attachment."""
    ns = bench.lab.netns_factory("bp")
    add = runner.exec(bench.ref_calls("ADD", pod, ns, size))
    assert add.ok and len(add.results) == size, add
    assert links(ns) == expected_links(size)
    dele = runner.exec(bench.ref_calls("DEL", pod, ns, size, prev=[add.out(k) for k in range(size)]))
    assert dele.ok, dele
    assert links(ns) == {"lo"}
    return add, dele


# ---- start-up ------------------------------------------------------------------------------------
def timed_execs(runner: Runner, call: dict, runs: int) -> list[Timed]:
    out = []
    for _ in range(runs):
        t = runner.exec([call])
        assert t.ok, t
        out.append(t)
    return out


def row(what: str, ts: list[Timed]) -> list[str]:
    return [what, ms(median([t.seconds for t in ts])), ms(p95([t.seconds for t in ts])),
            ms(median([t.cpu for t in ts]))]


def total_ms(costs) -> float:
    return sum(c.self_us for c in costs) / 1000


def test_startup_costs_interpreter_version_and_imports_on_the_add_path(bench, runner, capsys):
    env = process_env(bench.pycache)
    bare = timed_execs(runner, {"argv": [PYTHON, "-c", "pass"], "env": env, "stdin": ""}, RUNS + 1)[1:]
    version_call = {"argv": [MULTIPLEX], "env": dict(env, CNI_COMMAND="VERSION"), "stdin": ""}
    version = timed_execs(runner, version_call, RUNS + 1)[1:]
    assert "1.1.0" in runner.exec([version_call]).out()["supportedVersions"]

    # bytecode: cached (as installed) against compiled from source at every call
    # (PYTHONDONTWRITEBYTECODE=1 and no __pycache__, as a source tree runs in this environment)
    multiplex_pod(bench, runner, "warmup", 4)
    no_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    cached: list[tuple[Timed, Timed]] = []
    nocache: list[tuple[Timed, Timed]] = []
    for i in range(max(3, RUNS // 4)):
        cached.append(multiplex_pod(bench, runner, f"c{i}", 4))
        if no_bytecode:
            nocache.append(multiplex_pod(bench, runner, f"n{i}", 4, pycache=""))

    # one ADD and DEL with -X importtime: which modules a cold call imports, and their cost
    importtime = [PYTHON, "-X", "importtime", MULTIPLEX]
    add, dele = multiplex_pod(bench, runner, "imp", 4, argv=importtime)
    v = runner.exec([dict(version_call, argv=importtime)])
    v_imports, add_imports, del_imports = (parse_importtime(t.results[0]["stderr"]) for t in (v, add, dele))

    rows = [row("python -c pass", bare), row("multiplex VERSION", version)]
    for op, k in (("ADD", 0), ("DEL", 1)):
        rows.append(row(f"multiplex {op}, 4 attachments, bytecode cached", [c[k] for c in cached]))
        if nocache:
            rows.append(row(f"multiplex {op}, 4 attachments, no bytecode (PYTHONDONTWRITEBYTECODE=1)",
                            [c[k] for c in nocache]))
    top = list(import_groups(add_imports).items())[:12]
    heavy = sorted((c for c in add_imports if c.depth == 0), key=lambda c: -c.cumulative_us)[:10]
    with capsys.disabled():
        print(f"\n\n{machine()}\nstart-up (ms; exec'd from the node netns)\n"
              + table(["what", "median", "p95", "cpu"], rows))
        print(f"\nmodules imported (python -X importtime): VERSION {len(v_imports)}, ADD {len(add_imports)}, "
              f"DEL {len(del_imports)}; import time, sum of self: VERSION {total_ms(v_imports):.1f} ms, "
              f"ADD {total_ms(add_imports):.1f} ms, DEL {total_ms(del_imports):.1f} ms "
              "(modules the registry loads with importlib.import_module are not itemised)")
        print("\nADD import time by package (self, ms)\n"
              + table(["package", "ms"], [[name, f"{us / 1000:6.1f}"] for name, us in top]))
        print("\nADD top-level imports by cumulative time (ms)\n"
              + table(["module", "cumulative"], [[c.name, f"{c.cumulative_us / 1000:6.1f}"] for c in heavy]) + "\n")


# ---- latency -------------------------------------------------------------------------------------
SIDES = ("multiplex", "reference", "warm", "oneshot")


@dataclass
class Samples:
    """Wall-clock and CPU seconds per (op, side, size); for the one-shot side also its own clocks."""
    seconds: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    cpu: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    clocks: dict[tuple[str, int], list[dict[str, float]]] = field(default_factory=dict)
    bare: list[float] = field(default_factory=list)      # `python -c pass`, once per round

    def record(self, side: str, size: int, add: Timed, dele: Timed) -> None:
        for op, t in (("ADD", add), ("DEL", dele)):
            self.seconds.setdefault((op, side, size), []).append(t.seconds)
            self.cpu.setdefault((op, side, size), []).append(t.cpu)
            if side == "oneshot":
                self.clocks.setdefault((op, size), []).append(dict(t.clocks(), wall=t.seconds))

    def median(self, op: str, side: str, size: int) -> float:
        return median(self.seconds[(op, side, size)])

    def p95(self, op: str, side: str, size: int) -> float:
        return p95(self.seconds[(op, side, size)])

    def cpu_median(self, op: str, side: str, size: int) -> float:
        return median(self.cpu[(op, side, size)])

    def clock(self, op: str, size: int, part: str) -> float:
        return median([c[part] for c in self.clocks[(op, size)]])


def one_round(bench: Bench, runner: Runner, tag: str, samples: Optional[Samples]) -> None:
    bare = runner.exec([{"argv": [PYTHON, "-c", "pass"], "env": process_env(bench.pycache), "stdin": ""}])
    assert bare.ok, bare
    if samples is not None:
        samples.bare.append(bare.seconds)
    for size in SIZES:
        for side in SIDES:
            pod = f"{side[0]}{size}-{tag}"
            if side == "reference":
                add, dele = reference_pod(bench, runner, pod, size)
            elif side == "warm":
                add, dele = multiplex_pod(bench, runner, pod, size, how="warm")
            elif side == "oneshot":
                add, dele = multiplex_pod(bench, runner, pod, size, argv=[PYTHON, ONESHOT])
            else:
                add, dele = multiplex_pod(bench, runner, pod, size)
            if samples is not None:
                samples.record(side, size, add, dele)


def latency_table(s: Samples, runs: int) -> str:
    rows = []
    for op in ("ADD", "DEL"):
        for size in SIZES:
            m = [s.median(op, "multiplex", size), s.p95(op, "multiplex", size), s.cpu_median(op, "multiplex", size)]
            r = [s.median(op, "reference", size), s.p95(op, "reference", size), s.cpu_median(op, "reference", size)]
            rows.append([op, str(size), *map(ms, m), *map(ms, r), f"{m[0] / r[0]:5.2f}x", f"{m[2] / r[2]:5.2f}x"])
    return (f"ADD/DEL latency (ms), {runs} runs each, pods of 1/2/4 bridge attachments "
            "(multiplex: one exec per pod; reference: bridge + host-local, one exec per attachment; "
            "cpu: user+system of the exec'd processes)\n"
            + table(["op", "attachments", "multiplex median", "p95", "cpu", "reference median", "p95", "cpu",
                     "ratio", "cpu ratio"], rows))


def split_table(s: Samples) -> str:
    rows = []
    bare = median(s.bare)
    for op in ("ADD", "DEL"):
        for size in SIZES:
            cold, warm, ref = (s.median(op, side, size) for side in ("multiplex", "warm", "reference"))
            imports, call, wall = (s.clock(op, size, part) for part in ("imports", "call", "wall"))
            rows.append([op, str(size), ms(cold), ms(warm), ms(s.p95(op, "warm", size)), ms(cold - warm), ms(bare),
                         ms(imports), ms(call - warm), ms(wall - imports - call - bare), f"{warm / ref:5.2f}x"])
    return ("multiplex: where the time goes (ms, medians). start-up = cold total - warm work, split by a "
            "self-timing one-shot process (tests/perf/oneshot.py) into: the bare interpreter (python -c pass), "
            "the entry path's imports, what the call imports lazily and builds on first use, and the rest "
            "(mostly the exit of a process holding ~500 modules)\n"
            + table(["op", "attachments", "cold total", "warm work", "warm p95", "start-up", "bare interpreter",
                     "entry imports", "lazy imports + first use", "exit + rest", "work / reference"], rows))


def machine() -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average (1/5/15 min) {load}"


def test_add_del_latency_multiplex_against_reference_bridge(bench, runner, capsys):
    before = machine()
    one_round(bench, runner, "warmup", None)  # not counted: bridges made, bytecode written, imports paid
    samples = Samples()
    for i in range(RUNS):
        one_round(bench, runner, str(i), samples)
    # nothing left behind by any side
    assert bench.lab.node_links("veth") == set()
    assert bench.lab.leases() == [] and bench.lab.cache_entries() == []
    assert bench.host_local_leases() == []
    with capsys.disabled():
        print(f"\n\nbefore: {before}\nafter:  {machine()}\n\n" + latency_table(samples, RUNS) + "\n\n"
              + split_table(samples) + "\n")
