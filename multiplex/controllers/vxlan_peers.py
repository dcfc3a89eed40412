"""vxlan-peers: the node daemon keeps every vxlan-overlay network's peers programmed, never learned.

For each VXLAN device the vxlan-overlay delegate made on this node in programmed mode (alias
`vxlan-overlay/<network>`, learning off, proxy on; delegates/vxlan_overlay.py):

- **publish**: `vxlan/<network>` = {"vtepMAC", "vni", "port"} among this node's facts, through the
  node registry (multiplex/controllers/node_registry.py); withdrawn when the device is gone.
- **peers**: every other node whose facts carry `vxlan/<network>` with the same VNI, at its
  underlay address of the device's family, gets one all-zeros FDB entry (head-end replication of
  broadcast, multicast and unknown unicast).
- **remote pods**: every pod on such a peer whose network-status names the network (`ns/name` is
  the network `ns.name`, the config name multiplex gives a NAD's delegates) gets an FDB entry
  (its MAC -> its node's address) and a neighbour entry per address (IP -> MAC) on the device.
  With proxy mode on, the kernel answers ARP and neighbour solicitations for remote pods from
  those entries and drops what it cannot answer: ARP and ND never flood the mesh.
- **trust**: a network-status is the pod's to edit (whoever may patch pods in its namespace can),
  so a claim is programmed only when the pod's namespace may use the network (a NAD network
  `ns/name` only from namespace `ns`, or from any when `ns` is in the admin's `globalNamespaces` or
  `namespaceIsolation` is off: read from the installed multiplex config, cni_settings.py), the pod
  runs on a node publishing this network's VTEP (its `spec.nodeName`), the IPAM vouches for each
  IP (its IPBlock records this pod; or, for a block the cluster IPAM does not keep, one of no IPPool
  recording nothing (static per-node ranges, the lab's), is the pod's node's block: an IP in no
  IPBlock, or free in the cluster IPAM's, is never programmed, so the programmed mode needs the
  cluster IPAM's blocks), and no other such pod
  claims the same IP or MAC (a disputed one is programmed for neither). Claims not programmed are
  logged and counted in `multiplex_vxlan_refused_claims{reason=namespace|ipam|conflict}`. See
  `desired`.
- everything else permanent on the device is removed: a node that left (its Node, or its facts,
  gone), a pod deleted or moved.

Encryption (`encrypt: wireguard`, multiplex/netlink/wireguard.py): when this node has the
WireGuard device, its public key is published as the fact `wireguard` = {"publicKey", "port"}, and
for every peer of an encrypted VXLAN port that publishes one, the device gets a WireGuard peer
(its public key, endpoint and only allowed IP its underlay address) and table 47890 a route to
that address through the device. A private key rotated in the state dir (`rotate_key`) is put on
the device and published at the next pass; peers replace the old public key when they see it.

- **collection**: a network whose bridge has had no pod port for `idle_grace` s (`--overlay-idle-grace`,
  default 30: a pod restart never churns the devices) loses its bridge and VXLAN device under the
  exclusive GC lock (`collect_unused`), its fact is withdrawn, and the other nodes drop their
  entries for this node on it; WireGuard's rule, table and device go with the last encrypted
  network. The next ADD makes everything again.

One key, "all": a reconcile reads the devices, the registry's view and the pods, and makes the
kernel's tables equal to that (adds, replaces, deletes; nothing when equal). It runs on pod events
(the cluster's pods: a kind `vxlan-pods` this controller registers, since the daemon's own `pods`
kind holds only this node's), on every node-facts change (a registry listener), when the delegate
made a device in this process (`device_changed`), and at each resync (5 s): an entry deleted by
hand is back within that period.

Choice: pods are read from their network-status (what multiplex wrote after ADD) rather than from
IPAM's leases, because it carries the MAC, which the FDB needs, and because it is what a user
reads too.
"""
from __future__ import annotations

import ipaddress
import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ..daemon.controller import Controller, DaemonContext

NAME = "vxlan-peers"
PODS_KIND = "vxlan-pods"
#: the cluster IPAM's IPBlocks, under the kind name the bgp controller registers them (register_kinds)
from .bgp import BLOCKS_KIND, POOLS_KIND  # noqa: E402
FACT_PREFIX = "vxlan/"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

_live: "weakref.WeakSet[VxlanPeers]" = weakref.WeakSet()


