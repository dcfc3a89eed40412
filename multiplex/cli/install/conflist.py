"""Our conflist: one plugin, `multiplex`, delegating eth0 to the cluster network.

It is checked against schemas/multiplex.json before it is written, and written last, so the
runtime sees multiplex only once everything it calls is in place.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from .layout import META_PLUGIN
from .network import ClusterNetwork
from .report import InstallError

#: What multiplex itself asks of the runtime, whatever the cluster network declares: the pod's
#: annotations (multiplex reads its networks annotation there first: meta/selection.py).
RUNTIME_CAPABILITIES = {"io.kubernetes.cri.pod-annotations": True}

#: Top-level fields of the conflist's plugin entry that `options` may not override.
_CORE_FIELDS = ("type", "name", "cniVersion", "clusterNetwork", "kubeconfig", "confDir", "binDir",
                "capabilities")


def choose_cni_version(cni_version: Optional[str], net: ClusterNetwork) -> str:
    """The conflist's cniVersion: the one asked for, else the cluster network's, else our current
    one; refused when multiplex does not speak it."""
    from ...cni.version import SUPPORTED, CURRENT

    version = cni_version or net.cni_version
    if version is None:
        version = CURRENT
    if version not in SUPPORTED:
        where = net.file or "the cluster network"
        raise InstallError(f"{where} has cniVersion {version!r}, which multiplex does not speak "
                           f"(supported: {', '.join(SUPPORTED)}); pass cni_version (--cni-version) to choose one")
    return version


def multiplex_conflist(cni_version: str, cluster_network: str, conf_dir: str, bin_dir: str,
                       capabilities: Mapping[str, bool], kubeconfig: Optional[str] = None,
                       options: Optional[Mapping[str, Any]] = None) -> dict:
    """The conflist the runtime runs: one plugin, `multiplex`, delegating eth0 to the cluster network.

    The runtime injects `name` and `cniVersion` into the plugin entry when it calls it. The
    `capabilities` are the cluster network's, so the runtime passes multiplex the runtimeConfig
    (portMappings, bandwidth, ...) the cluster network expects and multiplex hands it on; plus
    `io.kubernetes.cri.pod-annotations` (RUNTIME_CAPABILITIES), so containerd and CRI-O hand
    multiplex the pod's annotations and an ADD needs no API read for the networks annotation.
    """
    plugin: dict[str, Any] = {"type": META_PLUGIN, "clusterNetwork": cluster_network, "confDir": conf_dir,
                              "binDir": bin_dir}
    if kubeconfig:
        plugin["kubeconfig"] = kubeconfig
    for key, value in sorted((options or {}).items()):
        if key in _CORE_FIELDS:
            raise InstallError(f"option {key!r} is set by install itself; pass it through its own parameter")
        plugin[key] = value
    declared = {**dict(capabilities), **RUNTIME_CAPABILITIES}
    plugin["capabilities"] = dict(sorted(declared.items()))
    return {"cniVersion": cni_version, "name": META_PLUGIN, "plugins": [plugin]}


def check_conflist(conflist: dict) -> None:
    """Our plugin entry, as the runtime hands it to multiplex (name and cniVersion injected), must
    pass schemas/multiplex.json: a misspelt option fails here, not on the node's first pod."""
    from ...util import schema

    plugin = dict(conflist["plugins"][0], name=conflist["name"], cniVersion=conflist["cniVersion"])
    problems = schema.errors("multiplex", plugin, prefix="$.plugins[0]")
    if problems:
        raise InstallError("the multiplex config install would write is invalid: " + "; ".join(problems))
