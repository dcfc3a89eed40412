"""In-process fake plugins: what a built-in delegate looks like to the chain (same `fake` config
as fakeplugin.py). Tests register them as built-ins with `fakeplugins.builtins(monkeypatch)`."""
from __future__ import annotations

import time

from multiplex.cni.errors import CNIError
from multiplex.cni.plugin import Plugin
from multiplex.cni.request import Request
from multiplex.cni.types import Result

from .fakeplugin import FakeError, record, respond


class FakeBuiltin(Plugin):
    def __init__(self, type_name: str, capabilities: frozenset[str] = frozenset()):
        self.type_name = type_name
        self.capabilities = capabilities

    def _call(self, req: Request) -> Result | None:
        start = time.monotonic()
        env = {k: v for k, v in req.env(base={}).items() if k.startswith("CNI_")}
        try:
            out = respond(req.command, req.config)
        except FakeError as e:
            raise CNIError.from_dict(e.error) from None
        finally:
            record(req.config, req.command, env, start)
        return Result.from_dict(out) if out is not None else None

    def add(self, req: Request) -> Result:
        return self._call(req)  # type: ignore[return-value]

    def delete(self, req: Request) -> None:
        self._call(req)

    def check(self, req: Request) -> None:
        self._call(req)

    def status(self, req: Request) -> None:
        self._call(req)

    def gc(self, req: Request) -> None:
        self._call(req)


plain = FakeBuiltin("fake-builtin")
with_mac = FakeBuiltin("fake-builtin-mac", frozenset({"mac", "ips"}))
