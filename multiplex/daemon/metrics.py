"""The node daemon's metrics (prometheus-client) and its health endpoints.

CONTRACT (the server and the services call these): every method is cheap and thread-safe.

Why a registry of its own (not prometheus-client's global one): a test builds many daemons in one
process, and a metric name registered twice in the global registry is an error. The process
collectors (CPU, RSS, open fds) are added to it, since an operator watches the daemon's memory.

`prometheus_client` is imported when a Metrics is built, never at module import: nothing on the
CNI hot path (cni/, meta/, the shim) imports this module, and importing it stays free.

What is exported (all prefixed `multiplex_`):

| metric | labels | what |
|---|---|---|
| cni_requests_total | command, code | CNI calls answered (code 0: success) |
| cni_request_seconds | command | time from accept to answer (histogram) |
| cni_errors_total | code | calls answered with a CNI error |
| cni_requests_in_flight / cni_requests_queued | | gauges |
| cni_rejections_total | reason | calls refused at once (queue-full, stopping) |
| plugin_calls_total / plugin_seconds | type, command (+ code) | each delegate/IPAM/chained plugin call |
| ipam_pool_addresses_used / _size | pool, family | this node's SQLite store, read on scrape |
| watch_lag_seconds | kind | since the watch of that kind last proved itself current |
| controller_reconciles_total | controller, result | reconciles (result ok / error) |
| controller_reconcile_seconds | controller | histogram |
| controller_queue_depth | controller | keys waiting |
| ipam_gc_actions_total | action | what the IPAM GC did (freed, marked, released, ...) |
| ipam_gc_passes_total | result | GC passes (ok, error, skipped: another node holds the lease) |

`serve()` answers /healthz, /readyz and /metrics on a small HTTP server thread. The address is
what the admin gives (`--metrics-address`, loopback by default; the DaemonSet's
probes name host 127.0.0.1): a non-loopback address is served too (a Prometheus elsewhere may
need it) but logged as a warning, since the endpoints carry no authentication. They expose no
secret: pool names, plugin types and counts.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional

from ..util import log as _log

#: request and plugin latency buckets (seconds): CNI calls take ms to seconds
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, ipam_data_dir: Optional[str] = None, objects: Any = None,
                 kinds: Iterable[str] = ()):
        """`ipam_data_dir`: the node's SQLite IPAM directory (<state root>/ipam) whose pool use is
        exported, or None; `objects`: the ObjectSource whose started informers' watch lag is
        exported (`kinds`: which ones, for a source without `started()`; asking an ObjectSource for
        an informer starts it, so only kinds the daemon watches belong there)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        r = self.registry
        p = "multiplex_"
        self._requests = Counter(p + "cni_requests_total", "CNI calls answered, by command and CNI code (0: success)",
                                 ["command", "code"], registry=r)
        self._request_seconds = Histogram(p + "cni_request_seconds", "CNI call time from accept to answer",
                                          ["command"], buckets=LATENCY_BUCKETS, registry=r)
        self._errors = Counter(p + "cni_errors_total", "CNI calls answered with an error, by CNI code",
                               ["code"], registry=r)
        self._inflight = Gauge(p + "cni_requests_in_flight", "CNI calls running on a worker", registry=r)
        self._queued = Gauge(p + "cni_requests_queued", "CNI calls waiting for a worker", registry=r)
        self._rejections = Counter(p + "cni_rejections_total", "CNI calls refused at once, by reason",
                                   ["reason"], registry=r)
        self._plugin_calls = Counter(p + "plugin_calls_total", "plugin calls inside CNI calls, by type, command, code",
                                     ["type", "command", "code"], registry=r)
        self._plugin_seconds = Histogram(p + "plugin_seconds", "plugin call time, by type and command",
                                         ["type", "command"], buckets=LATENCY_BUCKETS, registry=r)
        self._reconciles = Counter(p + "controller_reconciles_total", "controller reconciles, by result",
                                   ["controller", "result"], registry=r)
        self._reconcile_seconds = Histogram(p + "controller_reconcile_seconds", "controller reconcile time",
                                            ["controller"], buckets=LATENCY_BUCKETS, registry=r)
        self._queue_depth = Gauge(p + "controller_queue_depth", "keys waiting for a controller",
                                  ["controller"], registry=r)
        self._gc_actions = Counter(p + "ipam_gc_actions_total", "what the IPAM garbage collector did, by action",
                                   ["action"], registry=r)
        self._gc_passes = Counter(p + "ipam_gc_passes_total", "IPAM garbage collection passes, by result",
                                  ["result"], registry=r)
        self.ipam = _IpamPoolCollector(ipam_data_dir)
        self.watches = _WatchLagCollector(objects, kinds)
        r.register(self.ipam)
        r.register(self.watches)

    # --- what the daemon's assembly sets after building its parts ---------------------------------
    def track_ipam(self, data_dir: Optional[str]) -> None:
        """Export the pool use of the SQLite store in `data_dir` (None: none)."""
        self.ipam.data_dir = data_dir

    def track_watches(self, objects: Any, kinds: Iterable[str]) -> None:
        """Export the watch lag of `kinds` (informers already started) of `objects`."""
        self.watches.objects, self.watches.kinds = objects, tuple(kinds)

    # --- the CNI server ---------------------------------------------------------------------------
    def request_queued(self, delta: int) -> None:
        """A call entered (+1) or left (-1) the queue."""
        self._queued.inc(delta)

    def request_inflight(self, delta: int) -> None:
        """A call started (+1) or ended (-1) on a worker."""
        self._inflight.inc(delta)

    def request_rejected(self, reason: str) -> None:
        """A call was refused at once (reason: "queue-full", "stopping")."""
        self._rejections.labels(reason).inc()

    def observe_request(self, command: str, seconds: float, code: int) -> None:
        """A CNI call answered: its command, its time from accept to answer, 0 or its CNI code."""
        command = command or "unknown"
        self._requests.labels(command, str(code)).inc()
        self._request_seconds.labels(command).observe(seconds)
        if code:
            self._errors.labels(str(code)).inc()

    def observe_plugin(self, type_name: str, command: str, seconds: float, code: int) -> None:
        """One plugin call inside a CNI call (cni/context.py Services.observe_plugin)."""
        self._plugin_calls.labels(type_name, command, str(code)).inc()
        self._plugin_seconds.labels(type_name, command).observe(seconds)

    # --- controllers ------------------------------------------------------------------------------
    def observe_reconcile(self, controller: str, seconds: float, error: bool) -> None:
        """One reconcile (or a failed setup) of `controller`."""
        self._reconciles.labels(controller, "error" if error else "ok").inc()
        self._reconcile_seconds.labels(controller).observe(seconds)

    def controller_queue(self, controller: str, depth: int) -> None:
        self._queue_depth.labels(controller).set(depth)

    def observe_gc(self, result: str, actions: Optional[dict[str, int]] = None) -> None:
        """One IPAM GC pass: "ok", "error" or "skipped", with its actions counted by kind."""
        self._gc_passes.labels(result).inc()
        for kind, n in (actions or {}).items():
            if n:
                self._gc_actions.labels(kind).inc(n)

    # --- reading ----------------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The text exposition format of every metric (what /metrics answers)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def value(self, name: str, labels: Optional[dict[str, str]] = None) -> Optional[float]:
        """One sample's value (tests, `multiplex inspect`), or None."""
        return self.registry.get_sample_value(name, labels or {})


