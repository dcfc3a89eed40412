"""The lease store interface, and the objects every store speaks in.

A lease belongs to an Owner (container ID + interface name + network name: the key of an
attachment; the network name is the one the plugin got, `<namespace>.<NAD>` for NAD networks).
Addresses are unique in the whole store, whatever network or pool asked: two networks whose ranges
share a subnet, or whose subnets overlap but differ (a /24 and a /25 of it), never get the same
address. (The SQLite store checks every lease of the family; the kubernetes store keys blocks by
IPPool and refuses a range that overlaps an IPPool without being its CIDR, and IPPools that overlap.)

A store answers each question atomically. `allocate` gets the whole range set, the exclusions,
the owner and an optional requested address, and returns the lease: the owner's existing lease in
that set (ADD is idempotent), the requested address, or the next free one. The SQLite store keeps
one database file per node; a cluster-wide store (Kubernetes custom resources) implements the same
methods. Stores are listed by name (the config's `store`) in registry.STORES and imported only when used.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from ..cni.types import IPAddress, IPNetwork
from ..cni.valid import Keep, keep_of
from ..util import log as _log
from .config import IPAMConfig, RangeSet, StoreLocation
from .registry import STORES


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: the attachment key, plus the pod for messages and listings."""
    container_id: str
    ifname: str
    network: str
    pod_namespace: str = field(default="", compare=False)
    pod_name: str = field(default="", compare=False)
    pod_uid: str = field(default="", compare=False)

    def describe(self) -> str:
        pod = f"pod {self.pod_namespace}/{self.pod_name}, " if self.pod_name else ""
        return f"{pod}container {self.container_id}, interface {self.ifname}, network {self.network}"


@dataclass(frozen=True)
class Lease:
    pool: str            # the subnet the address is unique in, e.g. "198.18.5.0/24"
    address: IPAddress
    owner: Owner
    created: float = field(default=0.0, compare=False)
    #: True when this call made the lease, False when it already existed (idempotent ADD).
    fresh: bool = field(default=False, compare=False)

    def to_dict(self) -> dict:
        o = self.owner
        return {"pool": self.pool, "address": str(self.address), "network": o.network,
                "containerID": o.container_id, "ifname": o.ifname, "podNamespace": o.pod_namespace,
                "podName": o.pod_name, "podUID": o.pod_uid, "created": self.created}


@dataclass(frozen=True)
class PoolUsage:
    pool: str                # the range set's name, e.g. "198.18.5.0/29"
    family: int
    size: Optional[int]      # addresses that may be handed out (reserved, excluded left out); None: unknown
    leased: int
    leases: tuple[Lease, ...] = field(default=(), compare=False)  # filled by Store.pools()

    @property
    def free(self) -> Optional[int]:
        return None if self.size is None else max(self.size - self.leased, 0)

    def to_dict(self, with_leases: bool = False) -> dict:
        d = {"pool": self.pool, "family": self.family, "size": self.size, "used": self.leased,
             "free": self.free}
        if with_leases:
            d["leases"] = [lease.to_dict() for lease in self.leases]
        return d


