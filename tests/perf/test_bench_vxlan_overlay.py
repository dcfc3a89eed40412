"""Benchmark (printed, never timed against a limit): the vxlan overlay beside plain paths, same run.

- Throughput: TCP for 2 s from a pod on node 1 to a pod on node 2 over the overlay, beside the
  same two nodes over their plain underlay veths (the path the overlay rides on). A small Python
  sender and receiver (no iperf3 on this machine), the same on both paths, so the ratio is what
  to read (the issue aims at >= 70%).
- ADD latency: an overlay attachment beside a multiplex-bridge attachment, each exec'd as a
  runtime would, 5 ADD + DEL each, medians printed.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time

import pytest

from tests.cnitool import NetnsPool, run_plugin
from tests.netns.vxlan_underlay import Underlay, cni, container_id, overlay_conf, pod_address

pytestmark = [pytest.mark.root, pytest.mark.perf]

SECONDS = 2.0
PORT = 5201

RECEIVER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); n = 0; t0 = time.monotonic()
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
print(n / (time.monotonic() - t0))
"""

SENDER = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
buf = b"x" * (1 << 17); end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(buf)
c.close()
"""


def throughput(src_ns: str, dst_ns: str, address: str) -> float:
    """Bytes per second received at `address` (in `dst_ns`) from `src_ns` over SECONDS."""
    rx = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", RECEIVER, address, str(PORT)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().strip() == "listening"
        subprocess.run(["ip", "netns", "exec", src_ns, sys.executable, "-c", SENDER, address, str(PORT), str(SECONDS)],
                       check=True, timeout=60)
        out, _ = rx.communicate(timeout=60)
        return float(out.strip())
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()


def test_overlay_throughput_and_add_latency_beside_plain_paths(tmp_path):
    pool = NetnsPool("mpx")
    made = []
    try:
        ul = Underlay.build(pool.make, str(tmp_path), 2)
        n1, n2 = ul.nodes
        ranges = lambda i: [{"subnet": "198.18.88.0/24", "rangeStart": f"198.18.88.{i * 10}",
                             "rangeEnd": f"198.18.88.{i * 10 + 9}"}]
        pods = {}
        for node, peer in ((n1, n2), (n2, n1)):
            ns, cid = pool.make("vp"), container_id()
            conf = overlay_conf("bench", 88, ranges(node.index), peers=[peer.v4])
            out = cni(node, "ADD", conf, cid, ns)
            assert out.ok, out
            made.append((node, conf, cid, ns))
            pods[node.name] = (ns, out.out)
        overlay = throughput(pods["n1"][0], pods["n2"][0], pod_address(pods["n2"][1], 4))
        plain = throughput(n1.netns, n2.netns, n2.v4)

        # ADD latency: overlay vs bridge, exec'd, on node 1
        def timed(plugin: str, conf: dict) -> list[float]:
            out = []
            for _ in range(5):
                ns, cid = pool.make("vl"), container_id()
                t0 = time.perf_counter()
                r = run_plugin(plugin, "ADD", conf, node=n1.netns, container_id=cid, netns=ns, ifname="net1",
                               extra_env={"MULTIPLEX_STATE_DIR": n1.state_dir})
                out.append(time.perf_counter() - t0)
                assert r.ok, r
                run_plugin(plugin, "DEL", conf, node=n1.netns, container_id=cid, netns=ns, ifname="net1",
                           extra_env={"MULTIPLEX_STATE_DIR": n1.state_dir})
                pool.drop(ns)
            return out

        ov = timed("multiplex-vxlan-overlay", overlay_conf("bench", 88, ranges(1), peers=[n2.v4]))
        br = timed("multiplex-bridge", {"cniVersion": "1.1.0", "name": "benchbr", "type": "multiplex-bridge",
                                        "bridge": "mpxt-bench",
                                        "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.89.0/24"}]]}})
        print(f"\nthroughput pod n1 -> pod n2 over the overlay: {overlay / 1e6:8.1f} MB/s")
        print(f"throughput node n1 -> node n2 over the underlay: {plain / 1e6:8.1f} MB/s")
        print(f"overlay / plain: {overlay / plain:.0%} (aim: >= 70%)")
        print(f"ADD (exec'd, median of 5): vxlan-overlay {statistics.median(ov) * 1000:.1f} ms, "
              f"bridge {statistics.median(br) * 1000:.1f} ms")
        assert overlay > 0 and plain > 0
    finally:
        for node, conf, cid, ns in made:
            cni(node, "DEL", conf, cid, ns)
        pool.close()
