"""Benchmark: pods whose networks are chosen by annotation through the Kubernetes API, beside the
same attachments chosen from local NAD files and the reference chain, and where the API case's
time goes: the Kubernetes client's import and credentials, the API requests, the delegates'
netlink work, the network-status patch, and the rest (interpreter, other imports).

The node is the one of tests/perf/test_bench_add_del.py (bench.py, runner.py): one node netns, a
runtime stand-in in it that execs the plugins, a fresh pod netns per run, the sides interleaved run
by run. Pods have 1, 2 or 4 bridge attachments: the cluster network (`podnet`, on eth0) and 0, 1
or 3 networks named in the pod's `k8s.v1.cni.cncf.io/networks` annotation (`blue, green, violet`).
The same NADs (the same bridges, subnets and IPAM state) are served two ways:

- api: multiplex with `kubeconfig`: it reads the pod and every NAD (the cluster network's too) from
  the test API server (tests/k8s/apiserver.py, over HTTPS with a bearer token as a node's service
  account has it, listening on the node netns' own loopback) and patches network-status back;
- files: multiplex with `nadDir`/`podDir`: the same pod and NADs as local files, no API;
- reference: Debian's `bridge` + `host-local`, one exec per attachment;
- api warm: the api case in the runner's warm process (everything imported): its `attach_ms` is the
  netlink and IPAM work alone, without the imports a cold process pays inside the delegates.

The split comes from the "ADD done" line each ADD writes to the multiplex log (see
multiplex.meta.orchestrator.log_timings). DEL works from the cache and never calls the API: asserted
(the server sees no request during any DEL, and an api DEL under `python -X importtime` imports no
`kubernetes` module) and shown (api DEL beside files DEL). Last, one api and one files pod under
`-X importtime` list the modules only the API path imports.

No figure fails the test. Asserted: every ADD gave the pod its interfaces and wrote a network-status
listing them; every DEL left the pod with `lo` only; at the end no veth, lease, cache entry or
host-local reservation remains. RUNS: MULTIPLEX_BENCH_API_RUNS (10). Figures: docs/performance.md.
"""
from __future__ import annotations

import ipaddress
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import pytest

from tests.cnitool import links
from tests.k8s.apiserver import ApiServer, running_apiserver
from tests.netns.mpxlab import Lab, nad
from tests.perf.bench import (MPX_BASE, MULTIPLEX, PYTHON, SIZES, Bench, Runner, Timed, expected_links,
                              import_groups, median, mpx_networks, ms, p95, parse_importtime, table)

pytestmark = [pytest.mark.perf, pytest.mark.root, pytest.mark.k8s]

RUNS = int(os.environ.get("MULTIPLEX_BENCH_API_RUNS", "10"))
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
SIDES = ("api", "files", "reference", "api warm")


@pytest.fixture(scope="module")
def pycache(tmp_path_factory) -> str:
    """Bytecode of exec'd multiplex processes, kept across calls as an installed wheel's would be."""
    return str(tmp_path_factory.mktemp("pycache"))


@pytest.fixture
def apiserver(node, tmp_path):
    """The test API server on the node's own loopback, HTTPS + bearer token like a real node's kubeconfig."""
    (tmp_path / "api").mkdir()
    with running_apiserver(str(tmp_path / "api"), netns=f"/var/run/netns/{node}", tls=True,
                           token="bench-token") as server:
        yield server


@pytest.fixture
def api_bench(node, netns_factory, tmp_path, pycache, apiserver) -> "ApiBench":
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    bench = Bench.build(lab, str(tmp_path), pycache=pycache)     # local NAD files: the "files" side
    for name, conf in mpx_networks():                              # the same NADs in the API
        apiserver.store.add_nad(name, "default", nad(name, conf)["spec"]["config"])
    return ApiBench(bench, apiserver, AddLog(os.path.join(str(tmp_path), "multiplex.log")))


@pytest.fixture
def runner(node, tmp_path):
    r = Runner(node, str(tmp_path / "runner.log"))
    yield r
    r.close()


