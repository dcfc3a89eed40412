"""RTM_GETLINK of one link, with the stdlib only: the look-up every ADD does several times.

pyroute2 decodes every attribute of a link's answer into Python objects (stats, af_spec, the
kind's data...): about 0.4 ms a look-up, most of it decoding. A `Link` needs nine fields, so this
module sends the request itself (asking the kernel to leave the statistics out) and reads only
those attributes out of the answer with `struct`: a few tens of microseconds.

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
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLM_F_REQUEST = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_EXT_MASK = 16, 18, 20, 29
IFLA_INFO_KIND = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
#: IF_OPER_* as pyroute2 names them (so a Link reads the same whichever way it was looked up)
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
TIMEOUT = 10.0  # seconds: the kernel answers a look-up at once; this only bounds a lost answer

_HDR = struct.Struct("=IHHII")      # nlmsghdr: len, type, flags, seq, pid
_IFI = struct.Struct("=BxHiII")     # ifinfomsg: family, type, index, flags, change
_RTA = struct.Struct("=HH")         # rtattr: len, type


class LookupError_(OSError):
    """The kernel refused the look-up; `code` is its errno (as pyroute2's NetlinkError has it)."""

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


class Lookups:
    """RTM_GETLINK on one rtnetlink socket (owned: closed with `close`)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.seq = 0
        sock.settimeout(TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def get(self, name: str = "", index: int = 0) -> Optional[dict]:
        """The link called `name` (or with `index`) as a dict of Link's fields; None when there is
        none (ENODEV). Any other refusal raises LookupError_ with the kernel's errno."""
        self.seq = (self.seq + 1) & 0x7FFFFFFF or 1
        body = _IFI.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        if name:
            body += _attr(IFLA_IFNAME, name.encode() + b"\0")
        body += _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        self.sock.send(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, self.seq, 0) + body)
        while True:
            data = self._recv()
            at = 0
            while at + _HDR.size <= len(data):
                size, kind, _flags, seq, _pid = _HDR.unpack_from(data, at)
                if size < _HDR.size:
                    break
                if seq == self.seq:
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, at + _HDR.size)[0]
                        if code in (errno.ENODEV, errno.ENOENT):
                            return None
                        raise LookupError_(code)
                    if kind == RTM_NEWLINK:
                        return self._decode(data, at + _HDR.size, at + size)
                at += (size + 3) & ~3  # an answer to an earlier, abandoned request: skipped

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise LookupError_(errno.ETIMEDOUT) from None

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
