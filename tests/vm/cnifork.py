"""Run a built-in CNI plugin as a runtime would, but in a fork of the test process ("warm").

Under QEMU's emulation a fresh Python process costs about 20 s before it does anything (pyroute2
and jsonschema imports, over the guest's 9p root); a fork of the test process, which imported them
once, costs a fraction of a second. `fork_plugin` takes the same arguments as
tests.cnitool.run_plugin and returns the same CNIOutput: the child enters the node's netns
(setns), gets exactly the CNI environment and stdin a runtime would give, and runs the plugin's
entry body (multiplex.cni.skel.run), whose stdout and exit code come back. Only the interpreter
start-up is skipped; tests that check the real binary use run_plugin.

`run_cni` picks the way: fork for built-ins, exec for anything else or when
MULTIPLEX_TEST_EXEC=1 (to run a whole test file through the real binaries).
"""
from __future__ import annotations

import io
import json
import os
import selectors
import signal
import sys
import time
from typing import Any, Optional, Union

from multiplex.cni.plugin import Plugin
from tests.cnitool import CNI_PATH, CNIOutput, cni_env, run_plugin

EXEC_ENV = "MULTIPLEX_TEST_EXEC"


def builtin(plugin: Union[str, Plugin]) -> Optional[Plugin]:
    """The in-process plugin for a type name (the `multiplex.plugins` entry points), or None for an
    external plugin."""
    if isinstance(plugin, Plugin):
        return plugin
    if os.sep in plugin:
        return None
    from multiplex.cni import registry

    return registry.builtin(plugin)


def run_cni(plugin: Union[str, Plugin], command: str, config: dict, **kw: Any) -> CNIOutput:
    """fork_plugin for built-ins, run_plugin (exec) otherwise or when MULTIPLEX_TEST_EXEC=1."""
    obj = builtin(plugin)
    if obj is None or os.environ.get(EXEC_ENV) == "1":
        name = plugin if isinstance(plugin, str) else plugin.type_name
        return run_plugin(name, command, config, **kw)
    return fork_plugin(obj, command, config, **kw)


_warmed: set[str] = set()


def warm(plugin: Plugin) -> None:
    """Import in this (parent) process what a plugin call imports, once, so every fork inherits it:
    pyroute2 with the netlink classes a dump touches, jsonschema with the plugin's and IPAM's
    compiled validators, the IPAM and its SQLite store. Read-only: nothing on any netns changes."""
    if plugin.type_name in _warmed:
        return
    _warmed.add(plugin.type_name)
    import importlib

    for name in ("sqlite3", "multiplex.netlink", "multiplex.cni.invoke", "multiplex.ipam.plugin",
                 "multiplex.ipam.sqlite.store"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from multiplex import netlink
    from multiplex.util import schema

    with netlink.open_node() as h:
        h.links()
        h.routes()
        h.addresses()
    for name in {plugin.schema or "", "ipam"} - {""}:
        try:
            schema._validator(name)
        except FileNotFoundError:
            pass


def fork_plugin(plugin: Plugin, command: str, config: dict, *, node: Optional[str] = None,
                container_id: str = "", netns: str = "", ifname: str = "eth0", args: str = "",
                path: str = CNI_PATH, extra_env: Optional[dict] = None, timeout: float = 120) -> CNIOutput:
    warm(plugin)
    env = cni_env(command, container_id, netns, ifname, args, path, extra_env)
    stdin = json.dumps(config).encode()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 100
        try:
            os.close(out_r)
            os.close(err_r)
            os.dup2(err_w, 2)
            code = _child(plugin, env, stdin, node, out_w)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_w)
    os.close(err_w)
    out, err = _collect(pid, out_r, err_r, timeout)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    text = out.decode()
    try:
        parsed: Any = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = text
    return CNIOutput(rc, parsed, err.decode(errors="replace"))


def _child(plugin: Plugin, env: dict[str, str], stdin: bytes, node: Optional[str], out_fd: int) -> int:
    from multiplex.util import log
    from multiplex.cni import skel
    from multiplex.netlink.netns import _setns

    if node:
        fd = os.open(f"/var/run/netns/{node}", os.O_RDONLY)
        _setns(fd)  # the whole (single-threaded) child moves, as `ip netns exec` would
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    log._logger = None  # configured afresh from this call's environment
    buf = io.StringIO()
    code = skel.run(plugin, env, stdin, buf)
    data = buf.getvalue().encode()
    while data:
        data = data[os.write(out_fd, data):]
    return code


def _collect(pid: int, out_r: int, err_r: int, timeout: float) -> tuple[bytes, bytes]:
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    open_fds = set(chunks)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            chunks[err_r].append(f"\n[killed after {timeout:.0f} s]".encode())
            break
        for key, _ in sel.select(left):
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.fd].append(data)
            else:
                sel.unregister(key.fd)
                open_fds.discard(key.fd)
    sel.close()
    for fd in chunks:
        os.close(fd)
    return b"".join(chunks[out_r]), b"".join(chunks[err_r])
