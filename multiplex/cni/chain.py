"""Running a NetworkList's plugin chain for one attachment, with libcni's semantics.

- Every plugin gets its own config plus the network's `name` and `cniVersion`, the `prevResult`
  (ADD: the previous plugin's result; DEL/CHECK: the cached result), in the network's version,
  and a `runtimeConfig` holding only the capability args that plugin declares.
- A plugin declares a capability with `"capabilities": {"<cap>": true}` in its config, or by being
  a built-in plugin whose `capabilities` set holds it (an explicit `false` in the config wins).
- Who asks decides what happens to a capability no plugin of the list declares (libcni and
  CONVENTIONS.md: a runtime passes each capability arg only to the plugins that declare it, and
  never fails because a plugin does not):
  - runtime-supplied (the `runtimeConfig` the runtime gives the multiplex config: `dns` and
    `io.kubernetes.cri.pod-annotations` from containerd and kubelet on every pod, `portMappings`,
    `bandwidth`, ...): they are the cluster network's, handed on as libcni would, so one it does
    not declare is dropped (logged at debug), never refused: `runtime_capabilities`;
  - annotation-requested (what a pod's networks annotation asks of a NAD network: `ips`, `mac`,
    `portMappings`, `bandwidth`, `infinibandGUID`, `deviceID`): the pod author asked for it, so
    ADD refuses, before anything runs, one that no plugin of the list declares (code 2 naming it):
    `check_capabilities`. Empty values (`[]`, `{}`, `""`, null) count as not requested.
  DEL and CHECK never refuse; they only filter.
- ADD failing at plugin k runs DEL for plugins k..0 (reverse, best effort, errors logged) and
  re-raises the original error: a failed ADD leaves nothing behind.
- DEL runs in reverse order, attempts every plugin and raises the first error at the end.
- CHECK (from 0.4.0) stops at the first failure; `disableCheck` skips it. GC and STATUS (1.1.0)
  are skipped for older versions; `disableGC` skips GC.
- GC gets a keep-list (valid.Keep). Built-in plugins get it whole: the pairs and
  `multiplex.dev/valid-containers` (every interface of those containers is kept). Exec'd plugins get
  the spec's shape, the pairs only; when the caller cannot name every pair (`external=False`), GC is
  not forwarded to exec'd plugins at all, since a pair left out would be collected.
Plugins are called through `invoke.invoke`: built-ins in-process, others exec'd from the path.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union

from . import registry
from . import version as cniversion
from .conflist import NetworkList, declared_capabilities
from .context import CallContext
from .errors import CNIError, INCOMPATIBLE_VERSION, INTERNAL, UNSUPPORTED_FIELD
from .invoke import DEFAULT_TIMEOUT, invoke
from .request import Request
from .types import Result
from .valid import VALID_ATTACHMENTS, VALID_CONTAINERS, Keep, keep_of


@dataclass
class Runtime:
    """What a runtime passes besides the network config (libcni's RuntimeConf)."""

    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    #: CNI_ARGS as a dict (K8S_POD_NAME, IgnoreUnknown, ...)
    cni_args: dict[str, str] = field(default_factory=dict)
    #: where exec'd plugins are looked up (CNI_PATH)
    path: list[str] = field(default_factory=list)
    #: capability args (`portMappings`, `bandwidth`, `ips`, `mac`, ...) for `runtimeConfig`
    capability_args: dict[str, Any] = field(default_factory=dict)
    #: merged into each plugin config's `args` (e.g. {"cni": {...}} from an annotation's cni-args)
    args: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    #: the calling request's deadline (time.monotonic()), handed to every plugin it runs, so waits
    #: in in-process delegates and IPAM share the one budget of the runtime's call. None: each
    #: plugin call starts its own.
    deadline: Optional[float] = None

    #: the calling request's context (state root, kubeconfig, logger, delete batch), handed to
    #: every plugin it runs: cni/context.py
    ctx: CallContext = field(default_factory=CallContext)


# ---- building each plugin's config -------------------------------------------------------------

def plugin_capabilities(plugin_conf: Mapping[str, Any]) -> set[str]:
    """Capabilities a plugin of the chain declares: its config's, plus a built-in's own set."""
    caps = declared_capabilities(dict(plugin_conf))
    builtin = registry.builtin(str(plugin_conf.get("type", "")))
    if builtin is not None:
        explicit = plugin_conf.get("capabilities")
        off = {k for k, v in explicit.items() if v is False} if isinstance(explicit, dict) else set()
        caps |= set(builtin.capabilities) - off
    return caps


def requested(capability_args: Mapping[str, Any]) -> dict[str, Any]:
    """Capability args that ask for something (empty values do not)."""
    return {k: v for k, v in capability_args.items() if v not in (None, "", [], {})}


def declared_by(netlist: NetworkList) -> set[str]:
    """Every capability some plugin of `netlist` declares."""
    declared: set[str] = set()
    for p in netlist.plugins:
        declared |= plugin_capabilities(p)
    return declared


def runtime_capabilities(netlist: NetworkList, capability_args: Mapping[str, Any], log=None) -> dict[str, Any]:
    """The runtime-supplied capability args `netlist` declares; the others are dropped (named in
    a debug line), as libcni drops a capability no plugin of a list declares."""
    declared = declared_by(netlist)
    kept = {k: v for k, v in capability_args.items() if k in declared}
    dropped = sorted(set(capability_args) - declared)
    if dropped and log is not None:
        log.debug("runtime capabilities not declared by the network are not passed on", network=netlist.name,
                  dropped=dropped)
    return kept


def check_capabilities(netlist: NetworkList, capability_args: Mapping[str, Any]) -> None:
    """Refuse (code 2) a requested capability (from a pod's annotation) that no plugin of
    `netlist` declares."""
    declared = declared_by(netlist)
    missing = sorted(set(requested(capability_args)) - declared)
    if missing:
        cap = missing[0]
        raise CNIError(UNSUPPORTED_FIELD,
                       f"network {netlist.name!r} cannot honour capability {cap!r}: none of its plugins "
                       f"({', '.join(netlist.types)}) declares it",
                       f"field: runtimeConfig.{cap}; network: {netlist.name}; declared: "
                       f"{', '.join(sorted(declared)) or '(none)'}")


def build_config(netlist: NetworkList, index: int, rt: Optional[Runtime] = None,
                 prev_result: Optional[Result] = None) -> dict[str, Any]:
    """The stdin config of plugin `index` (libcni's buildOneConfig + injectRuntimeConfig)."""
    conf = copy.deepcopy(netlist.plugins[index])
    conf["name"] = netlist.name
    conf["cniVersion"] = netlist.cni_version
    conf.pop("prevResult", None)
    if prev_result is not None:
        conf["prevResult"] = prev_result.to_dict(netlist.cni_version)
    if rt is None:
        return conf
    caps = plugin_capabilities(conf)
    rc = {k: copy.deepcopy(v) for k, v in rt.capability_args.items() if k in caps}
    if rc:
        conf["runtimeConfig"] = rc
    if rt.args:
        conf["args"] = _merge_args(conf.get("args"), rt.args)
    return conf


def _merge_args(own: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(own) if isinstance(own, dict) else {}
    for k, v in given.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **copy.deepcopy(v)}
        else:
            out[k] = copy.deepcopy(v)
    return out


def _request(command: str, conf: dict[str, Any], rt: Runtime) -> Request:
    return Request(command=command, container_id=rt.container_id, netns=rt.netns, ifname=rt.ifname,
                   args=dict(rt.cni_args), path=list(rt.path), config=conf, deadline=rt.deadline, ctx=rt.ctx)


def _describe(netlist: NetworkList, index: int) -> str:
    return f"{netlist.name}[{index}] ({netlist.plugins[index].get('type')})"


# ---- the commands ------------------------------------------------------------------------------

def add_list(netlist: NetworkList, rt: Runtime) -> Result:
    """ADD every plugin in order; on failure undo what ran and re-raise the original error."""
    check_capabilities(netlist, rt.capability_args)
    result: Optional[Result] = None
    for k in range(len(netlist.plugins)):
        conf = build_config(netlist, k, rt, result)
        try:
            out = invoke(_request("ADD", conf, rt), timeout=rt.timeout)
            if out is None:  # invoke returns a Result for every ADD; this would be a bug
                raise CNIError(INTERNAL, f"plugin {_describe(netlist, k)} returned no result for ADD")
        except Exception as e:
            rt.ctx.log.warning("plugin failed ADD, undoing the chain", plugin=_describe(netlist, k),
                              container=rt.container_id, ifname=rt.ifname, error=str(e))
            _undo(netlist, rt, k, result)
            raise
        result = out
    assert result is not None  # a NetworkList has at least one plugin
    result.cni_version = netlist.cni_version
    return result


def _undo(netlist: NetworkList, rt: Runtime, failed: int, result: Optional[Result]) -> None:
    """DEL plugins failed..0 in reverse, best effort; errors are logged, never raised."""
    for k in range(failed, -1, -1):
        try:
            invoke(_request("DEL", _del_config(netlist, k, rt, result), rt), timeout=rt.timeout)
        except Exception as e:
            rt.ctx.log.error("undo of a failed ADD could not DEL a plugin", plugin=_describe(netlist, k),
                            container=rt.container_id, ifname=rt.ifname, error=str(e))


def _del_config(netlist: NetworkList, k: int, rt: Runtime, prev: Optional[Result]) -> dict[str, Any]:
    # prevResult on DEL exists from 0.4.0 (libcni passes none to older configs)
    if not cniversion.at_least(netlist.cni_version, "0.4.0"):
        prev = None
    return build_config(netlist, k, rt, prev)


def del_list(netlist: NetworkList, rt: Runtime, prev_result: Optional[Result] = None) -> None:
    """DEL every plugin in reverse order; all are attempted, the first error is raised at the end."""
    first: Optional[BaseException] = None
    for k in range(len(netlist.plugins) - 1, -1, -1):
        try:
            invoke(_request("DEL", _del_config(netlist, k, rt, prev_result), rt), timeout=rt.timeout)
        except Exception as e:
            rt.ctx.log.error("plugin failed DEL", plugin=_describe(netlist, k), container=rt.container_id,
                            ifname=rt.ifname, error=str(e))
            if first is None:
                first = e
    if first is not None:
        raise first


def check_list(netlist: NetworkList, rt: Runtime, prev_result: Optional[Result] = None) -> None:
    """CHECK every plugin in order against the cached result; the first failure is raised."""
    if not cniversion.at_least(netlist.cni_version, "0.4.0"):
        raise CNIError(INCOMPATIBLE_VERSION,
                       f"CHECK is not supported for cniVersion {netlist.cni_version} (network {netlist.name!r})",
                       "field: cniVersion; allowed: 0.4.0 or later for CHECK")
    if netlist.disable_check:
        return
    for k in range(len(netlist.plugins)):
        invoke(_request("CHECK", build_config(netlist, k, rt, prev_result), rt), timeout=rt.timeout)


Attachment = Union[tuple[str, str], Mapping[str, str]]


def valid_attachments_json(valid: Iterable[Attachment]) -> list[dict[str, str]]:
    """`cni.dev/valid-attachments` from (container_id, ifname) pairs or spec-shaped dicts."""
    out = []
    for a in valid:
        if isinstance(a, Mapping):
            out.append({"containerID": str(a["containerID"]), "ifname": str(a["ifname"])})
        else:
            cid, ifname = a
            out.append({"containerID": str(cid), "ifname": str(ifname)})
    return out


def gc_config(netlist: NetworkList, index: int, keep: Keep) -> dict[str, Any]:
    """Plugin `index`'s GC config: the whole keep-list for a built-in, the pairs for an exec'd one
    (whatever a NAD's config carried under these keys is replaced)."""
    conf = build_config(netlist, index)
    conf.pop(VALID_CONTAINERS, None)
    if registry.builtin(str(conf.get("type", ""))) is not None:
        conf.update(keep.to_config())
    else:
        conf[VALID_ATTACHMENTS] = valid_attachments_json(sorted(keep.pairs))
    return conf


def gc_list(netlist: NetworkList, keep: Union[Keep, Iterable[Attachment]], *,
            path: Optional[list[str]] = None, timeout: float = DEFAULT_TIMEOUT, external: bool = True,
            ctx: Optional[CallContext] = None) -> None:
    """GC every plugin with what is still in use; errors are collected, the first raised.

    `external=False`: the keep-list cannot name every attachment (pairs), so exec'd plugins, which
    only understand pairs, are not asked to GC at all (logged); built-ins still are."""
    if not cniversion.at_least(netlist.cni_version, "1.1.0") or netlist.disable_gc:
        return
    if not isinstance(keep, Keep):
        keep = keep_of((a["containerID"], a["ifname"]) for a in valid_attachments_json(keep))
    rt = Runtime(path=list(path or []), timeout=timeout, ctx=ctx or CallContext())
    first: Optional[BaseException] = None
    for k in range(len(netlist.plugins)):
        if not external and registry.builtin(str(netlist.plugins[k].get("type", ""))) is None:
            rt.ctx.log.warning("GC not forwarded to an exec'd plugin: the keep-list lacks the interfaces of "
                              "containers without a readable cache entry", plugin=_describe(netlist, k))
            continue
        conf = gc_config(netlist, k, keep)
        try:
            invoke(_request("GC", conf, rt), timeout=timeout)
        except Exception as e:
            rt.ctx.log.error("plugin failed GC", plugin=_describe(netlist, k), error=str(e))
            if first is None:
                first = e
    if first is not None:
        raise first


def status_list(netlist: NetworkList, *, path: Optional[list[str]] = None,
                timeout: float = DEFAULT_TIMEOUT, ctx: Optional[CallContext] = None) -> None:
    """STATUS every plugin; the first error (50/51 when a plugin cannot serve ADDs) is raised."""
    if not cniversion.at_least(netlist.cni_version, "1.1.0"):
        return
    rt = Runtime(path=list(path or []), timeout=timeout, ctx=ctx or CallContext())
    for k in range(len(netlist.plugins)):
        invoke(_request("STATUS", build_config(netlist, k), rt), timeout=timeout)
