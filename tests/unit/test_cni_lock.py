"""Per-container lock: same container serialized, different containers in parallel, across
processes and threads. Overlap is shown with timestamps and rendezvous, never wall-clock limits."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from multiplex.cni import errors
from multiplex.cni.errors import CNIError
from multiplex.cni.lock import LOCK_FILE, container_lock, gc_lock

MP = multiprocessing.get_context("fork")
WAIT = 30  # generous bound for a rendezvous; a test that reaches it has failed anyway


@pytest.fixture
def lockfile(tmp_path):
    return str(tmp_path / "locks" / LOCK_FILE)


@pytest.fixture
def procs():
    started: list = []
    yield started
    for p in started:
        if p.is_alive():
            p.kill()
        p.join(WAIT)


def _hold(path, cid, entered, release, out):
    """Take the lock, say so, keep it until told; report (start, end)."""
    with container_lock(cid, timeout=WAIT, path=path):
        start = time.monotonic()
        entered.set()
        release.wait(WAIT)
        end = time.monotonic()
    out.put((cid, start, end))


def _meet(path, cid, barrier, out):
    """Take the lock and wait inside it for the other process: only possible when both hold theirs."""
    with container_lock(cid, timeout=WAIT, path=path):
        start = time.monotonic()
        try:
            barrier.wait(WAIT)
            met = True
        except threading.BrokenBarrierError:
            met = False
        end = time.monotonic()
    out.put((cid, start, end, met))


def _try(path, cid, timeout, out):
    try:
        with container_lock(cid, timeout=timeout, path=path):
            out.put(("got", time.monotonic()))
    except CNIError as e:
        out.put(("refused", e.code))


def spawn(procs, target, *args):
    p = MP.Process(target=target, args=args)
    p.start()
    procs.append(p)
    return p


def test_same_container_serialized_across_processes(lockfile, procs):
    entered, release, out = MP.Event(), MP.Event(), MP.Queue()
    spawn(procs, _hold, lockfile, "c1", entered, release, out)
    assert entered.wait(WAIT)
    # while the first process holds it, another call for c1 is refused after its timeout ...
    tries = MP.Queue()
    spawn(procs, _try, lockfile, "c1", 0.3, tries)
    assert tries.get(timeout=WAIT) == ("refused", errors.TRY_AGAIN_LATER)
    # ... and one that is willing to wait gets it only after the holder let go
    spawn(procs, _try, lockfile, "c1", WAIT, tries)
    release.set()
    kind, got_at = tries.get(timeout=WAIT)
    _, start, end = out.get(timeout=WAIT)
    assert kind == "got" and got_at >= end


def test_different_containers_run_in_parallel_across_processes(lockfile, procs):
    barrier, out = MP.Barrier(2), MP.Queue()
    spawn(procs, _meet, lockfile, "c1", barrier, out)
    spawn(procs, _meet, lockfile, "c2", barrier, out)
    (c_a, s_a, e_a, met_a), (c_b, s_b, e_b, met_b) = out.get(timeout=WAIT), out.get(timeout=WAIT)
    assert {c_a, c_b} == {"c1", "c2"}
    assert met_a and met_b  # both were inside their locks at the same time
    assert s_a < e_b and s_b < e_a  # overlapping intervals


def test_many_calls_for_one_container_never_overlap(lockfile):
    """Threads and processes mixed: intervals inside the lock for one container are disjoint."""
    out = MP.Queue()

    def worker(n):
        with container_lock("c1", timeout=WAIT, path=lockfile):
            start = time.monotonic()
            time.sleep(0.01)  # room for an overlap, were the lock broken
            out.put((start, time.monotonic()))

    ps = [MP.Process(target=_worker_proc, args=(lockfile, out)) for _ in range(3)]
    for p in ps:
        p.start()
    ts = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT)
    for p in ps:
        p.join(WAIT)
    intervals = sorted(out.get(timeout=WAIT) for _ in range(6))
    for (s1, e1), (s2, e2) in zip(intervals, intervals[1:]):
        assert e1 <= s2, intervals


def _worker_proc(path, out):
    with container_lock("c1", timeout=WAIT, path=path):
        start = time.monotonic()
        time.sleep(0.01)
        out.put((start, time.monotonic()))


def test_threads_same_container_serialized_different_parallel(lockfile):
    inside = threading.Event()
    release = threading.Event()
    results = {}

    def hold():
        with container_lock("c1", timeout=WAIT, path=lockfile):
            inside.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(WAIT)
    try:
        # same container from another thread of this process: refused (11)
        def same():
            try:
                with container_lock("c1", timeout=0.2, path=lockfile):
                    results["same"] = "got"
            except CNIError as e:
                results["same"] = e.code

        t = threading.Thread(target=same)
        t.start()
        t.join(WAIT)
        assert results["same"] == errors.TRY_AGAIN_LATER
        # another container while c1 is held: immediately available
        with container_lock("c2", timeout=0, path=lockfile):
            results["other"] = "got"
        assert results["other"] == "got"
    finally:
        release.set()
        holder.join(WAIT)


def test_reentrant_in_one_thread(lockfile, procs):
    with container_lock("c1", timeout=1, path=lockfile):
        with container_lock("c1", timeout=1, path=lockfile):
            pass
        # still held after the inner block: another process is refused
        out = MP.Queue()
        spawn(procs, _try, lockfile, "c1", 0.2, out)
        assert out.get(timeout=WAIT) == ("refused", errors.TRY_AGAIN_LATER)
    out = MP.Queue()
    spawn(procs, _try, lockfile, "c1", WAIT, out)
    assert out.get(timeout=WAIT)[0] == "got"


def test_released_when_the_body_raises(lockfile):
    with pytest.raises(RuntimeError):
        with container_lock("c1", timeout=1, path=lockfile):
            raise RuntimeError("delegate crashed")
    with container_lock("c1", timeout=0, path=lockfile):
        pass


def test_released_when_the_holder_is_killed(lockfile, procs):
    entered, release, out = MP.Event(), MP.Event(), MP.Queue()
    p = spawn(procs, _hold, lockfile, "c1", entered, release, out)
    assert entered.wait(WAIT)
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    with container_lock("c1", timeout=WAIT, path=lockfile):
        pass


def busy_error(lockfile: str, procs: list, cid: str, timeout: float) -> CNIError:
    """The error of taking `cid`'s lock, with `timeout`, while another process holds it."""
    entered, release, out = MP.Event(), MP.Event(), MP.Queue()
    spawn(procs, _hold, lockfile, cid, entered, release, out)
    assert entered.wait(WAIT)
    try:
        with pytest.raises(CNIError) as e:
            with container_lock(cid, timeout=timeout, path=lockfile):
                pass
    finally:
        release.set()
    return e.value


