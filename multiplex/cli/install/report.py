"""What install and uninstall tell their caller: the error that stops them, and the report of what they did."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


class InstallError(Exception):
    """Install or uninstall cannot go on: what is wrong, where, and what would be right."""


@dataclass
class FileChange:
    path: str    #: the path as the host sees it (without root)
    action: str  #: created, updated, unchanged, removed, restored, backed-up


@dataclass
class InstallReport:
    """Every file touched (in the order it was), the network chosen for eth0, and warnings."""

    root: str
    changes: list[FileChange] = field(default_factory=list)
    cluster_network: Optional[str] = None  #: the network named clusterNetwork
    cluster_network_file: Optional[str] = None  #: the node config it was taken from, if any
    conflist: Optional[str] = None  #: our conflist (host path)
    kubeconfig: Optional[str] = None  #: the kubeconfig named in our conflist (host path)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)

    def add(self, path: str, action: str) -> None:
        self.changes.append(FileChange(path, action))

    def lines(self) -> list[str]:
        """A human summary, one line per file, then the warnings."""
        out = [f"{c.action:<10} {c.path}" for c in self.changes]
        if self.cluster_network:
            src = f" (from {self.cluster_network_file})" if self.cluster_network_file else ""
            out.append(f"clusterNetwork {self.cluster_network}{src}")
        out.extend(f"warning: {w}" for w in self.warnings)
        out.append("changed" if self.changed else "unchanged: nothing to do")
        return out

    def to_dict(self) -> dict:
        return {"root": self.root, "changed": self.changed,
                "changes": [{"path": c.path, "action": c.action} for c in self.changes],
                "clusterNetwork": self.cluster_network, "clusterNetworkFile": self.cluster_network_file,
                "conflist": self.conflist, "kubeconfig": self.kubeconfig, "warnings": self.warnings}
