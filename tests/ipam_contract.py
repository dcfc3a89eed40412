"""What every IPAM store backend (multiplex/ipam/sqlite, multiplex/ipam/kube) must do alike,
written once and run against each: the SQLite tests (tests/unit/test_ipam_store.py) and the
Kubernetes ones (tests/k8s/test_ipam_kube.py) call the same checks with their own store."""
from __future__ import annotations

import ipaddress
from typing import Optional

from multiplex.ipam import config
from multiplex.ipam.store import Owner


def take(store, conf: config.IPAMConfig, who: Owner, requested: Optional[str] = None, n: int = 0):
    """Allocate from range set `n` of `conf` for `who` (the address `requested`, as a pod's
    runtimeConfig.ips would, or the next free one); the store's Lease."""
    rs = conf.range_sets[n]
    return store.allocate(rs, conf.exclude, who, ipaddress.ip_address(requested) if requested else None,
                          "$.runtimeConfig.ips[0]" if requested else "")


def check_gc_keeps_whole_containers_of_its_network_only(store, a: config.IPAMConfig, b: config.IPAMConfig) -> None:
    """GC of network tenant-a.blue (conf `a`) keeping container pod-a frees tenant-a.blue's
    unlisted container and nothing of tenant-b.blue (conf `b`), though its pod is not listed."""
    from multiplex.cni.valid import keep_of

    take(store, a, Owner("pod-a", "net1", "tenant-a.blue"))
    take(store, a, Owner("stale", "net1", "tenant-a.blue"))
    take(store, b, Owner("pod-b", "net1", "tenant-b.blue"))
    gone = store.gc("tenant-a.blue", keep_of(containers=["pod-a"]))
    assert [lease.owner.container_id for lease in gone] == ["stale"]
    assert {lease.owner.container_id for lease in store.leases()} == {"pod-a", "pod-b"}
