"""`multiplex-bgp-routed`: Calico-style routed pods; the node daemon's BGP controller carries the
routes between nodes (multiplex/controllers/bgp.py, BIRD 2).

ADD, as its steps: validate the config; make a veth pair whose pod end is born in the pod netns
(renamed to CNI_IFNAME) and whose host end stays in the node with **no address**; ask IPAM (the
cluster-wide one: its per-node blocks are what the node announces); in the pod, each address as a
host prefix (/32, /128), an on-link route to the family's gateway and the default route via it:

    IPv4: 198.18.64.5/32, `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1 dev eth0`
    IPv6: fd00:64::5/128, `default via fe80::1 dev eth0`

On the node: the host veth answers for 169.254.1.1 with `proxy_arp` (as Calico's does) and owns
`fe80::1/64` (no DAD) for IPv6, so IPv6 needs no proxy NDP; the pod additionally gets a permanent
neighbour entry for each gateway with the host veth's MAC, which keeps the pod working on a node
without a default route (the kernel proxies ARP only for what it can route). Then the host route
`<pod>/32 dev <host veth> scope link` (`/128`), and forwarding on. Nothing here speaks BGP: the
node's blocks are announced by the BGP controller from the IPAM's IPBlocks; an address this node
borrowed from another node's block is announced as a /32 (/128) the same way.

Which addresses: every address of the attachment lies inside an IPPool's CIDR (the admin's pod
address space), else code 7 naming the IPAM field or the
address, nothing left: delegates/routed_pools.py says where the pools come from and why.

A secondary attachment (the pod already has a default route of the family, from its first
network): the kernel would refuse a second default, so the pod routes the IPPools holding this
attachment's addresses via the gateway instead (the cluster IPAM's subnets when it is trusted
without a pool list). IPAM's routes are installed as given (metric, table), via the gateway. The
result records exactly the routes the pod got: a route that exists already is an error (105),
never hidden; only the IPv4 gateway's on-link route, present when the first network is bgp-routed
too, is added again with a metric of the interface's index.

The host end is named `mpr` + 12 hex of containerID/ifname and carries the alias
`<containerID>/<ifname>/<network>` (nft.owner_comment), so DEL needs neither the pod netns nor
the cache, and GC and the cache-less DEL (`sweep`) find attachments by alias. DEL removes the veth
(its routes go with it) and the lease. A failed ADD undoes what it made.
Config fields: docs/bgp-routed.md, schemas/bgp-routed.json.
"""
from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import Optional

from multiplex.cni import skel
from multiplex.cni.errors import NETLINK_FAILURE, CNIError, invalid_config
from multiplex.cni.request import Request
from multiplex.cni.types import DNS, Interface, IPConfig, Result, Route
from multiplex.netlink import nft
from delegates import routed_pools
from delegates.skeleton import VethDelegate, of_container, remove_host_veths
from delegates.steps import Problem, Undo, not_kept, address_pod_interface, ipam_add

TYPE_NAME = "multiplex-bgp-routed"
HOST_PREFIX = "mpr"
GATEWAY_V4 = ipaddress.ip_address("169.254.1.1")
GATEWAY_V6 = ipaddress.ip_address("fe80::1")
GATEWAYS = {4: GATEWAY_V4, 6: GATEWAY_V6}
DEFAULTS = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def host_veth_name(container_id: str, ifname: str) -> str:
    """`mpr` + 12 hex of containerID/ifname: 15 characters, fixed, so DEL finds it by name."""
    return HOST_PREFIX + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:12]


def owner(container_id: str, ifname: str, network: str) -> str:
    return nft.owner_comment(container_id, ifname, network)


@dataclass
class RoutedConfig:
    network: str
    mtu: Optional[int] = None
    dns: Optional[DNS] = None

    @classmethod
    def parse(cls, conf: dict) -> "RoutedConfig":
        name = conf.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_config("the config needs a network name", "$.name", "a non-empty string")
        dns = DNS.from_dict(conf["dns"]) if isinstance(conf.get("dns"), dict) else None
        return cls(network=name, mtu=conf.get("mtu") or None, dns=dns if dns is not None and not dns.empty() else None)


