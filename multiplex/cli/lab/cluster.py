"""The lab's cluster without a cluster: one shared directory of objects, as the API would serve them.

```
/run/mpxlab/cluster/   the daemons' --local-dir
    pods/                    pods, each with spec.nodeName and a role label (server, client)
    nodes/                   Node objects, written by each node's registry (its underlay facts)
    ippools/routed.json      the routed network's IPPool (what BGP may import)
    ipblocks/n<i>.json       the routed network's IPBlocks, one per node (what node i announces)
    ipblocks/overlay-n<i>.json  the overlay's IPBlocks of node i (what its pods' overlay claims must
                             lie in: the vxlan-peers controller programs only addresses IPAM vouches for)
    multinetworkpolicies/    the lab's MultiNetworkPolicy (written once the ping matrices are done)
    namespaces/default.json  the pods' namespace, with its labels
/run/mpxlab/bgp.json   the BGP settings every daemon reads ($MULTIPLEX_BGP_CONFIG)
/run/mpxlab/<node>/    one node's own files: nads/ (its nadDir), state/ (cache, locks, IPAM, BIRD),
                       socket, logs, pid, shim
```

The networks, and why each node has its own NAD directory:

- `routed` (the cluster network, eth0): multiplex-bgp-routed. Each node's IPAM hands out its own
  /24 of the IPPool 198.18.64.0/18 (node i: 198.18.(63+i).0/24) and its own /64 of fd00:64::/48
  (fd00:64:0:i::/64); the IPBlock files say which node holds which block, so each node's BIRD
  announces its blocks to the others.
- `default/overlay` (net1 on every pod): multiplex-vxlan-overlay, VNI 4242, one subnet shared by all
  nodes (198.18.40.0/24, fd00:40::/64), each node leasing from its own CIDR-aligned block of it
  (node n: 198.18.40.16n/28, fd00:40::n00/120 with n in hex), so no two nodes lease one address;
  the blocks are written as IPBlocks (`overlay_blocks`) because the vxlan-peers controller programs
  a pod's overlay address only when an IPBlock of the pod's node holds it. They belong to no
  IPPool file: the lab's IPPools are the routed network's, so BGP neither announces nor imports
  the overlay's blocks (the bgp controller exports only blocks inside the routed pools).
- `default/green`, `default/violet` (and `default/wire`, ipvlan, on a kernel that has it): bridges,
  node-local: each node has its own bridges and IPAM, so the same addresses appear on several nodes.

In a cluster those per-node ranges are the cluster IPAM's per-node blocks (`"store": "kubernetes"`,
docs/ipam-kubernetes.md): one NAD for every node. The lab has no API server, so it stands in for
the blocks with a NAD directory per node (`nadDir` in each node's multiplex config), holding the
same shared NADs plus that node's `overlay` and `routed` with the node's range (nothing NAD-like is
under the daemons' --local-dir, which the daemons would all read). The NADs carry only what
a NAD writer may write (plugins, ranges: README "Security model"); no node field (`dataDir`,
`nodeName`, ...) is in any of them.

`NETWORK_SCOPE` says which networks span nodes: a network marked "cluster" gets one ping matrix
over the pods of every node instead of one per node.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from .topology import UPLINK, Node, Pod

STATE = "/run/mpxlab"
CLUSTER = f"{STATE}/cluster"
BGP_SETTINGS = f"{STATE}/bgp.json"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
POLICY_FOR = "k8s.v1.cni.cncf.io/policy-for"

ROUTED = "routed"                  # the cluster network's NAD (eth0)
OVERLAY = "overlay"                # every pod's net1
OVERLAY_VNI = 4242
ROUTED_POOL_V4, ROUTED_POOL_V6 = "198.18.64.0/18", "fd00:64::/48"
POLICY_NAME = "clients-to-servers"
POLICY_NETWORK = f"default/{OVERLAY}"
POLICY_PORT = 8080
#: the most nodes the per-node ranges leave room for (overlay: the /28 blocks 1-15 of one /24)
MAX_NODES = 15

#: "node": pods reach each other only on their own node; "cluster": across nodes
NETWORK_SCOPE: dict[str, str] = {ROUTED: "cluster", f"default/{ROUTED}": "cluster", POLICY_NETWORK: "cluster"}


def scope(network: str) -> str:
    return NETWORK_SCOPE.get(network, "node")


def node_dir(node: Node) -> str:
    return f"{STATE}/{node.name}"


def nad_dir(node: Node) -> str:
    """The node's own NAD directory (its multiplex config's nadDir): the shared NADs and the node's
    `overlay` and `routed` (see the module docstring: the lab's stand-in for per-node IPAM blocks)."""
    return f"{node_dir(node)}/nads"


def role(index: int) -> Optional[str]:
    """The pod's `role` label by its index on its node: server, client, then one with no role."""
    return ("server", "client", None)[index % 3]


def _nad(name: str, config: dict, namespace: str = "default") -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"config": json.dumps(dict(config, cniVersion="1.1.0", name=name))}}


