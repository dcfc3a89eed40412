"""The meta plugin run in-process (skel) for tests without root: NAD, namespace and pod files under
a tmp dir, a confDir, and the fake delegate `fake-a` exec'd from a CNI_PATH of the test's own,
recording every call it gets.

One helper for the policy tests (test_authorize.py, test_trust.py) so an ADD is built, run and
read back the same way in both: what a user checks is the ADD's answer, the delegate calls that
happened (none on a refusal) and the cache entries written (none on a refusal).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Optional

from multiplex.cni.skel import run
from multiplex.meta.orchestrator import plugin
from tests.fakeplugins import install, records

ANN = "k8s.v1.cni.cncf.io/networks"


class MetaEnv:
    """Files of one in-process node under `root` (net.d/, nads/, pods/, state/) and its ADD.

    `container_id` names an ADD's container from its pod; a test that needs one container for
    every ADD (the cache keyed by it) passes a constant."""

    def __init__(self, root: Path, container_id=lambda pod, namespace: f"c-{namespace}-{pod}"):
        self.root = root
        self.bin_dir = install(root / "bin", "fake-a")
        self.record = str(root / "calls.jsonl")
        self.container_id = container_id
        for d in ("net.d", "nads", "pods"):
            (root / d).mkdir(exist_ok=True)

    def fake(self, **extra) -> dict:
        """A config of the recording fake delegate."""
        return {"type": "fake-a", "fake": {"record": self.record}, **extra}

    def write_nad(self, name: str, config: str, namespace: str = "default",
                  annotations: Optional[dict] = None) -> None:
        """A NetworkAttachmentDefinition file whose spec.config is `config` (text, as the API has it)."""
        meta = {"name": name, "namespace": namespace}
        if annotations is not None:
            meta["annotations"] = annotations
        doc = {"kind": "NetworkAttachmentDefinition", "metadata": meta, "spec": {"config": config}}
        (self.root / "nads" / f"{namespace}-{name}.json").write_text(json.dumps(doc))

    def pod(self, name: str, networks, namespace: str = "default", labels: Optional[dict] = None) -> None:
        """A pod file with `networks` (a string, or a list written as JSON) as its annotation."""
        value = networks if isinstance(networks, str) else json.dumps(networks)
        meta = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "annotations": {ANN: value}}
        if labels:
            meta["labels"] = labels
        (self.root / "pods" / f"{namespace}-{name}.json").write_text(json.dumps({"kind": "Pod", "metadata": meta}))

    def config(self, **extra) -> dict:
        """The admin's multiplex config (cluster network "podnet"), `extra` fields added."""
        conf = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex",
                "clusterNetwork": "podnet", "confDir": str(self.root / "net.d"),
                "nadDir": str(self.root / "nads"), "podDir": str(self.root / "pods"),
                "stateDir": str(self.root / "state")}
        conf.update(extra)
        return conf

    def add(self, pod: str = "p", namespace: str = "default", **extra) -> tuple[int, Optional[dict]]:
        """An ADD of `pod` through the meta plugin: its exit code and the JSON it printed."""
        cid = self.container_id(pod, namespace)
        e = {"CNI_COMMAND": "ADD", "CNI_PATH": self.bin_dir, "CNI_CONTAINERID": cid,
             "CNI_NETNS": f"/var/run/netns/fake-{cid}", "CNI_IFNAME": "eth0",
             "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"}
        out = io.StringIO()
        rc = run(plugin, e, json.dumps(self.config(**extra)).encode(), out)
        return rc, (json.loads(out.getvalue()) if out.getvalue() else None)

    def calls(self) -> list[dict]:
        """Every delegate call recorded so far."""
        return records(self.record)

    def cache_files(self) -> list[str]:
        """The ADD results cached in the state dir (none after a refusal)."""
        d = self.root / "state" / "cache"
        return [f for f in os.listdir(d) if not f.startswith(".")] if d.is_dir() else []
