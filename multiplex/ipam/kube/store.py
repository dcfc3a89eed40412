"""The cluster-wide lease store: leases in IPPool and IPBlock custom resources on the Kubernetes API.

The API server (and the etcd behind it) is the database; every node writes it directly. The
objects and their (de)serialising are multiplex.ipam.kube.model, the arithmetic of blocks
multiplex.ipam.kube.blocks; this module is what a node does with them. Creating a block is the
claim: the API server refuses a second create of the same name (AlreadyExists: another node won;
try the next).

ADD on node N (the hot path is one LIST and one write to N's own block):
1. LIST the blocks of the pools labelled with N (its own, and those it borrowed from); the owner's
   lease there is returned as it is (idempotent ADD; a crashed ADD that did write is found here).
2. A requested address: written into the block that holds it (created, affine to N, when it does
   not exist yet; an address in another node's block is borrowed).
3. The next free address of N's own blocks, written with the block's resourceVersion.
4. None free: LIST the pool's blocks and create a free one with the allocation in it.
5. No free block: take over an empty block affine to another node (the pool runs short).
6. None: borrow a free address from another node's block. The allocation is marked `borrowed`,
   so the routed delegate announces it as a /32 (/128).
Every write carries the resourceVersion it read: a 409 re-reads and retries with jittered
backoff, `retries` times, then CNI code 11. A node-local file lock (in dataDir) serializes the
CNI calls of one node, so concurrent ADDs on one node do not conflict with each other.

DEL and CNI GC LIST the blocks labelled with N (no ranges needed) and write each block that held
the attachment. Cluster-wide garbage collection (pods and nodes that are gone) is
multiplex.ipam.gc; the cluster view is multiplex.ipam.show.

**In the node daemon** (a store with a `cache`, multiplex/ipam/kube/cache.py) the reads come
from the daemon's watches: pools and N's blocks are never LISTed, so an allocation from N's own
block is exactly one request, the PUT with the cached resourceVersion; a DEL likewise. A 409
GETs the block (the cache was stale) and retries; a 404 hides it. A claim does not LIST the
pool's blocks either: it **probes**, creating the block at N's position in the pool (its rank
among the cluster's Nodes by name when the daemon watches nodes, else a hash of its name; then N's
own stride through the pool), so nodes that boot at once claim different blocks; an AlreadyExists is a lost probe (counted as `claims_lost`, the block remembered as
taken). After `PROBES` lost probes (the pool is filling up) the claim falls back to the LIST of
the pool's blocks, and so do takeovers and borrows. Probing is safe only when every block of the
pool has the pool's blockSize (a probe cannot see an overlapping block of another size): one
small LIST per pool and cache (`block-size!=<size>`, nearly always empty) checks that, and a pool
with blocks of another size is claimed from the LIST as before. Without a cache (a one-shot CNI
call) nothing changes.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import ipaddress
import os
import random
import socket
import time
from collections import Counter
from itertools import islice
from typing import Callable, Iterator, Optional, Sequence

from ...util import files, log as _log
from ...cni.errors import ADDRESS_UNAVAILABLE, IPAM_EXHAUSTED, TRY_AGAIN_LATER, CNIError, invalid_config
from ...cni.types import IPAddress, IPNetwork
from ...cni.valid import Keep
from ..allocator import Space, address as int_to_address
from ..config import IPAMConfig, Range, RangeSet, StoreLocation
from ..store import Lease, Owner, PoolUsage, Store, as_keep
from .blocks import candidate_blocks, free_in, pool_size, probe_blocks
from .model import (API_VERSION, BLOCKS, GROUP, POOL_KIND, POOL_LABEL, POOLS, VERSION, Allocation,
                    Block, Pool, address_int, block_name, label_value, user_label)

#: the node kubeconfig `multiplex install` writes (install.DEFAULT_CONF_DIR/STATE_SUBDIR/KUBECONFIG_NAME)
NODE_KUBECONFIG = "/etc/cni/net.d/multiplex.d/multiplex.kubeconfig"
NODE_NAME_ENV = "NODE_NAME"

DEFAULT_RETRIES = 8
CANDIDATES = 64          # free blocks a claim chooses among (spread by node, fewer races)
PROBES = 8               # lost probes before a cached claim falls back to LISTing the pool


def resolve_kubeconfig(configured: str = "", caller: Optional[str] = None) -> Optional[str]:
    """The IPAM config's `kubeconfig`, else the caller's (the meta plugin's `kubeconfig`, from the
    call context), else the node kubeconfig `multiplex install` writes when it exists; None: the
    client's own order (in-cluster service account, $KUBECONFIG, ~/.kube/config)."""
    if configured or caller:
        return configured or caller
    return NODE_KUBECONFIG if os.path.isfile(NODE_KUBECONFIG) else None


