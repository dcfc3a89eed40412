"""The pod annotation `k8s.v1.cni.cncf.io/network-status`: one entry per pod interface.

    [{"name": "cbr0", "interface": "eth0", "ips": ["198.18.0.5"], "mac": "...", "mtu": 1500,
      "default": true, "dns": {}, "gateway": ["198.18.0.1"]},
     {"name": "default/macvlan", "interface": "net1", "ips": ["198.18.4.10", "fd00:4::10"], ...,
      "default": false, "device-info": {"type": "pci", "version": "1.1.0", "pci": {...}}}]

Fields (multi-network spec, section 4.1.2.2): `name` (ns/name of the NAD; the cluster network's
name as the caller gives it), `interface`, `ips` (addresses without prefix length), `mac`, `mtu`,
`default` (the interface holding the pod's default route), `dns` (when the result has any),
`gateway` (the gateways of the interface's addresses), `device-info` (when a delegate gives it).
Stdlib only. schemas/network-status.json describes the output.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

from ..cni.types import Interface, Result

STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"


@dataclass
class AttachmentStatus:
    """One attachment as network-status reports it."""
    network: str                      # "ns/name", or the cluster network's name
    ifname: str
    result: Result
    default: bool = False
    device_info: Optional[dict[str, Any]] = None


StatusInput = Union[AttachmentStatus, tuple]


def network_status_entries(attachments: Iterable[StatusInput]) -> list[dict[str, Any]]:
    """Entries for (network, ifname, Result, is_default, device_info) tuples or AttachmentStatus."""
    out = []
    for a in attachments:
        if not isinstance(a, AttachmentStatus):
            a = AttachmentStatus(*a)
        out.append(status_entry(a))
    return out


def network_status(attachments: Iterable[StatusInput]) -> str:
    """The annotation value: a JSON list, indented as Multus writes it."""
    return json.dumps(network_status_entries(attachments), indent=4)


def status_entry(a: AttachmentStatus) -> dict[str, Any]:
    res = a.result
    index, iface = _pod_interface(res, a.ifname)
    ips = [ip for ip in res.ips if _belongs(ip.interface, index, res)]
    entry: dict[str, Any] = {"name": a.network, "interface": a.ifname,
                             "ips": [str(ip.address.ip) for ip in ips]}
    if iface is not None and iface.mac:
        entry["mac"] = iface.mac
    if iface is not None and iface.mtu:
        entry["mtu"] = int(iface.mtu)
    entry["default"] = bool(a.default)
    entry["dns"] = res.dns.to_dict()
    gateways = []
    for ip in ips:
        if ip.gateway is not None and str(ip.gateway) not in gateways:
            gateways.append(str(ip.gateway))
    if gateways:
        entry["gateway"] = gateways
    if a.device_info:
        entry["device-info"] = a.device_info
    return entry


def _pod_interface(res: Result, ifname: str) -> tuple[Optional[int], Optional[Interface]]:
    """The result's interface inside the pod named `ifname` (else the first one in a sandbox)."""
    for n, i in enumerate(res.interfaces):
        if i.name == ifname and i.sandbox:
            return n, i
    for n, i in enumerate(res.interfaces):
        if i.name == ifname:
            return n, i
    for n, i in enumerate(res.interfaces):
        if i.sandbox:
            return n, i
    return None, None


def _belongs(ip_index: Optional[int], pod_index: Optional[int], res: Result) -> bool:
    """An IP belongs to the pod interface when it points at it, or points nowhere and the result
    has no other pod interface it could mean."""
    if ip_index is None:
        return True
    return pod_index is not None and ip_index == pod_index
