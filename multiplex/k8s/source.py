"""Pods and NetworkAttachmentDefinitions from the Kubernetes API: the `Source` the orchestrator
reads (see multiplex.meta.sources), on a KubeClient.

- `get_nad(ns, name)`: the NAD; NotFound (107) naming namespace and name when it is missing.
- `get_pod(ns, name)`: the pod, or None when it does not exist (a static pod whose mirror pod is
  not there yet still gets the cluster network; the UID check needs a pod to compare with).
- `set_network_status(ns, name, text)`: patches the network-status annotation, with the UID read
  by get_pod as a precondition so a pod recreated under the same name is never written to.
API unreachable: Unavailable (11) naming the server, after the client's bounded retries.
"""
from __future__ import annotations

from typing import Optional

from ..util import log as _log
from .client import KubeClient
from .errors import NotFound

STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"


class KubeSource:
    def __init__(self, kubeconfig: Optional[str] = None, timeout: float = 10.0, retries: int = 3,
                 client: Optional[KubeClient] = None, log: Optional[_log.Logger] = None):
        #: the call's logger when the source serves one call (the meta plugin's), else the process's
        self.log = log or _log.get()
        self.client = client or KubeClient(kubeconfig, timeout=timeout, retries=retries, log=self.log)
        self._uids: dict[tuple[str, str], str] = {}

    def get_nad(self, namespace: str, name: str) -> dict:
        return self.client.get_nad(namespace, name)

    def get_pod(self, namespace: str, name: str, uid: str = "") -> Optional[dict]:
        """The pod as the API has it now (`uid` matters only to caches: the API is current)."""
        try:
            pod = self.client.get_pod(namespace, name)
        except NotFound:
            self.log.warning("pod not found in the API; only the cluster network and defaults apply",
                              pod=f"{namespace}/{name}", server=self.client.server)
            return None
        uid = (pod.get("metadata") or {}).get("uid")
        if uid:
            self._uids[(namespace, name)] = uid
        return pod

    def set_network_status(self, namespace: str, name: str, status: str, uid: str = "") -> None:
        """The precondition is the UID of the pod this call read, else the runtime's `uid`."""
        self.client.patch_pod_annotations(namespace, name, {STATUS_ANNOTATION: status},
                                          uid=self._uids.get((namespace, name), "") or uid)
