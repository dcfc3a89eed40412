"""A real `multiplex daemon` process for tests, started and stopped by its own pid.

    with DaemonProcess(state_dir, socket_path, netns=node, local_dir=objects) as d:
        shim = shim_path(tmp_path, d.socket_path, fallback="fail")
        ... exec `shim` as a runtime would (tests.cnitool.run_plugin(shim, ...)) ...
        d.get("/metrics")

`DaemonProcess` starts `.venv/bin/multiplex daemon ...` (inside netns `netns` with
`ip netns exec` when given), waits until the socket connects and /readyz answers 200 (its
stderr is in the failure message), and `stop()` sends SIGTERM to its pid, then SIGKILL after a
timeout. The metrics port defaults to a free loopback port of the daemon's netns (port 0 is
not used: the test must know the port to probe /readyz).
"""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional, Sequence

BIN = os.path.dirname(os.path.abspath(sys.executable))
MULTIPLEX = os.path.join(BIN, "multiplex")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A free TCP port on loopback (each netns has its own loopback, so a free port of the root
    namespace is free in a fresh netns too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonError(AssertionError):
    """The daemon did not start (or stop) as it should; the message carries its stderr."""


class DaemonProcess:
    def __init__(self, state_dir: str, socket_path: str, netns: Optional[str] = None,
                 local_dir: Optional[str] = None, kubeconfig: Optional[str] = None,
                 metrics_address: Optional[str] = None, extra_args: Sequence[str] = (),
                 node_name: Optional[str] = None, controllers: Optional[str] = None,
                 env: Optional[dict] = None, start_timeout: float = START_TIMEOUT):
        self.state_dir = str(state_dir)
        self.socket_path = str(socket_path)
        self.netns = netns
        self.local_dir = str(local_dir) if local_dir else None
        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.metrics_address = metrics_address or f"127.0.0.1:{free_port()}"
        self.extra_args = list(extra_args)
        self.node_name = node_name or (netns or f"node-{os.getpid()}")
        self.controllers = controllers
        self.env = env
        self.start_timeout = start_timeout
        self.proc: Optional[subprocess.Popen] = None
        self._stderr = tempfile.TemporaryFile()
        self._final_stderr = ""

    # --- the command ----------------------------------------------------------------------------
    def argv(self) -> list[str]:
        argv = [MULTIPLEX, "daemon", "--socket", self.socket_path, "--state-dir", self.state_dir,
                "--node-name", self.node_name, "--metrics-address", self.metrics_address,
                "--log-level", "debug"]
        if self.local_dir:
            argv += ["--local-dir", self.local_dir]
        if self.kubeconfig:
            argv += ["--kubeconfig", self.kubeconfig]
        if self.controllers is not None:
            argv += ["--controllers", self.controllers]
        argv += self.extra_args
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + argv

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_address}"

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> "DaemonProcess":
        env = dict(os.environ if self.env is None else self.env)
        env.pop("CNI_COMMAND", None)
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr, env=env, start_new_session=True)
        try:
            self.wait_ready(self.start_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until the socket connects and /readyz says 200; DaemonError (with stderr) otherwise."""
        limit = time.monotonic() + timeout
        why = "not started"
        while time.monotonic() < limit:
            if self.proc is None or self.proc.poll() is not None:
                raise DaemonError(f"multiplex daemon exited with {self.proc.returncode if self.proc else None} "
                                  f"before it was ready:\n{self.stderr()}")
            if not self.socket_connects():
                why = f"socket {self.socket_path} does not accept connections"
            else:
                status, body = self.get("/readyz")
                if status == 200:
                    return
                why = f"/readyz answered {status}: {body.strip()}"
            time.sleep(0.05)
        raise DaemonError(f"multiplex daemon not ready within {timeout:.0f} s ({why}):\n{self.stderr()}")

    def socket_connects(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of GET `path` on the daemon's health/metrics address; (0, error) when
        nothing answers. In a netns the request is made from inside it (curl-free: a Python child)."""
        url = self.metrics_url + path
        if self.netns:
            code = ("import sys, http.client, urllib.request, urllib.error\n"
                    "def body(r):\n try:\n  return r.read().decode()\n"
                    " except (http.client.HTTPException, OSError) as e:\n  return f'(body cut: {e!r})'\n"
                    "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])); "
                    "print(r.status); sys.stdout.write(body(r))\n"
                    "except urllib.error.HTTPError as e:\n print(e.code); sys.stdout.write(body(e))\n"
                    "except (http.client.HTTPException, OSError) as e:\n print(0); sys.stdout.write(str(e))\n")
            r = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-I", "-c", code, url,
                                str(timeout)], capture_output=True, text=True, timeout=timeout + 10)
            first, _, rest = r.stdout.partition("\n")
            return (int(first) if first.strip().isdigit() else 0), rest
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, _body(resp)
        except urllib.error.HTTPError as e:
            return e.code, _body(e)      # a daemon exiting may cut the body of its 503
        except (http.client.HTTPException, OSError) as e:
            return 0, str(e)

    def stderr(self) -> str:
        """The daemon's stderr (and stdout) so far, its last 8000 characters."""
        if self._stderr.closed:
            return self._final_stderr
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-8000:]

    def signal(self, signum: int) -> None:
        """Send `signum` to the daemon's own pid (`ip netns exec` execs it: the same pid)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> Optional[int]:
        """The exit code, or None when it is still running after `timeout`."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit code (negative: killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL by pid, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        if not self._stderr.closed:
            self._final_stderr = self.stderr()
            self._stderr.close()

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def shim_path(tmpdir, socket_path: str, fallback: Optional[str] = "exec", name: str = "multiplex",
              python: Optional[str] = None) -> str:
    """Write an installed shim named `name` into `tmpdir` (as `multiplex install --daemon` would)
    and return its path. fallback: "exec" (the in-process multiplex of this venv), "fail", or None
    (same as fail)."""
    from multiplex.daemon.shim import render

    argv = [os.path.join(BIN, "multiplex")] if fallback == "exec" else None
    text = render(str(socket_path), argv, python or real_python())
    path = os.path.join(str(tmpdir), name)
    os.makedirs(str(tmpdir), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def real_python() -> str:
    """The interpreter the shim runs with: the base interpreter behind the venv (the shim needs no
    venv), as install would choose `sys.executable`'s real file."""
    return os.path.realpath(sys.executable)


def _body(resp) -> str:
    """The response's body, or what cut it (a daemon that exits mid-answer)."""
    try:
        return resp.read().decode()
    except (http.client.HTTPException, OSError) as e:
        return f"(body cut: {e!r})"
