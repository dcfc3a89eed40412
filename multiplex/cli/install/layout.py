"""Where multiplex goes on a node, and how a host path is found under `root`.

Every path install handles is written as the host sees it (`/etc/cni/net.d/...`) and resolved
inside `root` (the host's file system as the DaemonSet mounts it, `/host`) the way a chroot
would: an absolute symlink under root points under root, so nothing outside root is ever written.
"""
from __future__ import annotations

import os

from .report import InstallError

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CONF_NAME = "00-multiplex.conflist"
#: our own directory inside conf_dir: the node kubeconfig, the install record, backups
STATE_SUBDIR = "multiplex.d"
#: the meta plugin's CNI type, and the name of its launcher
META_PLUGIN = "multiplex"


def host_join(*parts: str) -> str:
    """A host path from parts, normalized (so two spellings of one path compare equal)."""
    return os.path.normpath(os.path.join(*parts))


def in_root(root: str, path: str, follow_last: bool = True) -> str:
    """`path` (as the host sees it) resolved inside `root` the way a chroot would.

    Symlinks are followed with absolute targets re-rooted under `root` and `..` clamped at it, so
    the answer never leaves `root`. With follow_last=False a symlink in the last component is not
    followed (we replace the link itself, never write through it).
    """
    root = os.path.realpath(root)
    pending = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if os.path.islink(here) and (pending or follow_last):
            hops += 1
            if hops > 40:
                raise InstallError(f"too many levels of symbolic links resolving {path} under {root}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        done.append(part)
    return os.path.join(root, *done)
