"""Fixtures for the adversarial tier: one simulated node (netns) per module, pod netns on demand,
and the corpus's summary table printed at the end of the run (outcome counts by kind)."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest


class NetnsPool:
    """Makes network namespaces named uniquely for this run; `close()` deletes every one made."""

    def __init__(self, prefix: str):
        self.prefix = f"{prefix}{os.getpid() % 100000}"
        self.made: list[str] = []

    def make(self, kind: str = "p") -> str:
        name = f"mpxa{self.prefix}{kind}-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return name

    def drop(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if name in self.made:
            self.made.remove(name)

    def close(self) -> None:
        for name in reversed(list(self.made)):
            self.drop(name)


@pytest.fixture(scope="module")
def netns_pool():
    pool = NetnsPool("m")
    yield pool
    pool.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.adversarial import corpus

    if corpus.OUTCOMES:
        for line in corpus.summary_lines():
            terminalreporter.write_line(line)
