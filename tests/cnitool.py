"""Test helpers: run a CNI plugin as a runtime would, inside a simulated node's netns.

Every node is a network namespace of its own; multiplex and its delegates run inside it
(`ip netns exec NODE plugin`), so nothing touches the root namespace.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Optional

BIN = os.path.dirname(os.path.abspath(sys.executable))
REFERENCE_PLUGINS = "/usr/lib/cni"
CNI_PATH = os.pathsep.join(p for p in (BIN, REFERENCE_PLUGINS) if os.path.isdir(p))


@dataclass
class CNIOutput:
    rc: int
    out: Any          # parsed stdout (dict) or raw text when not JSON
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def code(self) -> Optional[int]:
        return self.out.get("code") if isinstance(self.out, dict) else None


def cni_env(command: str, container_id: str = "", netns: str = "", ifname: str = "eth0", args: str = "",
            path: str = CNI_PATH, extra_env: Optional[dict] = None) -> dict[str, str]:
    """The environment a runtime gives a plugin: ours minus CNI_*, plus the call's CNI_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": command, "CNI_PATH": path})
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns if os.sep in netns else f"/var/run/netns/{netns}"
    if ifname:
        env["CNI_IFNAME"] = ifname
    if args:
        env["CNI_ARGS"] = args
    env.update(extra_env or {})
    return env


def run_plugin(plugin: str, command: str, config: dict, *, node: Optional[str] = None,
               container_id: str = "", netns: str = "", ifname: str = "eth0",
               args: str = "", path: str = CNI_PATH, extra_env: Optional[dict] = None,
               timeout: float = 120) -> CNIOutput:
    """Exec `plugin` (a name on CNI_PATH or a path) with the CNI env, in netns `node` if given."""
    exe = plugin if os.sep in plugin else (shutil.which(plugin, path=path) or plugin)
    env = cni_env(command, container_id, netns, ifname, args, path, extra_env)
    argv = ["ip", "netns", "exec", node, exe] if node else [exe]
    proc = subprocess.run(argv, input=json.dumps(config).encode(), env=env, capture_output=True,
                          timeout=timeout)
    text = proc.stdout.decode()
    try:
        out: Any = json.loads(text) if text.strip() else None
    except ValueError:
        out = text
    return CNIOutput(proc.returncode, out, proc.stderr.decode())


def nsexec(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command inside netns `ns`, text output."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check)


def ip_json(ns: str, *argv: str) -> Any:
    """`ip -j ARGS` inside netns `ns`, parsed."""
    out = nsexec(ns, "ip", "-j", *argv).stdout
    return json.loads(out) if out.strip() else []


def addresses(ns: str, dev: str) -> set[str]:
    """Global addresses (CIDR form) on `dev` inside `ns`."""
    info = ip_json(ns, "addr", "show", "dev", dev)
    return {f"{a['local']}/{a['prefixlen']}" for i in info for a in i.get("addr_info", [])
            if a.get("scope") == "global"}


def links(ns: str) -> set[str]:
    return {l["ifname"] for l in ip_json(ns, "link", "show")}


def ping(ns: str, address: str, count: int = 1, timeout: int = 2) -> bool:
    flag = "-6" if ":" in address else "-4"
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", flag, "-c", str(count), "-W", str(timeout), address],
                       capture_output=True)
    return r.returncode == 0


class NetnsPool:
    """Makes network namespaces (lo up) named `<prefix><kind>-<random>`; `close()` deletes every one
    made (and with them every link inside, and the peers of their veths)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.made: list[str] = []

    def make(self, kind: str = "p") -> str:
        name = f"{self.prefix}{kind}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return name

    def drop(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if name in self.made:
            self.made.remove(name)

    def close(self) -> None:
        for name in reversed(list(self.made)):
            self.drop(name)
