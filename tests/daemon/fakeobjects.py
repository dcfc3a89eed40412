"""A small in-memory ObjectSource (multiplex/k8s/objects.py) for the controller tests: objects
put and removed by the test, events delivered synchronously on the test's thread."""
from __future__ import annotations

import threading
import time
from typing import Optional

from multiplex.k8s.objects import merge_annotations


class FakeInformer:
    def __init__(self, kind: str):
        self.kind = kind
        self.objects: dict[tuple[Optional[str], str], dict] = {}
        self.handlers: list = []
        self._synced = threading.Event()
        self._synced.set()
        self.proved = time.monotonic()

    def list(self) -> list[dict]:
        return list(self.objects.values())

    def get(self, namespace: Optional[str], name: str) -> Optional[dict]:
        return self.objects.get((namespace, name))

    def add_handler(self, handler) -> None:
        self.handlers.append(handler)

    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def lag(self) -> float:
        return time.monotonic() - self.proved

    def put(self, obj: dict) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace"), meta["name"])
        event = "MODIFIED" if key in self.objects else "ADDED"
        self.objects[key] = obj
        for h in list(self.handlers):
            h(event, obj)

    def remove(self, name: str, namespace: Optional[str] = None) -> None:
        obj = self.objects.pop((namespace, name))
        for h in list(self.handlers):
            h("DELETED", obj)


class FakeObjects:
    def __init__(self):
        self.informers: dict[str, FakeInformer] = {}
        self.patches: list[tuple[str, dict]] = []

    def informer(self, kind: str) -> FakeInformer:
        return self.informers.setdefault(kind, FakeInformer(kind))

    def started(self) -> dict:
        return dict(self.informers)

    def patch_node_annotations(self, node: str, annotations: dict) -> None:
        self.patches.append((node, dict(annotations)))
        inf = self.informer("nodes")
        obj = inf.get(None, node) or {"metadata": {"name": node}}
        meta = dict(obj["metadata"])
        meta["annotations"] = merge_annotations(meta.get("annotations"), annotations)
        inf.put(dict(obj, metadata=meta))

    def stop(self) -> None:
        pass
