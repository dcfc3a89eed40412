"""The burst driver: many pods' CNI calls exec'd at once, as a runtime starting a node's pods does.

    ip netns exec NODE .venv/bin/python tests/perf/burst.py < request.json

Stdlib only (like tests/perf/runner.py: the driver costs the exec'd plugins nothing but its
threads). The request is one JSON object on stdin:

    {"pods": [[{"argv": [...], "env": {...}, "stdin": "..."}, ...], ...],   # each pod: its call chain
     "retry": {"attempts": 12, "first": 0.05, "cap": 1.0}}

Every pod gets a thread; the threads wait on one barrier and then exec their pod's chain (one
call for a pod of one attachment), all at once. A call that fails with CNI code 11 ("try again
later", what a daemon past its queue bound answers) is retried after a back-off that doubles from
`first` to `cap` seconds with jitter, as the kubelet retries a sandbox whose CNI call failed
(there in seconds, here in tens of milliseconds so a run stays short); any other failure ends the
pod. Answer, one JSON object on stdout:

    {"wall": s from the barrier to the last pod's end,
     "pods": [{"seconds": s (first attempt to last answer), "rc": 0 or the last rc,
               "retries": number of code-11 retries, "codes": [every failed attempt's CNI code],
               "outputs": [each call's stdout], "stderr": last failed call's stderr}]}
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from typing import Any

TRY_AGAIN = 11


def cni_code(stdout: bytes) -> int:
    """The `code` of a CNI error printed on stdout, or -1 when there is none to read."""
    try:
        return int(json.loads(stdout.decode() or "{}").get("code", -1))
    except (ValueError, AttributeError):
        return -1


def run_pod(calls: list[dict], retry: dict, barrier: threading.Barrier) -> dict:
    barrier.wait()
    t0 = time.perf_counter()
    outputs: list[str] = []
    codes: list[int] = []
    retries, rc, stderr = 0, 0, ""
    for call in calls:
        delay = retry["first"]
        for attempt in range(retry["attempts"]):
            proc = subprocess.run(call["argv"], input=call["stdin"].encode(), env=call["env"], capture_output=True)
            rc = proc.returncode
            if rc == 0:
                outputs.append(proc.stdout.decode(errors="replace"))
                break
            code = cni_code(proc.stdout)
            codes.append(code)
            stderr = (proc.stdout + proc.stderr).decode(errors="replace")[-600:]
            if code != TRY_AGAIN or attempt == retry["attempts"] - 1:
                break
            retries += 1
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, retry["cap"])
        if rc != 0:
            break
    return {"seconds": time.perf_counter() - t0, "rc": rc, "retries": retries, "codes": codes,
            "outputs": outputs, "stderr": stderr if rc != 0 else ""}


def burst(pods: list[list[dict]], retry: dict[str, Any]) -> dict:
    barrier = threading.Barrier(len(pods) + 1)
    answers: list[dict] = [{} for _ in pods]

    def work(k: int) -> None:
        try:
            answers[k] = run_pod(pods[k], retry, barrier)
        except Exception as e:  # answer, never hang the benchmark
            answers[k] = {"seconds": 0.0, "rc": -1, "retries": 0, "codes": [], "outputs": [],
                          "stderr": f"{type(e).__name__}: {e}"}

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(len(pods))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "pods": answers}


def main() -> None:
    req = json.load(sys.stdin)
    retry = {"attempts": 12, "first": 0.05, "cap": 1.0, **req.get("retry", {})}
    json.dump(burst(req["pods"], retry), sys.stdout)


if __name__ == "__main__":
    main()
