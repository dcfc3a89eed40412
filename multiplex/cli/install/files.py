"""Idempotent file writes: a file is rewritten (atomically, util.files.atomic_write) only when its
bytes or mode differ, so a second install changes nothing, not even an mtime."""
from __future__ import annotations

import json
import os
import shutil
import stat
from typing import Any, Optional

from ...util.files import atomic_write
from .report import InstallError


def read_bytes(path: str) -> Optional[bytes]:
    """The file's bytes, or None when there is no file there to read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def json_bytes(obj: Any) -> bytes:
    """The JSON files install writes: indented, one trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def put_file(path: str, data: bytes, mode: int) -> str:
    """Make `path` hold `data` with `mode`. Returns created, updated or unchanged.

    An unchanged file is not touched at all (same bytes, same mtime)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
        if os.path.isdir(path) and not os.path.islink(path):
            raise InstallError(f"{path} is a directory; expected a file there")
        os.unlink(path)
        atomic_write(path, data, mode)
        return "updated"
    old = read_bytes(path)
    if old is None:
        atomic_write(path, data, mode)
        return "created"
    if old == data:
        if stat.S_IMODE(os.stat(path).st_mode) == mode:
            return "unchanged"
        os.chmod(path, mode)
        return "updated"
    atomic_write(path, data, mode)
    return "updated"


def remove_any(path: str) -> None:
    """Remove a file, a link or a whole directory tree."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
