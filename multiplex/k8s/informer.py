"""Informers: one kind of object kept current in memory, by a list and a watch (Kubernetes) or by a
directory poll (multiplex/k8s/objects.py LocalObjects). Both share `ObjectCache`, so handlers,
sync and lag behave the same whichever feeds it.

The Kubernetes informer, per resource (PODS, NADS, NODES or any custom Resource), namespace and
selectors:

    list (paged) ──▶ store ──▶ watch from the list's resourceVersion (bookmarks, timeoutSeconds)
       ▲                          │ events applied in order; the last resourceVersion kept
       │                          ├─ server ends the watch / connection cut: watch again from the
       │                          │  last resourceVersion (no relist), jittered backoff on failure
       └── 410 Gone (HTTP or an ERROR event) ┘ relist; the difference with the store is delivered
                                                as events (DELETED gone, ADDED new, MODIFIED changed)

Design choices:
- One thread per informer; handlers run on it, in event order. A handler that raises is logged
  and the informer carries on (one bad controller does not stop the cache).
- Nothing is delivered twice: an ADDED/MODIFIED whose object has the resourceVersion already held
  (a replay after a resume) is dropped, a DELETED for an unknown object too, and a MODIFIED for an
  unknown object (it entered the selector) is delivered as ADDED.
- The API unreachable never ends the thread: it logs, backs off (jittered, capped) and retries;
  the store keeps serving what it had, `lag()` grows.
- `lag()` is 0 while a watch stream is open (its read timeout, timeoutSeconds + a margin, bounds
  how long a dead connection can pass for a live one), else the seconds since the stream was lost.
- Handlers added later do not get a replay: read `list()` after adding one.
"""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Callable, Optional

from ..util import log as _log
from .errors import Expired, KubeError

#: an event handler: (event type "ADDED" | "MODIFIED" | "DELETED", the object)
Handler = Callable[[str, dict], None]
Key = tuple[str, str]


