"""The BGP controller and its parts: settings refused naming the field, plans (mesh, reflectors,
explicit peers, per-node ASN), generated configs that BIRD itself accepts (`bird -p`), BIRD's
socket replies parsed, and the controller driving a real BIRD in a netns: started on the node's
blocks, reconfigured (same pid, sessions kept) when a block appears, stopped by pid. Printed, not
timed: config generation and session counts for 200 simulated nodes, full mesh against route
reflectors. The routes between real nodes are tests/netns/test_bgp_routed_cluster.py."""
from __future__ import annotations

import ipaddress
import json
import os
import time

import pytest

from multiplex.bgp import bird as birdmod
from multiplex.bgp import plan as bgp_plan
from multiplex.bgp import render, settings
from multiplex.controllers import bgp as bgp_ctrl
from multiplex.controllers.node_registry import ANNOTATION, NodeFacts
from multiplex.daemon.controller import DaemonContext
from tests.daemon.fakeobjects import FakeObjects

POOLS = [ipaddress.ip_network("198.18.64.0/18"), ipaddress.ip_network("fd00:64::/64")]


# --- settings --------------------------------------------------------------------------------------

BAD_SETTINGS = [
    pytest.param({"asn": 0}, "$.asn", id="asn-zero"),
    pytest.param({"asn": 4294967296}, "$.asn", id="asn-over-32-bits"),
    pytest.param({"asn": "private"}, "$.asn", id="asn-a-word"),
    pytest.param({"peers": [{"name": "tor", "address": "tor.example", "asn": 65001}]}, "$.peers[0].address",
                 id="peer-not-an-address"),
    pytest.param({"peers": [{"address": "198.19.0.1"}]}, "$.peers[0].asn", id="peer-without-asn"),
    pytest.param({"bfd": {"enabled": "yes"}}, "$.bfd.enabled", id="bfd-enabled-not-bool"),
    pytest.param({"bfd": {"intervalMs": 1}}, "$.bfd.intervalMs", id="bfd-interval-too-small"),
    pytest.param({"gracefulRestart": {"restartTime": 5000}}, "$.gracefulRestart.restartTime", id="restart-time"),
    pytest.param({"routeReflectorClusterId": "cluster-1"}, "$.routeReflectorClusterId", id="cluster-id"),
    pytest.param({"mesh": False}, "$.mesh", id="unknown-field"),
    pytest.param({"crossSubnet": {"encapsulation": "ipip"}}, "$.crossSubnet.encapsulation", id="encapsulation"),
    pytest.param({"crossSubnet": {"vni": 1 << 24}}, "$.crossSubnet.vni", id="vni-over-24-bits"),
    pytest.param({"timers": {"holdTime": 2}}, "$.timers.holdTime", id="hold-time-below-3"),
    pytest.param({"timers": {"holdTime": 0}}, "$.timers.holdTime", id="hold-time-zero"),
    pytest.param({"timers": {"holdTime": 65536}}, "$.timers.holdTime", id="hold-time-over-16-bits"),
    pytest.param({"timers": {"holdTime": 6, "keepaliveTime": 6}}, "$.timers.keepaliveTime",
                 id="keepalive-not-below-hold"),
    pytest.param({"timers": {"keepaliveTime": 0}}, "$.timers.keepaliveTime", id="keepalive-zero"),
    pytest.param({"timers": {"hold": 9}}, "$.timers.hold", id="timers-unknown-field"),
    pytest.param({"timers": 9}, "$.timers", id="timers-not-an-object"),
    pytest.param({"ipPools": "routed"}, "$.ipPools", id="ip-pools-not-a-list"),
    pytest.param({"ipPools": []}, "$.ipPools", id="ip-pools-empty"),
    pytest.param({"ipPools": ["a", ""]}, "$.ipPools[1]", id="ip-pools-empty-name"),
    pytest.param({"ipPools": ["a", "a"]}, "$.ipPools[1]", id="ip-pools-twice"),
]


@pytest.mark.parametrize("body, field", BAD_SETTINGS)
def test_bad_settings_name_their_field(body, field):
    with pytest.raises(settings.SettingsError) as e:
        settings.parse(body)
    assert e.value.field == field and field in str(e.value)


def test_settings_defaults():
    s = settings.parse({})
    assert (s.asn, s.node_to_node_mesh, s.bfd, s.graceful_restart) == (64512, True, False, True)
    assert (s.hold_time, s.keepalive_time, s.ip_pools) == (240, 80, ())      # BIRD's (and Calico's) timers
    t = settings.parse({"timers": {"holdTime": 9}, "ipPools": ["routed-v4"]})
    assert (t.hold_time, t.keepalive_time, t.ip_pools) == (9, 3, ("routed-v4",))


