"""`multiplex daemon` with every CNI call it serves profiled (cProfile), for the benchmark only.

    MULTIPLEX_PROFILE_OUT=/tmp/daemon.prof python tests/perf/profiled_daemon.py daemon --socket ...

The same command line as `multiplex daemon` (it runs the click CLI). The server's handler
(multiplex.daemon.server.CNIServer.run_cni: cni/skel.run with the meta plugin, the daemon's
services on the call) runs each call under a cProfile.Profile of its own, enabled on the worker
thread that serves it (a Profile sees only the thread that enabled it); the calls' stats are added
up and written as a pstats file to $MULTIPLEX_PROFILE_OUT when the daemon exits (SIGTERM).
$MULTIPLEX_PROFILE_COMMANDS (comma-separated, e.g. "ADD"; default all) limits it to those
commands, so the figures read per ADD. What
the server does around the handler (reading the request, queueing, answering) is not in it: the
benchmark reads that part from the request histogram.
"""
from __future__ import annotations

import cProfile
import os
import pstats
import sys
import threading
from typing import Any, Optional

from multiplex.daemon import server

_lock = threading.Lock()
_stats: Optional[pstats.Stats] = None
_original = server.CNIServer.run_cni


def profiled_run_cni(self: Any, environ: dict, *args: Any, **kwargs: Any) -> Any:
    global _stats
    wanted = [c for c in os.environ.get("MULTIPLEX_PROFILE_COMMANDS", "").split(",") if c]
    if wanted and environ.get("CNI_COMMAND") not in wanted:
        return _original(self, environ, *args, **kwargs)
    prof = cProfile.Profile()
    prof.enable()
    try:
        return _original(self, environ, *args, **kwargs)
    finally:
        prof.disable()
        with _lock:
            if _stats is None:
                _stats = pstats.Stats(prof)
            else:
                _stats.add(prof)


def dump() -> None:
    out = os.environ.get("MULTIPLEX_PROFILE_OUT")
    with _lock:
        if out and _stats is not None:
            _stats.dump_stats(out)


def main() -> None:
    server.CNIServer.run_cni = profiled_run_cni
    from multiplex.cli.commands import cli

    try:
        cli(sys.argv[1:], prog_name="multiplex")
    finally:
        dump()


if __name__ == "__main__":
    main()
