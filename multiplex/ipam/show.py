"""`multiplex ipam show --store kubernetes`: the cluster's pools and blocks, as a table or JSON.

Per pool: CIDR, block size, disabled, node selector, how many blocks exist of how many, used and
free addresses. Per block: CIDR, affine node, used, free, and the addresses borrowed from it (held
by other nodes; the routed delegate announces those as /32 or /128). Blocks whose pool is gone are
listed under their pool name with `"missing": true`. (`free` counts the block's addresses less
the pool's network and IPv4 broadcast address; a config's gateway or exclusions are not known here.)
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from .kube.blocks import pool_size
from .kube.model import Block, Pool
from .kube.store import KubeStore


def _block_size(block: Block, pool_cidr: Optional[ipaddress._BaseNetwork]) -> int:
    n = block.cidr.num_addresses
    if pool_cidr is not None and block.cidr.prefixlen < block.cidr.max_prefixlen - 1:
        if block.cidr.network_address == pool_cidr.network_address:
            n -= 1
        if block.cidr.version == 4 and block.cidr.broadcast_address == pool_cidr.broadcast_address:
            n -= 1
    return n


def block_report(block: Block, pool: Optional[Pool], with_allocations: bool = True) -> dict:
    size = _block_size(block, pool.cidr if pool else None)
    borrowed = block.borrowed()
    d = {"block": block.name, "cidr": str(block.cidr), "node": block.node, "used": len(block.allocations),
         "free": max(size - len(block.allocations), 0), "borrowed": len(borrowed),
         "borrowedBy": sorted({a.node for a in borrowed.values()})}
    if with_allocations:
        d["allocations"] = [dict(address=addr, **a.to_dict(borrowed=a.node != block.node))
                            for addr, a in sorted(block.allocations.items(),
                                                  key=lambda kv: int(ipaddress.ip_address(kv[0])))]
    return d


def cluster_report(store: KubeStore, with_allocations: bool = True) -> list[dict]:
    """One dict per pool (every IPPool, then pool names only blocks know of)."""
    blocks = store.all_blocks()
    pools = sorted(store.list_pools(), key=lambda p: (p.family, int(p.cidr.network_address)))
    out = []
    for p in pools:
        mine = [b for b in blocks if b.pool == p.name]
        used = sum(len(b.allocations) for b in mine)
        size = pool_size(p.cidr)
        out.append({"pool": p.name, "cidr": str(p.cidr), "family": p.family, "blockSize": p.block_prefix,
                    "disabled": p.disabled, "nodeSelector": dict(p.node_selector),
                    "blocks": len(mine), "blocksTotal": 2 ** (p.block_prefix - p.cidr.prefixlen),
                    "size": size, "used": used, "free": max(size - used, 0),
                    "borrowed": sum(len(b.borrowed()) for b in mine),
                    "blockList": [block_report(b, p, with_allocations) for b in mine]})
    known = {p.name for p in pools}
    for name in sorted({b.pool for b in blocks} - known):
        mine = [b for b in blocks if b.pool == name]
        out.append({"pool": name, "cidr": mine[0].pool_cidr, "missing": True, "blocks": len(mine),
                    "used": sum(len(b.allocations) for b in mine),
                    "borrowed": sum(len(b.borrowed()) for b in mine),
                    "blockList": [block_report(b, None, with_allocations) for b in mine]})
    return out


def table(report: list[dict], with_allocations: bool = False) -> list[str]:
    """The report as aligned text: a header line per pool, a row per block."""
    lines: list[str] = []
    for p in report:
        if p.get("missing"):
            lines.append(f"pool {p['pool']} ({p['cidr']}): no such IPPool; {p['blocks']} blocks, {p['used']} used")
        else:
            extra = " disabled" if p["disabled"] else ""
            if p["nodeSelector"]:
                extra += " nodeSelector " + ",".join(f"{k}={v}" for k, v in sorted(p["nodeSelector"].items()))
            lines.append(f"pool {p['pool']} {p['cidr']} /{p['blockSize']} blocks: {p['blocks']} of "
                         f"{p['blocksTotal']} claimed, {p['used']} used, {p['free']} free, "
                         f"{p['borrowed']} borrowed{extra}")
        rows = [("BLOCK", "NODE", "USED", "FREE", "BORROWED")]
        for b in p["blockList"]:
            rows.append((b["cidr"], b["node"], str(b["used"]), str(b["free"]),
                         str(b["borrowed"]) + (f" ({', '.join(b['borrowedBy'])})" if b["borrowedBy"] else "")))
        if len(rows) > 1:
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
                lines[-1] = lines[-1].rstrip()
        if with_allocations:
            for b in p["blockList"]:
                for a in b.get("allocations", []):
                    pod = f"{a['podNamespace']}/{a['podName']}" if a["podName"] else "-"
                    mark = " borrowed" if a["borrowed"] else ""
                    lines.append(f"    {a['address']:<28} {a['node']:<16} {a['network']:<16} {pod:<32} "
                                 f"{a['containerID'][:12]} {a['ifname']}{mark}")
    return lines
