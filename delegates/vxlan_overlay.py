"""`multiplex-vxlan-overlay`: one L2 network across every node, over VXLAN.

ADD, as its steps: validate the config; find the underlay (`underlayInterface`, else the interface
that routes to the first static peer, else the default route's, else the first up interface with
a global address) and this node's address on it (`underlayFamily`, else the peers' family, else
IPv4 when it has one); the MTU (underlay - 50 over IPv4, - 70 over IPv6; `mtu` may lower it,
never raise it); refuse a VNI the admin's settings do not grant the network's namespace
(delegates/vxlan_settings.py: /etc/multiplex/vxlan.json, no file = no restriction) and a VNI
another network holds on this node; make the network's bridge and
its VXLAN device (`local` = the underlay address) on it, or find them; a veth pair whose pod end is
born in the pod netns, host end on the bridge; ask IPAM; address, bring up and route the pod end.
A failure undoes what this call made (veth, lease, a bridge and VXLAN device it created). The
network's own lock (`network_lock`) is held from finding the bridge to the veth being its port, and
by that undo: it never removes a bridge a concurrent ADD of the network is putting its veth on.

Two ways to find the peers (a choice per network, made by the config):
- **programmed** (no `peers`): learning off, proxy on. The node daemon's `vxlan-peers` controller
  (multiplex/controllers/vxlan_peers.py) finds this device, publishes its VTEP MAC in the node
  registry, and programs from every node's facts and the pods' network-status: one all-zeros FDB
  entry per peer (broadcast by head-end replication), an FDB and a neighbour entry per remote pod
  (ARP/ND answered on the node, never flooded across the mesh).
- **static** (`peers`: underlay addresses): learning on, proxy off; ADD appends one all-zeros FDB
  entry per peer and the kernel learns the rest, so the delegate works without the daemon (a
  plain runtime, Multus, a test).

Names: the bridge `mpxvb-` + 8 hex and the VXLAN device `mpxvx-` + 8 hex of the network name;
the device's alias is `vxlan-overlay/<network>` (how the controller maps it to its network, and
how a hash collision between two networks is refused). Host veths are named and marked like
multiplex-bridge's (delegates/bridge.py), so DEL, GC and the cache-less sweep find them the same
way. DEL removes the veth and the lease; the bridge and the VXLAN device stay (removing them
here would race a concurrent ADD of the same network): the node daemon's vxlan-peers controller
removes them under the GC lock held exclusive (every ADD holds it shared, `add_lock`: also a
direct call by a runtime or Multus) once no pod port was on the bridge for
`--overlay-idle-grace` seconds (multiplex/controllers/overlay_devices.py, docs/controllers.md).
Config fields: docs/vxlan-overlay.md, schemas/vxlan-overlay.json.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from multiplex.cni import skel
from multiplex.cni.errors import CNIError, NETLINK_FAILURE, TRY_AGAIN_LATER, invalid_config
from multiplex.cni.request import Request
from multiplex.cni.types import DNS, Interface, IPConfig, Result
from delegates.bridge import host_veth_name, owner, remove_owned
from delegates.skeleton import VethDelegate, of_container
from delegates.vxlan_settings import check_vni_granted
from delegates.steps import Problem, Undo, not_kept, add_pod_routes, address_pod_interface, ipam_add

TYPE_NAME = "multiplex-vxlan-overlay"
BRIDGE_PREFIX = "mpxvb-"
VXLAN_PREFIX = "mpxvx-"
ALIAS_PREFIX = "vxlan-overlay/"
DEFAULT_PORT = 4789


# ---- names ---------------------------------------------------------------------------------------
def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def bridge_name(network: str) -> str:
    return BRIDGE_PREFIX + _hex(network)


def vxlan_name(network: str) -> str:
    return VXLAN_PREFIX + _hex(network)


def device_alias(network: str) -> str:
    """The VXLAN device's alias: `vxlan-overlay/<network>` (a digest when over the kernel's 255 bytes)."""
    text = ALIAS_PREFIX + network
    return text if len(text.encode()) <= 255 else ALIAS_PREFIX + hashlib.sha256(network.encode()).hexdigest()


def network_of_alias(alias: str) -> Optional[str]:
    return alias[len(ALIAS_PREFIX):] if alias.startswith(ALIAS_PREFIX) else None


# ---- config --------------------------------------------------------------------------------------
@dataclass
class OverlayConfig:
    network: str
    vni: int = 0
    port: int = DEFAULT_PORT
    underlay_interface: str = ""
    underlay_family: int = 0                  # 0: the peers', else IPv4 when the underlay has it
    mtu: Optional[int] = None
    peers: list[Any] = field(default_factory=list)   # ip addresses (static mode)
    encrypt: bool = False                    # VXLAN between nodes rides WireGuard
    mac: str = ""
    dns: Optional[DNS] = None

    @property
    def static(self) -> bool:
        return bool(self.peers)

    @property
    def bridge(self) -> str:
        return bridge_name(self.network)

    @property
    def device(self) -> str:
        return vxlan_name(self.network)

    @classmethod
    def parse(cls, conf: dict) -> "OverlayConfig":
        """Read a config checked against schemas/vxlan-overlay.json (ADD, CHECK), or leniently
        (DEL, GC, STATUS: only the name must be there)."""
        name = conf.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_config("the config needs a network name", "$.name", "a non-empty string")
        rc = conf.get("runtimeConfig") if isinstance(conf.get("runtimeConfig"), dict) else {}
        dns = DNS.from_dict(conf["dns"]) if isinstance(conf.get("dns"), dict) else None
        fam = {"ipv4": 4, "ipv6": 6}.get(str(conf.get("underlayFamily") or "").lower(), 0)
        return cls(network=name, vni=int(conf.get("vni") or 0), port=int(conf.get("port") or DEFAULT_PORT),
                   underlay_interface=str(conf.get("underlayInterface") or ""), underlay_family=fam,
                   mtu=conf.get("mtu") or None, peers=lenient_peers(conf.get("peers")),
                   encrypt=conf.get("encrypt") == "wireguard",
                   mac=str(rc.get("mac") or "").lower().replace("-", ":"),
                   dns=dns if dns is not None and not dns.empty() else None)


def lenient_peers(value: Any) -> list[Any]:
    """The peers for `parse`: validate() refused a bad list already for ADD and CHECK; DEL, GC and
    STATUS do not use the peers, and must not fail on a list a stricter release refuses."""
    try:
        return parse_peers(value)
    except CNIError:
        return []


def parse_peers(value: Any, where: str = "$") -> list[Any]:
    """The static peers as addresses; code 7 naming `peers[i]` for one that is not a unicast
    address (not an address; unspecified, multicast, loopback, link-local, the limited broadcast
    255.255.255.255, an IPv4-mapped IPv6 address), and for a list mixing IPv4 and IPv6 (one VXLAN
    device speaks one underlay family). Their number is the schema's (maxItems 64)."""
    if not value:
        return []
    if not isinstance(value, list):
        raise invalid_config("peers must be a list of underlay addresses", f"{where}.peers",
                             "a list of IPv4 or IPv6 addresses")
    out = []
    for i, text in enumerate(value):
        try:
            ip = ipaddress.ip_address(str(text).strip()) if isinstance(text, str) else None
        except ValueError:
            ip = None
        if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
            ip = None    # ::ffff:a.b.c.d: an IPv4 peer in IPv6 clothes (the device speaks one family)
        if (ip is None or ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local
                or ip == ipaddress.IPv4Address("255.255.255.255")):
            raise invalid_config(f"peer {text!r} is not a unicast IP address", f"{where}.peers[{i}]",
                                 "an underlay address of another node, like 198.19.0.12 or fd00:19::12")
        if out and ip.version != out[0].version:
            raise invalid_config(f"peer {ip} is IPv{ip.version} and peer {out[0]} is IPv{out[0].version}: one "
                                 "network's peers share one underlay family", f"{where}.peers[{i}]",
                                 f"IPv{out[0].version} addresses only")
        out.append(ip)
    return out


