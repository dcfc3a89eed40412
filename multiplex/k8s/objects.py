"""Where the node daemon's watched objects come from: the Kubernetes API (informers) or, without a
cluster (the lab, tests), a local directory. One interface for both, so controllers never know
which one they read.

KINDS names what can be watched: "pods" (this node's pods only: fieldSelector spec.nodeName),
"nads" (NetworkAttachmentDefinitions, every namespace), "nodes". On the Kubernetes API the
cluster IPAM's kinds are known too, started only when first used (a cluster without the IPAM CRDs
never watches them): "ippools" (every IPPool) and "ipblocks" (only the IPBlocks this node has a
stake in, by their label `node.ipam.multiplex.dev/<node>`: the kubernetes IPAM store's hot path,
multiplex/ipam/kube/cache.py, and the routed delegate's routes read them). Later issues add kinds
(MultiNetworkPolicies, namespaces) the same way.

A local directory holds one subdirectory per kind (`pods/`, `nads/`, `nodes/`), each with JSON or
YAML files of objects as the API would serve them (a file may hold one object, a list, or a
`{"items": [...]}`); it is polled (mtime and size) about once a second.

Implementations: `KubeObjects` (one multiplex.k8s.informer.Informer per kind, list + watch) and
`LocalObjects` (one poll thread for every kind). Both take more kinds with `register()` before a
kind's first use (cluster IPAM's IPPools and IPBlocks, policies), so the kinds above are the
defaults, not a closed list.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

from ..util import log as _log

KINDS = ("pods", "nads", "nodes")

#: an event handler: (event type "ADDED" | "MODIFIED" | "DELETED", the object)
Handler = Callable[[str, dict], None]


class Informer(Protocol):
    """One kind of object, kept current by a watch (or a directory poll)."""

    kind: str

    def list(self) -> list[dict]:
        """Every object known now (copies are not made: callers do not modify them)."""

    def get(self, namespace: Optional[str], name: str) -> Optional[dict]:
        """One object, or None when it is not (yet) known."""

    def add_handler(self, handler: Handler) -> None:
        """Call `handler` for every later event (on the informer's thread; keep it short)."""

    def synced(self) -> bool:
        """True once the first list has been read (and after every relist)."""

    def wait_synced(self, timeout: float) -> bool:
        """Wait until synced(); False when `timeout` passed first."""

    def lag(self) -> float:
        """Seconds since the watch last proved itself current (an event, a bookmark, a relist)."""


class ObjectSource(Protocol):
    """The daemon's view of the cluster (or of the local directory)."""

    def informer(self, kind: str) -> Informer:
        """The informer of `kind` (one of KINDS), started on first use."""

    def patch_node_annotations(self, node: str, annotations: dict[str, Optional[str]]) -> None:
        """Merge `annotations` into the Node `node` (None removes one). Locally: the node's file
        `nodes/<node>.json`, created when missing."""

    def stop(self) -> None:
        """Stop every watch/poll thread."""


def merge_annotations(current: Optional[dict], patch: dict[str, Optional[str]]) -> dict:
    """`current` annotations with `patch` merged in as a JSON merge patch does it on the API
    server (None removes a key): what patch_node_annotations makes of a Node, for every source."""
    merged = dict(current or {})
    for k, v in patch.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


# --- the Kubernetes API ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KubeKind:
    """How a kind is watched: its Resource, and the selectors (`{node}` in the field selector is
    this node's name, so "pods" watches only the pods scheduled here)."""
    resource: object                  # multiplex.k8s.client.Resource
    field_selector: str = ""
    #: a selector with `{node}`, or a function of the node name (a label key made from it)
    label_selector: Union[str, Callable[[str], str]] = ""
    namespace: Optional[str] = None   # None: every namespace (or cluster-scoped)

    def labels_for(self, node: str) -> str:
        if callable(self.label_selector):
            return self.label_selector(node)
        return self.label_selector.format(node=node)


def _ipam_stake(node: str) -> str:
    """The IPBlocks `node` has a stake in (its label key, shortened and hashed past 63 characters)."""
    from ..ipam.kube.cache import stake_selector

    return stake_selector(node)


def _kube_kinds() -> dict[str, KubeKind]:
    from .client import NADS, NODES, PODS, custom

    # the IPAM's group and plurals (multiplex/ipam/kube/model.py), spelt here to keep k8s/ from
    # importing the IPAM at start; tests/k8s/test_ipam_kube_cache.py checks they agree
    return {"pods": KubeKind(PODS, field_selector="spec.nodeName={node}"),
            "nads": KubeKind(NADS),
            "nodes": KubeKind(NODES),
            "ippools": KubeKind(custom(IPAM_GROUP, IPAM_VERSION, "ippools")),
            "ipblocks": KubeKind(custom(IPAM_GROUP, IPAM_VERSION, "ipblocks"), label_selector=_ipam_stake)}


IPAM_GROUP, IPAM_VERSION = "ipam.multiplex.dev", "v1alpha1"


class _StartedKinds:
    """What both ObjectSources keep alike: the kinds they know (`kinds`, more with `register()`
    before a kind's first use) and the informers started so far, read under one lock. Shared so
    that "synced" and "lags" mean the same thing whether the objects come from a cluster or a
    directory (the daemon's /readyz and metrics read them)."""

    kinds: dict
    _informers: dict
    _lock: threading.Lock
    #: how the error for a late register() says the kind is in use ("watched", "read")
    _in_use = "watched"

    def register(self, kind: str, spec) -> None:
        """Know another kind (a custom resource) under the name `kind`."""
        with self._lock:
            if kind in self._informers:
                raise ValueError(f"kind {kind!r} is already {self._in_use}; register it before its first use")
            self.kinds[kind] = spec

    def started(self) -> dict:
        """kind -> its informer, for the informers started so far."""
        with self._lock:
            return dict(self._informers)

    def synced(self) -> bool:
        """Every started informer has read its first list."""
        return all(i.synced() for i in self.started().values())

    def lags(self) -> dict[str, float]:
        return {k: i.lag() for k, i in self.started().items()}


class KubeObjects(_StartedKinds):
    """The ObjectSource of a node in a cluster: one Informer per kind, started on first use.
    `client` is a KubeClient, or a kubeconfig path (None: in-cluster or the default kubeconfig).
    More kinds (IPPools, IPBlocks, policies) plug in with `register()` before their first use."""

    def __init__(self, client: Union[object, str, None], node_name: str, log: Optional[_log.Logger] = None, *,
                 watch_timeout: int = 300, backoff: float = 0.5, max_backoff: float = 30.0):
        from .client import KubeClient

        self.log = log or _log.get()
        self.client = client if isinstance(client, KubeClient) else KubeClient(client, log=self.log)
        self.node_name = node_name
        self.kinds: dict[str, KubeKind] = _kube_kinds()
        self._options = {"watch_timeout": watch_timeout, "backoff": backoff, "max_backoff": max_backoff}
        self._informers: dict = {}
        self._lock = threading.Lock()

    def informer(self, kind: str):
        from .informer import Informer

        with self._lock:
            inf = self._informers.get(kind)
            if inf is not None:
                return inf
            spec = self.kinds.get(kind)
            if spec is None:
                raise ValueError(f"unknown kind {kind!r} to watch; known: {', '.join(sorted(self.kinds))}")
            needs_node = "{node}" in spec.field_selector or callable(spec.label_selector) \
                or "{node}" in spec.label_selector
            if needs_node and not self.node_name:
                raise ValueError(f"watching {kind} needs this node's name (the daemon's --node-name)")
            inf = Informer(self.client, spec.resource, kind, namespace=spec.namespace,
                           label_selector=spec.labels_for(self.node_name),
                           field_selector=spec.field_selector.format(node=self.node_name),
                           log=self.log, **self._options)
            self._informers[kind] = inf
            inf.start()     # under the lock: two first users never start two threads
        return inf

    def patch_node_annotations(self, node: str, annotations: dict[str, Optional[str]]) -> None:
        self.client.patch_node_annotations(node, annotations)

    def stop(self) -> None:
        for inf in self.started().values():
            inf.stop()


# --- a local directory ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalKind:
    """A kind read from files: the `kind` field of its objects, and whether it is namespaced
    (objects without a namespace are in "default", as multiplex.meta.sources reads them)."""
    object_kind: str
    namespaced: bool = True


LOCAL_KINDS: dict[str, LocalKind] = {
    "pods": LocalKind("Pod"),
    "nads": LocalKind("NetworkAttachmentDefinition"),
    "nodes": LocalKind("Node", namespaced=False),
}

_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class LocalObjects(_StartedKinds):
    """The ObjectSource without a cluster: objects from files under `directory`, read with the
    rules of multiplex.meta.sources (JSON or YAML; one object, a list or an `{"items": [...]}`;
    the `kind` field decides which informer an object belongs to, wherever the file is, though
    `pods/`, `nads/` and `nodes/` is the layout). One thread polls the tree every `interval`
    seconds (path, inode, mtime and size of every file): on a change every started kind is read
    again and the differences become events. A file that cannot be parsed (half written) leaves
    the previous state in place and is read again at the next change."""

    _in_use = "read"

    def __init__(self, directory: str, log: Optional[_log.Logger] = None, interval: float = 1.0):
        self.directory = directory
        self.log = log or _log.get()
        self.interval = float(interval)
        self.kinds: dict[str, LocalKind] = dict(LOCAL_KINDS)
        self._informers: dict = {}
        self._unread: set[str] = set()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._signature: Optional[tuple] = None
        self._last_error = ""

    def informer(self, kind: str):
        from .informer import ObjectCache

        with self._lock:
            inf = self._informers.get(kind)
            if inf is None:
                if kind not in self.kinds:
                    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(sorted(self.kinds))}")
                inf = ObjectCache(kind, self.log)
                self._informers[kind] = inf
                self._unread.add(kind)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="local-objects", daemon=True)
                self._thread.start()
        self._wake.set()
        return inf

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    # --- the poll -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - the poll thread lives on
                self.log.error("local objects poll failed", directory=self.directory, error=f"{type(e).__name__}: {e}")
            self._wake.wait(self.interval)
            self._wake.clear()

    def _tree_signature(self) -> tuple:
        entries = []
        for top, dirs, files in os.walk(self.directory):
            dirs.sort()
            for f in sorted(files):
                if f.endswith((".json", ".yaml", ".yml")) and not f.startswith(".tmp-"):
                    try:
                        st = os.stat(os.path.join(top, f))
                    except OSError:
                        continue   # gone between the listing and the stat: the next poll sees it
                    entries.append((os.path.join(top, f), st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(entries)

    def poll(self) -> None:
        """Read the tree again if it changed (or a kind was never read); deliver the differences.
        Runs on the poll thread; callable directly (tests, a one-shot reader)."""
        from ..cni.errors import CNIError
        from ..meta.sources import _documents

        signature = self._tree_signature()
        with self._lock:
            informers = dict(self._informers)
            unread = set(self._unread)
        if signature == self._signature and not unread:
            for inf in informers.values():
                inf._prove()
            return
        try:
            read = {kind: self._objects(_documents(self.directory, self.kinds[kind].object_kind), self.kinds[kind])
                    for kind in informers}
        except CNIError as e:
            if e.msg != self._last_error:
                self.log.warning("cannot read local objects; keeping the previous state", directory=self.directory,
                                 error=e.msg)
                self._last_error = e.msg
            return
        self._last_error = ""
        self._signature = signature
        with self._lock:
            self._unread -= set(informers)
        for kind, objects in read.items():
            informers[kind]._replace_all(objects, lambda a, b: a == b)

    @staticmethod
    def _objects(found: dict, spec: LocalKind) -> list[dict]:
        """The objects as the API would serve them: namespaced ones in "default" when the file
        names none, cluster-scoped ones without a namespace."""
        out = []
        for _path, obj in found.values():
            meta = dict(obj.get("metadata") or {})
            if spec.namespaced:
                meta["namespace"] = meta.get("namespace") or "default"
            else:
                meta.pop("namespace", None)
            out.append(dict(obj, metadata=meta))
        return out

    # --- writes -------------------------------------------------------------------------------
    def node_file(self, node: str) -> str:
        if not _NODE_NAME.match(node or "") or len(node) > 253:
            raise ValueError(f"invalid node name {node!r}: a DNS subdomain (lower case letters, digits, '-', '.')")
        return os.path.join(self.directory, "nodes", f"{node}.json")

    def patch_node_annotations(self, node: str, annotations: dict[str, Optional[str]]) -> None:
        """Merge `annotations` into `nodes/<node>.json` (written atomically; a minimal Node when
        the file is missing). The poll thread delivers the change as an event."""
        from ..meta.sources import load_document
        from ..util.files import atomic_write

        path = self.node_file(node)
        with self._write_lock:
            if os.path.exists(path):
                obj = load_document(path)
                if not isinstance(obj, dict) or obj.get("kind") != "Node":
                    raise ValueError(f"{path} does not hold one Node object; cannot annotate node {node}")
            else:
                obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}
            meta = obj.setdefault("metadata", {})
            meta["annotations"] = merge_annotations(meta.get("annotations"), annotations)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, json.dumps(obj, indent=2) + "\n", mode=0o644)
        self._wake.set()