def _bridge(bridge: str, ranges: list[list[dict]], **extra: Any) -> dict:
    return {"type": "multiplex-bridge", "bridge": bridge, **extra,
            "ipam": {"type": "multiplex-ipam", "ranges": ranges}}


def lab_networks(ipvlan: bool = False) -> list[dict]:
    """The NADs every node shares: two bridge networks (dual stack; IPv6 with a fixed address) and,
    on a kernel with ipvlan, an ipvlan network on each node's uplink."""
    wire = [_nad("wire", {"type": "multiplex-ipvlan", "master": UPLINK, "mode": "l2",
                          "ipam": {"type": "multiplex-ipam",
                                   "ranges": [[{"subnet": "198.18.20.0/24", "rangeStart": "198.18.20.10"}]]}})]
    return (wire if ipvlan else []) + [
        _nad("green", _bridge("mpx-green", [[{"subnet": "198.18.2.0/24"}], [{"subnet": "fd00:2::/64"}]])),
        # the second pod of a node asks violet for a fixed address: the NAD opts in to pods' `ips`
        _nad("violet", _bridge("mpx-violet", [[{"subnet": "fd00:3::/64"}]], capabilities={"ips": True})),
    ]


def routed_ranges(node: Node) -> tuple[str, str]:
    """The node's block of the routed network, IPv4 and IPv6 (inside ROUTED_POOL_V4/_V6)."""
    return f"198.18.{63 + node.index}.0/24", f"fd00:64:0:{node.index:x}::/64"


def overlay_ranges(node: Node) -> tuple[Any, Any]:
    """The node's blocks of the overlay's subnets: 198.18.40.16n/28 and fd00:40::n00/120 (n in hex)."""
    import ipaddress

    n = node.index
    return (ipaddress.ip_network(f"198.18.40.{16 * n}/28"), ipaddress.ip_network(f"fd00:40::{n:x}00/120"))


def overlay_blocks(nodes: list[Node]) -> dict[str, Any]:
    """The overlay's IPBlocks, one file per node (path under CLUSTER -> object): what the cluster
    IPAM would hold, so the vxlan-peers controllers accept each node's pods' overlay addresses."""
    api = "ipam.multiplex.dev/v1alpha1"
    out: dict[str, Any] = {}
    for node in nodes:
        out[f"ipblocks/overlay-{node.name}.json"] = {"items": [
            {"apiVersion": api, "kind": "IPBlock", "metadata": {"name": f"overlay-{node.name}-v{net.version}"},
             "spec": {"cidr": str(net), "node": node.name, "pool": f"overlay-v{net.version}"}}
            for net in overlay_ranges(node)]}
    return out


def node_networks(node: Node) -> list[dict]:
    """The node's own NADs: the overlay and the routed network with this node's ranges."""
    v4_block, v6_block = overlay_ranges(node)
    overlay = {"type": "multiplex-vxlan-overlay", "vni": OVERLAY_VNI, "ipam": {"type": "multiplex-ipam", "ranges": [
        [{"subnet": "198.18.40.0/24", "rangeStart": str(v4_block[0]), "rangeEnd": str(v4_block[-1])}],
        [{"subnet": "fd00:40::/64", "rangeStart": str(v6_block[0]), "rangeEnd": str(v6_block[-1])}]]}}
    v4, v6 = routed_ranges(node)
    routed = {"type": "multiplex-bgp-routed",
              "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": v4}], [{"subnet": v6}]]}}
    return [_nad(OVERLAY, overlay), _nad(ROUTED, routed)]


def _annotations(ipvlan: bool) -> list[str]:
    """Both forms of the multi-network spec, in turn; the overlay first, so it is net1."""
    wire = ", wire" if ipvlan else ""
    return [
        "overlay, green" + wire,
        json.dumps([{"name": "overlay"}, {"name": "green", "interface": "green0"},
                    {"name": "violet", "ips": ["fd00:3::99/64"]}] + ([{"name": "wire"}] if ipvlan else [])),
        "default/overlay, default/violet" + wire,
    ]


def pod_object(pod: Pod, index: int, ipvlan: bool) -> dict:
    annotations = _annotations(ipvlan)
    labels = {"role": r} if (r := role(index)) else {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": "default", "uid": pod.uid, "labels": labels,
                         "annotations": {NETWORKS_ANNOTATION: annotations[index % len(annotations)]}},
            "spec": {"nodeName": pod.node}}


