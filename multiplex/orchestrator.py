"""The meta plugin (`type: multiplex`): one pod, several attachments, all or nothing.

ADD  select attachments -> validate every config -> for each, in order: authorize, run its chain
     (delegate + IPAM + chained hooks), cache -> default route -> network-status -> the cluster
     network's result. A failure at attachment k DELs k..1 in reverse and returns the error.
DEL  from the cache, in reverse; never needs the API server; idempotent; fine without a netns.
CHECK every attachment against its cached result. GC removes attachments not in
`cni.dev/valid-attachments` and forwards GC to every network. STATUS asks every network.

The cache entry for a pod is written before each attachment starts, so a crash mid-ADD leaves a
record that DEL (or GC) uses to clean up.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from . import log
from .cni import version as cniversion
from .cni.errors import (CNIError, PLUGIN_NOT_AVAILABLE, PLUGIN_NOT_AVAILABLE_LIMITED, TRY_AGAIN_LATER,
                         UNKNOWN_CONTAINER)
from .cni.plugin import Plugin
from .cni.request import Request
from .cni.types import Result
from .config import MultiplexConfig
from .selection import Attachment

CACHE_VERSION = 1


@dataclass
class Context:
    req: Request
    conf: MultiplexConfig

    @classmethod
    def load(cls, req: Request) -> "Context":
        conf = MultiplexConfig.from_dict(req.config, validate=req.command not in ("DEL", "GC"))
        logger = log.get()
        logger.configure(conf.log_file, conf.log_level)
        ns, pod, _ = req.pod
        logger.bind(command=req.command, container=req.container_id[:12], pod=f"{ns}/{pod}" if pod else "")
        if conf.state_dir:
            # delegates and IPAM, in-process or exec'd, find the same state root
            os.environ["MULTIPLEX_STATE_DIR"] = conf.state_dir
        if conf.kubeconfig:
            # a delegate's IPAM with `store: kubernetes` finds the cluster through the same kubeconfig
            os.environ["MULTIPLEX_KUBECONFIG"] = conf.kubeconfig
        return cls(req, conf)

    @property
    def path(self) -> list[str]:
        return ([self.conf.bin_dir] if self.conf.bin_dir else []) + list(self.req.path)

    def cache(self):
        from .cni.cache import ResultCache
        from .state import subdir

        return ResultCache(subdir("cache", self.conf.state_dir))

    def lock(self):
        from .cni.lock import container_lock

        return container_lock(self.req.container_id)

    def source(self):
        conf = self.conf
        if conf.kubeconfig:
            from .k8s.source import KubeSource

            return KubeSource(conf.kubeconfig)
        if conf.nad_dir or conf.pod_dir:
            from .sources import LocalSource

            return LocalSource(conf.nad_dir, conf.pod_dir)
        return None

    def runtime(self, att: Attachment, netns: Optional[str] = None):
        from .cni.chain import Runtime

        return Runtime(container_id=self.req.container_id,
                       netns=self.req.netns if netns is None else netns,
                       ifname=att.ifname, cni_args=dict(self.req.args), path=self.path,
                       capability_args=dict(att.capability_args),
                       args={"cni": att.cni_args} if att.cni_args else {},
                       timeout=self.conf.plugin_timeout)


def parse_netlist(att: Attachment, default_version: Optional[str] = None):
    from .cni.conflist import parse

    nl = parse(att.netconf, where=f"{att.network}:$", default_name=att.network.rpartition("/")[2],
               default_version=default_version)
    if att.config_name:  # the network's identity (namespace included) is the name its plugins see
        nl.name = att.config_name
    return nl


def validate_netlist(nl, att: Attachment) -> None:
    """Check every built-in plugin's config (and its built-in IPAM's) before anything is touched."""
    from .cni.chain import build_config
    from .cni.registry import builtin

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


class Multiplexer(Plugin):
    type_name = "multiplex"
    # What the runtime may pass (applied to the cluster network only, per the multi-network spec).
    capabilities = frozenset({"portMappings", "bandwidth", "ips", "mac", "dns", "ipRanges", "infinibandGUID",
                              "deviceID", "aliases", "io.kubernetes.cri.pod-annotations"})

    # ---- ADD ---------------------------------------------------------------------------------
    def add(self, req: Request) -> Result:
        ctx = Context.load(req)
        with ctx.lock():
            cache = ctx.cache()
            cached = cache.load(req.container_id, req.ifname)
            if cached and cached.get("complete"):
                # ADD twice for the same container and interface: the same answer, nothing redone
                return Result.from_dict(cached["attachments"][0]["result"])
            if cached:  # a crashed ADD left a partial record: undo it first
                self._delete_record(ctx, cached)
                cache.delete(req.container_id, req.ifname)
            wait_ready(ctx.conf)
            t_start = time.perf_counter()
            source = ctx.source()
            from .policy import authorize
            from .selection import select

            atts = select(ctx.conf, req, source, authorize=authorize)
            t_selected = time.perf_counter()
            # every config is checked before anything is touched
            netlists = [parse_netlist(a, ctx.conf.cni_version) for a in atts]
            from .cni import chain

            for a, nl in zip(atts, netlists):
                validate_netlist(nl, a)
                chain.check_capabilities(nl, a.capability_args)
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
                    log.get().info("attaching", network=a.network, ifname=a.ifname)
                    res = chain.add_list(nl, ctx.runtime(a))
                    entry["result"] = res.to_dict(cniversion.CURRENT)
                    results.append(res)
                default_idx = apply_default_route(req, atts, results)
                for entry, res in zip(record["attachments"], results):  # default-route may move routes
                    entry["result"] = res.to_dict(cniversion.CURRENT)
                record["default"] = default_idx
                record["complete"] = True
                cache.save(req.container_id, req.ifname, record)
                t_attached = time.perf_counter()
            except BaseException as e:
                log.get().warning("ADD failed, undoing attachments", error=str(e))
                # the attachment that failed has undone its own chain (chain.add_list); the record
                # kept it only so that a crash mid-ADD would be undone by a later DEL
                while (isinstance(e, Exception) and record["attachments"]
                       and record["attachments"][-1]["result"] is None):
                    record["attachments"].pop()
                self._delete_record(ctx, record, ignore_errors=True)
                cache.delete(req.container_id, req.ifname)
                raise
            publish_status(ctx, source, atts, results, default_idx)
            log_timings(source, len(atts), t_start, t_selected, t_attached, time.perf_counter())
            out = results[0]
            out.cni_version = req.cni_version
            return out

    # ---- DEL ---------------------------------------------------------------------------------
    def delete(self, req: Request) -> None:
        ctx = Context.load(req)
        with ctx.lock():
            cache = ctx.cache()
            record = cache.load(req.container_id, req.ifname)
            if record is None:
                self._delete_without_cache(ctx)
                return
            self._delete_record(ctx, record)
            cache.delete(req.container_id, req.ifname)

    def _delete_record(self, ctx: Context, record: dict, ignore_errors: bool = False) -> None:
        """DEL every attachment of a record in reverse; raise the first error after trying all."""
        from .cni import chain

        from .netlink.batch import deferred_deletes

        netns = ctx.req.netns if ctx.req.netns and os.path.exists(ctx.req.netns) else ""
        first: Optional[CNIError] = None
        # built-in delegates' node-side links go in one batch, deleted with one request at the end
        with deferred_deletes():
            for entry in reversed(record.get("attachments", [])):
                att = Attachment.from_dict(entry)
                prev = Result.from_dict(entry["result"]) if entry.get("result") else None
                try:
                    nl = parse_netlist(att, ctx.conf.cni_version)
                    chain.del_list(nl, ctx.runtime(att, netns=netns), prev)
                except CNIError as e:
                    log.get().warning("DEL of attachment failed", network=att.network, ifname=att.ifname,
                                      error=str(e))
                    first = first or e
        if first is not None and not ignore_errors:
            raise first

    def _delete_without_cache(self, ctx: Context) -> None:
        """No cache (never added, or already deleted): DEL the config's own networks, best effort."""
        from .cni import chain
        from .selection import resolve_cluster_network

        log.get().info("DEL without cache entry: deleting the config's networks best effort")
        try:
            name, netconf, delegates = resolve_cluster_network(ctx.conf, None)
        except CNIError:
            return
        atts = [Attachment(network=name, ifname=ctx.req.ifname, netconf=netconf, cluster=True)]
        for n, d in enumerate(delegates, 1):
            atts.append(Attachment(network=str(d.get("name", "")), ifname=f"net{n}", netconf=d))
        netns = ctx.req.netns if ctx.req.netns and os.path.exists(ctx.req.netns) else ""
        for att in reversed(atts):
            try:
                chain.del_list(parse_netlist(att, ctx.conf.cni_version), ctx.runtime(att, netns=netns), None)
            except CNIError as e:
                log.get().info("best-effort DEL failed", network=att.network, error=str(e))

    # ---- CHECK -------------------------------------------------------------------------------
    def check(self, req: Request) -> None:
        ctx = Context.load(req)
        from .cni import chain

        with ctx.lock():
            record = ctx.cache().load(req.container_id, req.ifname)
        if record is None or not record.get("complete"):
            raise CNIError(UNKNOWN_CONTAINER, f"no attachments recorded for container {req.container_id}",
                           f"container: {req.container_id}; ifname: {req.ifname}")
        for entry in record["attachments"]:
            att = Attachment.from_dict(entry)
            chain.check_list(parse_netlist(att, ctx.conf.cni_version), ctx.runtime(att), Result.from_dict(entry["result"]))

    # ---- GC ----------------------------------------------------------------------------------
    def gc(self, req: Request) -> None:
        ctx = Context.load(req)
        from .cni import chain

        valid = {(a.get("containerID"), a.get("ifname")) for a in req.config.get("cni.dev/valid-attachments") or []
                 if isinstance(a, dict)}
        cache = ctx.cache()
        kept: list[dict] = []
        for cid, ifname, record in list(cache.entries()):
            if (cid, ifname) in valid:
                kept.append(record)
                continue
            log.get().info("GC: removing stale attachment", container=cid, ifname=ifname)
            sub = ctx.req.derive(command="DEL", container_id=cid, ifname=ifname, netns="")
            subctx = Context(sub, ctx.conf)
            with subctx.lock():
                self._delete_record(subctx, record, ignore_errors=True)
                cache.delete(cid, ifname)
        # Forward GC to every network we know, with the attachments still valid on it.
        networks: dict[str, tuple[Attachment, list[dict]]] = {}
        try:
            for att in config_attachments(ctx):
                networks.setdefault(att.network, (att, []))
        except CNIError as e:  # e.g. the API is down: the networks in the cache are still collected
            log.get().warning("GC: cannot resolve the config's own networks", error=str(e))
        for record in kept:
            for entry in record.get("attachments", []):
                att = Attachment.from_dict(entry)
                networks.setdefault(att.network, (att, []))[1].append(
                    {"containerID": record["containerID"], "ifname": att.ifname})
        first: Optional[CNIError] = None
        for att, still_valid in networks.values():
            try:
                chain.gc_list(parse_netlist(att, ctx.conf.cni_version), still_valid, path=ctx.path)
            except CNIError as e:
                log.get().warning("GC of network failed", network=att.network, error=str(e))
                first = first or e
        if first is not None:
            raise first

    # ---- STATUS ------------------------------------------------------------------------------
    def status(self, req: Request) -> None:
        ctx = Context.load(req)
        from .cni import chain

        try:
            atts = config_attachments(ctx)
        except CNIError as e:
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"cannot resolve the cluster network: {e.msg}", e.details) from None
        for att in atts:
            try:
                chain.status_list(parse_netlist(att, ctx.conf.cni_version), path=ctx.path)
            except CNIError as e:
                # STATUS answers with the spec's STATUS codes: 51 passes through, all else is 50
                code = e.code if e.code in (PLUGIN_NOT_AVAILABLE, PLUGIN_NOT_AVAILABLE_LIMITED) else PLUGIN_NOT_AVAILABLE
                raise CNIError(code, f"network {att.network}: {e.msg}", e.details) from None


