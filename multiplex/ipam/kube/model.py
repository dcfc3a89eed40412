"""The IPPool and IPBlock custom resources: their names, labels, and (de)serialising.

- An **IPPool** (cluster-scoped, made by the admin) is one subnet: `spec.cidr`, `spec.blockSize`
  (a prefix length; default /26 for IPv4, /122 for IPv6), `spec.nodeSelector` (node labels, all
  must match) and `spec.disabled`. A range of the IPAM config uses the pool whose CIDR equals its
  subnet.
- An **IPBlock** (cluster-scoped) is one block of a pool, affine to one node: `spec.cidr`,
  `spec.node`, `spec.pool`, `spec.poolCIDR`, `spec.last` (the allocation cursor) and
  `spec.allocations`: address -> containerID, ifname, network, podNamespace, podName, podUID,
  node (who holds it), borrowed (held by another node than the block's), created, missingSince (GC).
  Its name comes from its CIDR (`v4-198-18-0-64-26`), so **creating it is the claim**: the API
  server refuses a second create of the same name.

Its labels are computed from its content on every write (pool, affine node, its prefix length,
one label per node with a stake), so a node LISTs (or watches) exactly the blocks it may hold
leases in, and a claim finds blocks of another size than the pool's with one small LIST. What the store does with
these objects is multiplex.ipam.kube.store; the arithmetic of blocks is multiplex.ipam.kube.blocks.
"""
from __future__ import annotations

import calendar
import hashlib
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Optional

from ...cni.types import IPAddress, IPNetwork
from ..store import Lease, Owner

GROUP = "ipam.multiplex.dev"
VERSION = "v1alpha1"
POOLS = "ippools"
BLOCKS = "ipblocks"
POOL_KIND = "IPPool"
BLOCK_KIND = "IPBlock"
API_VERSION = f"{GROUP}/{VERSION}"

POOL_LABEL = f"{GROUP}/pool"            # the block's pool
NODE_LABEL = f"{GROUP}/node"            # the block's affine node
USER_LABEL_PREFIX = f"node.{GROUP}/"    # one per node with a stake in the block: affine or borrowed
SIZE_LABEL = f"{GROUP}/block-size"     # the block's prefix length: a claim finds blocks of another size

DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}


# --- names, labels, times ---------------------------------------------------------------------

def block_name(cidr: IPNetwork) -> str:
    """`v4-198-18-0-64-26`, `v6-fd00-5--40-122`: a DNS subdomain name unique per CIDR."""
    addr = str(cidr.network_address).replace(".", "-").replace(":", "-")
    return f"v{cidr.version}-{addr}-{cidr.prefixlen}"


