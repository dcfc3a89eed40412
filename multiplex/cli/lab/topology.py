"""The lab's namespaces and links: an underlay, N nodes on it, pods on each node.

```
   mpxlab-underlay  ── bridge ul-br0 (MTU 1400) ── to-n1 ─┐ ── to-n2 ─┐ ...
                                                          │ veth       │
   mpxlab-n1 (node) ── underlay0 198.19.0.11/24 fd00:19::11/64 (MTU 1400)
        ├─ mpxlab-n1-p1, mpxlab-n1-p2, ... (pods; their links come from multiplex)
        └─ mpx-up0 ── veth ── mpxlab-n1-out (a host outside the node, for ipvlan; only when the
                                             kernel has ipvlan)
```

Every name starts with `mpxlab-`, so `multiplex lab --down` finds what a crashed lab left. The
underlay is its own netns with a plain bridge, as a switch between the nodes: the delegates that
cross nodes (vxlan-overlay, bgp-routed) ride on it. Addresses only from 198.18.0.0/15 and fd00::/8.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

PREFIX = "mpxlab"
UNDERLAY_NS = f"{PREFIX}-underlay"
UNDERLAY_BRIDGE = "ul-br0"
UNDERLAY_IF = "underlay0"          # the node's end of its underlay veth
UNDERLAY_MTU = 1400
UNDERLAY_V4 = "198.19.0.0/24"
UNDERLAY_V6 = "fd00:19::/64"
UPLINK = "mpx-up0"                 # the ipvlan master: the node's end of a veth to its outside host
OUTSIDE_ADDR = "198.18.20.1"


@dataclass
class Pod:
    node: str                      # the node's name (spec.nodeName)
    name: str                      # the pod's name (namespace default)
    netns: str
    container_id: str
    uid: str
    interfaces: dict[str, list[str]] = field(default_factory=dict)   # ifname -> addresses
    networks: dict[str, str] = field(default_factory=dict)           # network -> ifname
    role: str = ""                 # its `role` label: "server", "client" or none
    mtus: dict[str, int] = field(default_factory=dict)               # ifname -> MTU


@dataclass
class Node:
    index: int                     # 1-based

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def outside_ns(self) -> str:
        return f"{self.netns}-out"

    @property
    def underlay_v4(self) -> str:
        return f"198.19.0.{10 + self.index}"

    @property
    def underlay_v6(self) -> str:
        return f"fd00:19::{10 + self.index}"

    def pods(self, count: int) -> list[Pod]:
        out = []
        for i in range(1, count + 1):
            name = f"{self.name}-pod{i}"
            out.append(Pod(node=self.name, name=name, netns=f"{self.netns}-p{i}", uid=f"lab-uid-{name}",
                           container_id=f"{PREFIX}{self.index:02d}{i:02d}".ljust(64, "0")))
        return out


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _in(ns: str, *argv: str) -> None:
    sh("ip", "netns", "exec", ns, *argv)


def _new_netns(name: str) -> None:
    sh("ip", "netns", "add", name)
    _in(name, "ip", "link", "set", "lo", "up")


def make_underlay() -> None:
    """The switch between the nodes: a bridge in a netns of its own."""
    _new_netns(UNDERLAY_NS)
    _in(UNDERLAY_NS, "ip", "link", "add", UNDERLAY_BRIDGE, "mtu", str(UNDERLAY_MTU), "type", "bridge")
    _in(UNDERLAY_NS, "ip", "link", "set", UNDERLAY_BRIDGE, "up")


def make_node(node: Node) -> None:
    """The node's netns and its underlay interface, a veth whose other end is a bridge port."""
    _new_netns(node.netns)
    port = f"to-{node.name}"
    sh("ip", "-n", node.netns, "link", "add", UNDERLAY_IF, "mtu", str(UNDERLAY_MTU), "type", "veth",
       "peer", "name", port, "mtu", str(UNDERLAY_MTU), "netns", UNDERLAY_NS)
    _in(UNDERLAY_NS, "ip", "link", "set", port, "master", UNDERLAY_BRIDGE, "up")
    _in(node.netns, "ip", "addr", "add", f"{node.underlay_v4}/24", "dev", UNDERLAY_IF)
    _in(node.netns, "ip", "addr", "add", f"{node.underlay_v6}/64", "dev", UNDERLAY_IF, "nodad")
    _in(node.netns, "ip", "link", "set", UNDERLAY_IF, "up")


def make_outside_host(node: Node) -> None:
    """For the ipvlan network: an uplink veth from the node to a host outside it."""
    _new_netns(node.outside_ns)
    sh("ip", "-n", node.netns, "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0",
       "netns", node.outside_ns)
    _in(node.netns, "ip", "link", "set", UPLINK, "up")
    _in(node.outside_ns, "ip", "link", "set", "eth0", "up")
    _in(node.outside_ns, "ip", "addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "eth0")


def make_pod_netns(pod: Pod) -> None:
    _new_netns(pod.netns)


def kernel_has_ipvlan() -> bool:
    """Probe in a scratch namespace: can this kernel make an ipvlan link?"""
    probe = f"{PREFIX}-probe"
    sh("ip", "netns", "add", probe, check=False)
    try:
        sh("ip", "-n", probe, "link", "add", "mpx-pr0", "type", "veth", "peer", "name", "mpx-pr1", check=False)
        return sh("ip", "-n", probe, "link", "add", "link", "mpx-pr0", "name", "ipvl0", "type", "ipvlan",
                  check=False).returncode == 0
    finally:
        sh("ip", "netns", "del", probe, check=False)


def lab_netns() -> list[str]:
    """Every netns a lab made (also one left by a crashed run)."""
    lines = sh("ip", "netns", "list", check=False).stdout.splitlines()
    return [l.split()[0] for l in lines if l.strip() and l.split()[0].startswith(PREFIX + "-")]


def delete_netns() -> None:
    for name in lab_netns():
        sh("ip", "netns", "del", name, check=False)


def ping(src_ns: str, address: str) -> bool:
    flag = "-6" if ":" in address else "-4"
    return subprocess.run(["ip", "netns", "exec", src_ns, "ping", flag, "-c", "1", "-W", "2", address],
                          capture_output=True).returncode == 0
