"""Block arithmetic: carving an IPPool into blocks, and finding addresses in a block.

Addresses are integers here; a `Space` (multiplex.ipam.allocator) says which of them the range
set may hand out (ranges less reserved and excluded addresses). Pure functions, no API access.
"""
from __future__ import annotations

import bisect
import hashlib
import ipaddress
import math
from typing import Iterator, Optional, Sequence

from ...cni.types import IPNetwork
from ..allocator import Space, address as int_to_address
from .model import Pool


def _spans(space: Space, lo: int, hi: int) -> list[tuple[int, int]]:
    """The allocatable parts of [lo, hi], in address order."""
    out = []
    for iv in sorted(space.intervals, key=lambda i: i.lo):
        a, b = max(iv.lo, lo), min(iv.hi, hi)
        if a <= b:
            out.append((a, b))
    return out


def free_in(space: Space, lo: int, hi: int, used: set[int], after: Optional[int] = None) -> Optional[int]:
    """The first allocatable address of [lo, hi] not in `used`, after `after` (wrapping)."""
    spans = _spans(space, lo, hi)
    if after is not None:
        spans = [(max(a, after + 1), b) for a, b in spans if b > after] + \
                [(a, min(b, after)) for a, b in spans if a <= after]
    for a, b in spans:
        v = a
        while v <= b:
            if v not in used:
                return v
            v += 1
    return None


def candidate_blocks(pool: Pool, space: Space, taken: Sequence[tuple[int, int]]) -> Iterator[IPNetwork]:
    """Blocks of the pool that overlap no existing block (`taken`: their spans, which may be of
    another size if the pool's blockSize changed) and hold an allocatable address, in order."""
    size = 2 ** (pool.cidr.max_prefixlen - pool.block_prefix)
    base, top = int(pool.cidr.network_address), int(pool.cidr.broadcast_address)
    spans = sorted(taken)
    starts = [lo for lo, _ in spans]
    seen: set[int] = set()
    for lo, hi in _spans(space, base, top):
        b = base + (lo - base) // size * size
        while b <= hi:
            end = b + size - 1
            # blocks are disjoint: only the last one starting at or before `end` can reach `b`
            k = bisect.bisect_right(starts, end) - 1
            clash = spans[k] if k >= 0 and spans[k][1] >= b else None
            if clash is None and b not in seen:
                seen.add(b)
                yield ipaddress.ip_network(f"{int_to_address(b, pool.family)}/{pool.block_prefix}")
                b += size
            elif clash is not None:
                b = base + (clash[1] + 1 - base + size - 1) // size * size   # the first block after it
            else:
                b += size


#: positions a probe sequence visits at most (skipping known or unallocatable blocks is free)
PROBE_SPAN = 65536


def probe_blocks(pool: Pool, space: Space, node: str, rank: Optional[tuple[int, int]] = None) -> Iterator[IPNetwork]:
    """The blocks of `pool` a node claims in, in the order it tries them without knowing which
    exist (the daemon's claims, multiplex/ipam/kube/store.py): over the blocks spanning the
    space's allocatable addresses, from a start position, stepping by a stride of the node's own
    (from a hash of its name, coprime to the number of blocks, so the walk visits each block once).

    The start: with `rank` (i, m), the node is the i-th of m cluster nodes by name (the daemon's
    nodes informer), and starts at i/m of the way through the pool, so the nodes of a cluster that
    boots at once start evenly apart and do not collide at all while their views agree; without
    it, at a position from a hash of the pool and node names (random positions collide about
    N²/2B times for N nodes among B blocks). Two that do collide part at the next step (their
    strides differ). Unallocatable blocks are yielded too; the caller skips them (free_in)."""
    size = 2 ** (pool.cidr.max_prefixlen - pool.block_prefix)
    base, top = int(pool.cidr.network_address), int(pool.cidr.broadcast_address)
    spans = _spans(space, base, top)
    if not spans:
        return
    first = (min(a for a, _ in spans) - base) // size
    last = (max(b for _, b in spans) - base) // size
    n = last - first + 1
    digest = hashlib.sha256(f"{pool.name}/{node}".encode()).digest()
    if rank is not None and rank[1] > 0 and 0 <= rank[0] < rank[1]:
        start = rank[0] * n // rank[1]
    else:
        start = int.from_bytes(digest[:8], "big") % n
    stride = int.from_bytes(digest[8:16], "big") % n or 1
    while math.gcd(stride, n) != 1:
        stride += 1
    for k in range(min(n, PROBE_SPAN)):
        b = base + (first + (start + k * stride) % n) * size
        yield ipaddress.ip_network(f"{int_to_address(b, pool.family)}/{pool.block_prefix}")


def pool_size(cidr: IPNetwork) -> int:
    """Addresses of a CIDR less the network address (and the IPv4 broadcast)."""
    n = cidr.num_addresses
    return max(n - (2 if cidr.version == 4 else 1), 0) if cidr.prefixlen < cidr.max_prefixlen - 1 else n
