"""The pod-interface steps every delegate shares (delegates/steps.py), on plain data: CHECK's
comparison of the pod interface with prevResult, the route gateway rule ADD and CHECK share, the
one CHECK error, and the undo of a failed ADD. The kernel side runs in the bridge (netns) and
ipvlan (VM) tests."""
from __future__ import annotations

import ipaddress

import pytest

from delegates import steps
from multiplex.cni.errors import CNIError
from multiplex.cni.request import Request
from multiplex.cni.types import Result
from multiplex.netlink import Address, Link, RouteEntry

POD = 7  # the pod interface's index
PERMANENT, SLAAC = 0x80, 0x00


def prev_result(**extra) -> Result:
    """What ADD reported: a host-side interface, then eth0 in the pod with one IPv4 and one IPv6
    address (IPv4 with a gateway), a route without gw and one with its own."""
    d = {"cniVersion": "1.1.0",
         "interfaces": [{"name": "mpx0123456789ab", "mac": "02:00:00:00:00:01"},
                        {"name": "eth0", "mac": "02:00:00:00:00:07", "sandbox": "/var/run/netns/p"}],
         "ips": [{"address": "198.18.5.10/24", "gateway": "198.18.5.1", "interface": 1},
                 {"address": "fd00:5::10/64", "interface": 1}],
         "routes": [{"dst": "0.0.0.0/0"}, {"dst": "198.19.0.0/16", "gw": "198.18.5.254"}, {"dst": "fd00:6::/64"}]}
    d.update(extra)
    return Result.from_dict(d)


def eth0(**changes) -> Link:
    return Link(**{"index": POD, "name": "eth0", "kind": "veth", "mac": "02:00:00:00:00:07", "up": True, **changes})


def addr(text: str, flags: int = PERMANENT, index: int = POD) -> Address:
    return Address(index=index, interface=ipaddress.ip_interface(text), flags=flags)


def route(dst: str, gw: str = "", oif: int = POD, table: int = 254) -> RouteEntry:
    return RouteEntry(dst=ipaddress.ip_network(dst), gw=ipaddress.ip_address(gw) if gw else None, oif=oif, table=table)


def as_added() -> tuple[list[Address], list[RouteEntry]]:
    """The pod as ADD left it, with what the kernel adds on its own (link-local, a SLAAC address,
    the connected routes)."""
    addresses = [addr("198.18.5.10/24"), addr("fd00:5::10/64"), addr("fe80::7/64"),
                 addr("fd00:5::aa:bb/64", flags=SLAAC)]
    routes = [route("0.0.0.0/0", "198.18.5.1"), route("198.19.0.0/16", "198.18.5.254"), route("fd00:6::/64"),
              route("198.18.5.0/24"), route("fd00:5::/64")]
    return addresses, routes


def test_the_pod_as_add_left_it_has_no_problem():
    assert steps.compare_pod_interface(eth0(), *as_added(), prev_result()) == []


def test_a_missing_address_is_named_with_the_interface():
    addresses, routes = as_added()
    problems = steps.compare_pod_interface(eth0(), addresses[1:], routes, prev_result())
    assert problems == [("addresses", "address 198.18.5.10/24 is missing on eth0")]


def test_an_address_added_by_hand_is_a_problem_but_kernel_made_ones_are_not():
    addresses, routes = as_added()
    problems = steps.compare_pod_interface(eth0(), addresses + [addr("198.18.5.200/24")], routes, prev_result())
    assert problems == [("addresses", "address 198.18.5.200/24 on eth0 was not made by ADD")]


def test_addresses_of_other_interfaces_do_not_count():
    addresses, routes = as_added()
    other = addr("198.18.9.9/24", index=POD + 1)
    assert steps.compare_pod_interface(eth0(), addresses + [other], routes, prev_result()) == []


