"""What one cached attachment looks like on this node: the cache's record beside the kernel's view.

`multiplex inspect` (cli/inspect.py) finds a pod's cache entries; this module reads, for each
attachment of an entry, what the cache records and what the kernel shows, and names every place
where they differ. It reads only this node: the result cache, the pod's netns and the node's
netns (through multiplex.netlink), the node IPAM store file and nftables. It never asks the API
server and never writes anything.

Design choices:
- The node side is found from the kernel, not from delegate-specific naming: a veth's peer is the
  pod interface's IFLA_LINK index in the node netns (then its bridge, the bridge port's VLANs); a
  macvlan/ipvlan's parent is its master. So a reference plugin exec'd from CNI_PATH gets the same
  view as our own delegates.
- A built-in delegate can add to its node side with a `describe(cached_attachment) -> dict`
  attribute on its plugin object (found through the `multiplex.plugins` registry): e.g. a vxlan
  delegate its VTEP and FDB entries, a routed one its BGP routes. It runs in the node netns; a
  `differs` list in what it returns joins the attachment's differences.
- The lease is read from the SQLite node store (the store's own `leases(owner=...)`), or, for
  host-local, from its files. The kubernetes store lives in the cluster, not on the node: its
  lease is shown as not checked (`multiplex ipam show --store kubernetes` reads it).
- nftables rules belong to an attachment when their comment is its owner mark
  `<containerID>/<ifname>/<network>` (netlink/nft.owner_comment, hashed parts too): the rules
  are looked for in the whole ruleset of the node and of the pod, not only in our masquerade
  table, so rules other parts add with the same mark (policy) show up too.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Optional

from ..cni.errors import CNIError
from ..netlink import nft

LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")


@dataclass
class Kernel:
    """Open netlink handles for one entry: the node's and (when its netns still exists) the pod's."""
    node: Any
    pod: Any = None
    pod_gone: str = ""                         # why the pod's netns cannot be read ("" when it can)
    node_rules: list = field(default_factory=list)
    pod_rules: list = field(default_factory=list)

    @classmethod
    def open(cls, netns: str) -> "Kernel":
        from ..netlink.handle import Handle

        k = cls(node=Handle())
        k.node_rules = list_rules(None)
        if not netns:
            k.pod_gone = "the cache records no network namespace"
            return k
        try:
            k.pod = Handle(netns)
        except CNIError as e:
            k.pod_gone = e.msg
            return k
        k.pod_rules = list_rules(netns)
        return k

    def close(self) -> None:
        for h in (self.pod, self.node):
            if h is not None:
                h.close()


# ---- nftables -----------------------------------------------------------------------------------
_TABLE = re.compile(r"^table (\S+) (\S+) \{")
_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_HANDLE = re.compile(r"\s*# handle (\d+)\s*$")
_COMMENT = re.compile(r'comment "((?:[^"\\]|\\.)*)"')


def list_rules(netns: Optional[str]) -> list[dict]:
    """Every rule with a comment in the ruleset of `netns` (None: this one), as
    {table, chain, handle, comment, rule}. Empty when nft is not installed or says nothing."""
    from ..netlink.netns import entered

    exe = shutil.which(nft.NFT)
    if exe is None:
        return []
    try:
        with entered(netns):   # the child nft is forked from this thread: it runs in that netns
            proc = subprocess.run([exe, "-a", "list", "ruleset"], capture_output=True, text=True, timeout=30)
    except (CNIError, OSError, subprocess.TimeoutExpired):
        return []
    out, table, chain = [], "", ""
    for line in proc.stdout.splitlines():
        if m := _TABLE.match(line):
            table, chain = f"{m.group(1)} {m.group(2)}", ""
        elif m := _CHAIN.match(line):
            chain = m.group(1)
        elif (h := _HANDLE.search(line)) and (c := _COMMENT.search(line)) and chain:
            out.append({"table": table, "chain": chain, "handle": int(h.group(1)), "comment": c.group(1),
                        "rule": _HANDLE.sub("", line).strip()})
    return out


def owned_rules(rules: list[dict], container_id: str, ifname: str, network: str, where: str) -> list[dict]:
    """The rules whose comment is the owner mark of (container, ifname, network), plain or hashed."""
    found = []
    for r in rules:
        o = nft.parse_owner(r["comment"])
        if o is not None and o.of_container(container_id) and o.ifname == ifname and o.of_network(network):
            found.append({"netns": where, **r})
    return found


# ---- one attachment -----------------------------------------------------------------------------
def netlist_of(att: dict):
    """The attachment's conflist as the meta plugin ran it (name = the network's identity)."""
    from ..meta.orchestrator import parse_netlist
    from ..meta.selection import Attachment

    return parse_netlist(Attachment.from_dict(att))


def nad_of(att: dict) -> Optional[str]:
    """`namespace/name` of the NAD the attachment came from; None for a config on the node."""
    if not att.get("namespace") or not att.get("configName"):
        return None
    return f"{att['namespace']}/{str(att.get('network', '')).rpartition('/')[2]}"


def describe_attachment(att: dict, entry: dict, kernel: Kernel, state_dir: Optional[str]) -> dict:
    """The view of one cached attachment (see docs/inspect.md for every field)."""
    cid, ifname = entry["containerID"], att.get("ifname", "")
    differs: list[str] = []
    view: dict[str, Any] = {"ifname": ifname, "network": att.get("network", ""), "nad": nad_of(att),
                            "cluster": bool(att.get("cluster")), "configName": "", "delegate": "", "chain": []}
    try:
        nl = netlist_of(att)
        types = [str(p.get("type", "")) for p in nl.plugins]
        view.update(configName=nl.name, delegate=types[0] if types else "", chain=types)
        first = nl.plugins[0] if nl.plugins else {}
    except CNIError as e:
        nl, first = None, {}
        differs.append(f"the cached network config no longer parses: {e.msg}")
    network_name = view["configName"] or att.get("network", "")
    result = att.get("result")
    if result is None:
        differs.append("the cache records no result (the ADD of this attachment did not finish)")
        result = {}
    cached = cached_interface(result, ifname)
    view["cached"] = cached

    pod_link = None
    if kernel.pod is not None:
        pod_link = kernel.pod.link(ifname)
        view["interface"] = pod_interface(kernel.pod, pod_link) if pod_link else None
        if pod_link is None:
            differs.append(f"interface {ifname} is gone from the pod")
        else:
            differs += interface_differences(cached, view["interface"])
    else:
        view["interface"] = None

    node = node_side(kernel, pod_link, cached["host"], differs, tuple(cached["addresses"]))
    plugin_view = delegate_view(view["delegate"], att, differs)
    if plugin_view:
        node.update(plugin_view)
    view["node"] = node

    view["leases"] = leases_of(first, nl, att, cid, ifname, network_name, cached, state_dir, differs)
    rules = owned_rules(kernel.node_rules, cid, ifname, network_name, "node")
    rules += owned_rules(kernel.pod_rules, cid, ifname, network_name, "pod")
    view["nft"] = rules
    if first.get("type") == "multiplex-bridge" and first.get("ipMasq") and cached["addresses"] \
            and shutil.which(nft.NFT) and not any(r["table"] == f"{nft.FAMILY} {nft.TABLE}" for r in rules):
        differs.append(f"ipMasq is set but no masquerade rule for {ifname} is in table "
                       f"{nft.FAMILY} {nft.TABLE} on the node")
    view["differs"] = differs
    return view


def cached_interface(result: dict, ifname: str) -> dict:
    """What the cached result says of the pod interface: MAC, MTU, addresses, routes."""
    ifaces = result.get("interfaces") or []
    idx = next((n for n, i in enumerate(ifaces) if i.get("name") == ifname and i.get("sandbox")), None)
    me = ifaces[idx] if idx is not None else {}
    addrs = [ip["address"] for ip in result.get("ips") or []
             if "address" in ip and (ip.get("interface") is None or ip.get("interface") == idx)]
    routes = [{"dst": r.get("dst", ""), "gw": r.get("gw") or None} for r in result.get("routes") or []]
    host = [{"name": i.get("name", ""), "mac": i.get("mac", "")} for i in ifaces if not i.get("sandbox")]
    return {"mac": (me.get("mac") or "").lower(), "mtu": me.get("mtu") or None, "addresses": addrs,
            "routes": routes, "host": host}


def pod_interface(pod, link) -> dict:
    """The pod interface as the kernel shows it (IPv6 link-local addresses left out)."""
    addrs = [str(a.interface) for a in pod.addresses(link)
             if not (a.interface.version == 6 and a.interface.ip in LINK_LOCAL_V6)]
    routes = [{"dst": str(r.dst), "gw": str(r.gw) if r.gw else None}
              for r in pod.routes() if r.oif == link.index
              and not (r.dst.version == 6 and r.dst.subnet_of(LINK_LOCAL_V6))]  # type: ignore[arg-type]
    return {"name": link.name, "kind": link.kind, "mac": link.mac.lower(), "mtu": link.mtu, "up": link.up,
            "operstate": link.operstate, "addresses": addrs, "routes": routes}


def interface_differences(cached: dict, live: dict) -> list[str]:
    name = live["name"]
    out = []
    if cached["mac"] and cached["mac"] != live["mac"]:
        out.append(f"{name} has MAC {live['mac']}, the cache records {cached['mac']}")
    if cached["mtu"] and cached["mtu"] != live["mtu"]:
        out.append(f"{name} has MTU {live['mtu']}, the cache records {cached['mtu']}")
    have = {str(ipaddress.ip_interface(a)) for a in live["addresses"]}
    for a in cached["addresses"]:
        if str(ipaddress.ip_interface(a)) not in have:
            out.append(f"address {a} recorded in the cache is missing on {name} in the pod")
    if not live["up"]:
        out.append(f"{name} is down in the pod")
    for r in cached["routes"]:
        if not _route_present(r, live["routes"]):
            via = f" via {r['gw']}" if r.get("gw") else ""
            out.append(f"route {r['dst']}{via} recorded in the cache is missing on {name} in the pod")
    return out


def _route_present(want: dict, have: list[dict]) -> bool:
    try:
        dst = ipaddress.ip_network(want["dst"], strict=False)
    except ValueError:
        return False
    return any(ipaddress.ip_network(h["dst"]) == dst and (not want.get("gw") or h["gw"] == want["gw"]) for h in have)


# ---- the node side ------------------------------------------------------------------------------
def node_side(kernel: Kernel, pod_link, host_ifaces: list[dict], differs: list[str],
              addresses: tuple[str, ...] = ()) -> dict:
    """The node end of the pod interface: veth peer (its bridge and VLANs, the bridge's VXLAN
    ports: VTEP, VNI, peers) or, for a veth on no bridge (a routed pod: bgp-routed, ptp), the
    node's routes through it, each cached address's host route checked; or parent (master).
    Without the pod's interface, what the cache records of the node side is looked up by name."""
    node = kernel.node
    side: dict[str, Any] = {}
    if pod_link is not None:
        details = kernel.pod.link_details(pod_link)
        parent = node.link_at(details["parent"]) if details["parent"] and details["parent_elsewhere"] else None
        if pod_link.kind == "veth":
            side["kind"] = "veth"
            if parent is not None and not _is_peer(node, parent, pod_link):
                parent = None           # that index names another link here: the peer is elsewhere
            if parent is None:
                differs.append(f"the node end of veth {pod_link.name} is not in the node's netns")
            else:
                side.update(peer=parent.name, peerMac=parent.mac.lower(), peerUp=parent.up)
                _bridge_of(node, parent, side)
                if parent.master:
                    _vteps_of(node, parent.master, side)
                else:
                    _host_routes_of(node, parent, addresses, side, differs)
        elif pod_link.kind in ("macvlan", "ipvlan", "macvtap", "vlan"):
            side.update(kind=pod_link.kind, master=parent.name if parent else None)
            if parent is None:
                differs.append(f"the {pod_link.kind} master of {pod_link.name} is not in the node's netns")
        elif pod_link.kind:
            side["kind"] = pod_link.kind
    # interfaces the result names on the node (bridge, host veth): still there?
    for host in host_ifaces:
        if host["name"] and node.link(host["name"]) is None:
            differs.append(f"node interface {host['name']} recorded in the cache is gone from the node")
    return side


