"""Authorize hooks of the admin's own: executables named in the multiplex config (`authorizeHooks`).

    "authorizeHooks": [{"name": "corp-policy", "path": "/usr/local/lib/multiplex/authorize",
                        "timeout": 2, "onTimeout": "deny"}]

For each NAD a pod's annotation names (after namespace isolation and the NAD's own
`nad-namespaces` rule allowed it), each hook in order is run once: the executable, no arguments,
a minimal environment (PATH, MULTIPLEX_AUTHORIZE_HOOK=<name>), cwd `/`, in a session of its own,
with one JSON document on stdin (`payload()`: the pod, the NAD, the request). It answers on stdout
with one JSON object:

    {"allowed": true}            or            {"allowed": false, "reason": "no VLAN 42 for team-b"}

and exits 0. The first refusal wins; a refusal is code 106 naming the hook and its reason.

Fail closed, with a reason a person can act on: a hook that cannot be started, exits non-zero,
is killed, prints something that is not such an object, or prints more than MAX_ANSWER bytes
refuses (its stderr's last line quoted). A hook that does not answer within `timeout` seconds is
killed (its whole session, so a shell's children go too) and refuses, unless its `onTimeout` is
`allow` (the admin prefers a working cluster over a slow hook: logged as a warning). The hook
runs within the call's deadline: it gets at most what is left of it, and when the deadline is
what ran out the call refuses whatever `onTimeout` says (there is no time left to attach).

Only the node admin names hooks: `authorizeHooks` is a node field (policy/trust.py), never taken
from a NAD or a pod annotation.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

from ..cni.errors import CNIError, INVALID_CONFIG
from .hooks import AttachmentAsk, refuse

CONFIG_FIELD = "authorizeHooks"
DEFAULT_TIMEOUT = 5.0
#: the most of a hook's stdout that is read as its answer; more is a refusal
MAX_ANSWER = 64 * 1024
#: the most of a hook's stderr that is kept (its end: the last line is quoted in a refusal)
STDERR_KEEP = 8 * 1024
#: the environment a hook gets: nothing of multiplex's own (no kubeconfig, no state dir)
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
API_VERSION = "multiplex.dev/v1"


@dataclass(frozen=True)
class ExternalHook:
    name: str
    path: str
    timeout: float = DEFAULT_TIMEOUT
    on_timeout: str = "deny"          # "deny" | "allow"


def configured_hooks(conf: Any) -> list[ExternalHook]:
    """The config's `authorizeHooks` (already checked by schemas/multiplex.json on ADD); names must
    be unique (code 7), since a refusal is known by its hook's name."""
    raw = (getattr(conf, "raw", None) or {}).get(CONFIG_FIELD) or []
    hooks: list[ExternalHook] = []
    seen: set[str] = set()
    for k, h in enumerate(raw):
        if not isinstance(h, dict) or not isinstance(h.get("name"), str) or not isinstance(h.get("path"), str):
            raise CNIError(INVALID_CONFIG, f"{CONFIG_FIELD}[{k}] needs a name and a path",
                           f"field: {CONFIG_FIELD}[{k}]; allowed: {{\"name\": ..., \"path\": \"/abs/path\"}}")
        if h["name"] in seen:
            raise CNIError(INVALID_CONFIG, f"{CONFIG_FIELD}[{k}]: the name {h['name']!r} is used twice",
                           f"field: {CONFIG_FIELD}[{k}].name; allowed: a name no other hook has")
        seen.add(h["name"])
        hooks.append(ExternalHook(h["name"], h["path"], float(h.get("timeout", DEFAULT_TIMEOUT)),
                                  str(h.get("onTimeout", "deny"))))
    return hooks


def check(conf: Any, ask: AttachmentAsk) -> None:
    """Run every configured hook for `ask`; the first refusal raises (106)."""
    for hook in configured_hooks(conf):
        run(hook, ask)


def payload(hook: ExternalHook, ask: AttachmentAsk) -> dict[str, Any]:
    """What a hook reads on stdin (documented in docs/policy.md)."""
    sel, req = ask.selection, ask.request
    return {
        "apiVersion": API_VERSION, "kind": "AuthorizeRequest", "hook": hook.name,
        "pod": ask.pod,
        "network": ask.network,
        "nad": ask.nad,
        "request": {
            "command": getattr(req, "command", "ADD"),
            "containerID": getattr(req, "container_id", ""),
            "netns": getattr(req, "netns", ""),
            "ifname": ask.ifname,
            "ips": list(getattr(sel, "ips", None) or []),
            "mac": getattr(sel, "mac", "") or "",
            "defaultRoute": list(getattr(sel, "default_route", None) or []),
            "cniArgs": getattr(sel, "cni_args", None),
            "annotationIndex": getattr(sel, "index", 0),
        },
    }


