"""The two file primitives every part uses: an atomic write, and a lock wait with a deadline.

`atomic_write` writes a temporary file in the same directory, fsyncs it, renames it over the
target and fsyncs the directory: a reader sees the old content or the new one, never half, even
after a power cut. Errors are OSError; the caller says what the file is for (cache, marker,
launcher) when it turns one into a CNI error.

`lock(fd, ...)` takes an fcntl lock on a descriptor - a whole file (flock) or one byte range
(POSIX record lock, `offset`) - polling until `deadline` (time.monotonic()), so no wait is
unbounded. It returns False when the lock stayed busy; the caller raises its own code 11 with what
it waited for (its wording names the resource), and `waited()` gives the real time for that message.
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from typing import Optional, Union

#: first poll interval and its cap, seconds: short at first (most locks are free in microseconds)
_POLL_FIRST, _POLL_MAX = 0.002, 0.05


def atomic_write(path: str, data: Union[bytes, str], mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically (same-directory temp file, fsync, rename, dir fsync)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-" + os.path.basename(path)[:32] + "-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)


def fsync_dir(d: str) -> None:
    """Make a rename in `d` durable (best effort: some file systems refuse a directory fsync)."""
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def lock(fd: int, deadline: Optional[float], *, exclusive: bool = True, offset: Optional[int] = None) -> bool:
    """Lock `fd` - the whole file (flock) or, with `offset`, the one byte there (lockf) - waiting
    until `deadline` (time.monotonic(); None: try once). True when held, False when still busy.
    Other OSErrors propagate (the caller names the file)."""
    shared_or_ex = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    delay = _POLL_FIRST
    while True:
        try:
            if offset is None:
                fcntl.flock(fd, shared_or_ex | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fd, shared_or_ex | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
            return True
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                raise
        left = (deadline - time.monotonic()) if deadline is not None else 0.0
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, _POLL_MAX)


def unlock(fd: int, offset: Optional[int] = None) -> None:
    if offset is None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)


def waited(started: float) -> str:
    """'1.2s': the real time since `started` (time.monotonic()), for busy messages."""
    return f"{time.monotonic() - started:.1f}s"