def device_changed(network: str = "") -> None:
    """Called by the delegate (in the daemon's process) after an ADD: reconcile now."""
    for ctrl in list(_live):
        ctrl.enqueue("all")


@dataclass(frozen=True)
class Device:
    """One programmed-mode overlay device of this node."""
    network: str
    link: Any                  # multiplex.netlink.Link
    vni: int
    port: int
    family: int                # the underlay family of its `local`


@dataclass
class Desired:
    peers: set[str]                      # underlay addresses for the all-zeros entry
    fdb: dict[str, str]                  # pod MAC -> underlay address
    neighbours: dict[str, str]           # pod IP -> pod MAC
    #: claims not programmed: (reason, pod `ns/name`, what) with reason "namespace" (the pod's
    #: namespace may not use the network) or "conflict" (an IP or MAC another pod claims too)
    refused: list[tuple[str, str, str]] = field(default_factory=list)


def status_network(name: str) -> str:
    """A network-status `name` as the network's config name: `ns/nad` -> `ns.nad`."""
    ns, sep, nad = name.partition("/")
    return f"{ns}.{nad}" if sep else name


def may_claim(pod_namespace: str, status_name: str, global_namespaces: Iterable[str] = (),
              isolation: bool = True) -> bool:
    """Whether a pod of `pod_namespace` may claim an address on the network network-status names
    `status_name`: a NAD's network (`ns/name`) only from its own namespace, or any namespace when
    `ns` is a global namespace or namespace isolation is off (the admin's `namespaceIsolation` /
    `globalNamespaces`, multiplex/controllers/cni_settings.py); a network without a namespace (the
    cluster's, from the meta plugin's config) from every pod."""
    ns, sep, _ = status_name.partition("/")
    return not sep or not isolation or ns == pod_namespace or ns in set(global_namespaces)


@dataclass(frozen=True)
class IpamBlock:
    """What the vouching needs of one IPBlock (multiplex/ipam/kube/model.py): its CIDR, its affine
    node, who holds each allocated address (`podNamespace/podName`), and whether the cluster IPAM
    keeps it (`managed`: its pool is an IPPool, or it records an allocation), so that an address it
    does not record is free."""
    cidr: Any                               # ipaddress network
    node: str
    holders: dict = field(default_factory=dict)   # address -> "ns/name"
    managed: bool = True


def ipam_blocks(objects: Iterable[dict], pools: Iterable[str] = ()) -> list[IpamBlock]:
    """The IPBlocks, most specific first; a malformed one is left out (it vouches for nothing).
    `pools`: the names of the cluster's IPPools (a block of one is the cluster IPAM's)."""
    from ..ipam.kube.model import Block

    pools = set(pools)
    out = []
    for obj in objects:
        try:
            b = Block.from_object(obj)
        except (ValueError, TypeError, AttributeError):
            continue
        out.append(IpamBlock(b.cidr, b.node, {a: f"{al.pod_namespace}/{al.pod_name}"
                                              for a, al in b.allocations.items()},
                             managed=bool(b.allocations) or b.pool in pools))
    return sorted(out, key=lambda b: -b.cidr.prefixlen)


def vouched(ip: str, pod: str, node: str, blocks: Iterable[IpamBlock]) -> bool:
    """Whether the IPAM vouches for `pod` (ns/name) on `node` holding `ip`: the most specific
    IPBlock containing it records the address as this pod's (borrowed addresses too), or, for a
    block the cluster IPAM does not keep (no IPPool's, no allocation recorded: static per-node
    ranges written as blocks, the lab's), the block is affine to the pod's node (which of its
    addresses a pod of that node holds is the node's word). An address in no block, recorded for
    another pod, or free in a block the cluster IPAM keeps (a tenant's network-status claiming an
    address its pod was never given, a released one say), is not vouched for."""
    addr = ipaddress.ip_address(ip)
    for b in blocks:
        if b.cidr.version == addr.version and addr in b.cidr:
            holder = b.holders.get(str(addr))
            return holder == pod if holder is not None else (not b.managed and b.node == node)
    return False


