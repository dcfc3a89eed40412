"""The corpus: named bad inputs for the real binaries (multiplex, multiplex-bridge, multiplex-ipam).

Each Case says which binary and command, what it changes against a good call (environment,
stdin, config fields, NADs, the pod's annotation), and what a user must get back: the CNI code
(`code`, one of a few where the spec leaves a choice) and the field the error's `details` names.
A good call, left unchanged, would make something (an interface, a lease, a rule), so a bad input
that slips through shows up as residue, not only as a missing error.

`Ctx` is what a case may refer to: the lab's directories, the node and pod netns, the case's
container ID and pod name. Config-building callables take a Ctx so paths stay per run.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from tests.netns.mpxlab import LabFiles, bridge_conf

NETWORKS = "k8s.v1.cni.cncf.io/networks"
REMOVE = object()           # a field/env value meaning "take it out"

# Subnets the corpus uses (all inside 198.18.0.0/15 and fd00::/8)
POD_NET = "198.18.100.0/24"
BLUE_NET = "198.18.101.0/24"
GREEN_NET = "198.18.102.0/24"
BRIDGE_NET = "198.18.110.0/24"
IPAM_NET = "198.18.120.0/24"


@dataclass
class Ctx(LabFiles):
    """The lab's files (nads/, pods/, state/ under `root`: tests/netns/mpxlab.py) and this case's names."""
    root: str
    node: str
    pod_ns: str
    cid: str
    pod: str
    idx: int

    @property
    def outside(self) -> str:
        """A directory a NAD writer would like the node to write into (must stay empty)."""
        return os.path.join(self.root, "outside")

    @property
    def afile(self) -> str:
        """A regular file (for 'path is a file, not a directory/netns' cases)."""
        return os.path.join(self.root, "a-regular-file")

    def out(self, name: str) -> str:
        return os.path.join(self.outside, f"{self.idx:03d}-{name}")

    def add_raw_nad(self, name: str, spec_config: str, namespace: str = "default") -> None:
        obj = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": name, "namespace": namespace}, "spec": {"config": spec_config}}
        self.add_nad(name, obj, namespace)

    def add_pod(self, networks: Any, name: str = "", namespace: str = "default") -> None:
        """This case's pod (or `name`), with `networks` as its annotation."""
        super().add_pod(name or self.pod, networks, namespace)


Config = Union[dict, bytes, Callable[[Ctx], Union[dict, bytes]], None]


@dataclass
class Case:
    id: str
    code: Union[int, tuple]               # the CNI code(s) a user should get
    field: Union[str, tuple]              # what `details` must name (any of, when a tuple)
    plugin: str = "multiplex"
    command: str = "ADD"
    env: dict = field(default_factory=dict)         # CNI_* overrides; REMOVE takes one out
    conf: Config = None                              # whole stdin (dict/bytes/callable); None: the default
    patch: dict = field(default_factory=dict)        # "a.b.c": value (REMOVE) applied to the default config
    setup: Optional[Callable[[Ctx], None]] = None    # NADs/pods/files this case needs
    networks: Any = None                             # the pod's annotation (multiplex, ADD): default "blue"
    strays: tuple = ()                               # names under ctx.outside that must never appear
    note: str = ""

    @property
    def codes(self) -> tuple:
        return self.code if isinstance(self.code, tuple) else (self.code,)

    @property
    def fields(self) -> tuple:
        return self.field if isinstance(self.field, tuple) else (self.field,)


# ---- default (good) calls ---------------------------------------------------------------------

def mpx_conf(ctx: Ctx) -> dict:
    return ctx.config()


def bridge_standalone_conf(ctx: Ctx) -> dict:
    return dict(bridge_conf("mpxc-br", BRIDGE_NET, ipMasq=True, isGateway=True), cniVersion="1.1.0", name="cnet")


def ipam_standalone_conf(ctx: Ctx) -> dict:
    return {"cniVersion": "1.1.0", "name": "inet", "type": "multiplex-bridge",
            "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": IPAM_NET}]]}}


DEFAULT_CONF = {"multiplex": mpx_conf, "multiplex-bridge": bridge_standalone_conf,
                "multiplex-ipam": ipam_standalone_conf}


