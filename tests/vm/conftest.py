"""Fixtures for the VM tier (tests marked `vm`; see tests/vm/README.md).

- `underlay(k=0, **kw)`: a wire from the `node` netns to an outside netns (tests.vm.ipvlan_lab).
- `cni`: CNI calls on `node` with this test's state dir (warm forks for built-ins).
- `pod()`: a new pod netns.
"""
from __future__ import annotations

import pytest

from tests.vm.ipvlan_lab import Caller, make_underlay


@pytest.fixture
def underlay(netns_factory, node):
    def make(k: int = 0, **kw):
        return make_underlay(netns_factory, node, k, **kw)

    return make


@pytest.fixture
def cni(node, state_dir):
    return Caller(node=node, state_dir=str(state_dir))


@pytest.fixture
def pod(netns_factory):
    def make() -> str:
        return netns_factory("pod")

    return make
