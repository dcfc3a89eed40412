"""Where a bgp-routed call finds the admin's IPPools (delegates/routed_pools.py): the node daemon's
"ippools" informer (DaemonServices.ip_pools) first, on a local directory as the lab runs it; the
cluster IPAM trusted; a kubeconfig; else a clear refusal. The netns side (what the pod and node
get, the error a user sees) is tests/netns/test_bgp_routed.py."""
from __future__ import annotations

import ipaddress
import time
import json
from types import SimpleNamespace

import pytest

from delegates import routed_pools
from multiplex.cni.context import CallContext
from multiplex.cni.errors import CNIError
from multiplex.cni.request import Request
from multiplex.controllers.bgp import register_kinds
from multiplex.daemon.services import DaemonServices
from multiplex.k8s.objects import LocalObjects

LOCAL_IPAM = {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.64.0/24"}]]}


def write_pools(directory, *cidrs: str) -> None:
    (directory / "ippools").mkdir(exist_ok=True)
    items = [{"apiVersion": "ipam.multiplex.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": f"p{i}"},
              "spec": {"cidr": c}} for i, c in enumerate(cidrs)]
    (directory / "ippools" / "pools.json").write_text(json.dumps({"items": items}))


@pytest.fixture
def local(tmp_path):
    objects = LocalObjects(str(tmp_path), interval=0.05)
    yield objects
    objects.stop()


def request(ipam: dict, services=None, kubeconfig=None) -> Request:
    return Request(command="ADD", container_id="c1", netns="/x", ifname="eth0",
                   config={"cniVersion": "1.1.0", "name": "routed", "type": "multiplex-bgp-routed", "ipam": ipam},
                   ctx=CallContext(services=services, kubeconfig=kubeconfig))


def test_the_daemon_serves_the_pools_of_its_local_directory_once_the_bgp_kinds_are_registered(local, tmp_path):
    write_pools(tmp_path, "198.18.64.0/18", "fd00:64::/48")
    services = DaemonServices(local, None, None)
    assert services.ip_pools(timeout=0.1) is None         # no BGP controller: the kind is not watched
    register_kinds(local)
    # registered but no controller watches it yet: a call never starts the watch itself (a daemon
    # without bgp/vxlan-peers would watch IPPools forever, and wait for a CRD that may not exist)
    t0 = time.monotonic()
    assert services.ip_pools(timeout=5.0) is None and time.monotonic() - t0 < 1.0
    assert "ippools" not in local.started()
    local.informer("ippools")                               # the bgp controller's watch
    assert sorted(map(str, services.ip_pools())) == ["198.18.64.0/18", "fd00:64::/48"]
    # a call it serves takes them, even with a local IPAM and no kubeconfig
    assert routed_pools.admitted_pools(request(LOCAL_IPAM, services), "routed") == [
        ipaddress.ip_network("198.18.64.0/18"), ipaddress.ip_network("fd00:64::/48")]


def test_pools_not_synced_in_time_leave_the_call_to_find_them_itself():
    informer = SimpleNamespace(synced=lambda: False, wait_synced=lambda t: False, list=lambda: [])
    services = DaemonServices(SimpleNamespace(started=lambda: {"ippools": informer}), None, None)
    assert services.ip_pools(timeout=0.01) is None
    with pytest.raises(CNIError) as e:
        routed_pools.admitted_pools(request(LOCAL_IPAM, services), "routed")
    assert e.value.code == 7 and "field: $.ipam;" in e.value.details


def test_the_cluster_ipam_is_trusted_and_anything_else_without_a_source_refused():
    kube = {"type": "multiplex-ipam", "store": "kubernetes", "ranges": [[{"subnet": "198.18.64.0/24"}]]}
    assert routed_pools.admitted_pools(request(kube), "routed") is routed_pools.TRUSTED
    for ipam in (LOCAL_IPAM, {"type": "host-local", "subnet": "198.18.64.0/24"}, {"type": "static"}):
        with pytest.raises(CNIError) as e:
            routed_pools.admitted_pools(request(ipam), "routed")
        assert e.value.code == 7 and "IPPools" in e.value.msg, ipam


@pytest.mark.parametrize("ipam, field", [
    ({"ranges": [[{"subnet": "198.18.64.0/24"}], [{"subnet": "198.19.0.0/24"}]]}, "$.ipam.ranges[1][0]"),
    ({"ranges": [[{"subnet": "198.18.0.0/16", "rangeStart": "198.18.64.5", "rangeEnd": "198.18.200.1"}]]},
     "$.ipam.ranges[0][0]"),
    ({"addresses": [{"address": "198.18.64.9/24"}, {"address": "10.96.0.1/12"}]}, "$.ipam.addresses[1].address"),
])
def test_ranges_and_static_addresses_outside_every_pool_are_named(ipam, field):
    pools = [ipaddress.ip_network("198.18.64.0/18")]
    with pytest.raises(CNIError) as e:
        routed_pools.refuse_ranges_outside(pools, ipam, "routed")
    assert e.value.code == 7 and f"field: {field};" in e.value.details


def test_a_range_inside_a_pool_by_its_start_and_end_passes():
    pools = [ipaddress.ip_network("198.18.64.0/18")]
    routed_pools.refuse_ranges_outside(pools, {"ranges": [[{"subnet": "198.18.0.0/16", "rangeStart": "198.18.64.5",
                                                             "rangeEnd": "198.18.70.1"}]]}, "routed")
