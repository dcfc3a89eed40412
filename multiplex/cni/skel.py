"""Running a plugin: the dispatch shared by exec'd and in-process calls, and the process entry.

`dispatch(plugin, req)` applies the protocol rules every plugin obeys (supported version, CHECK
only from 0.4.0, prevResult decoding) and calls the plugin. `main(plugin)` is the body of a plugin
binary: parse env + stdin, dispatch, print the result (or the error) in the config's version.
stdout carries only the CNI result; logs go to the log file or stderr.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO, Mapping, Optional, TextIO

from . import version as cniversion
from .errors import CNIError, INCOMPATIBLE_VERSION, INTERNAL, INVALID_CONFIG, INVALID_ENVIRONMENT, IO_FAILURE
from .plugin import Plugin
from .request import STDIN_MAX, Request
from .types import Result

#: What main() reads past STDIN_MAX (and throws away) so a runtime writing a huge config sees its
#: write complete, not a broken pipe; past this the rest is left unread.
_STDIN_DRAIN_MAX = 64 * STDIN_MAX
_OWN_NETNS_PATHS = ("/proc/self/ns/net", "/proc/thread-self/ns/net")


def dispatch(plugin: Plugin, req: Request) -> Optional[Result]:
    """Apply the protocol rules and call the plugin. Starts the call's deadline when no caller set
    one (an in-process delegate keeps its caller's), so every wait of the call shares one budget."""
    req.start_deadline()
    try:
        return _dispatch(plugin, req)
    except RecursionError:
        # a config that refers to itself, or nests too deeply for a parser: a clear code 7
        raise _too_deep() from None


def _too_deep() -> CNIError:
    return CNIError(INVALID_CONFIG, "network config nests too deeply or refers to itself",
                    "field: stdin; allowed: a config that does not (directly or through a network it "
                    "names) include itself")


def check_netns(req: Request) -> None:
    """ADD and CHECK must never work on the plugin's own network namespace (the node's): interfaces,
    addresses and routes meant for a pod would land on the node. Code 4, before anything is touched."""
    if req.command in ("ADD", "CHECK") and req.netns and is_own_netns(req.netns):
        raise CNIError(INVALID_ENVIRONMENT,
                       f"CNI_NETNS {req.netns} is the plugin's own network namespace, not a container's",
                       "field: CNI_NETNS; allowed: the network namespace of the container, never the node's own")


def is_own_netns(path: str) -> bool:
    """True when `path` names this process's network namespace: by name (/proc/self/ns/net,
    /proc/<our pid>/ns/net) or by identity (the same nsfs inode, e.g. /proc/1/ns/net or a bind
    mount of the node's namespace). A path that cannot be stat'ed is left to the plugin."""
    norm = os.path.normpath(path)
    if norm in _OWN_NETNS_PATHS or norm == f"/proc/{os.getpid()}/ns/net":
        return True
    try:
        theirs = os.stat(path)
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _dispatch(plugin: Plugin, req: Request) -> Optional[Result]:
    cniversion.check_supported(req.cni_version)
    check_netns(req)
    if req.command == "CHECK" and not cniversion.at_least(req.cni_version, "0.4.0"):
        raise CNIError(INCOMPATIBLE_VERSION, f"CHECK is not supported for cniVersion {req.cni_version}",
                       "field: cniVersion; allowed: 0.4.0 or later for CHECK")
    if req.command == "GC" and not cniversion.at_least(req.cni_version, "1.1.0"):
        raise CNIError(INCOMPATIBLE_VERSION, f"GC is not supported for cniVersion {req.cni_version}",
                       "field: cniVersion; allowed: 1.1.0 for GC")
    if req.command == "STATUS" and not cniversion.at_least(req.cni_version, "1.1.0"):
        raise CNIError(INCOMPATIBLE_VERSION, f"STATUS is not supported for cniVersion {req.cni_version}",
                       "field: cniVersion; allowed: 1.1.0 for STATUS")
    pr = req.config.get("prevResult")
    if pr is not None and not isinstance(pr, dict):
        raise CNIError(INVALID_CONFIG, "prevResult must be a JSON object", "field: prevResult")
    if req.command == "ADD":
        result = plugin.add(req)
        if result is None:
            raise CNIError(INTERNAL, f"plugin {plugin.type_name} returned no result for ADD")
        result.cni_version = req.cni_version
        return result
    if req.command == "DEL":
        plugin.delete(req)
    elif req.command == "CHECK":
        plugin.check(req)
    elif req.command == "STATUS":
        plugin.status(req)
    elif req.command == "GC":
        plugin.gc(req)
    return None


def run(plugin: Plugin, environ: Mapping[str, str], stdin: bytes, stdout: TextIO,
        stdin_size: Optional[int] = None, *, services: Optional[Any] = None,
        deadline: Optional[float] = None) -> int:
    """One process-level call. Returns the exit code (0 ok, 1 error, as the spec says).

    Every failure is answered in the protocol: CNIError as is; an OSError (the state directory
    is a file, read-only, full) as code 5 naming the path; RecursionError as code 7; anything
    else, a bug, as 100. `stdin_size`: stdin's real size when the reader stopped early.
    A warm process (the node daemon) passes its `services` (cni/context.py Services) for the
    call's context, and the `deadline` (time.monotonic()) it started when it accepted the call;
    a one-shot call passes neither and starts its deadline here. The call's work runs in a slot
    of pod-netns handles (multiplex/netlink/scope.py): each pod namespace is opened once per call,
    whatever number of delegates work in it, and closed when the call ends."""
    version = cniversion.CURRENT
    req: Optional[Request] = None
    try:
        if environ.get("CNI_COMMAND") == "VERSION":
            stdout.write(json.dumps(cniversion.version_info()))
            return 0
        req = Request.from_env(environ, stdin, stdin_size)
        if services is not None:
            req.ctx = req.ctx.with_(services=services)
        req.deadline = deadline
        req.start_deadline()
        if req.cni_version in cniversion.SUPPORTED:
            version = req.cni_version
        from ..netlink import scope

        with scope.call():          # the call's pod-netns handles: opened once, closed at its end
            result = dispatch(plugin, req)
        if result is not None:
            stdout.write(json.dumps(result.to_dict(req.cni_version)))
        return 0
    except CNIError as e:
        return _answer(e, version, stdout, req)
    except RecursionError:
        return _answer(_too_deep(), version, stdout, req)
    except OSError as e:
        return _answer(io_error(e), version, stdout, req)
    except Exception as e:  # a bug: still answer in the protocol, never a traceback on stdout
        import traceback

        traceback.print_exc(file=sys.stderr)
        return _answer(CNIError(INTERNAL, f"internal error: {type(e).__name__}: {e}"), version, stdout, req)


def io_error(e: OSError) -> CNIError:
    """Code 5 for an OSError no layer caught: say which path and what is wrong with it."""
    path = e.filename if e.filename is not None else ""
    what = e.strerror or str(e) or type(e).__name__
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    if path:
        return CNIError(IO_FAILURE, f"I/O error on {path}: {what}", f"path: {path}; error: {what}")
    return CNIError(IO_FAILURE, f"I/O error: {what}", f"error: {what}")


def _answer(e: CNIError, version: str, stdout: TextIO, req: Optional[Request] = None) -> int:
    try:
        _log_error(e, req)
    except Exception:  # the answer on stdout matters more than the log line
        pass
    stdout.write(json.dumps(e.to_dict(version)))
    return 1


def _log_error(e: CNIError, req: Optional[Request]) -> None:
    """The error, in the call's log when there is a request (the plugin may have given it the
    call's logger: the meta plugin's logFile, with the pod), else in the process's."""
    if req is not None:
        logger = req.ctx.log
    else:
        from ..util import log

        logger = log.get()
    logger.error("cni error", code=e.code, error=e.msg, details=e.details)


def read_stdin(stream: BinaryIO) -> tuple[bytes, int]:
    """The config on stdin, at most STDIN_MAX + 1 bytes kept, and its real size. What is past the
    limit is read and dropped (up to _STDIN_DRAIN_MAX) so the writer is never left blocked or
    broken; the limit is then refused before anything is parsed."""
    data = stream.read(STDIN_MAX + 1) or b""
    size = len(data)
    if size > STDIN_MAX:
        while size < _STDIN_DRAIN_MAX:
            chunk = stream.read(min(1 << 20, _STDIN_DRAIN_MAX - size))
            if not chunk:
                break
            size += len(chunk)
    return data, size


def main(plugin: Plugin, stdin: Optional[BinaryIO] = None) -> None:
    data, size = (read_stdin(stdin or sys.stdin.buffer) if os.environ.get("CNI_COMMAND") != "VERSION"
                  else (b"", 0))
    code = run(plugin, os.environ, data, sys.stdout, stdin_size=size)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown (~40 ms with ~500 modules loaded): by now the result is on
    # stdout, the log lines, cache files and SQLite transactions are written and closed.
    os._exit(code)