# ---- the underlay --------------------------------------------------------------------------------
@dataclass
class Underlay:
    link: Any                 # multiplex.netlink.Link
    local: Any                # this node's address on it (the VXLAN `local`)
    mtu: int                  # the most a pod interface may have

    @property
    def family(self) -> int:
        return self.local.version


def find_underlay(node, conf: OverlayConfig) -> Underlay:
    """The underlay interface, this node's address on it and the pod MTU, or code 7 naming the
    field that would fix it. Reads only: nothing is made before this has passed."""
    from multiplex.netlink import AF_INET, AF_INET6
    from multiplex.netlink import vxlan, wireguard

    link = None
    if conf.underlay_interface:
        link = node.link(conf.underlay_interface)
        if link is None:
            raise invalid_config(f"underlay interface {conf.underlay_interface} does not exist in {node.where}",
                                 "$.underlayInterface", "an interface of this node that reaches the other nodes, "
                                 "or leave it out (the interface routing to the peers, else the default route's)")
    elif conf.peers:
        link = vxlan.route_link(node, conf.peers[0])
        if link is None:
            raise invalid_config(f"no route to peer {conf.peers[0]} in {node.where}", "$.peers[0]",
                                 "an underlay address this node reaches, or name underlayInterface")
    else:
        link = node.default_route_link(AF_INET) or node.default_route_link(AF_INET6)
        if link is None:
            for candidate in node.links():
                if candidate.up and candidate.name != "lo" and (vxlan.global_addresses(node, candidate, 4)
                                                                or vxlan.global_addresses(node, candidate, 6)):
                    link = candidate
                    break
        if link is None:
            raise invalid_config(f"no underlay interface in {node.where}: no default route and no up interface "
                                 "with a global address", "$.underlayInterface", "the interface between the nodes")
    family = conf.underlay_family or (conf.peers[0].version if conf.peers else 0)
    if not family:
        family = 4 if vxlan.global_addresses(node, link, 4) else 6
    addrs = vxlan.global_addresses(node, link, family)
    if not addrs:
        raise invalid_config(f"underlay interface {link.name} has no global IPv{family} address",
                             "$.underlayFamily" if conf.underlay_family else "$.underlayInterface",
                             f"an interface with an IPv{family} address, or the other underlayFamily")
    for i, peer in enumerate(conf.peers):
        if peer.version != family:
            raise invalid_config(f"peer {peer} is IPv{peer.version}; the underlay address {addrs[0]} is IPv{family}",
                                 f"$.peers[{i}]", f"IPv{family} addresses, or underlayFamily ipv{peer.version}")
    cost = vxlan.overhead(family) + (wireguard.OVERHEAD[family] if conf.encrypt else 0)
    most = link.mtu - cost
    if conf.mtu and conf.mtu > most:
        how = f"VXLAN's {vxlan.overhead(family)} bytes" + (f" and WireGuard's {wireguard.OVERHEAD[family]}"
                                                            if conf.encrypt else "")
        raise invalid_config(f"mtu {conf.mtu} is above {most}, the most the underlay {link.name} (MTU {link.mtu}) "
                             f"leaves after {how} over IPv{family}", "$.mtu", f"at most {most}, or leave mtu out")
    return Underlay(link=link, local=addrs[0], mtu=conf.mtu or most)


