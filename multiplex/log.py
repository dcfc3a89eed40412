"""Structured logging: one JSON object per line, to a file or stderr. Never to stdout.

Stdlib only, so every code path (including VERSION and error paths) can log without imports.
Configured from the multiplex config (`logFile`, `logLevel`) or MULTIPLEX_LOG_FILE /
MULTIPLEX_LOG_LEVEL; default: warnings and errors to stderr.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "panic": 50}


class Logger:
    def __init__(self, path: Optional[str] = None, level: str = "warning"):
        self.path = path
        self.level = LEVELS.get(level, 30)
        self.fields: dict[str, Any] = {}

    def configure(self, path: Optional[str] = None, level: Optional[str] = None) -> None:
        if path:
            self.path = path
        if level:
            self.level = LEVELS.get(level, self.level)

    def bind(self, **fields: Any) -> None:
        """Fields added to every later line (container ID, pod, command)."""
        self.fields.update({k: v for k, v in fields.items() if v})

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS.get(level, 0) < self.level:
            return
        rec = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
               "level": level, "msg": msg, "pid": os.getpid()}
        rec.update(self.fields)
        rec.update(fields)
        line = json.dumps(rec, default=str) + "\n"
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line)
                return
            except OSError:
                pass
        sys.stderr.write(line)

    def debug(self, msg: str, **f: Any) -> None:
        self.log("debug", msg, **f)

    def info(self, msg: str, **f: Any) -> None:
        self.log("info", msg, **f)

    def warning(self, msg: str, **f: Any) -> None:
        self.log("warning", msg, **f)

    def error(self, msg: str, **f: Any) -> None:
        self.log("error", msg, **f)


_logger: Optional[Logger] = None


def get() -> Logger:
    global _logger
    if _logger is None:
        _logger = Logger(os.environ.get("MULTIPLEX_LOG_FILE") or None,
                         os.environ.get("MULTIPLEX_LOG_LEVEL", "warning"))
    return _logger
