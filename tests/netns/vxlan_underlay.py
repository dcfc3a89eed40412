"""Nodes on an underlay for the vxlan-overlay tests: an underlay netns with a bridge (the switch,
MTU 1400 as this machine's eth0 and the lab's), each node a netns with one veth on it holding an
IPv4 and an IPv6 address. The same shape as multiplex/cli/lab/topology.py, with names unique per
run (the lab's are fixed), so tests and a running lab never meet.

Also what a user reads back: FDB and neighbour entries (`bridge -j fdb`, `ip -j neigh`), UDP
counters on the underlay (nftables, bridge family, in the underlay netns), pings.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from tests.cnitool import CNIOutput, ip_json, nsexec, run_plugin

PLUGIN = "multiplex-vxlan-overlay"
MTU = 1400
NODE_IF = "ul0"


@dataclass
class UnderlayNode:
    index: int
    netns: str
    root: str                 # this node's own files (state dir, logs)

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def v4(self) -> str:
        return f"198.18.70.{10 + self.index}"

    @property
    def v6(self) -> str:
        return f"fd00:70::{10 + self.index}"

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def port(self) -> str:
        return f"to-{self.name}"


@dataclass
class Underlay:
    netns: str
    nodes: list[UnderlayNode] = field(default_factory=list)

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, make_ns, root: str, count: int, mtu: int = MTU) -> "Underlay":
        ul = cls(make_ns("ul"))
        sh("ip", "-n", ul.netns, "link", "add", "ulbr", "mtu", str(mtu), "type", "bridge")
        sh("ip", "-n", ul.netns, "link", "set", "ulbr", "up")
        for i in range(1, count + 1):
            ul.add_node(make_ns("vn"), os.path.join(root, f"n{i}"), i, mtu)
        return ul

    def add_node(self, netns: str, root: str, index: int, mtu: int = MTU) -> UnderlayNode:
        node = UnderlayNode(index, netns, root)
        os.makedirs(node.state_dir, exist_ok=True)
        sh("ip", "-n", netns, "link", "add", NODE_IF, "mtu", str(mtu), "type", "veth", "peer", "name", node.port,
           "mtu", str(mtu), "netns", self.netns)
        sh("ip", "-n", self.netns, "link", "set", node.port, "master", "ulbr", "up")
        sh("ip", "-n", netns, "addr", "add", f"{node.v4}/24", "dev", NODE_IF)
        sh("ip", "-n", netns, "addr", "add", f"{node.v6}/64", "dev", NODE_IF, "nodad")
        sh("ip", "-n", netns, "link", "set", NODE_IF, "up")
        self.nodes.append(node)
        return node

    # ---- counting on the underlay ---------------------------------------------------------------
    def count_udp(self, port: int = 4789, also: tuple[int, ...] = ()) -> None:
        """nftables counters in the underlay's switch: UDP to `port` in all (\"all\"), per node port
        (\"n1\", ...), and ARP carried inside it per node port (\"arp-n1\", ...)."""
        rules = [f"add rule bridge vxt cnt udp dport {port} counter comment \"all\""]
        rules += [f"add rule bridge vxt cnt oifname \"{n.port}\" udp dport {port} counter comment \"{n.name}\""
                  for n in self.nodes]
        # ARP inside VXLAN: the inner EtherType sits 28 bytes into the UDP header (UDP 8 + VXLAN 8 +
        # destination and source MAC 12)
        rules += [f"add rule bridge vxt cnt oifname \"{n.port}\" udp dport {port} @th,224,16 0x0806 counter "
                  f"comment \"arp-{n.name}\"" for n in self.nodes]
        rules += [f"add rule bridge vxt cnt udp dport {p} counter comment \"port-{p}\"" for p in also]
        script = "\n".join(["add table bridge vxt", "delete table bridge vxt", "add table bridge vxt",
                            "add chain bridge vxt cnt { type filter hook forward priority 0; }"] + rules) + "\n"
        subprocess.run(["ip", "netns", "exec", self.netns, "nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True)

    def udp_packets(self) -> dict[str, int]:
        """comment ("all", "n1", ...) -> packets counted so far."""
        out = json.loads(nsexec(self.netns, "nft", "-j", "list", "table", "bridge", "vxt").stdout)
        counts = {}
        for item in out["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            for e in rule["expr"]:
                if "counter" in e:
                    counts[rule.get("comment", "")] = e["counter"]["packets"]
        return counts


def sh(*argv: str) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {r.stderr.strip()}")


def overlay_conf(name: str, vni: int, *ranges: list[dict], **fields: Any) -> dict:
    return {"cniVersion": "1.1.0", "name": name, "type": PLUGIN, "vni": vni, **fields,
            "ipam": {"type": "multiplex-ipam", "ranges": [list(r) for r in ranges]}}


def cni(node: UnderlayNode, command: str, conf: dict, cid: str = "", netns: str = "", ifname: str = "net1",
        plugin: str = PLUGIN) -> CNIOutput:
    return run_plugin(plugin, command, conf, node=node.netns, container_id=cid, netns=netns,
                      ifname=ifname if command not in ("GC", "STATUS") else "",
                      extra_env={"MULTIPLEX_STATE_DIR": node.state_dir,
                                 "MULTIPLEX_LOG_FILE": os.path.join(node.root, "multiplex.log")})


def container_id() -> str:
    return uuid.uuid4().hex


# ---- what a user reads -------------------------------------------------------------------------------
def fdb(ns: str, dev: str) -> set[tuple[str, str]]:
    """(MAC, dst) of the VXLAN device's remote entries (`bridge -j fdb show dev DEV`)."""
    out = nsexec(ns, "bridge", "-j", "fdb", "show", "dev", dev, check=False).stdout
    return {(e["mac"], e["dst"]) for e in json.loads(out or "[]") if e.get("dst")}


def neighbours(ns: str, dev: str) -> dict[str, str]:
    """IP -> MAC of the permanent neighbour entries on `dev`."""
    return {n["dst"]: n.get("lladdr", "") for n in ip_json(ns, "neigh", "show", "dev", dev, "nud", "permanent")}


def vxlan_links(ns: str) -> dict[str, dict]:
    return {l["ifname"]: l for l in ip_json(ns, "-d", "link", "show")
            if l.get("linkinfo", {}).get("info_kind") == "vxlan"}


def link_mtu(ns: str, dev: str) -> int:
    return ip_json(ns, "link", "show", "dev", dev)[0]["mtu"]


def pod_address(result: dict, family: int) -> Optional[str]:
    for ip in result.get("ips", []):
        addr = ip["address"].split("/")[0]
        if (":" in addr) == (family == 6):
            return addr
    return None


def ping_df(ns: str, address: str, size: int) -> subprocess.CompletedProcess:
    """One don't-fragment ping whose IP packet is `size` bytes in all."""
    header = 28 if ":" not in address else 48
    flag = "-4" if ":" not in address else "-6"
    return subprocess.run(["ip", "netns", "exec", ns, "ping", flag, "-c", "1", "-W", "2", "-M", "do", "-s",
                           str(size - header), address], capture_output=True, text=True)


def daemon_node_config(node: UnderlayNode, objects: str, bridge: str, subnet: str) -> dict:
    """The node's multiplex config in a daemon cluster: a bridge cluster network (`bridge`,
    `subnet`), the node's NADs under its root, the pods of the shared object directory."""
    return {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex",
            "clusterNetwork": {"cniVersion": "1.1.0", "name": "podnet", "type": "multiplex-bridge", "bridge": bridge,
                               "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": subnet}]]}},
            "nadDir": os.path.join(node.root, "nads"), "podDir": os.path.join(objects, "pods"),
            "stateDir": node.state_dir, "logFile": os.path.join(node.root, "multiplex.log")}


def shim_cni(node: UnderlayNode, socket_path: str, command: str, config: dict, pod: dict) -> CNIOutput:
    """`command` for `pod` ({name, netns, cid}) through the node daemon's shim, as the runtime calls it."""
    from tests.cnitool import CNI_PATH
    from tests.daemonproc import shim_path

    shim = shim_path(node.root, socket_path, fallback="fail")
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod['name']};K8S_POD_UID=uid-{pod['name']}"
    return run_plugin(shim, command, config, node=node.netns, container_id=pod["cid"], netns=pod["netns"],
                      ifname="eth0", args=args, path=CNI_PATH)


def wait_for(what: str, fn, timeout: float, every: float = 0.1) -> float:
    """Poll `fn` until true; the seconds it took (printed). Fails with `what` after `timeout`."""
    import time

    start = time.monotonic()
    while not fn():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    took = time.monotonic() - start
    print(f"{what}: {took:.2f} s")
    return took