def check_vni_free(node, conf: OverlayConfig) -> None:
    """Code 7 naming `vni` when another network's VXLAN device on this node holds the VNI (on the
    same port), or when this network's device has another VNI, port or mode than the config; and
    when the VNI and port are the node's own (bgp-routed's CrossSubnet device), even before that
    device exists."""
    from multiplex.netlink import vxlan

    reserved = node_reserved_vni()
    if reserved == (conf.vni, conf.port):
        raise invalid_config(f"VNI {conf.vni} on UDP port {conf.port} is the node's own (bgp-routed's crossSubnet "
                             "device, in the BGP settings): an overlay network on it would receive the cluster "
                             "network's traffic between subnets", "$.vni", "another VNI")

    for dev in vxlan.vxlan_devices(node):
        mine = dev.link.name == conf.device
        if mine:
            theirs = network_of_alias(dev.link.alias)
            if theirs is not None and dev.link.alias != device_alias(conf.network):
                raise CNIError(NETLINK_FAILURE, f"the VXLAN device name {conf.device} of network {conf.network} is "
                               f"taken by network {theirs} (the 8-hex names collide)", f"link: {conf.device}")
            if dev.vni != conf.vni:
                raise invalid_config(f"network {conf.network} already has VNI {dev.vni} on this node "
                                     f"(device {dev.link.name}), not {conf.vni}", "$.vni",
                                     f"{dev.vni}, as the network's other attachments")
            if dev.port != conf.port:
                raise invalid_config(f"network {conf.network} already uses UDP port {dev.port} on this node, not "
                                     f"{conf.port}", "$.port", str(dev.port))
            if dev.learning != conf.static:
                raise invalid_config(f"network {conf.network} is already attached on this node "
                                     + ("with static peers" if dev.learning else "with peers from the node daemon"),
                                     "$.peers", "the same peers setting as the network's other attachments")
        elif dev.vni == conf.vni and dev.port == conf.port:
            other = network_of_alias(dev.link.alias) or f"device {dev.link.name}"
            raise invalid_config(f"VNI {conf.vni} is already used on this node by network {other} "
                                 f"(device {dev.link.name})", "$.vni",
                                 "a VNI no other network of this node uses: one VNI is one L2 domain")


