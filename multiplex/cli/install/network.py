"""Picking the cluster network: the node's own default network, which multiplex delegates eth0 to.

A runtime following libcni loads the first config (.conf, .conflist, .json) of its config
directory in lexical order. Before install, that is the cluster's network (flannel, calico, ...);
after, it is our conflist, which must sort ahead of it and names it `clusterNetwork`. Multus'
auto-generated config picks the network the same way.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

from .files import read_bytes
from .layout import META_PLUGIN
from .report import InstallError

#: Extensions libcni (and so containerd and CRI-O) loads from the config directory.
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")


@dataclass
class ClusterNetwork:
    name: str
    cni_version: Optional[str]
    capabilities: dict[str, bool]
    file: Optional[str] = None  #: host path of the config it came from


def config_files(conf_dir_real: str) -> list[str]:
    """The config file names a runtime following libcni considers, in the order it does."""
    try:
        names = os.listdir(conf_dir_real)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(CONFIG_EXTENSIONS)
                  and os.path.isfile(os.path.join(conf_dir_real, n)))


def read_netconf(path: str) -> dict:
    """A plugin config or conflist file, parsed. InstallError says what is wrong with it."""
    data = read_bytes(path)
    if data is None:
        raise InstallError(f"cannot read {path}")
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InstallError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(conf, dict):
        raise InstallError(f"{path} is not a JSON object")
    return conf


def _plugins_of(conf: dict) -> list[dict]:
    if isinstance(conf.get("plugins"), list):
        return [p for p in conf["plugins"] if isinstance(p, dict)]
    return [conf]


def is_multiplex_config(conf: dict) -> bool:
    """A config whose first plugin is multiplex: ours (under any file name), never a cluster network."""
    plugins = _plugins_of(conf)
    return bool(plugins) and plugins[0].get("type") == META_PLUGIN


def cluster_network_of(conf: dict, where: str) -> ClusterNetwork:
    """Name, cniVersion and declared capabilities of a plugin config or conflist."""
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise InstallError(f"{where} has no network name (field: name); a CNI config must name its network")
    if "plugins" in conf:
        if not isinstance(conf["plugins"], list) or not conf["plugins"]:
            raise InstallError(f"{where}: plugins must be a non-empty list (field: plugins)")
    elif not conf.get("type"):
        raise InstallError(f"{where} is neither a plugin config (type) nor a conflist (plugins)")
    caps: dict[str, bool] = {}
    for plugin in _plugins_of(conf):
        declared = plugin.get("capabilities")
        if isinstance(declared, dict):
            for cap, on in declared.items():
                if on is True:
                    caps[str(cap)] = True
    version = conf.get("cniVersion")
    return ClusterNetwork(name=name, cni_version=version if isinstance(version, str) else None,
                          capabilities=dict(sorted(caps.items())))


def find_cluster_network(conf_dir_real: str, conf_dir: str, ours: str) -> Optional[ClusterNetwork]:
    """The node's default network, as Multus' auto-generated config picks it: the first config in
    lexical order that is not ours (a leftover multiplex config under another name is skipped too).
    None when there is none. A broken first config is an error: the runtime would fail on it too."""
    for name in config_files(conf_dir_real):
        if name == ours:
            continue
        path = os.path.join(conf_dir_real, name)
        conf = read_netconf(path)
        if is_multiplex_config(conf):
            continue
        net = cluster_network_of(conf, os.path.join(conf_dir, name))
        net.file = os.path.join(conf_dir, name)
        return net
    return None


def _find_network_by_name(conf_real: str, conf_dir: str, ours: str, name: str) -> Optional[ClusterNetwork]:
    for fname in config_files(conf_real):
        if fname == ours:
            continue
        try:
            conf = read_netconf(os.path.join(conf_real, fname))
        except InstallError:
            continue
        if conf.get("name") == name and not is_multiplex_config(conf):
            net = cluster_network_of(conf, os.path.join(conf_dir, fname))
            net.file = os.path.join(conf_dir, fname)
            return net
    return None


def choose_cluster_network(conf_real: str, conf_dir: str, conf_name: str,
                           cluster_network: Optional[str]) -> ClusterNetwork:
    """The network for eth0: the one named (its capabilities from its config when the node has
    one), else the node's default. Refuses a conf_name that would not sort ahead of the node's
    default, since the runtime would then never call multiplex."""
    node_net = find_cluster_network(conf_real, conf_dir, conf_name)
    if node_net is not None:
        if not conf_name < os.path.basename(node_net.file or ""):
            raise InstallError(f"{conf_name} does not sort ahead of {node_net.file}: the runtime would keep using "
                               f"{node_net.file}. Pass a conf_name that sorts first, e.g. 00-0-multiplex.conflist")
    if cluster_network is not None:
        named = _find_network_by_name(conf_real, conf_dir, conf_name, cluster_network)
        return named if named is not None else ClusterNetwork(name=cluster_network, cni_version=None, capabilities={})
    if node_net is not None:
        return node_net
    raise InstallError(f"no cluster network: {conf_dir} holds no CNI config (.conf, .conflist, .json) other "
                       "than ours. Install the cluster's default network (flannel, calico, ...) first, or "
                       "name one with cluster_network (--cluster-network)")
