"""The real `multiplex daemon` in a simulated node netns, called through an installed shim as a
runtime would: the same answers as the one-shot path, a daemon killed mid-ADD gives the runtime an
error and a later DEL (through a restarted daemon) leaves nothing, SIGTERM drains."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import pytest

from tests import fakeplugins
from tests.cnitool import CNI_PATH, CNIOutput, addresses, run_plugin
from tests.daemonproc import DaemonError, DaemonProcess, shim_path
from tests.netns.mpxlab import Lab, bridge_conf
from tests.waiting import wait_for

pytestmark = pytest.mark.root

POD_NET, BLUE = "198.18.60.0/24", "198.18.61.0/24"
SLOW_NET = "198.18.62.0/24"


@pytest.fixture
def lab(netns_factory, tmp_path):
    """A node with the cluster network (bridge), a second bridge network `blue`, and `slow`: a
    bridge chained with a fake plugin that takes a while on ADD (its hang set per test)."""
    root = str(tmp_path / "lab")
    os.makedirs(root)
    sfx = f"{os.getpid() % 10000}"
    lab = Lab(node=netns_factory("dnode"), root=root, netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf(f"mpxd-p{sfx}", POD_NET, isGateway=True, isDefaultGateway=True))
    lab.add_nad("blue", bridge_conf(f"mpxd-b{sfx}", BLUE))
    lab.fake_bin = fakeplugins.install(tmp_path / "fakebin", "fake-slow")
    return lab


def set_slow(lab: Lab, hang: float, record: str) -> None:
    """NAD `slow`: a bridge attachment, then the fake plugin sleeping `hang` s on ADD."""
    lab.add_nad("slow", {"cniVersion": "1.1.0", "name": "slow", "plugins": [
        bridge_conf(f"mpxd-s{os.getpid() % 10000}", SLOW_NET),
        {"type": "fake-slow", "fake": {"hang": {"ADD": hang}, "record": record}}]})


@dataclass
class InFlight:
    """An ADD through a daemon's shim, running in a thread while the test acts on the daemon."""
    daemon: DaemonProcess
    sock: str
    shim: str
    path: str             # CNI_PATH with the fake plugins
    pod_ns: str
    record: str           # what the fake plugin recorded
    out: Optional[CNIOutput] = None   # the ADD's answer, once the `with` block is left


@contextmanager
def slow_add_in_flight(lab: Lab, netns_factory, daemons, sock_dir: str, tmp_path, pod: str,
                       hang: float) -> Iterator[InFlight]:
    """Start a daemon, and an ADD of `pod` on the `slow` network (its fake plugin hangs `hang` s)
    in a thread; enter once the ADD's two veths exist (the call is in the daemon's hands). On
    leaving, the thread is joined (also when the block failed) and its answer set in `out`."""
    record = str(tmp_path / "calls.jsonl")
    set_slow(lab, hang, record)
    lab.add_pod(pod, "slow")
    sock = os.path.join(sock_dir, "mpx.sock")
    flight = InFlight(daemon=daemons(lab.state_dir, sock, netns=lab.node, local_dir=lab.root, controllers="none"),
                      sock=sock, shim=shim_path(tmp_path / "bin", sock, fallback="fail"),
                      path=os.pathsep.join([CNI_PATH, lab.fake_bin]), pod_ns=netns_factory("dpod"), record=record)
    answer: dict = {}
    t = threading.Thread(target=lambda: answer.update(
        out=cni(lab, flight.shim, "ADD", pod, flight.pod_ns, path=flight.path)))
    t.start()
    try:
        wait_for(lambda: len(lab.node_links("veth")) >= 2, 30, "the ADD's two veths (eth0, net1)")
        yield flight
    finally:
        t.join(60)
    flight.out = answer["out"]


def cni(lab: Lab, plugin: str, command: str, pod: str, netns: str = "", *, path: str = CNI_PATH) -> CNIOutput:
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"
    return run_plugin(plugin, command, lab.config(), node=lab.node, container_id=f"cid-{pod}",
                      netns=netns, ifname="eth0", args=args, path=path)


def normalized(result: dict) -> dict:
    """A result without what differs between two ADDs of one pod: MACs, and the host part of the
    addresses (the IPAM hands out the next free address, not the one just released)."""
    out = json.loads(json.dumps(result))
    for itf in out.get("interfaces", []):
        itf.pop("mac", None)
    for ip in out.get("ips", []):
        ip["address"] = str(ipaddress.ip_interface(ip["address"]).network)
    return out


