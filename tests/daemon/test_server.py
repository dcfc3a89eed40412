"""The CNI server in this process, called through an installed shim (a real process, as the runtime
execs it): the socket's mode and owner, the peer check, the queue bound, per-container order, the
deadline, the drain on stop, and the in-process path's answers (run_cni, no netns needed)."""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from multiplex.cni.request import STDIN_MAX
from multiplex.daemon import shim
from multiplex.daemon.server import CNIServer, ServerError, bind_socket
from tests.daemonproc import BIN, shim_path
from tests.waiting import wait_for


def ok_json(environ) -> bytes:
    return json.dumps({"cniVersion": "1.1.0", "container": environ.get("CNI_CONTAINERID", "")}).encode()


class Recorder:
    """A handler that records each call's start and end, sleeping `hold` s or until `gate` opens."""

    def __init__(self, hold: float = 0.0, gate: threading.Event | None = None):
        self.hold, self.gate = hold, gate
        self.calls: list[tuple[str, str, float, float]] = []
        self.started: list[str] = []   # CNI_ARGS of every call that began, in order
        self.lock = threading.Lock()

    def __call__(self, environ, stdin, stdin_size, deadline):
        start = time.monotonic()
        with self.lock:
            self.started.append(environ.get("CNI_ARGS", ""))
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.hold)
        with self.lock:
            self.calls.append((environ.get("CNI_CONTAINERID", ""), environ.get("CNI_ARGS", ""), start,
                               time.monotonic()))
        return 0, ok_json(environ)


class FakeMetrics:
    def __init__(self):
        self.events: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.events.append((name, *args))


@pytest.fixture
def serve(sock_dir):
    """serve(handler, **CNIServer kwargs) -> a started server; stopped at teardown."""
    made: list[CNIServer] = []

    def start(handler=None, **kwargs) -> CNIServer:
        srv = CNIServer(os.path.join(sock_dir, "run", "mpx.sock"), handler, **kwargs).start()
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop(timeout=10)


def call(shim_file: str, command: str = "ADD", cid: str = "c1", stdin: bytes = b'{"cniVersion": "1.0.0"}',
         args: str = "", env: dict | None = None, preexec=None) -> tuple[int, dict | str]:
    e = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/x",
         "CNI_PATH": BIN, "CNI_ARGS": args, **(env or {})}
    r = subprocess.run([shim_file], input=stdin, env=e, capture_output=True, timeout=60, preexec_fn=preexec)
    text = r.stdout.decode()
    try:
        return r.returncode, json.loads(text)
    except ValueError:
        return r.returncode, text


# --- the socket ----------------------------------------------------------------------------------

