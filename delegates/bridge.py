"""`multiplex-bridge`: a Linux bridge per network, a veth pair per attachment.

ADD, as its steps: validate the config; make the bridge (or find it) and bring it up; make a veth
pair whose pod end is born in the pod netns and renamed to CNI_IFNAME, host end on the bridge;
hairpin and VLAN on the port; ask IPAM; address the pod end, bring it up; gateway addresses on the
bridge and forwarding on (isGateway); masquerade (ipMasq); routes in the pod. A failure undoes what
this call made (veth, IPAM lease, masquerade rules, a bridge it created and nobody uses) and raises.

The host end is named from (containerID, ifname) - `mpx` + 12 hex - and carries the alias
`<containerID>/<ifname>/<network>` (nft.owner_comment: hashed parts when too long), so DEL
finds it without the pod netns, GC finds every attachment of a network and a cache-less DEL
(`sweep`) every attachment of a container by alias. The network is the config `name`, which the
meta plugin sets to `<namespace>.<NAD name>`. DEL removes the veth (the pod end goes with it, and
the port's FDB entries with the port), the masquerade rules and the lease; the bridge stays.
Config fields: docs/bridge.md, schemas/bridge.json.

One MAC, one port: ADD puts a static, sticky FDB entry for the pod's MAC on its bridge port. The
kernel adds it only when the bridge holds that MAC nowhere else, so a requested MAC (capability
`mac`) already in use on the bridge - another pod's, the bridge's own - is refused (code 103,
`field: runtimeConfig.mac`) before IPAM is asked, and the veth is undone; and no other port can
take the MAC over by sending with it.

The pod end is addressed, brought up and routed by the shared steps (delegates/steps.py), IPv6
without duplicate address detection (which hairpinMode would also fail outright: the port echoes
the probe); CHECK compares it with prevResult there too.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any, Optional

from multiplex.netlink import nft
from multiplex.cni import skel
from multiplex.cni.errors import ADDRESS_UNAVAILABLE, CNIError, INVALID_CONFIG, NETLINK_FAILURE, invalid_config
from multiplex.cni.request import Request
from multiplex.cni.types import DNS, Interface, IPConfig, Result, Route
from delegates.skeleton import VethDelegate, of_container, remove_host_veths
from delegates.steps import Problem, Undo, not_kept, add_pod_routes, address_pod_interface, ipam_add

TYPE_NAME = "multiplex-bridge"
HOST_PREFIX = "mpx"
BRIDGE_PREFIX = "mpxbr-"


# ---- names ---------------------------------------------------------------------------------------
def _hex(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def default_bridge_name(network: str) -> str:
    """`mpxbr-` + 8 hex of the network name: each network its own bridge unless `bridge` says so."""
    return BRIDGE_PREFIX + _hex(network, 8)


def host_veth_name(container_id: str, ifname: str) -> str:
    """The host end of an attachment's veth: `mpx` + 12 hex of containerID/ifname (15 characters)."""
    return HOST_PREFIX + _hex(f"{container_id}/{ifname}", 12)


def owner(container_id: str, ifname: str, network: str) -> str:
    """`<containerID>/<ifname>/<network>`: the host veth's alias and the masquerade rules' comment."""
    return nft.owner_comment(container_id, ifname, network)


def vlan_gateway_names(bridge: str, vlan: int) -> tuple[str, str]:
    """(gateway interface, its bridge port) for isGateway on a VLAN: `<bridge>.<vlan>` when it fits."""
    gw = f"{bridge}.{vlan}"
    if len(gw) > 15:
        gw = "mpxg" + _hex(f"{bridge}.{vlan}", 11)
    return gw, "mpxp" + _hex(f"{bridge}.{vlan}", 11)


def check_bridge_name(conf: dict, where: str = "$") -> None:
    """`mpxbr-` names are the networks' default bridges: a config may name its own default bridge,
    never another network's (a NAD in one namespace could otherwise join the default bridge of a
    same- or other-named network in another namespace, whose name it can compute)."""
    bridge, name = conf.get("bridge"), conf.get("name")
    if isinstance(bridge, str):  # the schema counts characters; the kernel counts bytes
        from multiplex.cni.request import check_ifname

        check_ifname(bridge, f"{where}.bridge", INVALID_CONFIG)
    if isinstance(bridge, str) and bridge.startswith(BRIDGE_PREFIX) and isinstance(name, str) \
            and bridge != default_bridge_name(name):
        raise invalid_config(f"bridge {bridge} has the prefix {BRIDGE_PREFIX} of the networks' default bridges "
                             "and is not this network's own", f"{where}.bridge",
                             f"a name without the prefix {BRIDGE_PREFIX}, or leave bridge out for this network's own")