def test_the_timers_are_on_every_session():
    nodes = infos(3)
    conf = settings.parse({"timers": {"holdTime": 6, "keepaliveTime": 2},
                           "peers": [{"name": "tor", "address": "198.19.0.254", "asn": 65001}]})
    text = render.render(bgp_plan.make_plan(nodes[0], nodes, conf, [], [], POOLS))
    assert text.count("hold time 6;") == text.count("keepalive time 2;") == text.count("protocol bgp ") == 3
    default = render.render(bgp_plan.make_plan(nodes[0], nodes, settings.parse({}), [], [], POOLS))
    assert default.count("hold time 240;") == default.count("keepalive time 80;") == 2


def test_only_the_routed_pools_blocks_are_exported_and_imported():
    """An overlay's pool beside the routed ones (as the lab has): with `ipPools` naming the routed
    pools, the node's overlay block and an address it borrowed there are not announced, and the
    import filter accepts only the routed pools; without `ipPools`, every pool is routed."""
    ippools = [{"metadata": {"name": n}, "spec": {"cidr": c}} for n, c in
               (("routed-v4", "198.18.64.0/20"), ("routed-v6", "fd00:64::/64"), ("overlay", "198.18.96.0/20"))]
    ipblocks = [_block("198.18.64.0/26", "n1"), _block("fd00:64::/122", "n1"), _block("198.18.96.0/26", "n1"),
                {"metadata": {"name": "o2"}, "spec": {"cidr": "198.18.96.64/26", "node": "n2",
                                                      "allocations": {"198.18.96.70": {"node": "n1"}}}},
                {"metadata": {"name": "r2"}, "spec": {"cidr": "198.18.64.64/26", "node": "n2",
                                                      "allocations": {"198.18.64.70": {"node": "n1"}}}}]
    me = bgp_plan.NodeInfo("n1", "198.19.0.11", "fd00:19::11")
    blocks, borrowed, _ = bgp_plan.blocks_from_ipblocks(ipblocks, "n1")
    conf = settings.parse({"ipPools": ["routed-v4", "routed-v6", "absent"]})
    p = bgp_plan.make_plan(me, [me], conf, blocks, borrowed, bgp_plan.pools_from_ippools(ippools, conf.ip_pools))
    assert [str(b) for b in p.blocks] == ["198.18.64.0/26", "fd00:64::/122"]
    assert [str(b) for b in p.borrowed] == ["198.18.64.70/32"]
    assert [str(b) for b in p.pools] == ["198.18.64.0/20", "fd00:64::/64"]
    text = render.render(p)
    assert "198.18.96." not in text, text
    assert "if net ~ [ 198.18.64.0/20+ ] then {" in text and "if net ~ [ fd00:64::/64+ ] then {" in text
    assert bgp_plan.missing_pools(ippools, conf.ip_pools) == ["absent"]
    every = bgp_plan.make_plan(me, [me], settings.parse({}), blocks, borrowed, bgp_plan.pools_from_ippools(ippools))
    assert "198.18.96.0/26" in [str(b) for b in every.blocks] and len(every.borrowed) == 2


def test_a_bad_settings_file_names_the_file_and_field(tmp_path):
    path = tmp_path / "bgp.json"
    path.write_text(json.dumps({"asn": 70000000000}))
    with pytest.raises(settings.SettingsError) as e:
        settings.load(str(path))
    assert str(path) in str(e.value) and e.value.field == "$.asn"


# --- plans -----------------------------------------------------------------------------------------

def infos(n: int, reflectors: tuple = (), **extra) -> list[bgp_plan.NodeInfo]:
    label = settings.DEFAULT_RR_LABEL
    return [bgp_plan.NodeInfo(f"node-{i}", f"198.19.{i // 250}.{i % 250 + 1}", f"fd00:19::{i + 1:x}",
                              labels={label: "true"} if i in reflectors else {}, **extra)
            for i in range(n)]


def plans(nodes, conf) -> list[bgp_plan.Plan]:
    return [bgp_plan.make_plan(me, nodes, conf, [], [], POOLS) for me in nodes]