def node_reserved_vni() -> Optional[tuple[int, int]]:
    """(VNI, port) of bgp-routed's CrossSubnet VXLAN device as the admin's BGP settings file sets
    them (multiplex/bgp/settings.py), or None: no file, a bad one (the controller reports it), or
    encapsulation off."""
    from multiplex.bgp import settings

    path = settings.settings_path()
    try:
        s = settings.load(path)
    except (OSError, ValueError):
        return None
    return (s.vxlan_vni, s.vxlan_port) if s.cross_subnet == "vxlan" else None


def check_port_is_not_the_nodes(port: Any, where: str = "$") -> None:
    """The VXLAN device listens on its UDP port on every address of the node: a NAD may not take
    WireGuard's, which encryption needs (privileged ports, the node's DNS, NTP, DHCP, IPsec, are
    below the schema's minimum of 1024)."""
    from multiplex.netlink.wireguard import LISTEN_PORT

    if port == LISTEN_PORT:
        raise invalid_config(f"UDP port {port} is the node's WireGuard port: the VXLAN device would listen on it "
                             "on every node address", f"{where}.port",
                             f"1024 to 65535 except {LISTEN_PORT}; 4789 (the default) or 8472")


# ---- the plugin ----------------------------------------------------------------------------------
class VxlanOverlayPlugin(VethDelegate):
    type_name = TYPE_NAME
    label = "vxlan-overlay"
    capabilities = frozenset({"ips", "mac"})
    schema = "vxlan-overlay"
    config_class = OverlayConfig
    host_veth_name = staticmethod(host_veth_name)

    def validate_fields(self, conf: dict, where: str) -> None:
        parse_peers(conf.get("peers"), where)
        check_port_is_not_the_nodes(conf.get("port"), where)
        check_vni_granted(str(conf.get("name") or ""), conf.get("vni"), where)
        if conf.get("encrypt") and conf.get("peers"):
            raise invalid_config("encrypt needs the node daemon's peers (it publishes and learns their public keys); "
                                 "static peers cannot be encrypted", f"{where}.encrypt",
                                 "leave peers out (the vxlan-peers controller finds the peers), or leave encrypt out")

    # ---- ADD -------------------------------------------------------------------------------------
    def add_lock(self, req: Request):
        return add_lock(req)

    def prepare(self, req: Request, conf: OverlayConfig, node) -> Underlay:
        """The underlay, and refusals before anything is made: a VNI another network uses, a port
        whose encryption differs."""
        underlay = find_underlay(node, conf)
        check_vni_free(node, conf)
        check_port_encryption(node, conf, underlay)
        return underlay

    def added(self, req: Request, conf: OverlayConfig) -> None:
        tell_controller(conf.network)

    def conf_fields(self, conf: OverlayConfig) -> dict[str, Any]:
        return {"vni": conf.vni, "device": conf.device}

    def add_fields(self, req: Request, conf: OverlayConfig, ready: Underlay) -> dict[str, Any]:
        return {**super().add_fields(req, conf, ready), "mtu": ready.mtu}

    def attach(self, req: Request, conf: OverlayConfig, node, pod, undo: Undo, underlay: Underlay) -> Result:
        from multiplex import netlink

        with network_lock(req, conf.network):  # until the veth is a port: see network_lock
            br, vx = ensure_overlay(req, conf, underlay, node, undo)
            host_name = host_veth_name(req.container_id, req.ifname)
            if node.delete_link(host_name):  # a stale pair of this very attachment (a crashed ADD)
                req.ctx.log.warning("replaced a stale host veth", link=host_name, container=req.container_id)
            host, peer = netlink.make_veth_pair(node, pod, host_name, req.ifname, mtu=underlay.mtu, mac=conf.mac,
                                                alias=owner(req.container_id, req.ifname, conf.network), master=br)
            undo.push(f"delete veth {host_name}", lambda: node.delete_link(host_name))

        ipam = ipam_add(req, undo)

        result = Result(cni_version=req.cni_version)
        result.add_interface(Interface(name=br.name, mac=br.mac))
        result.add_interface(Interface(name=host.name, mac=host.mac))
        pod_index = result.add_interface(Interface(name=req.ifname, mac=peer.mac, sandbox=req.netns,
                                                   mtu=underlay.mtu))
        result.ips = [IPConfig(address=ip.address, gateway=ip.gateway, interface=pod_index) for ip in ipam.ips]
        result.routes = list(ipam.routes)
        result.dns = conf.dns or ipam.dns
        address_pod_interface(req, pod, peer, result.ips)
        add_pod_routes(pod, peer, result.routes, result.ips)
        return result

    # ---- CHECK -----------------------------------------------------------------------------------
    def node_problems(self, req: Request, conf: OverlayConfig, node, prev: Result) -> list[Problem]:
        return check_node(node, conf, req)

    # ---- STATUS, GC ------------------------------------------------------------------------------
    def ready(self, req: Request, conf: OverlayConfig) -> None:
        """Code 50 when the network's underlay cannot be found (a config with a VNI only)."""
        from multiplex import netlink
        from multiplex.cni.errors import PLUGIN_NOT_AVAILABLE

        if req.config.get("vni"):
            with netlink.open_node() as node:
                try:
                    find_underlay(node, conf)
                except CNIError as e:
                    raise CNIError(PLUGIN_NOT_AVAILABLE, f"network {conf.network} cannot attach pods: {e.msg}",
                                   e.details) from None

    def collect(self, req: Request, conf: OverlayConfig, keep) -> dict[str, list[str]]:
        """This network's attachments the keep-list does not keep: their host veths (found by
        alias, as multiplex-bridge finds its own)."""
        removed, _ = remove_owned(req, not_kept(keep, conf.network), f"stale attachments of {conf.network}")
        return {"veths": removed}

    def sweep_container(self, req: Request, cid: str) -> dict[str, list[str]]:
        """Every host veth of `cid` (by alias)."""
        removed, _ = remove_owned(req, of_container(cid), f"attachments of container {cid}")
        return {"veths": removed}