# ---- the ADD timings multiplex logs ----------------------------------------------------------
class AddLog:
    """Reads the multiplex log file from where it was left: the "ADD done" line of the last ADD."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0

    def skip(self) -> None:
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def last_add(self) -> dict:
        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            lines = [json.loads(line) for line in f if line.strip()]
            self.offset = f.tell()
        done = [rec for rec in lines if rec.get("msg") == "ADD done"]
        assert len(done) == 1, f"expected one 'ADD done' line in {self.path}, got {done}"
        return done[0]


# ---- one pod per side ------------------------------------------------------------------------
@dataclass
class ApiBench:
    bench: Bench
    api: ApiServer
    log: AddLog

    @property
    def lab(self) -> Lab:
        return self.bench.lab

    def stdin(self, via_api: bool) -> str:
        conf = self.lab.config(logLevel="info")
        if via_api:
            conf["kubeconfig"] = self.api.kubeconfig
            del conf["nadDir"], conf["podDir"]
        return json.dumps(conf)

    def add_pod(self, pod: str, size: int, via_api: bool) -> str:
        """The pod with its annotation, in the API or as a file; returns its UID."""
        networks = self.bench.annotations[size]
        if via_api:
            annotations = {NETWORKS_ANNOTATION: networks} if networks else {}
            obj = self.api.store.add_pod(pod, "default", annotations=annotations)
            return obj["metadata"]["uid"]
        self.lab.add_pod(pod, networks or None)
        return f"uid-{pod}"

    def network_status(self, pod: str, via_api: bool) -> list[dict]:
        if via_api:
            return json.loads(self.api.store.get_pod(pod, "default")["metadata"]["annotations"][STATUS_ANNOTATION])
        return self.lab.pod_status(pod)

    def env(self, command: str, pod: str, ns: str, uid: str) -> dict:
        env = self.bench.mpx_env(command, pod, ns)
        env["CNI_ARGS"] += f";K8S_POD_UID={uid}"
        return env


@dataclass
class PodRun:
    add: Timed
    dele: Timed
    timings: dict                # the "ADD done" log line
    add_requests: int            # requests the API server saw during ADD / DEL
    del_requests: int


def multiplex_pod(ab: ApiBench, runner: Runner, pod: str, size: int, via_api: bool, warm: bool = False,
                  argv: Optional[list[str]] = None) -> PodRun:
    """ADD then DEL one pod through multiplex, exec'd (or in the runner's warm process), networks
    from the API or from files. Checked: interfaces, cluster address and network-status after ADD;
    `lo` alone after DEL, and no API request during DEL."""
    uid = ab.add_pod(pod, size, via_api)
    ns = ab.lab.netns_factory("bp")
    stdin = ab.stdin(via_api)
    timed: dict[str, Timed] = {}
    requests: dict[str, int] = {}
    for command in ("ADD", "DEL"):
        ab.log.skip()
        before = ab.api.count()
        env = ab.env(command, pod, ns, uid)
        if warm:
            timed[command] = runner.call(env, stdin)
        else:
            timed[command] = runner.exec([{"argv": argv or [MULTIPLEX], "env": env, "stdin": stdin}])
        requests[command] = ab.api.count() - before
        assert timed[command].ok, timed[command]
        if command == "ADD":
            timings = ab.log.last_add()
            result = timed["ADD"].out()
            assert [ipaddress.ip_interface(ip["address"]) in ipaddress.ip_network(f"198.18.{MPX_BASE}.0/24")
                    for ip in result["ips"]] == [True], result
            assert links(ns) == expected_links(size)
            status = ab.network_status(pod, via_api)
            assert [s["interface"] for s in status] == ["eth0"] + [f"net{n}" for n in range(1, size)], status
    assert links(ns) == {"lo"}
    assert requests["DEL"] == 0, f"DEL made {requests['DEL']} API requests"
    if not via_api:
        assert requests["ADD"] == 0
    return PodRun(timed["ADD"], timed["DEL"], timings, requests["ADD"], requests["DEL"])


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


# ---- samples and tables ----------------------------------------------------------------------
@dataclass
class Samples:
    seconds: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)   # (op, side, size)
    cpu: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    timings: dict[tuple[str, int], list[dict]] = field(default_factory=dict)         # (side, size): ADD lines
    requests: dict[tuple[str, int], list[int]] = field(default_factory=dict)        # (side, size): server count

    def record(self, side: str, size: int, add: Timed, dele: Timed, run: Optional[PodRun] = None) -> None:
        for op, t in (("ADD", add), ("DEL", dele)):
            self.seconds.setdefault((op, side, size), []).append(t.seconds)
            self.cpu.setdefault((op, side, size), []).append(t.cpu)
        if run is not None:
            self.timings.setdefault((side, size), []).append(dict(run.timings, wall_ms=add.seconds * 1000))
            self.requests.setdefault((side, size), []).append(run.add_requests)

    def cols(self, op: str, side: str, size: int) -> list[float]:
        xs = self.seconds[(op, side, size)]
        return [median(xs), p95(xs), median(self.cpu[(op, side, size)])]

    def part(self, side: str, size: int, fn) -> float:
        """Median over runs of fn(ADD done line) (ms)."""
        return median([fn(t) for t in self.timings[(side, size)]])


def latency_table(s: Samples, runs: int) -> str:
    rows = []
    for op in ("ADD", "DEL"):
        for size in SIZES:
            api, files, ref = (s.cols(op, side, size) for side in ("api", "files", "reference"))
            rows.append([op, str(size), *map(ms, api), *map(ms, files), *map(ms, ref[:2]),
                         f"{(api[0] - files[0]) * 1000:+6.1f}", f"{api[0] / ref[0]:5.2f}x"])
    return (f"ADD/DEL latency (ms), {runs} runs each; pods of 1/2/4 bridge attachments = the cluster network + "
            "0/1/3 networks named by annotation (api: pod and NADs from the API server, network-status patched; "
            "files: the same from nadDir/podDir; reference: bridge + host-local, one exec per attachment; "
            "cpu: user+system of the exec'd processes)\n"
            + table(["op", "attachments", "api median", "p95", "cpu", "files median", "p95", "cpu",
                     "reference median", "p95", "api - files", "api / reference"], rows))


def split_table(s: Samples) -> str:
    """The api ADD (cold, then warm) split into parts that add up to its wall clock."""
    rows = []
    for side in ("api", "api warm", "files"):
        for size in SIZES:
            setup = s.part(side, size, lambda t: t.get("api_setup_ms", 0.0))
            req = s.part(side, size, lambda t: t.get("api_request_ms", 0.0))
            n = median([float(x) for x in s.requests[(side, size)]])
            select = s.part(side, size, lambda t: t["select_ms"] - t.get("api_setup_ms", 0.0))
            attach = s.part(side, size, lambda t: t["attach_ms"])
            status = s.part(side, size, lambda t: t["status_ms"])
            rest = s.part(side, size, lambda t: t["wall_ms"] - t["select_ms"] - t["attach_ms"] - t["status_ms"])
            wall = s.part(side, size, lambda t: t["wall_ms"])
            rows.append([side, str(size), f"{wall:6.1f}", f"{setup:6.1f}", f"{req:6.1f}", f"{n:.0f}",
                         f"{select:6.1f}", f"{attach:6.1f}", f"{status:6.1f}", f"{rest:6.1f}"])
    return ("ADD: where the time goes (ms, medians over runs of each part, from the 'ADD done' log line; "
            "the parts of one run add up to its total). kubernetes import + credentials = api_setup_ms; "
            "API requests = api_request_ms, every request of the ADD (the network-status patch included) "
            "and their count; select = pod + NAD lookups (the requests, parsing), without the import; "
            "attach = attach_ms, the delegates (config validation, netlink, IPAM; cold, with the pyroute2 and "
            "jsonschema imports); status = the network-status patch (its request included); rest = interpreter "
            "start and exit, entry imports, config parsing, cache and lock (warm: the runner's call overhead)\n"
            + table(["side", "attachments", "total", "kubernetes import + credentials", "API requests", "n",
                     "select", "attach", "status", "rest"], rows))


def one_round(ab: ApiBench, runner: Runner, tag: str, samples: Optional[Samples]) -> None:
    for size in SIZES:
        for side in SIDES:
            pod = f"{side[0]}{'w' if 'warm' in side else ''}{size}-{tag}"
            if side == "reference":
                add, dele = reference_pod(ab.bench, runner, pod, size)
                run = None
            else:
                run = multiplex_pod(ab, runner, pod, size, via_api=side != "files", warm=side == "api warm")
                add, dele = run.add, run.dele
            if samples is not None:
                samples.record(side, size, add, dele, run)


def machine() -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average (1/5/15 min) {load}"


def import_summary(ab: ApiBench, runner: Runner) -> str:
    """One api pod and one files pod (4 attachments) under `python -X importtime`: the modules only
    the API path imports, by package. Asserted: the api DEL imports no kubernetes module."""
    imports = {}
    for via_api in (True, False):
        run = multiplex_pod(ab, runner, f"imp-{'api' if via_api else 'files'}", 4, via_api=via_api,
                            argv=[PYTHON, "-X", "importtime", MULTIPLEX])
        imports[via_api] = [parse_importtime(t.results[0]["stderr"]) for t in (run.add, run.dele)]
    (api_add, api_del), (files_add, files_del) = imports[True], imports[False]
    assert not [c.name for c in api_del if c.name.split(".")[0] == "kubernetes"], "DEL imported kubernetes"
    seen = {c.name for c in files_add}
    only_api = [c for c in api_add if c.name not in seen]
    groups = list(import_groups(only_api).items())
    count = Counter(c.name.split(".")[0] for c in only_api)
    rows = [[name, str(count[name]), f"{us / 1000:6.1f}"] for name, us in groups[:8]]
    if groups[8:]:
        rest = groups[8:]
        rows.append([f"({len(rest)} others)", str(sum(count[n] for n, _ in rest)),
                     f"{sum(us for _, us in rest) / 1000:6.1f}"])
    total = lambda costs: sum(c.self_us for c in costs) / 1000  # noqa: E731
    return (f"modules imported (python -X importtime, one pod of 4 attachments): ADD api {len(api_add)}, "
            f"files {len(files_add)}; DEL api {len(api_del)}, files {len(files_del)} (no kubernetes module); "
            f"import time, sum of self: ADD api {total(api_add):.1f} ms, files {total(files_add):.1f} ms\n"
            f"modules only the api ADD imports: {len(only_api)}, {total(only_api):.1f} ms (self), by package\n"
            + table(["package", "modules", "self ms"], rows))


def test_add_del_with_networks_chosen_by_annotation_through_the_api(api_bench, runner, capsys):
    before = machine()
    one_round(api_bench, runner, "warmup", None)  # not counted: bridges, bytecode, the warm imports
    samples = Samples()
    for i in range(RUNS):
        one_round(api_bench, runner, str(i), samples)
    imports = import_summary(api_bench, runner)
    # every ADD through the API read the pod and each NAD, patched the status and left one
    # AddedInterface Event per attachment; DEL asked nothing
    for size in SIZES:
        assert set(samples.requests[("api", size)]) == {2 * size + 2}, samples.requests[("api", size)]
    lab = api_bench.lab
    assert lab.node_links("veth") == set()
    assert lab.leases() == [] and lab.cache_entries() == []
    assert api_bench.bench.host_local_leases() == []
    with capsys.disabled():
        print(f"\n\nbefore: {before}\nafter:  {machine()}\n\n" + latency_table(samples, RUNS) + "\n\n"
              + split_table(samples) + "\n\n" + imports + "\n")
