"""Which addresses a bgp-routed attachment may take: only addresses inside an IPPool's CIDR.

Why: bgp-routed puts `<pod>/32 dev mprX scope link` (/128) on the node for every address IPAM
gives. The IPAM ranges are the NAD writer's (a tenant's) to choose; with a non-cluster IPAM
(host-local, `multiplex-ipam` with the SQLite store, static) they could take an address the node
reaches off-link (the API server, DNS, a gateway behind a route), and the host route would take
the node's own traffic to it. IPPools are cluster-scoped and written by the admin, and the BGP
controller's import filter admits exactly their CIDRs: they are the admin's statement of what is
pod address space on this cluster, so they are the rule here too.

Where the pools come from, first answer wins (`admitted_pools`):
1. The node daemon serving the call: `services.ip_pools()`, its "ippools" informer (the BGP
   controller registers the kind on a local directory; on the Kubernetes API it is a known kind).
   Every IPPool, whatever API the call's config names (the BGP import filter admits these, or the
   subset the BGP settings' `ipPools` names: an address in another pool is safe for the node but
   not announced, so reachable from its node only).
2. The cluster IPAM (`multiplex-ipam` with `store: kubernetes`): it hands out IPPool addresses
   only and refuses ranges and requested addresses outside them (multiplex/ipam/kube/store.py
   `pool_for`), so nothing is read again: the answer is TRUSTED.
3. A one-shot call with the meta plugin's kubeconfig (CallContext.kubeconfig, the admin's): one
   LIST of IPPools through the API.
4. Neither: code 7 naming `$.ipam`. Design choice: the delegate cannot know what is safe to route,
   and no other admin-owned list of pod address space exists on a node (the NAD is the tenant's,
   environment variables are the runtime's), so it refuses rather than guess.

Checks: before IPAM is asked, each `ranges[i][j]` (its rangeStart..rangeEnd, default the whole
subnet) and each static `addresses[i].address` must lie inside one pool (code 7 naming that field,
nothing made yet); after IPAM answered, every address it gave (runtimeConfig ips, an exec'd IPAM
we cannot read ahead) is checked again (code 7 naming the address; the caller's undo releases it).
Disabled pools count, as in the BGP import filter: their addresses are still the cluster's.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Union

from multiplex.cni.errors import invalid_config
from multiplex.cni.request import Request

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: the cluster IPAM vouches for its addresses: nothing to read or check
TRUSTED = None

ALLOWED = "addresses inside an IPPool's CIDR (the admin's pod address space)"


def is_cluster_ipam(ipam: dict) -> bool:
    return ipam.get("type") == "multiplex-ipam" and ipam.get("store") == "kubernetes"


def admitted_pools(req: Request, network: str) -> Optional[list[IPNetwork]]:
    """The IPPool CIDRs this call's addresses must lie in, or TRUSTED (the cluster IPAM checks
    them itself); code 7 naming `$.ipam` when there is no source of pools."""
    ipam = req.config.get("ipam") or {}
    services = req.ctx.services
    reader = getattr(services, "ip_pools", None) if services is not None else None
    if reader is not None:
        pools = reader()
        if pools is not None:
            return list(pools)
    if is_cluster_ipam(ipam):
        return TRUSTED
    if req.ctx.kubeconfig:
        return pools_from_api(req.ctx.kubeconfig)
    raise invalid_config(
        f"network {network}: a bgp-routed attachment with IPAM {ipam.get('type')!r} needs the cluster's IPPools to "
        "know its addresses are safe to route from the node, and this call has none (not served by the node "
        "daemon, no kubeconfig)", "$.ipam",
        "the cluster IPAM (multiplex-ipam with store kubernetes), or calls through the node daemon, or a "
        "kubeconfig in the multiplex config")


def pools_from_api(kubeconfig: str) -> list[IPNetwork]:
    """Every IPPool's CIDR, one LIST (no IPPool CRD: none)."""
    from multiplex.bgp.plan import pools_from_ippools
    from multiplex.ipam.kube.model import GROUP, POOLS, VERSION
    from multiplex.k8s.client import KubeClient
    from multiplex.k8s.errors import NotFound

    client = KubeClient(kubeconfig)
    try:
        return pools_from_ippools(client.list_objects(GROUP, VERSION, POOLS))
    except NotFound:
        return []
    finally:
        client.close()


def pool_of(pools: Iterable[IPNetwork], first, last=None) -> Optional[IPNetwork]:
    """The pool holding every address from `first` to `last` (default: `first`), or None."""
    last = first if last is None else last
    for p in pools:
        if p.version == first.version and first in p and last in p:
            return p
    return None


def _have(pools: list[IPNetwork], version: int) -> str:
    return ", ".join(str(p) for p in pools if p.version == version) or "none"


def refuse_ranges_outside(pools: list[IPNetwork], ipam: dict, network: str) -> None:
    """Code 7 naming `$.ipam.ranges[i][j]` / `$.ipam.addresses[i].address` when a range or static
    address IPAM would hand out leaves every pool. Fields IPAM cannot parse are left to IPAM."""
    ranges = ipam.get("ranges")
    for i, rset in enumerate(ranges if isinstance(ranges, list) else []):
        for j, r in enumerate(rset if isinstance(rset, list) else []):
            if not isinstance(r, dict):
                continue
            try:
                subnet = ipaddress.ip_network(str(r.get("subnet")), strict=False)
                first = ipaddress.ip_address(r["rangeStart"]) if r.get("rangeStart") else subnet.network_address
                last = ipaddress.ip_address(r["rangeEnd"]) if r.get("rangeEnd") else subnet.broadcast_address
            except ValueError:
                continue
            if pool_of(pools, first, last) is None:
                span = f"{first}-{last}" if r.get("rangeStart") or r.get("rangeEnd") else str(subnet)
                raise invalid_config(
                    f"network {network}: range {span} is not inside an IPPool (IPPools of IPv{subnet.version}: "
                    f"{_have(pools, subnet.version)}); a routed pod's host route to such an address could take "
                    "the node's own traffic", f"$.ipam.ranges[{i}][{j}]", ALLOWED)
    addresses = ipam.get("addresses")
    for i, a in enumerate(addresses if isinstance(addresses, list) else []):
        try:
            ip = ipaddress.ip_interface(str((a or {}).get("address"))).ip
        except (ValueError, AttributeError):
            continue
        if pool_of(pools, ip) is None:
            raise invalid_config(f"network {network}: address {ip} is not inside an IPPool (IPPools of "
                                 f"IPv{ip.version}: {_have(pools, ip.version)})", f"$.ipam.addresses[{i}].address",
                                 ALLOWED)


def refuse_addresses_outside(pools: list[IPNetwork], ips, network: str) -> None:
    """Code 7 naming the address when one IPAM gave lies in no pool."""
    for ip in ips:
        address = ip.address.ip
        if pool_of(pools, address) is None:
            raise invalid_config(f"network {network}: IPAM gave {address}, which is not inside an IPPool (IPPools "
                                 f"of IPv{address.version}: {_have(pools, address.version)}); a routed pod's host "
                                 "route to it could take the node's own traffic", f"$.ipam (address {address})",
                                 ALLOWED)