def pod_attachments(pod: dict, network: str, global_namespaces: Iterable[str] = (),
                    refused: Optional[list] = None, isolation: bool = True) -> Iterable[tuple[str, list[str]]]:
    """(MAC, addresses) of each interface of `pod` on `network`, from its network-status. An entry
    the pod's namespace may not claim (`may_claim`) is skipped, and noted in `refused`."""
    import json

    meta = pod.get("metadata") or {}
    text = (meta.get("annotations") or {}).get(STATUS_ANNOTATION)
    if not text:
        return
    try:
        entries = json.loads(text)
    except ValueError:
        return
    namespace = str(meta.get("namespace") or "")
    for e in entries if isinstance(entries, list) else []:
        name = str(e.get("name") or "") if isinstance(e, dict) else ""
        if not name or status_network(name) != network:
            continue
        if not may_claim(namespace, name, global_namespaces, isolation):
            if refused is not None:
                refused.append(("namespace", pod_key(pod), name))
            continue
        mac = str(e.get("mac") or "").lower()
        if not _MAC.match(mac):
            continue
        ips = []
        for ip in e.get("ips") or []:
            try:
                ips.append(str(ipaddress.ip_address(str(ip).split("/")[0])))
            except ValueError:
                continue
        yield mac, ips


def pod_key(pod: dict) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def desired(device: Device, me: str, nodes: dict, pods: list[dict],
            global_namespaces: Iterable[str] = (), blocks: Iterable[IpamBlock] = (),
            isolation: bool = True) -> Desired:
    """What `device` should hold, from every node's facts and every pod's network-status.

    A pod's network-status is the pod's to edit (anyone who may patch pods in its namespace can),
    so a claim counts only when (1) the pod's namespace may use the network (`may_claim`), (2) the
    pod runs on a node that publishes this network's VTEP with this VNI (its `spec.nodeName`, which
    the scheduler sets and nobody can change), this node included, and (3) no other pod makes a
    counted claim of the same IP or the same MAC: a disputed IP or MAC is programmed for neither
    (noted in `refused` as "conflict"), never last-claim-wins. This node's own pods are counted
    (a remote pod claiming a local pod's address is a conflict) but not programmed."""
    key = FACT_PREFIX + device.network
    blocks = list(blocks)
    where: dict[str, str] = {}
    for name, facts in nodes.items():
        if name == me:
            continue
        fact = facts.facts.get(key)
        if not isinstance(fact, dict) or fact.get("vni") != device.vni:
            continue
        addr = facts.address(device.family)
        if addr is not None:
            where[name] = str(addr)
    refused: list[tuple[str, str, str]] = []
    claims: list[tuple[str, str, str, list[str]]] = []      # (pod, node, MAC, IPs)
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if node not in where and node != me:
            continue
        who = pod_key(pod)
        for mac, ips in pod_attachments(pod, device.network, global_namespaces, refused, isolation):
            good = [ip for ip in ips if vouched(ip, who, node, blocks)]
            refused.extend(("ipam", who, ip) for ip in ips if ip not in good)
            claims.append((who, node, mac, good))
    mac_owners: dict[str, set[str]] = {}
    ip_owners: dict[str, set[tuple[str, str]]] = {}
    for who, _, mac, ips in claims:
        mac_owners.setdefault(mac, set()).add(who)
        for ip in ips:
            ip_owners.setdefault(ip, set()).add((who, mac))
    disputed_macs = {mac for mac, owners in mac_owners.items() if len(owners) > 1}
    disputed_ips = {ip for ip, owners in ip_owners.items() if len(owners) > 1}
    fdb: dict[str, str] = {}
    neighbours: dict[str, str] = {}
    for who, node, mac, ips in claims:
        if mac in disputed_macs:
            refused.append(("conflict", who, mac))
            continue
        if node != me:
            fdb[mac] = where[node]
        for ip in ips:
            if ip in disputed_ips:
                refused.append(("conflict", who, ip))
            elif node != me:
                neighbours[ip] = mac
    return Desired(peers=set(where.values()), fdb=fdb, neighbours=neighbours, refused=sorted(set(refused)))


def local_devices(h) -> list[Device]:
    """This node's overlay devices in programmed mode (learning off), by their alias."""
    from delegates.vxlan_overlay import network_of_alias
    from ..netlink import vxlan

    out = []
    for d in vxlan.vxlan_devices(h):
        network = network_of_alias(d.link.alias)
        if network is None or d.learning or d.local is None:
            continue
        out.append(Device(network=network, link=d.link, vni=d.vni, port=d.port, family=d.local.version))
    return out


