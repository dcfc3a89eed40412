"""The node daemon's metrics (prometheus-client) and its health endpoints.

CONTRACT (the server and the services call these; the body is filled in by the daemon's
assembly): every method is cheap and thread-safe.
"""
from __future__ import annotations


class Metrics:
    def request_queued(self, delta: int) -> None:
        """A call entered (+1) or left (-1) the queue."""

    def request_inflight(self, delta: int) -> None:
        """A call started (+1) or ended (-1) on a worker."""

    def request_rejected(self, reason: str) -> None:
        """A call was refused at once (reason: "queue-full", "stopping")."""

    def observe_request(self, command: str, seconds: float, code: int) -> None:
        """A CNI call answered: its command, its time from accept to answer, 0 or its CNI code."""

    def observe_plugin(self, type_name: str, command: str, seconds: float, code: int) -> None:
        """One plugin call inside a CNI call (cni/context.py Services.observe_plugin)."""
