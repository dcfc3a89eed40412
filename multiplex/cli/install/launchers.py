"""The launchers in the CNI bin directory: one small shell script per plugin that execs Python.

A runtime finds a CNI plugin as an executable named after its type in `bin_dir`. For
`multiplex` and every plugin of the `multiplex.plugins` entry-point group (each delegate,
`multiplex-ipam`) install writes a POSIX shell script that execs the chosen interpreter on the
plugin's entry. The script carries a mark, so uninstall can recognize ours without the record.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

from .files import read_bytes
from .layout import META_PLUGIN, host_join
from .report import InstallError

PLUGIN_GROUP = "multiplex.plugins"
LAUNCHER_MARK = "# multiplex launcher"
#: daemon mode: the in-process `multiplex` launcher, under this name, is the shim's fallback
INPROCESS_NAME = "multiplex-inprocess"
#: the shim's mark (its second line), as multiplex/daemon/shim.py starts
SHIM_MARK = b"# multiplex shim"

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")  # fullmatch: "$" would let a trailing newline in
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")  # fullmatch, as _TARGET


@dataclass(frozen=True)
class Launcher:
    name: str    #: file name in the CNI bin dir, the CNI type (`multiplex-bridge`)
    target: str  #: "module:attr"
    kind: str    #: "script" (a console-script main) or "plugin" (a Plugin object run by skel.main)


def discover_launchers() -> dict[str, Launcher]:
    """Every plugin of the `multiplex.plugins` group, plus `multiplex` itself.

    A plugin with a console script of the same name (pyproject's [project.scripts]) is launched
    through that script's function, which is the plugin's process entry (`multiplex.entry:main`
    also serves the CLI and keeps start-up lean); otherwise the plugin object is run with
    `multiplex.cni.skel.main`. The group is read as the registry reads it: our distribution first,
    every installed distribution when ours has none.
    """
    from importlib import metadata

    plugins: dict[str, str] = {}
    scripts: dict[str, str] = {}
    try:
        for ep in metadata.distribution("multiplex").entry_points:
            if ep.group == PLUGIN_GROUP:
                plugins[ep.name] = ep.value
            elif ep.group == "console_scripts":
                scripts[ep.name] = ep.value
    except metadata.PackageNotFoundError:
        pass
    if not plugins:
        for ep in metadata.entry_points(group=PLUGIN_GROUP):
            plugins.setdefault(ep.name, ep.value)
    names = set(plugins) | {META_PLUGIN}
    out: dict[str, Launcher] = {}
    for name in sorted(names):
        if name in scripts:
            out[name] = Launcher(name, scripts[name], "script")
        elif name in plugins:
            out[name] = Launcher(name, plugins[name], "plugin")
        else:
            raise InstallError(f"no entry for {name!r}: neither a console script nor a {PLUGIN_GROUP} "
                               "entry point; is the multiplex package installed?")
    return out


def launchers_from(spec: Mapping[str, Any]) -> dict[str, Launcher]:
    """Launchers given by the caller (name -> "module:attr" or Launcher) instead of the entry points."""
    out = {}
    for name, value in spec.items():
        out[name] = value if isinstance(value, Launcher) else Launcher(name, str(value), "plugin")
    return out


def launcher_script(launcher: Launcher, python: str) -> str:
    """The launcher's text: a POSIX shell script that execs `python` on the plugin's entry.

    `-I` (isolated mode): the runtime's environment (PYTHONPATH, PYTHONHOME) and the current
    directory never change what gets imported.
    """
    if not _NAME.fullmatch(launcher.name) or ".." in launcher.name:
        raise InstallError(f"invalid launcher name {launcher.name!r}: a CNI type is a plugin name, not a path")
    if not _TARGET.fullmatch(launcher.target):
        raise InstallError(f"invalid entry {launcher.target!r} for {launcher.name}: expected 'module:attribute'")
    module, _, attr = launcher.target.partition(":")
    dotted = "." in attr  # `obj.main`: import the module, then reach the attribute through it
    if launcher.kind == "script":
        code = (f"import sys; from {module} import {attr}; sys.exit({attr}())" if not dotted else
                f"import sys; import {module} as m; sys.exit(m.{attr}())")
    elif launcher.kind == "plugin":
        code = (f"from multiplex.cni.skel import main; from {module} import {attr}; main({attr})" if not dotted
                else f"from multiplex.cni.skel import main; import {module} as m; main(m.{attr})")
    else:
        raise InstallError(f"unknown launcher kind {launcher.kind!r} for {launcher.name}")
    return ("#!/bin/sh\n"
            f"{LAUNCHER_MARK} for the CNI plugin {launcher.name} ({launcher.target}).\n"
            "# Written by `multiplex install`, which rewrites it; `multiplex uninstall` removes it.\n"
            f"exec {shlex.quote(python)} -I -c {shlex.quote(code)} \"$@\"\n")


def launcher_files(bin_dir: str, python: str,
                   launchers: Mapping[str, Any] | None) -> dict[str, tuple[bytes, int]]:
    """Host path -> (bytes, mode) of every launcher, in name order (the installed entry points
    unless `launchers` names them)."""
    found = launchers_from(launchers) if launchers is not None else discover_launchers()
    return {host_join(bin_dir, name): (launcher_script(launcher, python).encode(), 0o755)
            for name, launcher in sorted(found.items())}


def daemon_files(bin_dir: str, python: str, launchers: Mapping[str, Any] | None, socket_path: str,
                 fallback: str) -> dict[str, tuple[bytes, int]]:
    """Daemon mode's files in the bin dir: every launcher, except that `multiplex` is the shim
    (multiplex/daemon/shim.py, rendered with the socket and the fallback), and, with fallback
    "exec", today's in-process `multiplex` launcher under INPROCESS_NAME, which the shim execs
    when the daemon is not there. The shim runs on `python` with -I -S: it needs the interpreter,
    not the venv or the mirrored runtime's packages."""
    from ...daemon.shim import render

    if fallback not in ("exec", "fail"):
        raise InstallError(f"invalid fallback {fallback!r}: 'exec' (run the call in-process) or 'fail' (code 11)")
    found = launchers_from(launchers) if launchers is not None else discover_launchers()
    meta = found.get(META_PLUGIN)
    if meta is None:
        raise InstallError(f"no launcher for {META_PLUGIN!r}; daemon mode replaces it with the shim")
    files = launcher_files(bin_dir, python, launchers)
    fallback_argv = None
    if fallback == "exec":
        inprocess = Launcher(INPROCESS_NAME, meta.target, meta.kind)
        path = host_join(bin_dir, INPROCESS_NAME)
        files[path] = (launcher_script(inprocess, python).encode(), 0o755)
        fallback_argv = [path]
    try:
        shim = render(socket_path, fallback_argv, python)
    except ValueError as e:
        raise InstallError(f"cannot write the daemon shim: {e}") from None
    files[host_join(bin_dir, META_PLUGIN)] = (shim.encode("utf-8", "surrogateescape"), 0o755)
    return dict(sorted(files.items()))


def is_our_launcher(path: str) -> bool:
    """The file at `path` is a launcher (or the daemon shim) install wrote: it carries our mark."""
    data = read_bytes(path)
    if data is None:
        return False
    if data.startswith(b"#!/bin/sh\n" + LAUNCHER_MARK.encode()):
        return True
    first, _, rest = data.partition(b"\n")
    return first.startswith(b"#!") and rest.startswith(SHIM_MARK)