# ---- config --------------------------------------------------------------------------------------
@dataclass
class BridgeConfig:
    network: str
    bridge: str
    is_gateway: bool = False
    is_default_gateway: bool = False
    ip_masq: bool = False
    hairpin: bool = False
    vlan: int = 0
    mtu: Optional[int] = None
    mac: str = ""
    dns: Optional[DNS] = None

    @classmethod
    def parse(cls, conf: dict) -> "BridgeConfig":
        """Read a config checked against schemas/bridge.json (ADD, CHECK) or not (DEL, GC, STATUS:
        then only the name, the network's identity, must be there)."""
        name = conf.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_config("the config needs a network name", "$.name", "a non-empty string")
        rc = conf.get("runtimeConfig") if isinstance(conf.get("runtimeConfig"), dict) else {}
        mac = str(rc.get("mac") or "").lower().replace("-", ":")
        dns = DNS.from_dict(conf["dns"]) if isinstance(conf.get("dns"), dict) else None
        default_gw = bool(conf.get("isDefaultGateway", False))
        return cls(network=name, bridge=str(conf.get("bridge") or default_bridge_name(name)),
                   is_gateway=bool(conf.get("isGateway", False)) or default_gw, is_default_gateway=default_gw,
                   ip_masq=bool(conf.get("ipMasq", False)), hairpin=bool(conf.get("hairpinMode", False)),
                   vlan=int(conf.get("vlan") or 0), mtu=conf.get("mtu") or None, mac=mac,
                   dns=dns if dns is not None and not dns.empty() else None)


# ---- the plugin ----------------------------------------------------------------------------------
class BridgePlugin(VethDelegate):
    type_name = TYPE_NAME
    label = "bridge"
    capabilities = frozenset({"ips", "mac"})
    schema = "bridge"
    config_class = BridgeConfig
    host_veth_name = staticmethod(host_veth_name)

    def validate_fields(self, conf: dict, where: str) -> None:
        check_bridge_name(conf, where)

    # ---- ADD -------------------------------------------------------------------------------------
    def conf_fields(self, conf: BridgeConfig) -> dict[str, Any]:
        return {"bridge": conf.bridge}

    def attach(self, req: Request, conf: BridgeConfig, node, pod, undo: Undo, ready: None) -> Result:
        from multiplex import netlink

        br, created = node.ensure_bridge(conf.bridge, mtu=conf.mtu, vlan_filtering=conf.vlan > 0)
        if created:
            netlink.sysctl.write(f"net/ipv6/conf/{br.name}/accept_ra", "0", missing_ok=True)
            undo.push(f"remove bridge {br.name}", lambda: _remove_bridge_if_unused(node, br))
        if conf.bridge == default_bridge_name(conf.network):
            claim_default_bridge(node, br, conf.network)

        host_name = host_veth_name(req.container_id, req.ifname)
        if node.delete_link(host_name):  # a stale pair of this very attachment (a crashed ADD)
            req.ctx.log.warning("replaced a stale host veth", link=host_name, container=req.container_id,
                              ifname=req.ifname)
        mtu = conf.mtu or br.mtu or None
        host, peer = netlink.make_veth_pair(node, pod, host_name, req.ifname, mtu=mtu, mac=conf.mac,
                                            alias=owner(req.container_id, req.ifname, conf.network), master=br)
        undo.push(f"delete veth {host_name}", lambda: node.delete_link(host_name))
        if conf.hairpin:
            node.set_hairpin(host)
        if conf.vlan:
            node.set_port_vlan(host, conf.vlan)
        claim_mac(node, br, host, peer.mac, conf)

        ipam = ipam_add(req, undo)

        result = Result(cni_version=req.cni_version)
        result.add_interface(Interface(name=br.name, mac=br.mac))
        result.add_interface(Interface(name=host.name, mac=host.mac))
        pod_index = result.add_interface(Interface(name=req.ifname, mac=peer.mac, sandbox=req.netns,
                                                   mtu=peer.mtu or mtu))
        gateways = gateways_for(conf, ipam)
        result.ips = [IPConfig(address=ip.address, gateway=gateways.get(n), interface=pod_index)
                      for n, ip in enumerate(ipam.ips)]
        result.routes = list(ipam.routes)
        if conf.is_default_gateway:
            result.routes += default_routes(result)
        result.dns = conf.dns or ipam.dns

        address_pod_interface(req, pod, peer, result.ips)

        # the node side: gateway addresses on the bridge, forwarding, masquerade
        if conf.is_gateway:
            gw_link = br
            if conf.vlan:
                gw_link = ensure_vlan_gateway(node, br, conf.vlan, mtu)
                result.add_interface(Interface(name=gw_link.name, mac=gw_link.mac))
            for ip in result.ips:
                if ip.gateway is not None:
                    node.add_address(gw_link, ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}"),
                                     exist_ok=True)
            enable_forwarding({ip.address.version for ip in result.ips if ip.gateway is not None})
        if conf.ip_masq:
            comment = owner(req.container_id, req.ifname, conf.network)
            nft.add_masquerade([ip.address for ip in result.ips], comment)
            undo.push(f"delete masquerade rules {comment}", lambda: nft.delete_masquerade(comment))

        add_pod_routes(pod, peer, result.routes, result.ips)

        # the bridge's MAC as it is now: an existing bridge whose MAC is not pinned (made by another
        # tool or an earlier version) may have moved when this port joined; one this call made has
        # its MAC pinned, so what it read then still holds
        if not created:
            now = node.link(br.name)
            if now is not None:
                result.interfaces[0].mac = now.mac
        return result

    # ---- DEL -------------------------------------------------------------------------------------
    def removed(self, req: Request, conf: BridgeConfig) -> None:
        if conf.ip_masq:
            nft.delete_masquerade(owner(req.container_id, req.ifname, conf.network))

    # ---- CHECK -----------------------------------------------------------------------------------
    def node_problems(self, req: Request, conf: BridgeConfig, node, prev: Result) -> list[Problem]:
        return check_node(node, conf, req, prev)

    # ---- GC, sweep -------------------------------------------------------------------------------
    def collect(self, req: Request, conf: BridgeConfig, keep) -> dict[str, Any]:
        """This network's attachments that the keep-list does not keep: their host veths (the pod
        ends go with them) and masquerade rules, found by alias and comment."""
        removed, rules = remove_owned(req, not_kept(keep, conf.network), f"stale attachments of {conf.network}")
        return {"veths": removed, "masquerade_rules": rules}

    def sweep_container(self, req: Request, cid: str) -> dict[str, Any]:
        """Every host veth and masquerade rule this plugin made for `cid`, whatever its network or
        interface, found by alias and comment."""
        removed, rules = remove_owned(req, of_container(cid), f"attachments of container {cid}")
        return {"veths": removed, "masquerade_rules": rules}