def _is_peer(node, link, pod_link) -> bool:
    if link.kind != "veth":
        return False
    d = node.link_details(link)
    return d["parent"] == pod_link.index and d["parent_elsewhere"]


def _bridge_of(node, port, side: dict) -> None:
    if not port.master:
        return
    br = node.link_at(port.master)
    if br is None:
        return
    side["bridge"] = br.name
    try:
        vlans = node.port_vlans(port)
    except CNIError:
        vlans = []
    if vlans:
        side["vlans"] = vlans
    side["hostAlias"] = port.alias or None


def _vteps_of(node, bridge_index: int, side: dict) -> None:
    """The VXLAN devices that are ports of the bridge (vxlan-overlay's VTEP): VNI, UDP port, local
    address, learning/proxy, and the peers its all-zeros FDB entries flood to."""
    from ..netlink import vxlan

    try:
        devices = [d for d in vxlan.vxlan_devices(node) if d.link.master == bridge_index]
    except CNIError:
        return
    vteps = []
    for d in devices:
        try:
            peers = sorted({r.dst for r in vxlan.remote_fdb(node, d.link) if r.mac == vxlan.ZERO_MAC})
        except CNIError:
            peers = []
        vteps.append({"name": d.link.name, "vni": d.vni, "port": d.port,
                      "local": str(d.local) if d.local is not None else None, "mtu": d.link.mtu,
                      "up": d.link.up, "learning": d.learning, "proxy": d.proxy, "peers": peers})
    if vteps:
        side["vteps"] = vteps


