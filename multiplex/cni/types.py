"""CNI Result types and their conversion between spec versions.

One in-memory form (the 1.1.0 shape) is used everywhere; `Result.to_dict(version)` writes the
shape a given version expects and `Result.from_dict` reads any supported version's shape.
- 0.3.x and 0.4.0 carry `version` ("4"/"6") in each IP entry; 1.x do not.
- 1.1.0 adds route `mtu`, `advmss`, `priority`, `table`, `scope` and interface `mtu`,
  `socketPath`, `pciID`; they are left out when writing older versions.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import CNIError, DECODE_FAILURE
from .version import at_least

IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _decode(kind: str, value: Any, where: str):
    try:
        if kind == "interface":
            return ipaddress.ip_interface(value)
        if kind == "address":
            return ipaddress.ip_address(value)
        return ipaddress.ip_network(value, strict=False)
    except (ValueError, TypeError):
        raise CNIError(DECODE_FAILURE, f"invalid IP {kind} {value!r} in result", f"field: {where}") from None


@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: Optional[int] = None
    socket_path: str = ""
    pci_id: str = ""

    def to_dict(self, version: str) -> dict:
        d: dict[str, Any] = {"name": self.name}
        if self.mac:
            d["mac"] = self.mac
        if at_least(version, "1.1.0"):
            if self.mtu:
                d["mtu"] = self.mtu
            if self.socket_path:
                d["socketPath"] = self.socket_path
            if self.pci_id:
                d["pciID"] = self.pci_id
        if self.sandbox:
            d["sandbox"] = self.sandbox
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Interface":
        return cls(name=str(d.get("name", "")), mac=str(d.get("mac", "") or ""),
                   sandbox=str(d.get("sandbox", "") or ""), mtu=d.get("mtu") or None,
                   socket_path=str(d.get("socketPath", "") or ""), pci_id=str(d.get("pciID", "") or ""))


@dataclass
class IPConfig:
    address: IPInterface
    gateway: Optional[IPAddress] = None
    interface: Optional[int] = None  # index into Result.interfaces

    @property
    def family(self) -> int:
        return self.address.version

    def to_dict(self, version: str) -> dict:
        d: dict[str, Any] = {}
        if not at_least(version, "1.0.0"):
            d["version"] = str(self.address.version)
        if self.interface is not None:
            d["interface"] = self.interface
        d["address"] = str(self.address)
        if self.gateway is not None:
            d["gateway"] = str(self.gateway)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "ips") -> "IPConfig":
        if "address" not in d:
            raise CNIError(DECODE_FAILURE, "IP entry without address in result", f"field: {where}")
        gw = d.get("gateway")
        iface = d.get("interface")
        return cls(address=_decode("interface", d["address"], f"{where}.address"),
                   gateway=_decode("address", gw, f"{where}.gateway") if gw else None,
                   interface=int(iface) if iface is not None else None)


@dataclass
class Route:
    dst: IPNetwork
    gw: Optional[IPAddress] = None
    mtu: Optional[int] = None
    advmss: Optional[int] = None
    priority: Optional[int] = None
    table: Optional[int] = None
    scope: Optional[int] = None

    def to_dict(self, version: str) -> dict:
        d: dict[str, Any] = {"dst": str(self.dst)}
        if self.gw is not None:
            d["gw"] = str(self.gw)
        if at_least(version, "1.1.0"):
            for k in ("mtu", "advmss", "priority", "table", "scope"):
                v = getattr(self, k)
                if v is not None:
                    d[k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "routes") -> "Route":
        if "dst" not in d:
            raise CNIError(DECODE_FAILURE, "route without dst in result", f"field: {where}")
        gw = d.get("gw")
        return cls(dst=_decode("network", d["dst"], f"{where}.dst"),
                   gw=_decode("address", gw, f"{where}.gw") if gw else None,
                   **{k: d[k] for k in ("mtu", "advmss", "priority", "table", "scope") if d.get(k) is not None})


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.nameservers:
            d["nameservers"] = list(self.nameservers)
        if self.domain:
            d["domain"] = self.domain
        if self.search:
            d["search"] = list(self.search)
        if self.options:
            d["options"] = list(self.options)
        return d

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "DNS":
        d = d or {}
        return cls(nameservers=list(d.get("nameservers") or []), domain=str(d.get("domain") or ""),
                   search=list(d.get("search") or []), options=list(d.get("options") or []))


@dataclass
class Result:
    cni_version: str = "1.1.0"
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)

    def to_dict(self, version: Optional[str] = None) -> dict:
        version = version or self.cni_version
        d: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            d["interfaces"] = [i.to_dict(version) for i in self.interfaces]
        if self.ips:
            d["ips"] = [i.to_dict(version) for i in self.ips]
        if self.routes:
            d["routes"] = [r.to_dict(version) for r in self.routes]
        d["dns"] = self.dns.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        if not isinstance(d, dict):
            raise CNIError(DECODE_FAILURE, "result is not a JSON object", "")
        try:
            return cls(
                cni_version=str(d.get("cniVersion", "1.1.0")),
                interfaces=[Interface.from_dict(i) for i in d.get("interfaces") or []],
                ips=[IPConfig.from_dict(ip, f"ips[{n}]") for n, ip in enumerate(d.get("ips") or [])],
                routes=[Route.from_dict(r, f"routes[{n}]") for n, r in enumerate(d.get("routes") or [])],
                dns=DNS.from_dict(d.get("dns")),
            )
        except (AttributeError, TypeError) as e:
            raise CNIError(DECODE_FAILURE, f"malformed result: {e}", "") from None

    # Helpers delegates use while building a result.
    def add_interface(self, iface: Interface) -> int:
        self.interfaces.append(iface)
        return len(self.interfaces) - 1
