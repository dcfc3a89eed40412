"""The daemon's CNI server: the shim's calls on a unix socket, run by a bounded worker pool.

```
accept thread ── peer check (SO_PEERCRED: root) ── admitted? ──no──▶ code 11 "try again later"
      │ yes (at most workers + queue_size calls admitted at once)
      ▼
  queue ─▶ worker: read the request ─▶ container gate ─▶ skel.run(meta plugin) ─▶ answer
```

Choices, named:
- **Bound.** A call is admitted at accept when fewer than `workers + queue_size` calls are
  admitted (running, queued, or waiting behind another call of its container); past that it gets
  code 11 at once, naming the bound. Memory never grows with a burst: the accept thread holds no
  more than that many connections.
- **Order per container.** Calls carrying one CNI_CONTAINERID never overlap and run in the order
  their requests were read (arrival = the whole request read). A call that finds its container busy
  is parked on the container's FIFO and the worker moves on; the worker finishing the running call
  takes the next one. The FIFO is dropped with its last call, so memory stays bounded.
- **Deadline.** Each call has the budget of cni/request.py CALL_BUDGET, started at accept: its
  read, its wait in the queue and its run share it. A call whose deadline passed before it ran gets
  code 11 without running; the one running gets the deadline on its Request (every wait inside
  takes what is left of it, as in a one-shot call).
- **Stop.** The listener is closed and the socket unlinked first (a shim then falls back or fails
  at once); the calls admitted by then all get their answers (bounded by their deadlines).
"""
from __future__ import annotations

import bisect
import errno
import io
import json
import os
import queue
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..cni.context import STATE_DIR_ENV
from ..cni.errors import CNIError, INVALID_CONFIG, INVALID_ENVIRONMENT, TRY_AGAIN_LATER
from ..cni.request import CALL_BUDGET, STDIN_MAX
from ..util import log as _log
from . import shim

#: (environ, stdin, stdin_size, deadline) -> (exit code, stdout bytes)
Handler = Callable[[dict, bytes, int, float], "tuple[int, bytes]"]
#: uids whose calls are served: root (and the daemon's own uid, root in production)
ALLOWED_UIDS = frozenset({0, os.geteuid()})
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
LISTEN_BACKLOG = 512


class ServerError(Exception):
    """The server cannot start (another daemon serves the socket, a path that is not ours)."""


@dataclass
class Call:
    """One accepted connection and what is known of its call."""

    conn: socket.socket
    accepted: float
    deadline: float
    environ: dict = field(default_factory=dict)
    stdin: bytes = b""
    stdin_size: int = 0

    @property
    def command(self) -> str:
        return self.environ.get("CNI_COMMAND", "")

    @property
    def container(self) -> str:
        return self.environ.get("CNI_CONTAINERID", "")

    @property
    def version(self) -> str:
        return shim.cni_version_in(self.stdin)