def test_full_mesh_and_reflectors():
    conf = settings.parse({})
    assert bgp_plan.session_count(plans(infos(5), conf)) == 10
    with_rr = plans(infos(5, reflectors=(0,)), conf)
    assert bgp_plan.session_count(with_rr) == 4
    assert [n.kind for n in with_rr[0].neighbors] == ["client"] * 4 and with_rr[0].reflector
    assert [(n.kind, n.description) for n in with_rr[3].neighbors] == [("reflector", "node-0")]
    two = plans(infos(6, reflectors=(0, 1)), conf)
    assert sorted(n.kind for n in two[0].neighbors) == ["client"] * 4 + ["reflector"]
    assert bgp_plan.session_count(two) == 1 + 2 * 4
    assert bgp_plan.session_count(plans(infos(5), settings.parse({"nodeToNodeMesh": False}))) == 0


def test_explicit_peers_follow_their_node_selector_and_a_node_may_have_its_own_asn():
    conf = settings.parse({"peers": [{"name": "tor-a", "address": "198.19.0.254", "asn": 65001,
                                      "nodeSelector": {"rack": "a"}}]})
    nodes = [bgp_plan.NodeInfo("a1", "198.19.0.1", labels={"rack": "a"}),
             bgp_plan.NodeInfo("b1", "198.19.0.2", labels={"rack": "b"},
                               annotations={settings.ASN_ANNOTATION: "65010"})]
    pa, pb = (bgp_plan.make_plan(me, nodes, conf, [], [], POOLS) for me in nodes)
    assert [(n.kind, n.address, n.asn) for n in pa.neighbors] == [("mesh", "198.19.0.2", 65010),
                                                                   ("peer", "198.19.0.254", 65001)]
    assert pb.asn == 65010 and [n.kind for n in pb.neighbors] == ["mesh"]
    bad = [bgp_plan.NodeInfo("c1", "198.19.0.3", annotations={settings.ASN_ANNOTATION: "99999999999"})]
    with pytest.raises(settings.SettingsError) as e:
        bgp_plan.make_plan(bad[0], bad, conf, [], [], POOLS)
    assert "node c1" in str(e.value) and settings.ASN_ANNOTATION in str(e.value)


def test_a_node_without_an_ipv4_underlay_cannot_speak_bgp():
    me = bgp_plan.NodeInfo("v6only", "", "fd00:19::9")
    with pytest.raises(ValueError, match="no IPv4 underlay address"):
        bgp_plan.make_plan(me, [me], settings.parse({}), [], [], POOLS)


def test_nodes_on_other_subnets_are_multihop_and_encapsulated_unless_turned_off():
    nodes = [bgp_plan.NodeInfo("a", "198.19.0.11"), bgp_plan.NodeInfo("b", "198.19.0.12"),
             bgp_plan.NodeInfo("c", "198.19.1.13")]
    subnets = [ipaddress.ip_network("198.19.0.0/24")]
    p = bgp_plan.make_plan(nodes[0], nodes, settings.parse({}), [], [], POOLS, subnets, "ul0")
    assert [(n.description, n.multihop) for n in p.neighbors] == [("b", False), ("c", True)]
    assert [n.name for n in p.cross_nodes] == ["c"]
    off = bgp_plan.make_plan(nodes[0], nodes, settings.parse({"crossSubnet": {"encapsulation": "none"}}), [], [],
                             POOLS, subnets)
    assert off.cross_nodes == [] and "mpxbgp0" not in render.render(off)
    from multiplex.bgp.crosssubnet import vtep_mac
    assert vtep_mac("198.19.1.13") == "0e:6d:c6:13:01:0d"


def test_blocks_and_borrowed_addresses_from_ipblocks():
    objs = [{"metadata": {"name": "a"}, "spec": {"cidr": "198.18.64.0/26", "node": "n1", "allocations": {}}},
            {"metadata": {"name": "b"}, "spec": {"cidr": "198.18.64.64/26", "node": "n2", "allocations": {
                "198.18.64.70": {"node": "n1"}, "198.18.64.71": {"node": "n2"}}}},
            {"metadata": {"name": "c"}, "spec": {"cidr": "nonsense", "node": "n1"}}]
    blocks, borrowed, error = bgp_plan.blocks_from_ipblocks(objs, "n1")
    assert blocks == [ipaddress.ip_network("198.18.64.0/26")] and borrowed == ["198.18.64.70"]
    assert "nonsense" in error


