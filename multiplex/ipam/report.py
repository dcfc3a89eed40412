"""What the CLI (`multiplex ipam ...`) asks the IPAM: leases, per-pool usage, a manual release.

Read-only helpers open the node's store without creating it: a node that never handed out an
address has no database, and the answer is empty.
"""
from __future__ import annotations

import os
from typing import Optional

from . import config
from .config import StoreLocation
from .sqlite.store import FILENAME, SQLiteStore
from .store import Lease, Owner, PoolUsage, open_store


def default_data_dir(state_dir: Optional[str] = None) -> str:
    """The node's IPAM directory (<state root>/ipam), without creating it."""
    return config.default_data_dir(state_dir, create=False)


def _existing_store(data_dir: Optional[str]) -> Optional[SQLiteStore]:
    d = data_dir or default_data_dir()
    return SQLiteStore(d) if os.path.isfile(os.path.join(d, FILENAME)) else None


def list_leases(data_dir: Optional[str] = None, network: Optional[str] = None) -> list[Lease]:
    """Every lease in the node store (or of one network), ordered by family, pool, address."""
    store = _existing_store(data_dir)
    if store is None:
        return []
    with store:
        return store.leases(network=network)


def pools(data_dir: Optional[str] = None) -> list[PoolUsage]:
    """Every range set the node store handed addresses from, with size, use and leases."""
    store = _existing_store(data_dir)
    if store is None:
        return []
    with store:
        return store.pools()


def pool_report(data_dir: Optional[str] = None) -> list[dict]:
    """pools() as JSON-ready dicts: pool, family, size, used, free, leases[address, network, containerID, ifname, ...]."""
    return [p.to_dict(with_leases=True) for p in pools(data_dir)]


def release(container_id: str, ifname: str, network: str, data_dir: Optional[str] = None) -> list[Lease]:
    """Release an attachment's leases by hand (what DEL does); returns what was released."""
    with open_store(StoreLocation("sqlite", data_dir or "")) as store:
        return store.release(Owner(container_id, ifname, network))