def set_path(doc: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        doc = doc.setdefault(k, {})
    if value is REMOVE:
        doc.pop(keys[-1], None)
    else:
        doc[keys[-1]] = value


def stdin_for(case: Case, ctx: Ctx) -> bytes:
    conf = case.conf
    if callable(conf):
        conf = conf(ctx)
    if conf is None:
        conf = copy.deepcopy(DEFAULT_CONF[case.plugin](ctx))
    if isinstance(conf, dict):
        conf = copy.deepcopy(conf)
        for path, value in case.patch.items():
            set_path(conf, path, value(ctx) if callable(value) else value)
        return json.dumps(conf).encode()
    return conf


# ---- helpers to write the cases compactly ------------------------------------------------------

def env(id_: str, var: str, value: Any, code: Union[int, tuple] = 4, plugin: str = "multiplex",
        command: str = "ADD", field_: Any = None) -> Case:
    return Case(id_, code, field_ or var, plugin=plugin, command=command, env={var: value})


def mpx(id_: str, code: Union[int, tuple], field_: Any, **patch: Any) -> Case:
    return Case(id_, code, field_, patch=patch)


def br(id_: str, code: Union[int, tuple], field_: Any, conf: Config = None, **patch: Any) -> Case:
    return Case(id_, code, field_, plugin="multiplex-bridge", conf=conf, patch=patch)


def ipam(id_: str, code: Union[int, tuple], field_: Any, ranges: Any = REMOVE, **patch: Any) -> Case:
    p = {f"ipam.{k}": v for k, v in patch.items()}
    if ranges is not REMOVE:
        p["ipam.ranges"] = ranges
    return Case(id_, code, field_, plugin="multiplex-ipam", patch=p)


def ann(id_: str, code: Union[int, tuple], field_: Any, networks: Any,
        setup: Optional[Callable[[Ctx], None]] = None) -> Case:
    return Case(id_, code, field_, networks=networks, setup=setup)


def with_nad(name: str, config: Any, namespace: str = "default") -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        ctx.add_nad(name, config(ctx) if callable(config) else config, namespace)
    return setup


def evil_nad(id_: str, field_: Any, extra: Callable[[Ctx], dict], strays: tuple = (), code: Any = 7) -> Case:
    """A NAD whose config tries a node-level field: refused (code 7 naming it), nothing created."""
    name = "e-" + id_.lower()

    def config(ctx: Ctx) -> dict:
        return dict(bridge_conf("mpxc-evil", GREEN_NET), **extra(ctx))
    return Case(id_, code, field_, networks=name, setup=with_nad(name, config), strays=strays)


def deep(n: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * n + close * n).encode()


def deep_object(n: int) -> bytes:
    return ('{"a":' * n + "1" + "}" * n).encode()


def mpx_with(**fields: Any) -> Callable[[Ctx], bytes]:
    """The default multiplex config with raw JSON text fields spliced in (for non-JSON values)."""
    def build(ctx: Ctx) -> bytes:
        text = json.dumps(mpx_conf(ctx))[:-1]
        return (text + "".join(f', "{k}": {v}' for k, v in fields.items()) + "}").encode()
    return build


def gc_conf(plugin: str, valid: Any, extra: Optional[dict] = None) -> Callable[[Ctx], dict]:
    def build(ctx: Ctx) -> dict:
        conf = DEFAULT_CONF[plugin](ctx)
        if valid is not REMOVE:
            conf["cni.dev/valid-attachments"] = valid
        conf.update(extra or {})
        return conf
    return build


VALID = "cni.dev/valid-attachments"
VALID_CONTAINERS = "multiplex.dev/valid-containers"
LIVE_KEEP = [{"containerID": "cid-live", "ifname": "eth0"}, {"containerID": "cid-live", "ifname": "net1"},
             {"containerID": "cid-live-br", "ifname": "eth0"}, {"containerID": "cid-live-ipam", "ifname": "eth0"}]


def gc(id_: str, plugin: str, valid: Any, extra: Optional[dict] = None, code: Any = 7, field_: Any = VALID) -> Case:
    return Case(id_, code, field_, plugin=plugin, command="GC", conf=gc_conf(plugin, valid, extra))


# ---- the corpus --------------------------------------------------------------------------------

def _env_cases() -> list[Case]:
    cases = [
        env("env-command-missing", "CNI_COMMAND", REMOVE),
        env("env-command-empty", "CNI_COMMAND", ""),
        env("env-command-lowercase", "CNI_COMMAND", "add"),
        env("env-command-unknown", "CNI_COMMAND", "FROB"),
        env("env-command-trailing-newline", "CNI_COMMAND", "ADD\n"),
        env("env-command-trailing-space", "CNI_COMMAND", "ADD "),
        env("env-containerid-missing", "CNI_CONTAINERID", REMOVE),
        env("env-containerid-empty", "CNI_CONTAINERID", ""),
        env("env-containerid-slash", "CNI_CONTAINERID", "abc/def"),
        env("env-containerid-dotdot", "CNI_CONTAINERID", "../../../etc/x"),
        env("env-containerid-space", "CNI_CONTAINERID", "abc def"),
        env("env-containerid-trailing-newline", "CNI_CONTAINERID", "abcdef\n"),
        env("env-containerid-leading-dash", "CNI_CONTAINERID", "-abcdef"),
        env("env-containerid-non-ascii", "CNI_CONTAINERID", "c\u00efd-123"),
        env("env-containerid-semicolon", "CNI_CONTAINERID", "abc;rm"),
        env("env-containerid-240-chars", "CNI_CONTAINERID", "a" * 240),
        env("env-containerid-300-chars", "CNI_CONTAINERID", "b" * 300),
        env("del-containerid-300-chars", "CNI_CONTAINERID", "c" * 300, command="DEL"),
        env("del-containerid-slash", "CNI_CONTAINERID", "../../x", command="DEL"),
        env("check-containerid-300-chars", "CNI_CONTAINERID", "d" * 300, command="CHECK"),
        env("env-ifname-missing", "CNI_IFNAME", REMOVE),
        env("env-ifname-empty", "CNI_IFNAME", ""),
        env("env-ifname-16-chars", "CNI_IFNAME", "eth0123456789abc"),
        env("env-ifname-9-e-acute-18-bytes", "CNI_IFNAME", "\u00e9" * 9),
        env("env-ifname-slash", "CNI_IFNAME", "et/h0"),
        env("env-ifname-colon", "CNI_IFNAME", "eth0:1"),
        env("env-ifname-space", "CNI_IFNAME", "eth 0"),
        env("env-ifname-dot", "CNI_IFNAME", "."),
        env("env-ifname-dotdot", "CNI_IFNAME", ".."),
        env("env-ifname-trailing-newline", "CNI_IFNAME", "eth0\n"),
        env("env-ifname-tab", "CNI_IFNAME", "eth\t0"),
        env("env-ifname-percent", "CNI_IFNAME", "eth%d"),
        env("del-ifname-9-e-acute", "CNI_IFNAME", "\u00e9" * 9, command="DEL"),
        env("env-netns-missing", "CNI_NETNS", REMOVE),
        env("env-netns-empty", "CNI_NETNS", ""),
        env("env-netns-relative", "CNI_NETNS", "some-netns"),
        env("env-netns-nonexistent", "CNI_NETNS", "/var/run/netns/mpxc-no-such-netns", code=3),
        Case("env-netns-regular-file", (3, 4), "CNI_NETNS", env={"CNI_NETNS": lambda c: c.afile}),
        Case("env-netns-directory", (3, 4), "CNI_NETNS", env={"CNI_NETNS": lambda c: c.root}),
        env("env-netns-plugins-own-proc-self", "CNI_NETNS", "/proc/self/ns/net"),
        Case("env-netns-plugins-own-by-name", 4, "CNI_NETNS",
             env={"CNI_NETNS": lambda c: f"/var/run/netns/{c.node}"}),
        env("env-args-pair-without-equals", "CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME"),
        env("env-args-empty-key", "CNI_ARGS", "IgnoreUnknown=1;=value"),
        Case("env-args-pod-name-path-traversal", 4, "K8S_POD_NAME",
             env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=../../pods/default-x"}),
        Case("env-args-pod-namespace-bad-chars", 4, "K8S_POD_NAMESPACE",
             env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=Bad_NS!;K8S_POD_NAME=p"}),
        Case("env-args-pod-name-trailing-newline", 4, "K8S_POD_NAME",
             env={"CNI_ARGS": lambda c: f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={c.pod}\n"}),
        Case("env-args-pod-uid-stale", 3, "K8S_POD_UID",
             env={"CNI_ARGS": lambda c: f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={c.pod};"
                                        "K8S_POD_UID=not-this-pod"}),
    ]
    # the standalone delegate and IPAM binaries get the same environment checks
    for plugin, short in (("multiplex-bridge", "br"), ("multiplex-ipam", "ipam")):
        cases += [
            env(f"{short}-env-command-unknown", "CNI_COMMAND", "FROB", plugin=plugin),
            env(f"{short}-env-containerid-bad-chars", "CNI_CONTAINERID", "a/b c", plugin=plugin),
            env(f"{short}-env-containerid-300-chars", "CNI_CONTAINERID", "e" * 300, plugin=plugin),
            env(f"{short}-env-containerid-trailing-newline", "CNI_CONTAINERID", "abc\n", plugin=plugin),
            env(f"{short}-env-ifname-9-e-acute", "CNI_IFNAME", "\u00e9" * 9, plugin=plugin),
            env(f"{short}-env-ifname-colon", "CNI_IFNAME", "eth0:1", plugin=plugin),
            env(f"{short}-env-args-malformed", "CNI_ARGS", "garbage", plugin=plugin),
        ]
    cases += [
        env("br-env-netns-plugins-own", "CNI_NETNS", "/proc/self/ns/net", plugin="multiplex-bridge"),
        env("br-env-netns-nonexistent", "CNI_NETNS", "/var/run/netns/mpxc-no-such-netns", code=3,
            plugin="multiplex-bridge"),
        env("br-env-netns-missing", "CNI_NETNS", REMOVE, plugin="multiplex-bridge"),
        env("br-del-containerid-300-chars", "CNI_CONTAINERID", "f" * 300, plugin="multiplex-bridge", command="DEL"),
    ]
    return cases


def _stdin_cases() -> list[Case]:
    big = lambda c: json.dumps(dict(mpx_conf(c), args={"padding": "x" * (2 * 1024 * 1024)})).encode()
    return [
        Case("stdin-empty", 6, "stdin", conf=b""),
        Case("stdin-not-json", 6, "stdin", conf=b"hello, runtime"),
        Case("stdin-truncated-json", 6, "stdin", conf=b'{"cniVersion": "1.1.0", "name": "mult'),
        Case("stdin-invalid-utf8", 6, "stdin", conf=b'{"cniVersion": "1.1.0", "name": "\xff\xfe"}'),
        Case("stdin-a-list", (6, 7), "stdin", conf=b"[]"),
        Case("stdin-a-string", (6, 7), "stdin", conf=b'"multiplex"'),
        Case("stdin-null", (6, 7), "stdin", conf=b"null"),
        Case("stdin-a-number", (6, 7), "stdin", conf=b"42"),
        Case("stdin-2mb-config", (6, 7), "stdin", conf=big),
        Case("stdin-nested-100000-lists", (6, 7), "stdin", conf=deep(100000)),
        Case("stdin-nested-100000-objects", (6, 7), "stdin", conf=deep_object(100000)),
        Case("stdin-nested-100000-inside-valid-config", (6, 7), "stdin",
             conf=mpx_with(args=deep(100000).decode())),
        Case("stdin-nan-value", (6, 7), ("stdin", "readinessTimeout"), conf=mpx_with(readinessTimeout="NaN")),
        Case("br-stdin-nested-100000", (6, 7), "stdin", plugin="multiplex-bridge", conf=deep(100000)),
        Case("br-stdin-not-json", 6, "stdin", plugin="multiplex-bridge", conf=b"{{{"),
        Case("br-stdin-2mb-config", (6, 7), "stdin", plugin="multiplex-bridge",
             conf=lambda c: json.dumps(dict(bridge_standalone_conf(c), args={"p": "y" * (2 << 20)})).encode()),
        Case("ipam-stdin-nested-100000", (6, 7), "stdin", plugin="multiplex-ipam", conf=deep_object(100000)),
        Case("ipam-stdin-a-list", (6, 7), "stdin", plugin="multiplex-ipam", conf=b"[1, 2]"),
        mpx("conf-missing-cniVersion", (1, 7), "cniVersion", cniVersion=REMOVE),
        mpx("conf-cniVersion-a-number", (1, 7), "cniVersion", cniVersion=1.1),
        mpx("conf-cniVersion-unknown", 1, "cniVersion", cniVersion="9.9.9"),
        mpx("conf-cniVersion-0.2.0", 1, "cniVersion", cniVersion="0.2.0"),
        mpx("conf-missing-name", 7, "name", name=REMOVE),
        mpx("conf-name-empty", 7, "name", name=""),
        mpx("conf-name-a-number", 7, "name", name=7),
        mpx("conf-name-with-slash", 7, "name", name="multi/plex"),
        mpx("conf-name-trailing-newline", 7, "name", name="multiplex\n"),
        mpx("conf-missing-type", 7, "type", type=REMOVE),
        mpx("conf-type-a-number", 7, "type", type=1),
        mpx("conf-type-of-another-plugin", 7, "type", type="multiplex-bridge"),
        mpx("conf-type-a-path", 7, "type", type="../multiplex"),
        br("br-conf-missing-name", 7, "name", name=REMOVE),
        br("br-conf-name-trailing-newline", 7, "name", name="cnet\n"),
        br("br-conf-cniVersion-0.2.0", 1, "cniVersion", cniVersion="0.2.0"),
        br("br-conf-type-trailing-newline", 7, "type", type="multiplex-bridge\n"),
        Case("ipam-conf-missing-name", 7, "name", plugin="multiplex-ipam", patch={"name": REMOVE}),
    ]


def _write_file(ctx: Ctx) -> None:
    with open(ctx.afile, "w") as f:
        f.write("not a directory\n")


def _mpx_config_cases() -> list[Case]:
    inline_bridge = {"cniVersion": "1.1.0", "type": "multiplex-bridge", "bridge": "mpxc-inl",
                     "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.103.0/24"}]]}}
    return [
        mpx("mpx-stateDir-relative", 7, "stateDir", stateDir="state"),
        mpx("mpx-stateDir-dot-relative", 7, "stateDir", stateDir="./state"),
        mpx("mpx-stateDir-empty", 7, "stateDir", stateDir=""),
        mpx("mpx-stateDir-a-number", 7, "stateDir", stateDir=5),
        Case("mpx-stateDir-a-regular-file", (5, 7), "stateDir", setup=_write_file,
             patch={"stateDir": lambda c: c.afile}),
        Case("mpx-stateDir-under-a-regular-file", (5, 7), "stateDir", setup=_write_file,
             patch={"stateDir": lambda c: os.path.join(c.afile, "state")}),
        Case("del-stateDir-relative", 7, "stateDir", command="DEL", patch={"stateDir": "state"}),
        Case("del-stateDir-a-regular-file", (5, 7), "stateDir", command="DEL", setup=_write_file,
             patch={"stateDir": lambda c: c.afile}),
        mpx("mpx-unknown-field", 7, "bogusField", bogusField=1),
        mpx("mpx-unknown-field-typo", 7, "clusterNetworks", clusterNetworks="podnet"),
        mpx("mpx-readinessTimeout-negative", 7, "readinessTimeout", readinessTimeout=-1),
        mpx("mpx-readinessTimeout-zero", 7, "readinessTimeout", readinessTimeout=0),
        mpx("mpx-readinessTimeout-a-string", 7, "readinessTimeout", readinessTimeout="30"),
        mpx("mpx-readinessTimeout-a-bool", 7, "readinessTimeout", readinessTimeout=True),
        Case("mpx-readiness-file-never-appears", 11, "readinessindicatorfile",
             patch={"readinessindicatorfile": lambda c: os.path.join(c.root, "never-ready"),
                    "readinessTimeout": 0.3}),
        mpx("mpx-readinessindicatorfile-a-number", 7, "readinessindicatorfile", readinessindicatorfile=5),
        mpx("mpx-pluginTimeout-zero", 7, "pluginTimeout", pluginTimeout=0),
        mpx("mpx-pluginTimeout-negative", 7, "pluginTimeout", pluginTimeout=-5),
        mpx("mpx-pluginTimeout-a-string", 7, "pluginTimeout", pluginTimeout="60"),
        mpx("mpx-logLevel-unknown", 7, "logLevel", logLevel="verbose"),
        mpx("mpx-logFile-relative", 7, "logFile", logFile="multiplex.log"),
        Case("mpx-logFile-a-directory", (5, 7), "logFile", patch={"logFile": lambda c: c.root}),
        mpx("mpx-nadDir-relative", 7, "nadDir", nadDir="nads"),
        mpx("mpx-podDir-relative", 7, "podDir", podDir="pods"),
        mpx("mpx-confDir-relative", 7, "confDir", confDir="net.d"),
        mpx("mpx-binDir-relative", 7, "binDir", binDir="bin"),
        mpx("mpx-kubeconfig-relative", 7, "kubeconfig", kubeconfig="kubeconfig"),
        Case("mpx-kubeconfig-missing-file", (5, 7), "kubeconfig",
             patch={"kubeconfig": lambda c: os.path.join(c.root, "no-such-kubeconfig"),
                    "nadDir": REMOVE, "podDir": REMOVE}),
        mpx("mpx-delegates-an-object", 7, "delegates", delegates={}),
        mpx("mpx-delegates-entry-a-string", 7, "delegates", delegates=["podnet"]),
        mpx("mpx-delegates-without-name", 7, ("delegates", "name"), clusterNetwork=REMOVE, delegates=[inline_bridge]),
        mpx("mpx-delegates-without-type", 7, "delegates", delegates=[{"cniVersion": "1.1.0", "name": "x"}]),
        mpx("mpx-clusterNetwork-missing", 7, "clusterNetwork", clusterNetwork=REMOVE),
        mpx("mpx-clusterNetwork-missing-empty-delegates", 7, ("clusterNetwork", "delegates"),
            clusterNetwork=REMOVE, delegates=[]),
        mpx("mpx-clusterNetwork-empty", 7, "clusterNetwork", clusterNetwork=""),
        mpx("mpx-clusterNetwork-a-number", 7, "clusterNetwork", clusterNetwork=5),
        mpx("mpx-clusterNetwork-unknown", 107, ("clusterNetwork", "no-such-network"), clusterNetwork="no-such-network"),
        mpx("mpx-clusterNetwork-path-traversal", (7, 107), ("clusterNetwork", "../../../etc/passwd"), clusterNetwork="../../../etc/passwd"),
        mpx("mpx-clusterNetwork-inline-multiplex", 7, ("clusterNetwork", "type", "stdin"),
            clusterNetwork={"cniVersion": "1.1.0", "name": "again", "type": "multiplex"}),
        mpx("mpx-clusterNetwork-inline-without-name", 7, ("clusterNetwork", "name"), clusterNetwork=inline_bridge),
        mpx("mpx-defaultNetworks-a-string", 7, "defaultNetworks", defaultNetworks="blue"),
        mpx("mpx-defaultNetworks-unknown", 107, ("defaultNetworks", "no-such-nad"), defaultNetworks=["no-such-nad"]),
        mpx("mpx-systemNamespaces-a-string", 7, "systemNamespaces", systemNamespaces="kube-system"),
        mpx("mpx-namespaceIsolation-a-string", 7, "namespaceIsolation", namespaceIsolation="yes"),
        mpx("mpx-capabilities-not-booleans", 7, "capabilities", capabilities={"ips": "yes"}),
        mpx("mpx-runtimeConfig-a-list", 7, "runtimeConfig", runtimeConfig=[]),
    ]


def _bridge_cases() -> list[Case]:
    v6 = lambda c: dict(bridge_conf("mpxc-br6", "fd00:110::/64", isGateway=True), cniVersion="1.1.0", name="cnet6")
    dual = lambda c: dict(bridge_conf("mpxc-brd", "198.18.111.0/24", "fd00:111::/64"), cniVersion="1.1.0",
                          name="cnetd")
    rng = lambda **r: [[dict({"subnet": BRIDGE_NET}, **r)]]
    return [
        br("br-vlan-5000", 7, "vlan", vlan=5000),
        br("br-vlan-a-float", 7, "vlan", vlan=1.5),
        br("br-mtu-60", 7, "mtu", mtu=60),
        br("br-mtu-1000-with-ipv6-range", 7, "mtu", conf=v6, mtu=1000),
        br("br-mtu-1200-dual-stack", 7, "mtu", conf=dual, mtu=1200),
        br("br-mtu-1000000", 7, "mtu", mtu=1000000),
        br("br-mtu-a-string", 7, "mtu", mtu="1500"),
        br("br-subnet-slash-33", 7, "subnet", **{"ipam.ranges": [[{"subnet": "198.18.0.0/33"}]]}),
        br("br-subnet-octet-300", 7, "subnet", **{"ipam.ranges": [[{"subnet": "198.18.300.0/24"}]]}),
        br("br-subnet-empty", 7, "subnet", **{"ipam.ranges": [[{"subnet": ""}]]}),
        br("br-subnet-ipv6-slash-129", 7, "subnet", **{"ipam.ranges": [[{"subnet": "fd00:112::/129"}]]}),
        br("br-subnet-a-number", 7, "subnet", **{"ipam.ranges": [[{"subnet": 24}]]}),
        br("br-gateway-outside-subnet", 7, "gateway", **{"ipam.ranges": rng(gateway="198.18.99.1")}),
        br("br-gateway-not-an-address", 7, "gateway", **{"ipam.ranges": rng(gateway="gw")}),
        br("br-gateway-other-family", 7, "gateway", **{"ipam.ranges": rng(gateway="fd00::1")}),
        br("br-bridge-name-16-chars", 7, "bridge", bridge="mpxc-bridge-0123"),
        br("br-bridge-name-8-e-acute-16-bytes", 7, "bridge", bridge="\u00e9" * 8),
        br("br-bridge-name-with-space", 7, "bridge", bridge="mpxc br"),
        br("br-bridge-name-with-colon", 7, "bridge", bridge="mpxc:br"),
        br("br-bridge-name-a-number", 7, "bridge", bridge=5),
        br("br-mac-not-a-mac", 7, "mac", **{"runtimeConfig.mac": "zz:zz:zz:zz:zz:zz"}),
        br("br-mac-too-short", 7, "mac", **{"runtimeConfig.mac": "02:00:00:00:00"}),
        br("br-mac-broadcast", 7, "mac", **{"runtimeConfig.mac": "ff:ff:ff:ff:ff:ff"}),
        br("br-mac-all-zero", 7, "mac", **{"runtimeConfig.mac": "00:00:00:00:00:00"}),
        br("br-isGateway-a-string", 7, "isGateway", isGateway="true"),
        br("br-hairpinMode-a-number", 7, "hairpinMode", hairpinMode=1),
        br("br-unknown-field", 7, "bridgeName", bridgeName="x"),
        br("br-dns-a-string", 7, "dns", dns="8.8.8.8"),
        br("br-runtimeConfig-ips-not-addresses", 7, "ips", **{"runtimeConfig.ips": ["not-an-ip"]}),
        br("br-ipam-missing", 7, "ipam", ipam=REMOVE),
        br("br-ipam-a-string", 7, "ipam", ipam="multiplex-ipam"),
        br("br-ipam-type-unknown", (7, 107), "ipam.type", **{"ipam.type": "no-such-ipam"}),
        br("br-ipam-type-trailing-newline", 7, "ipam.type", **{"ipam.type": "multiplex-ipam\n"}),
    ]


def _ipam_cases() -> list[Case]:
    r = lambda **kw: [[dict({"subnet": IPAM_NET}, **kw)]]
    return [
        ipam("ipam-dataDir-relative", 7, "ipam.dataDir", dataDir="leases"),
        ipam("ipam-dataDir-a-number", 7, "ipam.dataDir", dataDir=5),
        Case("ipam-dataDir-a-regular-file", (5, 7), "ipam.dataDir", plugin="multiplex-ipam", setup=_write_file,
             patch={"ipam.dataDir": lambda c: c.afile}),
        ipam("ipam-rangeStart-after-rangeEnd", 7, ("rangeStart", "rangeEnd"), ranges=r(rangeStart="198.18.120.200",
                                                                         rangeEnd="198.18.120.100")),
        ipam("ipam-rangeStart-outside-subnet", 7, "rangeStart", ranges=r(rangeStart="198.18.121.10")),
        ipam("ipam-rangeEnd-outside-subnet", 7, "rangeEnd", ranges=r(rangeEnd="198.18.121.10")),
        ipam("ipam-rangeStart-not-an-address", 7, "rangeStart", ranges=r(rangeStart="start")),
        ipam("ipam-ranges-empty", 7, "ranges", ranges=[]),
        ipam("ipam-ranges-an-empty-set", 7, "ranges", ranges=[[]]),
        ipam("ipam-ranges-not-a-list", 7, "ranges", ranges={"subnet": IPAM_NET}),
        ipam("ipam-two-ipv4-range-sets", 7, "ranges", ranges=[[{"subnet": IPAM_NET}], [{"subnet": "198.18.121.0/24"}]]),
        ipam("ipam-two-ipv6-range-sets", 7, "ranges", ranges=[[{"subnet": "fd00:120::/64"}], [{"subnet": "fd00:121::/64"}]]),
        ipam("ipam-three-range-sets", 7, "ranges", ranges=[[{"subnet": IPAM_NET}], [{"subnet": "fd00:120::/64"}],
                                                            [{"subnet": "198.18.121.0/24"}]]),
        ipam("ipam-mixed-families-in-one-set", 7, "ranges", ranges=[[{"subnet": IPAM_NET}, {"subnet": "fd00:120::/64"}]]),
        Case("ipam-no-ranges-at-all", 7, "ranges", plugin="multiplex-ipam", patch={"ipam.ranges": REMOVE}),
        Case("ipam-range-a-bad-string", 7, "range", plugin="multiplex-ipam",
             patch={"ipam.ranges": REMOVE, "ipam.range": "not-a-cidr"}),
        ipam("ipam-exclude-not-a-cidr", 7, "exclude", exclude=["x.y"]),
        ipam("ipam-routes-dst-not-a-cidr", 7, "routes", routes=[{"dst": "everywhere"}]),
        ipam("ipam-routes-without-dst", 7, "routes", routes=[{"gw": "198.18.120.1"}]),
        ipam("ipam-store-unknown", 7, "store", store="etcd"),
        ipam("ipam-unknown-field", 7, "ipam.bogus", bogus=1),
        Case("ipam-args-ips-not-addresses", 7, "ips", plugin="multiplex-ipam", patch={"args.cni.ips": ["nope"]}),
        Case("ipam-runtimeConfig-ips-a-string", 7, "ips", plugin="multiplex-ipam",
             patch={"runtimeConfig.ips": "198.18.120.5/24"}),
    ]


def _many(n: int, name: str = "blue") -> list[dict]:
    return [{"name": name, "interface": f"m{i}"} for i in range(n)]


def _annotation_cases() -> list[Case]:
    ips_nad = with_nad("opted", dict(bridge_conf("mpxc-opt", "198.18.104.0/24"), capabilities={"ips": True, "mac": True}))
    tenant_nad = with_nad("red", bridge_conf("mpxc-red", "198.18.105.0/24"), namespace="tenant")
    return [
        ann("ann-bad-json", 7, NETWORKS, '[{"name": "blue"'),
        ann("ann-json-an-object", 7, NETWORKS, '{"name": "blue"}'),
        ann("ann-json-entry-a-number", 7, NETWORKS, '[5]'),
        ann("ann-entry-without-name", 7, NETWORKS, [{"interface": "x0"}]),
        ann("ann-name-a-number", 7, NETWORKS, [{"name": 5}]),
        ann("ann-name-bad-chars", 7, NETWORKS, "Blue!"),
        ann("ann-two-slashes", 7, NETWORKS, "a/b/blue"),
        ann("ann-two-ats", 7, NETWORKS, "blue@x0@x1"),
        ann("ann-unknown-nad", 107, (NETWORKS, "no-such-nad"), "blue, no-such-nad"),
        ann("ann-unknown-nad-other-namespace", (106, 107), NETWORKS, "other/no-such-nad"),
        ann("ann-interface-clashes-with-eth0", 7, NETWORKS, "blue@eth0"),
        ann("ann-interface-clashes-between-entries", 7, NETWORKS, "blue@x0, green@x0"),
        ann("ann-interface-too-long", 7, NETWORKS, "blue@abcdefghijklmnop"),
        ann("ann-interface-9-e-acute", 7, NETWORKS, "blue@" + "\u00e9" * 9),
        ann("ann-interface-with-slash", 7, NETWORKS, [{"name": "blue", "interface": "a/b"}]),
        ann("ann-interface-with-colon", 7, NETWORKS, [{"name": "blue", "interface": "a:b"}]),
        ann("ann-interface-with-space", 7, NETWORKS, [{"name": "blue", "interface": "a b"}]),
        ann("ann-interface-dot", 7, NETWORKS, "blue@."),
        ann("ann-interface-a-number", 7, NETWORKS, [{"name": "blue", "interface": 5}]),
        ann("ann-33-attachments", 7, NETWORKS, _many(33)),
        ann("ann-61-times-the-same-network", 7, NETWORKS, ", ".join(["blue"] * 61)),
        ann("ann-100kb", 7, NETWORKS, ", ".join(["blue"] * 20000)),
        ann("ann-100kb-of-spaces", 7, NETWORKS, "blue" + " " * 100_000),
        ann("ann-namespace-bad-chars", 7, NETWORKS, "Bad_NS/blue"),
        ann("ann-namespace-dotdot", 7, NETWORKS, "../blue"),
        ann("ann-namespace-a-number", 7, NETWORKS, [{"name": "blue", "namespace": 5}]),
        ann("ann-ips-without-nad-opting-in", 2, "ips", [{"name": "blue", "ips": ["198.18.101.50/24"]}]),
        ann("ann-mac-without-nad-opting-in", 2, "mac", [{"name": "blue", "mac": "02:00:00:00:01:01"}]),
        ann("ann-cni-args-ips-without-nad-opting-in", 2, "ips",
            [{"name": "blue", "cni-args": {"ips": ["198.18.101.51/24"]}}]),
        ann("ann-cni-args-mac-without-nad-opting-in", 2, "mac",
            [{"name": "blue", "cni-args": {"mac": "02:00:00:00:01:02"}}]),
        ann("ann-ips-not-addresses", 7, "ips", [{"name": "opted", "ips": ["nope"]}], setup=ips_nad),
        ann("ann-ips-outside-the-range", (7, 103), "ips", [{"name": "opted", "ips": ["198.18.99.5/24"]}],
            setup=ips_nad),
        ann("ann-mac-not-a-mac", 7, "mac", [{"name": "opted", "mac": "zz"}], setup=ips_nad),
        ann("ann-mac-multicast", 7, "mac", [{"name": "opted", "mac": "01:00:5e:00:00:01"}], setup=ips_nad),
        ann("ann-cni-args-a-string", 7, "cni-args", [{"name": "blue", "cni-args": "ips=1"}]),
        ann("ann-default-route-a-string", 7, "default-route", [{"name": "blue", "default-route": "198.18.101.1"}]),
        ann("ann-default-route-not-an-address", 7, "default-route", [{"name": "blue", "default-route": ["gw"]}]),
        ann("ann-other-namespace-nad-isolated-by-default", 106, ("tenant/red", NETWORKS), "tenant/red",
            setup=tenant_nad),
    ]


def _evil_binary(ctx: Ctx) -> dict:
    """binDir pointing at a directory holding a plugin that would leave a marker if it ever ran."""
    script = os.path.join(ctx.root, f"bin-{ctx.idx:03d}")
    os.makedirs(script, exist_ok=True)
    path = os.path.join(script, "evilplugin")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\ntouch {ctx.out('EXECUTED')}\necho '{{}}'\n")
    os.chmod(path, 0o755)
    return {"binDir": script}


def _nad_cases() -> list[Case]:
    def as_multiplex(ctx: Ctx) -> dict:
        extra = _evil_binary(ctx)
        return {"type": "multiplex", **extra, "clusterNetwork": {"cniVersion": "1.1.0", "name": "x", "type": "evilplugin"},
                "nadDir": ctx.nad_dir, "podDir": ctx.pod_dir}

    def self_named(ctx: Ctx) -> None:
        confdir = os.path.join(ctx.root, "net.d")
        os.makedirs(confdir, exist_ok=True)
        with open(os.path.join(confdir, "00-multiplex.conf"), "w") as f:
            json.dump(dict(mpx_conf(ctx), name="multiplex"), f)
        ctx.add_raw_nad("multiplex", "")

    conflist_datadir = lambda c: {"cniVersion": "1.1.0", "name": "cl", "plugins": [
        dict(bridge_conf("mpxc-cl", GREEN_NET), ipam={"type": "multiplex-ipam", "ranges": [[{"subnet": GREEN_NET}]],
                                                      "dataDir": c.out("cl-data")})]}
    return [
        evil_nad("nad-type-multiplex", "type", lambda c: {"type": "multiplex"}),
        Case("nad-type-multiplex-with-binDir-and-clusterNetwork", 7, ("type", "binDir"), networks="evilmpx",
             setup=with_nad("evilmpx", as_multiplex), strays=("EXECUTED",)),
        evil_nad("nad-binDir", "binDir", _evil_binary),
        evil_nad("nad-logFile", "logFile", lambda c: {"logFile": c.out("evil.log")}, strays=("evil.log",)),
        evil_nad("nad-stateDir", "stateDir", lambda c: {"stateDir": c.out("state")}, strays=("state",)),
        evil_nad("nad-kubeconfig", "kubeconfig", lambda c: {"kubeconfig": c.out("kubeconfig")}),
        evil_nad("nad-confDir", "confDir", lambda c: {"confDir": c.out("net.d")}),
        evil_nad("nad-nadDir", "nadDir", lambda c: {"nadDir": c.out("nads")}),
        evil_nad("nad-podDir", "podDir", lambda c: {"podDir": c.out("pods")}),
        evil_nad("nad-ipam-kubeconfig", "ipam.kubeconfig",
                 lambda c: {"ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": GREEN_NET}]],
                                     "kubeconfig": c.out("kubeconfig")}}),
        evil_nad("nad-ipam-dataDir", "ipam.dataDir",
                 lambda c: {"ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": GREEN_NET}]],
                                     "dataDir": c.out("data")}}, strays=("data",)),
        evil_nad("nad-ipam-nodeName", "ipam.nodeName",
                 lambda c: {"ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": GREEN_NET}]],
                                     "nodeName": "another-node"}}),
        Case("nad-conflist-with-ipam-dataDir", 7, "ipam.dataDir", networks="evilcl",
             setup=lambda c: c.add_raw_nad("evilcl", json.dumps(conflist_datadir(c))), strays=("cl-data",)),
        Case("nad-conflist-with-type-multiplex", 7, "type", networks="evilcl2",
             setup=lambda c: c.add_raw_nad("evilcl2", json.dumps(
                 {"cniVersion": "1.1.0", "name": "cl2", "plugins": [{"type": "multiplex"}]}))),
        Case("nad-empty-config-named-like-the-node-conflist", (7, 107), ("multiplex", "spec.config"),
             networks="multiplex", setup=self_named, patch={"confDir": lambda c: os.path.join(c.root, "net.d")}),
        Case("nad-spec-config-not-json", 7, "spec.config", networks="broken1",
             setup=lambda c: c.add_raw_nad("broken1", "{")),
        Case("nad-spec-config-a-list", 7, "spec.config", networks="broken2",
             setup=lambda c: c.add_raw_nad("broken2", "[]")),
        Case("nad-spec-config-without-type", 7, "type", networks="broken3",
             setup=lambda c: c.add_raw_nad("broken3", json.dumps({"cniVersion": "1.1.0", "name": "broken3", "foo": 1}))),
        evil_nad("nad-type-a-path", "type", lambda c: {"type": "../../bin/sh"}),
        evil_nad("nad-type-trailing-newline", "type", lambda c: {"type": "multiplex-bridge\n"}),
        evil_nad("nad-bridge-vlan-5000", "vlan", lambda c: {"vlan": 5000}),
        evil_nad("nad-bridge-mtu-1000-with-ipv6", "mtu",
                 lambda c: {"mtu": 1000, "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "fd00:102::/64"}]]}}),
        evil_nad("nad-ipam-rangeStart-after-rangeEnd", ("rangeStart", "rangeEnd"),
                 lambda c: {"ipam": {"type": "multiplex-ipam", "ranges": [[{
                     "subnet": GREEN_NET, "rangeStart": "198.18.102.200", "rangeEnd": "198.18.102.10"}]]}}),
        evil_nad("nad-ipam-two-ipv4-range-sets", "ranges",
                 lambda c: {"ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": GREEN_NET}],
                                                                           [{"subnet": "198.18.106.0/24"}]]}}),
        Case("nad-third-network-bad-subnet-after-two-good", 7, "subnet", networks="blue, green, badsub",
             setup=with_nad("badsub", bridge_conf("mpxc-badsub", "198.18.300.0/24"))),
    ]


