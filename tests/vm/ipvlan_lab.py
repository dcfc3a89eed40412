"""Building blocks for ipvlan tests (reusable by multiplex-level tests in the VM tier).

An `Underlay` is the wire an ipvlan master hangs off: a veth pair whose one end (the master) is in
the node netns and whose other end is in an "outside" netns standing for the rest of the network
(a host at the subnet's .1 / ::1, which is also the pods' gateway in l2). For l3/l3s the node's
master holds .2 / ::2 and the outside host routes the pods' subnet via it.

Addresses (only 198.18.0.0/15 and fd00::/8): underlay k is 198.18.(64+k).0/24 and fd00:64:k::/64;
l2 pods take addresses from that subnet (.10-.99); l3 pods from 198.18.(96+k).0/24 and fd00:96:k::/64.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from tests.cnitool import CNIOutput
from tests.vm.cnifork import run_cni

TYPE = "multiplex-ipvlan"


@dataclass
class Underlay:
    node: str
    outside: str
    master: str
    k: int
    mtu: int = 1500

    # --- the address plan ----------------------------------------------------------------------
    @property
    def subnet4(self) -> str:
        return f"198.18.{64 + self.k}.0/24"

    @property
    def subnet6(self) -> str:
        return f"fd00:64:{self.k}::/64"

    @property
    def routed4(self) -> str:
        return f"198.18.{96 + self.k}.0/24"

    @property
    def routed6(self) -> str:
        return f"fd00:96:{self.k}::/64"

    @property
    def outside4(self) -> str:
        return f"198.18.{64 + self.k}.1"

    @property
    def outside6(self) -> str:
        return f"fd00:64:{self.k}::1"

    @property
    def node4(self) -> str:
        return f"198.18.{64 + self.k}.2"

    @property
    def node6(self) -> str:
        return f"fd00:64:{self.k}::2"

    def outside_host(self, family: int) -> str:
        return self.outside4 if family == 4 else self.outside6

    # --- configs -------------------------------------------------------------------------------
    def ipam(self, families: tuple[int, ...] = (4,), routed: bool = False, default_route: bool = True) -> dict:
        """A multiplex-ipam block: l2 pods share the wire's subnet, routed (l3) pods get their own."""
        sets, routes = [], []
        for fam in families:
            if routed:
                subnet = self.routed4 if fam == 4 else self.routed6
                net = ipaddress.ip_network(subnet)
                sets.append([{"subnet": subnet}])
            else:
                subnet = self.subnet4 if fam == 4 else self.subnet6
                net = ipaddress.ip_network(subnet)
                sets.append([{"subnet": subnet, "rangeStart": str(net.network_address + 10),
                              "rangeEnd": str(net.network_address + 99), "gateway": self.outside_host(fam)}])
            if default_route:
                routes.append({"dst": "0.0.0.0/0" if fam == 4 else "::/0"})
        block: dict[str, Any] = {"type": "multiplex-ipam", "ranges": sets}
        if routes:
            block["routes"] = routes
        return block

    def conf(self, name: str = "ipv", mode: Optional[str] = "l2", families: tuple[int, ...] = (4,),
             version: str = "1.1.0", **extra: Any) -> dict:
        """A multiplex-ipvlan network config on this underlay's master."""
        c: dict[str, Any] = {"cniVersion": version, "name": name, "type": TYPE, "master": self.master,
                             "ipam": self.ipam(families, routed=mode in ("l3", "l3s"))}
        if mode is not None:
            c["mode"] = mode
        c.update(extra)
        return {k: v for k, v in c.items() if v is not None}

    # --- the outside network -------------------------------------------------------------------
    def route_pods_from_outside(self) -> None:
        """l3/l3s: the outside host reaches the pods' subnets via the node's master address."""
        ip_batch(self.outside, f"route replace {self.routed4} via {self.node4}",
                 f"route replace {self.routed6} via {self.node6}")

    def outside_neighbours(self, family: int = 4) -> dict[str, str]:
        """The outside host's neighbour table on the wire: address -> MAC (resolved entries only)."""
        out = {}
        for n in ipn_json(self.outside, f"-{family}", "neigh", "show", "dev", "out0"):
            if n.get("lladdr") and "FAILED" not in n.get("state", []) and "INCOMPLETE" not in n.get("state", []):
                out[n["dst"]] = n["lladdr"]
        return out

    def master_mac(self) -> str:
        return ipn_json(self.node, "link", "show", "dev", self.master)[0]["address"]


