"""One `multiplex daemon` per lab node, and CNI calls made the way the runtime makes them.

Each daemon runs inside its node's netns (`ip netns exec`, which execs: the pid we get is the
daemon's), in a session of its own (a Ctrl-C at the terminal reaches the lab, which then stops
the daemons in order, not the daemons mid-call). Its pid is written to `<node dir>/daemon.pid` the
moment it starts, so `multiplex lab --down` (or the next lab) stops a daemon a crashed lab left,
by that pid, after checking /proc that the pid is still that daemon.

A CNI call execs the node's shim (rendered by multiplex.daemon.shim into `<node dir>/bin/multiplex`)
inside the node's netns with the CNI environment and the node's multiplex config on stdin, as
a runtime does with `type: multiplex` in daemon mode. The shim's fallback is "fail": a lab whose
daemon is not answering says so instead of quietly running the calls in-process.

The daemons run the controllers the lab's networks need (CONTROLLERS): node-registry (underlay
facts), vxlan-peers (the overlay's FDB and neighbours), bgp (one BIRD per node, started and stopped
by its daemon; settings from $MULTIPLEX_BGP_CONFIG) and policy (MultiNetworkPolicy). A daemon that
had to be killed leaves its BIRD running (by design: a restarted daemon adopts it), so the lab then
stops that BIRD itself, by the pid in `<node>/state/bgp/bird.pid`, after checking /proc that the pid
is a bird of this lab.
"""
from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from .cluster import BGP_SETTINGS, CLUSTER, STATE, multiplex_config, node_dir
from .topology import UNDERLAY_IF, Node, Pod

METRICS_PORT = 9635      # on each node netns's own loopback
READY_TIMEOUT = 180.0   # generous: under an emulated VM (tests/vm) imports alone take a minute
CONTROLLERS = "node-registry,vxlan-peers,bgp,policy"


def multiplex_bin() -> str:
    here = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "multiplex")
    return here if os.path.exists(here) else (shutil.which("multiplex") or "multiplex")


def cni_path() -> str:
    return os.pathsep.join(p for p in (os.path.dirname(multiplex_bin()), "/usr/lib/cni", "/opt/cni/bin")
                           if os.path.isdir(p))


def socket_path(node: Node) -> str:
    return f"{node_dir(node)}/multiplex.sock"


def shim_file(node: Node) -> str:
    return f"{node_dir(node)}/bin/multiplex"


def pid_file(node: Node) -> str:
    return f"{node_dir(node)}/daemon.pid"


def bird_socket(node: Node) -> str:
    """The node's BIRD control socket (the bgp controller's, multiplex.controllers.bgp)."""
    return f"{node_dir(node)}/state/bgp/bird.ctl"


@dataclass
class Daemon:
    node: Node
    proc: subprocess.Popen
    ready_after: float = 0.0


def start(node: Node) -> Daemon:
    """Start the node's daemon (not waiting for it) and record its pid."""
    own = node_dir(node)
    argv = ["ip", "netns", "exec", node.netns, multiplex_bin(), "daemon",
            "--socket", socket_path(node), "--state-dir", f"{own}/state", "--local-dir", CLUSTER,
            "--node-name", node.name, "--metrics-address", f"127.0.0.1:{METRICS_PORT}",
            "--underlay-interface", UNDERLAY_IF, "--controllers", CONTROLLERS, "--log-file", f"{own}/daemon.log"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["MULTIPLEX_BGP_CONFIG"] = BGP_SETTINGS
    with open(f"{own}/daemon.stderr", "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=env, start_new_session=True)
    with open(pid_file(node), "w", encoding="utf-8") as f:
        f.write(f"{proc.pid}\n")
    _write_shim(node)
    return Daemon(node, proc)


def _write_shim(node: Node) -> None:
    from ...daemon import shim

    path = shim_file(node)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        # the base interpreter, not the venv: the shim is stdlib only, as the one `install --daemon` writes
        f.write(shim.render(socket_path(node), None, os.path.realpath(sys.executable)))
    os.chmod(path, 0o755)


_READYZ = ("import socket,sys\n"
           "s=socket.create_connection(('127.0.0.1',%d),1)\n"
           "s.sendall(b'GET /readyz HTTP/1.0\\r\\nHost: lab\\r\\n\\r\\n')\n"
           "sys.exit(0 if s.recv(64).split(b' ')[1:2]==[b'200'] else 1)\n")


def _readyz(node: Node) -> bool:
    """/readyz answers 200 on the node's loopback (asked from inside the node's netns)."""
    r = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-I", "-S", "-c",
                        _READYZ % METRICS_PORT], capture_output=True)
    return r.returncode == 0