def program(h, dev: Device, want: Desired) -> dict[str, int]:
    """Make the device's permanent FDB and neighbour entries equal to `want`. Returns counts of
    what changed (added, removed), for the log."""
    from ..netlink import vxlan

    added = removed = 0
    have = {(r.mac, r.dst) for r in vxlan.remote_fdb(h, dev.link) if r.permanent}
    wanted = {(vxlan.ZERO_MAC, p) for p in want.peers} | set(want.fdb.items())
    for mac, dst in sorted(wanted - have):
        vxlan.add_remote(h, dev.link, mac, dst)
        added += 1
    for mac, dst in sorted(have - wanted):
        if mac != vxlan.ZERO_MAC and want.fdb.get(mac) is not None:
            continue   # replaced above (a MAC has one destination)
        removed += vxlan.delete_remote(h, dev.link, mac, dst)
    neigh = {n.ip: n.mac for n in vxlan.permanent_neighbours(h, dev.link)}
    for ip, mac in sorted(want.neighbours.items()):
        if neigh.get(ip) != mac:
            vxlan.set_neighbour(h, dev.link, ip, mac)
            added += 1
    for ip in sorted(set(neigh) - set(want.neighbours)):
        removed += vxlan.delete_neighbour(h, dev.link, ip)
    return {"added": added, "removed": removed}


#: seconds an overlay's bridge must be seen without a pod port before its devices are removed
DEFAULT_IDLE_GRACE = 30.0
#: seconds the collection waits for the GC lock (ADDs in flight hold it shared); it tries again later
GC_LOCK_WAIT = 2.0


