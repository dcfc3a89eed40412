"""`multiplex-ipam`: the shared IPAM as a CNI IPAM plugin.

The same object serves multiplex's delegates in-process (`plugin.add(req)` with the delegate's
Request, whose config carries the `ipam` block) and any CNI plugin that execs it as an IPAM binary
(the reference `bridge` or `macvlan` with `"ipam": {"type": "multiplex-ipam", ...}`).

- ADD: one lease per range set (idempotent per container ID + interface + network); the Result has
  `ips` (no `interface` index, as IPAM plugins answer), the gateway of each, `routes` and `dns`.
  A requested address (runtimeConfig `ips`, `args.cni.ips`, CNI_ARGS `IP`) is honoured or refused
  with code 103. When one range set fails, the leases this call made in the others are undone.
- DEL: releases the attachment's leases; nothing leased is not an error.
- CHECK: the attachment holds a lease in every range set and the prevResult's addresses are it.
- STATUS: code 50 when a pool of the config has no free address.
- GC: releases the leases of exactly this network (the config `name` the plugin got, namespaced for
  NAD networks) that the keep-list does not keep (`cni.dev/valid-attachments`, plus the meta
  plugin's `multiplex.dev/valid-containers`; read strictly by cni/valid.py, code 7 before anything).
- sweep (a DEL without a cache entry, called by the meta plugin): releases every lease of the
  container in the store the config names, whatever network or interface.

The call's context (req.ctx) says where: its `state_dir` is the state root (the default dataDir
<state_dir>/ipam), its `kubeconfig` the credentials of `store: kubernetes` when the ipam block
names none, and its `log` carries the call's fields. Nothing is read from os.environ here: an
exec'd IPAM got its context from its environment at its entry (CallContext.from_environ).

In the node daemon the SQLite store's connections stay open between calls (the daemon turns
multiplex.ipam.sqlite.pool on at start-up): the open's checks run once per connection.

One deadline per call: the store gets the Request's (or now + its default), and the undo of a
failed ADD waits for the database only for what is left of it; a lease it cannot release stays
owned by the container, so DEL or GC frees it.

Imports stay light: jsonschema only when ADD/CHECK validate the config; never pyroute2/kubernetes.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Optional

from ..cni import skel
from ..cni.errors import (CNIError, ADDRESS_UNAVAILABLE, CHECK_FAILED, INVALID_ENVIRONMENT, IO_FAILURE,
                          PLUGIN_NOT_AVAILABLE, TRY_AGAIN_LATER)
from ..cni.plugin import Plugin
from ..cni.request import Request
from ..cni.types import IPConfig, Result
from ..cni.valid import parse_keep
from . import config
from .config import IPAMConfig, Requested, StoreLocation
from .store import Lease, Owner, Store, open_store

#: the longest a call without a deadline of its own waits for the store (database lock, node lock)
DEFAULT_WAIT = 60.0


class IPAMPlugin(Plugin):
    type_name = config.TYPE_NAME
    capabilities = frozenset({"ips"})
    schema = "ipam"

    def validate(self, conf: dict, where: str = "$") -> None:
        """Check the `ipam` block of network config `conf` (schema and semantics), errors under `where`."""
        config.validate(conf, where=where)

    def add(self, req: Request) -> Result:
        conf = parse(req)
        owner = owner_of(req, conf.network)
        wanted = assign_requested(conf, config.requested_addresses(req.config, req.args))
        leases: list[Lease] = []
        with store_for(req, conf) as store:
            try:
                for n, range_set in enumerate(conf.range_sets):
                    asked = wanted.get(n)
                    leases.append(store.allocate(range_set, conf.exclude, owner,
                                                 asked.address if asked else None, asked.source if asked else ""))
            except BaseException:
                for lease in leases:
                    if lease.fresh:
                        _release_quietly(store, lease, req)
                raise
        req.ctx.log.info("ipam add", network=conf.network, container=owner.container_id, ifname=owner.ifname,
                       addresses=[str(lease.address) for lease in leases],
                       fresh=[lease.fresh for lease in leases])
        return result_for(conf, leases, req.cni_version)

    def delete(self, req: Request) -> None:
        where = location(req)
        owner = owner_of(req, req.name)
        with store_for(req, where) as store:
            gone = store.release(owner)
        if gone:
            req.ctx.log.info("ipam del", network=owner.network, container=owner.container_id, ifname=owner.ifname,
                           addresses=[str(lease.address) for lease in gone])

    def check(self, req: Request) -> None:
        conf = parse(req)
        owner = owner_of(req, conf.network)
        with store_for(req, conf) as store:
            held = store.leases(owner=owner)
        for range_set in conf.range_sets:
            if not any(lease.pool in range_set.subnets for lease in held):
                raise CNIError(CHECK_FAILED, f"no lease in pool {range_set.name} for {owner.describe()}",
                               f"field: {range_set.path}")
        prev = req.prev_result
        if prev is None:
            return
        held_addresses = {lease.address for lease in held}
        for n, ip in enumerate(Result.from_dict(prev).ips):
            addr = ip.address.ip
            ours = any(rs.subnet_range_for(addr) for rs in conf.range_sets)
            if ours and addr not in held_addresses:
                raise CNIError(CHECK_FAILED, f"address {addr} of prevResult is not leased to {owner.describe()}",
                               f"field: $.prevResult.ips[{n}].address; leased: "
                               + (", ".join(str(a) for a in sorted(held_addresses, key=str)) or "nothing"))

    def status(self, req: Request) -> None:
        conf = parse(req, check_schema=False)
        try:
            with store_for(req, conf) as store:
                usages = [(rs, store.usage(rs, conf.exclude)) for rs in conf.range_sets]
        except CNIError as e:
            if e.code not in (IO_FAILURE, TRY_AGAIN_LATER):   # no database, or no API server
                raise
            raise CNIError(PLUGIN_NOT_AVAILABLE, f"IPAM store unavailable: {e.msg}", e.details) from None
        for range_set, usage in usages:
            if usage.free == 0:
                raise CNIError(PLUGIN_NOT_AVAILABLE, f"pool {usage.pool} exhausted: {usage.leased} of {usage.size} leased",
                               f"field: {range_set.path}; network: {conf.network}")

    def gc(self, req: Request) -> None:
        keep = parse_keep(req.config)          # code 7 before anything is touched
        where = location(req)
        if not req.name:
            return                              # no network: nothing is ours to collect
        with store_for(req, where) as store:
            gone = store.gc(req.name, keep)
        if gone:
            req.ctx.log.info("ipam gc", network=req.name,
                           released=[f"{lease.owner.container_id}/{lease.owner.ifname}:{lease.address}" for lease in gone])

    def sweep(self, req: Request) -> None:
        """A DEL without a cache entry: every lease of `req.container_id` in the store the config
        names (the node's SQLite store when the config has no multiplex-ipam block)."""
        if not req.container_id:
            return
        where = sweep_location(req.config, req.ctx.state_dir, req.ctx.kubeconfig)
        if where is None:
            return
        with store_for(req, where) as store:
            gone = store.release_container(req.container_id)
        if gone:
            req.ctx.log.info("ipam sweep: released the container's leases (DEL without cache)",
                           container=req.container_id,
                           released=[f"{lease.owner.network}/{lease.owner.ifname}:{lease.address}" for lease in gone])


def store_for(req: Request, where: "IPAMConfig | StoreLocation") -> Store:
    """The store `where` names, opened for this call. In the node daemon (which turned the pool on
    at start-up: multiplex.ipam.store.warm) the SQLite store borrows a kept connection; a one-shot
    call opens and closes its own, as always."""
    return open_store(where, deadline_of(req), req.ctx.log, req.ctx.services)


def deadline_of(req: Request) -> float:
    """The call's deadline, or one of DEFAULT_WAIT from now: one bound for every wait of the call."""
    return req.deadline if req.deadline is not None else time.monotonic() + DEFAULT_WAIT


def parse(req: Request, check_schema: bool = True) -> IPAMConfig:
    """The request's IPAM config, completed by its context (state root, the caller's kubeconfig)."""
    return config.parse(req.config, check_schema=check_schema, state_dir=req.ctx.state_dir,
                        kubeconfig=req.ctx.kubeconfig)


def location(req: Request) -> StoreLocation:
    """Where the request's leases live (DEL and GC: never the ranges), completed by its context."""
    return config.store_location(req.config, state_dir=req.ctx.state_dir, kubeconfig=req.ctx.kubeconfig)


def sweep_location(netconf: dict, state_dir: Optional[str] = None,
                   kubeconfig: Optional[str] = None) -> "StoreLocation | None":
    """The store a sweep cleans: the config's multiplex-ipam block's, else the node's SQLite store
    (<state_dir>/ipam) when it exists (a sweep never creates a database)."""
    import os

    ipam = netconf.get("ipam")
    if isinstance(ipam, dict) and ipam.get("type") == config.TYPE_NAME:
        return config.store_location(netconf, state_dir=state_dir, kubeconfig=kubeconfig)
    from .sqlite.schema import FILENAME, MARKER_SUFFIX

    d = config.default_data_dir(state_dir, create=False)
    if not (os.path.exists(os.path.join(d, FILENAME)) or os.path.exists(os.path.join(d, FILENAME + MARKER_SUFFIX))):
        return None
    return StoreLocation(config.DEFAULT_STORE, d, state_dir=state_dir)


def owner_of(req: Request, network: str) -> Owner:
    for value, var in ((req.container_id, "CNI_CONTAINERID"), (req.ifname, "CNI_IFNAME")):
        if not value:
            raise CNIError(INVALID_ENVIRONMENT, f"{var} is required for {req.command}", f"field: {var}")
    ns, name, uid = req.pod
    return Owner(req.container_id, req.ifname, network, ns, name, uid)


def assign_requested(conf: IPAMConfig, requested: list[Requested]) -> dict[int, Requested]:
    """Which range set each requested address belongs to; refuses one that fits none (103)."""
    out: dict[int, Requested] = {}
    for r in requested:
        n = next((i for i, rs in enumerate(conf.range_sets) if rs.range_for(r.address)), None)
        if n is None:
            pools = "; ".join(rs.name for rs in conf.range_sets)
            raise CNIError(ADDRESS_UNAVAILABLE,
                           f"requested address {r.address} is out of range: network {conf.network} hands out {pools}",
                           f"field: {r.source}; allowed: an address in {pools}")
        if n in out:
            raise CNIError(ADDRESS_UNAVAILABLE,
                           f"requested addresses {out[n].address} and {r.address} are in the same pool "
                           f"{conf.range_sets[n].name}: an attachment gets one address per family",
                           f"field: {r.source}; allowed: one address per family")
        out[n] = r
    return out


def result_for(conf: IPAMConfig, leases: list[Lease], cni_version: str = "1.1.0") -> Result:
    ips = []
    for lease in leases:
        subnet = ipaddress.ip_network(lease.pool)
        gateway = None
        for rs in conf.range_sets:
            r = rs.range_for(lease.address) or rs.subnet_range_for(lease.address)
            if r is not None:
                gateway = r.gateway
                break
        ips.append(IPConfig(address=ipaddress.ip_interface(f"{lease.address}/{subnet.prefixlen}"), gateway=gateway))
    return Result(cni_version=cni_version, ips=ips, routes=list(conf.routes), dns=conf.dns)


def _release_quietly(store, lease: Lease, req: Request) -> None:
    """Undo one lease of a failed ADD, within what is left of the call's deadline (never waiting
    again past it). A lease it cannot release stays owned by the container: DEL or GC frees it."""
    try:
        store.release_lease(lease)
    except CNIError as e:
        o = lease.owner
        req.ctx.log.error("could not undo a lease after a failed ADD; it stays owned by the container, "
                        "DEL or GC of the container frees it", address=str(lease.address), network=o.network,
                        container=o.container_id, ifname=o.ifname, error=e.msg)


plugin = IPAMPlugin()


def main() -> None:
    skel.main(plugin)


if __name__ == "__main__":
    main()