def test_socket_is_0600_owned_by_root_in_a_0700_directory(serve, sock_dir):
    srv = serve(Recorder())
    st = os.stat(srv.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(os.stat(os.path.dirname(srv.socket_path)).st_mode) == 0o700


def test_a_stale_socket_is_replaced_and_a_served_one_refused(serve, sock_dir):
    path = os.path.join(sock_dir, "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # a socket file nothing listens on: what a killed daemon leaves
    srv = serve(Recorder())
    assert srv.socket_path != path
    replaced = bind_socket(path)
    replaced.close()
    with pytest.raises(ServerError, match="another multiplex daemon is serving"):
        bind_socket(srv.socket_path)
    with open(os.path.join(sock_dir, "file"), "w"):
        pass
    with pytest.raises(ServerError, match="is not a socket"):
        bind_socket(os.path.join(sock_dir, "file"))


def call_as_nobody(path: str) -> str:
    """What uid 65534 gets from the socket at `path`: a forked child drops to nobody, sends one
    request frame and reports "answer <code>", "closed" or "refused <errno name>"."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no threads of ours beyond this one
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
            except OSError as e:
                os.write(w, f"refused {errno.errorcode.get(e.errno, e.errno)}".encode())
                os._exit(0)
            try:
                s.sendall(shim.encode_request({"CNI_COMMAND": "VERSION"}, b""))
                code, _ = shim.read_answer(s)
                os.write(w, f"answer {code}".encode())
            except (OSError, shim.ProtocolError):
                os.write(w, b"closed")
        except BaseException as e:
            os.write(w, f"child failed: {e!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_a_caller_that_is_not_root_is_refused(serve, sock_dir):
    rec = Recorder()
    srv = serve(rec)
    os.chmod(sock_dir, 0o755)
    os.chmod(os.path.dirname(srv.socket_path), 0o755)
    # the socket as it is (0600 root): nobody cannot even connect
    assert call_as_nobody(srv.socket_path) == "refused EACCES"
    # opened up by mistake: the peer check (SO_PEERCRED) still refuses, nothing runs
    os.chmod(srv.socket_path, 0o666)
    assert call_as_nobody(srv.socket_path) == "closed"
    assert rec.calls == []


# --- bounds, order, deadline -----------------------------------------------------------------------

def test_past_the_queue_bound_a_call_gets_code_11_at_once_and_succeeds_on_retry(serve, tmp_path):
    gate = threading.Event()
    metrics = FakeMetrics()
    srv = serve(Recorder(gate=gate), workers=1, queue_size=1, metrics=metrics)
    sh = shim_path(tmp_path, srv.socket_path, fallback="fail")
    with ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(call, sh, cid=f"busy{k}") for k in range(2)]  # one running, one queued
        wait_for(lambda: sum(1 for e in metrics.events if e[:2] == ("request_queued", 1)) == 2)
        t0 = time.monotonic()
        rc, out = call(sh, cid="late", stdin=b'{"cniVersion": "0.4.0", "name": "n"}')
        refused_in = time.monotonic() - t0
        assert rc == 1 and out["code"] == 11, out
        assert "try again later" in out["msg"] and "queue size: 1" in out["details"], out
        assert out["cniVersion"] in ("0.4.0", "1.1.0")
        gate.set()
        assert [f.result()[0] for f in busy] == [0, 0]
    rc, out = call(sh, cid="late")
    assert rc == 0 and out["container"] == "late"
    assert ("request_rejected", "queue-full") in metrics.events
    print(f"\nrefusal past the bound answered in {refused_in * 1000:.1f} ms (shim start included)")


def send(path: str, cid: str, args: str) -> socket.socket:
    """A call sent whole (as the shim sends it); read its answer with shim.read_answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    s.sendall(shim.encode_request({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_ARGS": args}, b"{}"))
    return s


def test_calls_for_one_container_never_overlap_and_keep_their_order(serve):
    gate = threading.Event()
    rec = Recorder(hold=0.05, gate=gate)
    srv = serve(rec, workers=4, queue_size=8)
    conns = []
    for k in range(4):  # each sent once the one before runs (N=0, held at the gate) or is parked
        conns.append(send(srv.socket_path, "same", f"N={k}"))
        wait_for(lambda: "same" in srv._containers and len(srv._containers["same"]) == k)
    conns.append(send(srv.socket_path, "other", "N=x"))
    wait_for(lambda: srv._admitted == 5)
    wait_for(lambda: "N=x" in rec.started)  # "other" runs beside N=0 (held): its own container is free
    gate.set()
    answers = [shim.read_answer(c) for c in conns]
    for c in conns:
        c.close()
    assert [code for code, _ in answers] == [0] * 5
    same = sorted((c for c in rec.calls if c[0] == "same"), key=lambda c: c[2])
    assert [c[1] for c in same] == ["N=0", "N=1", "N=2", "N=3"]
    for a, b in zip(same, same[1:]):
        assert b[2] >= a[3], "two calls of one container overlapped"
    other = next(c for c in rec.calls if c[0] == "other")
    assert any(c[2] < other[3] and other[2] < c[3] for c in same), "another container waited for no reason"
    wait_for(lambda: srv._containers == {})  # the FIFOs go with their last call (just after its answer)


def test_a_call_that_waited_past_its_deadline_is_not_run(serve, tmp_path):
    gate = threading.Event()
    rec = Recorder(gate=gate)
    srv = serve(rec, workers=1, queue_size=4, budget=0.5)
    sh = shim_path(tmp_path, srv.socket_path, fallback="fail")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(call, sh, cid="first")
        wait_for(lambda: srv._admitted == 1)
        second = pool.submit(call, sh, cid="second")
        wait_for(lambda: srv._admitted == 2)
        time.sleep(0.6)
        gate.set()
        assert first.result()[0] == 0
        rc, out = second.result()
    assert rc == 1 and out["code"] == 11 and "deadline" in out["msg"], out
    assert [c[0] for c in rec.calls] == ["first"]


def test_stop_answers_admitted_calls_and_refuses_new_ones(serve, tmp_path):
    gate = threading.Event()
    srv = serve(Recorder(gate=gate), workers=1, queue_size=2)
    sh = shim_path(tmp_path, srv.socket_path, fallback="fail")
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(call, sh, cid=f"c{k}") for k in range(2)]
        wait_for(lambda: srv._admitted == 2)
        stopper = pool.submit(srv.stop, 20)
        wait_for(lambda: not os.path.exists(srv.socket_path))
        rc, out = call(sh, cid="new")
        assert rc == 1 and out["code"] == 11 and f"not answering at {srv.socket_path}" in out["msg"], out
        gate.set()
        assert [f.result() for f in calls] == [(0, {"cniVersion": "1.1.0", "container": f"c{k}"}) for k in range(2)]
        assert stopper.result() is True


# --- the in-process path behind it --------------------------------------------------------------

def test_the_daemon_answers_as_the_in_process_path_does(serve, tmp_path):
    srv = serve(None)  # run_cni: cni/skel.run with the meta plugin
    sh = shim_path(tmp_path, srv.socket_path, fallback="fail")
    big = b'{"cniVersion": "1.0.0", "name": "n", "type": "multiplex", "pad": "' + b"x" * (STDIN_MAX + 10) + b'"}'
    for stdin, env in ((big, {}), (b"{not json", {}), (b'{"cniVersion": "1.0.0"}', {"CNI_COMMAND": "BOGUS"}),
                       (b"", {"CNI_COMMAND": "VERSION"})):
        theirs = call(os.path.join(BIN, "multiplex"), stdin=stdin, env=env)
        ours = call(sh, stdin=stdin, env=env)
        assert ours == theirs, (stdin[:40], env)
    rc, out = call(sh, stdin=big)
    assert out["code"] == 7 and f"{len(big)} bytes" in out["msg"]


def test_a_call_whose_caller_gave_up_while_it_waited_is_not_run(serve):
    gate = threading.Event()
    rec = Recorder(gate=gate)
    srv = serve(rec, workers=1, queue_size=4)
    first = send(srv.socket_path, "a", "N=0")
    wait_for(lambda: "a" in srv._containers)
    gone = send(srv.socket_path, "b", "N=1")
    wait_for(lambda: srv._admitted == 2)
    gone.close()  # the runtime killed the shim (its own timeout)
    gate.set()
    assert shim.read_answer(first)[0] == 0
    first.close()
    wait_for(lambda: srv._admitted == 0)
    assert [c[0] for c in rec.calls] == ["a"]


def test_a_call_accepted_as_stop_begins_is_answered_not_dropped(serve, monkeypatch):
    """The accept thread may hold a connection it accepted but has not admitted yet when stop()
    begins: stop must wait for it (the accept thread ends first), so that call is served like the
    others admitted, never left behind the workers' stop markers and closed unanswered."""
    rec = Recorder()
    srv = serve(rec, workers=1, queue_size=2)
    accepted = threading.Event()
    admit = srv._admit

    def slow_admit(conn):
        accepted.set()
        time.sleep(0.5)       # between accept() and the admission count
        admit(conn)

    monkeypatch.setattr(srv, "_admit", slow_admit)
    conn = send(srv.socket_path, "late", "N=0")
    assert accepted.wait(10)
    assert srv.stop(10) is True
    try:
        assert shim.read_answer(conn)[0] == 0
    finally:
        conn.close()
    assert [c[0] for c in rec.calls] == ["late"]
