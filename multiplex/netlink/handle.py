"""One rtnetlink socket in one network namespace, with the link/address/route steps delegates use.

A Handle wraps a pyroute2 `IPRoute` on a socket made in the target namespace (netns.netlink_socket),
so a call needs one socket per namespace it touches and no child process. Every kernel refusal
becomes CNIError 105 (NETLINK_FAILURE) saying which operation on which link/address failed.

pyroute2 is imported when the first Handle is opened, never at module import. The hot
requests (link look-ups, `set_link` and what is built on it, `delete_link`, `add_address`) go
through a second socket in the same namespace with the stdlib requests of rtlink.py: pyroute2's
building and decoding of messages was most of their cost. The rest stays with pyroute2.

Kept node sockets (a warm process only): a pyroute2 `IPRoute` belongs to the thread that made it
(its event loop and socket wrapper live in a `threading.local` of pyroute2's own; another thread
cannot use it), so a warm process that wants to reuse its node-netns socket keeps one per thread,
the way a database connection pool keeps connections: `keep_node_sockets()` (the node daemon's
start-up) turns it on, and then `Handle(None)` borrows the calling thread's idle node socket and
`close()` gives it back. It is a process resource, never per-call state: a Handle still carries
its call's `batch`, a socket is borrowed by one Handle at a time (a nested node Handle on the same
thread gets a fresh socket of its own), it is keyed by the namespace the thread is in, and a
socket that saw anything but a clean request or a kernel refusal (CNIError) is closed, not kept.
A kept socket never joins a multicast group, so nothing queues on it between calls. When a thread
ends, its kept socket goes with its `threading.local` (the garbage collector closes it). Pod
namespaces are never kept: a socket holds its namespace alive, and a pod's must die with the pod.
A one-shot process does not turn this on: its handles open and close as before.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..cni.errors import CNIError, NETLINK_FAILURE
from .netns import netlink_sockets
from .rtlink import Rtnl

if TYPE_CHECKING:  # batch.py imports this module (in DeleteBatch.run), never the reverse at run time
    from .batch import DeleteBatch

IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

IFF_UP = 0x1
RTM_NEWLINK = 16
IFA_F_NODAD = 0x02
AF_INET, AF_INET6 = 2, 10
MAIN_TABLE = 254
BRPORT_MODE_HAIRPIN = 1
BRIDGE_VLAN_INFO_UNTAGGED = "untagged"
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80   # an FDB entry's state: "static", "permanent" (local)
NTF_MASTER, NTF_STICKY = 0x04, 0x40     # the bridge's FDB (not the port's own); never roams


@dataclass
class Link:
    index: int
    name: str
    kind: str = ""          # "bridge", "veth", "" for a plain device
    mac: str = ""
    mtu: int = 0
    up: bool = False        # administratively up (IFF_UP)
    master: int = 0         # index of the bridge it is a port of, 0 when none
    alias: str = ""         # IFLA_IFALIAS
    operstate: str = ""


@dataclass
class FdbEntry:
    """One entry of a bridge's forwarding database (`bridge fdb show`)."""
    mac: str
    port: int               # the link the MAC sits behind (a port, or the bridge itself)
    bridge: int = 0         # NDA_MASTER: the bridge whose FDB holds it (0: the port's own table)
    vlan: int = 0           # 0: no VLAN
    state: int = 0

    @property
    def static(self) -> bool:
        return bool(self.state & NUD_NOARP) and not self.state & NUD_PERMANENT


@dataclass
class Address:
    index: int
    interface: IPInterface
    flags: int = 0


@dataclass
class RouteEntry:
    dst: IPNetwork
    gw: Optional[IPAddress] = None
    oif: int = 0
    table: int = MAIN_TABLE
    priority: Optional[int] = None


def family_of(value: Union[IPInterface, IPAddress, IPNetwork]) -> int:
    return AF_INET if value.version == 4 else AF_INET6


def kernel_error(e: Exception, what: str, where: str) -> CNIError:
    """CNIError 105 for a refused netlink request: `what` failed (errno text), `where` says on what."""
    code = getattr(e, "code", 0) or 0
    reason = os.strerror(code) if code else str(e)
    name = errno.errorcode.get(code, "")
    return CNIError(NETLINK_FAILURE, f"cannot {what}: {reason}" + (f" ({name})" if name else ""), where)


