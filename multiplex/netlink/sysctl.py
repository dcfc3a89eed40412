"""sysctl read/write, in the current namespace or inside another one.

Keys are written the sysctl way (`net.ipv4.ip_forward`, `net.ipv6.conf.eth0.accept_dad`) or as a
path under /proc/sys. Files under /proc/sys/net resolve to the namespace of the thread that opens
them, so a key inside a pod is written by entering its namespace for the open (see netns.entered).
"""
from __future__ import annotations

import os
from typing import Optional

from ..cni.errors import CNIError, IO_FAILURE
from .netns import entered

_ROOT = "/proc/sys"


def _path(key: str) -> str:
    if key.startswith("/"):
        return key
    if "/" in key:
        return os.path.join(_ROOT, key)
    # dotted form; an interface name may hold a dot, so only the fixed prefix is split:
    # net.ipv6.conf.<ifname>.<leaf> -> net/ipv6/conf/<ifname>/<leaf>
    parts = key.split(".")
    if len(parts) > 5 and parts[:3] in (["net", "ipv4", "conf"], ["net", "ipv6", "conf"],
                                        ["net", "ipv4", "neigh"], ["net", "ipv6", "neigh"]):
        return os.path.join(_ROOT, *parts[:3], ".".join(parts[3:-1]), parts[-1])
    return os.path.join(_ROOT, *parts)


def read(key: str, netns: Optional[str] = None) -> Optional[str]:
    """The value, or None when the key does not exist (IPv6 disabled, no such interface)."""
    with entered(netns):
        try:
            with open(_path(key), encoding="ascii") as f:
                return f.read().strip()
        except FileNotFoundError:
            return None


def write(key: str, value: str, netns: Optional[str] = None, missing_ok: bool = False) -> bool:
    """Set a key; skips the write when it already holds `value`. Returns False when absent and
    `missing_ok`; raises CNIError 5 naming the key otherwise."""
    value = str(value)
    with entered(netns):
        path = _path(key)
        try:
            with open(path, "r+", encoding="ascii") as f:
                if f.read().strip() == value:
                    return True
                f.seek(0)
                f.write(value)
            return True
        except FileNotFoundError:
            if missing_ok:
                return False
            raise CNIError(IO_FAILURE, f"sysctl {key} does not exist", f"sysctl: {path}") from None
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot set sysctl {key}={value}: {e.strerror}", f"sysctl: {path}") from None