def _gc_cases() -> list[Case]:
    cases = []
    for plugin, short in (("multiplex", "mpx"), ("multiplex-bridge", "br"), ("multiplex-ipam", "ipam")):
        cases += [
            gc(f"{short}-gc-valid-attachments-absent", plugin, REMOVE),
            gc(f"{short}-gc-valid-attachments-a-string", plugin, "cid-live"),
            gc(f"{short}-gc-valid-attachments-an-object", plugin, {"containerID": "cid-live", "ifname": "eth0"}),
            gc(f"{short}-gc-valid-attachments-containerId-ifName-keys", plugin,
               [{"containerId": e["containerID"], "ifName": e["ifname"]} for e in LIVE_KEEP]),
            gc(f"{short}-gc-valid-attachments-entries-strings", plugin, ["cid-live", "cid-live-br", "cid-live-ipam"]),
            gc(f"{short}-gc-valid-attachments-null", plugin, None),
        ]
    cases += [
        gc("mpx-gc-valid-attachments-ifname-a-number", "multiplex",
           [dict(e, ifname=0) for e in LIVE_KEEP]),
        gc("mpx-gc-valid-attachments-without-ifname", "multiplex", [{"containerID": "cid-live"}]),
        gc("mpx-gc-valid-containers-a-string", "multiplex", LIVE_KEEP, extra={VALID_CONTAINERS: "cid-live"},
           field_=VALID_CONTAINERS),
        gc("br-gc-valid-containers-a-string", "multiplex-bridge", LIVE_KEEP, extra={VALID_CONTAINERS: "cid-live-br"},
           field_=VALID_CONTAINERS),
        gc("mpx-gc-cniVersion-1.0.0", "multiplex", LIVE_KEEP, extra={"cniVersion": "1.0.0"}, code=1, field_="cniVersion"),
    ]
    return cases


CASES: list[Case] = (_env_cases() + _stdin_cases() + _mpx_config_cases() + _bridge_cases() + _ipam_cases()
                     + _annotation_cases() + _nad_cases() + _gc_cases())

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


# ---- outcomes and the summary table ------------------------------------------------------------

KINDS = ("clear", "vague", "crash", "hang", "residue")
OUTCOMES: dict[str, tuple[str, str]] = {}      # case id -> (kind, one-line reason)


def summary_lines() -> list[str]:
    """The table the corpus run ends with: size, count per kind, and the cases that were not clear."""
    counts = {k: 0 for k in KINDS}
    for kind, _ in OUTCOMES.values():
        counts[kind] += 1
    lines = ["", f"adversarial corpus: {len(OUTCOMES)} bad inputs run (of {len(CASES)} in the corpus)",
             "  " + "  ".join(f"{k}: {counts[k]}" for k in KINDS)]
    for kind in KINDS[1:]:
        for cid, (k, why) in sorted(OUTCOMES.items()):
            if k == kind:
                lines.append(f"  {kind:8} {cid}: {why}")
    return lines