# ---- steps ---------------------------------------------------------------------------------------
def ensure_overlay(req: Request, conf: OverlayConfig, underlay: Underlay, node, undo: Undo):
    """The network's bridge with its VXLAN device as a port, both up (made when missing; a
    concurrent ADD making them too is fine). Static peers get their all-zeros FDB entries."""
    from multiplex import netlink
    from multiplex.netlink import vxlan

    if conf.encrypt:
        ensure_encryption(req, conf, underlay, node, undo)
    br, created = node.ensure_bridge(conf.bridge, mtu=underlay.mtu)
    if created:
        netlink.sysctl.write(f"net/ipv6/conf/{br.name}/accept_ra", "0", missing_ok=True)
        undo.push(f"remove bridge {br.name}", lambda: remove_overlay_if_unused(req, node, conf))
    made = vxlan.add_vxlan(node, conf.device, vni=conf.vni, port=conf.port, local=underlay.local,
                           underlay=underlay.link, learning=conf.static, proxy=not conf.static, mtu=underlay.mtu,
                           alias=device_alias(conf.network))
    if made:
        undo.push(f"remove VXLAN device {conf.device}", lambda: remove_overlay_if_unused(req, node, conf))
    vx = node.require_link(conf.device)
    if vx.master != br.index or not vx.up:
        node.set_link(vx, f"attach {vx.name} to {br.name}", master=br.index, state="up")
    if conf.static:
        for peer in conf.peers:
            vxlan.add_remote(node, vx, vxlan.ZERO_MAC, str(peer))
    return br, vx


