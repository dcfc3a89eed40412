"""BIRD 2: its control socket (what birdc speaks) and one BIRD process per node.

The socket protocol: BIRD greets with `0001 BIRD x.y ready.`; each command is one line; the reply
is lines `DDDD-text` (more follow), ` text` (continues the previous code) and ends with a line
`DDDD text` (a code followed by a space). Codes 8xxx and 9xxx are errors (8002: a syntax error
in the config, with file:line:column). Spoken here directly, so the daemon needs no birdc.

`Bird` runs one BIRD: `bird -f -c CONF -s SOCK -P PIDFILE` in a session of its own, its stderr (its
log) appended to `bird.log`, all in one directory (the daemon's `<state>/bgp/`). Started, waited
for (its socket answers), reconfigured with `configure` (established sessions are kept: BIRD
restarts only the protocols whose config changed), and stopped by its own pid. A BIRD left by a
daemon that crashed is adopted (its pid file names a live bird whose socket answers), so a daemon
restart does not restart BIRD and drops no route.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Optional

CONF, SOCK, PIDFILE, LOG = "bird.conf", "bird.ctl", "bird.pid", "bird.log"
#: written before `graceful restart`, removed once the next BIRD (started with -R) has converged
GR_MARKER = "graceful-restart"
_LINE = re.compile(r"^(\d{4})([ -])(.*)$")


class BirdError(Exception):
    """BIRD answered with an error code, or could not be reached or started."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


@dataclass
class Reply:
    code: int
    lines: list[tuple[int, str]]

    @property
    def text(self) -> str:
        return "\n".join(t for _, t in self.lines)


