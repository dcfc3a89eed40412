"""Calling a plugin by its `type`: in-process when it is built in, exec'd from CNI_PATH otherwise.

Both paths take a Request and give back a Result (ADD) or None, and raise CNIError. An exec'd
plugin gets the spec's environment and its config on stdin; its stderr goes to our log; a
plugin that runs past the timeout is killed and reported as code 11 (try again later).

An exec'd plugin gets `min(timeout, what is left of the call's deadline)`: `timeout` (the
config's `pluginTimeout`) bounds one plugin, the deadline (Request.deadline) bounds the call.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Optional

from .errors import CNIError, DECODE_FAILURE, DELEGATE_FAILED, INTERNAL, IO_FAILURE, NOT_FOUND, TRY_AGAIN_LATER
from .registry import builtin, check_type_name
from .request import Request
from .skel import dispatch
from .types import Result

DEFAULT_TIMEOUT = 60.0


def find_plugin(type_name: str, path: list[str], field: str = "type") -> str:
    check_type_name(type_name, field)
    for d in path:
        candidate = os.path.join(d, type_name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(NOT_FOUND, f"plugin {type_name!r} not found",
                   f"field: {field}; searched CNI_PATH: {os.pathsep.join(path) or '(empty)'}")


def invoke(req: Request, type_name: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
           field: str = "type") -> Optional[Result]:
    """Run the plugin named `type_name` (default: the config's `type`) for `req`; `field` is the
    config field that named it, for errors."""
    t = check_type_name(type_name or req.type, field)
    services = req.ctx.services
    if services is None:
        return _invoke(t, req, timeout, field)
    started, code = time.perf_counter(), 0
    try:
        return _invoke(t, req, timeout, field)
    except CNIError as e:
        code = e.code
        raise
    except Exception:
        code = INTERNAL
        raise
    finally:
        services.observe_plugin(t, req.command, time.perf_counter() - started, code)


def _invoke(t: str, req: Request, timeout: float, field: str) -> Optional[Result]:
    plugin = builtin(t)
    if plugin is not None:
        return dispatch(plugin, req)
    return exec_plugin(find_plugin(t, req.path, field), req, timeout)


def _run(binary: str, req: Request, timeout: float) -> subprocess.CompletedProcess:
    """Run the plugin in a session of its own, so that on timeout everything it started (an
    IPAM plugin it exec'd, a helper) is killed with it, not only the plugin process."""
    import signal

    with subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=req.env(), close_fds=True, start_new_session=True) as p:
        try:
            out, err = p.communicate(req.stdin(), timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.communicate()
            raise
        return subprocess.CompletedProcess([binary], p.returncode, out, err)


def exec_plugin(binary: str, req: Request, timeout: float = DEFAULT_TIMEOUT) -> Optional[Result]:
    """Exec `binary` for `req` within min(timeout, the call's time left); a plugin still running
    then is killed (with everything it started) and reported as code 11 with the time waited."""
    name = os.path.basename(binary)
    logger = req.ctx.log
    limit = min(timeout, req.time_left(timeout))
    if limit <= 0:
        raise CNIError(TRY_AGAIN_LATER, f"no time left in this call's deadline to run plugin {name} {req.command}",
                       f"plugin: {binary}; retry when the node is less busy")
    started = time.monotonic()
    try:
        proc = _run(binary, req, limit)
    except subprocess.TimeoutExpired:
        waited = time.monotonic() - started
        bound = f"pluginTimeout {timeout:g}s" if limit >= timeout else "the call's deadline"
        raise CNIError(TRY_AGAIN_LATER, f"plugin {name} did not answer {req.command} within {waited:.1f}s "
                       f"({bound}); it was killed", f"plugin: {binary}") from None
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot run plugin {name}: {e.strerror}", f"plugin: {binary}") from None
    if proc.stderr:  # kept at warning level when the plugin failed, so the default log shows it
        logger.log("warning" if proc.returncode else "info", "plugin stderr", plugin=name,
                   command=req.command, stderr=proc.stderr.decode(errors="replace")[-4000:])
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
        except ValueError:
            err = None
        if isinstance(err, dict) and "code" in err:
            raise CNIError.from_dict(err, who=name)
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-500:]
        raise CNIError(DELEGATE_FAILED, f"plugin {name} failed {req.command} with exit code {proc.returncode}",
                       tail)
    if req.command != "ADD":
        return None
    try:
        data = json.loads(out)
    except ValueError:
        raise CNIError(DECODE_FAILURE, f"plugin {name} printed a result that is not JSON",
                       out.decode(errors="replace")[:500]) from None
    return Result.from_dict(data)


def invoke_ipam(req: Request) -> Optional[Result]:
    """Run the config's IPAM plugin (`ipam.type`) with the same request, as the spec says."""
    from .errors import INVALID_CONFIG

    ipam = req.config.get("ipam")
    if not isinstance(ipam, dict) or not ipam.get("type"):
        raise CNIError(INVALID_CONFIG, "this plugin needs an IPAM config with a type", "field: ipam.type")
    return invoke(req, type_name=check_type_name(ipam["type"], "ipam.type"), field="ipam.type")