class VxlanPeers(Controller):
    name = NAME
    watches = (PODS_KIND, BLOCKS_KIND, POOLS_KIND)
    resync = 5.0

    def __init__(self, node_name: str, netns: Optional[str] = None, state_dir: Optional[str] = None,
                 idle_grace: float = DEFAULT_IDLE_GRACE, settings: Any = None):
        """`netns`: where the overlay devices are (None: the daemon's own namespace); `state_dir`:
        the node's state root, where the WireGuard key and the lock file live (None: the daemon's);
        `idle_grace`: seconds a network's bridge stays without a pod port before its devices go;
        `settings`: the installed config's settings (cni_settings.InstalledSettings; None: strict)."""
        self.node_name = node_name
        self.netns = netns
        self.state_dir = state_dir
        self.idle_grace = idle_grace
        self.settings = settings
        self.registry: Any = None
        self._published: set[str] = set()
        self._refused: dict[str, list] = {}
        self._gauge: Any = None
        self._idle_since: dict[str, float] = {}
        self._timer: Any = None
        self._timer_due = 0.0

    def setup(self, daemon: DaemonContext) -> None:
        super().setup(daemon)
        self.registry = daemon.controllers.get("node-registry")
        if self.registry is None:
            raise RuntimeError("vxlan-peers needs the node-registry controller (--controllers must include it)")
        self.registry.add_listener(lambda name, old, new: self.enqueue("all"))
        _live.add(self)

    def stop(self) -> None:
        _live.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def keys_for(self, kind: str, event: str, obj: dict) -> Iterable[str]:
        return ("all",)

    def reconcile(self, key: str) -> None:
        self.sync()

    def sync(self) -> None:
        from ..netlink.handle import Handle

        pods = self.daemon.objects.informer(PODS_KIND).list()
        pools = [str((p.get("metadata") or {}).get("name") or "")
                 for p in self.daemon.objects.informer(POOLS_KIND).list()]
        blocks = ipam_blocks(self.daemon.objects.informer(BLOCKS_KIND).list(), pools)
        nodes = self.registry.nodes()
        conf = self.settings.get() if self.settings is not None else None
        isolation = conf.namespace_isolation if conf is not None else True
        global_ns = conf.global_namespaces if conf is not None else ()
        with Handle(self.netns) as h:
            self.collect_unused(h)
            devices = local_devices(h)
            self.publish(devices)
            wanted = []
            for dev in devices:
                want = desired(dev, self.node_name, nodes, pods, global_ns, blocks, isolation)
                wanted.append((dev, want))
                self.report_refused(dev.network, want.refused)
                changed = program(h, dev, want)
                if changed["added"] or changed["removed"]:
                    self.daemon.log.info("vxlan peers programmed", network=dev.network, device=dev.link.name,
                                         vni=dev.vni, **changed)
            self.encrypt(h, wanted, nodes)

    def collect_unused(self, h) -> list[str]:
        """Remove the bridge and VXLAN device of every overlay network whose bridge has had no pod
        port for `idle_grace` s (as this controller saw it: the clock starts at the first pass that
        finds it idle, so a pod restart, DEL then ADD, never churns the devices), then WireGuard's
        parts no encrypted network needs. The check is repeated under the GC lock held exclusive
        (cni/lock.py: every ADD of the meta plugin holds it shared from before it reads its cache
        until its result is cached, and the delegate's ADD holds it too, in its call's state root,
        for a runtime or Multus calling it directly: delegates/vxlan_overlay.py add_lock), so no ADD is between
        finding the bridge and putting its veth on it. DEL does not take it and needs not: it only
        removes ports. Busy lock: tried again at the next pass. The names removed."""
        import time

        from . import overlay_devices as od

        now = time.monotonic()
        idle = {ov.network for ov in od.overlays(h) if not ov.ports}
        for network in list(self._idle_since):
            if network not in idle:
                del self._idle_since[network]
        due = []
        for network in sorted(idle):
            since = self._idle_since.setdefault(network, now)
            if now - since >= self.idle_grace:
                due.append(network)
            else:
                self.enqueue_later(since + self.idle_grace - now)
        if not due and not (od.orphan_bridges(h) or self._encryption_leftover(h)):
            return []
        from ..cni.errors import CNIError
        from ..cni.lock import gc_lock

        from contextlib import ExitStack

        removed: list[str] = []
        try:
            with ExitStack() as held:
                for path in self.lock_files():
                    held.enter_context(gc_lock(True, timeout=GC_LOCK_WAIT, path=path))
                for ov in od.overlays(h):
                    if ov.network in due and not ov.ports:
                        removed += od.remove_overlay(h, ov)
                        self._idle_since.pop(ov.network, None)
                for name in od.orphan_bridges(h):
                    if h.delete_link(name):
                        removed.append(name)
                removed += od.remove_unused_encryption(h)
        except CNIError as e:
            self.daemon.log.info("overlay collection waits for the GC lock", error=e.msg)
            self.enqueue_later(1.0)
            return removed
        if removed:
            self.daemon.log.info("unused overlay devices removed", networks=due, removed=removed)
        return removed

    def lock_files(self) -> list[str]:
        """The lock files ADDs on this node take the GC lock in: the daemon's state root's, and the
        installed multiplex config's `stateDir`'s when it names another (the meta plugin's calls
        use the config's)."""
        from ..cni.lock import default_path

        paths = [default_path(self.state_dir or self.daemon.state_dir)]
        conf = self.settings.get() if self.settings is not None else None
        if conf is not None and conf.state_dir and default_path(conf.state_dir) not in paths:
            paths.append(default_path(conf.state_dir))
        return sorted(paths)

    def _encryption_leftover(self, h) -> bool:
        """WireGuard's rule of a port no overlay uses, or its device with no rule left."""
        from . import overlay_devices as od
        from ..netlink import wireguard

        rules = wireguard.encrypted_ports(h)
        in_use = {(o.family, o.port) for o in od.overlays(h)}
        return bool(rules - in_use) or (not rules and h.link(wireguard.DEVICE) is not None)

    def enqueue_later(self, seconds: float) -> None:
        """A pass in `seconds` (not waiting for the resync), on a timer thread: one at a time, an
        earlier one replacing a later one."""
        import threading
        import time

        due = time.monotonic() + max(0.05, seconds) + 0.05
        if self._timer is not None and self._timer.is_alive() and self._timer_due <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = threading.Timer(due - time.monotonic(), self.enqueue, ("all",))
        self._timer.daemon = True
        self._timer.start()

    def report_refused(self, network: str, refused: list) -> None:
        """Claims not programmed: a warning when they change (not at every resync), and the gauge
        `multiplex_vxlan_refused_claims{network, reason}`."""
        if self._refused.get(network) != refused:
            for reason, pod, what in refused:
                if (reason, pod, what) not in self._refused.get(network, []):
                    self.daemon.log.warning("vxlan claim not programmed", network=network, reason=reason,
                                            pod=pod, claim=what)
            self._refused[network] = refused
        if self._gauge is None:
            self._gauge = _refused_gauge(self.daemon.metrics)
        if self._gauge is not None:
            for reason in ("namespace", "ipam", "conflict"):
                self._gauge.labels(network=network, reason=reason).set(
                    sum(1 for r in refused if r[0] == reason))

    def encrypt(self, h, wanted: list, nodes: dict) -> None:
        """The WireGuard side: this node's public key published (after a rotation: the new key on the
        device first), one WireGuard peer and one route per peer of an encrypted port."""
        from ..netlink import wireguard
        from ..util.state import root

        dev = h.link(wireguard.DEVICE)
        if dev is None:
            if "wireguard" in self._published:
                self.registry.unregister("wireguard")
                self._published.discard("wireguard")
            return
        netns = self.netns or ""
        key = wireguard.read_key(root(self.state_dir or self.daemon.state_dir))
        mine = wireguard.device_public_key(netns)
        if key is not None and wireguard.public_key(key) != mine:
            wireguard.set_private_key(netns, key)
            mine = wireguard.public_key(key)
            self.daemon.log.info("WireGuard key rotated", device=wireguard.DEVICE, public_key=mine)
        if mine:
            self.registry.register("wireguard", {"publicKey": mine, "port": wireguard.LISTEN_PORT})
            self._published.add("wireguard")
        ports = wireguard.encrypted_ports(h)
        want: dict[str, wireguard.Peer] = {}
        by_address = {}
        for name, facts in nodes.items():
            fact = facts.facts.get("wireguard")
            if name == self.node_name or not isinstance(fact, dict) or not isinstance(fact.get("publicKey"), str):
                continue
            for fam in (4, 6):
                addr = facts.address(fam)
                if addr is not None:
                    by_address[str(addr)] = (fact["publicKey"], int(fact.get("port") or wireguard.LISTEN_PORT))
        for d, w in wanted:
            if (d.family, d.port) not in ports:
                continue
            for addr in w.peers:
                if addr in by_address:
                    pub, port = by_address[addr]
                    want[pub] = wireguard.Peer(pub, addr, port)
        have = wireguard.peers(netns)
        for pub, peer in want.items():
            if have.get(pub) != peer:
                wireguard.set_peer(netns, peer)
        for pub in set(have) - set(want):
            wireguard.remove_peer(netns, pub)
        routed = wireguard.peer_routes(h)
        for peer in want.values():
            if peer.address not in routed:
                wireguard.add_peer_route(h, dev, peer.address)
        for addr in routed - {p.address for p in want.values()}:
            wireguard.delete_peer_route(h, addr)

    def publish(self, devices: list[Device]) -> None:
        """This node's VTEP per network among its facts; withdrawn for devices that are gone."""
        now = set()
        for dev in devices:
            key = FACT_PREFIX + dev.network
            self.registry.register(key, {"vtepMAC": dev.link.mac, "vni": dev.vni, "port": dev.port})
            now.add(key)
        for key in self._published - now - {"wireguard"}:
            self.registry.unregister(key)
        self._published = now | (self._published & {"wireguard"})


