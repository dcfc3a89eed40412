"""MultiNetworkPolicy when the ADD runs in a process without the policy engine (a one-shot
`multiplex`, e.g. the shim's exec fallback while the daemon restarts): the pod's interfaces on
networks that policies of its namespace name are closed before ADD returns, the engine's next
pass opens what the policies allow; a table removed by hand is put back by a verifying pass (the
controller's resync); a one-shot DEL removes the table.
"""
from __future__ import annotations

import os

import pytest

from multiplex.policy.mnp.engine import Engine, Snapshot, read_status
from tests.cnitool import NetnsPool, nsexec
from tests.netns import mnplab
from tests.netns.mpxlab import Lab, bridge_conf

pytestmark = pytest.mark.root

POLICY = mnplab.policy("clients", {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"],
                                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                                "ports": [{"port": 8080}]}]})


@pytest.fixture
def setup(tmp_path):
    pool, servers = NetnsPool("mpx"), mnplab.Servers()
    try:
        node = pool.make("node")
        lab = Lab(node=node, root=str(tmp_path), netns_factory=pool.make)
        tag = f"{os.getpid() % 100000}"
        lab.add_nad("podnet", bridge_conf(f"mnop{tag}", "198.18.80.0/24"))
        lab.add_nad("blue", bridge_conf(f"mnob{tag}", "198.18.81.0/24", "fd00:81::/64"))
        yield lab, pool, servers
    finally:
        servers.close()
        pool.close()


def test_one_shot_add_closes_then_the_pass_opens_verify_repairs_one_shot_del_removes(setup):
    lab, pool, servers = setup
    engine = Engine(lambda: Snapshot([POLICY], [], mnplab.read_pods(lab.pod_dir)), lab.state_dir)
    engine.sync_all()   # no pod yet: it tells one-shot calls which networks are policed
    netns = {}
    for name, labels in (("b", {"role": "client"}), ("a", {"role": "server"})):
        mnplab.write_pod(lab.pod_dir, mnplab.pod_object(name, "default", labels, "blue"))
        netns[name] = pool.make("pod")
        servers.start(netns[name])
        out = lab.cni("ADD", name, netns[name])
        assert out.ok, out
    addrs = {p["metadata"]["name"]: mnplab.blue_addresses(p) for p in mnplab.read_pods(lab.pod_dir)}

    def reaches(src: str, dst: str, kind: str, family: int = 4) -> bool:
        return mnplab.probe(netns[src], addrs[dst][family], kind)

    # closed until the engine's pass: even the allowed client, even the unselected pod
    assert not reaches("b", "a", "tcp8080") and not reaches("a", "b", "tcp8080", 6)
    assert "policy controller has not yet compiled" in read_status(lab.state_dir, "cid-a")["interfaces"][1]["errors"][0]
    assert nsexec(netns["a"], "ip", "link", "show", "eth0").returncode == 0
    counts = engine.sync_all()
    assert counts["full"] == 1 and counts["removed"] == 1, counts     # a: its rules; b: selected by none
    assert reaches("b", "a", "tcp8080") and reaches("b", "a", "tcp8080", 6) and reaches("a", "b", "tcp9090")
    assert not reaches("b", "a", "tcp9090")

    nsexec(netns["a"], "nft", "delete", "table", "inet", "multiplex_mnp")
    assert reaches("b", "a", "tcp9090")
    assert engine.sync_all()["full"] == 0            # an event pass trusts what it applied
    assert engine.sync_all(verify=True)["full"] == 1  # the resync reads the table back
    assert not reaches("b", "a", "tcp9090") and reaches("b", "a", "tcp8080")

    assert lab.cni("CHECK", "a", netns["a"]).ok
    assert lab.cni("DEL", "a", netns["a"]).ok        # one-shot: no engine in that process either
    assert "multiplex_mnp" not in nsexec(netns["a"], "nft", "list", "tables").stdout
    assert read_status(lab.state_dir, "cid-a") is None
