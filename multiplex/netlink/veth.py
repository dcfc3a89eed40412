"""veth pairs whose peer is born inside the pod's namespace.

The peer is created directly in the pod netns under a random temporary name and renamed there to
the requested interface name, so the requested name never exists in the node namespace (no clash
with the node's own eth0, no window where two pods race for one name) and the host end never has to
move. The host end gets a caller-chosen name and, in the same request that brings it up, its alias
and its bridge.

Round trips per pair: the create (whose echo is the host end: no look-up of it), one request
setting the host end up with alias and bridge, one look-up of the peer in the pod (its index and
the MAC the kernel gave it) and its rename.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from .handle import Handle, Link
from .netns import open_fd

TEMP_PREFIX = "mpxt"


def temporary_name() -> str:
    return TEMP_PREFIX + os.urandom(5).hex()  # 14 characters


def make_veth_pair(node: Handle, pod: Handle, host_name: str, pod_name: str, *, mtu: Optional[int] = None,
                   mac: str = "", alias: str = "", master: Optional[Link] = None) -> tuple[Link, Link]:
    """Create host_name (in `node`) <-> pod_name (in `pod`) and return (host, pod) links.

    The host end is set up, given `alias` and attached to `master` when given; the pod end is left
    down (the caller addresses it, then brings it up). On any failure nothing is left behind.
    """
    tmp = temporary_name()
    fd = open_fd(pod.netns)
    try:
        what = f"create veth pair {host_name} <-> {pod_name}" + (f" with MAC {mac}" if mac else "")
        host = node.create_veth(host_name, tmp, what, peer_netns_fd=fd, mtu=mtu or None, peer_mac=mac)
    finally:
        os.close(fd)
    try:
        set_attrs: dict[str, Any] = {"state": "up"}
        if alias:
            set_attrs["ifalias"] = alias
        if master is not None:
            set_attrs["master"] = master.index
        node.set_link(host, f"set {host_name} up" + (f" on bridge {master.name}" if master else ""), **set_attrs)
        host.up, host.alias = True, alias or host.alias
        if master is not None:
            host.master = master.index
        peer_link = pod.require_link(tmp)
        pod.rename(peer_link, pod_name)
        return host, peer_link
    except BaseException:
        node.delete_link(host_name)  # takes the peer with it
        raise