def default_mtu() -> Optional[int]:
    """The node's underlay MTU, chosen as the node registry chooses the underlay (default route's
    interface, else the first up interface with a global address): routed pod traffic leaves the
    node unencapsulated, so the pod may use all of it. None when there is no underlay to read."""
    from multiplex.controllers.node_registry import read_underlay

    try:
        return read_underlay("").mtu or None
    except (ValueError, OSError):
        return None


class BgpRoutedPlugin(VethDelegate):
    type_name = TYPE_NAME
    label = "bgp-routed"
    capabilities = frozenset({"ips"})
    schema = "bgp-routed"
    config_class = RoutedConfig
    host_veth_name = staticmethod(host_veth_name)

    # ---- ADD -------------------------------------------------------------------------------------
    def attach(self, req: Request, conf: RoutedConfig, node, pod, undo: Undo, ready: None) -> Result:
        from multiplex import netlink
        from multiplex.netlink import routes as rt

        pools = routed_pools.admitted_pools(req, conf.network)     # before anything is made
        if pools is not routed_pools.TRUSTED:
            routed_pools.refuse_ranges_outside(pools, req.config.get("ipam") or {}, conf.network)
        host_name = host_veth_name(req.container_id, req.ifname)
        if node.delete_link(host_name):
            req.ctx.log.warning("replaced a stale host veth", link=host_name, container=req.container_id)
        mtu = conf.mtu or default_mtu()
        host, peer = netlink.make_veth_pair(node, pod, host_name, req.ifname, mtu=mtu,
                                            alias=owner(req.container_id, req.ifname, conf.network))
        undo.push(f"delete veth {host_name}", lambda: node.delete_link(host_name))

        ipam = ipam_add(req, undo)
        families = {ip.address.version for ip in ipam.ips}
        if pools is not routed_pools.TRUSTED:
            routed_pools.refuse_addresses_outside(pools, ipam.ips, conf.network)
        refuse_addresses_reached_otherwise(node, conf, ipam.ips, host)

        # the node side first, so the pod's first packet finds its way back
        if 4 in families:
            rt.enable_proxy_arp(host.name)
        if 6 in families:
            netlink.sysctl.write(f"net/ipv6/conf/{host.name}/accept_dad", "0", missing_ok=True)
            node.add_address(host, ipaddress.ip_interface(f"{GATEWAY_V6}/64"), exist_ok=True)
        rt.enable_forwarding(families)
        for ip in ipam.ips:
            if not rt.host_route(node, ip.address.ip, host) and not rt.has_host_route(node, ip.address.ip, host):
                raise invalid_config(f"network {conf.network}: IPAM gave {ip.address.ip}, but another route to "
                                     "it appeared on this node meanwhile", "$.ipam",
                                     "ranges no other network of the node hands out")

        result = Result(cni_version=req.cni_version)
        result.add_interface(Interface(name=host.name, mac=host.mac))
        pod_index = result.add_interface(Interface(name=req.ifname, mac=peer.mac, sandbox=req.netns,
                                                   mtu=peer.mtu or mtu))
        result.ips = [IPConfig(address=host_prefix(ip.address.ip), interface=pod_index) for ip in ipam.ips]
        secondary = {f for f in families if pod.default_route(AF[f]) is not None}
        reached = reached_networks(ipam.ips, pools)
        refuse_a_pool_the_pod_has_elsewhere(pod, peer, reached, secondary, conf.network)
        result.routes = pod_routes(families, ipam.routes, secondary, reached)
        result.dns = conf.dns or ipam.dns
        for r in ipam.routes:
            if r.dst.prefixlen == 0 and r.dst.version in secondary:
                req.ctx.log.warning("IPAM's default route not installed: the pod has one from its first network",
                                    network=conf.network, route=str(r.dst))

        address_pod_interface(req, pod, peer, result.ips)
        for family in sorted(families):
            rt.permanent_neighbour(pod, GATEWAYS[family], peer, host.mac)
        result.routes = install_pod_routes(pod, peer, result.routes)
        return result

    # ---- CHECK -----------------------------------------------------------------------------------
    def node_problems(self, req: Request, conf: RoutedConfig, node, prev: Result) -> list[Problem]:
        return check_node(node, req, prev)

    # ---- GC, sweep -------------------------------------------------------------------------------
    def collect(self, req: Request, conf: RoutedConfig, keep) -> dict[str, list[str]]:
        """This network's host veths that the keep-list does not keep, found by alias."""
        return {"veths": remove_host_veths(req, HOST_PREFIX, not_kept(keep, conf.network))}

    def sweep_container(self, req: Request, cid: str) -> dict[str, list[str]]:
        """Every host veth of `cid` this plugin made."""
        return {"veths": remove_host_veths(req, HOST_PREFIX, of_container(cid))}


