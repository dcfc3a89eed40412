"""From a pod to its attachments: the cluster network, delegates, default networks, annotation.

Order (as Multus): the cluster network on CNI_IFNAME; then the config's `delegates`; then
`defaultNetworks` (pods outside `systemNamespaces`); then the pod's annotation. Attachments
without a requested interface name get the next free `netN`, N counting from 1.

Trust (README "Security model"): the multiplex config is the node admin's; a NAD's `spec.config`
is its namespace's writer's and is checked by `policy.trust` before anything runs; the annotation
is the pod author's, and its `ips`/`mac` requests are honoured only where the NAD opts in. Every
network the annotation names is put to the authorize hooks (multiplex/policy: namespace isolation
before its NAD is read, the NAD's own allowed namespaces and the admin's executables after), all
of them before `select` returns, so a refusal comes before anything is attached. Every
NAD-sourced attachment carries its identity `<namespace>.<name>` as the config name its plugins
see. Bounds: `maxAttachments` per pod, one NAD lookup per distinct namespace/name per call.

The pod's annotations come from the runtime when it hands them over (containerd and CRI-O pass
them as the `io.kubernetes.cri.pod-annotations` capability, which `multiplex install` declares):
then no pod is read at all. Otherwise from the source (the API, or the daemon's informer cache).
Who delivered them does not change whose they are: the same parsing and limits apply.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from ..cni.errors import CNIError, INVALID_CONFIG, NOT_FOUND, UNSUPPORTED_FIELD
from ..cni.request import IFNAME_MAX, Request, check_ifname
from .config import MultiplexConfig
from ..policy.trust import check_untrusted, is_multiplex_config
from .sources import NETWORKS_ANNOTATION, Source, load_document

#: The capability under which CRI runtimes hand a plugin the pod's annotations (runtimeConfig).
POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
#: Requests a pod may make only where the NAD opts in with `"capabilities": {"<key>": true}`.
OPT_IN_REQUESTS = ("ips", "mac")

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
    """A NAD's spec.config (single config or conflist), checked as untrusted input (policy.trust);
    an empty one means the admin's config file of that name in confDir (never a multiplex one)."""
    meta = nad.get("metadata") if isinstance(nad.get("metadata"), dict) else {}
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name", ""))
    spec = nad.get("spec") if nad.get("spec") is not None else {}
    if not isinstance(spec, dict):
        raise CNIError(INVALID_CONFIG, f"NetworkAttachmentDefinition {ns}/{name}: spec is not an object",
                       f"field: spec; namespace: {ns}; name: {name}; allowed: an object with a config string")
    config = spec.get("config") or ""
    if not isinstance(config, str):
        raise CNIError(INVALID_CONFIG, f"NetworkAttachmentDefinition {ns}/{name}: spec.config is not a string",
                       f"field: spec.config; namespace: {ns}; name: {name}; allowed: a JSON text")
    if not config.strip():
        return find_conf_by_name(name, conf_dir, f"NetworkAttachmentDefinition {ns}/{name} has no spec.config")
    try:
        netconf = json.loads(config)
    except (ValueError, RecursionError) as e:
        what = e if isinstance(e, ValueError) else "nested too deeply"
        raise CNIError(INVALID_CONFIG, f"NetworkAttachmentDefinition {ns}/{name}: spec.config is not JSON: {what}",
                       f"field: spec.config; namespace: {ns}; name: {name}") from None
    if not isinstance(netconf, dict):
        raise CNIError(INVALID_CONFIG, f"NetworkAttachmentDefinition {ns}/{name}: spec.config is not a JSON object",
                       f"field: spec.config; namespace: {ns}; name: {name}")
    check_untrusted(netconf, f"{ns}/{name}")
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


def _readable_confs(conf_dir: str) -> Iterator[dict]:
    """The config files of `conf_dir` that parse, in name order, read one at a time (callers stop
    at the first that fits)."""
    for path in conf_files(conf_dir):
        try:
            yield load_conf_file(path)
        except CNIError:
            continue


def find_conf_by_name(name: str, conf_dir: str, why: str = "") -> dict:
    """The config file in confDir whose `name` is `name`. Multiplex configs (`type: multiplex`,
    or `multiplex` in `plugins[]`) are never returned: a NAD or clusterNetwork named like the
    node's own multiplex conflist would make the meta plugin call itself."""
    for doc in _readable_confs(conf_dir):
        if doc.get("name") == name and not is_multiplex_config(doc):
            return doc
    raise CNIError(NOT_FOUND, (why + ": " if why else "") + f"no CNI config named {name!r} in {conf_dir} "
                   "(multiplex configs are never used as a network)",
                   f"name: {name}; confDir: {conf_dir}")


