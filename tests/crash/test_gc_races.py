"""GC races, with the real multiplex processes in a simulated node netns.

1. Several pods ADDed at once (one process each) while GC runs again and again, each time listing
   every pod (those in flight and all earlier ones) as valid: afterwards every pod has all its
   interfaces and addresses in its netns, CHECK passes, every address it holds has its lease row,
   and no address is leased twice.
2. GC while pods that it does not list are being DELed: those end with nothing left (no interface,
   veth, lease, cache file); the listed pods are untouched (same interfaces and addresses, leases,
   CHECK passes).
The runtime lists a pod as {containerID, ifname: CNI_IFNAME}, i.e. eth0: multiplex's own net1,
net2 are the pod's too."""
from __future__ import annotations

import ipaddress
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cnitool import addresses, links
from tests.netns.mpxlab import Lab, bridge_lab

pytestmark = pytest.mark.root

SUBNETS = {"eth0": "198.18.50.0/24", "net1": "198.18.51.0/24", "net2": "fd00:52::/64"}


@pytest.fixture
def lab(node, netns_factory, tmp_path):
    return bridge_lab(node, str(tmp_path), netns_factory, ("mpxr-pod", SUBNETS["eth0"]),
                      blue=("mpxr-blue", SUBNETS["net1"]), violet=("mpxr-violet", SUBNETS["net2"]))


def lease_rows(lab: Lab) -> list[tuple[str, str, str]]:
    """(address, containerID, ifname) of every lease of the node's IPAM database."""
    return lab.lease_rows("address, container_id, ifname")


def gc_config(lab: Lab, pods: list[str]) -> dict:
    return lab.gc_config(*(f"cid-{p}" for p in pods))


def snapshot(ns: str) -> dict[str, set[str]]:
    return {name: addresses(ns, name) for name in links(ns) - {"lo"}}


def attached_wrong(ns: str) -> list[str]:
    """What is wrong with a pod that should have eth0, net1, net2, each with one address."""
    got = snapshot(ns)
    wrong = [] if set(got) == set(SUBNETS) else [f"interfaces {sorted(got)}"]
    for ifname, subnet in SUBNETS.items():
        inside = [a for a in got.get(ifname, ()) if ipaddress.ip_interface(a) in ipaddress.ip_network(subnet)]
        if len(inside) != 1:
            wrong.append(f"{ifname} has {sorted(got.get(ifname, ()))}")
    return wrong


def gc_until(lab: Lab, done: threading.Event, pods: list[str], at_least: int = 3) -> list:
    """GC listing `pods`, again and again until `done` (and at least `at_least` times)."""
    outs = []
    while not done.is_set() or len(outs) < at_least:
        outs.append(lab.cni("GC", None, None, config=gc_config(lab, pods)))
    return outs


def during_gcs(lab: Lab, command: str, pods: dict[str, str], listed: list[str]) -> tuple[list[str], list]:
    """`command` for every pod (name -> netns) at once, each its own multiplex process, while GCs
    listing `listed` run over and over (gc_until). Returns the failed calls and GCs, as problems,
    and every GC's output. The GC loop is told to end also when a call raised."""
    done = threading.Event()
    with ThreadPoolExecutor(max_workers=len(pods) + 1) as pool:
        gcs = pool.submit(gc_until, lab, done, listed)
        try:
            calls = {pod: pool.submit(lab.cni, command, pod, ns) for pod, ns in pods.items()}
            results = {pod: f.result() for pod, f in calls.items()}
        finally:
            done.set()
        gc_outs = gcs.result()
    problems = [f"{command} {pod}: {out.out}" for pod, out in results.items() if not out.ok]
    problems += [f"GC: {out.out}" for out in gc_outs if not out.ok]
    return problems, gc_outs