def add_lock(req: Request):
    """The GC lock, shared, for the whole ADD (multiplex/cni/lock.py): the vxlan-peers controller
    removes an idle network's bridge and VXLAN device only under it held exclusive, so it never
    removes them between this ADD finding them and putting the pod's veth on the bridge. The meta
    plugin's ADD holds it already (re-entrant: nothing more); a runtime or Multus calling this
    delegate directly takes it here, in the same lock file (the call's state root)."""
    from multiplex.cni.lock import DEFAULT_TIMEOUT, default_path, gc_lock

    return gc_lock(False, timeout=req.time_left(DEFAULT_TIMEOUT), path=default_path(req.ctx.state_dir))


def check_port_encryption(node, conf: OverlayConfig, underlay: Underlay) -> None:
    """One UDP port is encrypted for every network on it, or for none (the rule that sends VXLAN
    through WireGuard matches the port): code 7 naming `port` when this network would mix them."""
    from multiplex.netlink import vxlan, wireguard

    encrypted = (underlay.family, conf.port) in wireguard.encrypted_ports(node)
    if conf.encrypt == encrypted:
        return
    others = [d for d in vxlan.vxlan_devices(node) if d.port == conf.port and d.link.name != conf.device
              and d.local is not None and d.local.version == underlay.family]
    if conf.encrypt and not others:
        return
    other = network_of_alias(others[0].link.alias) if others else None
    raise invalid_config(f"UDP port {conf.port} carries {'unencrypted' if conf.encrypt else 'encrypted'} VXLAN on this "
                         f"node (network {other or 'of another overlay'}); one port is encrypted for every network "
                         "on it or for none", "$.port", "another port for this network")


def ensure_encryption(req: Request, conf: OverlayConfig, underlay: Underlay, node, undo: Undo) -> None:
    """The node's WireGuard device (key pair in the state dir) and the rule sending this network's
    VXLAN port through it (multiplex/netlink/wireguard.py). The vxlan-peers controller adds the
    peers, their routes, and publishes the public key."""
    from multiplex.netlink import wireguard
    from multiplex.util.state import root

    dev, created = wireguard.ensure_device(node, root(req.ctx.state_dir),
                                           underlay.link.mtu - wireguard.OVERHEAD[underlay.family])
    if created:
        undo.push(f"remove WireGuard device {dev.name}", lambda: node.delete_link(wireguard.DEVICE))
    if wireguard.ensure_port_rule(node, underlay.family, conf.port):
        undo.push(f"remove the rule for port {conf.port}",
                  lambda: wireguard.delete_port_rule(node, underlay.family, conf.port))


