"""Structured logging: one JSON object per line, to a file or stderr. Never to stdout.

Stdlib only, so every code path (including VERSION and error paths) can log without imports.

Two kinds of logger, so that concurrent calls in one process never see each other's fields:
- the process logger, `get()`: its destination comes from MULTIPLEX_LOG_FILE / MULTIPLEX_LOG_LEVEL
  at entry (default: warnings and errors to stderr), and it carries no call's fields. Code with no
  request in scope logs here, naming what it is about in explicit fields.
- a call's logger, `child(...)`: the meta plugin makes one per call from its config (`logFile`,
  `logLevel`) with the call's command, container and pod, and hands it down on the request
  (`req.ctx.log`). It never changes its parent.

The log file must be an absolute path (a relative one would follow the runtime's working
directory). It is created 0600 (it names pods and containers), opened without following a symlink
(O_NOFOLLOW: a link planted at the path is refused, with one note on stderr, and the line goes to
stderr), only when it is a regular file, and rotated by size: past ROTATE_BYTES it becomes
`<logFile>.1` (one kept, the older one dropped) and a new file is started.
"""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from typing import Any, Optional

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "panic": 50}
#: Size past which the log file is rotated to `<path>.1`. 10 MiB holds tens of thousands of CNI
#: calls at info level; with the one rotated file a node never keeps more than ~20 MiB of it.
ROTATE_BYTES = 10 * 1024 * 1024
#: Seconds a process waits for another one rotating the same log before writing to the old file.
ROTATE_LOCK_WAIT = 1.0
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Logger:
    def __init__(self, path: Optional[str] = None, level: str = "warning"):
        self.path = path
        self.level = LEVELS.get(level, 30)
        self.fields: dict[str, Any] = {}
        self._refused: set[str] = set()  # paths already reported as unusable (one note each)

    def child(self, path: Optional[str] = None, level: Optional[str] = None, **fields: Any) -> "Logger":
        """A logger for one call: this one's destination (or `path`/`level`) and fields, plus
        `fields`. The parent is not changed, so concurrent calls never see each other's fields."""
        out = Logger(path or self.path)
        out.level = LEVELS.get(level, self.level) if level else self.level
        out.fields = {**self.fields, **{k: v for k, v in fields.items() if v}}
        out._refused = self._refused
        return out

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS.get(level, 0) < self.level:
            return
        rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
               "level": level, "msg": msg, "pid": os.getpid()}
        rec.update(self.fields)
        rec.update(fields)
        line = json.dumps(rec, default=str) + "\n"
        if self.path and self._write_file(self.path, line.encode("utf-8")):
            return
        sys.stderr.write(line)

    def _write_file(self, path: str, data: bytes) -> bool:
        """Append `data` to the log file; False (the caller writes to stderr) when it cannot."""
        if not os.path.isabs(path):  # relative to whatever directory the runtime ran us in: no
            self._refuse(path, "not an absolute path")
            return False
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o600)
        except OSError as e:
            self._refuse(path, "a symbolic link, never written through" if _is_symlink(path) else e.strerror)
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._refuse(path, "not a regular file")
                return False
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.fchmod(fd, 0o600)  # a file made before logs were private
            if st.st_size and st.st_size + len(data) > ROTATE_BYTES:
                fd = _rotate(path, fd)
            os.write(fd, data)
            return True
        except OSError as e:
            self._refuse(path, e.strerror or str(e))
            return False
        finally:
            os.close(fd)

    def _refuse(self, path: str, why: str) -> None:
        if path not in self._refused:
            self._refused.add(path)
            sys.stderr.write(json.dumps({"level": "warning", "msg": "log file not used, logging to stderr",
                                         "logFile": path, "reason": why}) + "\n")

    def debug(self, msg: str, **f: Any) -> None:
        self.log("debug", msg, **f)

    def info(self, msg: str, **f: Any) -> None:
        self.log("info", msg, **f)

    def warning(self, msg: str, **f: Any) -> None:
        self.log("warning", msg, **f)

    def error(self, msg: str, **f: Any) -> None:
        self.log("error", msg, **f)


def _is_symlink(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _rotate(path: str, fd: int) -> int:
    """Move the full log to `<path>.1` and return a descriptor of a new, empty one. Processes
    logging at once serialize on a lock of the old file (util/files, bounded: a logger never waits
    long); the one that finds the path already replaced just writes to the new file, and one that
    cannot get the lock in time keeps writing to the old file, which the holder rotates."""
    from .files import lock, unlock

    if not lock(fd, time.monotonic() + ROTATE_LOCK_WAIT):
        return fd
    try:
        st = os.fstat(fd)
        try:
            current = os.lstat(path)
            same = (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            os.replace(path, path + ".1")
    finally:
        unlock(fd)
    new = os.open(path, _OPEN_FLAGS, 0o600)
    os.close(fd)
    return new


_logger: Optional[Logger] = None


def get() -> Logger:
    global _logger
    if _logger is None:
        _logger = Logger(os.environ.get("MULTIPLEX_LOG_FILE") or None,
                         os.environ.get("MULTIPLEX_LOG_LEVEL", "warning"))
    return _logger
