"""The multiplex network config (`type: multiplex`), checked against schemas/multiplex.json.

Every field, its type, default and meaning is documented in the README ("The multiplex config")
and in the schema's descriptions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

DEFAULT_CONF_DIR = "/etc/cni/net.d"


@dataclass
class MultiplexConfig:
    raw: dict[str, Any]
    cni_version: str
    name: str
    cluster_network: Union[str, dict, None] = None
    delegates: list[dict] = field(default_factory=list)
    default_networks: list[str] = field(default_factory=list)
    system_namespaces: list[str] = field(default_factory=lambda: ["kube-system"])
    namespace_isolation: bool = False
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

    @classmethod
    def from_dict(cls, d: dict[str, Any], validate: bool = True) -> "MultiplexConfig":
        """`validate=False` (DEL, GC) skips the JSON Schema: teardown must work with the config the
        runtime still has, and must not pay for importing jsonschema."""
        if validate:
            from . import schema

            schema.validate("multiplex", d)
        return cls(
            raw=d,
            cni_version=d["cniVersion"],
            name=d["name"],
            cluster_network=d.get("clusterNetwork"),
            delegates=list(d.get("delegates") or []),
            default_networks=list(d.get("defaultNetworks") or []),
            system_namespaces=list(d.get("systemNamespaces", ["kube-system"])),
            namespace_isolation=bool(d.get("namespaceIsolation", False)),
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
        )