def ipn(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip -n NS ARGS`: one exec (cheaper than `ip netns exec`, which matters under emulation)."""
    return subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, check=check)


def ipn_json(ns: str, *argv: str) -> Any:
    out = ipn(ns, "-j", *argv).stdout
    return json.loads(out) if out.strip() else []


def ip_batch(ns: str, *commands: str) -> None:
    """Several `ip` commands in netns `ns` with one exec."""
    r = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n", capture_output=True,
                       text=True)
    assert r.returncode == 0, f"ip -n {ns} -batch failed: {r.stderr}"


def make_underlay(netns_factory: Callable[[str], str], node: str, k: int = 0, master: str = "",
                  mtu: int = 1500, node_addresses: bool = True) -> Underlay:
    """A wire from `node` to a new outside netns; its master (default `mpxm<k>`) is up in `node`.
    IPv6 addresses skip DAD (nodad), so everything is usable at once."""
    outside = netns_factory("out")
    u = Underlay(node=node, outside=outside, master=master or f"mpxm{k}", k=k, mtu=mtu)
    ipn(node, "link", "add", u.master, "mtu", str(mtu), "type", "veth", "peer", "name", "out0",
        "mtu", str(mtu), "netns", outside)
    ip_batch(outside, f"addr add {u.outside4}/24 dev out0", f"addr add {u.outside6}/64 dev out0 nodad",
             "link set out0 up")
    cmds = [f"addr add {u.node4}/24 dev {u.master}", f"addr add {u.node6}/64 dev {u.master} nodad"] \
        if node_addresses else []
    ip_batch(node, *cmds, f"link set {u.master} up")
    return u


@dataclass
class Caller:
    """CNI calls on one node with one state dir (IPAM database, mode records): `cni(...)`."""
    node: str
    state_dir: str
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, command: str, config: dict, netns: str = "", container_id: str = "",
                 ifname: str = "eth0", args: str = "", plugin: str = TYPE,
                 env: Optional[dict] = None) -> CNIOutput:
        extra = {"MULTIPLEX_STATE_DIR": self.state_dir}
        extra.update(env or {})
        self.calls.append((command, container_id))
        return run_cni(plugin, command, config, node=self.node, container_id=container_id,
                       netns=netns, ifname=ifname if command not in ("GC", "STATUS") else "", args=args,
                       extra_env=extra)

    def leases(self, network: Optional[str] = None) -> list[str]:
        """Addresses the IPAM holds, as `container/ifname address`."""
        from multiplex.ipam.report import list_leases

        return sorted(f"{l.owner.container_id}/{l.owner.ifname} {l.address}"
                      for l in list_leases(os.path.join(self.state_dir, "ipam"), network))

    def mode_records(self) -> dict[str, dict]:
        """Every attachment in the one-mode-per-master records."""
        import json

        d = os.path.join(self.state_dir, "ipvlan")
        out: dict[str, dict] = {}
        for name in os.listdir(d) if os.path.isdir(d) else []:
            with open(os.path.join(d, name)) as f:
                text = f.read()
            out.update(json.loads(text).get("attachments", {}) if text.strip() else {})
        return out


# --- what a user looks at in a pod ------------------------------------------------------------------
def pod_links(ns: str) -> set[str]:
    return {l["ifname"] for l in ipn_json(ns, "link", "show")} - {"lo"}


def pod_addresses(ns: str, dev: str = "eth0") -> set[str]:
    """Global addresses (CIDR form) on `dev`."""
    return {f"{a['local']}/{a['prefixlen']}" for i in ipn_json(ns, "addr", "show", "dev", dev)
            for a in i.get("addr_info", []) if a.get("scope") == "global"}


def link_details(ns: str, dev: str = "eth0") -> dict:
    return ipn_json(ns, "-d", "link", "show", "dev", dev)[0]


def routes(ns: str, family: int = 4) -> list[dict]:
    return ipn_json(ns, f"-{family}", "route", "show")


def default_route(ns: str, family: int = 4) -> Optional[dict]:
    return next((r for r in routes(ns, family) if r.get("dst") == "default"), None)