def resolve_node_name(configured: str = "") -> str:
    """The IPAM config's `nodeName`, else $NODE_NAME, else the host name (lowercase), as the
    kubelet names its node unless --hostname-override is given."""
    return configured or os.environ.get(NODE_NAME_ENV, "").strip() or socket.gethostname().strip().lower()



# --- the store --------------------------------------------------------------------------------

class _Again(Exception):
    """The blocks changed under us (409, or a block gone): read again and retry."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class KubeStore(Store):
    """Leases in IPBlocks of IPPools, for node `node`. `client` is a multiplex.k8s KubeClient."""

    def __init__(self, client, node: str, lock_dir: str = "", retries: int = DEFAULT_RETRIES,
                 backoff: float = 0.02, max_backoff: float = 0.5, clock: Callable[[], float] = time.time,
                 lock_timeout: float = 60.0, log: Optional[_log.Logger] = None, cache=None):
        self.client = client
        #: the node daemon's IPAMCache (multiplex/ipam/kube/cache.py), or None: read the API
        self.cache = cache
        self._cache_ready: Optional[bool] = None
        self.node = node
        self.lock_dir = lock_dir
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.clock = clock
        self.lock_timeout = lock_timeout
        #: the call's logger (the process logger when the store serves no call)
        self.log = log or _log.get()
        self.sleep: Callable[[float], None] = time.sleep
        #: conflicts (409 on a block write), claims, claims_lost (create lost to another node),
        #: takeovers, borrows, retries
        self.stats: Counter = Counter()
        self._pools: Optional[list[Pool]] = None
        self._node_labels: Optional[dict] = None
        self._node_read = False
        self._raced = False   # a takeover or borrow lost a race in this attempt
        self._owns_client = False

    @classmethod
    def open(cls, where: IPAMConfig | StoreLocation, deadline: Optional[float] = None,
             log: Optional[_log.Logger] = None, services=None) -> "KubeStore":
        """The store for this node, with a client of its own (closed by close()): credentials from
        the config's kubeconfig or the caller's (`where.kubeconfig`), the node lock in dataDir
        (default: <state root>/ipam of `where.state_dir`). In the node daemon (the call's
        `services`, else the daemon of this process: multiplex/ipam/kube/cache.py `lent`) the
        store reads from the daemon's watch cache and writes with a warm client of the daemon's
        for the same kubeconfig."""
        from ...k8s.client import KubeClient

        from ..config import default_data_dir
        from .cache import lent

        lock_dir = where.data_dir
        if not lock_dir:
            try:
                lock_dir = default_data_dir(where.state_dir)
            except (OSError, CNIError):
                lock_dir = ""
        lock_timeout = 60.0 if deadline is None else max(0.0, deadline - time.monotonic())
        kubeconfig, node = resolve_kubeconfig(where.kubeconfig), resolve_node_name(where.node_name)
        served = lent(kubeconfig, node, services)
        if served is not None:
            return cls(served.client, node, lock_dir=lock_dir, lock_timeout=lock_timeout, log=log,
                       cache=served.cache)
        store = cls(KubeClient(kubeconfig, log=log), node, lock_dir=lock_dir, lock_timeout=lock_timeout, log=log)
        store._owns_client = True
        return store

    def close(self) -> None:
        """Closes the client when open() made it; a client passed in belongs to the caller. The
        call's counters are added to the cache's (the daemon's running totals)."""
        if self.cache is not None:
            self.cache.count(self.stats)
        if self._owns_client:
            self.client.close()

    def _cached(self):
        """The cache when this store has one and it is synced (decided once per store: a call
        that comes before the first list reads the API, as a one-shot call)."""
        if self.cache is None:
            return None
        if self._cache_ready is None:
            self._cache_ready = self.cache.ready(min(self.cache.sync_timeout, self.lock_timeout))
            self.cache.count(Counter(hits=1) if self._cache_ready else Counter(misses=1))
            if not self._cache_ready:
                self.log.info("IPAM watch cache not synced yet; reading the API", node=self.node)
        return self.cache if self._cache_ready else None

    # --- reads --------------------------------------------------------------------------------

    def list_pools(self) -> list[Pool]:
        """Every well-formed IPPool (one LIST per store, cached); malformed ones are logged and skipped."""
        cache = self._cached()
        if cache is not None:
            return cache.pools()
        if self._pools is None:
            pools = []
            for obj in self.client.list_objects(GROUP, VERSION, POOLS):
                try:
                    pools.append(Pool.from_object(obj))
                except ValueError as e:
                    self.log.warning("ignoring a malformed IPPool", error=str(e))
            self._pools = pools
        return self._pools

    def _list_blocks(self, selector: str) -> list[Block]:
        out = []
        for obj in self.client.list_objects(GROUP, VERSION, BLOCKS, label_selector=selector):
            try:
                out.append(Block.from_object(obj))
            except (ValueError, TypeError, AttributeError) as e:
                self.log.warning("ignoring a malformed IPBlock", block=(obj.get("metadata") or {}).get("name"),
                                  error=str(e))
        return sorted(out, key=lambda b: (b.cidr.version, int(b.cidr.network_address)))

    def node_blocks(self, pools: Sequence[Pool] = (), node: Optional[str] = None) -> list[Block]:
        """The blocks `node` (default: ours) is affine to or borrowed from, of `pools` (default: all)."""
        cache = self._cached() if node in (None, self.node) else None
        if cache is not None:
            names = {p.name for p in pools}
            return [b for b in cache.node_blocks(self.log) if not names or b.pool in names]
        sel = user_label(node or self.node)
        return self._list_blocks(_pool_selector(pools) + sel)

    def pool_blocks(self, pools: Sequence[Pool]) -> list[Block]:
        return self._list_blocks(_pool_selector(pools).rstrip(","))

    def all_blocks(self) -> list[Block]:
        return self._list_blocks("")

    def pool_for(self, r: Range) -> Pool:
        """The IPPool whose CIDR is the range's subnet; code 7 naming the field when there is none."""
        pools = self.list_pools()
        same = [p for p in pools if p.cidr == r.subnet]
        where = f"{r.path}.subnet" if r.path else "subnet"
        overlap = [p for p in pools if p.cidr.version == r.subnet.version and p.cidr != r.subnet
                   and p.cidr.overlaps(r.subnet)]
        if len(same) > 1 or (same and overlap):
            names = ", ".join(f"{p.name} ({p.cidr})" for p in same + overlap)
            raise invalid_config(f"IPPools {names} overlap: addresses of subnet {r.subnet} would not be unique",
                                 where, "one IPPool per subnet; delete or disable the others")
        if overlap:
            raise invalid_config(f"subnet {r.subnet} overlaps IPPool {overlap[0].name} ({overlap[0].cidr}) "
                                 "but is not its CIDR", where,
                                 "the CIDR of an IPPool: " + (", ".join(str(p.cidr) for p in pools) or "none exist"))
        if not same:
            have = ", ".join(f"{p.cidr} ({p.name})" for p in pools if p.family == r.family) or "none"
            raise invalid_config(
                f"no IPPool has CIDR {r.subnet} (the kubernetes store hands out addresses of IPPools only)", where,
                f"the CIDR of an IPPool ({have}), or create one: apiVersion {API_VERSION}, kind {POOL_KIND}, "
                f"spec.cidr {r.subnet}")
        return same[0]

    def node_labels(self) -> Optional[dict]:
        """This node's labels (for pool node selectors); None when the node object does not exist."""
        cache = self._cached()
        if not self._node_read and cache is not None:
            known, labels = cache.node_labels()
            if known:
                self._node_labels, self._node_read = labels, True
        if not self._node_read:
            from ...k8s.errors import NotFound

            try:
                node = self.client.get_node(self.node)
                self._node_labels = dict((node.get("metadata") or {}).get("labels") or {})
            except NotFound:
                self._node_labels = None      # no such node: no selector matches it
            self._node_read = True
        return self._node_labels

    def _why_unusable(self, pool: Pool) -> str:
        return pool.why_unusable(self.node, self.node_labels() if pool.node_selector else {})

    # --- the Store interface --------------------------------------------------------------

    def allocate(self, range_set: RangeSet, exclude: Sequence[IPNetwork], owner: Owner,
                 requested: Optional[IPAddress] = None, requested_from: str = "") -> Lease:
        space = Space(range_set, exclude)
        pools = _unique([self.pool_for(r) for r in range_set.ranges])
        with self._node_lock():
            return self._retrying(f"allocate in pool {space.name}",
                                  lambda: self._allocate_once(space, pools, owner, requested, requested_from))

    def _allocate_once(self, space: Space, pools: list[Pool], owner: Owner, requested: Optional[IPAddress],
                       requested_from: str) -> Lease:
        mine = self.node_blocks(pools)
        held = self._held_lease(space, mine, owner, requested, requested_from)
        if held is not None:
            return held
        if requested is not None:
            return self._take_requested(space, pools, owner, requested, requested_from)
        usable = [p for p in pools if not self._why_unusable(p)]
        if not usable:
            raise CNIError(IPAM_EXHAUSTED, f"no pool of {space.name} hands out addresses on node {self.node}: "
                           + "; ".join(self._why_unusable(p) for p in pools),
                           (f"field: {space.range_set.path}; " if space.range_set.path else "")
                           + "allowed: enable the IPPool or label the node to match its nodeSelector")
        names = {p.name for p in usable}
        for b in mine:  # 1. our own blocks: the hot path, one write
            if b.node == self.node and b.pool in names:
                v = free_in(space, *b.span(), b.used(), address_int(b.last) if b.last else None)
                if v is not None:
                    return self._write(b, int_to_address(v, space.family), owner, cursor=True)
        if self._cached() is not None:
            lease = self._probe(space, usable, mine, owner)   # 2a. a block nobody has, without a LIST
            if lease is not None:
                return lease
        everything = self.pool_blocks(usable)
        self._raced = False
        lease = self._claim(space, usable, everything, owner)  # 2. a block nobody has
        if lease is None:
            lease = self._take_over(space, names, everything, owner)  # 3. an empty block of another node
        if lease is None:
            lease = self._borrow(space, names, everything, owner)  # 4. one address of another node's block
        if lease is None:
            used: set[int] = set().union(*(b.used() for b in everything)) if everything else set()
            if self._raced:
                # a block with room changed under us (its node wrote, or GC released it): look again
                raise _Again("the pool's blocks changed while looking for a free address")
            raise space.exhausted(space.count_leased(used), owner.network)
        return lease

    def _held_lease(self, space: Space, blocks: list[Block], owner: Owner, requested: Optional[IPAddress],
                    requested_from: str) -> Optional[Lease]:
        """The owner's lease in this range set (idempotent ADD); stale ones of the family are released."""
        subnets = space.range_set.subnets
        for b in blocks:
            for addr, a in list(b.allocations.items()):
                if not a.held_by(owner) or b.cidr.version != space.family:
                    continue
                ip = ipaddress.ip_address(addr)
                if b.pool_cidr in subnets and space.contains(ip):
                    if requested is not None and requested != ip:
                        raise CNIError(ADDRESS_UNAVAILABLE,
                                       f"requested address {requested} is unavailable: {owner.describe()} already "
                                       f"holds {ip} in pool {space.name}",
                                       (f"field: {requested_from}; " if requested_from else "")
                                       + f"allowed: {ip}, or DEL the attachment first")
                    return b.lease(addr)
                self.log.warning("releasing a lease outside the current ranges", pool=b.pool_cidr, address=addr,
                                  network=owner.network)
                del b.allocations[addr]
                self._replace(b)
                raise _Again("released a stale lease")
        return None

    def _take_requested(self, space: Space, pools: list[Pool], owner: Owner, ip: IPAddress, where: str) -> Lease:
        from ...k8s.errors import NotFound

        space.check_requested(ip, where)
        r = space.range_set.range_for(ip)
        assert r is not None
        pool = next(p for p in pools if p.cidr == r.subnet)
        why = self._why_unusable(pool)
        if why:
            raise CNIError(ADDRESS_UNAVAILABLE, f"requested address {ip} is unavailable: {why}",
                           (f"field: {where}; " if where else "") + "allowed: an address of a usable IPPool")
        cidr = pool.block_of(ip)
        cache = self._cached()
        block = cache.block(block_name(cidr)) if cache is not None else None
        try:
            if block is None:
                block = Block.from_object(self.client.get_object(GROUP, VERSION, BLOCKS, block_name(cidr)))
        except NotFound:
            block, cidr = self._block_for_address(pool, ip)
        if block is None:
            block = Block(cidr, pool.name, str(pool.cidr), self.node)
            mine = self._create_with(block, ip, owner)
            if mine is None:
                raise _Again(f"block {block.name} was claimed meanwhile")
            return mine
        holder = block.allocations.get(str(ip))
        if holder is not None:   # never say who: the holder may be another tenant's pod
            raise CNIError(ADDRESS_UNAVAILABLE,
                           f"requested address {ip} is unavailable: in use by another attachment",
                           (f"field: {where}; " if where else "") + f"allowed: a free address in {space.name}")
        lease = self._write(block, ip, owner)
        if block.node != self.node:
            self.stats["borrows"] += 1
        return lease

    def _block_for_address(self, pool: Pool, ip: IPAddress) -> tuple[Optional[Block], IPNetwork]:
        """The existing block holding `ip` (when the pool's blockSize changed, one of another size
        may), else the largest new block around `ip` that overlaps none."""
        blocks = self.pool_blocks([pool])
        holder = next((b for b in blocks if ip in b.cidr), None)
        if holder is not None:
            return holder, holder.cidr
        for plen in range(pool.block_prefix, pool.cidr.max_prefixlen + 1):
            cidr = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
            if not any(b.cidr.overlaps(cidr) for b in blocks):
                return None, cidr
        raise AssertionError("unreachable: a single address outside every block overlaps none")

    def _claim(self, space: Space, pools: list[Pool], everything: list[Block], owner: Owner) -> Optional[Lease]:
        """Create a block nobody has, with the allocation in it (the create is the atomic claim)."""
        taken = [b.span() for b in everything]
        for pool in pools:
            free = list(islice(candidate_blocks(pool, space, taken), CANDIDATES))
            if not free:
                continue
            start = _spread(self.node, len(free))
            for cidr in free[start:] + free[:start]:
                block = Block(cidr, pool.name, str(pool.cidr), self.node)
                v = free_in(space, *block.span(), set())
                assert v is not None
                ip = int_to_address(v, space.family)
                block.last = str(ip)
                mine = self._create_with(block, ip, owner)
                if mine is None:
                    self.stats["claims_lost"] += 1
                    self.log.info("block claimed by another node, trying the next", block=block.name)
                    continue
                self.log.info("claimed block", block=block.name, node=self.node, pool=pool.name)
                return mine
            raise _Again(f"every free block of pool {pool.name} was claimed meanwhile")
        return None

    def _probe(self, space: Space, pools: list[Pool], mine: list[Block], owner: Owner) -> Optional[Lease]:
        """Claim a block without LISTing the pool (daemon mode): create blocks in the order of
        blocks.probe_blocks (spread by this node's name), skipping the blocks known to exist. None
        when `PROBES` creates were lost or the pool may hold blocks of another size: the caller
        LISTs the pool then (claim, take over, borrow as without a cache)."""
        cache = self.cache
        known = {b.name for b in mine} | cache.known_taken()
        rank = cache.rank()
        lost = 0
        for pool in pools:
            if not cache.uniform(self.client, pool):
                continue
            for cidr in probe_blocks(pool, space, self.node, rank):
                if lost >= PROBES:
                    cache.count(Counter(claim_lists=1))
                    return None
                block = Block(cidr, pool.name, str(pool.cidr), self.node)
                if block.name in known:
                    continue
                v = free_in(space, *block.span(), set())
                if v is None:
                    continue
                ip = int_to_address(v, space.family)
                block.last = str(ip)
                lease = self._create_with(block, ip, owner)
                if lease is not None:
                    self.log.info("claimed block", block=block.name, node=self.node, pool=pool.name, lost=lost)
                    return lease
                lost += 1
                known.add(block.name)
                self.stats["claims_lost"] += 1
                self.log.info("block claimed by another node, probing on", block=block.name, lost=lost)
        cache.count(Counter(claim_lists=1))
        return None

    def _create_with(self, block: Block, ip: IPAddress, owner: Owner) -> Optional[Lease]:
        """Create the new `block` with `owner`'s allocation of `ip` in it (the create is the claim):
        the lease, or None when another node created the block first."""
        from ...k8s.errors import AlreadyExists

        block.allocations[str(ip)] = Allocation.for_owner(owner, self.node, self.clock())
        retries = self.client.stats["retries"] if self._cache_ready else None
        try:
            self._create(block)
        except AlreadyExists:
            if retries is not None and self.client.stats["retries"] == retries:
                return None     # the create was sent once: the block is another node's (no GET)
            return self._landed(block, owner)
        self.stats["claims"] += 1
        return block.lease(str(ip), fresh=True)

    def _landed(self, block: Block, owner: Owner) -> Optional[Lease]:
        """After AlreadyExists: our own create, retried by the client after a lost answer, is the
        block that exists. Then the claim is ours; else another node won."""
        from ...k8s.errors import NotFound

        try:
            there = Block.from_object(self.client.get_object(GROUP, VERSION, BLOCKS, block.name))
        except NotFound:
            return None
        for addr, a in there.allocations.items():
            if a.held_by(owner) and there.node == self.node:
                self.stats["claims"] += 1
                return there.lease(addr, fresh=True)
        return None

    def _take_over(self, space: Space, names: set[str], everything: list[Block], owner: Owner) -> Optional[Lease]:
        """The pool runs short: an empty block affine to another node becomes ours (one write, with
        its resourceVersion: if its node allocated meanwhile, the write conflicts and we move on)."""
        from ...k8s.errors import Conflict, NotFound

        for b in everything:
            if b.pool not in names or b.node == self.node or b.allocations:
                continue
            v = free_in(space, *b.span(), set())
            if v is None:
                continue
            previous, b = b.node, copy.deepcopy(b)
            b.node = self.node
            try:
                lease = self._write(b, int_to_address(v, space.family), owner, cursor=True)
            except (Conflict, NotFound):
                self.stats["conflicts"] += 1
                self._raced = True
                continue
            self.stats["takeovers"] += 1
            self.log.info("took over an empty block", block=b.name, node=self.node, previous=previous)
            return lease
        return None

    def _borrow(self, space: Space, names: set[str], everything: list[Block], owner: Owner) -> Optional[Lease]:
        from ...k8s.errors import Conflict, NotFound

        for b in everything:
            if b.pool not in names or b.node == self.node:
                continue
            v = free_in(space, *b.span(), b.used())
            if v is None:
                continue
            try:
                lease = self._write(copy.deepcopy(b), int_to_address(v, space.family), owner)
            except (Conflict, NotFound):
                self.stats["conflicts"] += 1
                self._raced = True
                continue
            self.stats["borrows"] += 1
            self.log.info("borrowed an address", block=b.name, address=str(lease.address), node=self.node,
                           affine=b.node)
            return lease
        return None

    def release(self, owner: Owner) -> list[Lease]:
        with self._node_lock():
            return self._retrying(f"release {owner.describe()}",
                                  lambda: self._remove(lambda addr, a: a.held_by(owner)))

    def release_lease(self, lease: Lease) -> None:
        addr = str(lease.address)
        with self._node_lock():
            self._retrying(f"release {addr}",
                           lambda: self._remove(lambda a_addr, a: a_addr == addr and a.held_by(lease.owner)))

    def gc(self, network: str, keep: Keep) -> list[Lease]:
        """CNI GC on this node: this node's leases of exactly `network` that `keep` does not keep."""
        keep = as_keep(keep)
        with self._node_lock():
            return self._retrying(f"gc of network {network}", lambda: self._remove(
                lambda addr, a: a.network == network and a.node == self.node
                and not keep.keeps(a.container_id, a.ifname)))

    def release_container(self, container_id: str) -> list[Lease]:
        """This node's leases of a container, whatever network (a DEL without its cache entry)."""
        with self._node_lock():
            return self._retrying(f"release container {container_id}", lambda: self._remove(
                lambda addr, a: a.container_id == container_id and a.node == self.node))

    def _remove(self, drop: Callable[[str, Allocation], bool]) -> list[Lease]:
        gone: list[Lease] = []
        for b in self.node_blocks():
            hit = [addr for addr, a in b.allocations.items() if drop(addr, a)]
            if not hit:
                continue
            leases = [b.lease(addr) for addr in hit]
            for addr in hit:
                del b.allocations[addr]
            self._replace(b)
            gone += leases
        return gone

    def leases(self, network: Optional[str] = None, owner: Optional[Owner] = None) -> list[Lease]:
        blocks = self.node_blocks() if owner is not None else self.all_blocks()
        out = [b.lease(addr) for b in blocks for addr, a in b.allocations.items()
               if (owner is None or a.held_by(owner)) and (network is None or a.network == network)]
        return sorted(out, key=lambda lease: (lease.address.version, lease.pool, int(lease.address)))

    def usage(self, range_set: RangeSet, exclude: Sequence[IPNetwork]) -> PoolUsage:
        space = Space(range_set, exclude)
        pools = _unique([self.pool_for(r) for r in range_set.ranges])
        blocks = self.pool_blocks(pools)
        used = set().union(*(b.used() for b in blocks)) if blocks else set()
        return PoolUsage(pool=space.name, family=space.family, size=space.size(), leased=space.count_leased(used))

    def pools(self) -> list[PoolUsage]:
        """Every IPPool with its leases (size: the pool's addresses less network and broadcast)."""
        blocks = self.all_blocks()
        out = []
        for p in sorted(self.list_pools(), key=lambda p: (p.family, int(p.cidr.network_address))):
            mine = [b.lease(a) for b in blocks if b.pool == p.name for a in b.allocations]
            out.append(PoolUsage(pool=str(p.cidr), family=p.family, size=pool_size(p.cidr), leased=len(mine),
                                 leases=tuple(sorted(mine, key=lambda lease: int(lease.address)))))
        return out

    # --- writes, retries, the node lock ---------------------------------------------------

    def _write(self, block: Block, ip: IPAddress, owner: Owner, cursor: bool = False) -> Lease:
        block.allocations[str(ip)] = Allocation.for_owner(owner, self.node, self.clock())
        if cursor:
            block.last = str(ip)
        self._replace(block)
        return block.lease(str(ip), fresh=True)

    def _replace(self, block: Block) -> None:
        """Write the block with the resourceVersion it was read at: Conflict (409) if it changed.
        With a cache: the answer is the block's newest state; a 409 refreshes it (one GET), a 404
        hides it, and the error goes up to the retry loop."""
        from ...k8s.errors import Conflict, NotFound

        try:
            obj = self.client.replace_object(GROUP, VERSION, BLOCKS, block.name, block.to_object())
        except Conflict:
            if self._cache_ready:
                self.cache.refresh(self.client, block.name)
            raise
        except NotFound:
            if self._cache_ready:
                self.cache.gone(block.name)
            raise
        block.resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if self._cache_ready:
            self.cache.wrote(obj)

    def _create(self, block: Block) -> None:
        from ...k8s.errors import AlreadyExists

        block.resource_version = ""
        try:
            obj = self.client.create_object(GROUP, VERSION, BLOCKS, block.to_object())
        except AlreadyExists:
            if self._cache_ready:
                self.cache.taken(block.name)
            raise
        block.resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if self._cache_ready:
            self.cache.wrote(obj)

    def _retrying(self, what: str, step: Callable[[], object]):
        """Run `step` until no block changed under it: 409s re-read, with jittered backoff, bounded."""
        from ...k8s.errors import Conflict, NotFound

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                delay = min(self.max_backoff, self.backoff * (2 ** (attempt - 1))) * random.uniform(0.5, 1.5)
                self.sleep(delay)
            try:
                return step()
            except Conflict as e:
                self.stats["conflicts"] += 1
                last = e.msg
            except NotFound as e:   # a block we read was released (GC) before our write
                last = e.msg
            except _Again as e:
                last = e.what
            self.log.info("IPAM block changed under us, retrying", what=what, attempt=attempt + 1, reason=last)
        raise CNIError(TRY_AGAIN_LATER, f"IPAM: could not {what}: the blocks kept changing "
                       f"({self.retries + 1} attempts)",
                       f"node: {self.node}; last: {last}; allowed: try again later")

    @contextlib.contextmanager
    def _node_lock(self) -> Iterator[None]:
        """Serialize this node's CNI calls (a file lock in dataDir); correctness never depends on
        it, it only spares the API the conflicts of concurrent ADDs on one node."""
        if not self.lock_dir:
            yield
            return
        path = os.path.join(self.lock_dir, f"kube-{label_value(self.node)}.lock")
        try:
            os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            self.log.warning("no node lock; going on without it", path=path, error=str(e))
            yield
            return
        try:
            started = time.monotonic()
            if not files.lock(fd, started + self.lock_timeout):
                self.log.warning("node lock held too long; going on without it", path=path,
                                 waited=files.waited(started))
            yield
        finally:
            os.close(fd)   # closing the descriptor drops the lock


def _pool_selector(pools: Sequence[Pool]) -> str:
    if not pools:
        return ""
    values = sorted({label_value(p.name) for p in pools})
    if len(values) == 1:
        return f"{POOL_LABEL}={values[0]},"
    return f"{POOL_LABEL} in ({','.join(values)}),"


def _unique(pools: list[Pool]) -> list[Pool]:
    out: list[Pool] = []
    for p in pools:
        if p not in out:
            out.append(p)
    return out


def _spread(node: str, n: int) -> int:
    """Where a node starts among `n` free blocks: nodes claiming at once mostly pick different ones."""
    return int(hashlib.sha256(node.encode()).hexdigest()[:8], 16) % n if n else 0
