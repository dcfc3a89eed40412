"""Benchmark: multiplex in daemon mode (the shim exec'd by the runtime, the node daemon doing the
work warm) beside the reference chain, today's one-shot `multiplex`, and the kernel's own floor;
a burst of pods on one node; and the Kubernetes path. Printed in one run:

1. ADD and DEL latency, median and p95, for pods of 1 / 2 / 4 bridge attachments: daemon mode
   (the shim, exec'd by the runtime stand-in tests/perf/runner.py in the node netns, talking to a
   real `multiplex daemon` started in that netns by tests/daemonproc.py) against the reference
   chain (Debian's `bridge` + `host-local`, one exec per attachment) and the one-shot `multiplex`
   exec, with ratios to the reference and the issue's aims beside them (printed, not asserted:
   ADD <= 1x the reference for 1 attachment and <= 0.6x for 4; DEL <= 0.5x for 4). The shim's own
   start-up is printed next to `python3 -I -S -c pass`: the shim with no daemon at its socket and
   the `fail` fallback, and a VERSION call answered by the daemon.
2. The raw netlink floor (tests/perf/floor.py: a veth into a fresh pod netns, its host end on a
   bridge, an address, up, in one warm process with multiplex's own netlink layer) per pod, and
   beside it the daemon's warm work per call: the server's own time for that call, read from its
   metrics histogram (the `_sum` grows by exactly that call's time; calls are serial here). Aim:
   within 1.5x of the floor (per attachment).
3. A burst: BURST pods ADDed at once through the shim (one thread per pod in the node netns,
   tests/perf/burst.py, each pod its own netns and one attachment), then DELed at once; a call
   answered with code 11 is retried with back-off, as a runtime does. Printed: errors, retries,
   p50 / p99, pods per second, the daemon's peak RSS (VmHWM), and the same burst through the
   reference chain.
4. Through the Kubernetes API (the test API server, as tests/perf/test_bench_api.py): the API
   requests the daemon makes per ADD when its watch cache has the pod and NADs (asserted: no
   read), and ADD latency through the daemon against today's one-shot path reading the API.

Asserted, never timed: every ADD gave the pod its interfaces with an address of the cluster network,
every DEL left the pod with `lo` alone, a burst ended with no error (or only code-11 refusals that
succeeded when retried), and at the end no veth, lease, cache entry or host-local reservation is
left. RUNS: MULTIPLEX_BENCH_DAEMON_RUNS (10); BURST: MULTIPLEX_BENCH_BURST (200). Figures and how to
read them: docs/performance.md, "Daemon mode".
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

import pytest

from tests.cnitool import links
from tests.daemonproc import DaemonProcess, shim_path
from tests.k8s.apiserver import running_apiserver
from tests.netns.mpxlab import Lab
from tests.perf.bench import (MPX_BASE, MULTIPLEX, PYTHON, REF_BASE, SIZES, Bench, Runner, Timed, expected_links,
                              REPO, median, mpx_networks, ms, p95, process_env, table)
from tests.perf.daemonbench import (BurstRun, FloorProcess, Metrics, metrics, percentile, run_burst, status_kb)

pytestmark = [pytest.mark.perf, pytest.mark.root]

RUNS = int(os.environ.get("MULTIPLEX_BENCH_DAEMON_RUNS", "10"))
BURST = int(os.environ.get("MULTIPLEX_BENCH_BURST", "200"))
FLOOR_SUBNET = "198.18.30.0/24"
#: the issue's aims, printed beside the figures (never asserted: the machine is shared)
AIMS = {("ADD", 1): 1.0, ("ADD", 4): 0.6, ("DEL", 4): 0.5}
FLOOR_AIM = 1.5
#: the daemon's controllers: "none" (the CNI path alone) or "all" (as a node runs it)
CONTROLLERS = os.environ.get("MULTIPLEX_BENCH_DAEMON_CONTROLLERS", "none")


def machine() -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average (1/5/15 min) {load}"


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


# ---- the daemon side -------------------------------------------------------------------------
@dataclass
class Daemon:
    """A running `multiplex daemon` in the node netns and the shim that talks to it."""
    node: str
    pid: int
    shim: str                   # the installed shim, as `multiplex install --daemon` writes it
    metrics_address: str        # HOST:PORT on the node netns' loopback
    #: the server's request histogram (multiplex/daemon/metrics.py: time from accept to answer)
    histogram: str = "multiplex_cni_request_seconds"

    def scrape(self) -> Metrics:
        return metrics(self.node, self.metrics_address)

    def server_seconds(self, before: Metrics, command: str) -> float:
        """The server's own time for the one call made since the scrape `before`. The server
        observes a call just after sending its answer, so the shim may exit first: scrape until
        the call shows (a few ms at most)."""
        count, total = self.histogram + "_count", self.histogram + "_sum"
        limit = time.monotonic() + 5.0
        while True:
            after = self.scrape()
            grew = after.value(count, command=command) - before.value(count, command=command)
            if grew >= 1 or time.monotonic() > limit:
                break
            time.sleep(0.002)
        assert grew == 1, f"expected one {command} in {self.histogram}, saw {grew}"
        return after.value(total, command=command) - before.value(total, command=command)

    def peak_rss_mb(self) -> float:
        kb = status_kb(self.pid, "VmHWM")
        assert kb is not None, f"the daemon (pid {self.pid}) is gone"
        return kb / 1024



@pytest.fixture
def daemon(node, tmp_path, bench):
    """`multiplex daemon` in the node netns as a node runs it (log level info, its default workers,
    queue and controllers; no cluster: an empty local object directory), the calls' state dir the
    lab's; the shim installed for it with the `fail` fallback, so a call that does not reach the
    daemon shows as an error instead of silently taking the one-shot path."""
    log = str(tmp_path / "daemon.log")
    with DaemonProcess(bench.lab.state_dir, str(tmp_path / "run" / "multiplex.sock"), netns=node,
                       local_dir=str(tmp_path / "objects"), controllers=CONTROLLERS,
                       extra_args=["--log-level", "info", "--log-file", log]) as proc:
        assert proc.pid is not None
        yield Daemon(node=node, pid=proc.pid, shim=shim_path(tmp_path / "bin", proc.socket_path, fallback="fail"),
                     metrics_address=proc.metrics_address)


@pytest.fixture
def unreachable_shim(tmp_path) -> str:
    """The shim with no daemon at its socket and the `fail` fallback."""
    return shim_path(tmp_path / "nobin", str(tmp_path / "nothing-here.sock"), fallback="fail")

# ---- one pod per side ------------------------------------------------------------------------
def check_add(t: Timed, ns: str, size: int, base: int) -> None:
    """The ADD did its job: the pod has eth0, net1... and eth0 an address of the cluster network."""
    assert t.ok, t
    ips = t.out(0)["ips"]       # multiplex: the pod's result; reference: the first (eth0) bridge's
    subnet = ipaddress.ip_network(f"198.18.{base}.0/24")
    assert [ipaddress.ip_interface(ip["address"]) in subnet for ip in ips] == [True], ips
    assert links(ns) == expected_links(size)


def multiplex_pod(bench: Bench, runner: Runner, pod: str, size: int, argv: list[str],
                  daemon: Optional[Daemon] = None) -> tuple[Timed, Timed, dict[str, float]]:
    """ADD then DEL one pod through multiplex exec'd as `argv` (the shim, or the one-shot
    `multiplex`). With `daemon`, also the server's own time per call, from its metrics."""
    bench.mpx_pod(pod, size)
    ns = bench.lab.netns_factory("bp")
    timed: dict[str, Timed] = {}
    server: dict[str, float] = {}
    for command in ("ADD", "DEL"):
        before = daemon.scrape() if daemon else None
        timed[command] = runner.exec([bench.mpx_exec(command, pod, ns, argv=argv)])
        if daemon and before is not None:
            server[command] = daemon.server_seconds(before, command)
        if command == "ADD":
            check_add(timed["ADD"], ns, size, MPX_BASE)
        assert timed[command].ok, timed[command]
    assert links(ns) == {"lo"}
    return timed["ADD"], timed["DEL"], server


