"""The lease stores by name: the config's `store` -> where its class lives.

Its own module so that the config parser (which checks the name) and the store interface (which
opens one) both read it without importing each other, and without importing any store: a store
module is imported only when a call opens it.
"""
from __future__ import annotations

#: store name (the config's `store`) -> "module:Class", imported on first use.
STORES = {
    "sqlite": "multiplex.ipam.sqlite.store:SQLiteStore",
    "kubernetes": "multiplex.ipam.kube.store:KubeStore",
}
