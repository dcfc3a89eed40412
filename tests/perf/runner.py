"""A stand-in container runtime for the benchmark, started once inside the node netns.

    ip netns exec NODE .venv/bin/python tests/perf/runner.py

It reads one JSON request per line on stdin and answers one JSON line on its original stdout (the
process's own fd 1 is pointed at stderr, so nothing a plugin prints in-process can corrupt the
answers). Requests:

- `{"op": "exec", "calls": [{"argv": [...], "env": {...}, "stdin": "..."}, ...]}`: exec each
  call in turn, as a runtime execs CNI plugins, and time the whole sequence (stopping at a failure).
- `{"op": "call", "env": {...}, "stdin": "..."}`: run the multiplex meta plugin in this warm
  process (`multiplex.cni.skel.run`), as a long-lived daemon would; the first call pays the imports
  (its clock starts before them).
- `{"op": "quit"}`.

Answers: `{"seconds": wall clock, "cpu": CPU seconds (exec: of the children, grandchildren included;
call: of this process), "results": [{"rc": int, "stdout": str, "stderr": str}, ...]}`.
Stdlib only until the first "call": the runtime itself costs the exec'd plugins nothing.
"""
from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time


def children_cpu() -> float:
    """CPU seconds (user + system) of every child waited for so far, grandchildren included."""
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def run_exec(calls: list[dict]) -> dict:
    results: list[dict] = []
    c0 = children_cpu()
    t0 = time.perf_counter()
    for call in calls:
        proc = subprocess.run(call["argv"], input=call["stdin"].encode(), env=call["env"], capture_output=True)
        results.append({"rc": proc.returncode, "stdout": proc.stdout.decode(errors="replace"),
                        "stderr": proc.stderr.decode(errors="replace")})
        if proc.returncode != 0:
            break
    return {"seconds": time.perf_counter() - t0, "cpu": children_cpu() - c0, "results": results}


def run_call(env: dict, stdin: str) -> dict:
    out = io.StringIO()
    c0 = time.process_time()
    t0 = time.perf_counter()
    from multiplex.cni.skel import run
    from multiplex.meta.orchestrator import plugin

    rc = run(plugin, env, stdin.encode(), out)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu": time.process_time() - c0,
            "results": [{"rc": rc, "stdout": out.getvalue(), "stderr": ""}]}


def serve(requests, answers) -> None:
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        if req["op"] == "quit":
            break
        try:
            if req["op"] == "exec":
                ans = run_exec(req["calls"])
            elif req["op"] == "call":
                ans = run_call(req["env"], req["stdin"])
            else:
                ans = {"error": f"unknown op {req['op']!r}"}
        except Exception as e:  # answer, never hang the benchmark
            ans = {"error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(ans) + "\n")
        answers.flush()


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