def _not_multiplex(doc: dict, path: str) -> dict:
    """An admin-named file or directory that holds a multiplex config is refused (code 7)."""
    if is_multiplex_config(doc):
        raise CNIError(INVALID_CONFIG, f"clusterNetwork {path} is a multiplex config: multiplex cannot delegate "
                       "to itself", f"field: clusterNetwork; allowed: a config of another plugin")
    return doc


@dataclass
class ClusterNetwork:
    """The cluster network as resolved from the multiplex config."""
    network: str                        # the name network-status shows
    netconf: dict[str, Any]
    delegates: list[dict]               # the config's remaining delegates
    namespace: str = ""                 # the NAD's namespace when it came from a NAD
    config_name: str = ""               # the NAD's identity (identity_name) when it came from one

    def attachment(self, ifname: str, capability_args: Optional[dict] = None) -> "Attachment":
        return Attachment(network=self.network, ifname=ifname, netconf=self.netconf, cluster=True,
                          capability_args=dict(capability_args or {}), namespace=self.namespace,
                          config_name=self.config_name)


class NadLookup:
    """`source.get_nad` with one lookup per distinct namespace/name for the life of one call: a pod
    that names one network many times costs one GET, not one per entry."""

    def __init__(self, source: Source):
        self.source = source
        self._seen: dict[tuple[str, str], dict] = {}

    def get_nad(self, namespace: str, name: str) -> dict:
        key = (namespace, name)
        if key not in self._seen:
            self._seen[key] = self.source.get_nad(namespace, name)
        return self._seen[key]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.source, attr)


def cluster_network(conf: MultiplexConfig, source: Optional[Source]) -> ClusterNetwork:
    """The cluster network, resolved as Multus does: an inline config, the first delegate, an
    absolute file or directory, a NAD (`ns/name` or `name` in multusNamespace), or a config
    name in confDir. Multiplex configs are never chosen."""
    cn = conf.cluster_network
    delegates = list(conf.delegates)
    if cn is None:
        if not delegates:
            raise CNIError(INVALID_CONFIG, "no cluster network: set clusterNetwork or list at least one delegate",
                           "field: clusterNetwork")
        first = delegates.pop(0)
        return ClusterNetwork(netconf_name(first), first, delegates)
    if isinstance(cn, dict):
        return ClusterNetwork(netconf_name(cn), cn, delegates)
    if os.path.isabs(cn):
        if os.path.isdir(cn):
            doc = next((d for d in _readable_confs(cn) if not is_multiplex_config(d)), None)
            if doc is None:
                raise CNIError(NOT_FOUND, f"clusterNetwork directory {cn} holds no CNI config (other than "
                               "multiplex's own)", "field: clusterNetwork")
        else:
            doc = _not_multiplex(load_conf_file(cn), cn)
        return ClusterNetwork(netconf_name(doc), doc, delegates)
    if source is not None:
        ns, name, _ = split_name(cn, conf.multus_namespace)
        try:
            nad = source.get_nad(ns, name)
        except CNIError as e:
            if e.code != NOT_FOUND:
                raise
        else:
            return ClusterNetwork(name if "/" not in cn else cn, nad_netconf(nad, conf.conf_dir), delegates,
                                  namespace=ns, config_name=identity_name(ns, name))
    return ClusterNetwork(cn, find_conf_by_name(cn, conf.conf_dir, "clusterNetwork"), delegates)


def config_attachments(conf: MultiplexConfig, source: Optional[Source], ifname: str = "eth0",
                       capability_args: Optional[dict] = None, resolve: bool = True) -> list["Attachment"]:
    """The networks the config itself names (the cluster network on `ifname`, with the runtime's
    `capability_args`, then the delegates on net1, net2, ...), with the identities ADD gives them:
    where ADD starts, and what GC, STATUS and a cache-less DEL work on.

    `resolve=False` (`multiplex validate`, away from the node): a clusterNetwork that names
    something on the node (a NAD, a config name, a path) is left out, the inline configs stay."""
    if not resolve and isinstance(conf.cluster_network, str):
        atts: list[Attachment] = []
        delegates = list(conf.delegates)
    else:
        cn = cluster_network(conf, source)
        atts = [cn.attachment(ifname, capability_args)]
        delegates = cn.delegates
    used = {ifname}
    for d in delegates:
        name = _next_ifname(used)  # net1, net2, ... (skipping CNI_IFNAME), as ADD names them
        used.add(name)
        atts.append(Attachment(network=netconf_name(d), ifname=name, netconf=d))
    return atts


def _next_ifname(used: set[str]) -> str:
    n = 1
    while f"net{n}" in used:
        n += 1
    return f"net{n}"