def reference_pod(bench: Bench, runner: Runner, pod: str, size: int) -> tuple[Timed, Timed]:
    """ADD then DEL one pod through the reference bridge + host-local, one exec per attachment."""
    ns = bench.lab.netns_factory("bp")
    add = runner.exec(bench.ref_calls("ADD", pod, ns, size))
    assert add.ok and len(add.results) == size, add
    check_add(add, ns, size, REF_BASE)
    dele = runner.exec(bench.ref_calls("DEL", pod, ns, size, prev=[add.out(k) for k in range(size)]))
    assert dele.ok, dele
    assert links(ns) == {"lo"}
    return add, dele


# ---- samples ---------------------------------------------------------------------------------
SIDES = ("daemon", "reference", "one-shot")


@dataclass
class Samples:
    seconds: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)   # (op, side, size)
    server: dict[tuple[str, int], list[float]] = field(default_factory=dict)         # (op, size)
    floor: dict[tuple[str, int], list[float]] = field(default_factory=dict)          # (op, size)

    def record(self, side: str, size: int, add: Timed, dele: Timed) -> None:
        for op, t in (("ADD", add), ("DEL", dele)):
            self.seconds.setdefault((op, side, size), []).append(t.seconds)

    def cols(self, op: str, side: str, size: int) -> tuple[float, float]:
        xs = self.seconds[(op, side, size)]
        return median(xs), p95(xs)