def leases_wrong(lab: Lab, pods: dict[str, str]) -> list[str]:
    """Every address a pod holds has a lease row of that pod and interface; no address twice."""
    rows = lease_rows(lab)
    wrong = []
    by_address: dict[str, list] = {}
    for address, cid, ifname in rows:
        by_address.setdefault(str(ipaddress.ip_address(address)), []).append((cid, ifname))
    twice = {a: owners for a, owners in by_address.items() if len(owners) > 1}
    if twice:
        wrong.append(f"addresses leased twice: {twice}")
    held: dict[str, list[str]] = {}
    for pod, ns in pods.items():
        for ifname, addrs in snapshot(ns).items():
            for a in addrs:
                ip = str(ipaddress.ip_interface(a).ip)
                held.setdefault(ip, []).append(f"{pod}/{ifname}")
                if (f"cid-{pod}", ifname) not in [tuple(o) for o in by_address.get(ip, [])]:
                    wrong.append(f"{pod} {ifname} {ip} has no lease (lease rows: {by_address.get(ip)})")
    wrong += [f"{ip} is on {len(where)} interfaces: {where}" for ip, where in held.items() if len(where) > 1]
    return wrong


def test_gc_during_concurrent_adds_listing_every_pod_keeps_every_attachment(lab):
    earlier = {f"e{i}": lab.netns_factory("rpod") for i in range(3)}
    fresh = {f"n{i}": lab.netns_factory("rpod") for i in range(8)}
    for pod in {**earlier, **fresh}:
        lab.add_pod(pod, "blue, violet")
    for pod, ns in earlier.items():
        out = lab.cni("ADD", pod, ns)
        assert out.ok, out
    everyone = sorted({**earlier, **fresh})
    problems, gc_outs = during_gcs(lab, "ADD", fresh, everyone)
    pods = {**earlier, **fresh}
    for pod, ns in pods.items():
        problems += [f"{pod}: {w}" for w in attached_wrong(ns)]
    problems += leases_wrong(lab, pods)
    with ThreadPoolExecutor(max_workers=3) as pool:
        checks = dict(zip(pods, pool.map(lambda p: lab.cni("CHECK", p, pods[p]), pods)))
    problems += [f"CHECK {pod}: {out.out}" for pod, out in checks.items() if not out.ok]
    print(f"\nGC during ADDs: {len(fresh)} ADDs in flight, {len(earlier)} earlier pods, {len(gc_outs)} GCs; "
          f"{len(problems)} problems")
    assert problems == [], "\n".join(problems)
    assert sorted(lab.cache_entries()) == sorted(f"cid-{p}:eth0.json" for p in pods)


def test_gc_during_dels_of_unlisted_pods_removes_them_and_leaves_listed_ones(lab):
    listed = {f"l{i}": lab.netns_factory("rpod") for i in range(3)}
    unlisted = {f"u{i}": lab.netns_factory("rpod") for i in range(4)}
    pods = {**listed, **unlisted}
    for pod in pods:
        lab.add_pod(pod, "blue, violet")
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = dict(zip(pods, pool.map(lambda p: lab.cni("ADD", p, pods[p]), pods)))
    assert all(o.ok for o in outs.values()), {p: o.out for p, o in outs.items() if not o.ok}
    before = {pod: snapshot(ns) for pod, ns in listed.items()}
    problems, gc_outs = during_gcs(lab, "DEL", unlisted, sorted(listed))
    for pod, ns in unlisted.items():
        if links(ns) != {"lo"}:
            problems.append(f"unlisted {pod} still has {sorted(links(ns))}")
    gone = {f"cid-{p}" for p in unlisted}
    problems += [f"lease of unlisted pod left: {row}" for row in lease_rows(lab) if row[1] in gone]
    problems += [f"cache file of unlisted pod left: {f}" for f in lab.cache_entries() if f.split(":")[0] in gone]
    for pod, ns in listed.items():
        if snapshot(ns) != before[pod]:
            problems.append(f"listed {pod} changed: {before[pod]} -> {snapshot(ns)}")
    problems += leases_wrong(lab, listed)
    veths = lab.node_links("veth")
    if len(veths) != 3 * len(listed):
        problems.append(f"{len(veths)} veths in the node, expected {3 * len(listed)} (the listed pods')")
    for pod, ns in listed.items():
        out = lab.cni("CHECK", pod, ns)
        if not out.ok:
            problems.append(f"CHECK {pod}: {out.out}")
    print(f"\nGC during DELs: {len(unlisted)} DELs, {len(listed)} listed pods, {len(gc_outs)} GCs; "
          f"{len(problems)} problems")
    assert problems == [], "\n".join(problems)
