#!/usr/bin/env python3
"""A fake CNI plugin for tests. Stdlib only: it stands for a foreign plugin, not for our code.

Exec'd under any name (tests install it as `fake-a`, `fake-b`, ... on a CNI_PATH of their own),
it does what the `fake` object of its stdin config says:

    "fake": {
      "record": "/tmp/.../calls.jsonl",   # append {type, command, env (CNI_*), stdin, start, end}
      "result": {...},                    # ADD answers this result (default: prevResult, or an
                                          #   empty result, plus an interface named after `type`)
      "fail":   {"ADD": {"code": 7, "msg": "...", "details": "..."}},  # answer a CNI error
      "crash":  {"ADD": "not json"},      # print this text, exit 2 (a plugin that is not CNI)
      "hang":   {"ADD": 30},              # sleep that many seconds first
      "stderr": "text"                    # written to stderr on every call
    }

The same behaviour backs the in-process fake (fakeplugins.inproc) through `respond`.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


class FakeError(Exception):
    def __init__(self, error: dict):
        super().__init__(error.get("msg", "fake error"))
        self.error = error


def record(conf: dict, command: str, env: dict, start: float) -> None:
    path = (conf.get("fake") or {}).get("record")
    if not path:
        return
    line = {"type": conf.get("type"), "command": command, "env": env, "stdin": conf,
            "start": start, "end": time.monotonic(), "pid": os.getpid()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def respond(command: str, conf: dict) -> dict | None:
    """The ADD result (None for other commands); raises FakeError for a configured failure."""
    fake = conf.get("fake") or {}
    hang = (fake.get("hang") or {}).get(command)
    if hang:
        time.sleep(float(hang))
    err = (fake.get("fail") or {}).get(command)
    if err:
        raise FakeError(dict(err))
    if command != "ADD":
        return None
    if fake.get("result") is not None:
        result = copy.deepcopy(fake["result"])
    else:
        result = copy.deepcopy(conf.get("prevResult") or {})
        result.setdefault("interfaces", []).append({"name": str(conf.get("type"))})
    result["cniVersion"] = conf.get("cniVersion", "1.1.0")
    return result


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}))
        return 0
    start = time.monotonic()
    conf = json.loads(sys.stdin.buffer.read() or b"{}")
    fake = conf.get("fake") or {}
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    if fake.get("stderr"):
        sys.stderr.write(str(fake["stderr"]) + "\n")
    crash = (fake.get("crash") or {}).get(command)
    if crash is not None:
        record(conf, command, env, start)
        sys.stdout.write(str(crash))
        sys.stderr.write(f"fake plugin {conf.get('type')} crashed on {command}\n")
        return 2
    try:
        result = respond(command, conf)
    except FakeError as e:
        record(conf, command, env, start)
        print(json.dumps({"cniVersion": conf.get("cniVersion", "1.1.0"), **e.error}))
        return 1
    record(conf, command, env, start)
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
