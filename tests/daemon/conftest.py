"""Fixtures of the daemon tests: short socket directories (a unix socket path holds at most 107
bytes, pytest's tmp paths are long) and daemon processes that are always stopped by their pid."""
from __future__ import annotations

import shutil
import tempfile

import pytest

from tests.daemonproc import DaemonProcess


@pytest.fixture
def sock_dir():
    """A short directory for sockets (/tmp/mpxd-XXXX), removed at teardown."""
    d = tempfile.mkdtemp(prefix="mpxd-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemons():
    """start(**DaemonProcess kwargs) -> a ready daemon; every one is stopped (SIGTERM, then
    SIGKILL by its pid) at teardown, also when the test failed."""
    made: list[DaemonProcess] = []

    def start(*args, **kwargs) -> DaemonProcess:
        d = DaemonProcess(*args, **kwargs)
        made.append(d)
        return d.start()

    yield start
    for d in reversed(made):
        d.close()
