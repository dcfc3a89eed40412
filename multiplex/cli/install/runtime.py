"""The runtime mirror: a self-contained Python (the image's, with multiplex installed) copied onto
the host, so the launchers have an interpreter there.

The mirrored directory carries a marker file; install refuses to write into a directory without
it (unless empty), and uninstall removes only a directory that has it.
"""
from __future__ import annotations

import os
import stat
import sys
from typing import Optional

from ...util.files import atomic_write
from .files import put_file, remove_any
from .layout import host_join, in_root
from .record import InstallRecord
from .report import InstallError, InstallReport

RUNTIME_MARKER = ".multiplex-runtime"
#: directories a runtime_dir may not be: they hold far more than ours
_SHARED_DIRS = ("/", "/opt", "/usr", "/etc", "/var")


def choose_runtime(root: str, runtime_src: Optional[str], runtime_dir: Optional[str],
                   python: Optional[str]) -> tuple[Optional[str], str]:
    """Where the runtime goes (None: no runtime to mirror) and the interpreter the launchers exec,
    both as the host sees them. Checks them before anything is written."""
    if runtime_src and not runtime_dir:
        runtime_dir = os.path.abspath(runtime_src)
    if python is None:
        python = host_join(runtime_dir, "bin", "python3") if runtime_src else sys.executable
    if not python.startswith("/"):
        raise InstallError(f"python must be an absolute path as the host sees it, got {python!r}")
    if not runtime_src:
        return None, python
    assert runtime_dir is not None
    if not runtime_dir.startswith("/") or host_join(runtime_dir) in _SHARED_DIRS:
        raise InstallError(f"runtime_dir must be a directory of its own, as the host sees it, got {runtime_dir!r}")
    check_runtime_dir(runtime_src, in_root(root, runtime_dir, follow_last=False), runtime_dir)
    return runtime_dir, python


def place_runtime(root: str, runtime_src: Optional[str], runtime_dir: Optional[str], record: InstallRecord,
                  report: InstallReport) -> None:
    """Mirror the runtime (recorded first: an interrupted mirror is still ours to remove); remove a
    runtime placed before at another place, or when none is wanted now."""
    if runtime_src:
        assert runtime_dir is not None
        if record.runtime_dir not in (None, runtime_dir):
            remove_runtime(root, record.runtime_dir, report)
        record.runtime_dir = runtime_dir
        record.save()
        mirror_tree(runtime_src, in_root(root, runtime_dir, follow_last=False), report, runtime_dir)
    elif record.runtime_dir:
        remove_runtime(root, record.runtime_dir, report)
        record.runtime_dir = None


def mirror_tree(src: str, dst: str, report: InstallReport, host_dst: str) -> None:
    """Make `dst` an exact copy of `src` (files, modes, symlinks, mtimes), writing only what differs.

    A file whose size and mtime match is taken as unchanged (as rsync does). `dst` must be ours:
    empty, missing, or holding our marker file."""
    check_runtime_dir(src, dst, host_dst)
    os.makedirs(dst, exist_ok=True)
    counts = {"created": 0, "updated": 0, "removed": 0}
    for cur, dirs, files in os.walk(src):
        rel = os.path.relpath(cur, src)
        out = dst if rel == "." else os.path.join(dst, rel)
        wanted = set(dirs) | set(files)
        if rel == ".":
            wanted.add(RUNTIME_MARKER)
        for name in sorted(os.listdir(out)):
            if name not in wanted:
                remove_any(os.path.join(out, name))
                counts["removed"] += 1
        for name in list(dirs):
            s, d = os.path.join(cur, name), os.path.join(out, name)
            if os.path.islink(s):
                dirs.remove(name)  # a link to a directory is copied as a link, never descended
                if not _same_link(s, d):
                    counts[_mirror_link(s, d)] += 1
                continue
            if os.path.lexists(d) and (os.path.islink(d) or not os.path.isdir(d)):
                remove_any(d)
            if not os.path.isdir(d):
                os.mkdir(d)
                counts["created"] += 1
            os.chmod(d, stat.S_IMODE(os.lstat(s).st_mode))
        for name in files:
            s, d = os.path.join(cur, name), os.path.join(out, name)
            if os.path.islink(s):
                if not _same_link(s, d):
                    counts[_mirror_link(s, d)] += 1
                continue
            st = os.stat(s)
            if not stat.S_ISREG(st.st_mode):
                continue  # sockets, fifos: nothing a runtime needs
            try:
                dt = os.lstat(d)
            except FileNotFoundError:
                dt = None
            if (dt is not None and stat.S_ISREG(dt.st_mode) and dt.st_size == st.st_size
                    and dt.st_mtime_ns == st.st_mtime_ns and stat.S_IMODE(dt.st_mode) == stat.S_IMODE(st.st_mode)):
                continue
            if dt is not None and stat.S_ISDIR(dt.st_mode):
                remove_any(d)
            with open(s, "rb") as f:
                atomic_write(d, f.read(), stat.S_IMODE(st.st_mode))
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
            counts["created" if dt is None else "updated"] += 1
    marker = os.path.join(dst, RUNTIME_MARKER)
    mark_action = put_file(marker, b"placed by multiplex install; removed by multiplex uninstall\n", 0o644)
    if mark_action == "created":
        report.add(host_dst, "created")
    elif any(counts.values()):
        report.add(host_dst, "updated")
    else:
        report.add(host_dst, "unchanged")


def check_runtime_dir(src: str, dst: str, host_dst: str) -> None:
    """Refuse to mirror into a place that is not ours (before anything is written)."""
    if not os.path.isdir(src):
        raise InstallError(f"runtime source {src} is not a directory")
    if os.path.lexists(dst):
        if os.path.islink(dst) or not os.path.isdir(dst):
            raise InstallError(f"{host_dst} exists and is not a directory; move it away or choose another runtime_dir")
        if os.listdir(dst) and not os.path.exists(os.path.join(dst, RUNTIME_MARKER)):
            raise InstallError(f"{host_dst} exists and was not placed by multiplex install (no {RUNTIME_MARKER}); "
                               "move it away or choose another runtime_dir")


def _same_link(s: str, d: str) -> bool:
    return os.path.islink(d) and os.readlink(d) == os.readlink(s)


def _mirror_link(s: str, d: str) -> str:
    existed = os.path.lexists(d)
    if existed:
        remove_any(d)
    os.symlink(os.readlink(s), d)
    return "updated" if existed else "created"


def remove_runtime(root: str, runtime_dir: str, report: InstallReport) -> None:
    """Remove a mirrored runtime, only when it carries our marker."""
    real = in_root(root, runtime_dir, follow_last=False)
    if not os.path.isdir(real):
        return
    if not os.path.exists(os.path.join(real, RUNTIME_MARKER)):
        report.warnings.append(f"{runtime_dir} has no {RUNTIME_MARKER}; left in place")
        return
    # the contents first: the directory itself may be a mount point (the DaemonSet's hostPath)
    for name in os.listdir(real):
        if name != RUNTIME_MARKER:
            remove_any(os.path.join(real, name))
    os.unlink(os.path.join(real, RUNTIME_MARKER))
    try:
        os.rmdir(real)
    except OSError:
        pass
    report.add(runtime_dir, "removed")