def test_timeout_error_says_which_container_and_what_to_do(lockfile, procs):
    e = busy_error(lockfile, procs, "c0ffee", 0.1)
    assert e.code == errors.TRY_AGAIN_LATER
    assert "c0ffee" in e.msg and "retry" in e.details and lockfile in e.details


def test_no_pile_of_lock_files(lockfile):
    for n in range(200):
        with container_lock(f"container-{n}", timeout=1, path=lockfile):
            pass
    d = os.path.dirname(lockfile)
    assert os.listdir(d) == [LOCK_FILE]
    assert os.path.getsize(lockfile) == 0


def test_default_lock_file_under_the_state_root(state_dir, monkeypatch):
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(state_dir))
    with container_lock("c1", timeout=1):
        assert os.path.exists(state_dir / "locks" / LOCK_FILE)


# ---- the GC lock: every ADD shared, GC exclusive ------------------------------------------------

def _hold_gc(path, exclusive, entered, release):
    with gc_lock(exclusive, timeout=WAIT, path=path):
        entered.set()
        release.wait(WAIT)


def _try_gc(path, exclusive, timeout, out):
    try:
        with gc_lock(exclusive, timeout=timeout, path=path):
            out.put(("got", time.monotonic()))
    except CNIError as e:
        out.put(("refused", e.code, e.msg))


def test_gc_lock_shared_by_adds_in_processes_and_threads(lockfile, procs):
    entered, release = MP.Event(), MP.Event()
    spawn(procs, _hold_gc, lockfile, False, entered, release)
    assert entered.wait(WAIT)
    try:
        # another process's ADD and another thread's ADD get it while the first holds it
        out = MP.Queue()
        spawn(procs, _try_gc, lockfile, False, 0, out)
        assert out.get(timeout=WAIT)[0] == "got"
        with gc_lock(False, timeout=0, path=lockfile):
            t_out: list = []
            t = threading.Thread(target=lambda: t_out.append(_try_in_thread(lockfile, False, 0)))
            t.start()
            t.join(WAIT)
            assert t_out == ["got"]
    finally:
        release.set()


