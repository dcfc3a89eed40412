"""multiplex/netlink/scope.py: inside a call, `open_netns(path)` lends the call's one handle on that
pod netns; outside a call, a handle of its own. Checked on a real namespace: which sockets the
handles share (counted by the sockets' file descriptors), that a lent handle still works after
another borrower closed its own, and that nothing stays open once the call is over."""
from __future__ import annotations

import pytest

from multiplex import netlink
from multiplex.cni.errors import CNIError
from multiplex.netlink import scope

pytestmark = pytest.mark.root


@pytest.fixture
def pod(netns_factory) -> str:
    return f"/var/run/netns/{netns_factory('sc')}"


def sockets_of(h: netlink.Handle) -> int:
    return h._rt.sock.fileno()


def test_a_call_opens_a_pod_netns_once_and_closes_it_at_its_end(pod):
    with scope.call() as slot:
        with netlink.open_netns(pod) as first:
            fd = sockets_of(first)
            assert first.link("lo") is not None
        with netlink.open_netns(pod) as second, netlink.open_netns(pod) as nested:
            assert sockets_of(second) == sockets_of(nested) == fd
            kept = second._rt.sock
        assert slot.opened == 1
        with scope.call() as inner:             # a nested call (an in-process delegate) shares it
            assert inner is slot
            with netlink.open_netns(pod) as h:
                assert sockets_of(h) == fd
    assert kept.fileno() == -1                  # closed with the call
    assert scope.current() is None


def test_closing_a_lent_handle_twice_leaves_the_other_borrowers_working(pod):
    with scope.call():
        a = netlink.open_netns(pod)
        b = netlink.open_netns(pod)
        a.close()
        a.close()
        assert b.link("lo") is not None
        b.close()
        with netlink.open_netns(pod) as c:
            assert c.link("lo") is not None


def test_a_handle_left_by_an_unexpected_error_is_replaced_and_a_kernel_refusal_is_not(pod):
    with scope.call() as slot:
        with pytest.raises(CNIError):
            with netlink.open_netns(pod) as h:
                fd = sockets_of(h)
                h.require_link("no-such-link")    # a kernel answer: the socket is clean
        with netlink.open_netns(pod) as h:
            assert sockets_of(h) == fd
        with pytest.raises(RuntimeError):
            with netlink.open_netns(pod) as h:
                broken = h._rt.sock
                raise RuntimeError("cut mid-request")
        assert broken.fileno() == -1            # nobody else held it: closed at once
        with netlink.open_netns(pod) as h:
            assert h.link("lo") is not None
        assert slot.opened == 2


def test_outside_a_call_each_open_is_a_handle_of_its_own(pod):
    with netlink.open_netns(pod) as a, netlink.open_netns(pod) as b:
        assert sockets_of(a) != sockets_of(b)
        sock = a._rt.sock
    assert sock.fileno() == -1


def test_a_pod_netns_that_is_gone_raises_inside_a_call_as_outside(tmp_path):
    with scope.call() as slot:
        for _ in range(2):
            with pytest.raises(netlink.NetnsGone):
                netlink.open_netns(str(tmp_path / "gone"))
        assert slot.opened == 0
