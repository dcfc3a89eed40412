"""Harness (no tests here) for the multiplex-bridge netns tests: a node netns running the delegate binary,
pods as netns, an IPAM (Debian's host-local or our multiplex-ipam) keeping its state in tmp."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Optional


from tests.cnitool import CNIOutput, ip_json, nsexec, run_plugin

PLUGIN = "multiplex-bridge"
IPAM_TYPES = ("host-local", "multiplex-ipam")


@dataclass
class BridgeLab:
    node: str
    root: str
    make_ns: Callable[[str], str]
    ipam_type: str = "host-local"

    @property
    def version(self) -> str:
        # Debian's host-local speaks CNI up to 1.0.0
        return "1.0.0" if self.ipam_type == "host-local" else "1.1.0"

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, "state")

    def conf(self, *subnets: str, name: str = "bnet", routes: Optional[list] = None, **fields: Any) -> dict:
        ipam: dict[str, Any] = {"type": self.ipam_type, "ranges": [[{"subnet": s}] for s in subnets]}
        if self.ipam_type == "host-local":
            ipam["dataDir"] = os.path.join(self.root, "host-local")
        if routes:
            ipam["routes"] = routes
        return {"cniVersion": self.version, "name": name, "type": PLUGIN, **fields, "ipam": ipam}

    def cni(self, command: str, conf: dict, cid: str = "", ns: Optional[str] = None, ifname: str = "eth0",
            **kw: Any) -> CNIOutput:
        return run_plugin(PLUGIN, command, conf, node=self.node, container_id=cid, netns=ns or "",
                          ifname=ifname if command not in ("GC", "STATUS") else "",
                          extra_env={"MULTIPLEX_STATE_DIR": self.state_dir,
                                     "MULTIPLEX_LOG_FILE": os.path.join(self.root, "bridge.log")}, **kw)

    def add(self, conf: dict, cid: str, ns: str, ifname: str = "eth0") -> dict:
        out = self.cni("ADD", conf, cid, ns, ifname)
        assert out.ok, out
        return out.out

    def check(self, conf: dict, prev: dict, cid: str, ns: str, ifname: str = "eth0") -> CNIOutput:
        return self.cni("CHECK", dict(conf, prevResult=prev), cid, ns, ifname)

    # ---- what a user looks at ------------------------------------------------------------------
    def node_links(self, kind: Optional[str] = None) -> set[str]:
        return {l["ifname"] for l in ip_json(self.node, "-d", "link", "show")
                if kind is None or l.get("linkinfo", {}).get("info_kind") == kind}

    def link_details(self, name: str) -> dict:
        return ip_json(self.node, "-d", "link", "show", "dev", name)[0]

    def masq_rules(self) -> list[dict]:
        out = nsexec(self.node, "nft", "-j", "list", "ruleset").stdout
        return [i["rule"] for i in json.loads(out)["nftables"] if "rule" in i]

    def sysctl(self, key: str) -> str:
        return nsexec(self.node, "sysctl", "-n", key).stdout.strip()

    def leases(self, network: str = "bnet") -> list[str]:
        """Addresses the IPAM holds for `network` (host-local: its files; multiplex-ipam: its DB)."""
        if self.ipam_type == "host-local":
            d = os.path.join(self.root, "host-local", network)
            if not os.path.isdir(d):
                return []
            return sorted(f for f in os.listdir(d) if f != "lock" and not f.startswith("last_reserved_ip"))
        rows: list[str] = []
        d = os.path.join(self.state_dir, "ipam")
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not f.endswith(".db"):
                continue
            con = sqlite3.connect(os.path.join(d, f))
            try:
                for (t,) in con.execute("select name from sqlite_master where type='table'").fetchall():
                    if "lease" in t:
                        rows += [repr(r) for r in con.execute(f"select * from {t}").fetchall() if network in r]
            finally:
                con.close()
        return rows


def kernel_has_bridge_vlan_filtering(node: str) -> bool:
    probe = "mpxvlprobe"
    r = subprocess.run(["ip", "-n", node, "link", "add", probe, "type", "bridge", "vlan_filtering", "1"],
                       capture_output=True)
    subprocess.run(["ip", "-n", node, "link", "del", probe], capture_output=True)
    return r.returncode == 0


def pod_ips(result: dict, version: int) -> list[str]:
    return [ip["address"].split("/")[0] for ip in result["ips"]
            if (":" in ip["address"]) == (version == 6)]
