"""The VM tier's own sanity: the kernel it runs on makes ipvlan links, and netns + ping work as root.

When these fail, every other vm test fails for the same reason; they say it first and plainly.
"""
from __future__ import annotations

import pytest

from tests.cnitool import nsexec, ping
from tests.vm import kernel

pytestmark = [pytest.mark.root, pytest.mark.vm]


def test_kernel_makes_ipvlan_links():
    assert kernel.missing_feature() == ""


def test_netns_ipvlan_and_ping(netns_factory):
    a, b = netns_factory("vma"), netns_factory("vmb")
    nsexec(a, "ip", "link", "add", "m0", "type", "veth", "peer", "name", "p0", "netns", b)
    nsexec(a, "ip", "link", "add", "link", "m0", "name", "iv0", "type", "ipvlan", "mode", "l2")
    nsexec(a, "ip", "addr", "add", "198.18.250.1/24", "dev", "iv0")
    nsexec(b, "ip", "addr", "add", "198.18.250.2/24", "dev", "p0")
    for ns, dev in ((a, "m0"), (a, "iv0"), (b, "p0")):
        nsexec(ns, "ip", "link", "set", dev, "up")
    assert ping(a, "198.18.250.2")
