"""The lab: a node and a few pods in network namespaces, attached through multiplex, no cluster.

It writes NetworkAttachmentDefinitions and pod files (with `k8s.v1.cni.cncf.io/networks`
annotations) to a state directory, runs `multiplex` inside the node's netns as a container
runtime would (CNI ADD per pod), prints the pods' interfaces and addresses and a ping matrix per
network, then DELs every pod and removes everything (unless --keep).

Addresses come from 198.18.0.0/15 and fd00::/8 only; nothing leaves the lab's namespaces.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

PREFIX = "mpxlab"
STATE = f"/run/{PREFIX}"
NODE = f"{PREFIX}-node"
OUTSIDE = f"{PREFIX}-outside"     # a host on the node's uplink, for the ipvlan network
UPLINK = "mpx-up0"                # the ipvlan master: the node's end of a veth to OUTSIDE
OUTSIDE_ADDR = "198.18.20.1"


def _nad(name: str, config: dict, namespace: str = "default") -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"config": json.dumps(dict(config, cniVersion="1.1.0", name=name))}}


def _bridge(bridge: str, ranges: list[list[dict]], **extra: Any) -> dict:
    return {"type": "multiplex-bridge", "bridge": bridge, **extra,
            "ipam": {"type": "multiplex-ipam", "ranges": ranges}}


def lab_networks(ipvlan: bool = False) -> list[dict]:
    """The lab's NADs: the cluster network, three bridge networks (IPv4, dual stack, IPv6) and, on a
    kernel with ipvlan, an ipvlan network on the node's uplink."""
    wire = [_nad("wire", {"type": "multiplex-ipvlan", "master": UPLINK, "mode": "l2",
                          "ipam": {"type": "multiplex-ipam",
                                   "ranges": [[{"subnet": "198.18.20.0/24", "rangeStart": "198.18.20.10"}]]}})]
    return (wire if ipvlan else []) + [
        _nad("podnet", _bridge("mpx-pod", [[{"subnet": "198.18.0.0/24", "gateway": "198.18.0.1"}]],
                               isGateway=True, isDefaultGateway=True)),
        _nad("blue", _bridge("mpx-blue", [[{"subnet": "198.18.1.0/24"}]])),
        _nad("green", _bridge("mpx-green", [[{"subnet": "198.18.2.0/24"}], [{"subnet": "fd00:2::/64"}]])),
        # pod2 asks violet for a fixed address: the NAD opts in to pods' `ips` requests
        _nad("violet", _bridge("mpx-violet", [[{"subnet": "fd00:3::/64"}]], capabilities={"ips": True})),
    ]


def lab_pods(n: int, ipvlan: bool = False) -> list[dict]:
    """Pods whose annotations use both forms of the multi-network spec."""
    wire = ", wire" if ipvlan else ""
    annotations = [
        "blue,green" + wire,
        json.dumps([{"name": "blue", "interface": "blue0"}, {"name": "green"},
                    {"name": "violet", "ips": ["fd00:3::99/64"]}] + ([{"name": "wire"}] if ipvlan else [])),
        "default/blue@blue0, default/violet" + wire,
    ]
    pods = []
    for i in range(n):
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"pod{i + 1}", "namespace": "default", "uid": f"lab-uid-{i + 1}",
                                  "annotations": {"k8s.v1.cni.cncf.io/networks": annotations[i % len(annotations)]}}})
    return pods


@dataclass
class Pod:
    name: str
    netns: str
    container_id: str
    interfaces: dict[str, list[str]] = field(default_factory=dict)   # ifname -> addresses
    networks: dict[str, str] = field(default_factory=dict)           # network -> ifname


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _multiplex_bin() -> str:
    here = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "multiplex")
    return here if os.path.exists(here) else (shutil.which("multiplex") or "multiplex")


def _cni_path() -> str:
    return os.pathsep.join(p for p in (os.path.dirname(_multiplex_bin()), "/usr/lib/cni", "/opt/cni/bin")
                           if os.path.isdir(p))


def multiplex_config() -> dict:
    return {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "clusterNetwork": "podnet",
            "nadDir": f"{STATE}/nads", "podDir": f"{STATE}/pods", "stateDir": f"{STATE}/state",
            "logFile": f"{STATE}/multiplex.log", "logLevel": "info"}