def wait_ready(daemons: list[Daemon], timeout: float = READY_TIMEOUT) -> None:
    """Until every daemon has its socket and answers /readyz; raises naming the ones that did not."""
    started = time.monotonic()
    waiting = list(daemons)
    while waiting:
        for d in waiting:
            if d.proc.poll() is not None:
                raise RuntimeError(f"the daemon of {d.node.name} exited with {d.proc.returncode}: "
                                   f"{_tail(node_dir(d.node) + '/daemon.stderr')}")
        with ThreadPoolExecutor(max_workers=len(waiting)) as pool:   # probed at once, not one after another
            ready = list(pool.map(lambda d: os.path.exists(socket_path(d.node)) and _readyz(d.node), waiting))
        for d, up in zip(list(waiting), ready):
            if up:
                d.ready_after = time.monotonic() - started
                waiting.remove(d)
        if waiting and time.monotonic() - started > timeout:
            names = ", ".join(d.node.name for d in waiting)
            raise RuntimeError(f"daemon(s) of {names} not ready after {timeout:.0f} s "
                               f"(see {STATE}/<node>/daemon.log)")
        if waiting:
            time.sleep(0.1)


def _tail(path: str, chars: int = 600) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-chars:].strip()
    except OSError:
        return ""


def _argv(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _is_lab_daemon(pid: int) -> bool:
    """The pid is still a `multiplex daemon` of this lab (not a reused pid)."""
    argv = _argv(pid)
    return b"daemon" in argv and any(a.startswith(STATE.encode()) for a in argv)


def is_lab_bird(pid: int) -> bool:
    """The pid is a BIRD of this lab: `bird ... -c /run/mpxlab/<node>/state/bgp/bird.conf ...`."""
    argv = _argv(pid)
    return bool(argv) and os.path.basename(argv[0]) == b"bird" and \
        any(a.startswith(STATE.encode()) for a in argv)


def stop_pid(pid: int, grace: float = 10.0, check=_is_lab_daemon) -> bool:
    """SIGTERM (a daemon drains and stops its BIRD), then SIGKILL after `grace`. True when it is gone."""
    if not check(pid):
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return not _alive(pid, wait=2.0)


def _alive(pid: int, wait: float = 0.0) -> bool:
    """Whether pid still runs (a zombie child of ours is reaped, and counts as gone)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        except ChildProcessError:
            pass
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except (OSError, IndexError):
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


def recorded_pids() -> list[int]:
    """The daemon pids the lab (this run or a crashed one) recorded."""
    pids = []
    for entry in sorted(os.listdir(STATE)) if os.path.isdir(STATE) else []:
        try:
            with open(f"{STATE}/{entry}/daemon.pid", encoding="utf-8") as f:
                pids.append(int(f.read().strip()))
        except (OSError, ValueError):
            continue
    return pids


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def bird_pid(node: Node) -> Optional[int]:
    """The pid in the node's BIRD pid file (BIRD writes it; None when there is none)."""
    return _read_pid(f"{node_dir(node)}/state/bgp/bird.pid")


def bird_pids() -> list[int]:
    """The pids in the BIRD pid files of every node of the lab (live or not)."""
    entries = sorted(os.listdir(STATE)) if os.path.isdir(STATE) else []
    return [pid for e in entries if (pid := _read_pid(f"{STATE}/{e}/state/bgp/bird.pid")) is not None]


def stop_all() -> list[int]:
    """Stop every recorded daemon, then any BIRD still running (its daemon was killed, or crashed);
    returns the pids that would not die."""
    pids = recorded_pids()
    with ThreadPoolExecutor(max_workers=max(1, len(pids))) as pool:   # they drain at once, not in turn
        stuck = [pid for pid, gone in zip(pids, pool.map(stop_pid, pids)) if not gone]
    return stuck + [pid for pid in bird_pids() if not stop_pid(pid, grace=5.0, check=is_lab_bird)]


def cni(command: str, pod: Pod, node: Node) -> dict:
    """One CNI call for `pod`, through the node's shim, in the node's netns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
                "CNI_NETNS": f"/var/run/netns/{pod.netns}", "CNI_IFNAME": "eth0", "CNI_PATH": cni_path(),
                "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod.name};"
                            f"K8S_POD_UID={pod.uid};K8S_POD_INFRA_CONTAINER_ID={pod.container_id}"})
    proc = subprocess.run(["ip", "netns", "exec", node.netns, shim_file(node)],
                          input=json.dumps(multiplex_config(node)), env=env, capture_output=True, text=True)
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        out = {"stdout": proc.stdout[-500:]}
    if proc.returncode != 0:
        raise RuntimeError(f"CNI {command} for {pod.name} on {node.name} failed: {json.dumps(out)} "
                           f"{proc.stderr.strip()[-500:]}")
    return out
