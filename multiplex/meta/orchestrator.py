"""The meta plugin (`type: multiplex`): one pod, several attachments, all or nothing.

ADD  select attachments -> validate every config -> for each, in order: authorize, run its chain
     (delegate + IPAM + chained hooks), cache -> default route -> network-status -> the cluster
     network's result. A failure at attachment k DELs k..1 in reverse and returns the error.
DEL  from the cache, in reverse; never needs the API server; idempotent; fine without a netns.
     Without a usable cache entry (none, corrupt, or a netconf that no longer parses) every
     built-in plugin sweeps what it made for the container, found by its own marks.
CHECK every attachment against its cached result. STATUS asks every network.
GC   keeps exactly what the runtime lists in `cni.dev/valid-attachments` (a malformed list is
     code 7, nothing touched): a cache entry is collected only when its (containerID, ifname) is
     not listed, under the container's lock, re-read there, and skipped when another call holds
     that lock. GC then goes to every network known (the config's and every cached
     attachment's), under the name its plugins see, with the keep-list: built-ins get the pairs
     and the listed containers (`multiplex.dev/valid-containers`), exec'd plugins the pairs only,
     or no GC at all when a listed container's interfaces are unknown (its cache entry unreadable).

The cache entry for a pod is written before each attachment starts, so a crash mid-ADD leaves a
record that DEL (or GC) uses to clean up. Every ADD holds the GC lock shared and GC holds it
exclusive (cni/lock.py), so GC never sees an ADD half done; the GC lock comes before the
container lock. Every lock wait takes what is left of the call's deadline.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Optional

from ..util import log
from ..cni import version as cniversion
from ..cni.errors import (CNIError, PLUGIN_NOT_AVAILABLE, PLUGIN_NOT_AVAILABLE_LIMITED, TRY_AGAIN_LATER,
                         UNKNOWN_CONTAINER)
from ..cni.plugin import Plugin
from ..cni.request import Request
from ..cni.types import Result
from .config import MultiplexConfig
from .selection import Attachment

CACHE_VERSION = 1
#: how long GC waits for the lock of a container it would collect before skipping it (a call for
#: that container is in flight: an ADD or DEL that will settle the entry itself)
STALE_LOCK_WAIT = 1.0


@dataclass
class Context:
    """One call of the meta plugin: its request (whose `ctx` is the call's CallContext) and config."""

    req: Request
    conf: MultiplexConfig

    @classmethod
    def load(cls, req: Request) -> "Context":
        """Parse the config and give the request the call's context: the config's state root and
        kubeconfig (else what the process was started with) and a logger of its own (the config's
        logFile/logLevel, the call's command, container and pod). Everything the call derives -
        its delegates' and their IPAM's requests - carries it; nothing goes to os.environ."""
        conf = MultiplexConfig.from_dict(req.config, validate=req.command not in ("DEL", "GC"))
        ns, pod, _ = req.pod
        logger = req.ctx.log.child(conf.log_file or None, conf.log_level or None, command=req.command,
                                   container=req.container_id[:12], pod=f"{ns}/{pod}" if pod else "")
        req.ctx = req.ctx.with_(state_dir=conf.state_dir or req.ctx.state_dir,
                                kubeconfig=conf.kubeconfig or req.ctx.kubeconfig, log=logger)
        return cls(req, conf)

    @property
    def log(self) -> log.Logger:
        """The call's logger."""
        return self.req.ctx.log

    def with_batch(self, batch) -> "Context":
        """This call with `batch` as its netlink delete batch (on a request of its own)."""
        return Context(self.req.derive(ctx=self.req.ctx.with_(batch=batch)), self.conf)

    @property
    def path(self) -> list[str]:
        return ([self.conf.bin_dir] if self.conf.bin_dir else []) + list(self.req.path)

    def cache(self):
        """The result cache; a state directory that cannot hold it is code 5 naming the path."""
        from ..cni.cache import ResultCache
        from ..util.state import root

        return ResultCache(os.path.join(root(self.req.ctx.state_dir), "cache"))

    def lock_file(self) -> str:
        """The lock file under this call's state root (cni/lock.py)."""
        from ..cni.lock import default_path

        return default_path(self.req.ctx.state_dir)

    def lock(self, timeout: Optional[float] = None):
        """The container's lock, waiting at most what is left of the call's deadline."""
        from ..cni.lock import DEFAULT_TIMEOUT, container_lock

        wait = self.req.time_left(DEFAULT_TIMEOUT)
        return container_lock(self.req.container_id, timeout=wait if timeout is None else min(timeout, wait),
                              path=self.lock_file())

    def gc_lock(self, exclusive: bool):
        """The GC lock: shared for an ADD, exclusive for GC (cni/lock.py)."""
        from ..cni.lock import DEFAULT_TIMEOUT, gc_lock

        return gc_lock(exclusive, timeout=self.req.time_left(DEFAULT_TIMEOUT), path=self.lock_file())

    @property
    def netns_if_there(self) -> str:
        """The call's netns, or "" when it is gone: DEL must work without one."""
        netns = self.req.netns
        return netns if netns and os.path.exists(netns) else ""

    def plugin_timeout(self) -> float:
        return min(self.conf.plugin_timeout, self.req.time_left(self.conf.plugin_timeout))

    def source(self):
        """Where pods and NADs come from: the node daemon's caches when this call is served by a
        daemon that watches what the config names (cni/context.py Services), else the API or the
        local files the config names, or None."""
        conf = self.conf
        services = self.req.ctx.services
        if services is not None:
            cached = services.source(conf)
            if cached is not None:
                return cached
        if conf.kubeconfig:
            from ..k8s.source import KubeSource

            return KubeSource(conf.kubeconfig, log=self.req.ctx.log)
        if conf.nad_dir or conf.pod_dir:
            from .sources import LocalSource

            return LocalSource(conf.nad_dir, conf.pod_dir)
        return None

    def runtime(self, att: Attachment, netns: Optional[str] = None):
        from ..cni.chain import Runtime

        return Runtime(container_id=self.req.container_id,
                       netns=self.req.netns if netns is None else netns,
                       ifname=att.ifname, cni_args=dict(self.req.args), path=self.path,
                       capability_args=dict(att.capability_args),
                       args={"cni": att.cni_args} if att.cni_args else {},
                       timeout=self.plugin_timeout(), deadline=self.req.deadline, ctx=self.req.ctx)


def parse_netlist(att: Attachment, default_version: Optional[str] = None):
    from ..cni.conflist import parse

    nl = parse(att.netconf, where=f"{att.network}:$", default_name=att.network.rpartition("/")[2],
               default_version=default_version)
    if att.config_name:  # the network's identity (namespace included) is the name its plugins see
        nl.name = att.config_name
    return nl


def validate_netlist(nl, att: Attachment) -> None:
    """Check every built-in plugin's config (and its built-in IPAM's) before anything is touched."""
    from ..cni.chain import build_config
    from ..cni.registry import builtin

    for k, conf in enumerate(nl.plugins):
        where = f"{att.network}:$" + (f".plugins[{k}]" if "plugins" in nl.raw else "")
        full = build_config(nl, k)
        plugin = builtin(str(conf.get("type", "")))
        if plugin is not None:
            plugin.validate(full, where)
        ipam = conf.get("ipam")
        if isinstance(ipam, dict) and isinstance(ipam.get("type"), str):
            ipam_plugin = builtin(ipam["type"])
            if ipam_plugin is not None and ipam_plugin is not plugin:
                ipam_plugin.validate(full, where)


def check_attachments(atts: list[Attachment], default_version: Optional[str] = None, logger=None) -> list:
    """ADD's checks of every attachment's config, before anything is touched (and all that
    `multiplex validate` runs on a config file: one code path). Every config parses as a plugin
    config or conflist, every built-in plugin (and built-in IPAM) accepts its config, and the
    capabilities hold as libcni has them (cni/chain.py): the runtime's, which only the cluster
    network receives, are filtered to what it declares (the others dropped, at debug); what a
    pod's annotation asks of a NAD network is refused (code 2) when no plugin declares it.
    Returns the parsed NetworkLists, in order."""
    from ..cni import chain

    netlists = [parse_netlist(a, default_version) for a in atts]
    for a, nl in zip(atts, netlists):
        validate_netlist(nl, a)
        if a.cluster:
            a.capability_args = chain.runtime_capabilities(nl, a.capability_args, logger)
        chain.check_capabilities(nl, a.capability_args)
    return netlists


class Multiplexer(Plugin):
    type_name = "multiplex"
    # What the runtime may pass (applied to the cluster network only, per the multi-network spec).
    capabilities = frozenset({"portMappings", "bandwidth", "ips", "mac", "dns", "ipRanges", "infinibandGUID",
                              "deviceID", "aliases", "io.kubernetes.cri.pod-annotations"})

    # ---- ADD ---------------------------------------------------------------------------------
    def add(self, req: Request) -> Result:
        ctx = Context.load(req)
        source = None
        network, ifname = "", ""  # the attachment under way, named by a failure's event
        try:
            with ctx.gc_lock(exclusive=False), ctx.lock():
                cache = ctx.cache()
                cached = cache.load(req.container_id, req.ifname, with_corrupt=True)
                if cached and cached.get("complete"):
                    # ADD twice for the same container and interface: the same answer, nothing redone
                    return Result.from_dict(cached["attachments"][0]["result"])
                if cached:  # a crashed ADD left a partial record: undo it first
                    self._delete_record(ctx, cached)
                    cache.delete(req.container_id, req.ifname)
                elif cached is not None:  # a corrupt entry: what it stood for is swept by the marks
                    self._sweep(ctx)
                    cache.delete(req.container_id, req.ifname)
                wait_ready(ctx.conf)
                t_start = time.perf_counter()
                source = ctx.source()
                from ..policy import authorize
                from .selection import select

                atts = select(ctx.conf, req, source, authorize=authorize)
                t_selected = time.perf_counter()
                # every config is checked before anything is touched
                netlists = check_attachments(atts, ctx.conf.cni_version, ctx.log)
                from ..cni import chain

                record: dict[str, Any] = {"version": CACHE_VERSION, "containerID": req.container_id,
                                          "ifname": req.ifname, "netns": req.netns,
                                          "cniArgs": dict(req.args), "attachments": [], "complete": False}
                results: list[Result] = []
                try:
                    for a, nl in zip(atts, netlists):
                        entry = a.to_dict()
                        entry["result"] = None
                        record["attachments"].append(entry)
                        cache.save(req.container_id, req.ifname, record)
                        network, ifname = a.network, a.ifname
                        ctx.log.info("attaching", network=a.network, ifname=a.ifname)
                        res = chain.add_list(nl, ctx.runtime(a))
                        entry["result"] = res.to_dict(cniversion.CURRENT)
                        results.append(res)
                    default_idx = apply_default_route(req, atts, results)
                    for entry, res in zip(record["attachments"], results):  # default-route may move routes
                        entry["result"] = res.to_dict(cniversion.CURRENT)
                    record["default"] = default_idx
                    from ..policy.mnp import hooks as policy_hooks  # enforce: rules in before ADD returns

                    record["policy"] = policy_hooks.enforce_add(ctx, atts, results, source)
                    record["complete"] = True
                    cache.save(req.container_id, req.ifname, record)
                    policy_hooks.added(ctx)
                    t_attached = time.perf_counter()
                except BaseException as e:
                    ctx.log.warning("ADD failed, undoing attachments", error=str(e))
                    # the attachment that failed has undone its own chain (chain.add_list); the record
                    # kept it only so that a crash mid-ADD would be undone by a later DEL
                    while (isinstance(e, Exception) and record["attachments"]
                           and record["attachments"][-1]["result"] is None):
                        record["attachments"].pop()
                    self._delete_record(ctx, record, ignore_errors=True)
                    try:
                        cache.delete(req.container_id, req.ifname)
                    except CNIError as gone:  # e.g. a read-only state dir: the original error matters
                        ctx.log.error("cannot remove the cache entry of a failed ADD", error=gone.msg)
                    raise
                publish_status(ctx, source, atts, results, default_idx)
                log_timings(ctx.log, source, len(atts), t_start, t_selected, t_attached, time.perf_counter())
        except Exception as e:
            pod_events_failed(ctx, source, network, ifname, e)
            raise
        pod_events_added(ctx, source, atts, results)
        out = results[0]
        out.cni_version = req.cni_version
        return out

    # ---- DEL ---------------------------------------------------------------------------------
    def delete(self, req: Request) -> None:
        ctx = Context.load(req)
        with ctx.lock():
            cache = ctx.cache()
            record = cache.load(req.container_id, req.ifname, with_corrupt=True)
            if not isinstance(record, dict):  # none, or corrupt: clean by the plugins' own marks
                self._delete_without_cache(ctx)
                self._sweep(ctx)
                if record is not None:
                    ctx.log.info("DEL removes the corrupt cache entry", file=record.path, problem=record.problem)
                    cache.delete(req.container_id, req.ifname)
                return
            self._delete_record(ctx, record)
            cache.delete(req.container_id, req.ifname)

    def _delete_record(self, ctx: Context, record: dict, ignore_errors: bool = False) -> None:
        """DEL every attachment of a record in reverse; raise the first error after trying all.
        An attachment whose cached netconf no longer parses cannot be DELed by its plugins: the
        built-in plugins sweep the container instead."""
        from ..cni import chain

        from ..netlink.batch import DeleteBatch

        netns = ctx.netns_if_there
        first: Optional[CNIError] = None
        unparsed: list[str] = []
        from ..policy.mnp import hooks as policy_hooks  # enforce: the pod's policy table goes first

        try:
            policy_hooks.enforce_del(ctx, netns)
        except CNIError as e:
            ctx.log.warning("DEL of the pod's policy table failed", error=e.msg)
            first = e
        # built-in delegates' node-side links go in one batch, deleted with one request at the end
        # (a caller's batch, when there is one, deletes them at its own end)
        batch = DeleteBatch() if ctx.req.ctx.batch is None else None
        inner = ctx.with_batch(batch) if batch is not None else ctx
        with batch if batch is not None else nullcontext():
            for entry in reversed(record.get("attachments", [])):
                try:
                    att = Attachment.from_dict(entry)
                    nl = parse_netlist(att, ctx.conf.cni_version)
                    prev = Result.from_dict(entry["result"]) if entry.get("result") else None
                except (CNIError, KeyError, TypeError, ValueError, AttributeError) as e:
                    network = entry.get("network", "?") if isinstance(entry, dict) else "?"
                    ctx.log.warning("cached attachment cannot be read; sweeping the container instead",
                                    network=str(network), error=str(e))
                    unparsed.append(str(network))
                    continue
                try:
                    chain.del_list(nl, inner.runtime(att, netns=netns), prev)
                except CNIError as e:
                    ctx.log.warning("DEL of attachment failed", network=att.network, ifname=att.ifname,
                                    error=str(e))
                    first = first or e
        if unparsed:
            try:
                self._sweep(ctx)
            except CNIError as e:
                first = first or e
        if first is not None and not ignore_errors:
            raise first

    def _sweep(self, ctx: Context) -> None:
        """Every built-in plugin removes what it made for this container on this node, found by
        its own marks (veth alias, lease owner, nft comment), unless the cache records another
        interface of the container. What cannot be reached (an API server that is down) is logged
        as best effort; any other failure is raised after all ran."""
        from ..cni import registry

        # The marks name the container, not the runtime's interface: with another entry of this
        # container in the cache (a runtime that attaches it twice, as eth0 and eth1), a sweep
        # would take that live attachment too. Its own DEL or GC cleans it instead.
        others = [i for i in ctx.cache().ifnames(ctx.req.container_id) if i != ctx.req.ifname]
        if others:
            ctx.log.warning("sweep skipped: the container has other recorded attachments, which it would remove",
                            container=ctx.req.container_id, ifname=ctx.req.ifname, recorded=others)
            return
        netns = ctx.netns_if_there
        sub = ctx.req.derive(command="DEL", netns=netns)
        first: Optional[CNIError] = None
        seen: set[int] = set()
        for name in registry.builtin_names():
            try:
                plugin = registry.builtin(name)
            except CNIError as e:
                ctx.log.error("sweep: built-in plugin cannot be loaded", plugin=name, error=e.msg)
                first = first or e
                continue
            if plugin is None or isinstance(plugin, Multiplexer) or id(plugin) in seen:
                continue
            seen.add(id(plugin))
            try:
                plugin.sweep(sub)
            except CNIError as e:
                if _unreachable(e):
                    ctx.log.warning("sweep: best effort, cannot be reached", plugin=name, error=e.msg)
                    continue
                ctx.log.error("sweep failed", plugin=name, code=e.code, error=e.msg)
                first = first or e
        ctx.log.info("swept the container's attachments by their marks", plugins=len(seen))
        if first is not None:
            raise first

    def _delete_without_cache(self, ctx: Context) -> None:
        """No cache (never added, or already deleted): DEL the config's own networks, best effort."""
        from ..cni import chain

        ctx.log.info("DEL without cache entry: deleting the config's networks best effort")
        try:
            atts = config_attachments(ctx, source=None)  # DEL never needs the API server
        except CNIError as e:
            ctx.log.info("best-effort DEL: the config's networks cannot be resolved", error=e.msg)
            return
        netns = ctx.netns_if_there
        for att in reversed(atts):
            try:
                chain.del_list(parse_netlist(att, ctx.conf.cni_version), ctx.runtime(att, netns=netns), None)
            except CNIError as e:
                ctx.log.info("best-effort DEL failed", network=att.network, error=str(e))

    # ---- CHECK -------------------------------------------------------------------------------
    def check(self, req: Request) -> None:
        ctx = Context.load(req)
        from ..cni import chain

        with ctx.lock():
            record = ctx.cache().load(req.container_id, req.ifname)
        if record is None or not record.get("complete"):
            raise CNIError(UNKNOWN_CONTAINER, f"no attachments recorded for container {req.container_id}",
                           f"container: {req.container_id}; ifname: {req.ifname}")
        for entry in record["attachments"]:
            att = Attachment.from_dict(entry)
            chain.check_list(parse_netlist(att, ctx.conf.cni_version), ctx.runtime(att), Result.from_dict(entry["result"]))
        from ..policy.mnp import hooks as policy_hooks  # enforce: the policy table is still in place

        policy_hooks.enforce_check(ctx)

    # ---- GC ----------------------------------------------------------------------------------
    def gc(self, req: Request) -> None:
        from ..cni import chain
        from ..cni.valid import parse_keep

        keep = parse_keep(req.config)  # a malformed list is code 7 before anything is touched
        ctx = Context.load(req)
        with ctx.gc_lock(exclusive=True):  # no ADD is half done while GC runs
            cache = ctx.cache()
            records = list(cache.entries())
            live = self._collect_stale(ctx, cache, keep, records)
            self._collect_corrupt(ctx, cache, keep)
            forward = forward_keep(keep, live)
            unknown = sorted(listed_containers(keep) - {cid for cid, _ in live})
            if unknown:
                ctx.log.warning("GC not forwarded to exec'd plugins: listed containers have no readable "
                                  "cache entry, so their interfaces cannot be named", containers=unknown)
            first: Optional[CNIError] = None
            for nl in gc_networks(ctx, records):
                try:
                    chain.gc_list(nl, forward, path=ctx.path, timeout=ctx.plugin_timeout(), external=not unknown,
                                  ctx=ctx.req.ctx)
                except CNIError as e:
                    ctx.log.warning("GC of network failed", network=nl.name, error=str(e))
                    first = first or e
        if first is not None:
            raise first

    def _collect_stale(self, ctx: Context, cache, keep, records: list) -> list[tuple[str, dict]]:
        """DEL every cache entry the runtime does not list; return the (containerID, record) kept:
        the listed ones and those skipped because another call holds their container's lock."""
        live: list[tuple[str, dict]] = []
        for cid, ifname, record in records:
            if keep.keeps(cid, ifname):
                live.append((cid, record))
                continue
            sub = Context(ctx.req.derive(command="DEL", container_id=cid, ifname=ifname, netns=""), ctx.conf)
            with ExitStack() as held:
                try:
                    held.enter_context(sub.lock(timeout=STALE_LOCK_WAIT))
                except CNIError as e:
                    if e.code != TRY_AGAIN_LATER:
                        raise
                    ctx.log.info("GC: skipped, a call for this container is in flight", container=cid,
                                   ifname=ifname)
                    live.append((cid, record))
                    continue
                try:
                    self._delete_stale(sub, cache)
                except CNIError as e:  # the entry stays: the next GC tries again
                    ctx.log.warning("GC: cannot remove stale attachment", container=cid, ifname=ifname,
                                      error=str(e))
        return live

    def _delete_stale(self, sub: Context, cache) -> None:
        """Under the container's lock: re-read the entry (a DEL may have settled it), then DEL it."""
        cid, ifname = sub.req.container_id, sub.req.ifname
        fresh = cache.load(cid, ifname, with_corrupt=True)
        if fresh is None:
            return
        sub.log.info("GC: removing stale attachment", container=cid, ifname=ifname)
        if isinstance(fresh, dict):
            self._delete_record(sub, fresh)
        else:
            self._sweep(sub)
        cache.delete(cid, ifname)

    def _collect_corrupt(self, ctx: Context, cache, keep) -> None:
        """A corrupt entry of a container the runtime does not list: sweep it by marks, remove the file."""
        listed = listed_containers(keep)
        for bad in list(cache.corrupt_entries()):
            if bad.container_id in listed or keep.keeps(bad.container_id, bad.ifname):
                continue
            sub = Context(ctx.req.derive(command="DEL", container_id=bad.container_id, ifname=bad.ifname,
                                         netns=""), ctx.conf)
            try:
                with sub.lock(timeout=STALE_LOCK_WAIT):
                    if isinstance(cache.load(bad.container_id, bad.ifname, with_corrupt=True), dict):
                        continue  # rewritten meanwhile: the next GC judges it
                    self._sweep(sub)
                    cache.delete(bad.container_id, bad.ifname)
            except CNIError as e:
                ctx.log.warning("GC: cannot clean a corrupt cache entry", file=bad.path, error=str(e))

    # ---- STATUS ------------------------------------------------------------------------------
    def status(self, req: Request) -> None:
        ctx = Context.load(req)
        from ..cni import chain

        try:
            atts = config_attachments(ctx)
        except CNIError as e:
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"cannot resolve the cluster network: {e.msg}", e.details) from None
        for att in atts:
            try:
                chain.status_list(parse_netlist(att, ctx.conf.cni_version), path=ctx.path, ctx=ctx.req.ctx)
            except CNIError as e:
                # STATUS answers with the spec's STATUS codes: 51 passes through, all else is 50
                code = e.code if e.code in (PLUGIN_NOT_AVAILABLE, PLUGIN_NOT_AVAILABLE_LIMITED) else PLUGIN_NOT_AVAILABLE
                raise CNIError(code, f"network {att.network}: {e.msg}", e.details) from None