class _KeptNodeSockets(threading.local):
    """This thread's idle node-netns sockets (pyroute2 IPRoute), by the namespace's inode."""

    def __init__(self) -> None:
        self.idle: dict[int, Any] = {}


_kept = _KeptNodeSockets()
_keeping = False


def keep_node_sockets(on: bool = True) -> None:
    """Keep each thread's node-netns socket open between calls (on: the node daemon's start-up),
    or stop keeping them (off: this thread's idle socket is closed now; other threads' close when
    next used or when the thread ends). See the module docstring for why per thread."""
    global _keeping
    _keeping = on
    if not on:
        for ipr, look in _kept.idle.values():
            ipr.close()
            look.close()
        _kept.idle.clear()


def keeping_node_sockets() -> bool:
    return _keeping


def _this_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class _LazyIPRoute:
    """pyroute2's IPRoute on a socket already made in the handle's namespace, built on first use
    for a pod's handle: an ADD's pod handle now sends everything through rtlink, and building an
    IPRoute (its asyncio loop, its socket wrapper) was most of the cost of opening one. Node
    handles build it at once (Handle.__init__). Shared by the Handles lent on the same sockets
    (scope.py), so it is built once whoever asks first."""

    def __init__(self, sock: Any):
        self.sock: Any = sock
        self.ipr: Any = None

    def get(self) -> Any:
        if self.ipr is None:
            from pyroute2 import IPRoute

            self.ipr = IPRoute(fileno=self.sock.detach())
        return self.ipr

    def close(self) -> None:
        if self.ipr is not None:
            self.ipr.close()
        else:
            self.sock.close()


def _open_sockets(netns: Optional[str], field: str) -> tuple[_LazyIPRoute, Rtnl]:
    """The socket of pyroute2's IPRoute (built on first use) and our own (rtlink), both made in
    `netns` in one visit to it."""
    main, look = netlink_sockets(netns, 2, field)
    return _LazyIPRoute(main), Rtnl(look)