def _refused_gauge(metrics: Any) -> Any:
    """`multiplex_vxlan_refused_claims{network, reason}` on the daemon's registry (None without one)."""
    registry = getattr(metrics, "registry", None)
    if registry is None:
        return None
    from prometheus_client import Gauge

    try:
        return Gauge("multiplex_vxlan_refused_claims", "network-status claims of overlay addresses not programmed, "
                     "by network and reason (namespace: the pod's namespace may not use the network; conflict: "
                     "another pod claims the IP or MAC too)", ["network", "reason"], registry=registry)
    except ValueError:   # registered already (a second controller on one registry)
        return None


def register_pods_kind(objects: Any) -> None:
    """Watch every pod of the cluster as `vxlan-pods` (the daemon's `pods` are this node's only).
    A source without `register` (a test double) serves any kind it is asked for."""
    register = getattr(objects, "register", None)
    kinds = getattr(objects, "kinds", {})
    if register is None or PODS_KIND in kinds:
        return
    from ..k8s.objects import KubeKind, KubeObjects, LocalKind

    if isinstance(objects, KubeObjects):
        from ..k8s.client import PODS

        register(PODS_KIND, KubeKind(PODS))
    else:
        register(PODS_KIND, LocalKind("Pod"))


def controller(daemon: DaemonContext) -> Optional[VxlanPeers]:
    """The entry point: every daemon runs one (it does nothing until an overlay device exists).
    Options: `cni_conf` (the installed multiplex config, `--cni-conf`), `overlay_idle_grace`."""
    from .bgp import register_kinds
    from .cni_settings import InstalledSettings

    register_pods_kind(daemon.objects)
    register_kinds(daemon.objects)
    opts = daemon.options or {}
    grace = opts.get("overlay_idle_grace")
    return VxlanPeers(daemon.node_name, idle_grace=DEFAULT_IDLE_GRACE if grace is None else float(grace),
                      settings=InstalledSettings(opts.get("cni_conf") or None, daemon.log))
