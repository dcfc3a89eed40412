"""A simulated node of the node daemon for the kubernetes IPAM store: its own KubeClient, its own
watches (KubeObjects: the daemon's "ippools" and "ipblocks" informers, "nodes" on request) and
its IPAMCache, and stores as the daemon's CNI calls open them (a fresh KubeStore per call, on
the node's warm client, reading the cache). Used by tests/k8s/test_ipam_kube_cache*.py and the
scale simulation (tests/perf/test_ipam_scale.py)."""
from __future__ import annotations

import os
from typing import Optional

from multiplex.ipam.kube.cache import IPAMCache
from multiplex.ipam.kube.store import KubeStore
from multiplex.k8s.client import KubeClient
from multiplex.k8s.objects import KubeObjects


class CachedNode:
    """One node's daemon side: `store()` is one CNI call's store; `stop()` ends its watches."""

    def __init__(self, kubeconfig: str, node: str, lock_dir: str = "", *, watch_nodes: bool = False,
                 timeout: float = 10.0, retries: int = 2, watch_timeout: int = 300, sync_timeout: float = 10.0):
        self.node = node
        self.lock_dir = lock_dir
        self.client = KubeClient(kubeconfig, timeout=timeout, retries=retries, backoff=0.05, max_backoff=0.5)
        self.objects = KubeObjects(self.client, node, backoff=0.05, max_backoff=0.5, watch_timeout=watch_timeout)
        if watch_nodes:
            self.objects.informer("nodes")
        self.cache = IPAMCache(self.objects, node, self.client, sync_timeout=sync_timeout)

    def start(self, timeout: float = 30.0) -> "CachedNode":
        """Start the watches and wait for their first lists (as the daemon's first IPAM call would)."""
        if not self.cache.ready(timeout):
            raise AssertionError(f"node {self.node}: the IPAM informers did not sync in {timeout}s")
        return self

    def store(self, **kw) -> KubeStore:
        lock_dir = os.path.join(self.lock_dir, self.node) if self.lock_dir else ""
        return KubeStore(self.client, self.node, lock_dir=lock_dir, cache=self.cache, **kw)

    def informer(self, kind: str):
        return self.objects.informer(kind)

    def stop(self) -> None:
        self.objects.stop()
        self.client.close()


def cached_node(api, node: str, tmp_path=None, **kw) -> CachedNode:
    return CachedNode(api.kubeconfig, node, str(tmp_path / "nodes") if tmp_path is not None else "", **kw).start()


def requests(api, resource: Optional[str] = None) -> dict[str, int]:
    """Requests the server saw, by verb (watches left out: they are the cache's, not a call's)."""
    out: dict[str, int] = {}
    for verb in ("get", "list", "create", "update", "patch", "delete"):
        n = api.count(verb, resource)
        if n:
            out[verb] = n
    return out