def _host_routes_of(node, peer, addresses: tuple[str, ...], side: dict, differs: list[str]) -> None:
    """The node's routes out of a veth on no bridge (a routed pod: the host routes BGP exports),
    and, for each cached address, whether the node has its host route through that veth."""
    try:
        routes = [r for r in node.routes() if r.oif == peer.index]
    except CNIError:
        return
    side["routes"] = [{"dst": str(r.dst), "gw": str(r.gw) if r.gw else None} for r in routes
                      if not (r.dst.version == 6 and r.dst.subnet_of(LINK_LOCAL_V6))]  # type: ignore[arg-type]
    for a in addresses:
        ip = ipaddress.ip_interface(a).ip
        if not any(r.dst.prefixlen == r.dst.max_prefixlen and r.dst.network_address == ip for r in routes):
            differs.append(f"the node has no host route to {ip} through {peer.name}")


def delegate_view(type_name: str, att: dict, differs: list[str]) -> dict:
    """What the built-in delegate's `describe(cached_attachment)` adds, when it has one."""
    if not type_name:
        return {}
    from ..cni.registry import builtin

    try:
        plugin = builtin(type_name)
    except CNIError as e:
        differs.append(f"delegate {type_name} cannot be loaded: {e.msg}")
        return {}
    describe = getattr(plugin, "describe", None)
    if describe is None:
        return {}
    try:
        extra = dict(describe(att) or {})
    except CNIError as e:
        differs.append(f"{type_name} cannot describe its node side: {e.msg}")
        return {}
    differs += [str(d) for d in extra.pop("differs", [])]
    return extra