class Store(ABC):
    """Where leases live. Every method is one atomic step."""

    @abstractmethod
    def allocate(self, range_set: RangeSet, exclude: Sequence[IPNetwork], owner: Owner,
                 requested: Optional[IPAddress] = None, requested_from: str = "") -> Lease:
        """The owner's lease in `range_set`: existing, requested or the next free address.

        Raises CNIError 102 (pool exhausted) or 103 (requested address out of range, reserved or
        leased to someone else; `requested_from` names where the request came from).
        """

    @abstractmethod
    def release(self, owner: Owner) -> list[Lease]:
        """Release every lease of `owner`; nothing leased is not an error. Returns what was released."""

    @abstractmethod
    def release_lease(self, lease: Lease) -> None:
        """Release one lease (a failed ADD undoes the leases it made)."""

    @abstractmethod
    def leases(self, network: Optional[str] = None, owner: Optional[Owner] = None) -> list[Lease]:
        """Leases, all or of one network or one owner, ordered by pool and address."""

    @abstractmethod
    def gc(self, network: str, keep: Keep) -> list[Lease]:
        """Release the leases of exactly `network` (the name the plugin got) that `keep` does not keep
        (`Keep.keeps(containerID, ifname)`: a listed pair, or any interface of a listed container)."""

    @abstractmethod
    def release_container(self, container_id: str) -> list[Lease]:
        """Release every lease of a container, whatever network or interface (a DEL without a cache
        entry: Plugin.sweep). Returns what was released."""

    @abstractmethod
    def usage(self, range_set: RangeSet, exclude: Sequence[IPNetwork]) -> PoolUsage:
        """How many addresses of the range set may be handed out, and how many are leased."""

    @abstractmethod
    def pools(self) -> list[PoolUsage]:
        """Every range set the store has handed addresses from (size as last configured), with its
        leases; leases of no known range set are grouped by subnet with size None."""

    @classmethod
    @abstractmethod
    def open(cls, where: "IPAMConfig | StoreLocation", deadline: Optional[float] = None,
             log: Optional[_log.Logger] = None) -> "Store":
        """Open the store a config names (its dataDir, or whatever a store needs from the config).
        `deadline` (time.monotonic()) bounds every wait of the store (the CNI call's deadline);
        `log` is the call's logger (default: the process logger)."""

    def close(self) -> None:
        return None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_keep(keep: "Keep | Iterable[tuple[str, str]]") -> Keep:
    """A Keep from a Keep or from (containerID, ifname) pairs (callers written before Keep)."""
    return keep if isinstance(keep, Keep) else keep_of(keep)


def open_store(where: IPAMConfig | StoreLocation, deadline: Optional[float] = None,
               log: Optional[_log.Logger] = None, services: Any = None) -> Store:
    """The store a config names, opened (the SQLite store: at its dataDir or <where.state_dir>/ipam).
    `deadline`: the call's (Request.deadline, or now + the store's default when the call has none);
    `log`: the call's logger (req.ctx.log); `services`: the call's (req.ctx.services: the node
    daemon's, which lends the kubernetes store its watch cache), None in a one-shot process."""
    module_name, _, cls_name = STORES[where.store].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if services is not None and where.store == "kubernetes":
        return cls.open(where, deadline=deadline, log=log, services=services)
    return cls.open(where, deadline=deadline, log=log)


def keep_open() -> None:
    """Keep the SQLite store's connections open between calls in this process (a warm process:
    the node daemon). Idempotent; a one-shot process never calls it."""
    from .sqlite import pool

    if not pool.POOL.enabled:
        pool.keep_open()


def warm(state_dir: Optional[str] = None, log: Optional[_log.Logger] = None) -> None:
    """For a warm process (the node daemon's start-up): keep SQLite connections open between calls
    (multiplex.ipam.sqlite.pool) and open the node's database now when it exists, so the first
    call borrows a checked connection. Never creates a database (a node without one gets it at its
    first ADD, as today); a database that cannot be opened now is logged, and the first call meets
    it with the usual errors and repair."""
    import os

    from .config import default_data_dir
    from .sqlite.schema import FILENAME
    from .sqlite.store import SQLiteStore

    keep_open()
    data_dir = default_data_dir(state_dir, create=False)
    if not os.path.exists(os.path.join(data_dir, FILENAME)):
        return
    try:
        with SQLiteStore.open(StoreLocation("sqlite", data_dir, state_dir=state_dir), log=log) as store:
            store.leases(owner=Owner("", "", ""))
    except Exception as e:   # noqa: BLE001 - start-up goes on; the first call reports it
        (log or _log.get()).warning("IPAM database not opened at start-up", directory=data_dir, error=repr(e))