# --- scrape-time collectors -----------------------------------------------------------------------

def read_pool_use(data_dir: str) -> list[tuple[str, int, Optional[int], int]]:
    """(pool, family, size or None, used) per range set of the node's SQLite store.

    Read-only on purpose: the store's own open creates, migrates and repairs the database, and a
    scrape must never do that. The database is opened `mode=ro` (WAL readers never block the
    writers), each lease counted in the first range set whose spans hold it, as `ipam show` does
    (multiplex/ipam/sqlite/store.py pools()). No database: []."""
    from ..ipam.sqlite.schema import FILENAME
    from ..ipam.sqlite.store import spans_of_key

    path = os.path.join(data_dir, FILENAME)
    if not os.path.isfile(path):
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    try:
        rows = conn.execute("SELECT key, name, family, size FROM range_sets ORDER BY family, name").fetchall()
        leases = conn.execute("SELECT pool, address FROM leases").fetchall()
    finally:
        conn.close()
    import ipaddress

    parsed = [(pool, ipaddress.ip_address(addr)) for pool, addr in leases]
    placed: set[int] = set()
    out = []
    for key, name, family, size in rows:
        used = 0
        spans = spans_of_key(key)
        for i, (pool, ip) in enumerate(parsed):
            if i not in placed and any(pool == subnet and ip.version == lo.version and lo <= ip <= hi
                                       for subnet, lo, hi in spans):
                placed.add(i)
                used += 1
        out.append((str(name), int(family), int(size) if size is not None else None, used))
    stray: dict[tuple[str, int], int] = {}
    for i, (pool, ip) in enumerate(parsed):
        if i not in placed:
            stray[(pool, ip.version)] = stray.get((pool, ip.version), 0) + 1
    out += [(pool, fam, None, n) for (pool, fam), n in sorted(stray.items())]
    return out


