"""This node's IPPools and IPBlocks from the node daemon's watches: the kubernetes store's hot
path reads nothing from the API.

The daemon watches two kinds (multiplex/k8s/objects.py): "ippools" (every pool) and "ipblocks"
(only the blocks with this node's stake label, `node.ipam.multiplex.dev/<node>`: its own blocks
and those it borrowed from). An `IPAMCache` serves the store (multiplex/ipam/kube/store.py) from
those informers, plus **what this node wrote itself**:

- An informer lags its writes by a watch event. The store hands out the next address of a block
  right after writing it, so the answer of every write of ours (its new resourceVersion) is kept
  as the block's newest state (`wrote`) until the informer delivers an event of that very
  resourceVersion (or the block's deletion). Nothing compares resourceVersions (they are
  opaque): a watch delivers one object's events in order, so any event after ours is newer.
- A 409 means the cached block is stale (another node borrowed from it, GC handed it over, the
  watch is behind): `refresh` GETs it and keeps that as the newest state, and the store retries.
  A 404 means GC deleted it: `gone` hides it until the informer drops it.
- Blocks known to exist that are not ours (AlreadyExists answers of claims) are remembered by name,
  so the next claim does not ask for them again.
- The cache serves nothing before both informers read their first list (`ready`): a call that
  comes first waits up to `sync_timeout`, then reads the API as the one-shot path does. Warm-up
  also asks, once per pool, whether the pool holds blocks of another size than its blockSize
  (`uniform`: a claim that probes must not overlap one); a pool that changes is asked again at
  its next claim.

Correctness never rests on the cache: every write carries the resourceVersion it was read at,
so a stale read costs one 409 and one GET, never a duplicate address. Counters in `stats`: hits
(calls served from the cache), misses (not synced: read the API), wrote, refreshes, gone,
claims, claims_lost (AlreadyExists answers), claim_lists (claims that had to LIST the pool).

Thread-safe: the daemon serves calls of one node at once (the store's node lock serializes the
calls of one node; the informer thread delivers events meanwhile).
"""
from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from ...util import log as _log
from .model import BLOCKS, GROUP, POOL_LABEL, SIZE_LABEL, VERSION, Block, Pool, label_value, user_label

#: the daemon's informer kinds (multiplex/k8s/objects.py); helper R's routes read "ipblocks" too
POOLS_KIND = "ippools"
BLOCKS_KIND = "ipblocks"
NODES_KIND = "nodes"


def stake_selector(node: str) -> str:
    """The label selector of the blocks `node` has a stake in (the "ipblocks" informer's): its
    stake label exists, whether `affine` or `borrowed`."""
    return user_label(node)


