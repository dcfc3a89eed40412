"""The controller framework (multiplex/daemon/controller.py): events become keys, a key queued
many times is reconciled once, a failing key is retried with growing waits, every key comes back
at each resync, and stop() ends every thread and calls each controller's stop().

Waits are bounded polls on what a user would check (the reconciles seen), never timing asserts
except lower bounds the backoff guarantees."""
from __future__ import annotations

import threading
import time

import pytest

from multiplex.daemon import controller as ctl
from multiplex.daemon.controller import Controller, DaemonContext, Runner, backoff_delay, load_controllers
from multiplex.daemon.metrics import Metrics
from tests.daemon.fakeobjects import FakeObjects
from tests.waiting import eventually


class Recorder(Controller):
    name = "rec"
    watches = ("pods",)
    resync = 0.0

    def __init__(self):
        self.seen: list[tuple[str, float]] = []
        self.setup_calls = 0
        self.stopped = False
        self.fail: dict[str, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.keys = ("all",)

    def setup(self, daemon):
        super().setup(daemon)
        self.setup_calls += 1

    def keys_for(self, kind, event, obj):
        if obj["metadata"]["name"] == "boom":
            raise RuntimeError("mapping bug")
        return (f"{kind}/{obj['metadata']['name']}",)

    def all_keys(self):
        return self.keys

    def reconcile(self, key):
        self.gate.wait(10)
        self.seen.append((key, time.monotonic()))
        if self.fail.get(key, 0) > 0:
            self.fail[key] -= 1
            raise RuntimeError(f"{key} not yet")

    def stop(self):
        self.stopped = True

    def count(self, key):
        return sum(1 for k, _ in self.seen if k == key)


def pod(name):
    return {"metadata": {"name": name, "namespace": "default"}}


@pytest.fixture
def daemon():
    d = DaemonContext(node_name="n1", objects=FakeObjects(), metrics=Metrics())
    yield d
    d.stopping.set()


@pytest.fixture
def run(daemon):
    runners = []

    def start(*controllers):
        r = Runner(daemon, controllers)
        runners.append(r)
        r.start()
        return r

    yield start
    for r in runners:
        assert r.stop(5), "a controller thread did not stop"


def test_events_become_keys_and_setup_runs_before_the_first_reconcile(daemon, run):
    rec = Recorder()
    runner = run(rec)
    assert eventually(lambda: rec.count("all") == 1)
    assert rec.setup_calls == 1 and rec.seen[0][0] == "all"
    assert eventually(runner.ready)
    daemon.objects.informer("pods").put(pod("web"))
    daemon.objects.informer("pods").put(pod("boom"))     # keys_for raises: logged, the loop lives on
    daemon.objects.informer("pods").put(pod("db"))
    assert eventually(lambda: rec.count("pods/web") == 1 and rec.count("pods/db") == 1)
    assert rec.count("pods/boom") == 0
    assert daemon.metrics.value("multiplex_controller_reconciles_total", {"controller": "rec", "result": "ok"}) >= 3


def test_a_key_queued_many_times_while_waiting_is_reconciled_once(daemon, run):
    rec = Recorder()
    run(rec)
    assert eventually(lambda: rec.count("all") == 1)
    rec.gate.clear()                                     # the next reconcile blocks ...
    pods = daemon.objects.informer("pods")
    pods.put(pod("first"))
    time.sleep(0.05)                                     # ... inside reconcile("pods/first")
    for _ in range(20):
        pods.put(pod("web"))                             # queued while waiting: one entry
    rec.gate.set()
    assert eventually(lambda: rec.count("pods/web") >= 1)
    time.sleep(0.2)
    assert rec.count("pods/web") == 1


def test_a_failing_key_is_retried_with_growing_backoff_and_counted(daemon, run, monkeypatch):
    monkeypatch.setattr(ctl, "BACKOFF_BASE", 0.05)
    monkeypatch.setattr(ctl, "backoff_delay", lambda n, base=None, cap=60.0, rand=None:
                        backoff_delay(n, 0.05, cap, rand=lambda: 0.0))   # no jitter: exactly half
    rec = Recorder()
    rec.fail["all"] = 3
    runner = run(rec)
    assert eventually(lambda: rec.count("all") == 4)
    times = [t for k, t in rec.seen if k == "all"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # waits of at least 0.025, 0.05, 0.1 s: each one doubles
    assert gaps[0] >= 0.024 and gaps[1] >= 0.049 and gaps[2] >= 0.099
    assert daemon.metrics.value("multiplex_controller_reconciles_total", {"controller": "rec", "result": "error"}) == 3
    status = runner.status()["rec"]
    assert status["errors"] == 3 and "all: all not yet" in status["lastError"]
    time.sleep(0.3)
    assert rec.count("all") == 4                        # succeeded: no more retries


def test_backoff_doubles_is_capped_and_jittered():
    full = [backoff_delay(n, 0.5, 60.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert full[:4] == [0.5, 1.0, 2.0, 4.0] and full[-1] == 60.0
    assert backoff_delay(3, 0.5, 60.0, rand=lambda: 0.0) == 1.0      # jitter: [half, all]
    assert backoff_delay(400, 0.5, 60.0, rand=lambda: 1.0) == 60.0


def test_resync_queues_every_key_again(daemon, run):
    rec = Recorder()
    rec.resync = 0.05
    rec.keys = ("a", "b")
    run(rec)
    assert eventually(lambda: rec.count("a") >= 3 and rec.count("b") >= 3)


def test_setup_failure_is_retried_and_readiness_waits_for_the_first_pass(daemon, run, monkeypatch):
    monkeypatch.setattr(ctl, "backoff_delay", lambda n, *a, **k: 0.02)

    class Flaky(Recorder):
        name = "flaky"
        tries = 0

        def setup(self, daemon):
            Flaky.tries += 1
            if Flaky.tries < 3:
                raise OSError("netlink not there yet")
            super().setup(daemon)

    rec = Flaky()
    rec.gate.clear()
    runner = run(rec)
    assert eventually(lambda: Flaky.tries == 3)
    assert not runner.ready()
    assert any("has not finished its first pass" in r for r in runner.not_ready())
    rec.gate.set()
    assert eventually(runner.ready)


def test_stop_wakes_idle_loops_joins_them_and_calls_stop(daemon):
    recs = [Recorder(), Recorder()]
    recs[1].name = "rec2"
    recs[0].resync = 3600
    runner = Runner(daemon, recs)
    runner.start()
    assert eventually(lambda: all(r.count("all") == 1 for r in recs))
    assert runner.stop(5)
    assert all(r.stopped for r in recs)
    assert not any(loop.thread.is_alive() for loop in runner.loops)


def test_enqueue_from_another_thread_before_and_after_start(daemon, run):
    rec = Recorder()
    rec.enqueue("early")
    run(rec)
    assert eventually(lambda: rec.count("early") == 1)
    threading.Thread(target=rec.enqueue, args=("late",)).start()
    assert eventually(lambda: rec.count("late") == 1)


def test_load_controllers_by_name(daemon, monkeypatch):
    class EP:
        def __init__(self, name, factory):
            self.name, self._f = name, factory

        def load(self):
            return self._f

    monkeypatch.setattr(ctl, "available_controllers", lambda: {
        "one": EP("one", lambda d: Recorder()), "skip": EP("skip", lambda d: None)})
    assert load_controllers(daemon, "none") == []
    got = load_controllers(daemon, "all")
    assert [c.name for c in got] == ["rec"] and set(daemon.controllers) == {"rec"}
    with pytest.raises(ValueError, match=r"unknown controller nope in --controllers; known: one, skip"):
        load_controllers(daemon, "one,nope")


def test_the_installed_entry_points_are_the_two_controllers():
    assert {"node-registry", "ipam-gc"} <= set(ctl.available_controllers())


def test_a_resync_does_not_cut_a_failing_keys_backoff_short(daemon, run, monkeypatch):
    monkeypatch.setattr(ctl, "backoff_delay", lambda n, *a, **k: 0.5)
    rec = Recorder()
    rec.resync = 0.02
    rec.fail["all"] = 1000
    run(rec)
    assert eventually(lambda: rec.count("all") >= 1)
    time.sleep(0.6)
    assert rec.count("all") <= 3          # resyncs every 20 ms, but retries only every 0.5 s