class _IpamPoolCollector:
    """Pool use of the node's SQLite store, read at each scrape (never cached: leases change with
    every CNI call, and a scrape every 15-60 s costs one read transaction)."""

    def __init__(self, data_dir: Optional[str]):
        self.data_dir = data_dir

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily("multiplex_ipam_pool_addresses_used", "addresses leased from a pool on this node",
                                 labels=["pool", "family"])
        size = GaugeMetricFamily("multiplex_ipam_pool_addresses_size",
                                 "addresses a pool may hand out (reserved and excluded left out)", labels=["pool", "family"])
        up = GaugeMetricFamily("multiplex_ipam_store_readable", "1 when the node's IPAM store could be read on scrape")
        ok = 1.0
        if self.data_dir:
            try:
                for pool, family, n, leased in read_pool_use(self.data_dir):
                    used.add_metric([pool, f"ipv{family}"], leased)
                    if n is not None:
                        size.add_metric([pool, f"ipv{family}"], n)
            except (sqlite3.Error, OSError, ValueError) as e:
                ok = 0.0
                _log.get().warning("metrics: cannot read the IPAM store", dir=self.data_dir, error=str(e))
        up.add_metric([], ok)
        yield used
        yield size
        yield up


class _WatchLagCollector:
    def __init__(self, objects: Any, kinds: Iterable[str]):
        self.objects = objects
        self.kinds = tuple(kinds)

    def describe(self):
        return []

    def _informers(self) -> dict:
        """The informers started so far (ObjectSource.started()), else those of `kinds`."""
        if self.objects is None:
            return {}
        started = getattr(self.objects, "started", None)
        if callable(started):
            return dict(started())
        return {kind: self.objects.informer(kind) for kind in self.kinds}

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        lag = GaugeMetricFamily("multiplex_watch_lag_seconds",
                                "seconds since the watch of a kind last proved itself current", labels=["kind"])
        synced = GaugeMetricFamily("multiplex_watch_synced", "1 once the watch of a kind has listed", labels=["kind"])
        for kind, inf in self._informers().items():
            try:
                lag.add_metric([kind], float(inf.lag()))
                synced.add_metric([kind], 1.0 if inf.synced() else 0.0)
            except Exception as e:   # a scrape never fails because one informer did
                _log.get().warning("metrics: cannot read a watch", kind=kind, error=repr(e))
        yield lag
        yield synced


# --- the HTTP endpoints ---------------------------------------------------------------------------

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass
class Endpoint:
    """A running (or, for "off", absent) health and metrics server."""
    port: Optional[int] = None
    host: str = ""
    _server: Optional[ThreadingHTTPServer] = None
    _thread: Optional[threading.Thread] = None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(5)
            self._server = None


def parse_address(address: str) -> tuple[str, int]:
    """"HOST:PORT" or "[v6]:PORT" -> (host, port); a ValueError saying what is wrong."""
    text = address.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT (e.g. 127.0.0.1:9635, [::1]:9635) or 'off'")
    return host, int(port)


def serve(address: str, ready: Callable[[], tuple[bool, str]], healthy: Callable[[], bool],
          metrics: Optional[Metrics] = None, log: Optional[_log.Logger] = None) -> Endpoint:
    """Serve /healthz, /readyz and /metrics on `address` ("HOST:PORT", port 0 picks one and
    `.port` says which; "off": nothing, `.port` None) from a daemon thread.

    /healthz: 200 "ok" while healthy() (the process serves), else 503.
    /readyz: 200 "ok", or 503 with ready()'s reason (which informer is not synced, ...).
    /metrics: the exposition of `metrics` (404 without one)."""
    log = log or _log.get()
    if not address or address.strip() == "off":
        return Endpoint()
    host, port = parse_address(address)
    if host not in LOOPBACK_HOSTS:
        log.warning("health and metrics served on a non-loopback address (no authentication)", address=address)

    class Handler(BaseHTTPRequestHandler):
        server_version = "multiplex"

        def log_message(self, fmt: str, *args: Any) -> None:  # probes every few seconds: not logged
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    ok = healthy()
                    self._answer(200 if ok else 503, b"ok\n" if ok else b"not serving\n")
                elif path == "/readyz":
                    ok, why = ready()
                    self._answer(200 if ok else 503, (b"ok\n" if ok else (why or "not ready").encode() + b"\n"))
                elif path == "/metrics" and metrics is not None:
                    from prometheus_client import CONTENT_TYPE_LATEST

                    self._answer(200, metrics.exposition(), CONTENT_TYPE_LATEST)
                else:
                    self._answer(404, b"not found: /healthz, /readyz, /metrics\n")
            except Exception as e:   # a failing check is an answer, never a dropped connection
                log.error("health endpoint failed", path=path, error=repr(e))
                self._answer(500, f"error: {e}\n".encode())

        def _answer(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server_cls = type("HealthServer", (ThreadingHTTPServer,), {"daemon_threads": True})
    if ":" in host:
        import socket
        server_cls.address_family = socket.AF_INET6
    server = server_cls((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"health:{server.server_address[1]}", daemon=True)
    thread.start()
    return Endpoint(port=server.server_address[1], host=host, _server=server, _thread=thread)
