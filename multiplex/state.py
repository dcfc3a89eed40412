"""Where multiplex keeps node state: the result cache, locks, the SQLite IPAM database.

Root: the config's `stateDir`, else $MULTIPLEX_STATE_DIR, else /var/lib/cni/multiplex.
The meta plugin exports its root as MULTIPLEX_STATE_DIR, so delegates and IPAM (in-process or
exec'd) use the same one.
"""
from __future__ import annotations

import os
from typing import Optional

DEFAULT_ROOT = "/var/lib/cni/multiplex"


def root(configured: Optional[str] = None) -> str:
    return configured or os.environ.get("MULTIPLEX_STATE_DIR") or DEFAULT_ROOT


def subdir(name: str, configured_root: Optional[str] = None) -> str:
    d = os.path.join(root(configured_root), name)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d