class CNIServer:
    """Serve the shim on `socket_path` with `workers` threads and `queue_size` waiting calls."""

    def __init__(self, socket_path: str, handler: Optional[Handler] = None, *, services: Any = None,
                 workers: int = 8, queue_size: int = 64, metrics: Any = None,
                 log: Optional[_log.Logger] = None, budget: float = CALL_BUDGET,
                 state_dir: Optional[str] = None):
        self.socket_path = socket_path
        #: the state root of a call whose shim forwarded none (the daemon's --state-dir)
        self.state_dir = state_dir
        self.services = services
        self.handler: Handler = handler or self.run_cni
        self.workers = max(1, int(workers))
        self.queue_size = max(0, int(queue_size))
        self.metrics = metrics
        self.log = log or _log.get()
        self.budget = budget
        self._queue: "queue.SimpleQueue[Optional[Call]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0
        self._idle = threading.Condition(self._lock)
        self._containers: dict[str, list[Call]] = {}
        self._listener: Optional[socket.socket] = None
        self._socket_ino: Optional[tuple[int, int]] = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> "CNIServer":
        """Bind the socket (0600, root) and start the accept thread and the workers."""
        self._listener = bind_socket(self.socket_path)
        st = os.stat(self.socket_path)
        self._socket_ino = (st.st_dev, st.st_ino)
        self._listener.settimeout(0.5)  # the accept loop looks at _stopping at least this often
        self._threads = [threading.Thread(target=self._accept_loop, name="cni-accept", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"cni-worker-{k}", daemon=True)
                          for k in range(self.workers)]
        for t in self._threads:
            t.start()
        self.log.info("cni server listening", socket=self.socket_path, workers=self.workers,
                      queue=self.queue_size)
        return self

    def listening(self) -> bool:
        return self._listener is not None and not self._stopping.is_set()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Stop accepting (the socket is closed and unlinked at once), answer every admitted call,
        then return. True when every call was answered within `timeout` (default: the budget)."""
        if self._stopping.is_set():
            return True
        self._stopping.set()
        self._close_listener()
        limit = time.monotonic() + (self.budget + 5.0 if timeout is None else timeout)
        # a connection accepted just before the close is admitted (or refused) by the accept
        # thread: wait for it to end, so every admitted call is counted before the drain below
        accept = self._threads[0] if self._threads else None
        if accept is not None and accept is not threading.current_thread():
            accept.join(max(0.0, limit - time.monotonic()))
        with self._idle:
            while self._admitted > 0 and time.monotonic() < limit:
                self._idle.wait(max(0.0, min(0.5, limit - time.monotonic())))
            drained = self._admitted == 0
        for _ in range(self.workers):
            self._queue.put(None)
        for t in self._threads:
            t.join(max(0.0, limit - time.monotonic()) + 1.0)
        self.log.info("cni server stopped", drained=drained)
        return drained

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            st = os.lstat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._socket_ino:  # ours, not a successor's
                os.unlink(self.socket_path)
        except OSError:
            pass
        listener.close()

    # --- accepting --------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if self._stopping.is_set():
                    return
                self.log.warning("cni server: accept failed", error=str(e))
                time.sleep(0.05)  # EMFILE and the like: do not spin
                continue
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        accepted = time.monotonic()
        uid = peer_uid(conn)
        if uid not in ALLOWED_UIDS:
            self.log.warning("cni server: refused a caller that is not root", uid=uid)
            conn.close()
            return
        conn.settimeout(None)
        with self._lock:
            full = self._admitted >= self.workers + self.queue_size
            if not full:
                self._admitted += 1
        if full:
            self._metric("request_rejected", "queue-full")
            call = Call(conn, accepted, accepted)
            call.stdin = _peek(conn)
            self._answer_error(call, CNIError(
                TRY_AGAIN_LATER,
                f"the multiplex daemon is busy: {self.workers} calls running and {self.queue_size} "
                "waiting (its queue size); try again later",
                f"socket: {self.socket_path}; queue size: {self.queue_size}; workers: {self.workers}"),
                observe=False)
            return
        self._metric("request_queued", 1)
        self._queue.put(Call(conn, accepted, accepted + self.budget))

    # --- working ------------------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            self._metric("request_queued", -1)
            try:
                if not self._read(call):
                    continue  # answered or dropped
                if not self._enter(call):
                    continue  # parked behind its container's running call
                while call is not None:
                    self._serve(call)
                    call = self._next_of(call.container)
            except Exception as e:  # never lose a worker
                self.log.error("cni server: worker error", error=f"{type(e).__name__}: {e}")

    def _read(self, call: Call) -> bool:
        """Read the request; False when there is none to serve (answered or dropped here)."""
        try:
            call.conn.settimeout(max(0.1, call.deadline - time.monotonic()))
            first = call.conn.recv(1)
            if not first:  # a probe (is the socket served?), not a call
                self.log.debug("cni server: connection closed without a request")
                _close(call.conn)
                self._done(call)
                return False
            env_len, stdin_len, stdin_size = shim.decode_request_header(
                first + shim.recv_exact(call.conn, shim.REQUEST_HEADER - 1))
            if env_len > shim.ENV_MAX:
                self._answer_error(call, CNIError(
                    INVALID_ENVIRONMENT, f"the CNI environment is {env_len} bytes, more than the limit of "
                    f"{shim.ENV_MAX}", f"field: environment; allowed: at most {shim.ENV_MAX} bytes"))
                return False
            if stdin_len > STDIN_MAX + 1:
                size = max(stdin_len, stdin_size)
                self._answer_error(call, CNIError(
                    INVALID_CONFIG, f"network config on stdin is {size} bytes, more than the limit of {STDIN_MAX}",
                    f"field: stdin; allowed: at most {STDIN_MAX} bytes"))
                return False
            call.environ = shim.decode_env(shim.recv_exact(call.conn, env_len))
            call.stdin = shim.recv_exact(call.conn, stdin_len)
            call.stdin_size = max(stdin_size, stdin_len)
            return True
        except (OSError, shim.ProtocolError) as e:
            self.log.warning("cni server: unreadable request", error=str(e))
            _close(call.conn)
            self._done(call)
            return False

    def _enter(self, call: Call) -> bool:
        """True: the call may run now. False: parked on its container's FIFO."""
        cid = call.container
        if not cid:
            return True
        with self._lock:
            fifo = self._containers.get(cid)
            if fifo is None:
                self._containers[cid] = []
                return True
            # parked in accept order: of two calls read at the same moment, the earlier-accepted runs first
            bisect.insort(fifo, call, key=lambda c: c.accepted)
            return False

    def _next_of(self, cid: str) -> Optional[Call]:
        """The next parked call of container `cid`, or None (the FIFO is then dropped)."""
        if not cid:
            return None
        with self._lock:
            fifo = self._containers.get(cid)
            if fifo:
                return fifo.pop(0)
            self._containers.pop(cid, None)
            return None

    def _serve(self, call: Call) -> None:
        if time.monotonic() >= call.deadline:
            waited = time.monotonic() - call.accepted
            self._answer_error(call, CNIError(
                TRY_AGAIN_LATER, f"the multiplex daemon could not start {call.command or 'the call'} within its "
                f"deadline (waited {waited:.1f} s for a worker); try again later",
                f"socket: {self.socket_path}; budget: {self.budget:.0f} s"))
            return
        if _hung_up(call.conn):  # the runtime gave up on it while it waited: nobody to answer
            self.log.warning("cni server: caller gone before its call ran; not run",
                             command=call.command, container=call.container)
            self._send(call, 1, b"")
            return
        self._metric("request_inflight", 1)
        try:
            try:
                code, out = self.handler(call.environ, call.stdin, call.stdin_size, call.deadline)
            except Exception as e:  # the handler answers in the protocol; this is a bug
                self.log.error("cni server: handler error", error=f"{type(e).__name__}: {e}")
                code, out = 1, json.dumps(CNIError(100, f"internal error: {type(e).__name__}: {e}")
                                          .to_dict(call.version)).encode()
        finally:
            self._metric("request_inflight", -1)
        self._send(call, code, out)

    def run_cni(self, environ: dict, stdin: bytes, stdin_size: int, deadline: float) -> tuple[int, bytes]:
        """The default handler: the in-process path (cni/skel.run with the meta plugin), warm,
        with the daemon's services on the call's context."""
        from ..cni import skel
        from ..meta.orchestrator import plugin

        if self.state_dir and not environ.get(STATE_DIR_ENV):
            environ = dict(environ, **{STATE_DIR_ENV: self.state_dir})
        out = io.StringIO()
        code = skel.run(plugin, environ, stdin, out, stdin_size=stdin_size, services=self.services,
                        deadline=deadline)
        return code, out.getvalue().encode("utf-8", "surrogateescape")

    # --- answering ----------------------------------------------------------------------------------
    def _answer_error(self, call: Call, error: CNIError, observe: bool = True) -> None:
        out = json.dumps(error.to_dict(call.version)).encode()
        if observe:
            self._send(call, 1, out)
        else:
            _send_and_close(call.conn, 1, out)

    def _send(self, call: Call, code: int, out: bytes) -> None:
        _send_and_close(call.conn, code, out)
        self._metric("observe_request", call.command or "unknown", time.monotonic() - call.accepted,
                     _cni_code(code, out))
        self._done(call)

    def _done(self, call: Call) -> None:
        with self._idle:
            self._admitted -= 1
            self._idle.notify_all()

    def _metric(self, name: str, *args: Any) -> None:
        if self.metrics is None:
            return
        try:
            getattr(self.metrics, name)(*args)
        except Exception as e:  # metrics never break a call
            self.log.debug("metrics call failed", metric=name, error=str(e))