def select(conf: MultiplexConfig, req: Request, source: Optional[Source],
           authorize=None) -> list[Attachment]:
    """Every attachment for this pod, in order, validated (names, duplicates, trust, opt-in
    requests, the per-pod bound) before anything runs."""
    pod_ns, pod_name, pod_uid = req.pod
    check_hooks = getattr(authorize, "check_config", None)
    if check_hooks is not None:
        check_hooks(conf)
    nads = NadLookup(source) if source is not None else None
    out = config_attachments(conf, nads, req.ifname, req.runtime_config)
    used = {a.ifname for a in out}

    defaults, requested, pod = _selections(conf, req, nads)
    check_attachment_bound(conf, len(out) + len(defaults) + len(requested))
    for by_admin, sel in [(True, d) for d in defaults] + [(False, r) for r in requested]:
        # defaultNetworks are the admin's choice for every pod: the authorize hooks govern the pod's
        # own requests. The namespace rule runs before the NAD is read (no probing other namespaces).
        if authorize is not None and not by_admin:
            authorize(conf, pod_ns or "default", sel)
        if nads is None:
            raise CNIError(NOT_FOUND, f"network {sel.namespace}/{sel.name} requested but no definitions source is "
                           "configured", "field: nadDir; allowed: a directory of NetworkAttachmentDefinitions, or kubeconfig")
        nad = nads.get_nad(sel.namespace, sel.name)
        netconf = nad_netconf(nad, conf.conf_dir)
        check_opt_in(sel, netconf)
        if sel.cni_args:
            check_untrusted(sel.cni_args, f"{sel.namespace}/{sel.name}",
                            root=f"{NETWORKS_ANNOTATION}[{sel.index}]['cni-args']")
        ifname = sel.interface or _next_ifname(used)
        check_ifname(ifname, f"{NETWORKS_ANNOTATION}: {sel.namespace}/{sel.name} interface", INVALID_CONFIG)
        if ifname in used:
            raise CNIError(INVALID_CONFIG, f"interface name {ifname!r} is used by two attachments",
                           f"field: {NETWORKS_ANNOTATION}: {sel.namespace}/{sel.name} interface; allowed: "
                           "a name no other attachment of the pod uses")
        used.add(ifname)
        # the NAD writer's rule and the admin's executables: with the NAD read and its config checked
        authorize_attachment = getattr(authorize, "attachment", None) if not by_admin else None
        if authorize_attachment is not None:
            from ..policy.hooks import AttachmentAsk

            authorize_attachment(conf, AttachmentAsk(
                network=f"{sel.namespace}/{sel.name}", nad_namespace=sel.namespace, nad_name=sel.name, nad=nad,
                ifname=ifname, selection=sel, request=req, source=nads, pod=pod))
        out.append(Attachment(network=f"{sel.namespace}/{sel.name}", ifname=ifname, netconf=netconf,
                              capability_args=sel.capability_args(), cni_args=sel.cni_args or None,
                              default_route=list(sel.default_route or []),
                              namespace=sel.namespace, config_name=identity_name(sel.namespace, sel.name)))
    for a in out:
        if len(a.ifname.encode()) > IFNAME_MAX:
            raise CNIError(INVALID_CONFIG, f"interface name {a.ifname!r} is longer than {IFNAME_MAX} bytes",
                           f"field: interface of {a.network}")
    return out


def _selections(conf: MultiplexConfig, req: Request, source: Optional[Source]) -> tuple[list, list, dict]:
    """(defaultNetworks outside systemNamespaces, the pod's annotation parsed and checked, what is
    known of the pod for the authorize hooks: `pod_view`)."""
    pod_ns, pod_name, pod_uid = req.pod
    defaults: list = []
    selections: list = []
    ns_for_defaults = pod_ns or "default"
    if conf.default_networks and ns_for_defaults not in conf.system_namespaces:
        from .annotation import parse_networks

        defaults += parse_networks(",".join(conf.default_networks), conf.multus_namespace,
                                     source_name="defaultNetworks", reserved_interfaces=[req.ifname])
    pod = pod_view(req, source)
    annotations = pod["annotations"]
    value = annotations.get(NETWORKS_ANNOTATION, "")
    if isinstance(value, str) and value:
        from .annotation import parse_networks

        # parse_networks bounds the value by its bytes as written, before stripping it
        selections += parse_networks(value, pod_ns or "default", reserved_interfaces=[req.ifname])
    return defaults, selections, pod


