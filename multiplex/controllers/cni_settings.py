"""What the node daemon's controllers need from the admin's multiplex config on this node.

The one source of truth is the config `multiplex install` writes in the node's CNI conf dir
(default `/etc/cni/net.d/00-multiplex.conflist`; the DaemonSet mounts that directory into the
daemon at the same path; `multiplex daemon --cni-conf PATH` names another). The daemon reads it,
never a second copy in a flag, so an admin who edits `globalNamespaces` there changes what the CNI
calls allow and what the vxlan-peers controller accepts together. The file is read again when its
size or mtime changes (a stat per pass, no parse).

Missing or unreadable file: the strictest reading (namespace isolation on, no global namespaces),
logged once per change, because trusting more than the admin's config says would let a tenant
claim addresses on another namespace's network.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

DEFAULT_PATH = "/etc/cni/net.d/00-multiplex.conflist"


@dataclass(frozen=True)
class CniSettings:
    """`namespaceIsolation`, `globalNamespaces` and `stateDir` of the installed multiplex config."""
    namespace_isolation: bool = True
    global_namespaces: tuple[str, ...] = ()
    #: the config's `stateDir` ("" when it names none): where the meta plugin's calls keep their
    #: locks, so the daemon's GC-lock holders lock that root too
    state_dir: str = ""
    problem: str = ""          # why the strict default is used ("" when read from the file)


def parse(text: str) -> CniSettings:
    """The settings of a multiplex config (a conflist whose first plugin is multiplex, or a single
    .conf of type multiplex); ValueError saying what is wrong."""
    conf = json.loads(text)
    if not isinstance(conf, dict):
        raise ValueError("not a JSON object")
    plugins = conf.get("plugins")
    plugin: Any = plugins[0] if isinstance(plugins, list) and plugins else conf
    if not isinstance(plugin, dict) or plugin.get("type") != "multiplex":
        raise ValueError("its first plugin is not of type multiplex")
    isolation = plugin.get("namespaceIsolation", True)
    names = plugin.get("globalNamespaces") or []
    if not isinstance(isolation, bool):
        raise ValueError("namespaceIsolation is not true or false")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("globalNamespaces is not a list of strings")
    state_dir = plugin.get("stateDir") or ""
    if not isinstance(state_dir, str):
        raise ValueError("stateDir is not a string")
    return CniSettings(isolation, tuple(names), state_dir)


class InstalledSettings:
    """The installed config's settings, re-read when the file changes."""

    def __init__(self, path: Optional[str] = None, log: Any = None):
        self.path = path or DEFAULT_PATH
        self.log = log
        self._stamp: Optional[tuple] = None
        self._value = CniSettings(problem="not read yet")

    def get(self) -> CniSettings:
        try:
            st = os.stat(self.path)
            stamp: Optional[tuple] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp == self._stamp and self._stamp is not None:
            return self._value
        if stamp is None:
            value = CniSettings(problem=f"{self.path} does not exist")
        else:
            try:
                with open(self.path, encoding="utf-8") as f:
                    value = parse(f.read())
            except (OSError, ValueError) as e:
                value = CniSettings(problem=f"{self.path}: {e}")
        if value != self._value and self.log is not None:
            if value.problem:
                self.log.warning("multiplex config not usable: namespace isolation strict, no global namespaces",
                                 problem=value.problem)
            else:
                self.log.info("multiplex config read", path=self.path, namespaceIsolation=value.namespace_isolation,
                              globalNamespaces=list(value.global_namespaces))
        self._stamp, self._value = stamp, value
        return value
