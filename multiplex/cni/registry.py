"""Built-in plugins, found through the `multiplex.plugins` entry-point group.

pyproject.toml maps each CNI type name we ship to the object implementing it, e.g.
`multiplex-bridge = "delegates.bridge:plugin"`. A fifth delegate is one module and one line there.
Lookups read our own distribution's metadata first (cheap) and fall back to every installed
distribution, so another package can add plugins to the group too.
"""
from __future__ import annotations

import importlib
import re
from functools import lru_cache
from typing import Optional

from .errors import CNIError, INTERNAL, INVALID_CONFIG
from .plugin import Plugin

GROUP = "multiplex.plugins"
# matched whole (fullmatch): `$` would let a trailing newline through
_TYPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")


def check_type_name(name: str, field: str = "type") -> str:
    """A `type` is a plugin name, never a path: refuse '/', '..' and anything odd."""
    if not isinstance(name, str) or not name or "/" in name or ".." in name or not _TYPE_NAME.fullmatch(name):
        raise CNIError(INVALID_CONFIG, f"invalid plugin type {name!r}: a type is a plugin name, not a path",
                       f"field: {field}; allowed: letters, digits, '-', '_', '.', no '/' or '..'")
    return name


def _own_entry_points() -> dict[str, str]:
    """Our group from our own dist-info's entry_points.txt, read directly: importing
    importlib.metadata and scanning every distribution costs a plugin process ~7 ms."""
    import os
    import sys

    for base in sys.path:
        try:
            names = os.listdir(base or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("multiplex-") and name.endswith(".dist-info"):
                try:
                    with open(os.path.join(base, name, "entry_points.txt"), encoding="utf-8") as f:
                        text = f.read()
                except OSError:
                    continue
                found: dict[str, str] = {}
                section = ""
                for line in text.splitlines():
                    line = line.strip()
                    if line.startswith("[") and line.endswith("]"):
                        section = line[1:-1].strip()
                    elif section == GROUP and "=" in line:
                        key, _, value = line.partition("=")
                        found[key.strip()] = value.strip()
                return found
    return {}


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, str]:
    found = _own_entry_points()
    if found:
        return found
    from importlib import metadata

    try:
        for ep in metadata.distribution("multiplex").entry_points:
            if ep.group == GROUP:
                found[ep.name] = ep.value
    except metadata.PackageNotFoundError:
        pass
    if not found:  # running from a source tree without metadata, or plugins from elsewhere
        for ep in metadata.entry_points(group=GROUP):
            found.setdefault(ep.name, ep.value)
    return found


def builtin_names() -> list[str]:
    return sorted(_entry_points())


@lru_cache(maxsize=None)
def builtin(type_name: str) -> Optional[Plugin]:
    """The built-in plugin for `type_name`, or None when it is not one of ours."""
    target = _entry_points().get(type_name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        # a broken installation: say which entry point, never a traceback on stdout
        raise CNIError(INTERNAL, f"built-in plugin {type_name!r} cannot be loaded: {e}",
                       f"entry point: {GROUP} {type_name} = {target}") from None
    return obj  # type: ignore[return-value]