#: the networks' locks, one byte per network (as multiplex/cni/lock.py locks containers)
NETWORK_LOCKS = "vxlan-networks.lock"


def network_lock_path(state_dir: Optional[str] = None) -> str:
    from multiplex.util import state

    return os.path.join(state.root(state_dir), "locks", NETWORK_LOCKS)


@contextmanager
def network_lock(req: Request, network: str) -> Iterator[None]:
    """The network's own lock, across processes and threads: an ADD holds it from finding (or
    making) the network's bridge and VXLAN device until its veth is a port of the bridge, and the
    undo of a failed first ADD holds it to see that no pod port is on the bridge and remove both.
    Without it, such an undo could remove the bridge while a concurrent ADD of the same network
    is between the two (both hold the GC lock shared, which orders them against GC, not against
    each other). Chosen over leaving unused devices to the daemon's idle collection: that runs only
    where the daemon does, and a runtime may call this plugin without one. The lock is one byte of
    `<state root>/locks/vxlan-networks.lock` per network (re-entrant in a thread; order: the GC
    lock, then this). Code 11 naming the network when it is not free within the call's deadline."""
    from multiplex.cni.lock import DEFAULT_TIMEOUT, container_lock

    with ExitStack() as held:
        try:
            held.enter_context(container_lock(network, timeout=req.time_left(DEFAULT_TIMEOUT),
                                              path=network_lock_path(req.ctx.state_dir)))
        except CNIError as e:
            if e.code != TRY_AGAIN_LATER:
                raise
            raise CNIError(TRY_AGAIN_LATER, f"another CNI call still holds the lock of network {network} "
                           "(making its bridge and VXLAN device, or removing them)", e.details) from None
        yield


def remove_overlay_if_unused(req: Request, node, conf: OverlayConfig) -> None:
    """Undo of a failed first ADD: the bridge and VXLAN device go when no pod port is on the bridge,
    seen and removed under the network's lock (network_lock). When the lock stays busy past the
    call's deadline the devices stay (the Undo logs it); the daemon's idle collection takes them."""
    with network_lock(req, conf.network):
        br = node.link(conf.bridge)
        if br is not None and any(l.master == br.index and l.name != conf.device for l in node.links()):
            return
        node.delete_link(conf.device)
        if br is not None:
            node.delete_link(conf.bridge)


def check_node(node, conf: OverlayConfig, req: Request) -> list[Problem]:
    """The node side of one attachment: the bridge, the VXLAN device on it with the config's VNI,
    the host veth on the bridge and up."""
    from multiplex.netlink import vxlan

    br = node.link(conf.bridge)
    if br is None or br.kind != "bridge":
        return [("bridge", f"bridge {conf.bridge} is missing")]
    problems: list[Problem] = []
    dev = vxlan.vxlan_device(node, conf.device)
    if dev is None:
        problems.append(("vni", f"VXLAN device {conf.device} is missing"))
    else:
        if dev.vni != conf.vni:
            problems.append(("vni", f"VXLAN device {conf.device} has VNI {dev.vni}, not {conf.vni}"))
        if dev.link.master != br.index or not dev.link.up:
            problems.append(("vni", f"VXLAN device {conf.device} is not up on bridge {conf.bridge}"))
    name = host_veth_name(req.container_id, req.ifname)
    host = node.link(name)
    if host is None:
        problems.append(("host veth", f"host veth {name} is missing"))
    elif host.master != br.index or not host.up:
        problems.append(("host veth", f"host veth {name} is not up on bridge {conf.bridge}"))
    return problems


def tell_controller(network: str) -> None:
    """In the node daemon, wake the vxlan-peers controller now (a new device is published and
    programmed at once, not at the next resync). Outside it (the module is not loaded): nothing."""
    peers = sys.modules.get("multiplex.controllers.vxlan_peers")
    if peers is not None:
        peers.device_changed(network)


plugin = VxlanOverlayPlugin()


def main() -> None:
    skel.main(plugin)
