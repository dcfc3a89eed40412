"""Shared pieces of the kubernetes IPAM store tests: the CRDs from manifests/ loaded into the test
API server, IPPools, one KubeClient per simulated node, and stores as a CNI call would open them.

`cluster` fixture: `.pool(name, cidr, **spec)`, `.store(node)`, `.client(node)`, `.blocks()`,
`.block(name)`, `.api` (the server: `.store.add_node`, `.count`, `.latency`, ...).
"""
from __future__ import annotations

import ipaddress
import os
from typing import NamedTuple, Optional

import pytest
import yaml

from multiplex.ipam import config
from multiplex.ipam.kube.model import API_VERSION, BLOCKS, GROUP, POOL_KIND, POOLS, VERSION, Block
from multiplex.ipam.kube.store import KubeStore
from multiplex.ipam.store import Owner
from multiplex.k8s.client import KubeClient
from tests.ipam_contract import take  # noqa: F401 - the tests import it from here

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRD_FILE = os.path.join(REPO, "manifests", "40-crd-ipam.yaml")


def crd_documents() -> list[dict]:
    with open(CRD_FILE) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def install_crds(api) -> None:
    """Create the CRDs through the server's store, as `kubectl apply` would: kinds and scope known."""
    for doc in crd_documents():
        api.store.add(doc, "customresourcedefinitions")


class Cluster:
    def __init__(self, api, tmp_path):
        self.api = api
        self.tmp = tmp_path
        self._clients: dict[str, KubeClient] = {}

    def pool(self, name: str, cidr: str, **spec) -> dict:
        return self.api.store.add({"apiVersion": API_VERSION, "kind": POOL_KIND, "metadata": {"name": name},
                                   "spec": {"cidr": cidr, **spec}}, POOLS)

    def client(self, node: str = "admin") -> KubeClient:
        if node not in self._clients:
            self._clients[node] = KubeClient(self.api.kubeconfig, timeout=10, retries=2)
        return self._clients[node]

    def store(self, node: str, lock: bool = True, **kw) -> KubeStore:
        """A store for `node`, as one CNI call opens it (fresh caches), on the node's client."""
        lock_dir = str(self.tmp / "nodes" / node) if lock else ""
        return KubeStore(self.client(node), node, lock_dir=lock_dir, **kw)

    def objects(self) -> list[dict]:
        return self.api.store.items(GROUP, VERSION, BLOCKS)

    def blocks(self) -> dict[str, Block]:
        return {b.name: b for b in map(Block.from_object, self.objects())}

    def block(self, name: str) -> Block:
        return self.blocks()[name]

    def allocations(self) -> dict[str, str]:
        """address -> containerID, over every block."""
        return {addr: a.container_id for b in self.blocks().values() for addr, a in b.allocations.items()}

    def node(self, name: str, labels: Optional[dict] = None) -> dict:
        return self.api.store.add_node(name, labels=labels)

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


@pytest.fixture
def cluster(apiserver, tmp_path):
    install_crds(apiserver)
    c = Cluster(apiserver, tmp_path)
    yield c
    c.close()


def ipam_conf(ranges, network: str = "blue", exclude=(), **extra) -> config.IPAMConfig:
    """An IPAM config with the kubernetes store: `ranges` a CIDR string or a list of range sets."""
    ipam = {"type": "multiplex-ipam", "store": "kubernetes", **extra}
    if isinstance(ranges, str):
        ipam["range"] = ranges
    else:
        ipam["ranges"] = ranges
    if exclude:
        ipam["exclude"] = list(exclude)
    return config.parse({"name": network, "ipam": ipam})


def owner(cid: str, ifname: str = "eth0", network: str = "blue", pod: str = "", namespace: str = "default",
          uid: str = "") -> Owner:
    return Owner(cid, ifname, network, namespace if pod else "", pod, uid)


class NodeRoutes(NamedTuple):
    blocks: tuple       # CIDRs of the blocks affine to the node
    borrowed: tuple     # addresses it holds in other nodes' blocks (announced as /32 or /128)


def node_routes(store: KubeStore, node: Optional[str] = None) -> NodeRoutes:
    """What a routed delegate would announce for `node` (default: the store's), read as the node
    reads its blocks (one LIST by its label)."""
    node = node or store.node
    blocks = store.node_blocks(node=node)
    own = tuple(b.cidr for b in blocks if b.node == node)
    borrowed = tuple(ipaddress.ip_address(a) for b in blocks if b.node != node
                     for a, v in b.allocations.items() if v.node == node)
    return NodeRoutes(own, borrowed)
