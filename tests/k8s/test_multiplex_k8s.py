"""multiplex on a Kubernetes node: pods and NADs from the API server (the test server over real
HTTP, the unchanged `kubernetes` client), network-status written back, refusals leave nothing,
DEL without the API server."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tests.cnitool import addresses, ip_json, links, ping
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = [pytest.mark.root, pytest.mark.k8s]

STATUS = "k8s.v1.cni.cncf.io/network-status"


def nad_config(name: str, conf: dict) -> str:
    return json.dumps(dict(conf, cniVersion=conf.get("cniVersion", "1.1.0"), name=name))


@pytest.fixture
def apiserver(node, tmp_path):
    """The test API server listening on the node's own loopback (multiplex runs in the node)."""
    from tests.k8s.apiserver import running_apiserver

    with running_apiserver(str(tmp_path), netns=f"/var/run/netns/{node}") as server:
        yield server


@pytest.fixture
def k8s(node, netns_factory, tmp_path, apiserver):
    """A lab whose definitions and pods come from the API server."""
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.extra = {"kubeconfig": apiserver.kubeconfig, "nadDir": None, "podDir": None}
    store = apiserver.store
    store.add_nad("podnet", "default", nad_config("podnet", bridge_conf(
        "mpx-pod", "198.18.0.0/24", isGateway=True, isDefaultGateway=True)))
    # blue and green let pods choose addresses and MACs (the NADs opt in)
    opt_in = {"capabilities": {"ips": True, "mac": True}}
    store.add_nad("blue", "default", nad_config("blue", bridge_conf("mpx-blue", "198.18.1.0/24", isGateway=True,
                                                                    **opt_in)))
    store.add_nad("green", "default", nad_config("green", bridge_conf("mpx-green", "198.18.2.0/24",
                                                                      "fd00:2::/64", **opt_in)))
    store.add_nad("shared", "infra", nad_config("shared", bridge_conf("mpx-shared", "198.18.3.0/24")))
    lab.api = apiserver
    return lab


def config(lab: Lab, **extra) -> dict:
    conf = lab.config(**extra)
    return {k: v for k, v in conf.items() if v is not None}


def add_pod(lab: Lab, name: str, networks, namespace: str = "default") -> tuple[str, str]:
    """Create the pod in the API; returns (netns, uid)."""
    value = networks if isinstance(networks, str) else json.dumps(networks)
    pod = lab.api.store.add_pod(name, namespace, annotations={"k8s.v1.cni.cncf.io/networks": value})
    return lab.netns_factory("pod"), pod["metadata"]["uid"]


def cni(lab: Lab, command: str, pod: str, ns: str, uid: str = "", namespace: str = "default", **extra):
    return lab.cni(command, pod, ns, config=config(lab, **extra), uid=uid, namespace=namespace)


def status_of(lab: Lab, pod: str, namespace: str = "default") -> list[dict]:
    obj = lab.api.store.get_pod(pod, namespace)
    return json.loads(obj["metadata"]["annotations"][STATUS])


def assert_nothing_left(lab: Lab, ns: str) -> None:
    """No link in the pod nor veth on the node, no lease, no cache entry."""
    assert lab.residue(ns) == []


def test_list_form_gives_named_interfaces_and_status(k8s):
    ns, uid = add_pod(k8s, "web", "blue@data0, default/green, infra/shared")
    out = cni(k8s, "ADD", "web", ns, uid, globalNamespaces=["infra"])
    assert out.ok, out
    assert links(ns) == {"lo", "eth0", "data0", "net1", "net2"}
    status = status_of(k8s, "web")
    assert [(s["name"], s["interface"]) for s in status] == [
        ("podnet", "eth0"), ("default/blue", "data0"), ("default/green", "net1"), ("infra/shared", "net2")]
    for entry in status:
        assert set(entry["ips"]) == {a.split("/")[0] for a in addresses(ns, entry["interface"])}
        mac = ip_json(ns, "link", "show", "dev", entry["interface"])[0]["address"]
        assert entry["mac"] == mac and entry["mtu"] > 0
    assert [s.get("default", False) for s in status] == [True, False, False, False]
    assert status[0]["gateway"] == ["198.18.0.1"]