def config_attachments(ctx: Context, source: Any = "config") -> list[Attachment]:
    """The networks named by the config itself (the cluster network and the delegates), with the
    identities ADD gives them. `source`: where NADs are looked up (default: the config's)."""
    from . import selection

    return selection.config_attachments(ctx.conf, ctx.source() if source == "config" else source,
                                        ctx.req.ifname or "eth0")


def listed_containers(keep) -> set[str]:
    """Every container the runtime lists (by one of its pairs, or whole)."""
    return {cid for cid, _ in keep.pairs} | set(keep.containers)


def forward_keep(keep, live: list[tuple[str, dict]]):
    """The keep-list GC forwards: the runtime's pairs plus every attachment of each live record
    (the runtime never sees net1, net2, ...), and whole containers: the listed ones and those
    whose entry GC left alone because a call for them is in flight."""
    from ..cni.valid import keep_of

    pairs = set(keep.pairs)
    for cid, record in live:
        for entry in record.get("attachments") or []:
            if isinstance(entry, dict) and isinstance(entry.get("ifname"), str):
                pairs.add((cid, entry["ifname"]))
    return keep_of(pairs, listed_containers(keep) | {cid for cid, _ in live})


def gc_networks(ctx: Context, records: list) -> list:
    """Every network known - the config's own and every cached attachment's - by the name its
    plugins see (a NAD's `<namespace>.<name>`, or the bare name of an entry cached before
    identities), and its config, so two networks sharing a name are each reached."""
    import json

    found: list[Attachment] = []
    try:
        found += config_attachments(ctx)
    except CNIError as e:  # e.g. the API is down: the networks in the cache are still collected
        ctx.log.warning("GC: cannot resolve the config's own networks", error=str(e))
    for _, _, record in records:
        for entry in record.get("attachments") or []:
            try:
                found.append(Attachment.from_dict(entry))
            except (KeyError, TypeError, AttributeError) as e:
                ctx.log.warning("GC: a cached attachment cannot be read", error=str(e))
    networks: dict[tuple[str, str], Any] = {}
    for att in found:
        try:
            nl = parse_netlist(att, ctx.conf.cni_version)
        except CNIError as e:
            ctx.log.warning("GC: network config does not parse; not forwarded", network=att.network, error=e.msg)
            continue
        networks.setdefault((nl.name, json.dumps(nl.plugins, sort_keys=True, default=str)), nl)
    return list(networks.values())


