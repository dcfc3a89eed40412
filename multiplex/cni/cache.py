"""The on-disk cache of what DEL and CHECK need after ADD returned (one record per attachment).

Layout: one JSON file per (container ID, interface) in the cache directory (default
`<state root>/cache`), named `<container_id>:<ifname>.json`. ':' can appear in neither a container
ID nor a Linux interface name, so names never collide. Each file is an envelope
`{"kind": "multiplex-cache/v1", "containerID", "ifname", "record"}`; the record is the caller's.

Writes are atomic (util/files.atomic_write): a temporary file in the same directory (named
`.tmp-...`), fsync, rename over the old file, fsync the directory. A reader sees the old record or the new one, never half of one, even after a
power cut. A corrupt file (bad JSON, wrong kind, wrong key) is logged and never crashed on: `load`
reports it as missing, or, with `with_corrupt=True`, as a `CorruptEntry` so that DEL can clean up
without it and remove the file; `corrupt_entries()` lists them for GC. A write that fails (disk
full, read-only file system, a state directory that is not a directory) is CNIError 5 naming the
file. Serialize writers of one container with `lock.container_lock`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

from ..util import files, log, state
from .errors import CNIError, IO_FAILURE
from .request import check_container_id, check_ifname

KIND = "multiplex-cache/v1"
SUFFIX = ".json"
TMP_PREFIX = ".tmp-"
#: a temporary file older than this is a leftover of a crashed writer and is removed by entries()
STALE_TMP_SECONDS = 600

def _check_key(container_id: str, ifname: str) -> None:
    """The key names a file: the same rules as the environment (request.py holds them, whole-string
    and length-bounded), so no key can leave the cache directory or collide with another."""
    check_container_id(container_id)
    check_ifname(ifname)


@dataclass(frozen=True)
class CorruptEntry:
    """A cache file that exists but cannot be used (not JSON, not ours, another key, unreadable).
    Falsy, so `if not record` treats it as no record; DEL and GC tell it apart to clean up."""
    container_id: str
    ifname: str
    path: str
    problem: str

    def __bool__(self) -> bool:
        return False


class ResultCache:
    def __init__(self, directory: Optional[str] = None):
        self.dir = directory or os.path.join(state.root(), "cache")
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot create the cache directory {self.dir}: {e.strerror}",
                           f"file: {self.dir}; the state directory (stateDir) must be a writable directory") from None

    def path(self, container_id: str, ifname: str) -> str:
        _check_key(container_id, ifname)
        return os.path.join(self.dir, f"{container_id}:{ifname}{SUFFIX}")

    def save(self, container_id: str, ifname: str, record: Mapping[str, Any]) -> None:
        """Write the record atomically (replacing any previous one). OSError -> code 5."""
        final = self.path(container_id, ifname)
        data = json.dumps({"kind": KIND, "containerID": container_id, "ifname": ifname,
                           "record": dict(record)}, sort_keys=True).encode()
        try:
            files.atomic_write(final, data, 0o600)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot write cache entry {final} for {container_id}/{ifname}: {e.strerror}",
                           f"file: {final}; the state directory (stateDir) must be writable, with free space") from None

    def load(self, container_id: str, ifname: str, *, with_corrupt: bool = False
             ) -> Union[dict[str, Any], CorruptEntry, None]:
        """The record; None when there is none. A corrupt file is logged and reported as None, or
        as a CorruptEntry when `with_corrupt` (DEL cleans up without it, then removes the file)."""
        found = self._read(self.path(container_id, ifname), (container_id, ifname))
        if isinstance(found, CorruptEntry) and not with_corrupt:
            return None
        return found

    def delete(self, container_id: str, ifname: str) -> None:
        """Remove the record; deleting what is not there succeeds."""
        p = self.path(container_id, ifname)
        try:
            os.unlink(p)
            files.fsync_dir(self.dir)
        except FileNotFoundError:
            return
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot remove cache entry {p} for {container_id}/{ifname}: {e.strerror}",
                           f"file: {p}") from None

    def ifnames(self, container_id: str) -> list[str]:
        """The interfaces `container_id` has an entry for (readable or not), from the file names."""
        prefix = f"{container_id}:"
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n[len(prefix):-len(SUFFIX)] for n in names if n.startswith(prefix) and n.endswith(SUFFIX))

    def entries(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every readable (container_id, ifname, record), sorted by file name; corrupt ones are logged."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for name in names:
            full = os.path.join(self.dir, name)
            if name.startswith(TMP_PREFIX):
                self._remove_if_stale(full)
                continue
            if not name.endswith(SUFFIX):
                continue
            found = read_envelope(full)
            if found is not None and not isinstance(found, CorruptEntry):
                yield found

    def corrupt_entries(self) -> Iterator[CorruptEntry]:
        """Every cache file that cannot be used, keyed by its file name (`<containerID>:<ifname>.json`)."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(TMP_PREFIX) or not name.endswith(SUFFIX) or ":" not in name:
                continue
            cid, _, ifname = name[:-len(SUFFIX)].partition(":")
            try:
                _check_key(cid, ifname)
            except CNIError:
                continue
            found = self._read(os.path.join(self.dir, name), (cid, ifname))
            if isinstance(found, CorruptEntry):
                yield found

    def stale(self, valid: Iterable[Union[tuple[str, str], Mapping[str, str]]]
              ) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Entries whose (container_id, ifname) is not in `valid` (GC's `cni.dev/valid-attachments`)."""
        keep = {(a["containerID"], a["ifname"]) if isinstance(a, Mapping) else tuple(a) for a in valid}
        for cid, ifname, record in self.entries():
            if (cid, ifname) not in keep:
                yield cid, ifname, record

    # ---- internals ----

    def _read(self, path: str, key: tuple[str, str]) -> Union[dict[str, Any], CorruptEntry, None]:
        found = read_envelope(path, key)
        if found is None or isinstance(found, CorruptEntry):
            return found
        if found[:2] != key:
            return _report(path, key, f"holds the entry of {found[0]}/{found[1]}")
        return found[2]

    def _remove_if_stale(self, path: str) -> None:
        try:
            if time.time() - os.stat(path).st_mtime > STALE_TMP_SECONDS:
                os.unlink(path)
        except OSError:
            pass


def read_envelope(path: str, key: tuple[str, str] = ("", "")
                  ) -> Union[tuple[str, str, dict[str, Any]], CorruptEntry, None]:
    """One cache file as (containerID, ifname, record); None when it is not there; a CorruptEntry
    (logged) when it cannot be used. Also for readers without a ResultCache (ipam/repair.py)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        return _report(path, key, f"cannot be read: {e.strerror}")
    try:
        env = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        return _report(path, key, f"is not JSON: {e}")
    if (not isinstance(env, dict) or env.get("kind") != KIND or not isinstance(env.get("record"), dict)
            or not isinstance(env.get("containerID"), str) or not isinstance(env.get("ifname"), str)):
        return _report(path, key, f"is not a {KIND} entry")
    return env["containerID"], env["ifname"], env["record"]


def _report(path: str, key: tuple[str, str], problem: str) -> CorruptEntry:
    log.get().error("corrupt cache entry", file=path, problem=problem)
    return CorruptEntry(key[0], key[1], path, problem)


Cache = ResultCache  # short alias
