"""The install record, conf_dir/multiplex.d/install.json: every file install placed (with the
backup of someone else's file it replaced) and the runtime directory it mirrored.

An entry is saved before its file is written, so an interrupted install never leaves a file it
does not know about; uninstall removes exactly what the record names and puts backups back.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import quote

from .files import json_bytes, put_file, read_bytes
from .launchers import is_our_launcher
from .layout import STATE_SUBDIR, host_join, in_root
from .report import InstallError, InstallReport

STATE_NAME = "install.json"


@dataclass
class InstallRecord:
    real: str  #: the record's own path under root
    files: dict[str, dict] = field(default_factory=dict)  #: host path -> {"backup": host path or None}
    runtime_dir: Optional[str] = None  #: host path of the mirrored runtime

    @classmethod
    def load(cls, root: str, conf_dir: str) -> "InstallRecord":
        real = in_root(root, host_join(conf_dir, STATE_SUBDIR, STATE_NAME), follow_last=False)
        data = read_bytes(real)
        if data is None:
            return cls(real)
        try:
            state = json.loads(data)
            return cls(real, dict(state.get("files", {})), state.get("runtimeDir"))
        except ValueError:
            raise InstallError(f"{real} is not valid JSON; it records what install placed. Remove it and "
                               "the files multiplex placed by hand, or restore it") from None

    def save(self) -> None:
        put_file(self.real, json_bytes({"files": dict(sorted(self.files.items())),
                                        "runtimeDir": self.runtime_dir}), 0o600)

    def remove(self) -> None:
        if os.path.lexists(self.real):
            os.unlink(self.real)


def _backup_host_path(conf_dir: str, host_path: str) -> str:
    return host_join(conf_dir, STATE_SUBDIR, "backup", quote(host_path, safe=""))


def place_file(root: str, bin_dir: str, conf_dir: str, host_path: str, data: bytes, mode: int,
               record: InstallRecord, report: InstallReport) -> None:
    """Write one file, recording it first; someone else's binary of the same name in bin_dir is
    moved to a backup (and recorded) so uninstall can put it back."""
    real = in_root(root, host_path, follow_last=False)
    if host_path not in record.files:
        entry: dict = {"backup": None}
        if os.path.lexists(real) and host_path.startswith(host_join(bin_dir) + "/") and not is_our_launcher(real):
            backup_host = _backup_host_path(conf_dir, host_path)
            backup_real = in_root(root, backup_host, follow_last=False)
            os.makedirs(os.path.dirname(backup_real), exist_ok=True)
            os.replace(real, backup_real)
            entry["backup"] = backup_host
            report.add(host_path, "backed-up")
        record.files[host_path] = entry
        record.save()  # recorded before the write: never an untracked file
    report.add(host_path, put_file(real, data, mode))


def remove_placed(root: str, host_path: str, entry: dict, report: InstallReport) -> None:
    """Remove a file install placed and put back the one it replaced, if any."""
    real = in_root(root, host_path, follow_last=False)
    if os.path.lexists(real):
        os.unlink(real)
        report.add(host_path, "removed")
    backup = entry.get("backup")
    if backup:
        backup_real = in_root(root, backup, follow_last=False)
        if os.path.lexists(backup_real):
            os.replace(backup_real, real)
            report.add(host_path, "restored")
