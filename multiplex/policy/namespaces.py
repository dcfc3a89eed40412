"""A namespace's labels, for hooks that select namespaces by label (nad_namespaces.py).

Where they come from, in order (the first that the call's source offers):

1. `source.get_namespace(name)` when a source has one (the place this should move to: the
   `Source` protocol in multiplex/meta/sources.py);
2. the node daemon's watch cache, when its ObjectSource watches the kind "namespaces"
   (`register_namespaces(objects)` below adds it; CachedSource exposes `objects`);
3. the Kubernetes API: one GET of the namespace (a source with a `client`: KubeSource, or the
   daemon's CachedSource on a miss); RBAC: `get` on `namespaces` for multiplex's account;
4. local files (LocalSource, the lab): objects of kind `Namespace` anywhere under nadDir or podDir.

A namespace that does not exist (no object in the API, no file locally) has only the label every
namespace gets from Kubernetes, `kubernetes.io/metadata.name: <name>`: a selector on that label,
or on nothing, still means what it says. An API that cannot be reached is an error (code 11), so
a hook never allows because it could not look.
"""
from __future__ import annotations

from typing import Any, Optional

#: The label Kubernetes puts on every namespace (since 1.21): selectors may name a namespace by it.
NAME_LABEL = "kubernetes.io/metadata.name"
KIND = "namespaces"


def namespace_labels(source: Any, name: str) -> dict[str, str]:
    """The labels of namespace `name` (with NAME_LABEL always present), from `source`."""
    obj = namespace_object(source, name)
    labels = ((obj or {}).get("metadata") or {}).get("labels")
    out = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
    out.setdefault(NAME_LABEL, name)
    return out


def namespace_object(source: Any, name: str) -> Optional[dict]:
    """The Namespace object, or None when the source has none of that name."""
    getter = getattr(source, "get_namespace", None)
    if callable(getter):
        return getter(name)
    objects = getattr(source, "objects", None)
    if objects is not None:
        try:
            informer = objects.informer(KIND)
        except ValueError:      # the daemon does not watch namespaces: ask the API
            informer = None
        if informer is not None and informer.synced():
            return informer.get(None, name)
    client = getattr(source, "client", None)
    if client is not None:
        return _get(client, name)
    return _local(source, name)


def _get(client: Any, name: str) -> Optional[dict]:
    from ..k8s.client import Resource
    from ..k8s.errors import NotFound

    try:
        return client.get_resource(Resource("", "v1", "namespaces", "namespace"), None, name)
    except NotFound:
        return None


def _local(source: Any, name: str) -> Optional[dict]:
    """Namespace files under the LocalSource's nadDir and podDir (NADs' and pods' neighbours)."""
    from ..meta.sources import _documents

    for directory in (getattr(source, "nad_dir", None), getattr(source, "pod_dir", None)):
        if not directory:
            continue
        for (_ns, obj_name), (_path, obj) in _documents(directory, "Namespace").items():
            if obj_name == name:
                return obj
    return None


def register_namespaces(objects: Any) -> None:
    """Have the daemon's ObjectSource (KubeObjects or LocalObjects) watch namespaces, so the hook
    reads labels from its cache instead of one GET per ADD. Idempotent; a kind already watched
    (another controller registered it first, MultiNetworkPolicy's namespaceSelector needs it too)
    is left as it is."""
    from ..k8s.objects import KubeObjects, KubeKind, LocalKind, LocalObjects

    if KIND in getattr(objects, "kinds", {}):
        return
    try:
        if isinstance(objects, KubeObjects):
            from ..k8s.client import Resource

            objects.register(KIND, KubeKind(Resource("", "v1", "namespaces", "namespace")))
        elif isinstance(objects, LocalObjects):
            objects.register(KIND, LocalKind("Namespace", namespaced=False))
    except ValueError:
        pass    # started meanwhile by someone else: it is watched, which is all we need