def one_round(bench: Bench, runner: Runner, daemon: Daemon, floor: FloorProcess, tag: str,
              samples: Optional[Samples]) -> None:
    """One pod per side and size, interleaved, the floor's pod of that size among them."""
    for size in SIZES:
        for side in SIDES:
            pod = f"{side[0]}{size}-{tag}"
            if side == "reference":
                add, dele = reference_pod(bench, runner, pod, size)
            elif side == "daemon":
                add, dele, server = multiplex_pod(bench, runner, pod, size, [daemon.shim], daemon)
                if samples is not None:
                    for op, s in server.items():
                        samples.server.setdefault((op, size), []).append(s)
            else:
                add, dele, _ = multiplex_pod(bench, runner, pod, size, [MULTIPLEX])
            if samples is not None:
                samples.record(side, size, add, dele)
        ns = bench.lab.netns_factory("bf")
        got = floor.pod(ns, size)
        assert set(got["links"]) == expected_links(size), got
        assert links(ns) == {"lo"}
        if samples is not None:
            samples.floor.setdefault(("ADD", size), []).append(got["add"])
            samples.floor.setdefault(("DEL", size), []).append(got["del"])


def aim(op: str, size: int, ratio: float) -> str:
    want = AIMS.get((op, size))
    if want is None:
        return ""
    return f"<= {want:.1f}x: {'met' if ratio <= want else 'NOT met'}"


def latency_table(s: Samples, runs: int) -> str:
    rows = []
    for op in ("ADD", "DEL"):
        for size in SIZES:
            d, r, o = (s.cols(op, side, size) for side in SIDES)
            ratio = d[0] / r[0]
            rows.append([op, str(size), ms(d[0]), ms(d[1]), ms(r[0]), ms(r[1]), ms(o[0]), ms(o[1]),
                         f"{ratio:5.2f}x", f"{o[0] / r[0]:5.2f}x", aim(op, size, ratio)])
    return (f"ADD/DEL latency (ms), {runs} runs each, pods of 1/2/4 bridge attachments, exec'd by the runtime "
            "stand-in in the node netns (daemon: the shim -> multiplex daemon; reference: bridge + host-local, one "
            "exec per attachment; one-shot: today's multiplex exec)\n"
            + table(["op", "attachments", "daemon median", "p95", "reference median", "p95", "one-shot median",
                     "p95", "daemon / ref", "one-shot / ref", "aim (daemon / ref)"], rows))