def test_generated_configs_are_accepted_by_bird(tmp_path):
    """Every shape the renderer makes (mesh with BFD, reflector, client, explicit peer with a
    password, IPv4-only, IPv6 pools, no pools) parses with `bird -p`."""
    conf = settings.parse({"bfd": {"enabled": True}, "routeReflectorClusterId": "198.19.0.1",
                           "peers": [{"name": "tor", "address": "198.19.0.254", "asn": 65001, "bfd": True,
                                      "password": "s3cret"}]})
    b = birdmod.Bird(str(tmp_path))
    nodes = infos(4, reflectors=(0,))
    blocks = [ipaddress.ip_network("198.18.64.0/26"), ipaddress.ip_network("fd00:64::/122")]
    cases = [bgp_plan.make_plan(nodes[0], nodes, conf, blocks, ["198.18.70.1", "fd00:64::99"], POOLS),
             bgp_plan.make_plan(nodes[1], nodes, conf, blocks, [], POOLS),
             bgp_plan.make_plan(bgp_plan.NodeInfo("v4", "198.19.0.9"), infos(3), settings.parse({}), [], [], []),
             # node-0 on 198.19.0.0/24 sees node-250.. on 198.19.1.0/24: multihop sessions, VXLAN next hops
             bgp_plan.make_plan(nodes[1], infos(260)[:3] + infos(260)[250:253], conf, blocks, [], POOLS,
                                [ipaddress.ip_network("198.19.0.0/24"), ipaddress.ip_network("fd00:19::/64")],
                                "ul0")]
    for p in cases:
        text = render.render(p)
        b.check_config(text)
        assert render.render(p) == text     # deterministic: equal plans, equal text
    assert "rr client;" in render.render(cases[0]) and "bfd on;" in render.render(cases[0])
    assert 'route 198.18.70.1/32 blackhole' in render.render(cases[0])
    cross = render.render(cases[3])
    assert [n.address for n in cases[3].neighbors if n.multihop] == ["198.19.1.1", "198.19.1.2", "198.19.1.3"]
    assert 'ifname = "mpxbgp0"; onlink = true; gw = bgp_next_hop;' in cross and "igp table mpx_igp4" in cross


def test_bird_refusing_a_config_is_an_error_with_its_message(tmp_path):
    with pytest.raises(birdmod.BirdError, match="syntax error|error"):
        birdmod.Bird(str(tmp_path)).check_config("router id nonsense;\n")


def test_show_protocols_all_is_parsed():
    lines = [(2002, "Name       Proto      Table      State  Since         Info"),
             (1002, "node_n2    BGP        ---        up     20:03:48.485  Established   "),
             (1006, '  Description:    mesh n2'), (1006, "  BGP state:          Established"),
             (1006, "    Neighbor address: 198.19.0.12"), (1006, "    Neighbor AS:      64512"),
             (1006, "  Channel ipv4"), (1006, "    Routes:         2 imported, 1 exported, 2 preferred"),
             (1006, "  Channel ipv6"), (1006, "    Routes:         1 imported, 1 exported, 1 preferred"),
             (1002, "kernel4    Kernel     master4    up     2026-11-29 20:03:48  "), (0, "")]
    p, k = birdmod.parse_protocols(birdmod.Reply(0, lines))
    assert (p.name, p.proto, p.state, p.since, p.info, p.bgp_state) == \
        ("node_n2", "BGP", "up", "20:03:48.485", "Established", "Established")
    assert (p.neighbor, p.neighbor_as, p.description) == ("198.19.0.12", "64512", "mesh n2")
    assert p.routes == {"ipv4": {"imported": 2, "exported": 1, "preferred": 2},
                        "ipv6": {"imported": 1, "exported": 1, "preferred": 1}}
    assert (k.name, k.since) == ("kernel4", "2026-11-29 20:03:48")


