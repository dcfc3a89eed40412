"""From a pod to its attachments: the cluster network, delegates, default networks, annotation.

Order (as Multus): the cluster network on CNI_IFNAME; then the config's `delegates`; then
`defaultNetworks` (pods outside `systemNamespaces`); then the pod's annotation. Attachments
without a requested interface name get the next free `netN`, N counting from 1.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from .cni.errors import CNIError, INVALID_CONFIG, NOT_FOUND
from .cni.request import IFNAME_MAX, Request, check_ifname
from .config import MultiplexConfig
from .sources import NETWORKS_ANNOTATION, Source, load_document

@dataclass
class Attachment:
    network: str                      # "ns/name" for a NAD, the config's name otherwise
    ifname: str
    netconf: dict[str, Any]           # a plugin config or a conflist, as written by the admin
    cluster: bool = False
    capability_args: dict[str, Any] = field(default_factory=dict)
    cni_args: Optional[dict[str, Any]] = None
    default_route: list[str] = field(default_factory=list)   # gateways requested via default-route
    namespace: str = ""               # the NAD's namespace ("" for inline configs)
    #: The network's identity as its plugins see it (the config `name` they get): for a NAD,
    #: namespace and NAD name (`identity_name`), so two namespaces' NADs of one name never share
    #: a bridge, lease owner, veth alias or nft comment. "" keeps the config's own `name` (the
    #: admin's inline configs, and attachments cached before identities existed).
    config_name: str = ""

    def to_dict(self) -> dict:
        return {"network": self.network, "ifname": self.ifname, "netconf": self.netconf,
                "cluster": self.cluster, "capabilityArgs": self.capability_args,
                "cniArgs": self.cni_args, "defaultRoute": self.default_route, "namespace": self.namespace,
                "configName": self.config_name}

    @classmethod
    def from_dict(cls, d: dict) -> "Attachment":
        return cls(network=d["network"], ifname=d["ifname"], netconf=d["netconf"], cluster=d.get("cluster", False),
                   capability_args=d.get("capabilityArgs") or {}, cni_args=d.get("cniArgs"),
                   default_route=d.get("defaultRoute") or [], namespace=d.get("namespace", ""),
                   config_name=d.get("configName") or "")


def identity_name(namespace: str, name: str) -> str:
    """The config `name` a NAD's plugins get: `<namespace>.<NAD name>`. Unambiguous, because a
    namespace (a DNS label) has no dot, and within CNI's name alphabet, so external plugins that
    key state on the name (host-local's lease directory) are separated by namespace too."""
    return f"{namespace}.{name}"


def split_name(ref: str, default_ns: str) -> tuple[str, str, str]:
    """`ns/name@ifname` -> (ns, name, ifname)."""
    ifname = ""
    if "@" in ref:
        ref, ifname = ref.rsplit("@", 1)
    ns, _, name = ref.rpartition("/")
    return ns or default_ns, name, ifname


def netconf_name(netconf: dict) -> str:
    return str(netconf.get("name") or netconf.get("type") or "")


def nad_netconf(nad: dict, conf_dir: str) -> dict:
    """A NAD's spec.config (single config or conflist); empty means a config file of that name."""
    meta = nad.get("metadata") or {}
    ns, name = meta.get("namespace") or "default", meta.get("name", "")
    config = (nad.get("spec") or {}).get("config") or ""
    if not config.strip():
        return find_conf_by_name(name, conf_dir, f"NetworkAttachmentDefinition {ns}/{name} has no spec.config")
    try:
        netconf = json.loads(config)
    except ValueError as e:
        raise CNIError(INVALID_CONFIG, f"NetworkAttachmentDefinition {ns}/{name}: spec.config is not JSON: {e}",
                       f"field: spec.config; namespace: {ns}; name: {name}") from None
    if not isinstance(netconf, dict):
        raise CNIError(INVALID_CONFIG, f"NetworkAttachmentDefinition {ns}/{name}: spec.config is not a JSON object",
                       f"field: spec.config; namespace: {ns}; name: {name}")
    netconf.setdefault("name", name)
    return netconf


def conf_files(conf_dir: str) -> list[str]:
    try:
        names = sorted(os.listdir(conf_dir))
    except OSError:
        return []
    return [os.path.join(conf_dir, n) for n in names if n.endswith((".conf", ".conflist", ".json"))]


def load_conf_file(path: str) -> dict:
    doc = load_document(path)
    if not isinstance(doc, dict):
        raise CNIError(INVALID_CONFIG, f"{path} is not a CNI config object", f"file: {path}")
    return doc


def find_conf_by_name(name: str, conf_dir: str, why: str = "") -> dict:
    for path in conf_files(conf_dir):
        try:
            doc = load_conf_file(path)
        except CNIError:
            continue
        if doc.get("name") == name and doc.get("type") != "multiplex":
            return doc
    raise CNIError(NOT_FOUND, (why + ": " if why else "") + f"no CNI config named {name!r} in {conf_dir}",
                   f"name: {name}; confDir: {conf_dir}")


def resolve_cluster_network(conf: MultiplexConfig, source: Optional[Source]) -> tuple[str, dict, list]:
    """(network name, netconf, remaining delegates) for the cluster network, resolved as Multus does."""
    cn = conf.cluster_network
    delegates = list(conf.delegates)
    if cn is None:
        if not delegates:
            raise CNIError(INVALID_CONFIG, "no cluster network: set clusterNetwork or list at least one delegate",
                           "field: clusterNetwork")
        first = delegates.pop(0)
        return netconf_name(first), first, delegates
    if isinstance(cn, dict):
        return netconf_name(cn), cn, delegates
    # A string: a NAD, an absolute file or directory, or a config name in confDir.
    if os.path.isabs(cn):
        if os.path.isdir(cn):
            files = conf_files(cn)
            if not files:
                raise CNIError(NOT_FOUND, f"clusterNetwork directory {cn} holds no CNI config", "field: clusterNetwork")
            doc = load_conf_file(files[0])
        else:
            doc = load_conf_file(cn)
        return netconf_name(doc), doc, delegates
    if source is not None:
        ns, name, _ = split_name(cn, conf.multus_namespace)
        try:
            nad = source.get_nad(ns, name)
            return name if "/" not in cn else cn, nad_netconf(nad, conf.conf_dir), delegates
        except CNIError as e:
            if e.code != NOT_FOUND:
                raise
    return cn, find_conf_by_name(cn, conf.conf_dir, "clusterNetwork"), delegates


def _next_ifname(used: set[str]) -> str:
    n = 1
    while f"net{n}" in used:
        n += 1
    return f"net{n}"


def select(conf: MultiplexConfig, req: Request, source: Optional[Source],
           annotation_parser=None, authorize=None) -> list[Attachment]:
    """Every attachment for this pod, in order, validated (names, duplicates) before anything runs."""
    pod_ns, pod_name, pod_uid = req.pod
    name, netconf, delegates = resolve_cluster_network(conf, source)
    out = [Attachment(network=name, ifname=req.ifname, netconf=netconf, cluster=True,
                      capability_args=dict(req.runtime_config))]
    used = {req.ifname}
    for i, d in enumerate(delegates):
        ifname = _next_ifname(used)
        used.add(ifname)
        out.append(Attachment(network=netconf_name(d), ifname=ifname, netconf=d))

    selections: list = []
    ns_for_defaults = pod_ns or "default"
    if conf.default_networks and ns_for_defaults not in conf.system_namespaces:
        from .annotation import parse_networks

        selections += parse_networks(",".join(conf.default_networks), conf.multus_namespace,
                                     source_name="defaultNetworks", reserved_interfaces=[req.ifname])
    if source is not None and pod_name:
        pod = source.get_pod(pod_ns or "default", pod_name)
        if pod is not None:
            meta = pod.get("metadata") or {}
            if pod_uid and meta.get("uid") and meta["uid"] != pod_uid:
                from .cni.errors import UNKNOWN_CONTAINER

                raise CNIError(UNKNOWN_CONTAINER,
                               f"stale pod: {pod_ns}/{pod_name} has UID {meta['uid']}, the runtime asked for {pod_uid}",
                               "field: CNI_ARGS.K8S_POD_UID")
            value = (meta.get("annotations") or {}).get(NETWORKS_ANNOTATION, "")
            if value.strip():
                from .annotation import parse_networks

                selections += parse_networks(value, pod_ns or "default", reserved_interfaces=[req.ifname])

    for sel in selections:
        if authorize is not None:
            authorize(conf, pod_ns or "default", sel)
        if source is None:
            raise CNIError(NOT_FOUND, f"network {sel.namespace}/{sel.name} requested but no definitions source is "
                           "configured", "field: nadDir; allowed: a directory of NetworkAttachmentDefinitions, or kubeconfig")
        nad = source.get_nad(sel.namespace, sel.name)
        netconf = nad_netconf(nad, conf.conf_dir)
        ifname = sel.interface or _next_ifname(used)
        check_ifname(ifname, f"{NETWORKS_ANNOTATION}: {sel.namespace}/{sel.name} interface", INVALID_CONFIG)
        if ifname in used:
            raise CNIError(INVALID_CONFIG, f"interface name {ifname!r} is used by two attachments",
                           f"field: {NETWORKS_ANNOTATION}: {sel.namespace}/{sel.name} interface; allowed: "
                           "a name no other attachment of the pod uses")
        used.add(ifname)
        out.append(Attachment(network=f"{sel.namespace}/{sel.name}", ifname=ifname, netconf=netconf,
                              capability_args=sel.capability_args(), cni_args=sel.cni_args or None,
                              default_route=list(sel.default_route or []),
                              namespace=sel.namespace))
    for a in out:
        if len(a.ifname) > IFNAME_MAX:
            raise CNIError(INVALID_CONFIG, f"interface name {a.ifname!r} is longer than {IFNAME_MAX} characters",
                           f"field: interface of {a.network}")
    return out

