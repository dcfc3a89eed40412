"""The raw netlink floor: what the kernel needs for one pod's interface, in one warm process.

    ip netns exec NODE .venv/bin/python tests/perf/floor.py

Per pod, with multiplex's own netlink layer (multiplex/netlink: pyroute2 on a socket made in the
target netns, the veth's peer born inside the pod netns), and nothing else: per interface a veth
into the pod's (fresh) netns, its host end up on a bridge, an address on the pod end, the pod end
up (eth0, net1, ... for a pod of several attachments). No IPAM, no config, no cache, no lock, no
route, no FDB entry: the work a CNI call cannot avoid, the floor a warm daemon's ADD is compared
with. DEL deletes the pod's host ends as one link group, as multiplex does
(multiplex/netlink/batch.py): one request, one RCU grace period for all of them, the peers going
with them.

A line server like tests/perf/runner.py, so the benchmark can interleave it with the other sides
run by run (stdin: one JSON request per line; stdout: one JSON answer per line):

- `{"op": "setup", "bridge": NAME, "subnet": CIDR}`: make the bridge (not timed);
- `{"op": "pod", "netns": PATH, "index": K, "interfaces": N}`: the pod's ADD of N interfaces
  (addresses from the subnet's K*8+2nd host on), then its DEL; answers
  `{"add": s, "del": s, "links": [names in the pod after ADD]}`;
- `{"op": "quit"}`: deletes the bridge and exits.

The first pod of a run pays pyroute2's import and first-use costs: the caller discards it.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from typing import Any, Optional

from multiplex.netlink.batch import DeleteBatch
from multiplex.netlink.handle import Handle, Link
from multiplex.netlink.veth import make_veth_pair


class Floor:
    def __init__(self) -> None:
        self.node = Handle()
        self.bridge: Optional[Link] = None
        self.subnet: Optional[ipaddress.IPv4Network] = None

    def setup(self, bridge: str, subnet: str) -> dict:
        self.bridge, _ = self.node.ensure_bridge(bridge)
        self.subnet = ipaddress.ip_network(subnet)
        return {"bridge": self.bridge.name}

    def pod(self, netns: str, index: int, interfaces: int = 1) -> dict:
        assert self.bridge is not None and self.subnet is not None, "setup first"
        hosts = [f"flr{os.getpid() % 10000:04d}{index % 10000:04d}{k}" for k in range(interfaces)]
        first = self.subnet.network_address + (index * 8) % (self.subnet.num_addresses - 16) + 2
        t0 = time.perf_counter()
        with Handle(netns) as pod:
            for k, host_name in enumerate(hosts):
                _, peer = make_veth_pair(self.node, pod, host_name, "eth0" if k == 0 else f"net{k}",
                                         master=self.bridge)
                pod.add_address(peer, ipaddress.ip_interface(f"{first + k}/{self.subnet.prefixlen}"))
                pod.set_up(peer)
        add = time.perf_counter() - t0
        with Handle(netns) as pod:   # not timed: what the pod has
            names = sorted(link.name for link in pod.links())
        t1 = time.perf_counter()
        with DeleteBatch() as batch:
            node = Handle(batch=batch)
            try:
                for host_name in hosts:
                    node.delete_link(host_name)
            finally:
                node.close()
        dele = time.perf_counter() - t1
        return {"add": add, "del": dele, "links": names}

    def close(self) -> None:
        if self.bridge is not None:
            self.node.delete_link(self.bridge.name)
        self.node.close()


def answer(floor: Floor, req: dict[str, Any]) -> dict:
    if req["op"] == "setup":
        return floor.setup(req["bridge"], req["subnet"])
    if req["op"] == "pod":
        return floor.pod(req["netns"], int(req["index"]), int(req.get("interfaces", 1)))
    return {"error": f"unknown op {req['op']!r}"}


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    floor = Floor()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            if req["op"] == "quit":
                break
            try:
                ans = answer(floor, req)
            except Exception as e:  # answer, never hang the benchmark
                ans = {"error": f"{type(e).__name__}: {e}"}
            answers.write(json.dumps(ans) + "\n")
            answers.flush()
    finally:
        floor.close()


if __name__ == "__main__":
    main()
