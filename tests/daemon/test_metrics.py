"""The daemon's metrics and health endpoints (multiplex/daemon/metrics.py), read over real HTTP
as Prometheus and the kubelet's probes read them."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from multiplex.daemon.metrics import Metrics, parse_address, read_pool_use, serve
from multiplex.ipam import config
from multiplex.ipam.sqlite.store import SQLiteStore
from multiplex.ipam.store import Owner
from tests.daemon.fakeobjects import FakeObjects


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def endpoint():
    handles = []

    def start(*args, **kwargs):
        h = serve(*args, **kwargs)
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop()


def sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start} in:\n{text}")


def test_health_readiness_and_metrics_over_http(endpoint):
    m = Metrics()
    state = {"ready": (False, "informer pods is not synced"), "healthy": True}
    h = endpoint("127.0.0.1:0", ready=lambda: state["ready"], healthy=lambda: state["healthy"], metrics=m)
    assert h.port and h.port > 0
    assert get(h.port, "/healthz") == (200, "ok\n")
    assert get(h.port, "/readyz") == (503, "informer pods is not synced\n")
    state["ready"] = (True, "")
    assert get(h.port, "/readyz") == (200, "ok\n")
    state["healthy"] = False
    assert get(h.port, "/healthz")[0] == 503

    m.observe_request("ADD", 0.03, 0)
    m.observe_request("ADD", 0.5, 11)
    m.observe_request("DEL", 0.01, 0)
    m.observe_plugin("multiplex-bridge", "ADD", 0.012, 0)
    m.request_rejected("queue-full")
    m.request_queued(+1)
    m.request_inflight(+1)
    m.request_inflight(+1)
    m.request_inflight(-1)
    code, text = get(h.port, "/metrics")
    assert code == 200
    assert sample(text, 'multiplex_cni_requests_total{code="0",command="ADD"}') == 1
    assert sample(text, 'multiplex_cni_requests_total{code="11",command="ADD"}') == 1
    assert sample(text, 'multiplex_cni_errors_total{code="11"}') == 1
    assert sample(text, 'multiplex_cni_request_seconds_count{command="ADD"}') == 2
    assert sample(text, 'multiplex_plugin_seconds_count{command="ADD",type="multiplex-bridge"}') == 1
    assert sample(text, 'multiplex_cni_rejections_total{reason="queue-full"}') == 1
    assert sample(text, "multiplex_cni_requests_queued") == 1
    assert sample(text, "multiplex_cni_requests_in_flight") == 1
    assert "process_resident_memory_bytes" in text
    assert get(h.port, "/nope")[0] == 404


def test_two_daemons_in_one_process_have_their_own_metrics():
    a, b = Metrics(), Metrics()
    a.observe_request("ADD", 0.1, 0)
    assert a.value("multiplex_cni_requests_total", {"command": "ADD", "code": "0"}) == 1
    assert b.value("multiplex_cni_requests_total", {"command": "ADD", "code": "0"}) is None


def test_ipam_pool_use_is_read_from_the_node_store_on_each_scrape(tmp_path, endpoint):
    data = str(tmp_path / "ipam")
    conf = config.parse({"name": "blue", "ipam": {"type": "multiplex-ipam", "range": "198.18.40.0/29"}})
    m = Metrics(ipam_data_dir=data)
    h = endpoint("127.0.0.1:0", ready=lambda: (True, ""), healthy=lambda: True, metrics=m)
    _, text = get(h.port, "/metrics")        # no database yet: nothing, and no database made
    assert "multiplex_ipam_pool_addresses_used{" not in text and not (tmp_path / "ipam").exists()
    with SQLiteStore(data) as store:
        for i in range(2):
            store.allocate(conf.range_sets[0], conf.exclude, Owner(f"c{i}", "eth0", "blue"))
    _, text = get(h.port, "/metrics")
    pool = conf.range_sets[0].name
    assert sample(text, f'multiplex_ipam_pool_addresses_used{{family="ipv4",pool="{pool}"}}') == 2
    size = sample(text, f'multiplex_ipam_pool_addresses_size{{family="ipv4",pool="{pool}"}}')
    assert size == 5                                          # .1-.6 less the gateway
    assert sample(text, "multiplex_ipam_store_readable") == 1
    with SQLiteStore(data) as store:
        store.release(Owner("c0", "eth0", "blue"))
    assert read_pool_use(data) == [(pool, 4, 5, 1)]


def test_watch_lag_and_controller_metrics():
    objects = FakeObjects()
    objects.informer("pods")
    objects.informer("nodes").proved -= 42
    m = Metrics(objects=objects)
    m.observe_reconcile("node-registry", 0.01, False)
    m.observe_reconcile("node-registry", 0.01, True)
    m.observe_gc("ok", {"freed": 2, "marked": 0})
    assert m.value("multiplex_watch_lag_seconds", {"kind": "nodes"}) >= 42
    assert m.value("multiplex_watch_lag_seconds", {"kind": "pods"}) < 42
    assert m.value("multiplex_watch_synced", {"kind": "pods"}) == 1
    assert m.value("multiplex_controller_reconciles_total", {"controller": "node-registry", "result": "error"}) == 1
    assert m.value("multiplex_ipam_gc_actions_total", {"action": "freed"}) == 2
    assert m.value("multiplex_ipam_gc_passes_total", {"result": "ok"}) == 1


def test_off_serves_nothing_and_a_bad_address_is_refused_clearly(endpoint):
    h = endpoint("off", ready=lambda: (True, ""), healthy=lambda: True)
    assert h.port is None
    h.stop()
    with pytest.raises(ValueError, match="metrics address '9966' is not HOST:PORT"):
        serve("9966", ready=lambda: (True, ""), healthy=lambda: True)
    assert parse_address("[::1]:0") == ("::1", 0)


def test_ipv6_loopback(endpoint):
    h = endpoint("[::1]:0", ready=lambda: (True, ""), healthy=lambda: True)
    with urllib.request.urlopen(f"http://[::1]:{h.port}/healthz", timeout=5) as resp:
        assert resp.read() == b"ok\n"
