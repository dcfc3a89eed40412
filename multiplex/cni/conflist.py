"""Network configurations: a single plugin config or a conflist, parsed into a NetworkList.

A runtime (or a NetworkAttachmentDefinition's `spec.config`) gives either
- one plugin config: `{"cniVersion", "name", "type", ...}`, or
- a configuration list: `{"cniVersion" | "cniVersions", "name", "plugins": [...], "disableCheck",
  "disableGC"}`.
Both become a NetworkList whose `plugins` are the plugin objects as written; `chain.build_config`
adds `name`, `cniVersion`, `prevResult` and `runtimeConfig` per call, as libcni does.

Errors: text that is not JSON -> code 6; a malformed config -> code 7 with details naming the
field by its JSON path (`field: $.plugins[1].type; allowed: ...`); a version we do not speak ->
code 1.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from . import version as cniversion
from .errors import CNIError, DECODE_FAILURE, INCOMPATIBLE_VERSION, IO_FAILURE, invalid_config
from .registry import check_type_name

# libcni's rule for network names (they become file names in caches).
# Matched whole (fullmatch): a `$` anchor would accept a trailing newline.
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
NAME_ALLOWED = "a letter or digit, then letters, digits, '_', '.' or '-'"


@dataclass
class NetworkList:
    """A network: its name, the CNI version its plugins are called with, and the plugin chain."""

    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    disable_check: bool = False
    disable_gc: bool = False
    #: the config as given (a conflist, or the single plugin config)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def types(self) -> list[str]:
        return [str(p["type"]) for p in self.plugins]


def parse(data: Union[dict, str, bytes], *, where: str = "$", default_name: Optional[str] = None,
          default_version: Optional[str] = None) -> NetworkList:
    """Parse and validate a network config (dict, or JSON text such as a NAD's `spec.config`).

    `where` prefixes every JSON path in error details (e.g. `$.spec.config`). `default_name` /
    `default_version` fill a missing `name` / `cniVersion` (a NAD's name, the caller's version).
    """
    if isinstance(data, (str, bytes, bytearray)):
        data = decode(data, where)
    if not isinstance(data, dict):
        raise invalid_config(f"a network config must be a JSON object, not {_json_type(data)}", where,
                             "an object with 'type' (one plugin) or 'plugins' (a list)")
    if "plugins" in data:
        plugins = _plugins(data["plugins"], f"{where}.plugins")
    elif "type" in data:
        _plugin(data, where)
        plugins = [copy.deepcopy(data)]
    else:
        raise invalid_config("network config has neither 'type' nor 'plugins'", f"{where}.type",
                             "'type' naming one plugin, or 'plugins' listing a chain")
    return NetworkList(
        name=_name(data, where, default_name),
        cni_version=_version(data, where, default_version),
        plugins=plugins,
        disable_check=_flag(data, "disableCheck", where),
        disable_gc=_flag(data, "disableGC", where),
        raw=copy.deepcopy(data),
    )


parse_network = parse  # the name multiplex.cli.validate uses


def load(path: str, **kw: Any) -> NetworkList:
    """Parse a config file (.conf or .conflist). An unreadable file is code 5."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot read network config {path}: {e.strerror}", f"file: {path}") from None
    return parse(text, **kw)


def decode(text: Union[str, bytes, bytearray], where: str = "$") -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(DECODE_FAILURE, f"network config is not valid JSON: {e}", f"field: {where}") from None


def declared_capabilities(plugin_conf: dict[str, Any]) -> set[str]:
    """Capabilities a plugin config turns on with `"capabilities": {"<cap>": true}`."""
    caps = plugin_conf.get("capabilities")
    if not isinstance(caps, dict):
        return set()
    return {k for k, v in caps.items() if v is True}


def _plugins(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid_config("'plugins' must be a non-empty list of plugin configs", where,
                             "a list of objects, each with a 'type'")
    out = []
    for n, p in enumerate(value):
        _plugin(p, f"{where}[{n}]")
        out.append(copy.deepcopy(p))
    return out


def _plugin(p: Any, where: str) -> None:
    if not isinstance(p, dict):
        raise invalid_config(f"a plugin config must be an object, not {_json_type(p)}", where,
                             "an object with a 'type'")
    if "type" not in p:
        raise invalid_config("plugin config has no 'type'", f"{where}.type", "the plugin's name, e.g. 'bridge'")
    check_type_name(p["type"], f"{where}.type")
    caps = p.get("capabilities")
    if caps is not None:
        if not isinstance(caps, dict):
            raise invalid_config("'capabilities' must be an object", f"{where}.capabilities",
                                 'an object of booleans, e.g. {"portMappings": true}')
        for k, v in caps.items():
            if not isinstance(v, bool):
                raise invalid_config(f"capability {k!r} must be true or false", f"{where}.capabilities.{k}",
                                     "true or false")
    ipam = p.get("ipam")
    if ipam is not None:
        if not isinstance(ipam, dict):
            raise invalid_config("'ipam' must be an object", f"{where}.ipam", "an object with a 'type'")
        if "type" in ipam:
            check_type_name(ipam["type"], f"{where}.ipam.type")


def _name(data: dict, where: str, default: Optional[str]) -> str:
    name = data.get("name", default)
    if name is None:
        raise invalid_config("network config has no 'name'", f"{where}.name", NAME_ALLOWED)
    if not isinstance(name, str) or not _NETWORK_NAME.fullmatch(name):
        raise invalid_config(f"invalid network name {name!r}", f"{where}.name", NAME_ALLOWED)
    return name


def _version(data: dict, where: str, default: Optional[str]) -> str:
    """cniVersion, or the highest version of `cniVersions` (CNI 1.1.0) that we speak."""
    chosen = _highest_of(data["cniVersions"], f"{where}.cniVersions") if "cniVersions" in data else None
    if chosen:
        return chosen
    v = data.get("cniVersion", default)
    if v is None or v == "":
        if "cniVersions" in data and data["cniVersions"]:
            raise CNIError(INCOMPATIBLE_VERSION, "none of the config's cniVersions is supported",
                           f"field: {where}.cniVersions; allowed: one of {', '.join(cniversion.SUPPORTED)}")
        raise invalid_config("network config has no 'cniVersion'", f"{where}.cniVersion",
                             f"one of {', '.join(cniversion.SUPPORTED)}")
    if not isinstance(v, str):
        raise invalid_config("'cniVersion' must be a string", f"{where}.cniVersion",
                             f"one of {', '.join(cniversion.SUPPORTED)}")
    return cniversion.check_supported(v, f"{where}.cniVersion")


def _highest_of(value: Any, where: str) -> Optional[str]:
    if not isinstance(value, list):
        raise invalid_config("'cniVersions' must be a list of version strings", where,
                             f"a list drawn from {', '.join(cniversion.SUPPORTED)}")
    best: Optional[str] = None
    for n, v in enumerate(value):
        if not isinstance(v, str):
            raise invalid_config("a cniVersions entry must be a string", f"{where}[{n}]", "a version like '1.1.0'")
        try:
            parsed = cniversion.parse(v)
        except CNIError:
            raise invalid_config(f"malformed version {v!r} in cniVersions", f"{where}[{n}]",
                                 "a version like '1.1.0'") from None
        if v in cniversion.SUPPORTED and (best is None or parsed > cniversion.parse(best)):
            best = v
    return best


def _flag(data: dict, key: str, where: str) -> bool:
    v = data.get(key, False)
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):  # libcni accepts the strings too
        return v.lower() == "true"
    raise invalid_config(f"'{key}' must be true or false", f"{where}.{key}", "true or false")


def _json_type(v: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(v), type(v).__name__)
