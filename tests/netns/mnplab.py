"""Helpers for the MultiNetworkPolicy tests: labelled pods on a bridge network, servers in their
netns, and a matrix of TCP, UDP and ICMP probes run in parallel from inside the pods' netns.

A probe is what a user would try: a TCP connect (allowed = the handshake completes), a UDP
datagram answered by an echo server (allowed = the answer comes back), a ping. A denied probe is
one the policy drops, so it ends by timeout (TIMEOUT): the probes run concurrently so a matrix of
hundreds costs a few of those.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional

from multiplex.netlink.netns import entered
from multiplex.policy.mnp.matrix import tcp_reaches

TIMEOUT = 0.4
TCP_PORTS = (8080, 9090)
UDP_PORT = 5353
PROBES = ("tcp8080", "tcp9090", "udp5353", "icmp")
NETWORK = "default/blue"
STATUS = "k8s.v1.cni.cncf.io/network-status"


def netns_path(name: str) -> str:
    return name if name.startswith("/") else f"/var/run/netns/{name}"


def pod_object(name: str, namespace: str, labels: dict, networks: str, ports: Optional[dict] = None) -> dict:
    """A Pod with labels and named container ports (`{"web": 8080}`: TCP)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels,
                         "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": k, "containerPort": v, "protocol": "TCP"}
                                                              for k, v in (ports or {}).items()]}]}}


def write_pod(pod_dir: str, pod: dict) -> None:
    os.makedirs(pod_dir, exist_ok=True)
    meta = pod["metadata"]
    with open(os.path.join(pod_dir, f"{meta['namespace']}-{meta['name']}.json"), "w") as f:
        json.dump(pod, f)


def read_pods(pod_dir: str) -> list[dict]:
    out = []
    for f in sorted(os.listdir(pod_dir) if os.path.isdir(pod_dir) else []):
        if f.endswith(".json"):
            with open(os.path.join(pod_dir, f)) as fh:
                out.append(json.load(fh))
    return out


def policy(name: str, spec: dict, namespace: str = "default", policy_for: str = "blue") -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"k8s.v1.cni.cncf.io/policy-for": policy_for}},
            "spec": spec}


def namespace(name: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def blue_addresses(pod: dict, network: str = NETWORK) -> dict[int, str]:
    """{4: v4 address, 6: v6 address} of the pod on `network`, from its network-status."""
    status = json.loads(pod["metadata"]["annotations"].get(STATUS, "[]"))
    out = {}
    for entry in status:
        if entry.get("name") == network:
            for ip in entry.get("ips", []):
                out[6 if ":" in ip else 4] = ip
    return out


class Servers:
    """TCP listeners on 8080 and 9090 and a UDP echo on 5353, dual stack, in each pod's netns."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, netns: str) -> None:
        with entered(netns_path(netns)):
            for port in TCP_PORTS:
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::", port))
                s.listen(4096)
                self.sockets.append(s)
            u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            u.bind(("::", UDP_PORT))
            u.settimeout(0.2)
        self.sockets.append(u)
        for target in [self._accept(s) for s in self.sockets[-3:-1]] + [self._echo(u)]:
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)

    def _accept(self, s: socket.socket):
        s.settimeout(0.2)

        def run() -> None:
            while not self.stopping.is_set():
                try:
                    conn, _ = s.accept()
                    conn.close()
                except OSError:
                    continue
        return run

    def _echo(self, u: socket.socket):
        def run() -> None:
            while not self.stopping.is_set():
                try:
                    data, peer = u.recvfrom(512)
                    u.sendto(data, peer)
                except OSError:
                    continue
        return run

    def close(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(2)
        for s in self.sockets:
            s.close()


def probe(src_netns: str, dst: str, kind: str, timeout: float = TIMEOUT) -> bool:
    """One probe from inside `src_netns` to address `dst`: True when it got through."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    if kind == "icmp":
        argv = ["ip", "netns", "exec", src_netns, "ping", "-n", "-q", "-c", "1", "-W", str(max(timeout, 0.5)), dst]
        return subprocess.run(argv, capture_output=True).returncode == 0
    if kind.startswith("tcp"):
        return tcp_reaches(netns_path(src_netns), dst, int(kind[3:]), timeout)
    with entered(netns_path(src_netns)):
        s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        try:
            s.sendto(b"probe", (dst, UDP_PORT))
            return s.recv(64) == b"probe"
        except OSError:
            return False
    finally:
        s.close()


Cell = tuple[str, str, str, int]   # (source pod, destination pod, probe, family)


def matrix(pods: dict[str, str], addrs: dict[str, dict[int, str]], cells: Iterable[Cell],
           workers: int = 96) -> dict[Cell, bool]:
    """Run every probe of `cells` at once; pods: name -> netns, addrs: name -> {4: ip, 6: ip}."""
    cells = list(cells)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda c: probe(pods[c[0]], addrs[c[1]][c[3]], c[2]), cells))
    return dict(zip(cells, results))


def differences(got: dict[Cell, bool], expected) -> list[str]:
    """Cells where the probe disagreed with `expected(src, dst, probe, family)`, readable."""
    out = []
    for cell, ok in sorted(got.items()):
        want = expected(*cell)
        if ok != want:
            src, dst, kind, fam = cell
            out.append(f"{src} -> {dst} {kind} IPv{fam}: {'allowed' if ok else 'denied'}, expected "
                       f"{'allowed' if want else 'denied'}")
    return out


def render(got: dict[Cell, bool], names: list[str]) -> str:
    """The matrix as a user reads it: one line per source, one column per destination."""
    lines = ["from\\to  " + "  ".join(f"{n:^20}" for n in names)]
    for src in names:
        row = []
        for dst in names:
            if src == dst:
                row.append(f"{'-':^20}")
                continue
            marks = "".join("".join("+" if got.get((src, dst, k, f)) else "." for k in PROBES) + " "
                            for f in (4, 6))
            row.append(f"{marks.strip():^20}")
        lines.append(f"{src:8} " + "  ".join(row))
    lines.append("(each cell: tcp8080 tcp9090 udp5353 icmp over IPv4, then IPv6; + allowed, . denied)")
    return "\n".join(lines)