# ---- steps ---------------------------------------------------------------------------------------
def host_prefix(address) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """The pod's address as a host prefix: nothing else is on its link but the node."""
    return ipaddress.ip_interface(f"{address}/{address.max_prefixlen}")


def reached_networks(ips, pools) -> dict[int, list]:
    """Per family, what a secondary attachment routes instead of a default: the IPPools holding
    its addresses (the routed network across every node), else - the cluster IPAM, trusted without
    a pool list - the networks IPAM gave the addresses in (its range's subnet: the pool's CIDR).
    Only the pools of this attachment's own addresses: another pool may be another network's."""
    out: dict[int, list] = {}
    for ip in ips:
        net = routed_pools.pool_of(pools, ip.address.ip) if pools else None
        net = net or ip.address.network
        if net not in out.setdefault(net.version, []):
            out[net.version].append(net)
    return out


def refuse_a_pool_the_pod_has_elsewhere(pod, peer, reached: dict[int, list], secondary: set[int],
                                        network: str) -> None:
    """Code 7 naming `$.ipam` when a secondary attachment's pool already holds an address of
    another interface of the pod (e.g. its eth0 on the same routed network): net1's route to the
    pool would take that interface's traffic to every other pod of the pool (and its replies, which
    a node with strict reverse-path filtering drops, and net1's policies would apply to it). One
    pool, one interface: a second attachment must come from another pool."""
    for family in sorted(secondary):
        for a in pod.addresses(family=AF[family]):
            if a.index == peer.index or a.interface.ip.is_link_local:
                continue
            for net in reached.get(family, []):
                if a.interface.ip in net:
                    other = pod.link_at(a.index)
                    raise invalid_config(
                        f"network {network}: the pod's {other.name if other else 'other interface'} already has "
                        f"{a.interface.ip} in {net}; a second bgp-routed attachment from the same pool would take "
                        "that interface's traffic to the pool", "$.ipam",
                        "ranges in an IPPool none of the pod's other interfaces has an address in")


def pod_routes(families: set[int], ipam_routes: list[Route], secondary: set[int] = frozenset(),
               reached: Optional[dict[int, list]] = None) -> list[Route]:
    """The pod's routes: per family, the on-link route to the gateway (IPv4: IPv6's gateway is
    link-local and needs none), the default route via it - or, for a family whose default route
    the pod already has (`secondary`: bgp-routed is not its first network), routes to `reached`
    via it -, and IPAM's routes as given (metric, table, mtu, advmss), every one via the gateway
    (nothing is on-link for a routed pod).
    IPAM's default route is the one default of a first network and cannot be installed on a
    secondary one (the kernel keeps the first network's)."""
    out: list[Route] = []
    if 4 in families:
        out.append(Route(dst=ipaddress.ip_network(f"{GATEWAY_V4}/32"), scope=253))
    for family in sorted(families):
        if family in secondary:
            out += [Route(dst=net, gw=GATEWAYS[family]) for net in (reached or {}).get(family, [])]
        else:
            out.append(Route(dst=DEFAULTS[family], gw=GATEWAYS[family]))
    for r in ipam_routes:
        if r.dst.version not in families or r.dst == DEFAULTS[r.dst.version]:
            continue
        mine = Route(dst=r.dst, gw=GATEWAYS[r.dst.version], mtu=r.mtu, advmss=r.advmss, priority=r.priority,
                     table=r.table)
        same = [i for i, o in enumerate(out) if o.dst == r.dst and (o.table or 254) == (r.table or 254)]
        if same:
            out[same[0]] = mine      # IPAM's route to a network routed already: its mtu/advmss kept
        else:
            out.append(mine)
    return out