def label_value(name: str) -> str:
    """A node or pool name as a label value / label key name (<= 63 characters)."""
    if len(name) <= 63:
        return name
    return name[:46].rstrip("-.") + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def user_label(node: str) -> str:
    return USER_LABEL_PREFIX + label_value(node)


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_time(value: object) -> Optional[float]:
    if not isinstance(value, str) or not value:
        return None
    try:
        return float(calendar.timegm(time.strptime(value.rstrip("Z")[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


# --- the resources ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Pool:
    """An IPPool: one subnet, carved into blocks of `block_prefix`."""
    name: str
    cidr: IPNetwork
    block_prefix: int
    node_selector: dict = field(default_factory=dict, compare=False)
    disabled: bool = False

    @classmethod
    def from_object(cls, obj: dict) -> "Pool":
        """Raises ValueError naming the field when the object is malformed."""
        name = str((obj.get("metadata") or {}).get("name") or "")
        spec = obj.get("spec") or {}
        try:
            cidr = ipaddress.ip_network(str(spec.get("cidr")), strict=True)
        except ValueError:
            raise ValueError(f"IPPool {name}: spec.cidr {spec.get('cidr')!r} is not a CIDR with no host bits") from None
        size = spec.get("blockSize", DEFAULT_BLOCK_SIZE[cidr.version])
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= cidr.max_prefixlen:
            raise ValueError(f"IPPool {name}: spec.blockSize {size!r} is not a prefix length 1-{cidr.max_prefixlen}")
        selector = spec.get("nodeSelector") or {}
        if not isinstance(selector, dict):
            raise ValueError(f"IPPool {name}: spec.nodeSelector must be a map of node labels")
        return cls(name, cidr, max(size, cidr.prefixlen), {str(k): str(v) for k, v in selector.items()},
                   bool(spec.get("disabled", False)))

    @property
    def family(self) -> int:
        return self.cidr.version

    def block_of(self, ip: IPAddress) -> IPNetwork:
        return ipaddress.ip_network(f"{ip}/{self.block_prefix}", strict=False)

    def selects(self, labels: Optional[dict]) -> bool:
        return all((labels or {}).get(k) == v for k, v in self.node_selector.items())

    def why_unusable(self, node: str, labels: Optional[dict]) -> str:
        if self.disabled:
            return f"IPPool {self.name} is disabled"
        if self.node_selector and not self.selects(labels):
            sel = ",".join(f"{k}={v}" for k, v in sorted(self.node_selector.items()))
            return f"IPPool {self.name} does not select node {node} (nodeSelector {sel})"
        return ""


@dataclass
class Allocation:
    """One address of a block: who holds it."""
    container_id: str
    ifname: str
    network: str
    node: str
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    created: float = 0.0
    missing_since: Optional[float] = None    # set by GC when its pod or node was first seen gone

    @classmethod
    def for_owner(cls, owner: Owner, node: str, now: float) -> "Allocation":
        return cls(owner.container_id, owner.ifname, owner.network, node, owner.pod_namespace, owner.pod_name,
                   owner.pod_uid, now)

    @classmethod
    def from_dict(cls, d: dict) -> "Allocation":
        return cls(str(d.get("containerID", "")), str(d.get("ifname", "")), str(d.get("network", "")),
                   str(d.get("node", "")), str(d.get("podNamespace", "")), str(d.get("podName", "")),
                   str(d.get("podUID", "")), parse_time(d.get("created")) or 0.0, parse_time(d.get("missingSince")))

    def to_dict(self, borrowed: bool) -> dict:
        d = {"containerID": self.container_id, "ifname": self.ifname, "network": self.network, "node": self.node,
             "podNamespace": self.pod_namespace, "podName": self.pod_name, "podUID": self.pod_uid,
             "borrowed": borrowed, "created": rfc3339(self.created)}
        if self.missing_since is not None:
            d["missingSince"] = rfc3339(self.missing_since)
        return d

    def owner(self) -> Owner:
        return Owner(self.container_id, self.ifname, self.network, self.pod_namespace, self.pod_name, self.pod_uid)

    def held_by(self, owner: Owner) -> bool:
        return (self.container_id, self.ifname, self.network) == (owner.container_id, owner.ifname, owner.network)


@dataclass
class Block:
    """An IPBlock: a CIDR of a pool, affine to one node, and its allocations (address -> holder)."""
    cidr: IPNetwork
    pool: str
    pool_cidr: str
    node: str
    allocations: dict[str, Allocation] = field(default_factory=dict)
    last: str = ""
    resource_version: str = ""

    @property
    def name(self) -> str:
        return block_name(self.cidr)

    @classmethod
    def from_object(cls, obj: dict) -> "Block":
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        cidr = ipaddress.ip_network(str(spec.get("cidr")), strict=False)
        allocs = {str(ipaddress.ip_address(a)): Allocation.from_dict(v or {})
                  for a, v in (spec.get("allocations") or {}).items()}
        return cls(cidr, str(spec.get("pool", "")), str(spec.get("poolCIDR", "")), str(spec.get("node", "")),
                   allocs, str(spec.get("last") or ""), str(meta.get("resourceVersion") or ""))

    def labels(self) -> dict[str, str]:
        """Computed from the content on every write: pool, affine node, and one label per node
        with a stake (`affine` or `borrowed`), so a node LISTs exactly the blocks it may hold leases in."""
        out = {POOL_LABEL: label_value(self.pool), NODE_LABEL: label_value(self.node),
               SIZE_LABEL: str(self.cidr.prefixlen)}
        for a in self.allocations.values():
            if a.node and a.node != self.node:
                out[user_label(a.node)] = "borrowed"
        out[user_label(self.node)] = "affine"
        return out

    def to_object(self) -> dict:
        meta: dict = {"name": self.name, "labels": self.labels()}
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        spec = {"pool": self.pool, "poolCIDR": self.pool_cidr, "cidr": str(self.cidr), "node": self.node,
                "allocations": {a: v.to_dict(borrowed=v.node != self.node)
                                for a, v in sorted(self.allocations.items(), key=lambda kv: address_int(kv[0]))}}
        if self.last:
            spec["last"] = self.last
        return {"apiVersion": API_VERSION, "kind": BLOCK_KIND, "metadata": meta, "spec": spec}

    def span(self) -> tuple[int, int]:
        return int(self.cidr.network_address), int(self.cidr.broadcast_address)

    def used(self) -> set[int]:
        return {address_int(a) for a in self.allocations}

    def borrowed(self) -> dict[str, Allocation]:
        """Addresses of this block held by other nodes."""
        return {a: v for a, v in self.allocations.items() if v.node != self.node}

    def lease(self, addr: str, fresh: bool = False) -> Lease:
        a = self.allocations[addr]
        return Lease(pool=self.pool_cidr or str(self.cidr), address=ipaddress.ip_address(addr), owner=a.owner(),
                     created=a.created, fresh=fresh)


def address_int(addr: str) -> int:
    """An address string as an integer (blocks key allocations by address string)."""
    return int(ipaddress.ip_address(addr))
