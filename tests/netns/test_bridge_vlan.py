"""multiplex-bridge with `vlan`, on a kernel with bridge VLAN filtering (the VM tier: this machine's
kernel has none; Debian's has it). On a kernel without it, test_bridge.py checks the clean refusal."""
from __future__ import annotations

import json

import pytest

from tests.cnitool import addresses, nsexec, ping
import os
from typing import Any, Optional

from tests.cnitool import CNIOutput
from tests.netns.test_bridge_lab import PLUGIN, BridgeLab, kernel_has_bridge_vlan_filtering, pod_ips

pytestmark = [pytest.mark.root, pytest.mark.vm]


class WarmBridgeLab(BridgeLab):
    """Plugin calls in a fork of the warm test process (tests/vm/cnifork.py): under the VM tier's
    emulation a fresh Python costs ~20 s per call; the fork gets the same env, stdin and netns."""

    def cni(self, command: str, conf: dict, cid: str = "", ns: Optional[str] = None, ifname: str = "eth0",
            **kw: Any) -> CNIOutput:
        from tests.vm.cnifork import run_cni

        return run_cni(PLUGIN, command, conf, node=self.node, container_id=cid, netns=ns or "",
                       ifname=ifname if command not in ("GC", "STATUS") else "",
                       extra_env={"MULTIPLEX_STATE_DIR": self.state_dir,
                                  "MULTIPLEX_LOG_FILE": os.path.join(self.root, "bridge.log")}, **kw)


@pytest.fixture
def hl(node, netns_factory, tmp_path):
    lab = WarmBridgeLab(node=node, root=str(tmp_path), make_ns=netns_factory, ipam_type="host-local")
    assert kernel_has_bridge_vlan_filtering(node), "this kernel has no bridge VLAN filtering"
    return lab


def port_vlans(lab: BridgeLab) -> dict[str, list[tuple[int, bool, bool]]]:
    out = json.loads(nsexec(lab.node, "bridge", "-j", "vlan", "show").stdout or "[]")
    return {e["ifname"]: [(v["vlan"], "PVID" in v.get("flags", []), "Egress Untagged" in v.get("flags", []))
                          for v in e["vlans"]] for e in out}


def test_vlan_ports_isolate_pods_on_one_bridge_and_the_gateway_serves_its_vlan(hl):
    v42 = hl.conf("198.18.41.0/24", name="v42", bridge="mpxt-brv", vlan=42, isGateway=True)
    v43 = hl.conf("198.18.41.0/24", name="v43", bridge="mpxt-brv", vlan=43)
    v43["ipam"]["ranges"] = [[{"subnet": "198.18.41.0/24", "rangeStart": "198.18.41.100"}]]
    a, b, c = hl.make_ns("pod"), hl.make_ns("pod"), hl.make_ns("pod")
    ra, rb, rc = hl.add(v42, "cva", a), hl.add(v42, "cvb", b), hl.add(v43, "cvc", c)

    vlans = port_vlans(hl)
    assert vlans[ra["interfaces"][1]["name"]] == [(42, True, True)]
    assert vlans[rc["interfaces"][1]["name"]] == [(43, True, True)]
    assert "vlan_filtering 1" in nsexec(hl.node, "ip", "-d", "link", "show", "mpxt-brv").stdout

    # same VLAN: reachable; other VLAN on the same bridge and subnet: not
    assert ping(a, pod_ips(rb, 4)[0])
    assert not ping(c, pod_ips(ra, 4)[0], timeout=1)

    # isGateway on a VLAN: the gateway lives on <bridge>.<vlan>, an access port of that VLAN
    assert addresses(hl.node, "mpxt-brv.42") == {"198.18.41.1/24"}
    assert [i["name"] for i in ra["interfaces"]][-1] == "mpxt-brv.42"
    assert ping(hl.node, pod_ips(ra, 4)[0])

    assert hl.check(v42, ra, "cva", a).ok
    assert hl.cni("DEL", v42, "cva", a).ok
    assert hl.cni("DEL", v42, "cva", a).ok
    assert ra["interfaces"][1]["name"] not in hl.node_links()
    assert ping(b, "198.18.41.1")  # the VLAN gateway stays for the other pods


def test_one_mac_per_vlan_of_a_bridge(hl):
    mac = "02:42:c6:12:41:01"
    v42 = hl.conf("198.18.42.0/24", name="v42", bridge="mpxt-brvm", vlan=42, runtimeConfig={"mac": mac})
    v43 = hl.conf("198.18.43.0/24", name="v43", bridge="mpxt-brvm", vlan=43, runtimeConfig={"mac": mac})
    a, b, c = hl.make_ns("pod"), hl.make_ns("pod"), hl.make_ns("pod")
    ra, rb = hl.add(v42, "cma", a), hl.add(v43, "cmb", b)  # another VLAN is another network: fine
    fdb = json.loads(nsexec(hl.node, "bridge", "-j", "fdb", "show", "br", "mpxt-brvm").stdout or "[]")
    static = {(e["ifname"], e.get("vlan")) for e in fdb if e["mac"] == mac and e.get("state") == "static"}
    assert static == {(ra["interfaces"][1]["name"], 42), (rb["interfaces"][1]["name"], 43)}
    out = hl.cni("ADD", v42, "cmc", c)
    assert out.code == 103 and "field: runtimeConfig.mac" in out.out["details"], out
    assert hl.node_links("veth") == {ra["interfaces"][1]["name"], rb["interfaces"][1]["name"]}