def object_key(obj: dict) -> Key:
    """(namespace, name); namespace "" for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _rv(obj: Optional[dict]) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


class ObjectCache:
    """A thread-safe store of one kind's objects with handlers, sync state and lag.
    Subclasses feed it through `_apply` (one event) and `_replace_all` (a full listing)."""

    def __init__(self, kind: str, log: Optional[_log.Logger] = None):
        self.kind = kind
        self.log = log or _log.get()
        self.stats: Counter = Counter()   # lists, relists, watches, bookmarks, events, errors
        self._objects: dict[Key, dict] = {}
        self._handlers: list[Handler] = []
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._current_since: Optional[float] = None   # a stream is open: current since then
        self._proved = time.monotonic()

    # --- the Informer protocol (multiplex/k8s/objects.py) -------------------------------------
    def list(self) -> list[dict]:
        with self._lock:
            return list(self._objects.values())

    def get(self, namespace: Optional[str], name: str) -> Optional[dict]:
        with self._lock:
            return self._objects.get((namespace or "", name))

    def add_handler(self, handler: Handler) -> None:
        with self._lock:
            self._handlers.append(handler)

    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def lag(self) -> float:
        if self._current_since is not None:
            return 0.0
        return max(0.0, time.monotonic() - self._proved)

    # --- feeding it ---------------------------------------------------------------------------
    def _prove(self) -> None:
        self._proved = time.monotonic()

    def _apply(self, etype: str, obj: dict) -> None:
        """One watch event: store it and tell the handlers, unless it changes nothing."""
        key = object_key(obj)
        with self._lock:
            old = self._objects.get(key)
            if etype == "DELETED":
                if old is None:
                    return
                del self._objects[key]
            else:
                if old is not None and _rv(old) and _rv(old) == _rv(obj):
                    return
                self._objects[key] = obj
                etype = "ADDED" if old is None else "MODIFIED"
        self.stats["events"] += 1
        self._deliver([(etype, obj)])

    def _replace_all(self, objects: list[dict], same: Callable[[dict, dict], bool]) -> int:
        """A full listing replaces the store; the differences are delivered as events (deleted
        objects with their last known state). `same(old, new)` says an object did not change.
        Returns how many events that made."""
        new = {object_key(o): o for o in objects}
        with self._lock:
            old = self._objects
            self._objects = new
        events = [("DELETED", o) for k, o in old.items() if k not in new]
        for k, o in new.items():
            if k not in old:
                events.append(("ADDED", o))
            elif not same(old[k], o):
                events.append(("MODIFIED", o))
        self._prove()
        self._deliver(events)
        self._synced.set()      # after the delivery: a waiter on synced() finds its handlers called
        return len(events)

    def _deliver(self, events: list[tuple[str, dict]]) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for etype, obj in events:
            for h in handlers:
                try:
                    h(etype, obj)
                except Exception as e:  # noqa: BLE001 - a handler's bug must not stop the cache
                    self.log.error("informer handler failed", kind=self.kind, event=etype,
                                   object="/".join(p for p in object_key(obj) if p),
                                   error=f"{type(e).__name__}: {e}")


class Informer(ObjectCache):
    """One Kubernetes resource kept current by list + watch on a KubeClient (see the module doc).
    `start()` runs it on a thread of its own; `stop()` ends it (closing an open watch)."""

    def __init__(self, client, resource, kind: str = "", *, namespace: Optional[str] = None,
                 label_selector: str = "", field_selector: str = "", watch_timeout: int = 300,
                 backoff: float = 0.5, max_backoff: float = 30.0, log: Optional[_log.Logger] = None):
        super().__init__(kind or resource.plural, log)
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = int(watch_timeout)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.resource_version = ""     # the last one seen: where a watch resumes
        self._stop = threading.Event()
        self._stream = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Informer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"informer:{self.kind}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if not self.resource_version:
                    self._relist()
                self._watch()
                failures = 0
            except Expired as e:
                # history compacted past our resourceVersion: only a relist can catch up
                self.log.info("watch resourceVersion expired, relisting", kind=self.kind,
                              resource_version=self.resource_version, reason=e.msg)
                self.resource_version = ""
            except KubeError as e:
                failures += 1
                self._pause(failures, f"{type(e).__name__}: {e.msg}")
            except Exception as e:  # noqa: BLE001 - the thread must live on whatever went wrong
                failures += 1
                self._pause(failures, f"{type(e).__name__}: {e}")

    def _pause(self, failures: int, error: str) -> None:
        self.stats["errors"] += 1
        delay = min(self.max_backoff, self.backoff * (2 ** min(failures - 1, 16))) * random.uniform(0.5, 1.0)
        self.log.warning("informer list/watch failed, retrying", kind=self.kind, error=error,
                         failures=failures, delay=round(delay, 3), lag=round(self.lag(), 1))
        self._stop.wait(delay)

    def _relist(self) -> None:
        listed = self.client.list_resource(self.resource, self.namespace, self.label_selector, self.field_selector)
        self.stats["relists" if self.synced() else "lists"] += 1
        changed = self._replace_all(list(listed), lambda a, b: bool(_rv(a)) and _rv(a) == _rv(b))
        self.resource_version = listed.resource_version
        self.log.debug("informer listed", kind=self.kind, objects=len(listed), changes=changed,
                       resource_version=self.resource_version)

    def _watch(self) -> None:
        if self._stop.is_set():
            return
        stream = self.client.watch(self.resource, self.namespace, self.resource_version,
                                   label_selector=self.label_selector, field_selector=self.field_selector,
                                   timeout_seconds=self.watch_timeout)
        self._stream = stream
        if self._stop.is_set():       # stop() ran while the watch was opening
            stream.close()
            return
        self.stats["watches"] += 1
        opened = self._current_since = time.monotonic()
        self._prove()
        try:
            for etype, obj in stream:
                rv = _rv(obj)
                if etype == "BOOKMARK":
                    self.stats["bookmarks"] += 1
                elif etype in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(etype, obj)
                if rv:
                    self.resource_version = rv
                self._prove()
        finally:
            self._stream = None
            self._current_since = None
            self._prove()     # the stream was current until now
        if time.monotonic() - opened < 1.0:
            self._stop.wait(self.backoff)   # a server that ends every watch at once is not spun on
