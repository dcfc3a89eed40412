"""The enforce step of the meta plugin: what ADD, DEL and CHECK do about MultiNetworkPolicy.

- **ADD**, after every attachment is made and before the result is cached complete: in a process
  that runs the policy controller (the node daemon) the engine compiles the pod's ruleset and
  applies it in the pod's netns now, so the pod never has a moment of open traffic on a policed
  interface. A one-shot ADD (no engine in its process) reads `<state>/policy/networks.json`
  (written by the controller): interfaces on networks a policy of the pod's namespace names get
  a fail-closed table, which the controller replaces with the real rules at its next pass. With
  neither, there are no policies on this node and nothing is done. A failure here fails the ADD
  (its attachments are undone, the table removed).
- **DEL**: the table goes from the netns (when the netns is still there), the status file goes,
  the engine forgets the pod. Best effort, like every DEL step: a netns already gone took its
  table with it.
- **CHECK**: when the status file says the pod has a table, the table in the netns must carry the
  same structure hash; missing or different is CHECK_FAILED naming the netns and the table.

The engine is process-wide (`register`), as the plugin registry is: the daemon's policy
controller registers it at setup and unregisters it at stop; per-call state still travels on
the request. Stdlib only at import time.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any, Optional

from ...cni.errors import CHECK_FAILED, CNIError

_ENGINE: Any = None
_LOCK = threading.Lock()


def register(engine: Any) -> None:
    global _ENGINE
    with _LOCK:
        _ENGINE = engine


def unregister(engine: Any) -> None:
    global _ENGINE
    with _LOCK:
        if _ENGINE is engine:
            _ENGINE = None


def engine_for(state_dir: Optional[str]) -> Any:
    """The registered engine when it keeps the same state root as the call, else None."""
    from ...util.state import root

    with _LOCK:
        engine = _ENGINE
    if engine is None or root(engine.state_dir) != root(state_dir):
        return None
    return engine


def _policed_networks(state_dir: Optional[str], namespace: str) -> set[str]:
    from .engine import policy_dir

    try:
        with open(os.path.join(policy_dir(state_dir), "networks.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return set()
    return set(data.get(namespace) or []) if isinstance(data, dict) else set()


def enforce_add(ctx: Any, atts: list, results: list, source: Any) -> Optional[str]:
    """ADD's enforce step (see the module doc). Returns the structure hash applied, or None."""
    from .engine import LocalPod

    req = ctx.req
    ns, name, uid = req.pod
    if not name or not req.netns:
        return None
    state_dir = req.ctx.state_dir
    pod = LocalPod(req.container_id, req.netns, ns or "default", name,
                   [(a.ifname, a.network, [str(ip.address.ip) for ip in r.ips]) for a, r in zip(atts, results)])
    engine = engine_for(state_dir)
    if engine is not None:
        obj = None
        if source is not None:
            try:
                obj = source.get_pod(pod.namespace, name, uid or "")
            except CNIError as e:
                ctx.log.warning("policy: cannot read the pod's labels; policies see it without", error=e.msg)
        rs = engine.enforce_add(pod, obj)
        ctx.log.info("policy applied", hash=rs.hash if not rs.empty else "")
        return None if rs.empty else rs.hash
    nets = _policed_networks(state_dir, pod.namespace)
    policed = [(i, n) for i, n, _ in pod.interfaces if n in nets or "*" in nets]
    if not policed:
        return None
    from . import compiler
    from .apply import Applier
    from .engine import write_status
    from .model import PodInfo, PolicyError

    waiting = PolicyError("(pending)", "policy-for", "the policy controller has not yet compiled this pod's rules")
    view = compiler.PolicyView([], [(pod.namespace, tuple(n for _, n in policed), waiting)], {}, [])
    rs = compiler.compile_pod(view, PodInfo(pod.namespace, name), [(i, n) for i, n, _ in pod.interfaces])
    Applier().apply(pod.netns, rs)
    write_status(state_dir, pod, rs)
    ctx.log.info("policy: no engine in this process; policed interfaces closed until the controller's pass",
                 interfaces=[i for i, _ in policed])
    return rs.hash


def added(ctx: Any) -> None:
    """The ADD's record is complete (the cache now names the pod)."""
    engine = engine_for(ctx.req.ctx.state_dir)
    if engine is not None:
        engine.added(ctx.req.container_id)


def enforce_del(ctx: Any, netns: str) -> None:
    """DEL's step: the table out of the netns, the status file and the engine's memory gone."""
    from .engine import read_status, remove_status

    req = ctx.req
    state_dir = req.ctx.state_dir
    status = read_status(state_dir, req.container_id)
    engine = engine_for(state_dir)
    if engine is not None:
        engine.delete(req.container_id, netns or (status or {}).get("netns", ""))
    elif status is not None and netns and os.path.exists(netns):
        from .apply import Applier

        Applier().remove(netns)
    if status is not None:
        remove_status(state_dir, req.container_id)


def enforce_check(ctx: Any) -> None:
    """CHECK's step: the table the status file names is in the netns, unchanged."""
    from .apply import Applier
    from .engine import read_status

    req = ctx.req
    status = read_status(req.ctx.state_dir, req.container_id)
    if not status or not status.get("hash"):
        return
    found = Applier().table_hash(req.netns)
    if found != status["hash"]:
        raise CNIError(CHECK_FAILED,
                       "the pod's MultiNetworkPolicy table " + ("is missing" if found is None else "was changed")
                       + f" in its netns (expected structure {status['hash']}, found {found or 'none'})",
                       f"netns: {req.netns}; table inet multiplex_mnp")
