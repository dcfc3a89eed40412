"""Per-container serialization of CNI calls, across processes and threads.

    with container_lock(container_id, timeout=30):
        ...  # ADD / DEL / CHECK for this container, cache read-modify-write

Design (no pile of lock files): ONE lock file, `<state root>/locks/containers.lock`, never written
to. Each container ID maps to one byte of it, at the offset CRC-32(ID) (locks past the end of a file
are allowed and do not grow it; two IDs sharing a CRC only serialize each other, nothing worse;
zlib is used rather than hashlib because it costs nothing to import). A call takes an
exclusive `fcntl.lockf` lock on its byte: calls for different containers lock different bytes and
run in parallel; calls for the same container queue. The kernel drops the lock when the holder
exits or crashes, so a killed plugin never leaves a container locked.

POSIX record locks belong to a process, not a thread, and closing any descriptor of the file drops
all of the process's locks on it. So each process keeps one descriptor per lock file open for its
lifetime, and a per-container `threading.Lock` serializes threads of one process (a warm daemon)
before they touch the file lock. The lock is re-entrant within one thread, never across processes.

Waiting past `timeout` raises CNIError 11 (try again later), as the spec intends for a busy
container.
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
import zlib
from contextlib import contextmanager
from typing import Iterator, Optional

from .. import state
from .errors import CNIError, IO_FAILURE, TRY_AGAIN_LATER

DEFAULT_TIMEOUT = 60.0
LOCK_FILE = "containers.lock"

_table_guard = threading.Lock()
_fds: dict[str, int] = {}


class _Slot:
    """One lock byte inside this process: a thread lock, which thread holds it, how deeply."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0       # threads holding or waiting (the slot is dropped at 0)
        self.owner: Optional[int] = None
        self.depth = 0


_slots: dict[tuple[str, int], _Slot] = {}


def default_path() -> str:
    return os.path.join(state.subdir("locks"), LOCK_FILE)


def lock_offset(container_id: str) -> int:
    """The byte of the lock file that stands for `container_id`."""
    return zlib.crc32(container_id.encode())


@contextmanager
def container_lock(container_id: str, timeout: float = DEFAULT_TIMEOUT,
                   path: Optional[str] = None) -> Iterator[None]:
    """Hold the container's lock for the body; CNIError 11 if it is not free within `timeout` s.

    Re-entrant within one thread (the meta plugin holds it while in-process delegates run), but
    not across processes: a plugin exec'd while its caller holds the lock must not take it.
    """
    path = path or default_path()
    deadline = time.monotonic() + max(0.0, timeout)
    key = (path, lock_offset(container_id))  # IDs sharing a byte share the thread lock too
    me = threading.get_ident()
    slot = _slot_ref(key)
    try:
        if slot.owner == me:  # nested in this thread: already held
            slot.depth += 1
            try:
                yield
            finally:
                slot.depth -= 1
            return
        if not slot.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _busy(container_id, timeout, path)
        try:
            fd = _shared_fd(path)
            offset = lock_offset(container_id)
            _lock_byte(fd, offset, deadline, container_id, timeout, path)
            slot.owner, slot.depth = me, 1
            try:
                yield
            finally:
                slot.owner, slot.depth = None, 0
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
        finally:
            slot.lock.release()
    finally:
        _slot_unref(key)


def _lock_byte(fd: int, offset: int, deadline: float, cid: str, timeout: float, path: str) -> None:
    delay = 0.002
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
            return
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise CNIError(IO_FAILURE, f"cannot lock container {cid}: {e.strerror}", f"lock: {path}") from None
        left = deadline - time.monotonic()
        if left <= 0:
            raise _busy(cid, timeout, path)
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)


def _busy(cid: str, timeout: float, path: str) -> CNIError:
    return CNIError(TRY_AGAIN_LATER,
                    f"another CNI call for container {cid} still holds its lock after {timeout:g}s",
                    f"lock: {path} byte {lock_offset(cid)}; retry when that call has finished")


def _shared_fd(path: str) -> int:
    """This process's descriptor of the lock file (reopened if the file was replaced)."""
    with _table_guard:
        fd = _fds.get(path)
        if fd is not None and _same_file(fd, path):
            return fd
        # never close an old descriptor: that would drop locks other threads hold through it
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot open the container lock file: {e.strerror}",
                           f"lock: {path}") from None
        _fds[path] = fd
        return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _slot_ref(key: tuple[str, int]) -> _Slot:
    with _table_guard:
        slot = _slots.setdefault(key, _Slot())
        slot.users += 1
        return slot


def _slot_unref(key: tuple[str, int]) -> None:
    with _table_guard:
        slot = _slots.get(key)
        if slot is not None:
            slot.users -= 1
            if slot.users <= 0:
                del _slots[key]


def _after_fork_in_child() -> None:
    # The child holds none of the parent's record locks, and the parent's threads do not exist here.
    global _table_guard
    _table_guard = threading.Lock()
    _slots.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
