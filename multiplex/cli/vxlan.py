"""`multiplex vxlan rotate-key`: a new WireGuard key pair for this node's encrypted overlays.

The integrator wires it into multiplex/cli/commands.py as
`multiplex vxlan rotate-key [--state-dir DIR]` -> `rotate_key(state_dir=..., output=...)`, exit
code its return value. The node daemon's vxlan-peers controller puts the new private key on the
WireGuard device at its next pass (at most 5 s) and publishes the new public key; each peer
replaces the old one as soon as it sees the node's facts change. Established flows see at most
that propagation (about a second with a watch) without a handshake; nothing restarts.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional


def rotate_key(state_dir: Optional[str] = None, output: Callable[[str], None] = print) -> int:
    """Write a new private key into the state dir; 0 and the new public key printed, or 1 when
    this node has no key yet (no encrypted overlay was ever attached here)."""
    from ..netlink import wireguard
    from ..util.state import root

    where = root(state_dir)
    if wireguard.read_key(where) is None:
        print(f"multiplex: no WireGuard key in {wireguard.key_path(where)}: no encrypted vxlan-overlay network has "
              "attached a pod on this node", file=sys.stderr)
        return 1
    public = wireguard.rotate_key(where)
    output(f"new WireGuard public key {public}; the node daemon puts it on {wireguard.DEVICE} within 5 s and "
           "publishes it to the peers")
    return 0
