"""Fake CNI plugins for tests: an executable one (fakeplugin.py) and in-process built-ins (inproc).

`install(bin_dir, *names)` puts executables named `names` on a CNI_PATH of the test's own, each
running fakeplugin.py with this interpreter. The `fake_builtins` fixture registers the in-process fakes
as the only built-in plugins for one test. `records(path)` reads what the fakes recorded.
"""
from __future__ import annotations

import json
import os
import shlex
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "fakeplugin.py")

BUILTINS = {
    "fake-builtin": "tests.fakeplugins.inproc:plain",
    "fake-builtin-mac": "tests.fakeplugins.inproc:with_mac",
}


def install(bin_dir, *names: str) -> str:
    """Executables `names` in `bin_dir` (created), each the fake plugin. Returns bin_dir as str."""
    bin_dir = str(bin_dir)
    os.makedirs(bin_dir, exist_ok=True)
    for name in names:
        p = os.path.join(bin_dir, name)
        with open(p, "w") as f:
            f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(SCRIPT)} \"$@\"\n")
        os.chmod(p, 0o755)
    return bin_dir


@pytest.fixture
def fake_builtins(monkeypatch):
    """The in-process fakes as the only built-in plugins, for one test (import this fixture)."""
    from multiplex.cni import registry

    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(HERE)))
    registry.builtin.cache_clear()
    monkeypatch.setattr(registry, "_entry_points", lambda: dict(BUILTINS))
    yield BUILTINS
    registry.builtin.cache_clear()  # the real entry points come back with monkeypatch's undo


def records(path) -> list[dict]:
    """The calls a fake recorded, in order."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