def runtime_pod_annotations(req: Request) -> Optional[dict[str, Any]]:
    """The pod's annotations as the runtime handed them over (containerd and CRI-O pass them in
    `runtimeConfig["io.kubernetes.cri.pod-annotations"]` to a config that declares that
    capability), or None when it did not. A value that is not an object is ignored (None): the
    runtime did not hand annotations over, so they come from the API instead."""
    value = req.runtime_config.get(POD_ANNOTATIONS_CAPABILITY)
    return value if isinstance(value, dict) else None


def pod_annotations(req: Request, source: Optional[Source]) -> dict[str, Any]:
    """The annotations of the call's pod: the runtime's copy when it passed one (no API read at
    all), else the pod from `source` (the API, or the daemon's informer cache), checked against
    the runtime's K8S_POD_UID; {} without a pod. Either way they are the pod author's words and
    go through the same parsing and limits (annotation.py), whoever delivered them."""
    return pod_view(req, source)["annotations"]


def pod_view(req: Request, source: Optional[Source]) -> dict[str, Any]:
    """What the call knows of its pod, as the authorize hooks see it: namespace, name, uid,
    annotations (as pod_annotations has them), and labels when the pod itself was read (a
    runtime that hands the annotations over hands no labels, and no read is made for them)."""
    pod_ns, pod_name, pod_uid = req.pod
    view: dict[str, Any] = {"namespace": pod_ns or "default", "name": pod_name, "uid": pod_uid}
    given = runtime_pod_annotations(req)
    if given is not None:
        view["annotations"] = given
        return view
    view["annotations"] = {}
    if source is None or not pod_name:
        return view
    pod = source.get_pod(pod_ns or "default", pod_name, pod_uid or "")
    if pod is None:
        return view
    meta = pod.get("metadata") or {}
    if pod_uid and meta.get("uid") and meta["uid"] != pod_uid:
        from ..cni.errors import UNKNOWN_CONTAINER

        raise CNIError(UNKNOWN_CONTAINER,
                       f"stale pod: {pod_ns}/{pod_name} has UID {meta['uid']}, the runtime asked for {pod_uid}",
                       "field: CNI_ARGS.K8S_POD_UID")
    annotations = meta.get("annotations")
    labels = meta.get("labels")
    view["annotations"] = annotations if isinstance(annotations, dict) else {}
    view["labels"] = labels if isinstance(labels, dict) else {}
    view["uid"] = pod_uid or meta.get("uid") or ""
    return view


def check_attachment_bound(conf: MultiplexConfig, count: int) -> None:
    """At most `maxAttachments` attachments per pod (cluster network and delegates included),
    checked before any NAD is looked up: one pod cannot exhaust a pool or flood the API."""
    if count > conf.max_attachments:
        raise CNIError(INVALID_CONFIG, f"the pod asks for {count} attachments; this node allows at most "
                       f"{conf.max_attachments} per pod",
                       f"field: {NETWORKS_ANNOTATION}; allowed: at most {conf.max_attachments} attachments per pod, "
                       "the cluster network and the config's delegates included (maxAttachments in the node's "
                       "multiplex config)")


def nad_capabilities(netconf: dict) -> set[str]:
    """Capabilities the NAD's own config turns on explicitly (`"capabilities": {"ips": true}` on
    the config or on one plugin of its list). A built-in plugin's own capability set does not
    count: a pod's address or MAC request is honoured only where the NAD writer opted in."""
    from ..cni.conflist import declared_capabilities

    plugins = netconf.get("plugins")
    confs = [p for p in plugins if isinstance(p, dict)] if isinstance(plugins, list) else [netconf]
    caps: set[str] = set()
    for p in confs:
        caps |= declared_capabilities(p)
    return caps


def check_opt_in(sel: Any, netconf: dict) -> None:
    """`ips` and `mac`, from the annotation's fields or its `cni-args`, need the NAD's opt-in
    (code 2 naming the field and how the NAD opts in)."""
    wanted: list[tuple[str, str]] = []
    where = f"{NETWORKS_ANNOTATION}[{sel.index}]"
    if sel.ips:
        wanted.append(("ips", f"{where}.ips"))
    if sel.mac:
        wanted.append(("mac", f"{where}.mac"))
    if isinstance(sel.cni_args, dict):
        for key in OPT_IN_REQUESTS:
            if sel.cni_args.get(key) not in (None, "", [], {}):
                wanted.append((key, f"{where}['cni-args'].{key}"))
    if not wanted:
        return
    caps = nad_capabilities(netconf)
    for key, path in wanted:
        if key not in caps:
            raise CNIError(UNSUPPORTED_FIELD,
                           f"network {sel.namespace}/{sel.name} does not accept a requested {key!r} from pods",
                           f"field: {path}; allowed: only when NetworkAttachmentDefinition {sel.namespace}/{sel.name} "
                           f"opts in with \"capabilities\": {{\"{key}\": true}} on one of its plugins")
