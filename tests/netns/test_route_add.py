"""Handle.add_route, sent by rtlink (RTM_NEWROUTE): every kind of route the delegates add (IPv4 and
IPv6, with or without a gateway, metric, table, scope, MTU and advmss metrics) comes out in the
kernel exactly as pyroute2's route("add") made it before, compared route by route as `ip -d route`
lists them; an existing route is False with exist_ok and 105 without; a refused one is 105."""
from __future__ import annotations

import ipaddress
import json

import pytest

from multiplex import netlink
from multiplex.cni.errors import CNIError
from tests.cnitool import nsexec

pytestmark = pytest.mark.root

GW4, GW6 = ipaddress.ip_address("198.18.90.254"), ipaddress.ip_address("fd00:90::fe")
ROUTES = [("0.0.0.0/0", GW4, {}), ("198.18.91.0/24", None, {}), ("198.18.92.0/24", GW4, {"priority": 100}),
          ("198.18.93.0/24", GW4, {"table": 100}), ("198.18.94.0/24", GW4, {"mtu": 1300, "advmss": 1200}),
          ("198.18.95.0/24", None, {"scope": 253}), ("198.18.96.0/24", GW4, {"table": 1000}),
          ("::/0", GW6, {}), ("fd00:91::/64", None, {}), ("fd00:92::/64", GW6, {"priority": 50, "mtu": 1280})]


def pyroute2_add(h: netlink.Handle, dst: str, link: netlink.Link, gw, kw: dict) -> None:
    """What Handle.add_route sent through pyroute2 before (the reference)."""
    net = ipaddress.ip_network(dst)
    args: dict = {"dst": str(net), "oif": link.index, "family": netlink.family_of(net)}
    if gw is not None:
        args["gateway"] = str(gw)
    args.update({k: v for k, v in kw.items() if k in ("priority", "table", "scope")})
    metrics = {k: v for k, v in kw.items() if k in ("mtu", "advmss")}
    if metrics:
        args["metrics"] = metrics
    h._ipr.route("add", **args)


def added_routes(ns: str) -> list[str]:
    """The routes of the test's prefixes in every table, as `ip -j -d route` lists them."""
    out = []
    for fam in ("-4", "-6"):
        for r in json.loads(nsexec(ns, "ip", "-j", "-d", fam, "route", "show", "table", "all").stdout or "[]"):
            if r.get("type") == "unicast" and r.get("protocol") != "kernel" and r.get("dst") != "fe80::/64":
                out.append(json.dumps(r, sort_keys=True))
    return sorted(out)


@pytest.fixture
def pair(netns_factory):
    """Two namespaces joined by a veth called v0 on both sides, addressed, up."""
    a_ns, b_ns = netns_factory("ra"), netns_factory("ra")
    with netlink.open_netns(f"/var/run/netns/{a_ns}") as a, netlink.open_netns(f"/var/run/netns/{b_ns}") as b:
        la, _ = netlink.make_veth_pair(a, b, "v0", "v0")
        lb = b.require_link("v0")
        for h, link, n in ((a, la, 1), (b, lb, 2)):
            h.set_up(link)
            h.add_address(link, ipaddress.ip_interface(f"198.18.90.{n}/24"))
            h.add_address(link, ipaddress.ip_interface(f"fd00:90::{n}/64"))
        yield (a_ns, a, la), (b_ns, b, lb)


def test_each_route_is_the_one_pyroute2_made(pair):
    (a_ns, a, la), (b_ns, b, lb) = pair
    for dst, gw, kw in ROUTES:
        pyroute2_add(a, dst, la, gw, kw)
        assert b.add_route(ipaddress.ip_network(dst), lb, gw, **kw) is True
    theirs, ours = added_routes(a_ns), added_routes(b_ns)
    assert len(ours) == len(ROUTES)
    assert ours == theirs


def test_an_existing_route_and_a_refused_one(pair):
    _, (b_ns, b, lb) = pair
    net = ipaddress.ip_network("198.18.97.0/24")
    assert b.add_route(net, lb, GW4) is True
    assert b.add_route(net, lb, GW4, exist_ok=True) is False
    with pytest.raises(CNIError) as e:
        b.add_route(net, lb, GW4)
    assert e.value.code == 105 and "add route 198.18.97.0/24 via 198.18.90.254 dev v0" in e.value.msg
    with pytest.raises(CNIError) as e:          # a gateway no link reaches
        b.add_route(ipaddress.ip_network("198.18.98.0/24"), lb, ipaddress.ip_address("198.18.99.1"))
    assert e.value.code == 105 and "198.18.98.0/24 via 198.18.99.1" in e.value.msg
    assert "route: 198.18.98.0/24 via 198.18.99.1" in e.value.details
