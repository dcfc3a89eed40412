"""The multiplex network config (`type: multiplex`), checked against schemas/multiplex.json.

Every field, its type, default and meaning is documented in the README ("The multiplex config")
and in the schema's descriptions.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..cni.errors import CNIError, INVALID_CONFIG

DEFAULT_CONF_DIR = "/etc/cni/net.d"
#: attachments per pod (cluster network and delegates included) unless maxAttachments says otherwise
DEFAULT_MAX_ATTACHMENTS = 32


@dataclass
class MultiplexConfig:
    raw: dict[str, Any]
    cni_version: str
    name: str
    cluster_network: Union[str, dict, None] = None
    delegates: list[dict] = field(default_factory=list)
    default_networks: list[str] = field(default_factory=list)
    system_namespaces: list[str] = field(default_factory=lambda: ["kube-system"])
    namespace_isolation: bool = True
    global_namespaces: list[str] = field(default_factory=list)
    multus_namespace: str = "default"
    nad_dir: Optional[str] = None
    pod_dir: Optional[str] = None
    kubeconfig: Optional[str] = None
    conf_dir: str = DEFAULT_CONF_DIR
    bin_dir: Optional[str] = None
    state_dir: Optional[str] = None
    readiness_file: Optional[str] = None
    readiness_timeout: float = 30.0
    log_file: Optional[str] = None
    log_level: Optional[str] = None
    plugin_timeout: float = 60.0
    max_attachments: int = DEFAULT_MAX_ATTACHMENTS

    @classmethod
    def from_dict(cls, d: dict[str, Any], validate: bool = True) -> "MultiplexConfig":
        """`validate=False` (DEL, GC) skips the JSON Schema: teardown must work with the config the
        runtime still has, and must not pay for importing jsonschema. A field of the wrong type is
        then its default when it only tunes the call (timeouts, logging), code 7 when it says where
        things are (see _teardown_view)."""
        if validate:
            from ..util import schema

            schema.validate("multiplex", d)
            check_inline_names(d)
            check_node_paths(d)
        else:
            d = _teardown_view(d)
        return cls(
            raw=d,
            cni_version=d["cniVersion"],
            name=d["name"],
            cluster_network=d.get("clusterNetwork"),
            delegates=list(d.get("delegates") or []),
            default_networks=list(d.get("defaultNetworks") or []),
            system_namespaces=list(d.get("systemNamespaces", ["kube-system"])),
            namespace_isolation=bool(d.get("namespaceIsolation", True)),
            global_namespaces=list(d.get("globalNamespaces") or []),
            multus_namespace=d.get("multusNamespace") or "default",
            nad_dir=d.get("nadDir"),
            pod_dir=d.get("podDir"),
            kubeconfig=d.get("kubeconfig"),
            conf_dir=d.get("confDir") or DEFAULT_CONF_DIR,
            bin_dir=d.get("binDir"),
            state_dir=d.get("stateDir"),
            readiness_file=d.get("readinessindicatorfile") or None,
            readiness_timeout=float(d.get("readinessTimeout", 30.0)),
            log_file=d.get("logFile"),
            log_level=d.get("logLevel"),
            plugin_timeout=float(d.get("pluginTimeout", 60.0)),
            max_attachments=int(d.get("maxAttachments", DEFAULT_MAX_ATTACHMENTS)),
        )


def check_inline_names(d: dict[str, Any]) -> None:
    """Inline `delegates` and an inline `clusterNetwork` need their own `name` (code 7): a config
    without one used to run as a network called after its plugin type, so two unnamed configs of
    one type shared a bridge, leases and GC."""
    inline: list[tuple[str, Any]] = []
    if isinstance(d.get("clusterNetwork"), dict):
        inline.append(("$.clusterNetwork", d["clusterNetwork"]))
    for k, conf in enumerate(d.get("delegates") or []):
        inline.append((f"$.delegates[{k}]", conf))
    for path, conf in inline:
        name = conf.get("name") if isinstance(conf, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise CNIError(INVALID_CONFIG, f"the inline network config at {path} has no name",
                           f"field: {path}.name; allowed: a network name of its own (letters, digits, "
                           "'_', '.', '-'), unique on the node")


def check_node_paths(d: dict[str, Any]) -> None:
    """What the schema cannot see about the node paths (it already wants each one absolute): a
    `logFile` that is a directory (every line would silently go to stderr instead), and a
    `clusterNetwork` written as a relative path (`./net.d/x.conf`, `net.d/a/b.conf`: it would be
    read against the runtime's working directory, or taken for a NAD that never exists). Code 7
    naming the field; runs before anything is touched."""
    log_file = d.get("logFile")
    if isinstance(log_file, str) and log_file and os.path.isdir(log_file):
        raise CNIError(INVALID_CONFIG, f"logFile {log_file} is a directory",
                       "field: logFile; allowed: an absolute path to a regular file (created when missing)")
    cn = d.get("clusterNetwork")
    if isinstance(cn, str) and _relative_path(cn):
        raise CNIError(INVALID_CONFIG, f"clusterNetwork {cn!r} is a relative path",
                       "field: clusterNetwork; allowed: a NAD name (ns/name or name), a config name in confDir, "
                       "or an absolute path to a config file or directory")


def _relative_path(value: str) -> bool:
    """A value that can only be meant as a relative path: it starts with './' or '../', or has
    more '/' than a NAD's `namespace/name`."""
    return not value.startswith("/") and (value.startswith(("./", "../")) or value in (".", "..")
                                          or value.count("/") > 1)


#: Fields that only tune a call: on teardown a value of the wrong type falls back to the default
#: (a DEL must not fail because `readinessTimeout` is "soon").
_TUNING = {
    "readinessTimeout": lambda v: _is_number(v) and v > 0,
    "pluginTimeout": lambda v: _is_number(v) and v > 0,
    "maxAttachments": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "logFile": lambda v: isinstance(v, str) and (not v or v.startswith("/")),
    "logLevel": lambda v: isinstance(v, str),
    "readinessindicatorfile": lambda v: isinstance(v, str),
}
#: Fields that say where things are or which networks exist: on teardown a value of the wrong type
#: is code 7 (guessing would clean the wrong place, or nothing, and report success).
_WHERE = {
    "clusterNetwork": (lambda v: isinstance(v, (str, dict)), "a name, an absolute path or an inline config"),
    "delegates": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "a list of configs"),
    "defaultNetworks": (lambda v: _strings(v), "a list of strings"),
    "systemNamespaces": (lambda v: _strings(v), "a list of strings"),
    "globalNamespaces": (lambda v: _strings(v), "a list of strings"),
    "namespaceIsolation": (lambda v: isinstance(v, bool), "true or false"),
    "multusNamespace": (lambda v: isinstance(v, str), "a namespace"),
    "nadDir": (lambda v: isinstance(v, str), "an absolute path"),
    "podDir": (lambda v: isinstance(v, str), "an absolute path"),
    "kubeconfig": (lambda v: isinstance(v, str), "an absolute path"),
    "confDir": (lambda v: isinstance(v, str), "an absolute path"),
    "stateDir": (lambda v: isinstance(v, str), "an absolute path"),
    "binDir": (lambda v: isinstance(v, str), "an absolute path"),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _teardown_view(d: dict[str, Any]) -> dict[str, Any]:
    """The config as DEL and GC read it without the schema: tuning fields of the wrong type
    dropped (their defaults apply), a wrong-typed field that says where things are refused with
    code 7 naming it (a relative stateDir is refused by state.root, naming the field)."""
    out = dict(d)
    for key, ok in _TUNING.items():
        if key in out and out[key] is not None and not ok(out[key]):
            del out[key]
    for key, (ok, allowed) in _WHERE.items():
        if key in out and out[key] is not None and not ok(out[key]):
            raise CNIError(INVALID_CONFIG, f"{key} has the wrong type ({type(out[key]).__name__})",
                           f"field: {key}; allowed: {allowed}")
    return out
