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
container; the message states how long the call really waited. Callers pass what is left of the
call's deadline (`timeout=req.time_left(DEFAULT_TIMEOUT)`), so every wait of one call shares it.

The GC lock (`gc_lock`) lives in the same file, on the byte at offset 2**32, which no CRC-32
reaches: every ADD of the meta plugin holds it shared for its whole duration, GC holds it
exclusive for its whole run. So GC never sees an ADD half done (an attachment made but not yet
cached, or cached but not yet listed by the runtime), and ADDs run in parallel with each other.
POSIX record locks do not separate the threads of one process (a second thread's exclusive lock
would just convert the process's shared one), so a reader/writer guard orders the threads of one
process and the file lock is taken by the first reader (or the writer) and dropped by the last.
Order, to stay free of deadlocks: the GC lock before any container lock.
"""
from __future__ import annotations

import os
import threading
import time
import zlib
from contextlib import contextmanager
from typing import Iterator, Optional

from ..util import files, state
from .errors import CNIError, INTERNAL, IO_FAILURE, TRY_AGAIN_LATER

DEFAULT_TIMEOUT = 60.0
LOCK_FILE = "containers.lock"
#: the byte of the lock file that stands for GC: past every CRC-32 offset (0 .. 2**32-1)
GC_OFFSET = 2 ** 32

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


def default_path(state_dir: Optional[str] = None) -> str:
    """The lock file under the state root (`state_dir`: the call's, CallContext.state_dir; None:
    the default root); its directory is made (errors mapped) when it is opened."""
    return os.path.join(state.root(state_dir), "locks", LOCK_FILE)


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
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
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
            raise _busy(container_id, started, path)
        try:
            fd = _shared_fd(path)
            offset = lock_offset(container_id)
            _lock_byte(fd, offset, deadline, container_id, started, path)
            slot.owner, slot.depth = me, 1
            try:
                yield
            finally:
                slot.owner, slot.depth = None, 0
                files.unlock(fd, offset)
        finally:
            slot.lock.release()
    finally:
        _slot_unref(key)


def _lock_byte(fd: int, offset: int, deadline: float, cid: str, started: float, path: str) -> None:
    if not _lock_record(fd, offset, deadline, True, f"container {cid}", path):
        raise _busy(cid, started, path)


def _lock_record(fd: int, offset: int, deadline: float, exclusive: bool, what: str, path: str) -> bool:
    """files.lock on one byte until `deadline`; False when it stayed busy, code 5 when the kernel
    refuses the lock itself (naming `what` and the lock file)."""
    try:
        return files.lock(fd, deadline, exclusive=exclusive, offset=offset)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot lock {what}: {e.strerror}", f"lock: {path}") from None


def _busy(cid: str, started: float, path: str) -> CNIError:
    return CNIError(TRY_AGAIN_LATER,
                    f"another CNI call for container {cid} still holds its lock after {files.waited(started)}",
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
            raise CNIError(IO_FAILURE, f"cannot open the lock file {path}: {e.strerror}",
                           f"lock: {path}; the state directory (stateDir) must be a writable directory") from None
        _fds[path] = fd
        return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ---- the GC lock: shared by ADDs, exclusive for GC --------------------------------------------

class _RWGuard:
    """The GC byte as seen by the threads of one process: many readers or one writer (writers
    first, so a stream of ADDs never starves GC), re-entrant per thread. The file lock is taken by
    the first reader (shared) or the writer (exclusive) and dropped when the last one leaves."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.file = threading.Lock()   # serializes taking/dropping the file lock
        self.readers = 0
        self.writer: Optional[int] = None
        self.writers_waiting = 0
        self.holds: dict[int, list] = {}   # thread -> [exclusive?, depth]
        self.file_shared = False           # this process holds the byte shared in the file
        self.fd = -1                       # the descriptor the file lock was taken through


_guards: dict[str, _RWGuard] = {}


def _guard(path: str) -> _RWGuard:
    with _table_guard:
        return _guards.setdefault(path, _RWGuard())


@contextmanager
def gc_lock(exclusive: bool, timeout: float = DEFAULT_TIMEOUT, path: Optional[str] = None) -> Iterator[None]:
    """Hold the GC lock for the body: shared (`exclusive=False`, every ADD) or exclusive (GC).

    CNIError 11 when it is not available within `timeout` s, saying how long the call waited.
    Re-entrant within one thread; a thread holding it shared may not ask for it exclusive.
    """
    path = path or default_path()
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    g = _guard(path)
    me = threading.get_ident()
    with g.cond:
        held = g.holds.get(me)
        if held is not None:
            if exclusive and not held[0]:
                raise CNIError(INTERNAL, "GC lock asked for exclusively by a thread that holds it shared",
                               f"lock: {path} byte {GC_OFFSET}")
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with g.cond:
                held[1] -= 1
        return
    if exclusive:
        _enter_writer(g, me, deadline, started, path)
    else:
        _enter_reader(g, me, deadline, started, path)
    try:
        yield
    finally:
        if exclusive:
            _leave_writer(g, me, path)
        else:
            _leave_reader(g, me, path)


def _enter_reader(g: _RWGuard, me: int, deadline: float, started: float, path: str) -> None:
    with g.cond:
        if not g.cond.wait_for(lambda: g.writer is None and g.writers_waiting == 0,
                               timeout=max(0.0, deadline - time.monotonic())):
            raise _gc_busy(False, started, path)
        g.readers += 1
        g.holds[me] = [False, 1]
    try:
        if not g.file.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _gc_busy(False, started, path)
        try:
            if not g.file_shared:
                fd = _shared_fd(path)
                if not _lock_record(fd, GC_OFFSET, deadline, False, "GC", path):
                    raise _gc_busy(False, started, path)
                g.file_shared, g.fd = True, fd
        finally:
            g.file.release()
    except BaseException:
        _leave_reader(g, me, path)
        raise


def _leave_reader(g: _RWGuard, me: int, path: str) -> None:
    with g.cond:
        g.readers -= 1
        g.holds.pop(me, None)
        if g.readers == 0:
            # no reader of this process is taking the file lock (each counts itself first)
            with g.file:
                if g.file_shared:
                    _unlock_gc(g)
                    g.file_shared = False
        g.cond.notify_all()


def _enter_writer(g: _RWGuard, me: int, deadline: float, started: float, path: str) -> None:
    with g.cond:
        g.writers_waiting += 1
        try:
            ok = g.cond.wait_for(lambda: g.writer is None and g.readers == 0,
                                 timeout=max(0.0, deadline - time.monotonic()))
        finally:
            g.writers_waiting -= 1
        if not ok:
            g.cond.notify_all()
            raise _gc_busy(True, started, path)
        g.writer = me
        g.holds[me] = [True, 1]
    try:
        fd = _shared_fd(path)
        if not _lock_record(fd, GC_OFFSET, deadline, True, "GC", path):
            raise _gc_busy(True, started, path)
        g.fd = fd
    except BaseException:
        with g.cond:
            g.writer = None
            g.holds.pop(me, None)
            g.cond.notify_all()
        raise


def _leave_writer(g: _RWGuard, me: int, path: str) -> None:
    with g.cond:
        _unlock_gc(g)
        g.writer = None
        g.holds.pop(me, None)
        g.cond.notify_all()


def _unlock_gc(g: _RWGuard) -> None:
    if g.fd >= 0:
        files.unlock(g.fd, GC_OFFSET)
        g.fd = -1


def _gc_busy(exclusive: bool, started: float, path: str) -> CNIError:
    if exclusive:
        return CNIError(TRY_AGAIN_LATER, f"GC waited {files.waited(started)} for the ADDs in progress to finish",
                        f"lock: {path} byte {GC_OFFSET}; retry GC when they have finished")
    return CNIError(TRY_AGAIN_LATER, f"ADD waited {files.waited(started)} for a garbage collection (GC) to finish",
                    f"lock: {path} byte {GC_OFFSET}; retry when GC has finished")


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
    _guards.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