def test_add_check_del_through_the_shim_match_the_one_shot_path(lab, netns_factory, daemons, sock_dir, tmp_path):
    lab.add_pod("two", "blue")
    pod_ns = netns_factory("dpod")
    one_shot = cni(lab, "multiplex", "ADD", "two", pod_ns)
    assert one_shot.ok, one_shot
    assert cni(lab, "multiplex", "DEL", "two", pod_ns).ok
    assert lab.residue() == []

    d = daemons(lab.state_dir, os.path.join(sock_dir, "mpx.sock"), netns=lab.node, local_dir=lab.root,
                controllers="none")
    shim = shim_path(tmp_path / "bin", d.socket_path, fallback="fail")
    mode = os.stat(d.socket_path)
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0

    added = cni(lab, shim, "ADD", "two", pod_ns)
    assert added.ok, (added, d.stderr())
    assert normalized(added.out) == normalized(one_shot.out)
    assert addresses(pod_ns, "eth0") == {ip["address"] for ip in added.out["ips"]}  # the cluster network's
    assert lab_links(pod_ns) >= {"eth0", "net1"}
    status = {s["interface"]: s["ips"] for s in lab.pod_status("two")}  # written by the daemon
    assert [a.split("/")[0] for a in addresses(pod_ns, "net1")] == status["net1"]
    checked = cni(lab, shim, "CHECK", "two", pod_ns)
    assert checked.ok and checked.out is None, checked
    assert cni(lab, shim, "DEL", "two", pod_ns).ok
    assert lab.residue() == []
    assert d.stop() == 0


def test_daemon_killed_mid_add_gives_an_error_and_del_cleans(lab, netns_factory, daemons, sock_dir, tmp_path):
    with slow_add_in_flight(lab, netns_factory, daemons, sock_dir, tmp_path, "victim", 4) as flight:
        flight.daemon.kill()
    out, sock, shim, path, pod_ns = flight.out, flight.sock, flight.shim, flight.path, flight.pod_ns
    assert out.rc == 1 and out.code == 11, out
    assert "closed the connection before answering ADD" in out.out["msg"], out
    assert sock in out.out["msg"]

    d2 = daemons(lab.state_dir, sock, netns=lab.node, local_dir=lab.root, controllers="none")
    deleted = cni(lab, shim, "DEL", "victim", pod_ns, path=path)
    assert deleted.ok, (deleted, d2.stderr())
    wait_for(lambda: not lab.residue(), 10, "DEL's cleanup")
    assert lab.residue() == []
    assert lab_links(pod_ns) == {"lo"}
    # the killed daemon's exec'd plugin (a session of its own), if it had started, outlives it
    # until its hang ends: wait for it so the test leaves no process behind
    wait_for(lambda: not _running_from(lab.fake_bin), 15, "the orphaned fake plugin's exit")


def _running_from(directory: str) -> list[int]:
    """Pids of processes running a program from `directory` (this test's own fake plugin dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(directory).encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_sigterm_lets_the_call_in_flight_finish_and_refuses_new_ones(lab, netns_factory, daemons, sock_dir,
                                                                      tmp_path):
    with slow_add_in_flight(lab, netns_factory, daemons, sock_dir, tmp_path, "drain", 3) as flight:
        flight.daemon.signal(signal.SIGTERM)
        wait_for(lambda: not os.path.exists(flight.sock), 10, "the socket to go")
        refused = cni(lab, flight.shim, "STATUS", "other")
        assert refused.code == 11 and f"not answering at {flight.sock}" in refused.out["msg"], refused
    out, d = flight.out, flight.daemon
    assert out.ok, (out, d.stderr())
    assert addresses(flight.pod_ns, "net1") and fakeplugins.records(flight.record)[-1]["command"] == "ADD"
    assert d.wait(30) == 0, d.stderr()


def lab_links(ns: str) -> set[str]:
    from tests.cnitool import links

    return links(ns)


def test_a_second_daemon_on_a_served_socket_refuses_to_start(daemons, sock_dir, tmp_path):
    sock = os.path.join(sock_dir, "mpx.sock")
    objects = tmp_path / "objects"
    objects.mkdir()
    first = daemons(str(tmp_path / "state"), sock, local_dir=str(objects), controllers="none")
    wait_for(lambda: "ready, serving " + sock in first.stderr(), 10, "the daemon's ready line")
    second = DaemonProcess(str(tmp_path / "state2"), sock, local_dir=str(objects), controllers="none")
    with pytest.raises(DaemonError, match="exited with 1"):
        second.start()
    second.close()
    assert f"another multiplex daemon is serving {sock}" in second.stderr()
    assert first.socket_connects() and first.get("/readyz")[0] == 200  # the first one kept its socket
    assert first.stop() == 0
    assert not os.path.exists(sock)