def remove_owned(req: Request, match, what: str) -> tuple[list[str], int]:
    """Delete the host veths whose alias and the masquerade rules whose comment `match` accepts.
    Returns (veths deleted, rules deleted). Rules are looked for only where nft is installed."""
    import shutil

    removed = remove_host_veths(req, HOST_PREFIX, match)
    rules = 0
    if shutil.which(nft.NFT):
        rules = nft.delete_rules(lambda r: bool(r.comment) and match(r.comment), what)
    return removed, rules


# ---- steps ---------------------------------------------------------------------------------------
def gateways_for(conf: BridgeConfig, ipam: Result) -> dict[int, Any]:
    """The gateway of each IP (by position): IPAM's, or with isGateway the subnet's first address."""
    out: dict[int, Any] = {}
    for n, ip in enumerate(ipam.ips):
        gw = ip.gateway
        if gw is None and conf.is_gateway:
            net = ip.address.network
            if net.num_addresses > 2:
                gw = net.network_address + 1
        if gw is not None and gw == ip.address.ip and conf.is_gateway:
            raise CNIError(INVALID_CONFIG, f"IPAM gave the pod the gateway address {gw}",
                           "field: ipam; allowed: a range that excludes the gateway address")
        if gw is not None:
            out[n] = gw
    return out


def default_routes(result: Result) -> list[Route]:
    """A default route via the gateway of each family that has one and no default route yet."""
    have = {r.dst.version for r in result.routes if r.dst.prefixlen == 0}
    out = []
    for ip in result.ips:
        v = ip.address.version
        if ip.gateway is not None and v not in have:
            out.append(Route(dst=ipaddress.ip_network("0.0.0.0/0" if v == 4 else "::/0"), gw=ip.gateway))
            have.add(v)
    return out


def enable_forwarding(versions: set[int]) -> None:
    from multiplex.netlink import sysctl

    if 4 in versions:
        sysctl.write("net/ipv4/ip_forward", "1")
    if 6 in versions:
        sysctl.write("net/ipv6/conf/all/forwarding", "1")


