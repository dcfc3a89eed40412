"""The allocation space of a range set: what is never handed out, and the order of the rest."""
from __future__ import annotations

import ipaddress

import pytest

from multiplex.cni.errors import ADDRESS_UNAVAILABLE, IPAM_EXHAUSTED, CNIError
from multiplex.ipam import config
from multiplex.ipam.allocator import Space


def space(ranges, exclude=()) -> Space:
    conf = config.parse({"name": "n", "ipam": {"type": "multiplex-ipam", "ranges": [ranges], "exclude": list(exclude)}})
    return Space(conf.range_sets[0], conf.exclude)


def ip(s: str) -> int:
    return int(ipaddress.ip_address(s))


def walk(sp: Space, leased=(), after=None, n=None) -> list[str]:
    """Addresses handed out one after another, as a store would (cursor = the last one)."""
    leased = {ip(a) for a in leased}
    out = []
    while n is None or len(out) < n:
        v = sp.next_free(leased, after)
        if v is None:
            break
        leased.add(v)
        after = v
        out.append(str(ipaddress.ip_address(v)))
    return out


def test_network_broadcast_and_gateway_are_never_handed_out():
    sp = space([{"subnet": "198.18.5.0/29"}])
    assert sp.size() == 5
    assert walk(sp) == ["198.18.5.2", "198.18.5.3", "198.18.5.4", "198.18.5.5", "198.18.5.6"]
    assert "network address" in sp.why_not(ipaddress.ip_address("198.18.5.0"))
    assert "broadcast" in sp.why_not(ipaddress.ip_address("198.18.5.7"))
    assert "gateway" in sp.why_not(ipaddress.ip_address("198.18.5.1"))
    assert sp.why_not(ipaddress.ip_address("198.18.5.4")) == ""


def test_exclusions_are_skipped():
    sp = space([{"subnet": "198.18.5.0/28"}], exclude=["198.18.5.4/30", "198.18.5.9"])
    assert walk(sp) == ["198.18.5.2", "198.18.5.3", "198.18.5.8", "198.18.5.10", "198.18.5.11", "198.18.5.12",
                        "198.18.5.13", "198.18.5.14"]
    assert sp.size() == 8
    assert "excluded by 198.18.5.4/30" in sp.why_not(ipaddress.ip_address("198.18.5.6"))
    assert "excluded by 198.18.5.9/32" in sp.why_not(ipaddress.ip_address("198.18.5.9"))


def test_exclusions_of_the_other_family_are_ignored():
    sp = space([{"subnet": "198.18.5.0/29"}], exclude=["fd00::/8"])
    assert sp.size() == 5


def test_gateway_inside_a_slice_and_explicit_gateway():
    sp = space([{"subnet": "198.18.5.0/24", "rangeStart": "198.18.5.10", "rangeEnd": "198.18.5.13",
                 "gateway": "198.18.5.11"}])
    assert walk(sp) == ["198.18.5.10", "198.18.5.12", "198.18.5.13"]
    assert "outside pool" in sp.why_not(ipaddress.ip_address("198.18.5.9"))


def test_next_after_the_last_handed_out_and_wrapping():
    sp = space([{"subnet": "198.18.5.0/29"}])
    # .4 was handed out last: next is .5 even though .2 and .3 are free
    assert walk(sp, leased=["198.18.5.4"], after=ip("198.18.5.4"), n=1) == ["198.18.5.5"]
    # after the end, wrap to the start
    assert walk(sp, leased=["198.18.5.6"], after=ip("198.18.5.6"), n=2) == ["198.18.5.2", "198.18.5.3"]
    # leased ones are stepped over, wrapping included
    assert walk(sp, leased=["198.18.5.5", "198.18.5.6", "198.18.5.2"], after=ip("198.18.5.4"), n=1) == ["198.18.5.3"]


def test_cursor_in_a_gap_or_outside_the_ranges():
    sp = space([{"subnet": "198.18.5.0/28"}], exclude=["198.18.5.4/30"])
    # the cursor sits in the excluded block (the exclusion came later): continue after it
    assert walk(sp, after=ip("198.18.5.5"), n=1) == ["198.18.5.8"]
    # a cursor from an older config, outside every range: start over
    assert walk(sp, after=ip("198.18.9.9"), n=1) == ["198.18.5.2"]


def test_several_ranges_in_one_set_are_walked_in_order():
    sp = space([{"subnet": "198.18.6.0/29", "rangeStart": "198.18.6.5"}, {"subnet": "198.18.5.0/29"}])
    assert walk(sp) == ["198.18.6.5", "198.18.6.6", "198.18.5.2", "198.18.5.3", "198.18.5.4", "198.18.5.5",
                        "198.18.5.6"]
    # the cursor at the end of the first range moves on to the second one
    assert walk(sp, after=ip("198.18.6.6"), n=1) == ["198.18.5.2"]


def test_full_space_has_no_next():
    sp = space([{"subnet": "198.18.5.0/30"}])  # .1 gateway, .2 the only address
    assert walk(sp) == ["198.18.5.2"]
    assert sp.next_free({ip("198.18.5.2")}, None) is None


def test_ipv6_huge_ranges_and_exclusions_are_cheap():
    sp = space([{"subnet": "fd00:5::/48"}], exclude=["fd00:5::/64"])
    assert sp.size() == 2 ** 80 - 2 ** 64  # the /48 minus the excluded /64 (which holds network and gateway)
    assert walk(sp, n=2) == ["fd00:5:0:1::", "fd00:5:0:1::1"]
    assert "excluded by fd00:5::/64" in sp.why_not(ipaddress.ip_address("fd00:5::99"))


def test_ipv6_has_no_broadcast():
    sp = space([{"subnet": "fd00:5::/126"}])
    assert walk(sp) == ["fd00:5::2", "fd00:5::3"]


def test_counting_leased_addresses_inside_the_space():
    sp = space([{"subnet": "198.18.5.0/24", "rangeStart": "198.18.5.10", "rangeEnd": "198.18.5.19"}])
    leased = {ip("198.18.5.10"), ip("198.18.5.11"), ip("198.18.5.30")}  # .30: another network's slice
    assert sp.count_leased(leased) == 2 and sp.size() == 10


def test_errors_name_the_pool():
    sp = space([{"subnet": "198.18.5.0/29"}])
    err = sp.exhausted(5, "blue")
    assert err.code == IPAM_EXHAUSTED and err.msg == "pool 198.18.5.0/29 exhausted: 5 of 5 leased"
    assert "field: $.ipam.ranges[0]" in err.details and "network: blue" in err.details
    with pytest.raises(CNIError) as e:
        sp.check_requested(ipaddress.ip_address("198.18.5.1"), "$.runtimeConfig.ips[0]")
    assert e.value.code == ADDRESS_UNAVAILABLE and "gateway" in e.value.msg
    assert "field: $.runtimeConfig.ips[0]" in e.value.details
    with pytest.raises(CNIError) as e:
        sp.check_requested(ipaddress.ip_address("fd00::1"))
    assert "IPv6" in e.value.msg
