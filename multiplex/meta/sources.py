"""Where pods and NetworkAttachmentDefinitions come from.

- `LocalSource`: files on the node (the embedded default, no cluster): a directory of NAD files
  and, optionally, a directory of pod files whose annotations select networks. Network-status is
  written back into the pod file, so the lab can show it as the API server would.
- `KubeSource`: the Kubernetes API (multiplex.k8s), imported only when a kubeconfig is configured.

Both answer `get_nad(ns, name)`, `get_pod(ns, name, uid)` and `set_network_status(ns, name, text, uid)`.
`uid` is the runtime's K8S_POD_UID (or ""): a cache holding an older pod of that name treats it as
a miss, and the status patch names it as a precondition when no read of the pod gave one (the
runtime handed the pod's annotations over, so the pod was never read).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Protocol

from ..cni.errors import CNIError, DECODE_FAILURE, IO_FAILURE, NOT_FOUND
from ..util.files import atomic_write

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
NAD_KIND = "NetworkAttachmentDefinition"


class Source(Protocol):
    def get_nad(self, namespace: str, name: str) -> dict: ...
    def get_pod(self, namespace: str, name: str, uid: str = "") -> Optional[dict]: ...
    def set_network_status(self, namespace: str, name: str, status: str, uid: str = "") -> None: ...


def load_document(path: str) -> Any:
    """A JSON or YAML file (YAML only when the file ends in .yaml/.yml: PyYAML is imported then)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot read {path}: {e.strerror}", f"file: {path}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # yaml.YAMLError or ValueError
        raise CNIError(DECODE_FAILURE, f"cannot parse {path}: {e}", f"file: {path}") from None


def _documents(directory: str, kind: str) -> dict[tuple[str, str], tuple[str, dict]]:
    """Every object of `kind` under `directory` (recursively), keyed by (namespace, name)."""
    found: dict[tuple[str, str], tuple[str, dict]] = {}
    if not os.path.isdir(directory):
        return found
    for top, dirs, files in os.walk(directory):
        dirs.sort()
        for fname in sorted(files):
            if not fname.endswith((".json", ".yaml", ".yml")):
                continue
            path = os.path.join(top, fname)
            doc = load_document(path)
            docs = doc.get("items", [doc]) if isinstance(doc, dict) else doc if isinstance(doc, list) else []
            for d in docs:
                if isinstance(d, dict) and d.get("kind") == kind:
                    meta = d.get("metadata") or {}
                    found[(meta.get("namespace") or "default", meta.get("name", ""))] = (path, d)
    return found


class LocalSource:
    def __init__(self, nad_dir: Optional[str] = None, pod_dir: Optional[str] = None):
        self.nad_dir = nad_dir
        self.pod_dir = pod_dir
        self._nads: Optional[dict] = None

    def get_nad(self, namespace: str, name: str) -> dict:
        if self._nads is None:
            self._nads = _documents(self.nad_dir, NAD_KIND) if self.nad_dir else {}
        hit = self._nads.get((namespace, name))
        if hit is None:
            where = f"in {self.nad_dir}" if self.nad_dir else "(no nadDir and no kubeconfig configured)"
            raise CNIError(NOT_FOUND, f"NetworkAttachmentDefinition {namespace}/{name} not found {where}",
                           f"namespace: {namespace}; name: {name}")
        return hit[1]

    def _pod_file(self, namespace: str, name: str) -> Optional[tuple[str, dict]]:
        if not self.pod_dir:
            return None
        return _documents(self.pod_dir, "Pod").get((namespace, name))

    def get_pod(self, namespace: str, name: str, uid: str = "") -> Optional[dict]:
        hit = self._pod_file(namespace, name)
        return hit[1] if hit else None

    def set_network_status(self, namespace: str, name: str, status: str, uid: str = "") -> None:
        hit = self._pod_file(namespace, name)
        if not hit:
            return
        path, pod = hit
        pod.setdefault("metadata", {}).setdefault("annotations", {})[STATUS_ANNOTATION] = status
        if path.endswith((".yaml", ".yml")):
            import yaml

            atomic_write(path, yaml.safe_dump(pod, sort_keys=False))
        else:
            atomic_write(path, json.dumps(pod, indent=2) + "\n")