def install_pod_routes(pod, peer, routes: list[Route]) -> list[Route]:
    """Install `routes` out of the pod interface and answer exactly what is installed. Only the
    IPv4 gateway's on-link route may already exist - on another bgp-routed interface of the pod
    (its first network): it is then added with a metric of the interface's index (unique in the
    pod), so each interface reaches 169.254.1.1 through itself. Anything else that exists is an
    error, never hidden: the result, the cache and network-status must not claim a route the
    pod does not have."""
    out: list[Route] = []
    for r in routes:
        if pod.add_route(r.dst, peer, r.gw, mtu=r.mtu, advmss=r.advmss, priority=r.priority, table=r.table,
                         scope=r.scope, exist_ok=True):
            out.append(r)
            continue
        if r.gw is None and r.dst.version == 4 and r.priority is None:
            again = Route(dst=r.dst, gw=None, mtu=r.mtu, advmss=r.advmss, priority=peer.index, table=r.table,
                          scope=r.scope)
            if pod.add_route(again.dst, peer, None, priority=again.priority, table=again.table,
                             scope=again.scope, exist_ok=True):
                out.append(again)
                continue
        if not any(e.dst == r.dst and e.oif == peer.index and e.gw == r.gw for e in pod.routes(AF[r.dst.version])):
            via = f" via {r.gw}" if r.gw is not None else ""
            raise CNIError(NETLINK_FAILURE, f"route {r.dst}{via} cannot be added on {peer.name}: the pod has a "
                           "route to it already", f"link: {peer.name}; route: {r.dst}{via}")
        out.append(r)
    return out


def refuse_addresses_reached_otherwise(node, conf: RoutedConfig, ips, host) -> None:
    """Code 7 naming `ipam` when an address IPAM gave is one the node already reaches on a link
    (its own, the underlay's subnet, another pod's host route): the pod's /32 (/128) host route
    would take that traffic from its owner. A NAD's IPAM ranges are its namespace's to choose; the
    node's neighbours and other namespaces' pods are not."""
    from multiplex.netlink import routes as rt

    for ip in ips:
        why = rt.reached_otherwise(node, ip.address.ip, host)
        if why is not None:
            raise invalid_config(f"network {conf.network}: IPAM gave {ip.address.ip}, but {why}; a routed pod's "
                                 "host route would take that traffic", "$.ipam",
                                 "ranges the node does not already reach on a link (the cluster IPAM's IPPools)")


def check_node(node, req: Request, prev: Result) -> list[Problem]:
    """The node side as ADD made it: the host veth up, proxy ARP on (IPv4), the IPv6 gateway
    fe80::1/64 on the host veth, forwarding on per family, a host route per address."""
    from multiplex.netlink import routes as rt, sysctl

    name = host_veth_name(req.container_id, req.ifname)
    host = node.link(name)
    if host is None:
        return [("host veth", f"host veth {name} is missing")]
    problems: list[Problem] = []
    if not host.up:
        problems.append(("host veth", f"host veth {name} is down"))
    families = {ip.address.version for ip in prev.ips}
    if 4 in families and not rt.proxy_arp_enabled(name):
        problems.append(("host veth", f"proxy_arp is off on {name}"))
    gateway6 = ipaddress.ip_interface(f"{GATEWAY_V6}/64")
    if 6 in families and not any(a.interface == gateway6 for a in node.addresses(host, AF[6])):
        problems.append(("host veth", f"{gateway6}, the pod's IPv6 gateway, is missing on {name}"))
    if 4 in families and sysctl.read("net/ipv4/ip_forward") != "1":
        problems.append(("node", "IPv4 forwarding is off on the node"))
    if 6 in families and sysctl.read("net/ipv6/conf/all/forwarding") not in (None, "1"):
        problems.append(("node", "IPv6 forwarding is off on the node"))
    for ip in prev.ips:
        if not rt.has_host_route(node, ip.address.ip, host):
            problems.append(("routes", f"host route {ip.address.ip} dev {name} is missing on the node"))
    return problems


plugin = BgpRoutedPlugin()


def main() -> None:
    skel.main(plugin)