def floor_table(s: Samples) -> str:
    rows = []
    for op in ("ADD", "DEL"):
        for size in SIZES:
            floor = median(s.floor[(op, size)])
            work = s.server[(op, size)]
            ratio = median(work) / floor
            rows.append([op, str(size), ms(floor), ms(median(work)), ms(p95(work)),
                         ms(s.cols(op, "daemon", size)[0] - median(work)), f"{ratio:5.2f}x",
                         (f"<= {FLOOR_AIM}x: {'met' if ratio <= FLOOR_AIM else 'NOT met'}" if op == "ADD" else "")])
    return ("the daemon's warm work against the raw netlink floor (ms, medians). floor: the pod's interfaces made "
            "in one warm process (tests/perf/floor.py: per interface a veth into the pod netns, host end on a bridge, "
            "address, up; DEL: the host ends deleted as one link group). server work: the daemon's own time for the "
            "call, accept to answer (its request histogram). shim + socket: the daemon side's latency minus the "
            "server work\n"
            + table(["op", "attachments", "floor", "server work", "p95", "shim + socket", "work / floor",
                     "aim (ADD)"], rows))


# ---- start-up ----------------------------------------------------------------------------------
def startup_table(runner: Runner, daemon: Daemon, unreachable_shim: str, runs: int) -> str:
    """The shim's own start-up beside the bare interpreter: with no daemon at its socket (fallback
    `fail`: it prints code 11 and exits) and with a VERSION call the daemon answers."""
    env = {k: v for k, v in process_env().items() if k != "CNI_COMMAND"}
    cases = [("python3 -I -S -c pass", [PYTHON, "-I", "-S", "-c", "pass"], {}, 0),
             ("shim, no daemon (fallback fail: code 11)", [unreachable_shim], {"CNI_COMMAND": "ADD"}, 1),
             ("shim VERSION, answered by the daemon", [daemon.shim], {"CNI_COMMAND": "VERSION"}, 0),
             ("one-shot multiplex VERSION", [MULTIPLEX], {"CNI_COMMAND": "VERSION"}, 0)]
    rows = []
    for what, argv, extra, rc in cases:
        call = {"argv": argv, "env": dict(env, **extra), "stdin": "{}" if rc else ""}
        xs = []
        for k in range(runs + 1):
            t = runner.exec([call])
            assert t.results[0]["rc"] == rc, (what, t)
            if rc:
                assert t.out()["code"] == 11, t
            elif "VERSION" in what:
                assert "1.1.0" in t.out()["supportedVersions"], t
            if k:
                xs.append(t.seconds)                # the first run warms the page cache
        rows.append([what, ms(median(xs)), ms(p95(xs))])
    return "start-up (ms; exec'd by the runtime stand-in)\n" + table(["what", "median", "p95"], rows)


# ---- 1 and 2: latency, beside the reference, the one-shot path and the floor ---------------------
def test_daemon_mode_against_reference_one_shot_and_netlink_floor(bench, runner, daemon, unreachable_shim,
                                                                   node, tmp_path, capsys):
    before = machine()
    floor = FloorProcess(node, f"flr{os.getpid() % 100000}", FLOOR_SUBNET, str(tmp_path / "floor.log"))
    try:
        one_round(bench, runner, daemon, floor, "warmup", None)  # bridges made, bytecode written, imports paid
        samples = Samples()
        for i in range(RUNS):
            one_round(bench, runner, daemon, floor, str(i), samples)
    finally:
        floor.close()
    startup = startup_table(runner, daemon, unreachable_shim, RUNS)
    assert bench.lab.node_links("veth") == set()
    assert bench.lab.leases() == [] and bench.lab.cache_entries() == []
    assert bench.host_local_leases() == []
    with capsys.disabled():
        print(f"\n\nbefore: {before}\nafter:  {machine()}\n\n" + latency_table(samples, RUNS) + "\n\n"
              + floor_table(samples) + "\n\n" + startup + "\n")