def _cni_code(code: int, out: bytes) -> int:
    if code == 0:
        return 0
    try:
        return int(json.loads(out).get("code", 100))
    except (ValueError, AttributeError, TypeError):
        return 100


def _send_and_close(conn: socket.socket, code: int, out: bytes) -> None:
    try:
        conn.settimeout(5.0)
        conn.sendall(shim.encode_answer(code, out))
    except OSError:
        pass  # the shim is gone (the runtime gave up): nothing to tell
    _close(conn)


def _close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass


def _hung_up(conn: socket.socket) -> bool:
    """True when the caller closed its end (a peek without waiting sees end-of-file)."""
    timeout = conn.gettimeout()
    try:
        conn.settimeout(0.0)  # with a timeout, Python would poll (wait) before the peek
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        try:
            conn.settimeout(timeout)
        except OSError:
            pass


def _peek(conn: socket.socket) -> bytes:
    """What the caller already sent, without waiting (for the cniVersion of a refusal)."""
    try:
        conn.settimeout(0.0)
        return conn.recv(64 * 1024)
    except OSError:
        return b""


def peer_uid(conn: socket.socket) -> Optional[int]:
    """The uid of the process at the other end (SO_PEERCRED), None when unknown."""
    try:
        _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        return uid
    except OSError:
        return None


def bind_socket(path: str) -> socket.socket:
    """A listening unix socket at `path`: parent made 0700 when missing, a stale socket (nothing
    answers on it) replaced, another daemon's refused, bound under umask 077 (never wider than
    0600, not even for a moment), owned by root, mode 0600."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o700, exist_ok=True)
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise ServerError(f"{path} exists and is not a socket; move it away or choose another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ServerError(f"cannot tell whether a daemon serves {path}: {e}") from None
            os.unlink(path)  # stale: a daemon that died left it
        else:
            raise ServerError(f"another multiplex daemon is serving {path}; stop it first or choose another --socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    try:
        if os.geteuid() == 0:
            os.chown(path, 0, 0)
        os.chmod(path, 0o600)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