def run(hook: ExternalHook, ask: AttachmentAsk) -> None:
    """Run `hook` once for `ask`: return when it allows, raise refuse(...) otherwise."""
    log = _log_of(ask)
    left = ask.request.time_left(hook.timeout) if hasattr(ask.request, "time_left") else hook.timeout
    bound_by_deadline = left < hook.timeout
    bound = min(hook.timeout, left)
    data = json.dumps(payload(hook, ask), default=str).encode()
    if bound <= 0:
        raise refuse(hook.name, ask, "the call's deadline has passed; the hook was not run")
    try:
        proc = subprocess.Popen([hook.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/", close_fds=True, start_new_session=True,
                                env={"PATH": HOOK_PATH, "MULTIPLEX_AUTHORIZE_HOOK": hook.name})
    except OSError as e:
        raise refuse(hook.name, ask, f"cannot run {hook.path}: {e.strerror or e}") from None
    try:
        out, err = _talk(proc, data, bound)
    except subprocess.TimeoutExpired:
        _kill(proc)
        if bound_by_deadline:
            raise refuse(hook.name, ask, f"no answer before the call's deadline ({bound:.1f}s left); "
                         "the hook was killed") from None
        if hook.on_timeout == "allow":
            log.warning("authorize hook timed out; allowed (onTimeout: allow)", hook=hook.name,
                        network=ask.network, timeout=hook.timeout)
            return
        raise refuse(hook.name, ask, f"no answer within its timeout of {hook.timeout:g}s; the hook was killed "
                     "(onTimeout: deny)") from None
    except BaseException:
        _kill(proc)
        raise
    allowed, reason = verdict(hook, proc.returncode, out, err)
    log.info("authorize hook answered", hook=hook.name, network=ask.network, allowed=allowed, reason=reason)
    if not allowed:
        raise refuse(hook.name, ask, reason)


def verdict(hook: ExternalHook, returncode: int, out: bytes, err: bytes) -> tuple[bool, str]:
    """(allowed, reason) from what the hook did: anything but exit 0 with a well-formed answer is
    a refusal whose reason says what went wrong."""
    if len(out) > MAX_ANSWER:   # first: such a hook is killed as soon as it has said too much
        return False, f"{hook.path} answered more than {MAX_ANSWER} bytes; an answer is at most {MAX_ANSWER}"
    if returncode != 0:
        how = (f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}")
        return False, f"{hook.path} {how}" + _stderr_tail(err)
    try:
        answer = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("allowed"), bool) \
            or not isinstance(answer.get("reason", ""), str):
        return False, (f"{hook.path} answered {_quote(out)}, not a JSON object "
                       '{"allowed": true|false, "reason": "..."}')
    reason = answer.get("reason", "").strip()
    if answer["allowed"]:
        return True, reason
    return False, reason or "(the hook gave no reason)"


def _talk(proc: subprocess.Popen, data: bytes, timeout: float) -> tuple[bytes, bytes]:
    """`proc.communicate(data, timeout)` with bounded reads: stdout is kept up to MAX_ANSWER + 1
    bytes and stderr's last STDERR_KEEP bytes, so a hook that floods its pipes costs no memory.
    A hook whose answer is already too long is killed (its session) at once: the refusal does
    not wait for its timeout. Raises subprocess.TimeoutExpired like communicate."""
    import selectors
    import time

    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    view, sent = memoryview(data), 0
    with selectors.DefaultSelector() as sel:
        if data:
            os.set_blocking(proc.stdin.fileno(), False)   # a hook that does not read never blocks us
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            for key, _ev in sel.select(left):
                f = key.fileobj
                if f is proc.stdin:
                    try:
                        sent += os.write(f.fileno(), view[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:   # the hook answers without reading all: its choice
                        sent = len(data)
                    if sent >= len(data):
                        sel.unregister(f)
                        f.close()
                    continue
                chunk = os.read(f.fileno(), 65536)
                if not chunk:
                    sel.unregister(f)
                    f.close()
                elif f is proc.stdout:
                    out += chunk
                    if len(out) > MAX_ANSWER:   # refused whatever follows: stop it now
                        _kill(proc)
                        return bytes(out[:MAX_ANSWER + 1]), bytes(err)
                else:
                    err = (err + chunk)[-STDERR_KEEP:]
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise subprocess.TimeoutExpired(proc.args, timeout) from None
    return bytes(out), bytes(err)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the hook's whole session (its children hold its pipes too), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for f in (proc.stdin, proc.stdout, proc.stderr):   # a grandchild that left the session may hold them
        if f is not None:
            f.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:   # stuck in the kernel: Popen reaps it later
        pass


def _stderr_tail(err: bytes) -> str:
    lines = [l for l in err.decode("utf-8", "replace").splitlines() if l.strip()]
    return f": {lines[-1].strip()[:200]}" if lines else ""


def _quote(out: bytes, limit: int = 100) -> str:
    text = out.decode("utf-8", "replace").strip()
    if not text:
        return "nothing"
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _log_of(ask: AttachmentAsk):
    ctx = getattr(ask.request, "ctx", None)
    log = getattr(ctx, "log", None)
    if log is None:
        from ..util import log as _log

        log = _log.get()
    return log
