"""The rtnetlink requests every ADD makes several times, with the stdlib only: RTM_GETLINK of one
link, RTM_SETLINK (up, bridge, alias, MTU, MAC, name, group), RTM_DELLINK by name, RTM_NEWADDR,
RTM_NEWLINK of a veth pair (its peer made in the pod's namespace), RTM_NEWNEIGH of a bridge FDB entry,
RTM_NEWROUTE of a unicast route.

pyroute2 decodes every attribute of a link's answer into Python objects (stats, af_spec, the
kind's data...) and builds each request through its filter chain and an asyncio loop: 0.2-0.4 ms a
request, most of it Python. A `Link` needs nine fields, so this module sends the look-up itself
(asking the kernel to leave the statistics out) and reads only those attributes out of the answer
with `struct`; the other requests are a header and a few attributes. A few tens of microseconds
each. Everything else (bridge creation, route and FDB dumps and deletes, other dumps) stays with
pyroute2.

It works on a socket of its own (`Handle` opens one beside pyroute2's, in the same namespace), so
it never reads an answer meant for pyroute2, nor pyroute2 one of its own. One thread uses a
socket at a time, as with every Handle. Requests and answers: include/uapi/linux/rtnetlink.h,
if_link.h (rtnetlink(7)).
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Optional

NLMSG_ERROR = 2
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_NEWADDR = 16, 17, 18, 19, 20
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ECHO, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x8, 0x100, 0x200, 0x400
RTM_NEWNEIGH = 28
RTM_NEWROUTE = 24
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_TABLE = 1, 4, 5, 6, 8, 15
RTAX_MTU, RTAX_ADVMSS = 2, 8
RTPROT_STATIC, RTN_UNICAST = 4, 1
AF_BRIDGE = 7
NDA_LLADDR, NDA_VLAN = 2, 5
IFF_UP = 0x1
IFLA_GROUP = 27
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_EXT_MASK = 16, 18, 20, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_NET_NS_FD = 28
VETH_INFO_PEER = 1
NLA_F_NESTED = 1 << 15
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
#: IF_OPER_* as pyroute2 names them (so a Link reads the same whichever way it was looked up)
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
TIMEOUT = 10.0  # seconds: the kernel answers a look-up at once; this only bounds a lost answer

_HDR = struct.Struct("=IHHII")      # nlmsghdr: len, type, flags, seq, pid
_IFI = struct.Struct("=BxHiII")     # ifinfomsg: family, type, index, flags, change
_RTA = struct.Struct("=HH")         # rtattr: len, type
_IFA = struct.Struct("=BBBBI")      # ifaddrmsg: family, prefixlen, flags, scope, index
_NDM = struct.Struct("=BxxxiHBB")   # ndmsg: family, ifindex, state, flags, type
_RTM = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags


class Refused(OSError):
    """The kernel refused a request; `code` is its errno (as pyroute2's NetlinkError has it)."""

    def __init__(self, code: int):
        super().__init__(code, os.strerror(code))
        self.code = code


def _attr(kind: int, payload: bytes) -> bytes:
    size = _RTA.size + len(payload)
    return _RTA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _attrs(data: bytes, start: int, end: int):
    """(type, payload) of each rtattr in data[start:end]."""
    while start + _RTA.size <= end:
        size, kind = _RTA.unpack_from(data, start)
        if size < _RTA.size or start + size > end:
            return
        yield kind & NLA_TYPE_MASK, data[start + _RTA.size:start + size]
        start += (size + 3) & ~3


def _text(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode("utf-8", "replace")


class Rtnl:
    """These requests on one rtnetlink socket (owned: closed with `close`)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.seq = 0
        sock.settimeout(TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, self.seq, 0) + body)
        return self.seq

    def _messages(self, seq: int):
        """(type, data, start, end) of each message answering request `seq`, datagram by datagram;
        answers to earlier, abandoned requests are skipped. An error answer raises Refused (its
        errno); an ACK is type NLMSG_ERROR with errno 0 (the last message of an acked request)."""
        while True:
            data = self._recv()
            at = 0
            while at + _HDR.size <= len(data):
                size, kind, _flags, got, _pid = _HDR.unpack_from(data, at)
                if size < _HDR.size:
                    break
                if got == seq:
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, at + _HDR.size)[0]
                        if code:
                            raise Refused(code)
                    yield kind, data, at + _HDR.size, at + size
                at += (size + 3) & ~3

    def _answer(self, seq: int) -> tuple[int, bytes, int, int]:
        """The first message answering request `seq` (the answer, or its ACK)."""
        return next(self._messages(seq))

    def get(self, name: str = "", index: int = 0) -> Optional[dict]:
        """The link called `name` (or with `index`) as a dict of Link's fields; None when there is
        none (ENODEV). Any other refusal raises Refused with the kernel's errno."""
        body = _IFI.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        if name:
            body += _attr(IFLA_IFNAME, name.encode() + b"\0")
        body += _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        try:
            kind, data, start, end = self._answer(self._send(RTM_GETLINK, 0, body))
        except Refused as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return self._decode(data, start, end) if kind == RTM_NEWLINK else None

    def set_link(self, index: int = 0, name: str = "", *, up: Optional[bool] = None, master: Optional[int] = None,
                 mtu: Optional[int] = None, mac: str = "", alias: Optional[str] = None, new_name: str = "",
                 group: Optional[int] = None) -> None:
        """One RTM_SETLINK on the link `index` (or, with index 0, the one called `name`)."""
        flags = IFF_UP if up else 0
        body = _IFI.pack(socket.AF_UNSPEC, 0, index, flags, IFF_UP if up is not None else 0)
        if new_name or not index:
            body += _attr(IFLA_IFNAME, (new_name or name).encode() + b"\0")
        if mtu is not None:
            body += _attr(IFLA_MTU, struct.pack("=I", mtu))
        if master is not None:
            body += _attr(IFLA_MASTER, struct.pack("=I", master))
        if mac:
            body += _attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        if alias is not None:
            body += _attr(IFLA_IFALIAS, alias.encode() + b"\0")
        if group is not None:
            body += _attr(IFLA_GROUP, struct.pack("=I", group))
        self._answer(self._send(RTM_SETLINK, NLM_F_ACK, body))

    def create_veth(self, name: str, peer: str, *, peer_netns_fd: Optional[int] = None, mtu: Optional[int] = None,
                    peer_mac: str = "") -> Optional[dict]:
        """RTM_NEWLINK (create, exclusive) of veth `name` whose peer `peer` is made in the namespace
        of `peer_netns_fd` (None: this one), both with `mtu` when given, the peer with `peer_mac`.
        Asks for an echo (NLM_F_ECHO, honoured by Linux 6.3+): returns the new link as get() does,
        or None when the kernel only acknowledged (then look it up). Refusals raise Refused."""
        peer_body = _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, peer.encode() + b"\0")
        host_attrs = _attr(IFLA_IFNAME, name.encode() + b"\0")
        if mtu:
            peer_body += _attr(IFLA_MTU, struct.pack("=I", mtu))
            host_attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        if peer_mac:
            peer_body += _attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", "")))
        if peer_netns_fd is not None:
            peer_body += _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA | NLA_F_NESTED,
                                                        _attr(VETH_INFO_PEER | NLA_F_NESTED, peer_body))
        body = _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + host_attrs + _attr(IFLA_LINKINFO | NLA_F_NESTED, info)
        echoed = None
        for kind, data, start, end in self._answers(
                self._send(RTM_NEWLINK, NLM_F_ACK | NLM_F_ECHO | NLM_F_CREATE | NLM_F_EXCL, body)):
            if kind == RTM_NEWLINK:
                link = self._decode(data, start, end)
                if link["name"] == name:
                    echoed = link
        return echoed

    def add_fdb(self, port: int, mac: str, state: int, flags: int, vlan: int = 0, replace: bool = False) -> None:
        """RTM_NEWNEIGH in the bridge family (`bridge fdb add|replace MAC dev PORT`): an FDB entry
        for `mac` on link `port` with NUD `state` and NTF `flags`, in `vlan` (0: none). Add is
        exclusive (EEXIST when the bridge holds the MAC); `replace` creates or moves it."""
        body = _NDM.pack(AF_BRIDGE, port, state, flags, 0) + _attr(NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
        if vlan:
            body += _attr(NDA_VLAN, struct.pack("=H", vlan))
        mode = NLM_F_REPLACE | NLM_F_CREATE if replace else NLM_F_CREATE | NLM_F_EXCL
        self._answer(self._send(RTM_NEWNEIGH, NLM_F_ACK | mode, body))

    def add_route(self, family: int, dst: bytes, dst_len: int, oif: int, gateway: bytes = b"", *,
                  priority: Optional[int] = None, table: Optional[int] = None, scope: Optional[int] = None,
                  mtu: Optional[int] = None, advmss: Optional[int] = None) -> None:
        """RTM_NEWROUTE (create, exclusive) of a unicast route to `dst` (packed) / `dst_len` out of
        link `oif`, via `gateway` (packed) when given; the route the kernel makes is the one pyroute2's
        route("add") made (tests/netns/test_route_add.py compares them): protocol static, scope
        universe unless given, the main table unless given, metrics nested."""
        tbl = 254 if table is None else table
        body = _RTM.pack(family, dst_len, 0, 0, tbl if tbl < 256 else 252, RTPROT_STATIC,
                         0 if scope is None else scope, RTN_UNICAST, 0)
        if dst_len or any(dst):
            body += _attr(RTA_DST, dst)
        body += _attr(RTA_OIF, struct.pack("=I", oif))
        if gateway:
            body += _attr(RTA_GATEWAY, gateway)
        if priority is not None:
            body += _attr(RTA_PRIORITY, struct.pack("=I", priority))
        body += _attr(RTA_TABLE, struct.pack("=I", tbl))
        metrics = b""
        if mtu:
            metrics += _attr(RTAX_MTU, struct.pack("=I", mtu))
        if advmss:
            metrics += _attr(RTAX_ADVMSS, struct.pack("=I", advmss))
        if metrics:
            body += _attr(RTA_METRICS | NLA_F_NESTED, metrics)
        self._answer(self._send(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body))

    def _answers(self, seq: int) -> list[tuple[int, bytes, int, int]]:
        """Every message answering request `seq` before its ACK (an echo comes before it)."""
        out = []
        for message in self._messages(seq):
            if message[0] == NLMSG_ERROR:
                return out
            out.append(message)
        return out

    def delete_link(self, name: str) -> None:
        """RTM_DELLINK of the link called `name`."""
        body = _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
        self._answer(self._send(RTM_DELLINK, NLM_F_ACK, body))

    def add_address(self, index: int, family: int, address: bytes, prefixlen: int, flags: int = 0) -> None:
        """RTM_NEWADDR (create, exclusive: EEXIST when there): `address` (packed) / `prefixlen` on
        link `index`; IPv4 gets IFA_LOCAL too, as `ip addr add` (and pyroute2) send it."""
        body = _IFA.pack(family, prefixlen, flags, 0, index)
        if family == socket.AF_INET:
            body += _attr(IFA_LOCAL, address)
        body += _attr(IFA_ADDRESS, address)
        self._answer(self._send(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body))

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise Refused(errno.ETIMEDOUT) from None

    @staticmethod
    def _decode(data: bytes, start: int, end: int) -> dict:
        _family, _type, index, flags, _change = _IFI.unpack_from(data, start)
        out = {"index": index, "name": "", "kind": "", "mac": "", "mtu": 0, "up": bool(flags & 0x1),
               "master": 0, "alias": "", "operstate": ""}
        for kind, payload in _attrs(data, start + _IFI.size, end):
            if kind == IFLA_IFNAME:
                out["name"] = _text(payload)
            elif kind == IFLA_ADDRESS:
                out["mac"] = ":".join(f"{b:02x}" for b in payload)
            elif kind == IFLA_MTU and len(payload) >= 4:
                out["mtu"] = struct.unpack_from("=I", payload)[0]
            elif kind == IFLA_MASTER and len(payload) >= 4:
                out["master"] = struct.unpack_from("=I", payload)[0]
            elif kind == IFLA_IFALIAS:
                out["alias"] = _text(payload)
            elif kind == IFLA_OPERSTATE and payload:
                out["operstate"] = OPERSTATES[payload[0]] if payload[0] < len(OPERSTATES) else ""
            elif kind == IFLA_LINKINFO:
                for sub, value in _attrs(payload, 0, len(payload)):
                    if sub == IFLA_INFO_KIND:
                        out["kind"] = _text(value)
        return out
