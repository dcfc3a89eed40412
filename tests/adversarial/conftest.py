"""Fixtures for the adversarial tier: one simulated node (netns) per module, pod netns on demand,
and the corpus's summary table printed at the end of the run (outcome counts by kind)."""
from __future__ import annotations

import os

import pytest

from tests.cnitool import NetnsPool


@pytest.fixture(scope="module")
def netns_pool():
    pool = NetnsPool(f"mpxam{os.getpid() % 100000}")
    yield pool
    pool.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.adversarial import corpus

    if corpus.OUTCOMES:
        for line in corpus.summary_lines():
            terminalreporter.write_line(line)
