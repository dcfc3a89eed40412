"""CLI helpers that drive multiplex through the CNI protocol, as a runtime would (STATUS, GC)."""
from __future__ import annotations

import io
import json
import os

from ..cni.skel import run


def _config(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        conf = json.load(f)
    if "plugins" in conf:  # a conflist: multiplex is its first plugin
        conf = dict(conf["plugins"][0], cniVersion=conf["cniVersion"], name=conf["name"])
    return conf


def _call(command: str, conf: dict) -> tuple[int, str]:
    from ..meta.orchestrator import plugin

    env = dict(os.environ, CNI_COMMAND=command, CNI_PATH=os.environ.get("CNI_PATH", "/opt/cni/bin"))
    out = io.StringIO()
    rc = run(plugin, env, json.dumps(conf).encode(), out)
    return rc, out.getvalue()


def run_status(path: str) -> int:
    rc, out = _call("STATUS", _config(path))
    print("ready" if rc == 0 else f"not ready: {out}")
    return rc


def run_gc(path: str, valid: list[str]) -> int:
    conf = _config(path)
    conf["cni.dev/valid-attachments"] = [
        {"containerID": v.split("/", 1)[0], "ifname": v.split("/", 1)[1] if "/" in v else "eth0"} for v in valid]
    rc, out = _call("GC", conf)
    print("gc done" if rc == 0 else f"gc failed: {out}")
    return rc