def test_json_form_honours_ips_mac_interface_and_cni_args(k8s):
    ns, uid = add_pod(k8s, "db", [
        {"name": "blue", "interface": "fast0", "ips": ["198.18.1.77/24"], "mac": "02:00:5e:10:00:77",
         "cni-args": {"note": "kept"}},
        {"name": "green", "namespace": "default", "ips": ["198.18.2.88/24", "fd00:2::88/64"]}])
    out = cni(k8s, "ADD", "db", ns, uid)
    assert out.ok, out
    assert addresses(ns, "fast0") == {"198.18.1.77/24"}
    assert ip_json(ns, "link", "show", "dev", "fast0")[0]["address"] == "02:00:5e:10:00:77"
    assert addresses(ns, "net1") == {"198.18.2.88/24", "fd00:2::88/64"}
    assert cni(k8s, "CHECK", "db", ns, uid).ok
    assert cni(k8s, "DEL", "db", ns, uid).ok
    assert_nothing_left(k8s, ns)


def test_default_route_moves_to_the_requested_attachment(k8s):
    ns, uid = add_pod(k8s, "gw", [{"name": "blue", "default-route": ["198.18.1.1"]}])
    out = cni(k8s, "ADD", "gw", ns, uid)
    assert out.ok, out
    routes = ip_json(ns, "route", "show", "default")
    assert [(r.get("gateway"), r.get("dev")) for r in routes] == [("198.18.1.1", "net1")]
    status = status_of(k8s, "gw")
    assert [(s["interface"], s.get("default", False)) for s in status] == [("eth0", False), ("net1", True)]
    assert ping(ns, "198.18.1.1")
    assert cni(k8s, "CHECK", "gw", ns, uid).ok


def test_nad_with_a_conflist_runs_its_chain(k8s):
    if not os.path.exists("/usr/lib/cni/tuning"):
        pytest.fail("containernetworking-plugins missing: scripts/setup.sh installs them")
    chain = {"cniVersion": "1.0.0", "name": "tuned", "plugins": [
        bridge_conf("mpx-tuned", "198.18.4.0/24"), {"type": "tuning", "mtu": 1300}]}
    k8s.api.store.add_nad("tuned", "default", json.dumps(chain))
    ns, uid = add_pod(k8s, "chain", "tuned")
    assert cni(k8s, "ADD", "chain", ns, uid).ok
    assert ip_json(ns, "link", "show", "dev", "net1")[0]["mtu"] == 1300


def test_default_networks_apply_outside_system_namespaces(k8s):
    ns, uid = add_pod(k8s, "plain", "")
    assert cni(k8s, "ADD", "plain", ns, uid, defaultNetworks=["blue"]).ok
    assert links(ns) == {"lo", "eth0", "net1"}
    sys_ns, sys_uid = add_pod(k8s, "dns", "", namespace="kube-system")
    assert cni(k8s, "ADD", "dns", sys_ns, sys_uid, namespace="kube-system", defaultNetworks=["blue"]).ok
    assert links(sys_ns) == {"lo", "eth0"}


# ---- refusals: each an error, nothing left ---------------------------------------------------

@pytest.mark.parametrize("value,fragment", [
    ("blue@", "blue@"),
    ("bad name!", "bad name!"),
    ('[{"name": "blue", "ips": ["not-an-ip"]}]', "not-an-ip"),
    ('{"name": "blue"}', "list"),
])
def test_malformed_annotation_is_refused_quoting_it(k8s, value, fragment):
    ns, uid = add_pod(k8s, "bad", value)
    out = cni(k8s, "ADD", "bad", ns, uid)
    assert out.rc == 1 and out.code == 7, out
    assert fragment in out.out["msg"] + out.out.get("details", "")
    assert_nothing_left(k8s, ns)


def test_unknown_nad_names_namespace_and_name(k8s):
    ns, uid = add_pod(k8s, "lost", "blue, default/nosuch")
    out = cni(k8s, "ADD", "lost", ns, uid)
    assert out.rc == 1 and out.code == 107, out
    assert "default" in out.out["msg"] and "nosuch" in out.out["msg"]
    assert_nothing_left(k8s, ns)


