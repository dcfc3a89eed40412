"""multiplex with one bridge (the cluster network) and two ipvlan attachments on different masters
(l2 and l3), ping matrix across pods and to the outside hosts; DEL leaves nothing (the VM tier)."""
import pytest
from tests.cnitool import ping
from tests.netns.mpxlab import Lab, bridge_conf
from tests.vm.ipvlan_lab import pod_links, pod_addresses

pytestmark = [pytest.mark.root, pytest.mark.vm]


def test_bridge_and_two_ipvlans(node, netns_factory, tmp_path, underlay, cni):
    u0, u1 = underlay(0, node_addresses=False), underlay(1)
    u1.route_pods_from_outside()
    lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
    lab.add_nad("podnet", bridge_conf("mpx-pod", "198.18.0.0/24", isGateway=True, isDefaultGateway=True))
    lab.add_nad("wire0", u0.conf("wire0", "l2"))
    lab.add_nad("wire1", u1.conf("wire1", "l3"))
    cni.state_dir = lab.state_dir
    pods = {}
    for name in ("a", "b"):
        lab.add_pod(name, "wire0, wire1")
        ns = netns_factory("pod")
        out = cni("ADD", lab.config(), netns=ns, container_id=f"cid-{name}", plugin="multiplex",
                  args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
        assert out.ok, (out.out, out.stderr[-3000:])
        pods[name] = ns
    a, b = pods["a"], pods["b"]
    assert pod_links(a) == {"eth0", "net1", "net2"}
    for dev in ("eth0", "net1", "net2"):
        for addr in pod_addresses(b, dev):
            assert ping(a, addr.split("/")[0]), dev
    assert ping(a, u0.outside4) and ping(u1.outside, list(pod_addresses(a, "net2"))[0].split("/")[0])
    for name, ns in pods.items():
        out = cni("DEL", lab.config(), netns=ns, container_id=f"cid-{name}", plugin="multiplex",
                  args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
        assert out.ok, out.out
        assert pod_links(ns) == set()