def _name(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _rv(obj: Optional[dict]) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


def _uid(obj: Optional[dict]) -> str:
    return str(((obj or {}).get("metadata") or {}).get("uid") or "")


#: a tombstone in the overlay: the block is gone (404 on our write) until the informer agrees
_GONE: dict = {}


class IPAMCache:
    """Pools and this node's blocks from `objects` (an ObjectSource: KubeObjects in the daemon,
    one per simulated node in tests/perf) for node `node`, plus this node's own writes."""

    def __init__(self, objects: Any, node: str, client: Any = None, log: Optional[_log.Logger] = None,
                 sync_timeout: float = 10.0):
        self.objects = objects
        self.node = node
        #: the client writes go out with (the daemon's: services hand out one per kubeconfig file)
        self.client = client
        self.log = log or _log.get()
        self.sync_timeout = float(sync_timeout)
        self.stats: Counter = Counter()
        self._label = user_label(node)
        self._lock = threading.Lock()
        self._overlay: dict[str, dict] = {}        # name -> our newest object, or _GONE
        self._taken: set[str] = set()               # blocks of others known to exist (claims)
        self._uniform: dict[tuple[str, int], bool] = {}   # (pool, blockSize) -> no block of another size
        self._pools: dict[str, tuple[str, Optional[Pool]]] = {}   # name -> (rv, parsed)
        self._pools_inf = None
        self._blocks_inf = None
        self._started = False
        self._checked = False
        self._start_lock = threading.Lock()

    # --- the informers ------------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            self._pools_inf = self.objects.informer(POOLS_KIND)
            self._blocks_inf = self.objects.informer(BLOCKS_KIND)
            self._blocks_inf.add_handler(self._on_block)
            self._started = True

    def ready(self, timeout: Optional[float] = None) -> bool:
        """Both informers have listed once (waiting up to `timeout`, default `sync_timeout`)."""
        self._start()
        wait = self.sync_timeout if timeout is None else timeout
        end = time.monotonic() + max(0.0, wait)
        for inf in (self._pools_inf, self._blocks_inf):
            if not inf.wait_synced(max(0.0, end - time.monotonic())):
                return False
        if not self._checked:
            self._check_pools()
        return True

    def _check_pools(self) -> None:
        """Warm-up, once: is every pool's block of its blockSize (`uniform`)? Asked here, beside
        the informers' first lists, so a node's first claim costs its create alone."""
        client = self.client or getattr(self.objects, "client", None)
        with self._start_lock:
            if self._checked or client is None:
                return
            self._checked = True
        from ...k8s.errors import KubeError

        for pool in self.pools():
            try:
                self.uniform(client, pool)
            except KubeError as e:   # asked again at the pool's first claim
                self.log.info("cannot check the pool's block sizes yet", pool=pool.name, error=e.msg)

    def _on_block(self, etype: str, obj: dict) -> None:
        """The informer caught up with our write (the same resourceVersion), or the block is
        deleted (or left our selector): our overlay entry is no longer the newest state."""
        name = _name(obj)
        with self._lock:
            mine = self._overlay.get(name)
            if mine is None:
                return
            if etype == "DELETED":
                if mine is _GONE or not _uid(mine) or _uid(mine) == _uid(obj):
                    del self._overlay[name]
            elif mine is not _GONE and _rv(mine) == _rv(obj):
                del self._overlay[name]

    # --- reads --------------------------------------------------------------------------------
    def pools(self) -> list[Pool]:
        """Every well-formed IPPool (parsed once per resourceVersion); malformed ones are logged."""
        out = []
        seen = set()
        for obj in self._pools_inf.list():
            name, rv = _name(obj), _rv(obj)
            seen.add(name)
            with self._lock:
                hit = self._pools.get(name)
            if hit is None or hit[0] != rv or not rv:
                try:
                    parsed: Optional[Pool] = Pool.from_object(obj)
                except ValueError as e:
                    self.log.warning("ignoring a malformed IPPool", error=str(e))
                    parsed = None
                hit = (rv, parsed)
                with self._lock:
                    self._pools[name] = hit
            if hit[1] is not None:
                out.append(hit[1])
        with self._lock:
            for name in [n for n in self._pools if n not in seen]:
                del self._pools[name]
        return sorted(out, key=lambda p: p.name)

    def block_objects(self) -> list[dict]:
        """This node's blocks as objects: the informer's, with our newer writes laid over them;
        only those that carry our stake label (a block handed away drops out)."""
        by_name = {_name(o): o for o in self._blocks_inf.list()}
        with self._lock:
            for name, obj in self._overlay.items():
                if obj is _GONE:
                    by_name.pop(name, None)
                else:
                    by_name[name] = obj
        return [o for o in by_name.values() if self._label in ((o.get("metadata") or {}).get("labels") or {})]

    def node_blocks(self, log: Optional[_log.Logger] = None) -> list[Block]:
        """This node's blocks, fresh objects the store may change (sorted by family and address)."""
        out = []
        for obj in self.block_objects():
            try:
                out.append(Block.from_object(obj))
            except (ValueError, TypeError, AttributeError) as e:
                (log or self.log).warning("ignoring a malformed IPBlock", block=_name(obj), error=str(e))
        return sorted(out, key=lambda b: (b.cidr.version, int(b.cidr.network_address)))

    def block(self, name: str) -> Optional[Block]:
        """One of this node's blocks by name, or None when the cache does not hold it."""
        for obj in self.block_objects():
            if _name(obj) == name:
                return Block.from_object(obj)
        return None

    def node_labels(self) -> tuple[bool, Optional[dict]]:
        """(known, labels): this node's labels from the daemon's nodes informer when it runs and
        is synced (labels None: no such Node); (False, None) when the cache cannot say."""
        started = getattr(self.objects, "started", None)
        inf = (started() if callable(started) else {}).get(NODES_KIND)
        if inf is None or not inf.synced():
            return False, None
        node = inf.get(None, self.node)
        return True, (dict((node.get("metadata") or {}).get("labels") or {}) if node is not None else None)

    def uniform(self, client: Any, pool: Pool) -> bool:
        """Every block of `pool` has its blockSize, so a probe cannot overlap one of another size:
        one LIST per pool of the blocks not labelled with that size (nearly always none; blocks
        written before the label are checked by their CIDR). Remembered while the pool's
        blockSize stays; a pool that is not uniform is asked again at its next claim."""
        key = (pool.name, pool.block_prefix)
        with self._lock:
            if self._uniform.get(key):
                return True
        selector = f"{POOL_LABEL}={label_value(pool.name)},{SIZE_LABEL}!={pool.block_prefix}"
        odd = [o for o in client.list_objects(GROUP, VERSION, BLOCKS, label_selector=selector)
               if not str((o.get("spec") or {}).get("cidr", "")).endswith(f"/{pool.block_prefix}")]
        with self._lock:
            self.stats["uniform_checks"] += 1
            self._uniform[key] = not odd
        if odd:
            self.log.info("pool has blocks of another size; claims LIST it", pool=pool.name, blocks=len(odd))
        return not odd

    def count(self, stats: Counter) -> None:
        """Add one store's counters (a call's) to the running totals."""
        with self._lock:
            self.stats.update(stats)

    def rank(self) -> Optional[tuple[int, int]]:
        """(i, m): this node is the i-th of the m Nodes by name, from the daemon's nodes informer
        when it runs and is synced (the node registry and the IPAM GC watch nodes anyway; the cache
        does not start it); None otherwise. It spreads claims (blocks.probe_blocks)."""
        started = getattr(self.objects, "started", None)
        inf = (started() if callable(started) else {}).get(NODES_KIND)
        if inf is None or not inf.synced():
            return None
        names = sorted(_name(o) for o in inf.list())
        try:
            return names.index(self.node), len(names)
        except ValueError:
            return None

    def known_taken(self) -> set[str]:
        with self._lock:
            return set(self._taken)

    # --- what this node learnt by writing -----------------------------------------------------
    def wrote(self, obj: dict) -> None:
        """The API's answer to our create or replace: the block's newest state, unless the
        informer already delivered that very version (its event can beat our answer)."""
        name = _name(obj)
        with self._lock:
            self._taken.discard(name)
            seen = self._blocks_inf.get(None, name) if self._blocks_inf is not None else None
            if seen is not None and _rv(seen) == _rv(obj):
                self._overlay.pop(name, None)
            else:
                self._overlay[name] = copy.deepcopy(obj)
        self.count(Counter(wrote=1))

    def gone(self, name: str) -> None:
        """Our write answered 404: the block was deleted (GC)."""
        with self._lock:
            self._overlay[name] = _GONE
        self.count(Counter(gone=1))

    def taken(self, name: str) -> None:
        """A claim of `name` answered AlreadyExists: another node holds it."""
        with self._lock:
            self._taken.add(name)

    def refresh(self, client: Any, name: str) -> None:
        """After a 409: the block as the API has it now (or gone) is the newest state."""
        from ...k8s.errors import NotFound

        self.count(Counter(refreshes=1))
        try:
            obj = client.get_object(GROUP, VERSION, BLOCKS, name)
        except NotFound:
            self.gone(name)
            return
        with self._lock:
            seen = self._blocks_inf.get(None, name) if self._blocks_inf is not None else None
            if seen is not None and _rv(seen) == _rv(obj):
                self._overlay.pop(name, None)
            else:
                self._overlay[name] = obj

    def overlay_size(self) -> int:
        with self._lock:
            return len(self._overlay)



# --- how a CNI call's store finds the daemon's cache --------------------------------------------

@dataclass(frozen=True)
class Lent:
    """What the daemon lends a call's kubernetes store: its cache and a warm client for the call's
    own kubeconfig (writes go out with the call's credentials, as on the one-shot path)."""
    cache: IPAMCache
    client: Any


def lent(kubeconfig: Optional[str], node: str, services: Any = None) -> Optional[Lent]:
    """The cache for a store of `node` on `kubeconfig`: what the call's `services` (the node
    daemon's, req.ctx.services) lend, else None (the one-shot path)."""
    ask = getattr(services, "ipam_cache", None) if services is not None else None
    return ask(kubeconfig, node) if callable(ask) else None
