"""The lab's cluster without a cluster: one shared directory of objects, as the API would serve them.

```
/run/mpxlab/cluster/   the daemons' --local-dir
    nads/    NetworkAttachmentDefinitions (every node reads the same)
    pods/    pods, each with spec.nodeName (a node's daemon watches only its own)
    nodes/   Node objects, written by each node's registry (its underlay facts as annotations)
/run/mpxlab/<node>/    one node's own files: state/ (cache, locks, IPAM), socket, logs, pid, shim
```

The pod networks are today's bridge networks, node-local: each node has its own bridges and its
own IPAM store, so the same subnet is used on every node and two pods on two nodes may hold the
same address. `NETWORK_SCOPE` says which networks span nodes (none yet): a network marked
"cluster" gets one ping matrix over the pods of every node instead of one per node.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from .topology import UPLINK, Node, Pod

STATE = "/run/mpxlab"
CLUSTER = f"{STATE}/cluster"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"

#: "node": pods reach each other only on their own node; "cluster": across nodes (the vxlan-overlay
#: and bgp-routed networks of the next issues go here)
NETWORK_SCOPE: dict[str, str] = {}


def scope(network: str) -> str:
    return NETWORK_SCOPE.get(network, "node")


def node_dir(node: Node) -> str:
    return f"{STATE}/{node.name}"


def _nad(name: str, config: dict, namespace: str = "default") -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"config": json.dumps(dict(config, cniVersion="1.1.0", name=name))}}


def _bridge(bridge: str, ranges: list[list[dict]], **extra: Any) -> dict:
    return {"type": "multiplex-bridge", "bridge": bridge, **extra,
            "ipam": {"type": "multiplex-ipam", "ranges": ranges}}


def lab_networks(ipvlan: bool = False) -> list[dict]:
    """The lab's NADs: the cluster network, three bridge networks (IPv4, dual stack, IPv6) and, on a
    kernel with ipvlan, an ipvlan network on each node's uplink."""
    wire = [_nad("wire", {"type": "multiplex-ipvlan", "master": UPLINK, "mode": "l2",
                          "ipam": {"type": "multiplex-ipam",
                                   "ranges": [[{"subnet": "198.18.20.0/24", "rangeStart": "198.18.20.10"}]]}})]
    return (wire if ipvlan else []) + [
        _nad("podnet", _bridge("mpx-pod", [[{"subnet": "198.18.0.0/24", "gateway": "198.18.0.1"}]],
                               isGateway=True, isDefaultGateway=True)),
        _nad("blue", _bridge("mpx-blue", [[{"subnet": "198.18.1.0/24"}]])),
        _nad("green", _bridge("mpx-green", [[{"subnet": "198.18.2.0/24"}], [{"subnet": "fd00:2::/64"}]])),
        # the second pod of a node asks violet for a fixed address: the NAD opts in to pods' `ips`
        _nad("violet", _bridge("mpx-violet", [[{"subnet": "fd00:3::/64"}]], capabilities={"ips": True})),
    ]


def _annotations(ipvlan: bool) -> list[str]:
    """Both forms of the multi-network spec, in turn."""
    wire = ", wire" if ipvlan else ""
    return [
        "blue,green" + wire,
        json.dumps([{"name": "blue", "interface": "blue0"}, {"name": "green"},
                    {"name": "violet", "ips": ["fd00:3::99/64"]}] + ([{"name": "wire"}] if ipvlan else [])),
        "default/blue@blue0, default/violet" + wire,
    ]


def pod_object(pod: Pod, index: int, ipvlan: bool) -> dict:
    annotations = _annotations(ipvlan)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": "default", "uid": pod.uid,
                         "annotations": {NETWORKS_ANNOTATION: annotations[index % len(annotations)]}},
            "spec": {"nodeName": pod.node}}


def multiplex_config(node: Node) -> dict:
    """The node's own multiplex config (what `multiplex install` writes into /etc/cni/net.d)."""
    own = node_dir(node)
    return {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "clusterNetwork": "podnet",
            "nadDir": f"{CLUSTER}/nads", "podDir": f"{CLUSTER}/pods", "stateDir": f"{own}/state",
            "logFile": f"{own}/multiplex.log", "logLevel": "info"}


def _write(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def write_cluster(nodes: list[Node], pods: list[Pod], ipvlan: bool) -> None:
    for d in ("nads", "pods", "nodes"):
        os.makedirs(f"{CLUSTER}/{d}", exist_ok=True)
    for node in nodes:
        os.makedirs(f"{node_dir(node)}/state", exist_ok=True)
    for nad in lab_networks(ipvlan):
        _write(f"{CLUSTER}/nads/default-{nad['metadata']['name']}.json", nad)
    per_node: dict[str, int] = {}
    for pod in pods:
        i = per_node[pod.node] = per_node.get(pod.node, -1) + 1
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