# ---- 3: a burst of pods on one node --------------------------------------------------------------
@pytest.fixture
def burst_netns():
    """make(count) -> that many new pod netns, made (and deleted at teardown) with one `ip -batch`
    each way: a burst needs hundreds, and two execs per netns would cost seconds."""
    made: list[str] = []

    def make(count: int) -> list[str]:
        names = [f"mpxb{os.getpid() % 10000}-{uuid.uuid4().hex[:6]}" for _ in range(count)]
        made.extend(names)
        subprocess.run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names), text=True,
                       check=True)
        return names

    yield make
    if made:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in made), text=True,
                       capture_output=True)


@dataclass
class BurstSide:
    side: str
    add: BurstRun
    dele: BurstRun
    rss_mb: Optional[float] = None


def check_burst(run: BurstRun, what: str) -> None:
    """No error, or only code-11 refusals that succeeded when retried."""
    assert not run.failed, f"{what}: {len(run.failed)} pods failed, e.g. {run.failed[0]}"
    assert set(run.codes()) <= {11}, f"{what}: failed attempts with codes {run.codes()}"


def check_burst_addresses(run: BurstRun, base: int) -> None:
    """Every pod got an address of the cluster network, and no two the same."""
    subnet = ipaddress.ip_network(f"198.18.{base}.0/24")
    got = [ipaddress.ip_interface(p.out(0)["ips"][0]["address"]) for p in run.pods]
    assert all(a in subnet for a in got) and len(set(got)) == len(got), got


def burst_daemon(bench: Bench, daemon: Daemon, node: str, pods: list[str], nets: list[str]) -> BurstSide:
    for pod in pods:
        bench.mpx_pod(pod, 1)
    add = run_burst(node, [[bench.mpx_exec("ADD", pod, ns, argv=[daemon.shim])] for pod, ns in zip(pods, nets)])
    check_burst(add, "daemon ADD burst")
    check_burst_addresses(add, MPX_BASE)
    assert len(bench.lab.node_links("veth")) == len(pods)
    for ns in nets[:3] + nets[-3:]:
        assert links(ns) == {"lo", "eth0"}
    dele = run_burst(node, [[bench.mpx_exec("DEL", pod, ns, argv=[daemon.shim])] for pod, ns in zip(pods, nets)])
    check_burst(dele, "daemon DEL burst")
    assert bench.lab.node_links("veth") == set()
    assert bench.lab.leases() == [] and bench.lab.cache_entries() == []
    return BurstSide("daemon (shim)", add, dele, daemon.peak_rss_mb())


def burst_reference(bench: Bench, node: str, pods: list[str], nets: list[str]) -> BurstSide:
    add = run_burst(node, [bench.ref_calls("ADD", pod, ns, 1) for pod, ns in zip(pods, nets)])
    check_burst(add, "reference ADD burst")
    check_burst_addresses(add, REF_BASE)
    for ns in nets[:3] + nets[-3:]:
        assert links(ns) == {"lo", "eth0"}
    dele = run_burst(node, [bench.ref_calls("DEL", pod, ns, 1, prev=[p.out(0)])
                            for pod, ns, p in zip(pods, nets, add.pods)])
    check_burst(dele, "reference DEL burst")
    assert bench.lab.node_links("veth") == set()
    assert bench.host_local_leases() == []
    return BurstSide("reference (bridge + host-local)", add, dele)


def burst_table(sides: list[BurstSide], count: int) -> str:
    rows = []
    for s in sides:
        for op, run in (("ADD", s.add), ("DEL", s.dele)):
            xs = run.seconds()
            rows.append([s.side, op, str(len(run.failed)), str(run.retries), ms(percentile(xs, 50)),
                         ms(percentile(xs, 99)), ms(max(xs)), f"{run.rate:6.1f}", f"{run.wall:6.2f}",
                         f"{s.rss_mb:6.1f}" if s.rss_mb is not None else "-"])
    return (f"burst: {count} pods (1 attachment each, each its own netns) ADDed at once, then DELed at once, "
            "exec'd from one thread per pod in the node netns; a code-11 answer (the daemon's queue bound) is "
            "retried after a back-off doubling from 50 ms to 1 s. latency: a pod's first exec to its last answer (ms); "
            "pods/s: pods / wall clock of the whole burst; peak RSS: the daemon's VmHWM after its two bursts (MB)\n"
            + table(["side", "op", "errors", "code-11 retries", "p50", "p99", "max", "pods/s", "wall s",
                     "peak RSS"], rows))


