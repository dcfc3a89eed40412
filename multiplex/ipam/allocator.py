"""Which addresses of a range set may be handed out, and which one comes next.

Pure logic, no storage: every store (SQLite on the node, Kubernetes custom resources) builds a
Space for the range set it is asked about, reads the leased addresses of the set's subnets, and
lets the Space pick. Addresses are handled as integers.

Order: like host-local, the address after the last one handed out in the range set (the store's
cursor), walking the ranges of the set in order and wrapping around; the first address of the
first range when there is no cursor yet. Reserved addresses (network, IPv4 broadcast, gateways,
`exclude`) are cut out of the space up front, so an excluded /64 costs one step, not 2**64.
"""
from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from ..cni.errors import CNIError, ADDRESS_UNAVAILABLE, IPAM_EXHAUSTED
from ..cni.types import IPAddress, IPNetwork
from .config import Range, RangeSet


@dataclass(frozen=True)
class Interval:
    lo: int
    hi: int
    range: Range
    range_index: int


class Space:
    """The allocatable addresses of one range set, minus exclusions."""

    def __init__(self, range_set: RangeSet, exclude: Sequence[IPNetwork] = ()):
        self.range_set = range_set
        self.exclude = [n for n in exclude if n.version == range_set.family]
        self.intervals: list[Interval] = []
        gateways = {int(g) for g in range_set.gateways}
        for ri, r in enumerate(range_set.ranges):
            cuts = [(int(r.subnet.network_address), int(r.subnet.network_address))]
            if r.family == 4:
                b = int(r.subnet.broadcast_address)
                cuts.append((b, b))
            cuts += [(g, g) for g in gateways]
            cuts += [(int(n.network_address), int(n.broadcast_address)) for n in self.exclude]
            for lo, hi in _subtract((int(r.start), int(r.end)), cuts):
                self.intervals.append(Interval(lo, hi, r, ri))
        self._sorted = sorted(self.intervals, key=lambda i: i.lo)
        self._los = [i.lo for i in self._sorted]

    @property
    def family(self) -> int:
        return self.range_set.family

    @property
    def name(self) -> str:
        return self.range_set.name

    def size(self) -> int:
        return sum(i.hi - i.lo + 1 for i in self.intervals)

    def interval_of(self, value: int) -> Optional[Interval]:
        n = bisect.bisect_right(self._los, value) - 1
        if n >= 0 and self._sorted[n].lo <= value <= self._sorted[n].hi:
            return self._sorted[n]
        return None

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.family and self.interval_of(int(ip)) is not None

    def count_leased(self, leased: Iterable[int]) -> int:
        """How many of the leased addresses (of the set's subnets) fall inside this space."""
        return sum(1 for v in leased if self.interval_of(v) is not None)

    def why_not(self, ip: IPAddress) -> str:
        """Empty when `ip` may be handed out from this set; else why it may not."""
        if ip.version != self.family:
            return f"{ip} is IPv{ip.version} but pool {self.name} is IPv{self.family}"
        sub = self.range_set.subnet_range_for(ip)
        if sub is not None and ip == sub.subnet.network_address:
            return f"{ip} is the network address of {sub.subnet}"
        if sub is not None and sub.family == 4 and ip == sub.subnet.broadcast_address:
            return f"{ip} is the broadcast address of {sub.subnet}"
        if self.range_set.range_for(ip) is None:
            return f"{ip} is outside pool {self.name}"
        if ip in self.range_set.gateways:
            return f"{ip} is the gateway of pool {self.name}"
        for n in self.exclude:
            if ip in n:
                return f"{ip} is excluded by {n}"
        return "" if self.contains(ip) else f"{ip} is not allocatable in pool {self.name}"

    def next_free(self, leased: set[int], after: Optional[int] = None) -> Optional[int]:
        """The first address not in `leased`, walking from the one after `after` (wrapping)."""
        if not self.intervals:
            return None
        for lo, hi in self._walk(after):
            v = lo
            while v <= hi:
                if v not in leased:
                    return v
                v += 1
        return None

    def _walk(self, after: Optional[int]) -> list[tuple[int, int]]:
        """The intervals in allocation order, starting right after `after` and wrapping."""
        ivs = self.intervals
        start_idx, start_at = 0, ivs[0].lo
        if after is not None:
            found = self._position_after(after)
            if found is not None:
                start_idx, start_at = found
        first = ivs[start_idx]
        walk = [(start_at, first.hi)]
        walk += [(i.lo, i.hi) for i in ivs[start_idx + 1:]] + [(i.lo, i.hi) for i in ivs[:start_idx]]
        if start_at > first.lo:
            walk.append((first.lo, start_at - 1))
        return walk

    def _position_after(self, after: int) -> Optional[tuple[int, int]]:
        """(interval index, first address) of the walk's start; None to start at the beginning."""
        ivs = self.intervals
        for n, iv in enumerate(ivs):  # the cursor sits inside an interval, before its end
            if iv.lo <= after < iv.hi:
                return n, after + 1
        ip = _addr(after, self.family)
        ri = next((k for k, r in enumerate(self.range_set.ranges) if r.contains(ip)), None)
        if ri is None:  # the cursor is from an older config: start over
            return None
        for n, iv in enumerate(ivs):  # the next interval of its range, or of the ranges after it
            if (iv.range_index == ri and iv.lo > after) or iv.range_index > ri:
                return n, iv.lo
        return 0, ivs[0].lo  # past the end of the last range: wrap

    # --- errors shared by every store ------------------------------------------------------

    def exhausted(self, leased_count: int, network: str = "") -> CNIError:
        details = (f"field: {self.range_set.path}; " if self.range_set.path else "") + f"pool: {self.name}"
        details += f"; network: {network}" if network else ""
        details += "; allowed: release leases (DEL, GC) or widen the range"
        return CNIError(IPAM_EXHAUSTED, f"pool {self.name} exhausted: {leased_count} of {self.size()} leased", details)

    def check_requested(self, ip: IPAddress, where: str = "") -> None:
        reason = self.why_not(ip)
        if reason:
            raise CNIError(ADDRESS_UNAVAILABLE, f"requested address {ip} is unavailable: {reason}",
                           (f"field: {where}; " if where else "") + f"allowed: a free address in {self.name}"
                           + _exclusion_note(self))


def _exclusion_note(space: Space) -> str:
    parts = []
    if space.range_set.gateways:
        parts.append("gateway " + ", ".join(str(g) for g in space.range_set.gateways))
    if space.exclude:
        parts.append("exclude " + ", ".join(str(n) for n in space.exclude))
    return f" except {' and '.join(parts)}" if parts else ""


def _addr(value: int, family: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


def address(value: int, family: int) -> IPAddress:
    return _addr(value, family)


def _subtract(span: tuple[int, int], cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `span` (inclusive) not covered by any of `cuts` (inclusive)."""
    lo, hi = span
    out: list[tuple[int, int]] = []
    for c_lo, c_hi in sorted(cuts):
        if c_hi < lo or c_lo > hi:
            continue
        if c_lo > lo:
            out.append((lo, c_lo - 1))
        lo = max(lo, c_hi + 1)
        if lo > hi:
            return out
    if lo <= hi:
        out.append((lo, hi))
    return out
