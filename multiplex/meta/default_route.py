"""The pod's default route: on the cluster network unless an attachment asks for it.

`default-route` in the annotation names gateways; the default route of each gateway's family is
removed from every other interface of the pod and added via that gateway on the chosen
attachment's interface. The Results are updated so CHECK and network-status agree.
"""
from __future__ import annotations

import ipaddress

from ..cni.errors import CNIError, INVALID_CONFIG
from ..cni.types import Result, Route


def move_default_route(netns: str, ifname: str, gateways: list[str], result: Result, others: list[Result]) -> None:
    """Put the default route(s) via `gateways` on `ifname`; drop them from `others` (other attachments' results)."""
    from .. import netlink

    with netlink.open_netns(netns) as pod:
        link = pod.require_link(ifname)
        for gw_text in gateways:
            try:
                gw = ipaddress.ip_address(gw_text)
            except ValueError:
                raise CNIError(INVALID_CONFIG, f"default-route gateway {gw_text!r} is not an IP address",
                               f"field: k8s.v1.cni.cncf.io/networks default-route (interface {ifname})") from None
            family = netlink.AF_INET if gw.version == 4 else netlink.AF_INET6
            for r in pod.routes(family):
                if r.dst.prefixlen == 0:
                    pod.delete_route(r)
            pod.add_route(ipaddress.ip_network("0.0.0.0/0" if gw.version == 4 else "::/0"), link, gw)
            for res in [result, *others]:
                res.routes = [r for r in res.routes if not (r.dst.prefixlen == 0 and r.dst.version == gw.version)]
            result.routes.append(Route(dst=ipaddress.ip_network("0.0.0.0/0" if gw.version == 4 else "::/0"), gw=gw))