def _try_in_thread(path, exclusive, timeout):
    try:
        with gc_lock(exclusive, timeout=timeout, path=path):
            return "got"
    except CNIError as e:
        return e.code


def test_gc_waits_for_an_add_in_another_process_and_says_how_long(lockfile, procs):
    entered, release = MP.Event(), MP.Event()
    spawn(procs, _hold_gc, lockfile, False, entered, release)
    assert entered.wait(WAIT)
    out = MP.Queue()
    spawn(procs, _try_gc, lockfile, True, 0.3, out)
    kind, code, msg = out.get(timeout=WAIT)
    assert (kind, code) == ("refused", errors.TRY_AGAIN_LATER)
    assert "GC waited" in msg and "s for the ADDs" in msg
    spawn(procs, _try_gc, lockfile, True, WAIT, out)
    release.set()
    assert out.get(timeout=WAIT)[0] == "got"


def test_an_add_waits_for_gc_in_another_process(lockfile, procs):
    entered, release = MP.Event(), MP.Event()
    spawn(procs, _hold_gc, lockfile, True, entered, release)
    assert entered.wait(WAIT)
    try:
        with pytest.raises(CNIError) as e:
            with gc_lock(False, timeout=0.2, path=lockfile):
                pass
        assert e.value.code == errors.TRY_AGAIN_LATER and "ADD waited" in e.value.msg
        assert f"byte {2 ** 32}" in e.value.details
        # the containers' bytes are not the GC byte: a DEL (container lock only) still runs
        with container_lock("c1", timeout=0, path=lockfile):
            pass
    finally:
        release.set()


def test_gc_and_adds_exclude_each_other_between_threads_of_one_process(lockfile):
    """POSIX record locks do not tell threads apart: the reader/writer guard must."""
    inside, release = threading.Event(), threading.Event()

    def add():
        with gc_lock(False, timeout=WAIT, path=lockfile):
            inside.set()
            release.wait(WAIT)

    t = threading.Thread(target=add)
    t.start()
    try:
        assert inside.wait(WAIT)
        assert _try_in_thread(lockfile, True, 0.2) == errors.TRY_AGAIN_LATER
    finally:
        release.set()
        t.join(WAIT)
    with gc_lock(True, timeout=0, path=lockfile):
        assert _run_thread(lambda: _try_in_thread(lockfile, False, 0.2)) == errors.TRY_AGAIN_LATER
        with gc_lock(False, timeout=0, path=lockfile):  # re-entrant in the GC's own thread
            pass


def _run_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(WAIT)
    return out[0]


def test_last_add_thread_leaving_lets_gc_in_from_another_process(lockfile, procs):
    """Two ADD threads share the process's one file lock: it is dropped only when both left."""
    first_in, second_in, release_first, release_second = (threading.Event() for _ in range(4))

    def add(entered, release):
        with gc_lock(False, timeout=WAIT, path=lockfile):
            entered.set()
            release.wait(WAIT)

    a = threading.Thread(target=add, args=(first_in, release_first))
    b = threading.Thread(target=add, args=(second_in, release_second))
    a.start()
    assert first_in.wait(WAIT)
    b.start()
    assert second_in.wait(WAIT)
    try:
        release_first.set()
        a.join(WAIT)
        out = MP.Queue()
        spawn(procs, _try_gc, lockfile, True, 0.2, out)
        assert out.get(timeout=WAIT)[:2] == ("refused", errors.TRY_AGAIN_LATER)  # b still holds it
    finally:
        release_second.set()
        b.join(WAIT)
    spawn(procs, _try_gc, lockfile, True, WAIT, out)
    assert out.get(timeout=WAIT)[0] == "got"


def test_container_lock_busy_message_states_the_time_waited(lockfile, procs):
    e = busy_error(lockfile, procs, "c1", 0.2)
    waited = float(e.msg.rsplit("after ", 1)[1].rstrip("s"))
    assert waited >= 0.2