def cni(command: str, pod: Pod) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id, "CNI_NETNS": f"/var/run/netns/{pod.netns}",
                "CNI_IFNAME": "eth0", "CNI_PATH": _cni_path(),
                "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod.name};"
                            f"K8S_POD_UID=lab-uid-{pod.name[3:]};K8S_POD_INFRA_CONTAINER_ID={pod.container_id}"})
    proc = subprocess.run(["ip", "netns", "exec", NODE, _multiplex_bin()], input=json.dumps(multiplex_config()),
                          env=env, capture_output=True, text=True)
    out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0:
        raise RuntimeError(f"CNI {command} for {pod.name} failed: {json.dumps(out)} {proc.stderr.strip()[-500:]}")
    return out


def _read_interfaces(pod: Pod) -> None:
    data = json.loads(_sh("ip", "netns", "exec", pod.netns, "ip", "-j", "addr", "show").stdout)
    for link in data:
        if link["ifname"] == "lo":
            continue
        pod.interfaces[link["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                                          if a.get("scope") == "global"]


def _read_status(pod: Pod) -> list[dict]:
    with open(f"{STATE}/pods/{pod.name}.json", encoding="utf-8") as f:
        doc = json.load(f)
    text = doc["metadata"]["annotations"].get("k8s.v1.cni.cncf.io/network-status", "[]")
    status = json.loads(text)
    for entry in status:
        pod.networks[entry["name"]] = entry["interface"]
    return status


def _ping(src_ns: str, address: str) -> bool:
    flag = "-6" if ":" in address else "-4"
    return subprocess.run(["ip", "netns", "exec", src_ns, "ping", flag, "-c", "1", "-W", "2", address],
                          capture_output=True).returncode == 0


def _prepare(n: int, ipvlan: bool) -> list[Pod]:
    teardown_lab(quiet=True)
    for d in ("nads", "pods", "state"):
        os.makedirs(f"{STATE}/{d}", exist_ok=True)
    for nad in lab_networks(ipvlan):
        with open(f"{STATE}/nads/{nad['metadata']['name']}.json", "w", encoding="utf-8") as f:
            json.dump(nad, f, indent=2)
    for pod in lab_pods(n, ipvlan):
        with open(f"{STATE}/pods/{pod['metadata']['name']}.json", "w", encoding="utf-8") as f:
            json.dump(pod, f, indent=2)
    _sh("ip", "netns", "add", NODE)
    _sh("ip", "netns", "exec", NODE, "ip", "link", "set", "lo", "up")
    if ipvlan:  # the node's uplink: a veth whose other end is a host outside the node
        _sh("ip", "netns", "add", OUTSIDE)
        _sh("ip", "netns", "exec", NODE, "ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0",
            "netns", OUTSIDE)
        _sh("ip", "netns", "exec", NODE, "ip", "link", "set", UPLINK, "up")
        for cmd in (("link", "set", "lo", "up"), ("link", "set", "eth0", "up"),
                    ("addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "eth0")):
            _sh("ip", "netns", "exec", OUTSIDE, "ip", *cmd)
    pods = []
    for i in range(n):
        ns = f"{PREFIX}-pod{i + 1}"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        pods.append(Pod(name=f"pod{i + 1}", netns=ns, container_id=f"{PREFIX}{i + 1:02d}" + "0" * 56))
    return pods


def kernel_has_ipvlan() -> bool:
    """Probe in a scratch namespace: can this kernel make an ipvlan link?"""
    probe = f"{PREFIX}-probe"
    _sh("ip", "netns", "add", probe, check=False)
    try:
        _sh("ip", "netns", "exec", probe, "ip", "link", "add", "mpx-pr0", "type", "veth", "peer", "name", "mpx-pr1",
            check=False)
        r = _sh("ip", "netns", "exec", probe, "ip", "link", "add", "link", "mpx-pr0", "name", "ipvl0",
                "type", "ipvlan", check=False)
        return r.returncode == 0
    finally:
        _sh("ip", "netns", "del", probe, check=False)


def _ipvlan_note(ipvlan: bool) -> str:
    if ipvlan:
        return (f"ipvlan: this kernel has ipvlan; network default/wire is multiplex-ipvlan (l2) on the node's "
                f"uplink {UPLINK}, whose other end is the host {OUTSIDE} ({OUTSIDE_ADDR}).")
    return ("ipvlan: this kernel has no ipvlan support, so the lab shows no ipvlan attachment here; "
            "the test suite runs the ipvlan delegate in its VM tier (tests/vm).")


def run_lab(pods: int = 3, keep: bool = False) -> int:
    if os.geteuid() != 0:
        print("the lab needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    ipvlan = kernel_has_ipvlan()
    lab_pods_ = _prepare(pods, ipvlan)
    ok = True
    try:
        print(f"node {NODE}: multiplex {_multiplex_bin()}, state in {STATE}")
        for pod in lab_pods_:
            t = time.monotonic()
            result = cni("ADD", pod)
            ips = ", ".join(ip["address"] for ip in result.get("ips", []))
            print(f"ADD {pod.name}: cluster network {ips} ({(time.monotonic() - t) * 1000:.0f} ms)")
        for pod in lab_pods_:
            _read_interfaces(pod)
            _read_status(pod)
            cni("CHECK", pod)
        print("\nCHECK passed for every pod.\n")
        _print_table(lab_pods_)
        ok = _print_pings(lab_pods_)
        if ipvlan:
            ok &= _print_outside_pings(lab_pods_)
        print("\n" + _ipvlan_note(ipvlan))
    except Exception as e:  # the lab is a demo: report, then clean up
        print(f"lab failed: {e}", file=sys.stderr)
        ok = False
        keep = False
    finally:
        if keep:
            print(f"\nThe lab stays up (--keep). Try: ip netns exec {lab_pods_[0].netns} ip addr; remove it with: "
                  "multiplex lab --down")
        else:
            for pod in reversed(lab_pods_):
                try:
                    cni("DEL", pod)
                except Exception as e:
                    print(f"DEL {pod.name}: {e}", file=sys.stderr)
                    ok = False
            print(f"\nDEL done for every pod; removing the lab. ({time.monotonic() - started:.1f} s in all)")
            teardown_lab(quiet=True)
    return 0 if ok else 1


def _print_table(pods: list[Pod]) -> None:
    rows = [("POD", "NETWORK", "INTERFACE", "ADDRESSES")]
    for pod in pods:
        by_if = {v: k for k, v in pod.networks.items()}
        for ifname, addrs in sorted(pod.interfaces.items(), key=lambda kv: (kv[0] != "eth0", kv[0])):
            rows.append((pod.name, by_if.get(ifname, "?"), ifname, ", ".join(addrs) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _print_pings(pods: list[Pod]) -> bool:
    """For each network and family, every pod on it pings every other pod on it."""
    all_ok = True
    networks = sorted({n for p in pods for n in p.networks})
    for net in networks:
        members = [p for p in pods if net in p.networks]
        for family in (4, 6):
            targets = {}
            for p in members:
                for a in p.interfaces.get(p.networks[net], []):
                    if ipaddress.ip_interface(a).version == family:
                        targets[p.name] = a.split("/")[0]
            if len(targets) < 2:
                continue
            print(f"\nping matrix, network {net}, IPv{family} (row pings column):")
            names = [p.name for p in members if p.name in targets]
            print("        " + "  ".join(n.ljust(6) for n in names))
            for src in members:
                if src.name not in targets:
                    continue
                cells = []
                for dst in names:
                    if dst == src.name:
                        cells.append("-".ljust(6))
                        continue
                    good = _ping(src.netns, targets[dst])
                    all_ok &= good
                    cells.append(("ok" if good else "FAIL").ljust(6))
                print(f"{src.name:<8}" + "  ".join(cells))
    print("\nall pings ok" if all_ok else "\nSOME PINGS FAILED")
    return all_ok


def _print_outside_pings(pods: list[Pod]) -> bool:
    """Pods on the ipvlan network reach the host outside the node."""
    good = True
    print(f"\nping {OUTSIDE} ({OUTSIDE_ADDR}) over default/wire:")
    for p in pods:
        if "default/wire" in p.networks:
            res = _ping(p.netns, OUTSIDE_ADDR)
            good &= res
            print(f"  {p.name:<8}{'ok' if res else 'FAIL'}")
    return good


def teardown_lab(quiet: bool = False) -> None:
    names = [l.split()[0] for l in _sh("ip", "netns", "list", check=False).stdout.splitlines() if l.strip()]
    for name in names:
        if name.startswith(PREFIX + "-"):
            _sh("ip", "netns", "del", name, check=False)
    shutil.rmtree(STATE, ignore_errors=True)
    if not quiet:
        print("lab removed")