def test_200_nodes_full_mesh_against_route_reflectors():
    """Printed: sessions and config generation for 200 nodes (every node's plan and config)."""
    for label, conf, refl in (("full mesh", settings.parse({}), ()),
                              ("3 route reflectors", settings.parse({}), (0, 1, 2))):
        nodes = infos(200, reflectors=refl)
        t0 = time.perf_counter()
        ps = plans(nodes, conf)
        texts = [render.render(p) for p in ps]
        took = time.perf_counter() - t0
        sessions = bgp_plan.session_count(ps)
        print(f"\n200 nodes, {label}: {sessions} sessions, largest config {max(map(len, texts)) // 1024} KiB, "
              f"{took * 1000 / 200:.2f} ms per node to plan and render")
        assert sessions == (200 * 199 // 2 if not refl else 3 + 3 * 197)


# --- the controller --------------------------------------------------------------------------------

class FakeRegistry:
    def __init__(self, facts: dict):
        self._facts = facts
        self.listeners = []

    def nodes(self):
        return dict(self._facts)

    def add_listener(self, fn):
        self.listeners.append(fn)


def _node(name: str, ipv4: str) -> dict:
    return {"metadata": {"name": name, "annotations": {ANNOTATION: NodeFacts(name, "ul0", 1400, ipv4).to_json()}}}


def _block(cidr: str, node: str) -> dict:
    return {"metadata": {"name": cidr.replace("/", "-").replace(".", "-")}, "spec": {"cidr": cidr, "node": node}}


@pytest.fixture
def controller_in_netns(node, tmp_path):
    """The controller of node `n1` with fake objects; its BIRD runs in the test's node netns."""
    path = tmp_path / "bgp.json"
    path.write_text(json.dumps({"asn": 64512}))
    objects = FakeObjects()
    objects.informer("nodes").put(_node("n1", "198.19.0.11"))
    objects.informer("nodes").put(_node("n2", "198.19.0.12"))
    objects.informer("ippools").put({"metadata": {"name": "p"}, "spec": {"cidr": "198.18.64.0/18"}})
    objects.informer("ipblocks").put(_block("198.18.64.0/26", "n1"))
    registry = FakeRegistry({"n1": NodeFacts("n1", "ul0", 1400, "198.19.0.11"),
                             "n2": NodeFacts("n2", "ul0", 1400, "198.19.0.12")})
    ctx = DaemonContext(node_name="n1", objects=objects, state_dir=str(tmp_path / "state"),
                        controllers={"node-registry": registry})
    ctrl = bgp_ctrl.BgpController("n1", str(tmp_path / "bgp"), str(path))
    ctrl.bird.netns = node
    yield ctrl, ctx, objects, path
    ctrl.bird.stop(timeout=5)


@pytest.mark.root
def test_controller_starts_reconfigures_and_stops_bird(controller_in_netns):
    ctrl, ctx, objects, _ = controller_in_netns
    ctrl.setup(ctx)
    assert ctrl.apply() and ctrl.ready()
    pid = ctrl.bird.pid
    with open(ctrl.bird.conf) as f:
        assert "route 198.18.64.0/26 blackhole" in f.read()
    assert not ctrl.apply(), "nothing changed, yet BIRD was reconfigured"
    objects.informer("ipblocks").put(_block("198.18.64.64/26", "n1"))
    assert ctrl.apply()
    assert ctrl.bird.pid == pid and ctrl.last_result.startswith("Reconfigur"), ctrl.last_result
    names = {p.name for p in birdmod.protocols(ctrl.bird.socket_path)}
    assert {"node_n2", "mpx_blocks4", "kernel4"} <= names
    ctrl.daemon = ctx
    ctrl.stop()
    assert not birdmod._is_bird(pid)
    # graceful restart is on by default: BIRD stopped for one (its peers keep our routes as stale
    # until the next daemon's BIRD is back), not with a SIGTERM (Cease: the peers withdraw at once)
    tail = ctrl.bird.log_tail(4000).lower()
    assert "shutting down for graceful restart" in tail, tail


@pytest.mark.root
def test_bird_starts_in_recovery_only_after_a_graceful_restart(controller_in_netns):
    """A daemon stop writes the marker and stops BIRD for a graceful restart; the next start is
    `bird -R` and the marker goes once BIRD has left recovery (no peer here: `graceful restart
    wait` ends it, set short below by hand). A BIRD that dies (no marker) starts normally; a marker
    older than the restart time is ignored (peers have dropped our routes by then)."""
    ctrl, ctx, _, path = controller_in_netns
    path.write_text(json.dumps({"gracefulRestart": {"restartTime": 30}}))
    ctrl.setup(ctx)
    ctrl.apply()
    assert ctrl.last_result == "started" and not ctrl.bird.restart_pending(30)
    ctx.stopping.set()                     # as the daemon does before it stops its controllers
    ctrl.stop()
    assert ctrl.bird.restart_pending(30) and "graceful restart" in ctrl.bird.log_tail(4000).lower()
    ctx.stopping.clear()
    ctrl.apply()
    assert ctrl.last_result == "started in graceful restart recovery"
    assert "-R" in open(f"/proc/{ctrl.bird.pid}/cmdline").read().split("\0")
    assert ctrl.bird.recovering()
    ctrl.bird.finish_recovery()
    ctx.stopping.set()
    ctrl.bird.stop()                       # a crash-like stop: no marker, the next start is normal
    ctx.stopping.clear()
    ctrl.apply()
    assert ctrl.last_result == "started" and not ctrl.bird.recovering()
    with open(ctrl.bird.marker, "w") as f:
        f.write(f"{time.time() - 31}\n")
    assert not ctrl.bird.restart_pending(30)


@pytest.mark.root
def test_a_daemon_adopting_a_bird_in_recovery_removes_the_marker_when_recovery_ends(controller_in_netns,
                                                                                   monkeypatch):
    """The daemon that started BIRD with -R dies during recovery; the next daemon adopts that BIRD
    and removes the marker once BIRD has left recovery (it was left behind: a later BIRD crash
    within restartTime then started in recovery again, holding the kernel back for nothing)."""
    ctrl, ctx, objects, path = controller_in_netns
    path.write_text(json.dumps({"gracefulRestart": {"restartTime": 60}}))
    ctrl.setup(ctx)
    ctrl.apply()
    ctx.stopping.set()
    ctrl.stop()
    ctx.stopping.clear()
    ctrl.apply()
    assert ctrl.last_result == "started in graceful restart recovery" and ctrl.bird.recovering()
    ctx.stopping.set()                     # that daemon is gone: its threads end, BIRD runs on
    time.sleep(0.5)
    ctx2 = DaemonContext(node_name="n1", objects=objects, state_dir=ctx.state_dir, controllers=ctx.controllers)
    ctrl2 = bgp_ctrl.BgpController("n1", ctrl.directory, str(path))
    ctrl2.bird.netns = ctrl.bird.netns
    try:
        ctrl2.setup(ctx2)
        assert ctrl2.bird.pid == ctrl.bird.pid and os.path.exists(ctrl2.bird.marker)
        time.sleep(0.5)
        assert os.path.exists(ctrl2.bird.marker), "removed while BIRD still recovers"
        monkeypatch.setattr(ctrl2.bird, "recovering", lambda: False)   # no peer here: BIRD would wait 240 s
        deadline = time.monotonic() + 5
        while os.path.exists(ctrl2.bird.marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(ctrl2.bird.marker), "the adopting daemon left the marker"
    finally:
        ctx2.stopping.set()


@pytest.mark.root
def test_a_bad_settings_file_fails_setup_and_starts_nothing(controller_in_netns):
    ctrl, ctx, _, path = controller_in_netns
    path.write_text(json.dumps({"peers": [{"address": "not-an-ip", "asn": 65001}]}))
    with pytest.raises(settings.SettingsError) as e:
        ctrl.setup(ctx)
    assert e.value.field == "$.peers[0].address"
    assert ctrl.bird.pid is None and not ctrl.ready()


def test_the_controller_is_off_without_a_settings_file(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.PATH_ENV, str(tmp_path / "absent.json"))
    assert bgp_ctrl.controller(DaemonContext(node_name="n1", objects=FakeObjects())) is None


def test_the_ipam_kinds_are_registered_on_a_local_directory(tmp_path, monkeypatch):
    from multiplex.k8s.objects import LocalObjects

    (tmp_path / "bgp.json").write_text("{}")
    monkeypatch.setenv(settings.PATH_ENV, str(tmp_path / "bgp.json"))
    objects = LocalObjects(str(tmp_path / "objects"))
    ctrl = bgp_ctrl.controller(DaemonContext(node_name="n1", objects=objects, state_dir=str(tmp_path)))
    assert ctrl is not None and {"ipblocks", "ippools"} <= set(objects.kinds)
    assert ctrl.bird.socket_path == str(tmp_path / "bgp" / "bird.ctl")


def test_setup_without_bird_installed_says_so(tmp_path):
    path = tmp_path / "bgp.json"
    path.write_text("{}")
    ctrl = bgp_ctrl.BgpController("n1", str(tmp_path / "bgp"), str(path), binary="/nonexistent/bird")
    ctx = DaemonContext(node_name="n1", objects=FakeObjects(), controllers={"node-registry": FakeRegistry({})})
    with pytest.raises(RuntimeError, match="bird2"):
        ctrl.setup(ctx)


def test_bgp_status_without_a_bird_is_exit_1_naming_the_socket(tmp_path):
    from multiplex.cli.bgp import status

    out, err = [], []
    code = status(state_dir=str(tmp_path), echo=out.append, echo_err=err.append)
    assert code == 1 and not out
    assert str(tmp_path / "bgp" / "bird.ctl") in err[0] and "bgp controller" in err[0]
