"""MultiNetworkPolicy's SCTP ports, on a kernel with SCTP (this machine's has none; Debian's has
the module): a policy allowing SCTP 9000 from the client pod lets exactly that through, IPv4 and
IPv6, and nothing else (another SCTP port, TCP on the same port, another source address).

Two netns joined by a veth stand for the pods (no delegate: the VM's time is precious); the table
is the compiler's and the applier's, as the engine would apply it.
"""
from __future__ import annotations

import socket
import threading

import pytest

from multiplex.netlink.netns import entered
from multiplex.policy.mnp import compiler
from multiplex.policy.mnp.apply import Applier
from multiplex.policy.mnp.model import PodInfo, parse_policy
from tests.cnitool import nsexec

pytestmark = [pytest.mark.root, pytest.mark.vm]

NET = "default/blue"


def sctp_socket(family: int) -> socket.socket:
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_SCTP)


def reaches(netns: str, dst: str, port: int, proto: str = "sctp", src: str = "") -> bool:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with entered(f"/var/run/netns/{netns}"):
        s = sctp_socket(family) if proto == "sctp" else socket.socket(family, socket.SOCK_STREAM)
    try:
        s.settimeout(1.5)
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_sctp_port_rule_allows_exactly_its_port_protocol_and_peers(netns_factory):
    server, client = netns_factory("vms"), netns_factory("vmc")
    nsexec(server, "ip", "link", "add", "m0", "type", "veth", "peer", "name", "p0", "netns", client)
    for ns, dev, addrs in ((server, "m0", ["198.18.251.1/24", "fd00:251::1/64"]),
                           (client, "p0", ["198.18.251.2/24", "198.18.251.3/24", "fd00:251::2/64"])):
        for a in addrs:
            nsexec(ns, "ip", "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
        nsexec(ns, "ip", "link", "set", dev, "up")
    with entered(f"/var/run/netns/{server}"):
        listeners = [sctp_socket(socket.AF_INET6) for _ in range(2)] + [socket.socket(socket.AF_INET6)]
    stop = threading.Event()
    for s, port in zip(listeners, (9000, 9001, 9000)):
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(64)
        s.settimeout(0.2)

        def accept(s=s):
            while not stop.is_set():
                try:
                    s.accept()[0].close()
                except OSError:
                    continue
        threading.Thread(target=accept, daemon=True).start()
    try:
        assert reaches(client, "198.18.251.1", 9001) and reaches(client, "198.18.251.1", 9000, "tcp")  # open first
        policy = parse_policy({"metadata": {"name": "sctp", "namespace": "default",
                                            "annotations": {"k8s.v1.cni.cncf.io/policy-for": "blue"}},
                               "spec": {"podSelector": {"matchLabels": {"role": "server"}},
                                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                                     "ports": [{"protocol": "SCTP", "port": 9000}]}]}})
        me = PodInfo("default", "server", {"role": "server"}, {}, {NET: ["198.18.251.1", "fd00:251::1"]})
        peer = PodInfo("default", "client", {"role": "client"}, {}, {NET: ["198.18.251.2", "fd00:251::2"]})
        rs = compiler.compile_pod(compiler.PolicyView([policy], [], {}, [me, peer]), me, [("m0", NET)])
        assert "meta l4proto sctp th dport 9000" in rs.render()
        assert Applier().apply(f"/var/run/netns/{server}", rs) == "full"
        assert reaches(client, "198.18.251.1", 9000, src="198.18.251.2")
        assert reaches(client, "fd00:251::1", 9000)
        assert not reaches(client, "198.18.251.1", 9001, src="198.18.251.2")
        assert not reaches(client, "fd00:251::1", 9001)
        assert not reaches(client, "198.18.251.1", 9000, "tcp", src="198.18.251.2")
        assert not reaches(client, "198.18.251.1", 9000, src="198.18.251.3")   # not the client pod's address
    finally:
        stop.set()
        for s in listeners:
            s.close()