def test_burst_of_pods_through_the_daemon_and_the_reference_chain(bench, runner, daemon, node, burst_netns,
                                                                  capsys):
    before = machine()
    multiplex_pod(bench, runner, "warmup", 1, [daemon.shim], daemon)   # the bridge made, first use paid
    reference_pod(bench, runner, "warmup", 1)
    nets = burst_netns(BURST)
    pods = [f"burst{k}" for k in range(BURST)]
    sides = [burst_daemon(bench, daemon, node, pods, nets), burst_reference(bench, node, pods, nets)]
    with capsys.disabled():
        print(f"\n\nbefore: {before}\nafter:  {machine()}\n\n" + burst_table(sides, BURST) + "\n")


# ---- 4: through the Kubernetes API ---------------------------------------------------------------
API_RUNS = int(os.environ.get("MULTIPLEX_BENCH_DAEMON_API_RUNS", "5"))
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
ELSEWHERE = "another-node"      # a pod on another node: the daemon's pod informer never holds it


@pytest.fixture
def apiserver(node, tmp_path):
    """The test API server on the node netns' own loopback, HTTPS + bearer token like a real node's kubeconfig."""
    (tmp_path / "api").mkdir()
    with running_apiserver(str(tmp_path / "api"), netns=f"/var/run/netns/{node}", tls=True,
                           token="bench-token") as server:
        yield server


@pytest.fixture
def kube_daemon(node, tmp_path, bench, apiserver):
    """The daemon watching the test API server (this node's pods, NADs), as in a cluster."""
    log = str(tmp_path / "kube-daemon.log")
    with DaemonProcess(bench.lab.state_dir, str(tmp_path / "kuberun" / "multiplex.sock"), netns=node,
                       kubeconfig=apiserver.kubeconfig, node_name=node, controllers=CONTROLLERS,
                       extra_args=["--log-level", "info", "--log-file", log]) as proc:
        assert proc.pid is not None
        yield Daemon(node=node, pid=proc.pid,
                     shim=shim_path(tmp_path / "kubebin", proc.socket_path, fallback="fail"),
                     metrics_address=proc.metrics_address)


@dataclass
class ApiPod:
    """One pod's ADD and DEL through the API path, and the requests the server saw during each."""
    add: Timed
    dele: Timed
    add_requests: dict[str, int]          # "verb resource" -> count, during ADD (watches aside)

    @property
    def reads(self) -> int:
        return sum(n for key, n in self.add_requests.items() if key.split()[0] in ("get", "list"))
    del_requests: int


def api_pod(bench: Bench, api, runner: Runner, pod: str, size: int, argv: list[str], node_name: str) -> ApiPod:
    """ADD then DEL one pod whose networks are in its annotation, read through the API. Checked:
    interfaces, address, the network-status written back; `lo` alone after DEL; DEL asked nothing."""
    networks = bench.annotations[size]
    uid = api.store.add_pod(pod, "default", annotations={NETWORKS_ANNOTATION: networks} if networks else {},
                            node_name=node_name)["metadata"]["uid"]
    ns = bench.lab.netns_factory("bk")
    conf = bench.lab.config(logLevel="info", kubeconfig=api.kubeconfig)
    del conf["nadDir"], conf["podDir"]
    timed: dict[str, Timed] = {}
    seen: dict[str, dict[str, int]] = {}
    for command in ("ADD", "DEL"):
        env = bench.mpx_env(command, pod, ns)
        env["CNI_ARGS"] += f";K8S_POD_UID={uid}"
        before = len(api.requests)
        timed[command] = runner.exec([{"argv": argv, "env": env, "stdin": json.dumps(conf)}])
        seen[command] = {}
        for r in api.requests[before:]:
            if r.verb != "watch":
                key = f"{r.verb} {r.resource}"
                seen[command][key] = seen[command].get(key, 0) + 1
        if command == "ADD":
            check_add(timed["ADD"], ns, size, MPX_BASE)
            status = json.loads(api.store.get_pod(pod, "default")["metadata"]["annotations"][STATUS_ANNOTATION])
            assert [s["interface"] for s in status] == ["eth0"] + [f"net{n}" for n in range(1, size)], status
        assert timed[command].ok, timed[command]
    assert links(ns) == {"lo"}
    assert sum(seen["DEL"].values()) == 0, f"DEL made API requests: {seen['DEL']}"
    return ApiPod(timed["ADD"], timed["DEL"], seen["ADD"], 0)