# ---- the lease ----------------------------------------------------------------------------------
def leases_of(plugin: dict, nl, att: dict, container_id: str, ifname: str, network: str, cached: dict,
              state_dir: Optional[str], differs: list[str]) -> list[dict]:
    """The IPAM leases of the attachment, compared with the addresses the cache records."""
    ipam = plugin.get("ipam") if isinstance(plugin.get("ipam"), dict) else None
    if ipam is None:
        return []
    kind = str(ipam.get("type", ""))
    addrs = [str(ipaddress.ip_interface(a).ip) for a in cached["addresses"]]
    if kind == "multiplex-ipam":
        found = _multiplex_leases(plugin, container_id, ifname, network, state_dir, differs)
    elif kind == "host-local":
        found = _host_local_leases(ipam, container_id, network, addrs)
    else:
        return [{"store": kind, "address": a, "checked": False} for a in addrs]
    if found is None:     # a store inspect does not read (the cluster's)
        return [{"store": "kubernetes", "address": a, "checked": False} for a in addrs]
    leased = {f["address"] for f in found}
    for a in addrs:
        if a not in leased:
            differs.append(f"address {a} recorded in the cache has no lease in the {kind} store")
    for f in found:
        if f["address"] not in addrs:
            differs.append(f"lease {f['address']} ({f['pool']}) is held for {ifname} but not recorded in the cache")
    return found


def _multiplex_leases(plugin: dict, container_id: str, ifname: str, network: str, state_dir: Optional[str],
                      differs: list[str]) -> Optional[list[dict]]:
    from ..ipam import config
    from ..ipam.sqlite.store import FILENAME, SQLiteStore
    from ..ipam.store import Owner

    try:
        where = config.store_location(dict(plugin, name=network), state_dir=state_dir)
    except CNIError as e:
        differs.append(f"the IPAM config cannot be read: {e.msg}")
        return []
    if where.store != "sqlite":
        return None
    data_dir = where.data_dir or config.default_data_dir(state_dir, create=False)
    if not os.path.isfile(os.path.join(data_dir, FILENAME)):
        return []
    store = SQLiteStore(data_dir)
    try:
        with store:
            leases = store.leases(owner=Owner(container_id, ifname, network))
    except CNIError as e:
        differs.append(f"the IPAM store {store.path} cannot be read: {e.msg}")
        return []
    return [{"store": "sqlite", "pool": l.pool, "address": str(l.address), "checked": True,
             "owner": {"containerID": l.owner.container_id, "ifname": l.owner.ifname, "network": l.owner.network,
                       "pod": f"{l.owner.pod_namespace}/{l.owner.pod_name}" if l.owner.pod_name else None},
             "path": store.path} for l in leases]


HOST_LOCAL_DIR = "/var/lib/cni/networks"


def _host_local_leases(ipam: dict, container_id: str, network: str, addrs: list[str]) -> list[dict]:
    """host-local keeps one file per address, `<dataDir>/<network>/<address>`, naming the container."""
    base = os.path.join(str(ipam.get("dataDir") or HOST_LOCAL_DIR), network)
    found = []
    for a in addrs:
        path = os.path.join(base, a)
        try:
            with open(path) as f:
                holder = f.readline().strip()
        except OSError:
            continue
        if holder == container_id:
            found.append({"store": "host-local", "pool": base, "address": a, "checked": True,
                          "owner": {"containerID": holder}, "path": path})
    return found
