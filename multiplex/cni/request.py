"""One CNI call: the CNI_* environment and the network config from stdin.

A Request is what every plugin (the meta plugin, built-in delegates, IPAM) receives, whether it was
exec'd by a runtime or called in-process by multiplex. `Request.env()` rebuilds the environment
for exec'ing an external plugin, so both paths see the same thing.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from .errors import CNIError, DECODE_FAILURE, INVALID_CONFIG, INVALID_ENVIRONMENT

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# Which environment variables each command needs (SPEC.md, "Parameters").
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}
IFNAME_MAX = 15
# The kernel refuses these in a link name; a container ID may hold letters, digits, _ . -
_IFNAME_BAD = re.compile(r"[/\s:]")
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_ifname(name: str, field_name: str = "CNI_IFNAME", code: int = INVALID_ENVIRONMENT) -> str:
    if not name or len(name) > IFNAME_MAX or _IFNAME_BAD.search(name) or name in (".", ".."):
        raise CNIError(code, f"invalid interface name {name!r}",
                       f"field: {field_name}; allowed: 1-{IFNAME_MAX} characters, no '/', ':' or spaces")
    return name


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is `K=V;K=V`. A pair without `=` is an error (code 4)."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        if "=" not in pair:
            raise CNIError(INVALID_ENVIRONMENT, f"malformed CNI_ARGS pair {pair!r}",
                           "field: CNI_ARGS; allowed: KEY=VALUE pairs separated by ';'")
        k, v = pair.split("=", 1)
        out[k] = v
    return out


def format_cni_args(args: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in args.items())


@dataclass
class Request:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    #: One deadline per call (time.monotonic()); every wait of the call (container lock, IPAM
    #: database, exec'd plugins) takes what is left of it, so no call waits longer than it says.
    #: None: no deadline set (each wait uses its own default). Kept by derive().
    deadline: Optional[float] = None

    def time_left(self, default: float) -> float:
        """Seconds left before the deadline (never negative); `default` when no deadline is set."""
        if self.deadline is None:
            return default
        import time

        return max(0.0, self.deadline - time.monotonic())

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion", "")) or "0.1.0"

    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def type(self) -> str:
        return str(self.config.get("type", ""))

    @property
    def runtime_config(self) -> dict:
        rc = self.config.get("runtimeConfig")
        return rc if isinstance(rc, dict) else {}

    @property
    def prev_result(self) -> Optional[dict]:
        pr = self.config.get("prevResult")
        return pr if isinstance(pr, dict) else None

    @property
    def pod(self) -> tuple[str, str, str]:
        """(namespace, name, uid) from K8S_POD_* in CNI_ARGS; empty strings when absent."""
        a = self.args
        return a.get("K8S_POD_NAMESPACE", ""), a.get("K8S_POD_NAME", ""), a.get("K8S_POD_UID", "")

    def derive(self, **changes: Any) -> "Request":
        """A copy with some fields replaced (config is copied shallowly, never shared)."""
        if "config" not in changes:
            changes["config"] = dict(self.config)
        return replace(self, **changes)

    def env(self, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        """The environment an exec'd plugin gets: `base` (default: ours) plus the CNI_* variables."""
        env = {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith("CNI_")}
        env["CNI_COMMAND"] = self.command
        if self.container_id:
            env["CNI_CONTAINERID"] = self.container_id
        if self.netns:
            env["CNI_NETNS"] = self.netns
        if self.ifname:
            env["CNI_IFNAME"] = self.ifname
        if self.args:
            env["CNI_ARGS"] = format_cni_args(self.args)
        env["CNI_PATH"] = os.pathsep.join(self.path)
        return env

    def stdin(self) -> bytes:
        return json.dumps(self.config).encode()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], stdin: bytes) -> "Request":
        """Parse a runtime's call. Raises CNIError 4 (environment) or 6 (stdin not JSON)."""
        command = environ.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise CNIError(INVALID_ENVIRONMENT,
                           "CNI_COMMAND missing" if not command else f"unknown CNI_COMMAND {command!r}",
                           f"field: CNI_COMMAND; allowed: one of {', '.join(COMMANDS)}")
        for var in REQUIRED_ENV[command]:
            if not environ.get(var):
                raise CNIError(INVALID_ENVIRONMENT, f"{var} is required for {command}", f"field: {var}")
        cid = environ.get("CNI_CONTAINERID", "")
        if cid and not _CONTAINER_ID.match(cid):
            raise CNIError(INVALID_ENVIRONMENT, f"invalid container ID {cid!r}",
                           "field: CNI_CONTAINERID; allowed: letters, digits, '_', '.', '-'")
        ifname = environ.get("CNI_IFNAME", "")
        if ifname:
            check_ifname(ifname)
        args = parse_cni_args(environ.get("CNI_ARGS", ""))
        path = [p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p]
        config: dict[str, Any] = {}
        if command != "VERSION" or stdin.strip():
            try:
                config = json.loads(stdin or b"")
            except (ValueError, UnicodeDecodeError) as e:
                if command == "VERSION":
                    config = {}
                else:
                    raise CNIError(DECODE_FAILURE, f"network config on stdin is not valid JSON: {e}",
                                   "field: stdin") from None
            if not isinstance(config, dict):
                if command == "VERSION":
                    config = {}
                else:
                    raise CNIError(DECODE_FAILURE, "network config on stdin is not a JSON object",
                                   "field: stdin")
        if command != "VERSION":
            for key in ("cniVersion", "name", "type"):
                if key not in config or not isinstance(config[key], str) or not config[key]:
                    raise CNIError(INVALID_CONFIG, f"network config needs a non-empty string {key!r}",
                                   f"field: {key}")
        return cls(command=command, container_id=cid, netns=environ.get("CNI_NETNS", ""),
                   ifname=ifname, args=args, path=path, config=config)