class BirdSocket:
    """One connection to BIRD's control socket."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise BirdError(f"cannot connect to BIRD's control socket {path}: {e.strerror or e}") from None
        self._buf = b""
        self._read_reply()   # the greeting

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "BirdSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _readline(self) -> str:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BirdError(f"BIRD closed its control socket {self.path}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def _read_reply(self) -> Reply:
        lines: list[tuple[int, str]] = []
        code = 0
        while True:
            raw = self._readline()
            m = _LINE.match(raw)
            if m:
                code = int(m.group(1))
                lines.append((code, m.group(3)))
                if m.group(2) == " ":
                    return Reply(code, lines)
            else:   # " text": continues the previous code
                lines.append((code, raw[1:] if raw.startswith(" ") else raw))

    def command(self, text: str) -> Reply:
        """Send one command; BirdError on an error reply (8xxx, 9xxx)."""
        self.sock.sendall(text.encode() + b"\n")
        reply = self._read_reply()
        if reply.code >= 8000:
            raise BirdError(f"BIRD refused {text!r}: {reply.text}", reply.code)
        return reply


def command(path: str, text: str, timeout: float = 5.0) -> Reply:
    with BirdSocket(path, timeout) as s:
        return s.command(text)


# --- what `show protocols all` says ----------------------------------------------------------------

@dataclass
class Protocol:
    name: str
    proto: str
    table: str
    state: str
    since: str
    info: str
    description: str = ""
    neighbor: str = ""
    neighbor_as: str = ""
    bgp_state: str = ""
    routes: dict = None   # channel -> {"imported": n, "exported": n, ...}

    def to_dict(self) -> dict:
        return {"name": self.name, "protocol": self.proto, "state": self.state, "since": self.since,
                "info": self.info, "description": self.description, "neighbor": self.neighbor,
                "neighborAS": self.neighbor_as, "bgpState": self.bgp_state, "routes": self.routes or {}}


_HEAD = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+(?: \S+)?)\s*(.*)$")


def parse_protocols(reply: Reply) -> list[Protocol]:
    """`show protocols all`: code 1002 lines head each protocol, 1006 lines carry its details."""
    out: list[Protocol] = []
    channel = ""
    for code, text in reply.lines:
        if code == 1002:
            m = _HEAD.match(text)
            if m:
                name, proto, table, state, since, info = m.groups()
                out.append(Protocol(name, proto, table, state, since.strip(), info.strip(), routes={}))
                channel = ""
        elif code == 1006 and out:
            p, t = out[-1], text.strip()
            key, _, value = t.partition(":")
            value = value.strip()
            if t.startswith("Channel "):
                channel = t.split()[1]
            elif key == "Description":
                p.description = value
            elif key == "Neighbor address":
                p.neighbor = value
            elif key == "Neighbor AS":
                p.neighbor_as = value
            elif key == "BGP state":
                p.bgp_state = value
            elif key == "Routes" and channel:
                counts = {}
                for part in value.split(","):
                    n, _, what = part.strip().partition(" ")
                    if n.isdigit():
                        counts[what.strip()] = int(n)
                p.routes[channel] = counts
    return out


def protocols(path: str) -> list[Protocol]:
    return parse_protocols(command(path, "show protocols all"))


# --- the process -----------------------------------------------------------------------------------

def bird_binary() -> Optional[str]:
    return shutil.which("bird") or next((p for p in ("/usr/sbin/bird", "/sbin/bird") if os.access(p, os.X_OK)), None)


class Bird:
    """The node's BIRD, in `directory` (bird.conf, bird.ctl, bird.pid, bird.log)."""

    def __init__(self, directory: str, binary: Optional[str] = None, netns: Optional[str] = None):
        self.directory = directory
        self.binary = binary or bird_binary() or "bird"
        self.netns = netns        # tests: run it in a named netns (`ip netns exec`)
        self.conf = os.path.join(directory, CONF)
        self.socket_path = os.path.join(directory, SOCK)
        self.pidfile = os.path.join(directory, PIDFILE)
        self.logfile = os.path.join(directory, LOG)
        self.marker = os.path.join(directory, GR_MARKER)
        self.proc: Optional[subprocess.Popen] = None
        self.pid: Optional[int] = None

    # --- state ---------------------------------------------------------------------------------
    def answers(self) -> bool:
        try:
            command(self.socket_path, "show status", timeout=2.0)
            return True
        except (BirdError, OSError):
            return False

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and _is_bird(self.pid)

    def adopt(self) -> bool:
        """Take over a BIRD left running (its pid file names a live bird whose socket answers)."""
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return False
        if _is_bird(pid) and self.answers():
            self.pid, self.proc = pid, None
            return True
        return False

    # --- life cycle ----------------------------------------------------------------------------
    def check_config(self, text: str) -> None:
        """`bird -p`: parse a config without running it; BirdError with BIRD's message."""
        tmp = self.conf + ".check"
        with open(tmp, "w") as f:
            f.write(text)
        try:
            r = subprocess.run([self.binary, "-p", "-c", tmp], capture_output=True, text=True, timeout=30)
        finally:
            os.unlink(tmp)
        if r.returncode != 0:
            raise BirdError(f"BIRD refuses the generated config: {(r.stderr or r.stdout).strip()}")

    def start(self, timeout: float = 15.0, recover: bool = False) -> int:
        """Start BIRD on bird.conf and wait until its socket answers; its pid. `recover`: start in
        graceful restart recovery (-R), after a graceful restart of the previous BIRD."""
        os.makedirs(self.directory, exist_ok=True)
        for stale in (self.socket_path, self.pidfile):
            if os.path.exists(stale):
                os.unlink(stale)
        argv = [self.binary, "-f", "-c", self.conf, "-s", self.socket_path, "-P", self.pidfile]
        if recover:
            argv.append("-R")
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        self.pid = self.proc.pid
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                raise BirdError(f"BIRD exited with {self.proc.returncode} at start: {self.log_tail()}")
            if self.answers():
                return self.pid
            time.sleep(0.05)
        self.stop()
        raise BirdError(f"BIRD's socket {self.socket_path} did not answer within {timeout:.0f} s: {self.log_tail()}")

    def configure(self) -> str:
        """Apply bird.conf to the running BIRD (`configure`: sessions whose config did not change
        stay up). BIRD's final answer, e.g. "Reconfigured"; BirdError when it refuses the file."""
        reply = command(self.socket_path, f'configure "{self.conf}"', timeout=30.0)
        return reply.lines[-1][1] if reply.lines else ""

    def graceful_restart(self, timeout: float = 10.0) -> bool:
        """Stop BIRD for a graceful restart: peers keep our routes as stale, the kernel keeps them
        (`persist`). The marker is written first (BIRD may be gone before it answers), holding the
        time, so the next start recovers (-R); it is removed again when BIRD refuses the command.
        True when BIRD is gone."""
        with open(self.marker, "w") as f:
            f.write(f"{time.time():.3f}\n")
        try:
            command(self.socket_path, "graceful restart")
        except BirdError:
            if self.answers():        # refused and still running: no graceful restart happened
                self.finish_recovery()
        return self._wait_gone(timeout)

    def restart_pending(self, within: float) -> bool:
        """The previous BIRD stopped for a graceful restart less than `within` seconds ago (the
        restart time: after it the peers have dropped our stale routes, and recovering would only
        hold the kernel's routes back until every peer is up again, e.g. after a node reboot)."""
        try:
            with open(self.marker) as f:
                stopped = float(f.read().strip() or 0)
        except (OSError, ValueError):
            return False
        return 0 <= time.time() - stopped <= within

    def recovering(self) -> bool:
        """BIRD is still in graceful restart recovery (`show status`): it waits for its peers'
        End-of-RIB before it syncs the kernel and withdraws what was not re-learnt."""
        return "recovery" in command(self.socket_path, "show status", timeout=2.0).text.lower()

    def finish_recovery(self) -> None:
        try:
            os.unlink(self.marker)
        except FileNotFoundError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to our BIRD's pid, SIGKILL after `timeout`."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._wait_gone(timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone(5)
        self.pid, self.proc = None, None

    def _wait_gone(self, timeout: float) -> bool:
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    return True
            elif self.pid is None or not _is_bird(self.pid):
                return True
            time.sleep(0.02)
        return False

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.logfile, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""


def _is_bird(pid: int) -> bool:
    """pid is a live (not zombie) process running bird."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    comm = stat[stat.find("(") + 1:stat.rfind(")")]
    state = stat[stat.rfind(")") + 2:].split()[0]
    return state != "Z" and comm == "bird"
