"""The Source of one CNI call served by the node daemon: pods and NADs from its informers.

`CachedSource(objects, client, log)` answers what multiplex.k8s.source.KubeSource answers, with the
same errors, but reads the daemon's watch caches (multiplex/k8s/objects.py): an ADD whose pod and
NADs are cached reads nothing from the API. It is one per call and costs a few attribute writes.

- `get_nad(ns, name)`: the "nads" informer; on a miss (a NAD created a moment ago, or the
  informer not synced yet) one GET, as KubeSource does: NotFound (107) naming it when it is missing.
- `get_pod(ns, name)`: the "pods" informer (this node's pods); on a miss one GET, None with
  KubeSource's warning when the pod does not exist. The UID it answers with is remembered either way.
- `set_network_status`: KubeSource's PATCH, with the pod's UID as precondition.

A miss is asked of the API once per call and object: the answer (or the NotFound) is kept for the
rest of the call, so a call never GETs the same object twice. Design choice: a cache hit is trusted
even when the informer lags; the object then is at most the informer's lag old, which for pods and
NADs (their networks annotation and config are set when they are created) is what a GET moments
earlier would have said.
"""
from __future__ import annotations

from typing import Optional

from ..util import log as _log
from .errors import NotFound
from .source import KubeSource


class CachedSource(KubeSource):
    """KubeSource whose reads come from the daemon's informers first."""

    def __init__(self, objects, client, log: Optional[_log.Logger] = None):
        super().__init__(client=client, log=log)
        self.objects = objects
        #: what this call read from the API (on a miss): (kind, ns, name) -> object, or None if missing
        self._fetched: dict[tuple[str, str, str], Optional[dict]] = {}
        self.hits = 0
        self.misses = 0

    def _cached(self, kind: str, namespace: str, name: str) -> Optional[dict]:
        try:
            informer = self.objects.informer(kind)
        except ValueError:
            return None
        obj = informer.get(namespace, name)
        if obj is not None:
            self.hits += 1
        return obj

    def get_nad(self, namespace: str, name: str) -> dict:
        obj = self._cached("nads", namespace, name)
        if obj is not None:
            return obj
        key = ("nads", namespace, name)
        if key in self._fetched:
            got = self._fetched[key]
            if got is None:
                raise NotFound(f"NetworkAttachmentDefinition {namespace}/{name} not found",
                               f"kind: NetworkAttachmentDefinition; namespace: {namespace}; name: {name}", 404)
            return got
        self.misses += 1
        try:
            got = super().get_nad(namespace, name)
        except NotFound:
            self._fetched[key] = None
            raise
        self._fetched[key] = got
        return got

    def get_pod(self, namespace: str, name: str, uid: str = "") -> Optional[dict]:
        """The cached pod; a miss - not cached, or cached under another UID than the runtime's
        `uid` (the pod was recreated under its name and the watch has not caught up) - is one GET."""
        pod = self._cached("pods", namespace, name)
        if pod is not None and uid and (pod.get("metadata") or {}).get("uid") not in (None, "", uid):
            pod = None
        key = ("pods", namespace, name)
        if pod is None:
            if key in self._fetched:
                return self._fetched[key]
            self.misses += 1
            pod = super().get_pod(namespace, name)   # one GET; None (with the warning) when missing
            self._fetched[key] = pod
            return pod
        uid = (pod.get("metadata") or {}).get("uid")
        if uid:
            self._uids[(namespace, name)] = uid
        return pod
