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
from typing import BinaryIO, Mapping, Optional, TextIO

from . import version as cniversion
from .errors import CNIError, INCOMPATIBLE_VERSION, INTERNAL, INVALID_CONFIG
from .plugin import Plugin
from .request import Request
from .types import Result


def dispatch(plugin: Plugin, req: Request) -> Optional[Result]:
    cniversion.check_supported(req.cni_version)
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


def run(plugin: Plugin, environ: Mapping[str, str], stdin: bytes, stdout: TextIO) -> int:
    """One process-level call. Returns the exit code (0 ok, 1 error, as the spec says)."""
    version = cniversion.CURRENT
    try:
        if environ.get("CNI_COMMAND") == "VERSION":
            stdout.write(json.dumps(cniversion.version_info()))
            return 0
        req = Request.from_env(environ, stdin)
        if req.cni_version in cniversion.SUPPORTED:
            version = req.cni_version
        result = dispatch(plugin, req)
        if result is not None:
            stdout.write(json.dumps(result.to_dict(req.cni_version)))
        return 0
    except CNIError as e:
        _log_error(e)
        stdout.write(json.dumps(e.to_dict(version)))
        return 1
    except Exception as e:  # a bug: still answer in the protocol, never a traceback on stdout
        import traceback

        traceback.print_exc(file=sys.stderr)
        err = CNIError(INTERNAL, f"internal error: {type(e).__name__}: {e}")
        stdout.write(json.dumps(err.to_dict(version)))
        return 1


def _log_error(e: CNIError) -> None:
    from .. import log

    log.get().error("cni error", code=e.code, error=e.msg, details=e.details)


def main(plugin: Plugin, stdin: Optional[BinaryIO] = None) -> None:
    data = (stdin or sys.stdin.buffer).read() if os.environ.get("CNI_COMMAND") != "VERSION" else b""
    code = run(plugin, os.environ, data, sys.stdout)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown (~40 ms with ~500 modules loaded): by now the result is on
    # stdout, the log lines, cache files and SQLite transactions are written and closed.
    os._exit(code)
