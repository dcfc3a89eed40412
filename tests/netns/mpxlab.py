"""A small test lab for multiplex: NAD files, a multiplex config, pods, CNI calls in a node netns."""
from __future__ import annotations

import json
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from tests.cnitool import CNIOutput, ip_json, links, run_plugin


def nad(name: str, config: dict, namespace: str = "default") -> dict:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"config": json.dumps(dict(config, cniVersion=config.get("cniVersion", "1.1.0"), name=name))}}


def bridge_conf(bridge: str, *ranges: str, **extra: Any) -> dict:
    """A multiplex-bridge config; each range is a subnet (one range set per family)."""
    return {"type": "multiplex-bridge", "bridge": bridge, **extra,
            "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": r}] for r in ranges]}}


class LabFiles:
    """The files side of a lab under `root`: NAD and pod files, the state dir, the multiplex config
    naming them, and what a user reads back from the state dir. Lab, and the adversarial tier's
    nodes, are built on it."""
    root: str                                  # a tmp dir: nads/, pods/, state/

    @property
    def nad_dir(self) -> str:
        return os.path.join(self.root, "nads")

    @property
    def pod_dir(self) -> str:
        return os.path.join(self.root, "pods")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, "state")

    def add_nad(self, name: str, config: dict, namespace: str = "default") -> None:
        """`config` is the NAD's CNI config, or a whole NAD object (one with a `spec`), written as is."""
        os.makedirs(self.nad_dir, exist_ok=True)
        obj = config if isinstance(config, dict) and "spec" in config else nad(name, config, namespace)
        with open(os.path.join(self.nad_dir, f"{namespace}-{name}.json"), "w") as f:
            json.dump(obj, f)

    def add_pod(self, name: str, networks: Any = None, namespace: str = "default", uid: str = "") -> None:
        os.makedirs(self.pod_dir, exist_ok=True)
        ann = {}
        if networks is not None:
            ann["k8s.v1.cni.cncf.io/networks"] = networks if isinstance(networks, str) else json.dumps(networks)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "annotations": ann}}
        with open(os.path.join(self.pod_dir, f"{namespace}-{name}.json"), "w") as f:
            json.dump(pod, f)

    def pod_status(self, name: str, namespace: str = "default") -> list[dict]:
        with open(os.path.join(self.pod_dir, f"{namespace}-{name}.json")) as f:
            pod = json.load(f)
        return json.loads(pod["metadata"]["annotations"].get("k8s.v1.cni.cncf.io/network-status", "[]"))

    def config(self, version: str = "1.1.0", **overrides: Any) -> dict:
        conf = {"cniVersion": version, "name": "multiplex", "type": "multiplex",
                "clusterNetwork": "podnet", "nadDir": self.nad_dir, "podDir": self.pod_dir,
                "stateDir": self.state_dir, "logFile": os.path.join(self.root, "multiplex.log"),
                "logLevel": "debug"}
        conf.update(overrides)
        return conf


VALID_ATTACHMENTS = "cni.dev/valid-attachments"

# multiplex as it was before networks had namespaced identities: plugins see the NAD's bare name
OLD_MULTIPLEX = """#!{python}
import sys
import multiplex.meta.selection
multiplex.meta.selection.identity_name = lambda namespace, name: ""
from multiplex.entry import main
sys.exit(main())
"""


def bridge_lab(node: str, root: str, netns_factory: Any, podnet: tuple, **networks: Any) -> "Lab":
    """A Lab whose cluster network `podnet` = (bridge, *subnets) is a bridge the pods use as
    their gateway and default route, and where each other network name=(bridge, *subnets) is a
    plain bridge network with the shared IPAM (name=dict: that CNI config, as is)."""
    lab = Lab(node=node, root=root, netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf(*podnet, isGateway=True, isDefaultGateway=True))
    for name, spec in networks.items():
        lab.add_nad(name, spec if isinstance(spec, dict) else bridge_conf(*spec))
    return lab


def old_multiplex(directory: str) -> str:
    """Writes OLD_MULTIPLEX as an executable into `directory`; its path (for run_plugin)."""
    path = os.path.join(directory, "old-multiplex")
    with open(path, "w") as f:
        f.write(OLD_MULTIPLEX.format(python=sys.executable))
    os.chmod(path, 0o755)
    return path