def test_a_route_without_gw_is_checked_via_its_familys_gateway():
    addresses, routes = as_added()
    direct = [r for r in routes if r.dst.prefixlen != 0] + [route("0.0.0.0/0")]  # the default route lost its gw
    problems = steps.compare_pod_interface(eth0(), addresses, direct, prev_result())
    assert problems == [("routes", "route 0.0.0.0/0 via 198.18.5.1 is missing")]


def test_a_route_out_of_another_interface_or_table_is_missing():
    addresses, routes = as_added()
    moved = [route("fd00:6::/64", oif=POD + 1) if r.dst == ipaddress.ip_network("fd00:6::/64") else r
             for r in routes]
    problems = steps.compare_pod_interface(eth0(), addresses, moved, prev_result())
    assert problems == [("routes", "route fd00:6::/64 dev eth0 is missing")]
    in_table = prev_result(routes=[{"dst": "198.19.0.0/16", "gw": "198.18.5.254", "table": 100}])
    assert steps.compare_pod_interface(eth0(), addresses, routes, in_table) == [
        ("routes", "route 198.19.0.0/16 via 198.18.5.254 is missing")]


def test_a_down_interface_and_another_mac():
    problems = steps.compare_pod_interface(eth0(up=False, mac="02:00:00:00:00:99"), *as_added(), prev_result())
    assert problems == [("interface", "interface eth0 is down"),
                        ("mac", "MAC of eth0 is 02:00:00:00:00:99, not 02:00:00:00:00:07")]


def test_a_mac_differing_only_in_case_is_the_same():
    assert steps.compare_pod_interface(eth0(mac="02:00:00:00:00:07".upper()), *as_added(), prev_result()) == []


def test_check_failed_lists_every_difference_and_the_fields_once():
    req = Request(command="CHECK", container_id="c1", netns="/var/run/netns/p", ifname="eth0")
    e = steps.check_failed(req, "default.blue", [("addresses", "address 198.18.5.10/24 is missing on eth0"),
                                                 ("addresses", "address fd00:5::10/64 is missing on eth0"),
                                                 ("mode", "mode is l3, not l2")])
    assert e.code == 104
    assert e.msg == ("eth0 on default.blue differs from what ADD made: address 198.18.5.10/24 is missing on eth0; "
                     "address fd00:5::10/64 is missing on eth0; mode is l3, not l2")
    assert e.details == "differs: addresses, mode; interface: eth0; netns: /var/run/netns/p"


def test_add_routes_use_the_gateway_rule_check_expects():
    added: list[tuple] = []

    class Pod:
        def add_route(self, dst, link, gw, **kw):
            added.append((str(dst), str(gw) if gw else None, kw["exist_ok"]))

    prev = prev_result()
    steps.add_pod_routes(Pod(), eth0(), prev.routes, prev.ips)
    assert added == [("0.0.0.0/0", "198.18.5.1", True), ("198.19.0.0/16", "198.18.5.254", True),
                     ("fd00:6::/64", None, True)]


def test_a_failed_add_undoes_what_it_made_in_reverse_and_raises():
    done: list[str] = []
    req = Request(command="ADD", container_id="c1", ifname="eth0")
    with pytest.raises(CNIError) as e:
        with steps.undone_on_failure(req) as undo:
            undo.push("first", lambda: done.append("first"))
            undo.push("second", lambda: done.append("second"))
            raise CNIError(105, "the third step failed")
    assert e.value.msg == "the third step failed" and done == ["second", "first"]


def test_an_undo_step_that_fails_does_not_stop_the_others():
    done: list[str] = []
    req = Request(command="ADD", container_id="c1", ifname="eth0")

    def broken() -> None:
        raise OSError("gone already")

    with pytest.raises(KeyboardInterrupt):
        with steps.undone_on_failure(req) as undo:
            undo.push("first", lambda: done.append("first"))
            undo.push("broken", broken)
            raise KeyboardInterrupt
    assert done == ["first"]


def test_a_successful_add_undoes_nothing():
    done: list[str] = []
    with steps.undone_on_failure(Request(command="ADD")) as undo:
        undo.push("first", lambda: done.append("first"))
    assert done == []