def wait_until_cached(bench: Bench, api, runner: Runner, daemon: Daemon, node: str) -> None:
    """Until the daemon's pod informer has caught up with the pods made so far: a probe pod made
    last is ADDed (and DELed) until its ADD reads nothing from the API. Watch events arrive in
    order, so every pod made before the probe is then cached too."""
    limit = time.monotonic() + 30
    for k in range(1000):
        got = api_pod(bench, api, runner, f"probe{k}", 1, [daemon.shim], node)
        if got.reads == 0:
            return
        assert time.monotonic() < limit, "the daemon's informer never caught up with the API server"
        time.sleep(0.1)


def api_table(rows_by: dict[tuple[str, int], list[ApiPod]]) -> str:
    rows = []
    for (side, size), pods in rows_by.items():
        adds = [p.add.seconds for p in pods]
        dels = [p.dele.seconds for p in pods]
        keys = sorted({k for p in pods for k in p.add_requests})
        reqs = ", ".join(f"{k} {median([float(p.add_requests.get(k, 0)) for p in pods]):.0f}" for k in keys)
        rows.append([side, str(size), ms(median(adds)), ms(p95(adds)), ms(median(dels)),
                     f"{median([float(p.reads) for p in pods]):.0f}", reqs])
    return ("through the Kubernetes API (the test API server on the node's loopback, HTTPS + token): ADD and DEL (ms, "
            "medians, p95); the API reads (GET, LIST) each ADD made, and all its requests by verb and resource "
            "(medians; watches aside; DEL made none, asserted). "
            "daemon: the pod and its NADs from the daemon's watch caches; daemon, cache miss: a pod the daemon's pod "
            "informer does not hold (bound to another node), read with one GET; one-shot: today's multiplex exec, "
            "which GETs the pod and every NAD\n"
            + table(["side", "attachments", "ADD median", "p95", "DEL median", "API reads per ADD",
                     "API requests per ADD"], rows))


def test_kubernetes_path_cache_hits_read_nothing_and_add_latency_against_one_shot(
        bench, runner, apiserver, kube_daemon, node, capsys):
    from tests.netns.mpxlab import nad

    for name, conf in mpx_networks():
        apiserver.store.add_nad(name, "default", nad(name, conf)["spec"]["config"])
    sides = {"daemon": ([kube_daemon.shim], node), "daemon, cache miss": ([kube_daemon.shim], ELSEWHERE),
             "one-shot": ([MULTIPLEX], node)}
    api_pod(bench, apiserver, runner, "warm1", 4, [MULTIPLEX], node)     # bytecode written
    wait_until_cached(bench, apiserver, runner, kube_daemon, node)
    got: dict[tuple[str, int], list[ApiPod]] = {}
    for i in range(API_RUNS):
        for size in SIZES:
            for side, (argv, node_name) in sides.items():
                pod = f"k{side[0]}{'m' if 'miss' in side else ''}{size}-{i}"
                got.setdefault((side, size), []).append(api_pod(bench, apiserver, runner, pod, size, argv, node_name))
    # the daemon's cache hits read nothing (the network-status PATCH is the one write); a miss reads
    # the pod once; the one-shot path reads the pod and every NAD
    for size in SIZES:
        for p in got[("daemon", size)]:
            assert p.reads == 0 and p.add_requests.get("patch pods") == 1, p.add_requests
        for p in got[("daemon, cache miss", size)]:
            assert p.reads == 1 and p.add_requests.get("get pods") == 1, p.add_requests
        for p in got[("one-shot", size)]:
            assert p.reads == size + 1 and p.add_requests.get("patch pods") == 1, p.add_requests
    assert bench.lab.node_links("veth") == set()
    assert bench.lab.leases() == [] and bench.lab.cache_entries() == []
    with capsys.disabled():
        print(f"\n\n{machine()}\n\n" + api_table(got) + "\n")