@dataclass
class Lab(LabFiles):
    node: str
    root: str                                  # a tmp dir: nads/, pods/, state/
    netns_factory: Any
    cluster: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # extra multiplex config fields

    def config(self, version: str = "1.1.0", **overrides: Any) -> dict:
        return super().config(version, **{**self.extra, **overrides})

    def cni(self, command: str, pod: Optional[str], netns: Optional[str], container_id: str = "",
            config: Optional[dict] = None, ifname: str = "eth0", version: str = "1.1.0",
            namespace: str = "default", uid: str = "", env: Optional[dict] = None) -> CNIOutput:
        args = "IgnoreUnknown=1"
        if pod:
            args += f";K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"
            if uid:
                args += f";K8S_POD_UID={uid}"
        return run_plugin("multiplex", command, config if config is not None else self.config(version),
                          node=self.node, container_id=container_id or (f"cid-{pod}" if pod else ""),
                          netns=netns or "", ifname=ifname if command not in ("GC", "STATUS") else "",
                          args=args, extra_env=env)

    def attach(self, pod: str, networks: Any, namespace: str = "default", container_id: str = "") -> str:
        """Pod `pod` with `networks` as its annotation, in a netns of its own, ADDed (the ADD must
        succeed). Returns its netns."""
        self.add_pod(pod, networks, namespace=namespace)
        ns = self.netns_factory("pod")
        out = self.cni("ADD", pod, ns, container_id=container_id, namespace=namespace)
        assert out.ok, out
        return ns

    def gc_config(self, *container_ids: str, **overrides: Any) -> dict:
        """The multiplex config of a GC whose runtime lists `container_ids` (each as its eth0)."""
        return dict(self.config(**overrides),
                    **{VALID_ATTACHMENTS: [{"containerID": c, "ifname": "eth0"} for c in container_ids]})

    # --- what a user would look at ---------------------------------------------------------
    def lease_rows(self, columns: str = "*") -> list[tuple]:
        """`columns` of every row of the leases table, in every database of the IPAM state dir."""
        db = os.path.join(self.state_dir, "ipam")
        files = sorted(os.path.join(db, f) for f in os.listdir(db) if f.endswith(".db")) if os.path.isdir(db) else []
        rows: list[tuple] = []
        for path in files:
            con = sqlite3.connect(path)
            try:
                if con.execute("select 1 from sqlite_master where type='table' and name='leases'").fetchone():
                    rows += con.execute(f"select {columns} from leases").fetchall()
            finally:
                con.close()
        return rows

    def leases(self) -> list[tuple]:
        return self.lease_rows()

    def lease_owners(self) -> dict[str, set[str]]:
        """container ID -> the interfaces it holds leases for."""
        out: dict[str, set[str]] = {}
        for cid, ifname in self.lease_rows("container_id, ifname"):
            out.setdefault(cid, set()).add(ifname)
        return out

    def cache_entries(self) -> list[str]:
        d = os.path.join(self.state_dir, "cache")
        return [f for f in os.listdir(d) if not f.startswith(".")] if os.path.isdir(d) else []

    def node_links(self, kind: str = "veth") -> set[str]:
        return {l["ifname"] for l in ip_json(self.node, "-d", "link", "show")
                if l.get("linkinfo", {}).get("info_kind") == kind}

    def residue(self, pod_ns: str = "", kinds: tuple[str, ...] = ("veth",)) -> list[str]:
        """What a refused or undone call must not leave, as a user would look for it (empty when
        nothing): interfaces in the pod netns `pod_ns` (when given), node links of `kinds`, lease
        rows, cache entries. One description of "nothing left" for the tests of every path."""
        left = []
        if pod_ns and links(pod_ns) != {"lo"}:
            left.append(f"pod links: {sorted(links(pod_ns))}")
        for kind in kinds:
            if self.node_links(kind):
                left.append(f"{kind}s on the node: {sorted(self.node_links(kind))}")
        if self.leases():
            left.append(f"lease rows: {self.leases()}")
        if self.cache_entries():
            left.append(f"cache entries: {self.cache_entries()}")
        return left

    def node_nft(self) -> str:
        from tests.cnitool import nsexec

        return nsexec(self.node, "nft", "list", "ruleset", check=False).stdout