def ensure_vlan_gateway(node, br, vlan: int, mtu: Optional[int]):
    """isGateway on a VLAN: a veth pair in the node, one end an access port of `vlan` on the bridge,
    the other holding the gateway addresses (`<bridge>.<vlan>`). Shared by every attachment of that
    bridge and VLAN; made once, kept like the bridge."""
    gw_name, port_name = vlan_gateway_names(br.name, vlan)
    gw = node.link(gw_name)
    if gw is not None:
        return gw
    attrs: dict[str, Any] = {"mtu": mtu} if mtu else {}
    if not node.add_link(gw_name, "veth", f"create the VLAN {vlan} gateway {gw_name}", exist_ok=True,
                         peer={"ifname": port_name, **attrs}, **attrs):
        return node.require_link(gw_name)  # a concurrent ADD made it
    port = node.require_link(port_name)
    node.set_link(port, f"attach {port_name} to {br.name}", master=br.index, state="up")
    node.set_port_vlan(port, vlan)
    gw = node.require_link(gw_name)
    node.set_up(gw)
    return gw


def bridge_mark(network: str) -> str:
    """The alias of a network's default bridge: the network's name (its digest when over the
    kernel's 255 bytes)."""
    return network if len(network.encode()) <= 255 else nft.digest(network)


def claim_default_bridge(node, br, network: str) -> None:
    """A default bridge carries its network's name as alias, so a network whose name hashes to the
    same 8 hex (a tenant can search for one in minutes) is refused instead of joining another
    network's L2 domain. A bridge without alias (made by an earlier version, or by a concurrent
    ADD that has not named it yet) is named now."""
    mark = bridge_mark(network)
    if br.alias == mark:
        return
    if br.alias:
        raise CNIError(NETLINK_FAILURE, f"the default bridge name {br.name} of network {network} is taken by "
                       "another network's bridge (the 8-hex names collide); set `bridge` to a name of its own",
                       "field: bridge; allowed: a bridge name without the prefix " + BRIDGE_PREFIX)
    node.set_alias(br, mark)
    br.alias = mark


def claim_mac(node, br, port, mac: str, conf: BridgeConfig) -> None:
    """The pod's MAC as a static, sticky FDB entry on its bridge port (in its VLAN). The kernel adds
    it only when the bridge holds the MAC nowhere yet, which makes it the arbiter between concurrent
    ADDs: held on another port (another pod, the bridge itself) is code 103; held on this very port
    (learned already) is taken over."""
    if not mac:
        return
    if node.add_static_fdb(port, mac, conf.vlan):
        return
    if any(e.port != port.index for e in node.fdb_entries(br, mac) if e.vlan == conf.vlan):
        where = f"bridge {br.name}" + (f" (VLAN {conf.vlan})" if conf.vlan else "")
        if conf.mac:
            raise CNIError(ADDRESS_UNAVAILABLE, f"MAC address {mac} is already in use on {where}",
                           "field: runtimeConfig.mac; allowed: a MAC no other interface of this network uses, "
                           "or none (the kernel picks one)")
        raise CNIError(ADDRESS_UNAVAILABLE, f"the kernel-chosen MAC address {mac} is already in use on {where}; "
                       "try again", f"mac: {mac}")
    node.add_static_fdb(port, mac, conf.vlan, replace=True)


def _remove_bridge_if_unused(node, br) -> None:
    if not any(l.master == br.index for l in node.links()):
        node.delete_link(br.name)


def check_node(node, conf: BridgeConfig, req: Request, prev: Result) -> list[Problem]:
    """The node side of one attachment against the config and prevResult: the bridge, the host
    veth on it and up, hairpin, the VLAN, the gateway addresses."""
    br = node.link(conf.bridge)
    if br is None or br.kind != "bridge":
        return [("bridge", f"bridge {conf.bridge} is missing" if br is None else f"{conf.bridge} is not a bridge")]
    name = host_veth_name(req.container_id, req.ifname)
    host = node.link(name)
    if host is None:
        return [("host veth", f"host veth {name} is missing")]
    problems: list[Problem] = []
    if host.master != br.index:
        problems.append(("bridge", f"host veth {name} is not attached to bridge {conf.bridge}"))
    if not host.up:
        problems.append(("host veth", f"host veth {name} is down"))
    if conf.hairpin and not node.hairpin(host):
        problems.append(("hairpinMode", f"hairpin mode is off on {name}"))
    if conf.vlan and conf.vlan not in node.port_vlans(host):
        problems.append(("vlan", f"VLAN {conf.vlan} is not on bridge port {name}"))
    if conf.is_gateway and not conf.vlan:
        have = {a.interface for a in node.addresses(br)}
        for ip in prev.ips:
            if ip.gateway is not None:
                want = ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}")
                if want not in have:
                    problems.append(("isGateway", f"gateway address {want} is missing on bridge {conf.bridge}"))
    return problems


plugin = BridgePlugin()


def main() -> None:
    skel.main(plugin)