# ---- 5: where the daemon's time goes ---------------------------------------------------------------
PROFILED_DAEMON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiled_daemon.py")
PROFILE_RUNS = int(os.environ.get("MULTIPLEX_BENCH_DAEMON_PROFILE_RUNS", "8"))


class ProfiledDaemon(DaemonProcess):
    """The daemon run by tests/perf/profiled_daemon.py: each call's handler under cProfile."""

    def argv(self) -> list[str]:
        argv = super().argv()
        k = next(i for i, a in enumerate(argv) if os.path.basename(a) == "multiplex")
        return argv[:k] + [PYTHON, PROFILED_DAEMON] + argv[k + 1:]


def profile_tables(path: str, calls: int) -> str:
    """The profile's top functions by own time and by cumulative time (ms per profiled call)."""
    import pstats

    stats = pstats.Stats(path)
    entries = []
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{os.path.relpath(file, REPO) if file.startswith(REPO) else short_path(file)}:{line} {name}"
        entries.append((where, ncalls, tottime, cumtime))
    total = max(e[3] for e in entries)
    own = sorted(entries, key=lambda e: -e[2])[:15]
    cum = [e for e in sorted(entries, key=lambda e: -e[3]) if "multiplex" in e[0] or "delegates" in e[0]][:20]
    fmt = lambda es: [[w, f"{n / calls:.1f}", f"{t * 1000 / calls:6.2f}", f"{c * 1000 / calls:6.2f}"]  # noqa: E731
                      for w, n, t, c in es]
    heads = ["function", "calls per ADD", "own ms", "cumulative ms"]
    return (f"where the daemon's time goes: cProfile of the server's handler (cni/skel.run with the meta plugin) over "
            f"{calls} ADDs of pods of 4 attachments, per ADD; profiled total {total * 1000 / calls:.1f} ms per ADD "
            "(cProfile's own overhead included: pure-Python code such as pyroute2's message building is inflated)"
            "\n\ntop by own time\n" + table(heads, fmt(own))
            + "\n\nmultiplex's functions by cumulative time\n" + table(heads, fmt(cum)))


def short_path(file: str) -> str:
    """site-packages/pyroute2/x.py -> pyroute2/x.py; a stdlib file by its name."""
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            rest = file.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "lib/python3" and "/" in rest else rest
    return file


def test_where_the_daemons_time_goes(bench, runner, node, tmp_path, capsys):
    out = str(tmp_path / "daemon.prof")
    proc = ProfiledDaemon(bench.lab.state_dir, str(tmp_path / "profrun" / "multiplex.sock"), netns=node,
                          local_dir=str(tmp_path / "profobjects"), controllers=CONTROLLERS,
                          extra_args=["--log-level", "info", "--log-file", str(tmp_path / "prof-daemon.log")],
                          env=dict(os.environ, MULTIPLEX_PROFILE_OUT=out, MULTIPLEX_PROFILE_COMMANDS="ADD"))
    with proc:
        shim = shim_path(tmp_path / "profbin", proc.socket_path, fallback="fail")
        for i in range(PROFILE_RUNS):
            multiplex_pod(bench, runner, f"prof{i}", 4, [shim])
    assert proc.proc is not None and proc.proc.returncode == 0, proc.stderr()
    assert bench.lab.node_links("veth") == set() and bench.lab.leases() == []
    with capsys.disabled():
        print("\n\n" + profile_tables(out, PROFILE_RUNS) + "\n")
