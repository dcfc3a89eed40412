"""Fixtures for tests that talk to the test Kubernetes API server (tests/k8s/apiserver.py).

`apiserver`: a running server with a kubeconfig in the test's tmp dir; `.url`, `.kubeconfig`,
`.store` (add_pod, add_nad, add_node, ...), `.stop()`/`.start()`, `.count(...)`, `.latency`,
`.fail_next(...)`, `.deny(...)`. Stopped at teardown, even when the test fails.
Tests elsewhere: `from tests.k8s.conftest import apiserver  # noqa: F401` makes the fixture theirs,
or `with running_apiserver(tmp_path) as server:` from tests.k8s.apiserver.
"""
from __future__ import annotations

import os

import pytest

from tests.k8s.apiserver import ApiServer, running_apiserver


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here + os.sep):
            item.add_marker(pytest.mark.k8s)


@pytest.fixture
def apiserver(tmp_path) -> ApiServer:
    with running_apiserver(tmp_path) as server:
        yield server


@pytest.fixture
def apiserver_tls(tmp_path) -> ApiServer:
    """The same over HTTPS with a throwaway CA (`.ca_file`) and a bearer token (`.token`)."""
    with running_apiserver(tmp_path, tls=True, token="test-token-1") as server:
        yield server
