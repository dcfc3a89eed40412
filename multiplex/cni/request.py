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
from typing import TYPE_CHECKING, Any, Mapping, Optional

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
# The kernel (dev_valid_name) refuses '/', ':', whitespace and NUL in a link name, and "." / "..";
# a '%' makes the name a template ("eth%d": the kernel picks the next free number), so the link
# made would not be the one asked for.
_IFNAME_BAD = re.compile(r"[/\s:%\x00]")
# A container ID may hold letters, digits, _ . - and starts with a letter or digit (the spec's rule).
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
#: Longest container ID accepted. Runtimes use 64 hex digits (containerd, CRI-O, Docker, Podman);
#: 128 leaves room for any ID scheme we know while keeping what is derived from the ID within the
#: kernel's and the file system's limits: the cache file `<id>:<ifname>.json` (NAME_MAX 255) and
#: the host veth's alias `<id>/<ifname>/<network>` (IFALIASZ 256).
CONTAINER_ID_MAX = 128
#: Largest network config accepted on stdin. Real configs are a few KiB (a conflist with a
#: prevResult of a many-interface pod stays well under 100 KiB); anything near 1 MiB is a mistake
#: or an attack, refused before it is parsed.
STDIN_MAX = 1024 * 1024
#: Deepest JSON nesting accepted on stdin. A conflist with IPAM ranges and a prevResult nests
#: about 8 levels; 64 is far above any real config and far below the interpreter's recursion limit.
JSON_DEPTH_MAX = 64
#: The budget of one call (seconds) when the caller set no deadline: every wait of the call (the
#: container lock, the IPAM database, exec'd plugins, within `pluginTimeout` each) takes what is
#: left of it. 60 s is the timeout multiplex always stated, and it answers well before kubelet's
#: CRI request timeout (2 min), so the runtime gets our error rather than its own.
CALL_BUDGET = 60.0