def test_namespace_isolation_refuses_a_nad_of_another_namespace(k8s):
    ns, uid = add_pod(k8s, "iso", "blue, infra/shared")
    out = cni(k8s, "ADD", "iso", ns, uid)      # isolation is on by default
    assert out.rc == 1 and out.code == 106, out
    assert "infra/shared" in out.out["msg"]
    assert_nothing_left(k8s, ns)
    # a global namespace is allowed
    assert cni(k8s, "ADD", "iso", ns, uid, globalNamespaces=["infra"]).ok


def test_one_nad_get_per_distinct_network_and_the_bound_before_any(k8s):
    ns, uid = add_pod(k8s, "twice", "blue@b1, blue@b2, default/blue@b3, green, green@g2")
    k8s.api.reset_counts()
    out = cni(k8s, "ADD", "twice", ns, uid)
    assert out.ok, out
    # podnet, blue and green: one GET each, however often the pod names them
    assert k8s.api.count("get", "network-attachment-definitions") == 3
    ns2, uid2 = add_pod(k8s, "greedy", ", ".join(f"blue@b{n}" for n in range(40)))
    k8s.api.reset_counts()
    out = cni(k8s, "ADD", "greedy", ns2, uid2)
    assert out.rc == 1 and out.code == 7 and "maxAttachments" in out.out["details"], out
    assert k8s.api.count("get", "network-attachment-definitions") <= 1   # the cluster network at most
    assert links(ns2) == {"lo"}


def test_stale_pod_uid_is_refused(k8s):
    ns, uid = add_pod(k8s, "stale", "blue")
    out = cni(k8s, "ADD", "stale", ns, "0000-not-the-uid")
    assert out.rc == 1 and out.code == 3, out
    assert "K8S_POD_UID" in out.out["details"]
    assert_nothing_left(k8s, ns)


def test_api_server_down_is_try_again_later_naming_the_server(k8s):
    ns, uid = add_pod(k8s, "down", "blue")
    k8s.api.stop()
    out = cni(k8s, "ADD", "down", ns, uid)
    assert out.rc == 1 and out.code == 11, out
    assert k8s.api.url.split("//")[1] in out.out["msg"] + out.out.get("details", "")
    assert_nothing_left(k8s, ns)


@pytest.mark.parametrize("ip,code", [("198.18.9.9/24", 103), ("taken", 103)])
def test_requested_ip_outside_the_range_or_taken(k8s, ip, code):
    if ip == "taken":
        first, first_uid = add_pod(k8s, "first", [{"name": "blue", "ips": ["198.18.1.50/24"]}])
        assert cni(k8s, "ADD", "first", first, first_uid).ok
        ip = "198.18.1.50/24"
    ns, uid = add_pod(k8s, "second", [{"name": "blue", "ips": [ip]}])
    out = cni(k8s, "ADD", "second", ns, uid)
    assert out.rc == 1 and out.code == code, out
    assert ip.split("/")[0] in out.out["msg"] + out.out.get("details", "")
    assert links(ns) == {"lo"}


def test_del_with_the_api_server_stopped_frees_everything(k8s):
    ns, uid = add_pod(k8s, "gone", "blue, green")
    assert cni(k8s, "ADD", "gone", ns, uid).ok
    k8s.api.stop()
    out = cni(k8s, "DEL", "gone", ns, uid)
    assert out.ok, out
    assert_nothing_left(k8s, ns)


def test_readiness_indicator_file_makes_add_wait(k8s, tmp_path):
    ready = tmp_path / "ready"
    ns, uid = add_pod(k8s, "ready", "")
    timer = threading.Timer(1.0, ready.write_text, args=("ok",))
    timer.start()
    try:
        started = time.monotonic()
        out = cni(k8s, "ADD", "ready", ns, uid, readinessindicatorfile=str(ready), readinessTimeout=20)
        assert out.ok, out
        assert ready.exists()
    finally:
        timer.cancel()
    ns2, uid2 = add_pod(k8s, "never", "")
    out = cni(k8s, "ADD", "never", ns2, uid2, readinessindicatorfile=str(tmp_path / "never"), readinessTimeout=0.5)
    assert out.rc == 1 and out.code == 11 and "readinessindicatorfile" in out.out["details"], out
    assert links(ns2) == {"lo"}