def _unreachable(e: CNIError) -> bool:
    """An API server that cannot be reached: what a sweep cannot do, it logs as best effort."""
    from ..k8s.errors import Unavailable

    return isinstance(e, Unavailable)


def log_timings(logger: log.Logger, source, attachments: int, t_start: float, t_selected: float, t_attached: float,
                t_done: float) -> None:
    """One info line per ADD: where the time went. `select_ms` holds pod/NAD lookups (with the
    Kubernetes client's import and credentials, `api_setup_ms`, and its requests, `api_request_ms`),
    `attach_ms` the delegates' netlink and IPAM work, `status_ms` the network-status write."""
    fields: dict[str, Any] = {"attachments": attachments,
                              "select_ms": round((t_selected - t_start) * 1000, 2),
                              "attach_ms": round((t_attached - t_selected) * 1000, 2),
                              "status_ms": round((t_done - t_attached) * 1000, 2)}
    stats = getattr(getattr(source, "client", None), "stats", None)
    if stats:
        fields.update(api_requests=stats.get("requests", 0), api_setup_ms=round(stats.get("setup_ms", 0.0), 2),
                      api_request_ms=round(stats.get("request_ms", 0.0), 2))
    logger.info("ADD done", **fields)


def wait_ready(conf: MultiplexConfig) -> None:
    """readinessindicatorfile: wait, bounded, for the cluster network to say it is ready."""
    path = conf.readiness_file
    if not path:
        return
    deadline = time.monotonic() + conf.readiness_timeout
    delay = 0.05
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise CNIError(TRY_AGAIN_LATER, f"cluster network not ready: {path} did not appear within "
                           f"{conf.readiness_timeout:.0f}s", "field: readinessindicatorfile")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def apply_default_route(req: Request, atts: list[Attachment], results: list[Result]) -> int:
    """Index of the attachment holding the pod's default route (moved there by `default-route`)."""
    wanted = [i for i, a in enumerate(atts) if a.default_route]
    if not wanted:
        return 0
    from .default_route import move_default_route

    idx = wanted[-1]
    move_default_route(req.netns, atts[idx].ifname, atts[idx].default_route, results[idx],
                       [r for i, r in enumerate(results) if i != idx])
    return idx