def config_attachments(ctx: Context) -> list[Attachment]:
    """The networks named by the config itself: the cluster network and the delegates."""
    from .selection import resolve_cluster_network

    name, netconf, delegates = resolve_cluster_network(ctx.conf, ctx.source())
    atts = [Attachment(network=name, ifname=ctx.req.ifname or "eth0", netconf=netconf, cluster=True)]
    atts += [Attachment(network=str(d.get("name", "")), ifname=f"net{n}", netconf=d)
             for n, d in enumerate(delegates, 1)]
    return atts


def log_timings(source, attachments: int, t_start: float, t_selected: float, t_attached: float,
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
    log.get().info("ADD done", **fields)


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
    from .routes import move_default_route

    idx = wanted[-1]
    move_default_route(req.netns, atts[idx].ifname, atts[idx].default_route, results[idx],
                       [r for i, r in enumerate(results) if i != idx])
    return idx


def publish_status(ctx: Context, source, atts: list[Attachment], results: list[Result], default_idx: int) -> None:
    """Write the network-status annotation. A failure is logged, never fails the ADD."""
    if source is None:
        return
    ns, pod, _ = ctx.req.pod
    if not pod:
        return
    try:
        from .netstatus import network_status

        text = network_status([(a.network, a.ifname, r, i == default_idx, None)
                               for i, (a, r) in enumerate(zip(atts, results))])
        source.set_network_status(ns or "default", pod, text)
    except CNIError as e:
        log.get().warning("cannot write network-status", error=str(e))


plugin = Multiplexer()
