"""Netlink helpers every delegate shares (pyroute2 underneath, imported on first use).

    from multiplex import netlink
    with netlink.open_node() as node, netlink.open_netns(req.netns) as pod:
        br, _ = node.ensure_bridge("mpxbr0")
        host, peer = netlink.make_veth_pair(node, pod, "mpx0123456789ab", "net1", master=br)
        pod.add_address(peer, ipaddress.ip_interface("198.18.0.5/24"))
        pod.set_up(peer)

- `Handle`: one rtnetlink socket in one namespace (`open_node()` the current one, `open_netns(path)`
  a pod's, where path is CNI_NETNS). Links, bridges and their FDB, addresses, routes; kernel
  errors become CNIError 105 naming the link/address.
- `DeleteBatch` (netlink/batch.py): a DEL's node-side links deleted as one link group at its end;
  the call's batch is `req.ctx.batch`, handed to `open_node(batch=req.ctx.batch)`.
- `make_veth_pair`: a veth whose peer is created inside the pod netns and renamed there.
- `sysctl.read/write(key, value, netns=path)`: sysctls in any namespace.
- `uplink_mtu()`: the MTU of the node's default-route interface, for MTU defaults.
- `netns.entered(path)`: run a few lines with this thread inside a namespace.
- `scope.call()`: a CNI call's slot of pod-netns handles (cni/skel.run opens it): inside it,
  `open_netns(path)` is opened once per call and path (netlink/scope.py says why and how).
- `nft` (imported as `from multiplex.netlink import nft`, not from here): masquerade rules in
  nftables through the `nft` binary.

Nothing here forks or creates a namespace; sockets are made by switching the calling thread into
the namespace for the socket(2) call, so the helpers also work in a long-lived threaded process.
"""
from __future__ import annotations

from typing import Optional

from . import netns, scope, sysctl
from .batch import DeleteBatch
from .handle import AF_INET, AF_INET6, Address, FdbEntry, Handle, Link, RouteEntry, family_of, kernel_error
from .netns import NetnsGone
from .veth import make_veth_pair

DEFAULT_MTU = 1500

__all__ = ["AF_INET", "AF_INET6", "Address", "DeleteBatch", "FdbEntry", "Handle", "Link", "NetnsGone", "RouteEntry", "family_of",
           "kernel_error", "make_veth_pair", "netns", "open_netns", "open_node", "sysctl", "uplink_mtu"]


def open_node(batch: Optional[DeleteBatch] = None) -> Handle:
    """A handle on the namespace this process runs in (the node's). With the call's delete batch
    (`open_node(batch=req.ctx.batch)`), its `delete_link` joins the batch; None: deletes at once."""
    return Handle(None, batch=batch)


def open_netns(path: str, field: str = "CNI_NETNS") -> Handle:
    """A handle on the namespace at `path`. Raises NetnsGone (CNIError 3) when it does not exist.
    Inside a CNI call (netlink/scope.py) the call's handle on `path` is lent, opened once per call;
    closing it gives it back. Outside one, a handle of its own."""
    slot = scope.current()
    if slot is not None and path:
        return slot.borrow(path, field)
    return Handle(path, field)


def uplink_mtu(handle: Optional[Handle] = None, default: int = DEFAULT_MTU) -> int:
    """MTU of the interface holding the node's default route (IPv4, else IPv6), or `default`."""
    own = handle is None
    h = handle or open_node()
    try:
        for fam in (AF_INET, AF_INET6):
            link = h.default_route_link(fam)
            if link is not None and link.mtu:
                return link.mtu
        return default
    finally:
        if own:
            h.close()