def check_ifname(name: str, field_name: str = "CNI_IFNAME", code: int = INVALID_ENVIRONMENT) -> str:
    """An interface name the kernel accepts: 1-15 bytes in UTF-8 (IFNAMSIZ counts bytes, so 9 'é'
    are 18 bytes and too long), no '/', ':', whitespace or NUL, not "." or "..", and no '%' (the
    kernel would read it as a template and pick a name of its own). The one place
    this rule lives (CNI_IFNAME, the annotation's interface names)."""
    if not isinstance(name, str):
        raise CNIError(code, f"invalid interface name {name!r}: not a string",
                       f"field: {field_name}; allowed: {_IFNAME_ALLOWED}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates (from undecodable environment bytes)
        size = IFNAME_MAX + 1
    if not name or size > IFNAME_MAX:
        what = "empty" if not name else f"{size} bytes long"
        raise CNIError(code, f"invalid interface name {name!r}: {what}",
                       f"field: {field_name}; allowed: {_IFNAME_ALLOWED}")
    if _IFNAME_BAD.search(name) or name in (".", ".."):
        raise CNIError(code, f"invalid interface name {name!r}: a character the kernel refuses",
                       f"field: {field_name}; allowed: {_IFNAME_ALLOWED}")
    return name


_IFNAME_ALLOWED = f"1-{IFNAME_MAX} bytes (UTF-8), no '/', ':', '%', whitespace or NUL, not '.' or '..'"


def check_container_id(cid: str, field_name: str = "CNI_CONTAINERID") -> str:
    """A container ID: starts with a letter or digit, then letters, digits, '_', '.', '-', at most
    CONTAINER_ID_MAX characters. Code 4 naming the variable."""
    allowed = (f"field: {field_name}; allowed: 1-{CONTAINER_ID_MAX} characters, letters, digits, "
               "'_', '.', '-', starting with a letter or digit")
    if not isinstance(cid, str) or not cid:
        raise CNIError(INVALID_ENVIRONMENT, "empty container ID", allowed)
    if len(cid) > CONTAINER_ID_MAX:
        raise CNIError(INVALID_ENVIRONMENT,
                       f"container ID is {len(cid)} characters long, more than {CONTAINER_ID_MAX}", allowed)
    if not _CONTAINER_ID.fullmatch(cid):
        raise CNIError(INVALID_ENVIRONMENT, f"invalid container ID {cid!r}", allowed)
    return cid


# The CNI spec's network name: starts with a letter or digit, then letters, digits, '_', '.', '-'.
# A NAD network's name `<namespace>.<nadname>` fits it.
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_NETWORK_NAME_ALLOWED = "letters, digits, '_', '.', '-', starting with a letter or digit (the CNI spec's rule)"


def check_network_name(name: Any, field_name: str = "name") -> str:
    """A network name as the CNI spec allows it, matched whole (code 7 naming the field). The name
    ends up in veth aliases, lease owners and nft comments: a '/' would split an alias, a newline
    would forge a log or comment line."""
    if not isinstance(name, str) or not name:
        raise CNIError(INVALID_CONFIG, f"network config needs a non-empty string {field_name!r}",
                       f"field: {field_name}; allowed: {_NETWORK_NAME_ALLOWED}")
    if not _NETWORK_NAME.fullmatch(name):
        raise CNIError(INVALID_CONFIG, f"invalid network name {name!r}",
                       f"field: {field_name}; allowed: {_NETWORK_NAME_ALLOWED}")
    return name


# Kubernetes names (apimachinery's validation): a namespace is a DNS-1123 label, a pod name a
# DNS-1123 subdomain; a UID is a UUID in practice, any token without '/' or whitespace here.
_DNS1123_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_POD_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_POD_ARGS = {
    "K8S_POD_NAMESPACE": (_DNS1123_LABEL, 63, "a DNS-1123 label: 1-63 lowercase letters, digits, '-', "
                          "starting and ending with a letter or digit"),
    "K8S_POD_NAME": (_DNS1123_SUBDOMAIN, 253, "a DNS-1123 subdomain: at most 253 lowercase letters, digits, "
                     "'-', '.', each dot-separated part starting and ending with a letter or digit"),
    "K8S_POD_UID": (_POD_UID, 128, "1-128 letters, digits, '_', '.', '-' (a UUID), starting with a letter or digit"),
}


def check_pod_args(args: Mapping[str, str]) -> None:
    """K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID, when present and not empty, are what
    Kubernetes allows (code 4 naming CNI_ARGS.<KEY>). They name pod files, lease rows and cache
    records: `../../x` or a newline must never reach them."""
    for key, (pattern, longest, allowed) in _POD_ARGS.items():
        value = args.get(key)
        if not value:
            continue
        if len(value) > longest or not pattern.fullmatch(value):
            raise CNIError(INVALID_ENVIRONMENT, f"invalid {key} {value[:80]!r} in CNI_ARGS",
                           f"field: CNI_ARGS.{key}; allowed: {allowed}")


def no_json_constant(name: str) -> Any:
    """json's parse_constant hook: NaN, Infinity and -Infinity are not JSON (RFC 8259)."""
    raise ValueError(f"{name} is not a JSON value")


# A JSON string (escapes included; an unterminated one runs to the end) or a bracket.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\Z)|[\[\]{}]', re.DOTALL)


def json_depth_exceeds(data: bytes, limit: int = JSON_DEPTH_MAX) -> bool:
    """True when `data` nests arrays/objects deeper than `limit`. A flat scan (no recursion), so a
    hostile input is refused in milliseconds instead of reaching json's or jsonschema's recursion
    limit. Strings are skipped whole, so brackets inside them do not count."""
    depth = 0
    for m in _JSON_TOKEN.finditer(data):
        c = data[m.start()]
        if c in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif c in _CLOSE:
            depth = max(0, depth - 1)
    return False


_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


def check_stdin_limits(stdin: bytes, size: Optional[int] = None) -> None:
    """Refuse (code 7, field stdin) a config larger than STDIN_MAX bytes or nested deeper than
    JSON_DEPTH_MAX, before it is parsed. `size`: the real size when the caller stopped reading."""
    size = len(stdin) if size is None else size
    if size > STDIN_MAX:
        raise CNIError(INVALID_CONFIG, f"network config on stdin is {size} bytes, more than the limit of {STDIN_MAX}",
                       f"field: stdin; allowed: at most {STDIN_MAX} bytes")
    if json_depth_exceeds(stdin):
        raise CNIError(INVALID_CONFIG, f"network config on stdin nests more than {JSON_DEPTH_MAX} levels deep",
                       f"field: stdin; allowed: at most {JSON_DEPTH_MAX} levels of arrays and objects")


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is `K=V;K=V`. A pair without `=` or with an empty key is an error (code 4)."""
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
        if not k:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS pair {pair[:80]!r} has an empty key",
                           "field: CNI_ARGS; allowed: KEY=VALUE pairs separated by ';', KEY not empty")
        out[k] = v
    return out


def format_cni_args(args: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in args.items())


if TYPE_CHECKING:
    from .context import CallContext


def _context():
    from . import context

    return context


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
    #: What the call carries besides its CNI parameters (state root, kubeconfig, logger with the
    #: call's fields, netlink delete batch): multiplex/cni/context.py. Kept by derive().
    ctx: "CallContext" = field(default_factory=lambda: _context().CallContext())

    def time_left(self, default: float) -> float:
        """Seconds left before the deadline (never negative); `default` when no deadline is set."""
        if self.deadline is None:
            return default
        import time

        return max(0.0, self.deadline - time.monotonic())

    def start_deadline(self, budget: float = CALL_BUDGET) -> "Request":
        """Start the call's one deadline, `budget` seconds from now, unless a caller already set
        one (an in-process delegate keeps its caller's). Returns self."""
        if self.deadline is None:
            import time

            self.deadline = time.monotonic() + budget
        return self

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
        """The environment an exec'd plugin gets: `base` (default: ours) plus the CNI_* variables.
        The call's state root and kubeconfig come from its context only, never from `base`: in the
        node daemon, `base` is the daemon's own environment, not the calling runtime's."""
        from .context import KUBECONFIG_ENV, STATE_DIR_ENV

        env = {k: v for k, v in (base if base is not None else os.environ).items()
               if not k.startswith("CNI_") and k not in (STATE_DIR_ENV, KUBECONFIG_ENV)}
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
        env.update(self.ctx.environ())  # the call's state root and kubeconfig, explicitly
        return env

    def stdin(self) -> bytes:
        return json.dumps(self.config).encode()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], stdin: bytes, stdin_size: Optional[int] = None) -> "Request":
        """Parse a runtime's call. Raises CNIError 4 (environment, CNI_ARGS' K8S_POD_* included),
        6 (stdin not JSON; NaN and Infinity are not JSON) or 7 (stdin over its limits, see
        check_stdin_limits, `stdin_size` being its real size when the reader stopped early; a
        network name outside the CNI spec's alphabet)."""
        command = environ.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise CNIError(INVALID_ENVIRONMENT,
                           "CNI_COMMAND missing" if not command else f"unknown CNI_COMMAND {command!r}",
                           f"field: CNI_COMMAND; allowed: one of {', '.join(COMMANDS)}")
        for var in REQUIRED_ENV[command]:
            if not environ.get(var):
                raise CNIError(INVALID_ENVIRONMENT, f"{var} is required for {command}", f"field: {var}")
        cid = environ.get("CNI_CONTAINERID", "")
        if cid:
            check_container_id(cid)
        ifname = environ.get("CNI_IFNAME", "")
        if ifname:
            check_ifname(ifname)
        args = parse_cni_args(environ.get("CNI_ARGS", ""))
        check_pod_args(args)
        path = [p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p]
        config: dict[str, Any] = {}
        if command != "VERSION" or stdin.strip():
            if command != "VERSION":
                check_stdin_limits(stdin, stdin_size)
            try:
                config = json.loads(stdin or b"", parse_constant=no_json_constant)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
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
            if command != "DEL":
                # a DEL tears down what an earlier version accepted, whatever its name was
                check_network_name(config["name"])
        return cls(command=command, container_id=cid, netns=environ.get("CNI_NETNS", ""),
                   ifname=ifname, args=args, path=path, config=config,
                   ctx=_context().CallContext.from_environ(environ))