def multiplex_config(node: Node) -> dict:
    """The node's own multiplex config (what `multiplex install` writes into /etc/cni/net.d)."""
    own = node_dir(node)
    return {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "clusterNetwork": ROUTED,
            "nadDir": nad_dir(node), "podDir": f"{CLUSTER}/pods", "stateDir": f"{own}/state",
            "logFile": f"{own}/multiplex.log", "logLevel": "info"}


def bgp_objects(nodes: list[Node]) -> dict[str, Any]:
    """The routed network's IPPool, each node's IPBlocks (path under CLUSTER -> object), and the BGP
    settings: a full mesh in the default AS (BFD off, as Calico's default)."""
    api = "ipam.multiplex.dev/v1alpha1"
    out: dict[str, Any] = {"ippools/routed.json": {"items": [
        {"apiVersion": api, "kind": "IPPool", "metadata": {"name": f"routed-v{v}"}, "spec": {"cidr": cidr}}
        for v, cidr in ((4, ROUTED_POOL_V4), (6, ROUTED_POOL_V6))]}}
    for node in nodes:
        out[f"ipblocks/{node.name}.json"] = {"items": [
            {"apiVersion": api, "kind": "IPBlock", "metadata": {"name": f"{node.name}-v{v}"},
             "spec": {"cidr": cidr, "node": node.name}} for v, cidr in zip((4, 6), routed_ranges(node))]}
    return out


def policy_object() -> dict:
    """Only pods labelled role=client may reach role=server, on TCP 8080, over the overlay."""
    return {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
            "metadata": {"name": POLICY_NAME, "namespace": "default", "annotations": {POLICY_FOR: OVERLAY}},
            "spec": {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                  "ports": [{"protocol": "TCP", "port": POLICY_PORT}]}]}}


def write_policy() -> None:
    """Put the policy in place (the daemons' policy controllers see it at their next poll)."""
    os.makedirs(f"{CLUSTER}/multinetworkpolicies", exist_ok=True)
    _write(f"{CLUSTER}/multinetworkpolicies/{POLICY_NAME}.json", policy_object())


def _write(path: str, obj: dict) -> None:
    """Whole files only (a daemon polling the directory never reads half of one)."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.rename(tmp, path)


def write_cluster(nodes: list[Node], pods: list[Pod], ipvlan: bool) -> None:
    for d in ("pods", "nodes", "ippools", "ipblocks", "namespaces"):
        os.makedirs(f"{CLUSTER}/{d}", exist_ok=True)
    shared = lab_networks(ipvlan)
    for node in nodes:
        os.makedirs(f"{node_dir(node)}/state", exist_ok=True)
        os.makedirs(nad_dir(node), exist_ok=True)
        for nad in shared + node_networks(node):
            _write(f"{nad_dir(node)}/default-{nad['metadata']['name']}.json", nad)
    for path, obj in {**bgp_objects(nodes), **overlay_blocks(nodes)}.items():
        _write(f"{CLUSTER}/{path}", obj)
    _write(f"{CLUSTER}/namespaces/default.json", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": "default", "labels": {"lab": "mpxlab"}}})
    _write(BGP_SETTINGS, {"asn": 64512, "nodeToNodeMesh": True})
    per_node: dict[str, int] = {}
    for pod in pods:
        i = per_node[pod.node] = per_node.get(pod.node, -1) + 1
        pod.role = role(i) or ""
        _write(pod_file(pod), pod_object(pod, i, ipvlan))


def pod_file(pod: Pod) -> str:
    return f"{CLUSTER}/pods/default-{pod.name}.json"


def read_network_status(pod: Pod) -> list[dict]:
    """The pod's network-status annotation, as multiplex wrote it; fills pod.networks."""
    with open(pod_file(pod), encoding="utf-8") as f:
        doc = json.load(f)
    status = json.loads(doc["metadata"].get("annotations", {}).get(STATUS_ANNOTATION, "[]"))
    for entry in status:
        pod.networks[entry["name"]] = entry["interface"]
    return status


def read_node_object(node: Node) -> Optional[dict]:
    """The Node object the node's registry wrote, or None when there is none (yet)."""
    path = f"{CLUSTER}/nodes/{node.name}.json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def node_facts(obj: Optional[dict]) -> dict[str, str]:
    """The underlay facts ("interface", "ipv4", "ipv6", "mtu") the node's registry published in its
    annotation (multiplex.controllers.node_registry); a fact it did not publish is absent, and an
    unreadable annotation gives {"error": why}."""
    from ...controllers.node_registry import ANNOTATION, NodeFacts

    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    if ANNOTATION not in annotations:
        return {}
    try:
        facts = NodeFacts.from_json(obj["metadata"].get("name", ""), annotations[ANNOTATION])
    except ValueError as e:
        return {"error": str(e)}
    return {k: str(v) for k, v in (("interface", facts.interface), ("ipv4", facts.ipv4), ("ipv6", facts.ipv6),
                                   ("mtu", facts.mtu)) if v}
