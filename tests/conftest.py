"""Fixtures every tier shares: root detection, network namespaces that are always removed,
and a per-test state directory for multiplex (cache, IPAM database, logs)."""
from __future__ import annotations

import os
import shutil

import pytest


def _have_netns() -> str:
    """Empty when netns tests can run, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip"):
        return "needs iproute2 (`ip`)"
    return ""


def pytest_collection_modifyitems(config, items):
    reason = _have_netns()
    if reason:
        for item in items:
            if "root" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
    _skip_vm_tests_without_the_kernel(items)


def _skip_vm_tests_without_the_kernel(items) -> None:
    """`vm` tests need a kernel feature (ipvlan). They run here when this kernel has it (probed in a
    scratch netns), inside the VM tier's guest, and are skipped - naming the tier - otherwise."""
    vm_items = [item for item in items if item.get_closest_marker("vm") is not None]
    if not vm_items:
        return
    from tests.vm import kernel

    if kernel.in_guest():
        return
    missing = kernel.missing_feature()
    if missing:
        skip = pytest.mark.skip(reason=f"a VM-tier test: this machine's kernel lacks what the tier's has (e.g. "
                                       f"{missing}); runs in the VM tier, which scripts/test.sh runs next: "
                                       f"{kernel.RUN_COMMAND}")
        for item in vm_items:
            item.add_marker(skip)


@pytest.fixture
def netns_factory():
    """make(prefix) -> a new netns name (lo up); every netns made is deleted at teardown."""
    from tests.cnitool import NetnsPool

    pool = NetnsPool("mpx")

    def make(prefix: str = "t") -> str:
        return pool.make(prefix)

    yield make
    pool.close()


@pytest.fixture
def node(netns_factory):
    """A simulated node: a netns of its own, where multiplex and its delegates run."""
    return netns_factory("node")


@pytest.fixture
def state_dir(tmp_path):
    """Where multiplex keeps its cache and IPAM database for this test."""
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture(scope="session", autouse=True)
def _state_root_in_tmp(tmp_path_factory):
    """Whatever a test runs without a stateDir of its own keeps its state in a session tmp dir,
    never in the machine's /var/lib/cni/multiplex (plugins exec'd by tests inherit this)."""
    old = os.environ.get("MULTIPLEX_STATE_DIR")
    os.environ["MULTIPLEX_STATE_DIR"] = str(tmp_path_factory.mktemp("multiplex-state"))
    yield
    if old is None:
        os.environ.pop("MULTIPLEX_STATE_DIR", None)
    else:
        os.environ["MULTIPLEX_STATE_DIR"] = old


@pytest.fixture(autouse=True)
def _no_warm_ipam_pool_leaks_between_tests():
    """A test that turns this process into a warm one (the SQLite pool on, as the node daemon does)
    must not change how the next tests' one-shot calls behave: the pool goes back off after it."""
    yield
    from multiplex.ipam.sqlite import pool

    if pool.POOL.enabled:
        pool.POOL.close_all()
        pool.POOL.enabled = False
