"""WireGuard under the vxlan overlay: a node's key pair, its WireGuard device, and the routing that
sends VXLAN (and only VXLAN) through it.

How the overlay's traffic rides WireGuard (`encrypt: wireguard`, delegates/vxlan_overlay.py):
the VXLAN device keeps `local` = the node's underlay address and its peers' underlay addresses as
FDB destinations, so nothing about VXLAN changes. A policy rule sends UDP to the network's VXLAN
port (`ipproto udp dport PORT`) to table `TABLE`, where each peer's underlay address (/32, /128)
routes out of the WireGuard device `mpxwg0`; the peer is a WireGuard peer with that address as its
only allowed IP and its endpoint. WireGuard's own packets (UDP to `LISTEN_PORT`) do not match the
rule and leave through the underlay. The table's default route is a blackhole: VXLAN of an
encrypted port to a node without a WireGuard peer is dropped, never sent in the clear.

Keys: X25519 (RFC 7748), base64 as WireGuard writes them. The private key lives in the node's
state dir (`<state>/vxlan/wireguard.key`, mode 0600, never in the API); the public key is
published through the node registry by the vxlan-peers controller. `rotate_key` writes a new one;
the controller puts it on the device at its next pass and publishes it, and the peers replace the
old public key as soon as they see the node's facts change.

X25519 is written here from RFC 7748 (a Montgomery ladder over Python integers, ~1 ms) so that the
node needs neither `wg` nor a crypto library to make a key.
"""
from __future__ import annotations

import base64
import errno
import ipaddress
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from ..cni.errors import CNIError, INVALID_CONFIG
from .handle import AF_INET, AF_INET6, Handle, Link, kernel_error

DEVICE = "mpxwg0"
LISTEN_PORT = 51871
TABLE = 47890
RULE_PRIORITY = 17890
#: WireGuard's cost on the underlay: outer IP (20 / 40) + UDP 8 + WireGuard header 16 + tag 16
OVERHEAD = {4: 60, 6: 80}
KEY_FILE = os.path.join("vxlan", "wireguard.key")
IPPROTO_UDP = 17

# ---- X25519 (RFC 7748) ---------------------------------------------------------------------------
_P = 2 ** 255 - 19
_A24 = 121665


def _clamp(k: bytes) -> int:
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return int.from_bytes(b, "little")


def x25519(scalar: bytes, u: bytes) -> bytes:
    """The X25519 function of RFC 7748, section 5."""
    k = _clamp(scalar)
    ub = bytearray(u)
    ub[31] &= 127
    x1 = int.from_bytes(ub, "little") % _P
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3, z3 = (da + cb) ** 2 % _P, x1 * (da - cb) ** 2 % _P
        x2, z2 = aa * bb % _P, e * (aa + _A24 * e) % _P
    if swap:
        x2, x3, z2, z3 = x3, x2, z3, z2
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def generate_private_key() -> str:
    """A new private key, clamped as WireGuard's `wg genkey` makes it, base64."""
    k = bytearray(secrets.token_bytes(32))
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return base64.b64encode(bytes(k)).decode()


def public_key(private_key: str) -> str:
    """The public key of a base64 private key (`wg pubkey`)."""
    return base64.b64encode(x25519(base64.b64decode(private_key), (9).to_bytes(32, "little"))).decode()


# ---- the key file --------------------------------------------------------------------------------
def key_path(state_root: str) -> str:
    return os.path.join(state_root, KEY_FILE)