def _pod_ref(ctx: Context):
    from ..k8s.events import PodRef

    ns, pod, uid = ctx.req.pod
    return PodRef(ns or "default", pod, uid)


def pod_events_added(ctx: Context, source, atts: list[Attachment], results: list[Result]) -> None:
    """An `AddedInterface` event per attachment on the pod (k8s/events.py), best effort; only
    with a Kubernetes source, imported only then."""
    if source is None or not ctx.req.pod[1] or getattr(source, "client", None) is None:
        return
    from ..k8s import events

    evs = [events.added_interface(a.ifname, [str(ip.address) for ip in r.ips], a.network)
           for a, r in zip(atts, results)]
    events.record(source, _pod_ref(ctx), evs, ctx.log)


def pod_events_failed(ctx: Context, source, network: str, ifname: str, error: BaseException) -> None:
    """A Warning event on the pod naming the network whose attachment failed and the error."""
    if source is None or not ctx.req.pod[1] or getattr(source, "client", None) is None:
        return
    from ..k8s import events

    events.record(source, _pod_ref(ctx), [events.add_failed(network, ifname, error)], ctx.log)


def publish_status(ctx: Context, source, atts: list[Attachment], results: list[Result], default_idx: int) -> None:
    """Write the network-status annotation. A failure is logged, never fails the ADD."""
    if source is None:
        return
    ns, pod, uid = ctx.req.pod
    if not pod:
        return
    try:
        from .netstatus import network_status

        text = network_status([(a.network, a.ifname, r, i == default_idx, None)
                               for i, (a, r) in enumerate(zip(atts, results))])
        source.set_network_status(ns or "default", pod, text, uid or "")
    except CNIError as e:
        ctx.log.warning("cannot write network-status", error=str(e))


plugin = Multiplexer()
