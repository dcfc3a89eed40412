"""A handler for informers (multiplex.k8s.objects.Informer.add_handler) that records what it is
given, for tests that check which events a watch or a directory poll delivered, and in what order.
Shared by the Kubernetes informer's tests and LocalObjects' so both are read the same way."""
from __future__ import annotations

import threading


class Recorder:
    """(event type, namespace, name) of every event, in delivery order ("" for a cluster-scoped
    object's namespace). Called on the informer's thread, read on the test's: under a lock."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, etype: str, obj: dict) -> None:
        meta = obj["metadata"]
        with self.lock:
            self.events.append((etype, meta.get("namespace", ""), meta["name"]))

    def snapshot(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return list(self.events)

    def of(self, name: str) -> list[str]:
        """The event types delivered for objects named `name` (any namespace), in order."""
        with self.lock:
            return [t for t, _, n in self.events if n == name]

    def clear(self) -> None:
        """Forget what came so far (an informer's first list, before the changes a test makes)."""
        with self.lock:
            self.events.clear()