def read_key(state_root: str) -> Optional[str]:
    try:
        with open(key_path(state_root), encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    if len(base64.b64decode(text)) != 32:
        raise ValueError(f"{key_path(state_root)} does not hold a WireGuard key")
    return text


def write_key(state_root: str, key: str) -> None:
    """Atomically, mode 0600 from the start (never readable by others, not even for a moment)."""
    path = key_path(state_root)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_key(state_root: str) -> str:
    key = read_key(state_root)
    if key is None:
        key = generate_private_key()
        write_key(state_root, key)
    return key


def rotate_key(state_root: str) -> str:
    """Write a new private key; returns its public key. The node daemon's vxlan-peers controller
    puts it on the device at its next pass (at most its resync, 5 s) and publishes it."""
    key = generate_private_key()
    write_key(state_root, key)
    return public_key(key)


# ---- the device ----------------------------------------------------------------------------------
class WireGuardMissing(CNIError):
    """The kernel cannot make a WireGuard link."""


@contextmanager
def wg_socket(netns: str = "") -> Iterator[object]:
    """pyroute2's WireGuard (generic netlink) socket, made in `netns` ("" = this namespace)."""
    from pyroute2 import WireGuard

    from .netns import entered

    with entered(netns or None):
        wg = WireGuard()
    try:
        yield wg
    finally:
        wg.close()


def ensure_device(h: Handle, state_root: str, mtu: int) -> tuple[Link, bool]:
    """The WireGuard device with this node's key (made on first use, in `state_root`) and listen
    port, up. (device, created). A kernel without WireGuard is WireGuardMissing (code 7, naming
    `encrypt`), nothing made, not even the key."""
    from pyroute2.netlink.exceptions import NetlinkError

    link = h.link(DEVICE)
    created = False
    if link is None:
        try:
            h._ipr.link("add", ifname=DEVICE, kind="wireguard", mtu=mtu)
        except NetlinkError as e:
            if e.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                raise WireGuardMissing(INVALID_CONFIG, f"this node's kernel has no WireGuard (creating a wireguard "
                                       f"link: {os.strerror(e.code)}); load the wireguard module, or leave encrypt out",
                                       "field: $.encrypt; allowed: encrypt on nodes whose kernel has WireGuard") from None
            if e.code != errno.EEXIST:
                raise kernel_error(e, f"create WireGuard device {DEVICE}", f"link: {DEVICE} in {h.where}") from None
        else:
            created = True
        link = h.require_link(DEVICE)
    with wg_socket(h.netns) as wg:
        if created:
            wg.set(DEVICE, private_key=load_or_create_key(state_root), listen_port=LISTEN_PORT)
    if not link.up:
        h.set_up(link)
    return link, created


def device_public_key(netns: str = "") -> Optional[str]:
    """The public key the device holds now, or None."""
    with wg_socket(netns) as wg:
        for msg in wg.info(DEVICE):
            key = msg.get_attr("WGDEVICE_A_PUBLIC_KEY")
            if key:
                return key.decode() if isinstance(key, bytes) else str(key)
    return None


def set_private_key(netns: str, private_key: str) -> None:
    with wg_socket(netns) as wg:
        wg.set(DEVICE, private_key=private_key)


@dataclass(frozen=True)
class Peer:
    public_key: str
    address: str                 # the peer's underlay address: endpoint and only allowed IP
    port: int = LISTEN_PORT


def peers(netns: str = "") -> dict[str, Peer]:
    """public key -> Peer, as the device holds them."""
    out = {}
    with wg_socket(netns) as wg:
        for msg in wg.info(DEVICE):
            for p in msg.get_attr("WGDEVICE_A_PEERS") or []:
                key = p.get_attr("WGPEER_A_PUBLIC_KEY")
                key = key.decode() if isinstance(key, bytes) else str(key)
                ep = p.get_attr("WGPEER_A_ENDPOINT") or {}
                addr = ep.get("addr") if isinstance(ep, dict) else None
                port = ep.get("port") if isinstance(ep, dict) else None
                out[key] = Peer(key, str(addr or ""), int(port or 0))
    return out


def set_peer(netns: str, peer: Peer) -> None:
    bits = 32 if ipaddress.ip_address(peer.address).version == 4 else 128
    with wg_socket(netns) as wg:
        wg.set(DEVICE, peer={"public_key": peer.public_key, "endpoint_addr": peer.address,
                             "endpoint_port": peer.port, "allowed_ips": [f"{peer.address}/{bits}"],
                             "replace_allowed_ips": True, "persistent_keepalive": 0})


def remove_peer(netns: str, key: str) -> None:
    with wg_socket(netns) as wg:
        wg.set(DEVICE, peer={"public_key": key, "remove": True})


# ---- routing: VXLAN of an encrypted port through the device -------------------------------------
def encrypted_ports(h: Handle) -> set[tuple[int, int]]:
    """(family, port) of every rule sending a VXLAN port to TABLE."""
    out = set()
    for fam in (AF_INET, AF_INET6):
        for r in h._call("list rules", "rules", h._ipr.rule, "dump", family=fam):
            if r.get("FRA_TABLE") == TABLE and r.get("FRA_IP_PROTO") == IPPROTO_UDP and r.get("FRA_DPORT_RANGE"):
                start = int(str(r.get("FRA_DPORT_RANGE")).split(":")[0])
                out.add((4 if fam == AF_INET else 6, start))
    return out


def ensure_port_rule(h: Handle, family: int, port: int) -> bool:
    """The rule for `port` in `family` and the table's blackhole default. True when the rule was made."""
    from pyroute2.netlink.exceptions import NetlinkError

    if (family, port) in encrypted_ports(h):
        return False
    fam = AF_INET if family == 4 else AF_INET6
    try:
        h._ipr.route("add", dst="0.0.0.0/0" if family == 4 else "::/0", type="blackhole", table=TABLE, family=fam)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise kernel_error(e, f"add the blackhole default of table {TABLE}", f"table: {TABLE}") from None
    h._call(f"add the rule for VXLAN port {port} to table {TABLE}", f"port: {port}", h._ipr.rule, "add",
            table=TABLE, priority=RULE_PRIORITY, ip_proto=IPPROTO_UDP, dport_range=f"{port}:{port}", family=fam)
    return True


def delete_port_rule(h: Handle, family: int, port: int) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    fam = AF_INET if family == 4 else AF_INET6
    try:
        h._ipr.rule("del", table=TABLE, priority=RULE_PRIORITY, ip_proto=IPPROTO_UDP, dport_range=f"{port}:{port}",
                    family=fam)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH):
            raise kernel_error(e, f"delete the rule for VXLAN port {port}", f"port: {port}") from None


def peer_routes(h: Handle) -> set[str]:
    """The peer addresses routed through the device in TABLE."""
    out = set()
    for fam in (AF_INET, AF_INET6):
        for r in h._call("list routes", "routes", h._ipr.route, "dump", table=TABLE, family=fam):
            if r.get("dst") and r["type"] == 1:
                out.add(str(ipaddress.ip_address(r.get("dst"))))
    return out


def add_peer_route(h: Handle, device: Link, address: str) -> None:
    ip = ipaddress.ip_address(address)
    h._call(f"route {address} through {device.name}", f"address: {address}", h._ipr.route, "replace",
            dst=f"{address}/{32 if ip.version == 4 else 128}", oif=device.index, table=TABLE,
            family=AF_INET if ip.version == 4 else AF_INET6)


def delete_peer_route(h: Handle, address: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    ip = ipaddress.ip_address(address)
    try:
        h._ipr.route("del", dst=f"{address}/{32 if ip.version == 4 else 128}", table=TABLE,
                     family=AF_INET if ip.version == 4 else AF_INET6)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH):
            raise kernel_error(e, f"delete the route of {address} in table {TABLE}", f"address: {address}") from None