class Handle:
    """Netlink in one namespace: `Handle()` is the current (node) one, `Handle(path)` a pod's.

    `batch`: the call's DeleteBatch (`req.ctx.batch`); a node handle given one defers
    `delete_link` to it. None: links are deleted at once."""

    def __init__(self, netns: Optional[str] = None, field: str = "CNI_NETNS",
                 batch: Optional["DeleteBatch"] = None):
        self.netns = netns or ""
        self.field = field
        self.batch = batch
        self._lent_by: Optional[tuple[Any, "Handle"]] = None   # (the call's NetnsHandles, the kept handle)
        self._kept_as: Optional[int] = None   # the netns inode when the socket is a kept one
        self._thread = threading.get_ident()
        if not netns and _keeping:
            key = _this_netns()
            kept = _kept.idle.pop(key, None)
            self._lazy, self._rt = kept if kept is not None else _open_sockets(None, field)
            self._kept_as = key
            self._lazy.get()
            return
        self._lazy, self._rt = _open_sockets(netns, field)
        if not netns:
            # node handles build it at once, as before: a kept one is built once per thread anyway
            # (its sockets stay as they were made, whatever the call), and node requests use it
            self._lazy.get()

    @property
    def _ipr(self) -> Any:
        """pyroute2's IPRoute in this handle's namespace (built on first use)."""
        lazy = self._lazy
        if lazy is None:
            raise ValueError(f"netlink handle on {self.where} is closed")
        return lazy.get()

    # ---- lifetime -------------------------------------------------------------------------------
    def lent(self, slot: Any) -> "Handle":
        """A Handle of its own on this one's sockets, for a borrower from the call's slot of pod
        handles (netlink/scope.py): closing it gives the sockets back to `slot`."""
        other = object.__new__(Handle)
        other.__dict__.update(self.__dict__)
        other._lent_by = (slot, self)
        return other

    def close(self, reusable: bool = True) -> None:
        """Close the socket, or give a kept one back to its thread (when `reusable`: it saw only
        whole requests), or a lent one back to the call's slot (netlink/scope.py)."""
        ipr, self._lazy = getattr(self, "_lazy", None), None
        if ipr is None:
            return
        lent_by = getattr(self, "_lent_by", None)
        if lent_by is not None:
            slot, kept = lent_by
            slot.give_back(kept, reusable)
            return
        key = self._kept_as
        if (reusable and key is not None and _keeping and self._thread == threading.get_ident()
                and key not in _kept.idle):
            _kept.idle[key] = (ipr, self._rt)
            return
        try:
            ipr.close()
        finally:
            self._rt.close()

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # a kernel refusal (CNIError) leaves the socket clean; anything else may have cut a request
        self.close(reusable=exc is None or isinstance(exc, CNIError))

    @property
    def where(self) -> str:
        return f"netns {self.netns}" if self.netns else "node netns"

    def _call(self, what: str, where: str, fn: Callable, *args: Any, **kwargs: Any):
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            return fn(*args, **kwargs)
        except NetlinkError as e:
            raise kernel_error(e, what, f"{where} in {self.where}") from None

    # ---- links ----------------------------------------------------------------------------------
    @staticmethod
    def _link(msg: Any) -> Link:
        return Link(index=msg["index"], name=msg.get("ifname") or "",
                    kind=msg.get(("linkinfo", "kind")) or "", mac=msg.get("address") or "",
                    mtu=msg.get("mtu") or 0, up=bool(msg["flags"] & IFF_UP),
                    master=msg.get("master") or 0, alias=msg.get("ifalias") or "",
                    operstate=msg.get("operstate") or "")

    def link(self, name: str) -> Optional[Link]:
        """The link called `name`, or None. Read by rtlink (stdlib), not pyroute2: see there."""
        try:
            found = self._rt.get(name=name)
        except OSError as e:
            raise kernel_error(e, f"look up link {name}", f"link: {name} in {self.where}") from None
        return Link(**found) if found is not None else None

    def link_at(self, index: int) -> Optional[Link]:
        try:
            found = self._rt.get(index=index)
        except OSError as e:
            raise kernel_error(e, f"look up link #{index}", f"link: #{index} in {self.where}") from None
        return Link(**found) if found is not None else None

    def links(self) -> list[Link]:
        return [self._link(m) for m in self._call("list links", "links", self._ipr.link, "dump")]

    def require_link(self, name: str, field: str = "") -> Link:
        link = self.link(name)
        if link is None:
            raise CNIError(NETLINK_FAILURE, f"link {name} not found in {self.where}",
                           f"field: {field}" if field else f"link: {name}")
        return link

    #: set_link's pyroute2 attrs that rtlink sends itself, and its keyword for each
    _RT_SET = {"state": "up", "master": "master", "mtu": "mtu", "address": "mac", "ifalias": "alias",
               "ifname": "new_name", "group": "group"}

    def set_link(self, link: Link, what: str = "", **attrs: Any) -> None:
        """One RTM_SETLINK on `link` with pyroute2 attrs (state="up", master=, mtu=, address=,
        ifalias=, ifname=, ...): by rtlink when it knows every attr, else by pyroute2."""
        what = what or "set " + ", ".join(f"{k}={v}" for k, v in attrs.items()) + f" on {link.name}"
        if set(attrs) <= self._RT_SET.keys() and attrs.get("state", "up") in ("up", "down"):
            kw = {self._RT_SET[k]: v for k, v in attrs.items()}
            if "up" in kw:
                kw["up"] = kw["up"] == "up"
            try:
                self._rt.set_link(link.index, **kw)
            except OSError as e:
                raise kernel_error(e, what, f"link: {link.name} in {self.where}") from None
            return
        self._call(what, f"link: {link.name}", self._ipr.link, "set", index=link.index, **attrs)

    def set_up(self, link: Link) -> None:
        self.set_link(link, f"set {link.name} up", state="up")

    def set_alias(self, link: Link, alias: str) -> None:
        self.set_link(link, f"set alias on {link.name}", ifalias=alias)

    def rename(self, link: Link, name: str) -> None:
        """Rename a link (it must be down). EEXIST means the name is taken in this namespace."""
        try:
            self._rt.set_link(link.index, new_name=name)
        except OSError as e:
            if getattr(e, "code", 0) == errno.EEXIST:
                raise CNIError(NETLINK_FAILURE, f"an interface named {name} already exists in {self.where}",
                               f"link: {name}; allowed: an interface name not used in that namespace") from None
            raise kernel_error(e, f"rename {link.name} to {name}", f"link: {link.name}") from None
        link.name = name

    def add_link(self, name: str, kind: str, what: str = "", exist_ok: bool = False, **attrs: Any) -> bool:
        """Create link `name` of `kind` with pyroute2 attrs (peer=, mtu=, ...). False when it exists
        and `exist_ok`; CNIError 105 naming it otherwise."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._ipr.link("add", ifname=name, kind=kind, **attrs)
            return True
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                if exist_ok:
                    return False
                raise CNIError(NETLINK_FAILURE, f"{name} already exists in {self.where}", f"link: {name}") from None
            raise kernel_error(e, what or f"create {kind} {name}", f"link: {name} in {self.where}") from None

    def create_link(self, name: str, kind: str, what: str = "", **attrs: Any) -> Link:
        """Create link `name` of `kind` (as add_link, EEXIST an error) and return it as the kernel
        made it. The request asks for an echo (NLM_F_ECHO, honoured by RTM_NEWLINK since Linux
        6.3), so the answer is the new link and no look-up follows; an older kernel answers with
        a bare ACK, and the link is looked up then."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            answer = self._echoed(self._ipr.link, "add", ifname=name, kind=kind, **attrs)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise CNIError(NETLINK_FAILURE, f"{name} already exists in {self.where}", f"link: {name}") from None
            raise kernel_error(e, what or f"create {kind} {name}", f"link: {name} in {self.where}") from None
        for m in answer or ():
            if m["header"]["type"] == RTM_NEWLINK and m.get("ifname") == name:
                return self._link(m)
        return self.require_link(name)

    def create_veth(self, name: str, peer: str, what: str, *, peer_netns_fd: Optional[int] = None,
                    mtu: Optional[int] = None, peer_mac: str = "") -> Link:
        """Create veth `name` (here) with its peer `peer` in the namespace of `peer_netns_fd`, by
        rtlink (pyroute2's request building was ~2 ms of an ADD's attachment); as create_link:
        EEXIST names the link, any other refusal is CNIError 105 saying `what`."""
        try:
            found = self._rt.create_veth(name, peer, peer_netns_fd=peer_netns_fd, mtu=mtu, peer_mac=peer_mac)
        except OSError as e:
            if getattr(e, "code", 0) == errno.EEXIST:
                raise CNIError(NETLINK_FAILURE, f"{name} already exists in {self.where}", f"link: {name}") from None
            raise kernel_error(e, what, f"link: {name} in {self.where}") from None
        return Link(**found) if found is not None else self.require_link(name)

    def _echoed(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """One request with NLM_F_ECHO: pyroute2 sets the flag from its socket's `nlm_echo` status,
        turned on for this request only (one thread uses a socket at a time)."""
        status = getattr(getattr(self._ipr, "asyncore", None), "status", None)
        if status is None:  # not the pyroute2 0.9 layout: a plain request (then a look-up)
            return fn(*args, **kwargs)
        status["nlm_echo"] = True
        try:
            return fn(*args, **kwargs)
        finally:
            status["nlm_echo"] = False

    def delete_link(self, name: str) -> bool:
        """Delete the link called `name`. False when there was none (DEL is idempotent).

        On the node's namespace with a batch (given at open), the link joins the batch's link
        group instead and is deleted with the rest of the pod's links when the batch runs.
        """
        batch = self.batch
        try:
            if batch is not None and not self.netns:
                self._rt.set_link(0, name, group=batch.group)
                batch.mark()
                return True
            self._rt.delete_link(name)
            return True
        except OSError as e:
            if getattr(e, "code", 0) in (errno.ENODEV, errno.ENOENT):
                return False
            raise kernel_error(e, f"delete link {name}", f"link: {name} in {self.where}") from None

    def delete_group(self, group: int) -> None:
        """Delete every link in link group `group` with one request."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._ipr.link("del", group=group)
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT):
                raise kernel_error(e, f"delete link group {group:#x}", f"group: {group:#x} in {self.where}") from None

    def delete_link_at(self, index: int) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._ipr.link("del", index=index)
            return True
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise kernel_error(e, f"delete link #{index}", f"link: #{index} in {self.where}") from None

    # ---- bridges --------------------------------------------------------------------------------
    def ensure_bridge(self, name: str, mtu: Optional[int] = None,
                      vlan_filtering: bool = False) -> tuple[Link, bool]:
        """The bridge `name`, made if missing (a concurrent creator is fine). Returns (bridge,
        created). Raises CNIError 105 when `name` exists and is not a bridge."""
        from pyroute2.netlink.exceptions import NetlinkError

        br = self.link(name)  # the usual case: it exists, one look-up
        created = False
        if br is None:
            attrs: dict[str, Any] = {}
            if mtu:
                attrs["mtu"] = mtu
            if vlan_filtering:
                attrs["br_vlan_filtering"] = 1
            try:
                answer = self._echoed(self._ipr.link, "add", ifname=name, kind="bridge", **attrs)
                created = True
                br = next((self._link(m) for m in answer or ()
                           if m["header"]["type"] == RTM_NEWLINK and m.get("ifname") == name), None)
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # EEXIST: a concurrent creator made it
                    what = f"create bridge {name}" + (" with vlan_filtering" if vlan_filtering else "")
                    if e.code == errno.EOPNOTSUPP and vlan_filtering:
                        what += " (this kernel has no bridge VLAN filtering)"
                    raise kernel_error(e, what, f"link: {name} in {self.where}") from None
            if br is None:
                br = self.require_link(name)
        if br.kind != "bridge":
            raise CNIError(NETLINK_FAILURE, f"{name} exists in {self.where} and is not a bridge (kind "
                           f"{br.kind or 'device'})", "field: bridge; allowed: the name of a bridge or of no link")
        if created:
            # Pin the bridge's MAC: left alone, it follows the lowest port MAC and changes as pods come
            # and go, which breaks the pods' neighbour entries for the gateway.
            self.set_link(br, f"set bridge {name} up", address=br.mac, state="up")
            br.up = True
        elif not br.up:
            self.set_up(br)
            br.up = True
        if vlan_filtering and not created:
            self.set_vlan_filtering(br)
        return br, created

    def set_vlan_filtering(self, bridge: Link, on: bool = True) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._ipr.link("set", index=bridge.index, kind="bridge", br_vlan_filtering=1 if on else 0)
        except NetlinkError as e:
            what = f"turn vlan_filtering {'on' if on else 'off'} on bridge {bridge.name}"
            if e.code == errno.EOPNOTSUPP:
                what += " (this kernel has no bridge VLAN filtering)"
            raise kernel_error(e, what, f"link: {bridge.name}") from None

    def set_hairpin(self, port: Link, on: bool = True) -> None:
        self._call(f"set hairpin mode on {port.name}", f"link: {port.name}",
                   self._ipr.brport, "set", index=port.index, mode=BRPORT_MODE_HAIRPIN if on else 0)

    def hairpin(self, port: Link) -> bool:
        msgs = self._call(f"read bridge port {port.name}", f"link: {port.name}",
                          self._ipr.brport, "show", index=port.index)
        for m in msgs:
            if m["index"] == port.index:
                return bool(m.get(("protinfo", "mode")) or 0)
        return False

    def set_port_vlan(self, port: Link, vid: int) -> None:
        """Make `port` an access port of VLAN `vid` (PVID, untagged) and drop the default VLAN 1."""
        self._call(f"add VLAN {vid} to bridge port {port.name}", f"link: {port.name}",
                   self._ipr.vlan_filter, "add", index=port.index,
                   vlan_info={"vid": vid, "pvid": True, "flags": [BRIDGE_VLAN_INFO_UNTAGGED]})
        if vid != 1:
            from pyroute2.netlink.exceptions import NetlinkError

            try:
                self._ipr.vlan_filter("del", index=port.index, vlan_info={"vid": 1})
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EINVAL):
                    raise kernel_error(e, f"remove default VLAN 1 from {port.name}", f"link: {port.name}") from None

    def port_vlans(self, port: Link) -> list[int]:
        """VLAN ids configured on a bridge port (empty when the bridge does not filter VLANs)."""
        out: list[int] = []
        for m in self._call(f"read VLANs of {port.name}", f"link: {port.name}", self._ipr.get_vlans):
            if m["index"] != port.index:
                continue
            spec = m.get("af_spec")
            if spec is None:
                continue
            for info in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO"):
                out.append(int(info["vid"]))
        return out

    # ---- a bridge's forwarding database ---------------------------------------------------------
    def fdb_entries(self, bridge: Link, mac: str = "") -> list[FdbEntry]:
        """The entries of `bridge`'s FDB (on its ports and on itself), only `mac`'s when given."""
        mac = mac.lower()
        out = []
        for m in self._call(f"read the forwarding database of {bridge.name}", f"link: {bridge.name}",
                            self._ipr.fdb, "dump"):
            lladdr = (m.get("NDA_LLADDR") or "").lower()
            master = m.get("NDA_MASTER") or 0
            if (master != bridge.index and m["ifindex"] != bridge.index) or (mac and lladdr != mac):
                continue
            out.append(FdbEntry(mac=lladdr, port=m["ifindex"], bridge=master, vlan=m.get("NDA_VLAN") or 0,
                                state=m["state"]))
        return out

    def add_static_fdb(self, port: Link, mac: str, vlan: int = 0, replace: bool = False) -> bool:
        """Put a static, sticky entry for `mac` on bridge port `port` in its bridge's FDB (`bridge fdb
        add MAC dev PORT master static sticky`): frames to `mac` go to that port only, and the MAC
        never moves to another port by learning. Static, not permanent: a permanent entry would make
        the bridge take the MAC for its own. False when the bridge already holds `mac` (on any port,
        this one included) and not `replace`; `replace` moves an existing entry here."""
        what = f"add a static FDB entry for {mac} on {port.name}" + (f" (VLAN {vlan})" if vlan else "")
        # a kernel without sticky FDB entries (before 5.0) refuses NTF_STICKY with EINVAL.
        # Sent by rtlink (one request, as pyroute2's fdb() sent it, without its request building).
        for flags in (NTF_MASTER | NTF_STICKY, NTF_MASTER):
            try:
                self._rt.add_fdb(port.index, mac, NUD_NOARP, flags, vlan, replace)
                return True
            except OSError as e:
                code = getattr(e, "code", 0) or e.errno
                if code == errno.EEXIST and not replace:
                    return False
                if code != errno.EINVAL or flags == NTF_MASTER:
                    raise kernel_error(e, what, f"link: {port.name}; mac: {mac}") from None
        raise AssertionError("unreachable")

    # ---- addresses ------------------------------------------------------------------------------
    def addresses(self, link: Optional[Link] = None, family: int = 0) -> list[Address]:
        """Addresses in this namespace (on `link` only, when given)."""
        kw: dict[str, Any] = {}
        if family:
            kw["family"] = family
        out = []
        for m in self._call("list addresses", link.name if link else "addresses", self._ipr.addr, "dump", **kw):
            if link is not None and m["index"] != link.index:
                continue
            addr = m.get("address")
            if not addr:
                continue
            out.append(Address(index=m["index"], interface=ipaddress.ip_interface(f"{addr}/{m['prefixlen']}"),
                               flags=m.get("flags") or m["flags"]))
        return out

    def add_address(self, link: Link, iface: IPInterface, nodad: bool = True, exist_ok: bool = False) -> bool:
        """Add `iface` (address/prefix) to `link`. IPv6 addresses skip DAD unless nodad=False
        (they are usable at once). Returns False when already there and `exist_ok`."""
        flags = IFA_F_NODAD if nodad and iface.version == 6 else 0
        try:
            self._rt.add_address(link.index, family_of(iface), iface.ip.packed, iface.network.prefixlen, flags)
            return True
        except OSError as e:
            if getattr(e, "code", 0) == errno.EEXIST and exist_ok:
                return False
            raise kernel_error(e, f"add address {iface} to {link.name}", f"link: {link.name}; address: {iface}") from None

    # ---- routes ---------------------------------------------------------------------------------
    def routes(self, family: int = 0, table: Optional[int] = MAIN_TABLE) -> list[RouteEntry]:
        """Unicast routes (in `table`; None: every table)."""
        out = []
        families = (family,) if family else (AF_INET, AF_INET6)
        for fam in families:
            for m in self._call("list routes", "routes", self._ipr.route, "dump", family=fam):
                if m["type"] != 1:  # RTN_UNICAST
                    continue
                tbl = m.get("table") or m["table"]
                if table is not None and tbl != table:
                    continue
                dst = m.get("dst") or ("0.0.0.0" if fam == AF_INET else "::")
                gw = m.get("gateway")
                out.append(RouteEntry(dst=ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False),
                                      gw=ipaddress.ip_address(gw) if gw else None, oif=m.get("oif") or 0,
                                      table=tbl, priority=m.get("priority")))
        return out

    def add_route(self, dst: IPNetwork, link: Link, gw: Optional[IPAddress] = None, *, mtu: Optional[int] = None,
                  advmss: Optional[int] = None, priority: Optional[int] = None, table: Optional[int] = None,
                  scope: Optional[int] = None, exist_ok: bool = False) -> bool:
        """Add a route to `dst` out of `link` (via `gw` when given). False when it exists and `exist_ok`.
        Sent by rtlink (one request; pyroute2's building of it was ~0.7 ms)."""
        try:
            self._rt.add_route(family_of(dst), dst.network_address.packed, dst.prefixlen, link.index,
                               gw.packed if gw is not None else b"", priority=priority, table=table, scope=scope,
                               mtu=mtu, advmss=advmss)
            return True
        except OSError as e:
            if (getattr(e, "code", 0) or e.errno) == errno.EEXIST and exist_ok:
                return False
            via = f" via {gw}" if gw is not None else ""
            raise kernel_error(e, f"add route {dst}{via} dev {link.name}",
                               f"link: {link.name}; route: {dst}{via}") from None

    def delete_route(self, route: RouteEntry) -> bool:
        """Delete a route as listed by `routes()`. False when it is already gone."""
        from pyroute2.netlink.exceptions import NetlinkError

        kw: dict[str, Any] = {"dst": str(route.dst), "family": family_of(route.dst), "table": route.table}
        if route.oif:
            kw["oif"] = route.oif
        if route.gw is not None:
            kw["gateway"] = str(route.gw)
        if route.priority is not None:
            kw["priority"] = route.priority
        try:
            self._ipr.route("del", **kw)
            return True
        except NetlinkError as e:
            if e.code in (errno.ESRCH, errno.ENOENT):
                return False
            raise kernel_error(e, f"delete route {route.dst}", f"route: {route.dst}") from None

    def default_route(self, family: int = AF_INET) -> Optional[RouteEntry]:
        """The main table's default route of `family` with the lowest metric, or None."""
        best = None
        for r in self.routes(family):
            if r.dst.prefixlen == 0 and (best is None or (r.priority or 0) < (best.priority or 0)):
                best = r
        return best

    def default_route_link(self, family: int = AF_INET) -> Optional[Link]:
        """The interface the default route leaves through (the node's uplink), or None."""
        r = self.default_route(family)
        return self.link_at(r.oif) if r is not None and r.oif else None

    # ---- links born in another namespace, kind-specific attributes ----------------------------------
    def add_link_into(self, target: "Handle", name: str, kind: str, what: str, about: str = "",
                      refusals: Optional[dict[int, CNIError]] = None, **attrs: Any) -> Link:
        """Create link `name` of `kind` from this namespace (where the link it hangs off, `link=`,
        lives) directly inside `target`'s namespace, and return it as `target` sees it. A kernel
        refusal whose errno is in `refusals` raises that error (the caller knows what EOPNOTSUPP or
        EBUSY means for its kind); any other is CNIError 105 saying `what`, its details naming
        `about` (default: the new link) in this namespace."""
        from pyroute2.netlink.exceptions import NetlinkError

        from .netns import open_fd

        fd = open_fd(target.netns) if target is not self else None
        try:
            if fd is not None:
                attrs["net_ns_fd"] = fd
            self._ipr.link("add", ifname=name, kind=kind, **attrs)
        except NetlinkError as e:
            if refusals and e.code in refusals:
                raise refusals[e.code] from None
            raise kernel_error(e, what, f"{about or 'link: ' + name} in {self.where}") from None
        finally:
            if fd is not None:
                os.close(fd)
        return target.require_link(name)

    def link_details(self, link: Link) -> dict[str, Any]:
        """What `Link` leaves out of one link: `parent` (IFLA_LINK, the index of the link it hangs
        off in that link's own namespace; 0 when none), `parent_elsewhere` (IFLA_LINK_NETNSID is
        present: the parent lives in another namespace) and `data` (IFLA_INFO_DATA, the kind's own
        attributes by netlink name, e.g. {"IFLA_IPVLAN_MODE": 0})."""
        msg = self._call(f"look up link {link.name}", f"link: {link.name}", self._ipr.link, "get",
                         index=link.index)[0]
        info = msg.get("IFLA_LINKINFO")
        data = info.get("IFLA_INFO_DATA") if info is not None else None
        return {"parent": msg.get("link") or 0, "parent_elsewhere": msg.get("link_netnsid") is not None,
                "data": {a[0]: a[1] for a in data["attrs"]} if data is not None else {}}
