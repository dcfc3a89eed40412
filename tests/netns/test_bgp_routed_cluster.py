"""bgp-routed across nodes, as root: 3 nodes (netns) on one L2 underlay (a bridge in its own netns,
198.19.0.0/24 and fd00:19::/64), the test API server listening on the underlay, a node daemon per
node (node-registry + bgp controllers, --kubeconfig) that runs the node's BIRD, pods attached with
the cluster-wide IPAM (IPPool/IPBlock). Checked as a user would: every session Established (from
`multiplex bgp status -o json`), the other nodes' blocks in each node's kernel as `proto bird` via
their underlay addresses (no encapsulation) and its own as a blackhole, pod-to-pod ping (IPv4 and
IPv6) and a TCP connection across nodes, a TTL probe that shows the pod's node then the remote
node, a rogue peer whose route outside the pools is not imported (one inside is), and a node's
BIRD killed: its routes withdrawn (BFD; the time printed) and back once the controller restarts it.

A second test plans and runs 5 BIRDs with one route reflector directly (no daemons, so it is
cheap): 4 sessions instead of 10, every node's block in every other node's kernel.
BIRD processes are stopped by their pid in finalizers, also when a test fails.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from multiplex.bgp import bird as birdmod
from multiplex.bgp import plan as bgp_plan
from multiplex.bgp import render, settings
from tests.cnitool import ip_json, nsexec, ping, run_plugin
from tests.daemonproc import DaemonProcess
from tests.k8s.apiserver import ApiServer
from tests.k8s.ipam_kube_support import install_crds

pytestmark = [pytest.mark.root, pytest.mark.k8s]

MULTIPLEX = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "multiplex")
API_ADDR = "198.19.0.254"
ROGUE_ADDR = "198.19.0.250"
POOL4, POOL6 = "198.18.64.0/20", "fd00:64::/64"
#: what the rogue peer offers: a prefix inside an IPPool no node takes blocks from (inside POOL4, a
#: node may claim that very block and announce it too: ~5% of runs), and one outside every pool
PEER_POOL4 = "198.18.96.0/24"
INSIDE, OUTSIDE = "198.18.96.192/26", "198.18.200.0/24"


def underlay_v4(i: int, seg: int = 0) -> str:
    """Node i's underlay IPv4 on segment `seg` (0: 198.19.0.0/24, 1: 198.19.1.0/24)."""
    return f"198.19.{seg}.{10 + i}"


def underlay_v6(i: int, seg: int = 0) -> str:
    return str(ipaddress.ip_address(f"fd00:19:{seg}::{10 + i:x}"))


def make_underlay(netns_factory, count: int, other_subnet: tuple = ()) -> tuple[str, list[str]]:
    """The underlay netns and `count` node netns on it. Segment 0 is bridge br0 (198.19.0.0/24, the
    API server at .254, the rogue peer at .250); nodes listed in `other_subnet` sit on br1
    (198.19.1.0/24), a second L2 segment: the underlay netns routes between the two (it holds no
    route to any pod), and each node's default route goes through it."""
    ul = netns_factory("ul")
    nsexec(ul, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    for seg in (0, 1):
        nsexec(ul, "ip", "link", "add", f"br{seg}", "type", "bridge")
        nsexec(ul, "ip", "link", "set", f"br{seg}", "up")
        nsexec(ul, "ip", "addr", "add", f"198.19.{seg}.254/24", "dev", f"br{seg}")
        nsexec(ul, "ip", "addr", "add", f"fd00:19:{seg}::fe/64", "dev", f"br{seg}", "nodad")
    nsexec(ul, "ip", "addr", "add", f"{ROGUE_ADDR}/24", "dev", "br0")
    nodes = [add_node(netns_factory, ul, i, 1 if i in other_subnet else 0) for i in range(1, count + 1)]
    return ul, nodes


def add_node(netns_factory, ul: str, i: int, seg: int = 0) -> str:
    """Node i's netns, its underlay veth `ul0` plugged into segment `seg`'s bridge as port `to<i>`."""
    n = netns_factory(f"n{i}")
    subprocess.run(["ip", "-n", n, "link", "add", "ul0", "type", "veth", "peer", "name", f"to{i}", "netns", ul],
                   check=True)
    nsexec(ul, "ip", "link", "set", f"to{i}", "master", f"br{seg}", "up")
    nsexec(n, "ip", "addr", "add", f"{underlay_v4(i, seg)}/24", "dev", "ul0")
    nsexec(n, "ip", "addr", "add", f"{underlay_v6(i, seg)}/64", "dev", "ul0", "nodad")
    nsexec(n, "ip", "link", "set", "ul0", "up")
    nsexec(n, "ip", "route", "add", "default", "via", f"198.19.{seg}.254")
    nsexec(n, "ip", "-6", "route", "add", "default", "via", f"fd00:19:{seg}::fe")
    return n


def kill_bird_of(directory: str) -> None:
    """Finalizer: the BIRD whose pid file is in `directory`, if it is still a live bird."""
    b = birdmod.Bird(directory)
    if b.adopt() or _pid_is_bird(b.pidfile):
        b.pid = b.pid or int(open(b.pidfile).read())
        b.stop(timeout=5)


def _pid_is_bird(pidfile: str) -> bool:
    try:
        return birdmod._is_bird(int(open(pidfile).read().strip()))
    except (OSError, ValueError):
        return False


def bird_routes(ns: str, family: str = "-4") -> dict[str, dict]:
    return {r["dst"]: r for r in ip_json(ns, family, "route", "show", "proto", "bird")}


def gateways(route: dict) -> set[str]:
    """The next hops of a kernel route as `ip -j route` shows it (one gateway, or ECMP nexthops)."""
    return {route["gateway"]} if "gateway" in route else {h.get("gateway") for h in route.get("nexthops", [])}


def wait_for(what: str, check, timeout: float = 60.0, every: float = 0.1):
    limit = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > limit:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def rogue_config(node_addrs: list[str]) -> str:
    """An eBGP speaker on the underlay that offers a route inside the pools and one outside."""
    lines = [f"router id {ROGUE_ADDR};", "protocol device {}",
             f"protocol static offers {{ ipv4; route {INSIDE} blackhole; route {OUTSIDE} blackhole; }}"]
    for i, addr in enumerate(node_addrs, 1):
        lines.append(f"protocol bgp n{i} {{ local {ROGUE_ADDR} as 65001; neighbor {addr} as 64512; direct; "
                     f"connect delay time 1; ipv4 {{ import none; export all; }}; }}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def cluster(netns_factory, tmp_path, request):
    return start_cluster(netns_factory, tmp_path, request)


def start_cluster(netns_factory, tmp_path, request, other_subnet: tuple = (), rogue_peer: bool = True,
                  bgp: dict | None = None, count: int = 3) -> dict:
    """`count` nodes, the API server, a daemon per node; finalizers stop everything by pid. `bgp`:
    the settings file's body (default: BFD on, 100 ms x 3). The result's paths are under `tmp_path`
    (two clusters in one test: give each a directory of its own)."""
    ul, nodes = make_underlay(netns_factory, count, other_subnet)
    api = ApiServer(host=API_ADDR, netns=f"/var/run/netns/{ul}").start()
    request.addfinalizer(api.stop)
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    install_crds(api)
    from multiplex.ipam.kube.model import API_VERSION, POOL_KIND, POOLS
    for name, cidr, size in (("routed4", POOL4, 26), ("routed6", POOL6, 122), ("peer4", PEER_POOL4, 26)):
        api.store.add({"apiVersion": API_VERSION, "kind": POOL_KIND, "metadata": {"name": name},
                       "spec": {"cidr": cidr, "blockSize": size}}, POOLS)
    for n in nodes:
        api.store.add_node(n)
    conf_path = tmp_path / "bgp.json"
    peers = [{"name": "rogue", "address": ROGUE_ADDR, "asn": 65001}] if rogue_peer else []
    body = dict(bgp) if bgp is not None else {"bfd": {"enabled": True, "intervalMs": 100, "multiplier": 3}}
    conf_path.write_text(json.dumps(dict(body, peers=peers)))
    if rogue_peer:
        rogue_dir = str(tmp_path / "rogue")
        os.makedirs(rogue_dir)
        rogue = birdmod.Bird(rogue_dir, netns=ul)
        with open(rogue.conf, "w") as f:
            f.write(rogue_config([underlay_v4(i) for i in range(1, 4)]))
        request.addfinalizer(lambda: kill_bird_of(rogue_dir))
        rogue.start()
    c = {"nodes": nodes, "daemons": [], "kubeconfig": kubeconfig, "tmp": tmp_path, "ul": ul, "api": api,
         "conf": str(conf_path), "request": request}
    for i in range(1, count + 1):
        c["daemons"].append(start_daemon(c, i))
    return c


def start_daemon(cluster: dict, i: int) -> DaemonProcess:
    """Node i's daemon (node-registry + bgp), started and ready; stopped by pid at teardown, and its
    BIRD too. Called again for the same node (a restart), it reuses the node's state directory."""
    request, n = cluster["request"], cluster["nodes"][i - 1]
    d = cluster["tmp"] / f"n{i}"
    if not d.exists():
        d.mkdir()
        request.addfinalizer(lambda: kill_bird_of(str(d / "state" / "bgp")))
    proc = DaemonProcess(str(d / "state"), str(d / "d.sock"), netns=n, kubeconfig=cluster["kubeconfig"], node_name=n,
                         controllers="node-registry,bgp", extra_args=["--underlay-interface", "ul0"],
                         env=dict(os.environ, MULTIPLEX_BGP_CONFIG=cluster["conf"]))
    request.addfinalizer(proc.close)
    return proc.start()


def attach(cluster, netns_factory, i: int, ips: tuple = (), cid: str = "") -> tuple[str, dict]:
    node = cluster["nodes"][i - 1]
    pod = netns_factory(f"p{i}")
    conf = {"cniVersion": "1.1.0", "name": "routed", "type": "multiplex-bgp-routed",
            "ipam": {"type": "multiplex-ipam", "store": "kubernetes", "kubeconfig": cluster["kubeconfig"],
                     "nodeName": node, "dataDir": str(cluster["tmp"] / f"n{i}" / "ipam"),
                     "ranges": [[{"subnet": POOL4}], [{"subnet": POOL6}]]}}
    if ips:
        conf["runtimeConfig"] = {"ips": list(ips)}
    out = run_plugin("multiplex-bgp-routed", "ADD", conf, node=node, container_id=cid or f"cid{i}{os.getpid()}",
                     netns=pod)
    assert out.ok, out
    return pod, out.out


def bgp_status(cluster, i: int, *extra: str) -> subprocess.CompletedProcess:
    state = str(cluster["tmp"] / f"n{i}" / "state")
    return nsexec(cluster["nodes"][i - 1], MULTIPLEX, "bgp", "status", "--state-dir", state, *extra, check=False)


def test_three_nodes_route_pods_over_bgp(cluster, netns_factory):
    nodes = cluster["nodes"]
    t0 = time.monotonic()
    pods = [attach(cluster, netns_factory, i) for i in (1, 2, 3)]
    addrs = [[ipaddress.ip_interface(ip["address"]).ip for ip in out["ips"]] for _, out in pods]
    blocks = [[ipaddress.ip_network(f"{a}/{26 if a.version == 4 else 122}", strict=False) for a in pa] for pa in addrs]

    # every node: the other nodes' blocks via their underlay address on ul0, its own as a blackhole
    def converged() -> bool:
        for i, n in enumerate(nodes):
            r4, r6 = bird_routes(n, "-4"), bird_routes(n, "-6")
            for j in range(3):
                b4, b6 = (str(b) for b in blocks[j])
                if i == j:
                    if r4.get(b4, {}).get("type") != "blackhole" or r6.get(b6, {}).get("type") != "blackhole":
                        return False
                elif r4.get(b4, {}).get("gateway") != underlay_v4(j + 1) or \
                        r6.get(b6, {}).get("gateway") != underlay_v6(j + 1) or r4[b4].get("dev") != "ul0":
                    return False
        return True
    wait_for("every node's blocks in every node's kernel", converged)
    print(f"\nroutes converged {time.monotonic() - t0:.2f} s after the first pod's ADD (3 nodes)")

    # sessions, as `multiplex bgp status -o json` shows them
    for i in (1, 2, 3):
        def established(i=i):
            out = bgp_status(cluster, i, "-o", "json")
            assert out.returncode == 0, out.stderr
            s = json.loads(out.stdout)["sessions"]
            return s if len(s) == 3 and all(x["bgpState"] == "Established" for x in s) else None
        sessions = wait_for(f"node {i}'s sessions Established", established, timeout=30)
        assert {x["neighbor"] for x in sessions} == {underlay_v4(j) for j in (1, 2, 3) if j != i} | {ROGUE_ADDR}
        mesh = [x for x in sessions if x["neighbor"] != ROGUE_ADDR]
        assert all(x["routes"]["ipv4"]["imported"] >= 1 and x["routes"]["ipv6"]["imported"] >= 1 for x in mesh), mesh
    table = bgp_status(cluster, 1).stdout
    assert "Established" in table and f"{blocks[1][0]} via {underlay_v4(2)}" in table, table

    # the rogue peer: its route inside the pools is imported, the one outside is not
    for n in nodes:
        r4 = wait_for("the rogue's pool route", lambda n=n: bird_routes(n).get(INSIDE), timeout=30)
        assert ROGUE_ADDR in gateways(r4), r4
        assert OUTSIDE not in bird_routes(n), f"{OUTSIDE} (outside every pool) was imported on {n}"

    # pod to pod across nodes, both families, no encapsulation device anywhere
    for i, (pod, _) in enumerate(pods):
        for j in range(3):
            if i != j:
                for a in addrs[j]:
                    assert ping(pod, str(a)), f"pod on n{i + 1} cannot reach {a} on n{j + 1}"
    for n in nodes:
        assert not [l for l in ip_json(n, "-d", "link") if l.get("linkinfo", {}).get("info_kind") in ("vxlan", "ipip")]

    # a TCP connection pod 1 -> pod 3
    server = subprocess.Popen(["ip", "netns", "exec", pods[2][0], sys.executable, "-c",
                               "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
                               "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8080)); s.listen(1); s.settimeout(20); "
                               "c, _ = s.accept(); c.sendall(b'hello from n3'); c.close()"])
    try:
        client = "import socket, sys, time\nfor _ in range(100):\n try:\n  c = socket.create_connection((sys.argv[1], 8080), 2); break\n except OSError:\n  time.sleep(0.1)\nprint(c.recv(100).decode())"
        got = nsexec(pods[0][0], sys.executable, "-c", client, str(addrs[2][0])).stdout
        assert got.strip() == "hello from n3"
    finally:
        server.kill()
        server.wait()

    # a TTL probe from pod 1 to pod 2: first its node, then the remote node
    hops = []
    for ttl in (1, 2):
        out = nsexec(pods[0][0], "ping", "-c", "1", "-W", "2", "-t", str(ttl), str(addrs[1][0]), check=False).stdout
        hops.append(out.split("From ", 1)[1].split()[0] if "From " in out else "")
    assert hops == [underlay_v4(1), underlay_v4(2)], hops

    # an address of node 2's block taken on node 1 is borrowed: announced by node 1 as a /32
    want = blocks[1][0].network_address + 10
    lender, out = attach(cluster, netns_factory, 1, ips=(f"{want}/20",), cid=f"borrow{os.getpid()}")
    assert ipaddress.ip_interface(out["ips"][0]["address"]).ip == want
    for j in (2, 3):
        r = wait_for(f"{want}/32 on node {j}", lambda j=j: bird_routes(nodes[j - 1]).get(str(want)), timeout=30)
        assert r["gateway"] == underlay_v4(1), r
    assert ping(pods[2][0], str(want)) and ping(pods[1][0], str(want))

    # a range with no IPPool behind it: a clear error naming the field, nothing left on the node
    bad_pod = netns_factory("pbad")
    conf = {"cniVersion": "1.1.0", "name": "routed", "type": "multiplex-bgp-routed",
            "ipam": {"type": "multiplex-ipam", "store": "kubernetes", "kubeconfig": cluster["kubeconfig"],
                     "nodeName": nodes[0], "dataDir": str(cluster["tmp"] / "n1" / "ipam"),
                     "ranges": [[{"subnet": "198.18.128.0/24"}]]}}
    before = {l["ifname"] for l in ip_json(nodes[0], "link")}
    out = run_plugin("multiplex-bgp-routed", "ADD", conf, node=nodes[0], container_id="cnopool", netns=bad_pod)
    assert out.code == 7 and "$.ipam.ranges[0][0]" in out.out["details"], out
    assert {l["ifname"] for l in ip_json(nodes[0], "link")} == before
    assert {l["ifname"] for l in ip_json(bad_pod, "link")} == {"lo"}

    # node 3's BIRD dies: the others withdraw its routes (BFD); the controller starts BIRD again
    gone = str(blocks[2][0])
    pid = int(open(cluster["tmp"] / "n3" / "state" / "bgp" / "bird.pid").read())
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for("node 3's block withdrawn on node 1", lambda: gone not in bird_routes(nodes[0]), timeout=30, every=0.01)
    print(f"node 3's BIRD killed: its block withdrawn on node 1 after {time.monotonic() - t0:.2f} s (BFD 100 ms x 3)")
    t0 = time.monotonic()
    wait_for("node 3's block back on node 1", lambda: gone in bird_routes(nodes[0]), timeout=60)
    print(f"BIRD restarted by the controller: node 3's block back on node 1 after {time.monotonic() - t0:.2f} s")
    assert ping(pods[0][0], str(addrs[2][0]))


def test_a_node_on_another_subnet_is_reached_through_vxlan(netns_factory, tmp_path, request):
    """Nodes 1 and 2 share a segment, node 3 is on another subnet behind the underlay's router (which
    has no route to any pod): 1 <-> 2 stays unencapsulated, 1 <-> 3 and 2 <-> 3 go through the
    VXLAN device (static FDB and neighbour entries), over multihop sessions."""
    c = start_cluster(netns_factory, tmp_path, request, other_subnet=(3,), rogue_peer=False)
    nodes = c["nodes"]
    pods = [attach(c, netns_factory, i) for i in (1, 2, 3)]
    addrs = [[ipaddress.ip_interface(ip["address"]).ip for ip in out["ips"]] for _, out in pods]
    b3 = [str(ipaddress.ip_network(f"{a}/{26 if a.version == 4 else 122}", strict=False)) for a in addrs[2]]
    b2 = str(ipaddress.ip_network(f"{addrs[1][0]}/26", strict=False))
    b1 = str(ipaddress.ip_network(f"{addrs[0][0]}/26", strict=False))
    r = wait_for("node 3's blocks on node 1 through the VXLAN device",
                 lambda: bird_routes(nodes[0]).get(b3[0], {}).get("dev") == "mpxbgp0"
                 and bird_routes(nodes[0], "-6").get(b3[1], {}).get("dev") == "mpxbgp0" and bird_routes(nodes[0]))
    assert r[b3[0]]["gateway"] == underlay_v4(3, 1) and "onlink" in r[b3[0]].get("flags", [])
    assert wait_for("node 2's block on node 1", lambda: bird_routes(nodes[0]).get(b2))["dev"] == "ul0"
    back = wait_for("node 1's block on node 3", lambda: bird_routes(nodes[2]).get(b1))
    assert back["dev"] == "mpxbgp0" and back["gateway"] == underlay_v4(1)
    vx = ip_json(nodes[0], "-d", "link", "show", "mpxbgp0")[0]
    assert vx["linkinfo"]["info_data"]["id"] == 4097 and vx["mtu"] == 1450
    fdb = {(e["mac"], e.get("dst")) for e in json.loads(nsexec(nodes[0], "bridge", "-j", "fdb", "show", "dev",
                                                                 "mpxbgp0").stdout)}
    assert ("0e:6d:c6:13:01:0d", underlay_v4(3, 1)) in fdb and not [e for e in fdb if e[1] == underlay_v4(2)]
    # the replies' way back: node 3 holds every block of nodes 1 and 2, both families, before any
    # ping (waiting for node 1's IPv4 block alone made the first IPv6 ping race BIRD)
    for i in (0, 1):
        for a in addrs[i]:
            fam, plen = ("-4", 26) if a.version == 4 else ("-6", 122)
            blk = str(ipaddress.ip_network(f"{a}/{plen}", strict=False))
            wait_for(f"node {i + 1}'s block {blk} on node 3", lambda fam=fam, blk=blk: bird_routes(nodes[2], fam).get(blk))
    for fam, blk in (("-4", b3[0]), ("-6", b3[1])):
        wait_for(f"node 3's block {blk} on node 2", lambda fam=fam, blk=blk: bird_routes(nodes[1], fam).get(blk))
    # the router between the segments knows no pod: only encapsulated traffic gets across
    assert not [x for x in ip_json(c["ul"], "route") if x["dst"].startswith("198.18.")]
    for a in addrs[2]:
        assert ping(pods[0][0], str(a)) and ping(pods[1][0], str(a)), f"{a} on node 3 unreachable"
    for a in addrs[0]:
        assert ping(pods[2][0], str(a)) and ping(pods[1][0], str(a))
    out = json.loads(bgp_status(c, 3, "-o", "json").stdout)
    assert len(out["sessions"]) == 2 and all(x["bgpState"] == "Established" for x in out["sessions"])


def test_five_nodes_with_a_route_reflector(netns_factory, tmp_path, request):
    """Plans rendered for 5 nodes, node 1 a reflector: 4 sessions (not 10), every block everywhere."""
    ul, nodes = make_underlay(netns_factory, 5)
    conf = settings.parse({})
    infos = [bgp_plan.NodeInfo(n, underlay_v4(i), underlay_v6(i),
                               labels={settings.DEFAULT_RR_LABEL: "true"} if i == 1 else {})
             for i, n in enumerate(nodes, 1)]
    block = {n: ipaddress.ip_network(f"198.18.{64 + i}.0/26") for i, n in enumerate(nodes, 1)}
    plans, birds = [], []
    for i, n in enumerate(nodes, 1):
        p = bgp_plan.make_plan(infos[i - 1], infos, conf, [block[n]], [], [ipaddress.ip_network(POOL4)])
        plans.append(p)
        d = str(tmp_path / f"n{i}")
        os.makedirs(d)
        b = birdmod.Bird(d, netns=n)
        with open(b.conf, "w") as f:
            f.write(render.render(p))
        request.addfinalizer(lambda d=d: kill_bird_of(d))
        b.start()
        birds.append(b)
    assert bgp_plan.session_count(plans) == 4
    assert sorted(len(p.neighbors) for p in plans) == [1, 1, 1, 1, 4]
    t0 = time.monotonic()
    for i, n in enumerate(nodes):
        for j, m in enumerate(nodes):
            want = str(block[m])
            if i != j:
                r = wait_for(f"{want} on {n}", lambda n=n, want=want: bird_routes(n).get(want), timeout=60)
                assert r["gateway"] == underlay_v4(j + 1), f"{want} on {n} goes via {r['gateway']}, not its node"
    print(f"\n5 nodes, 1 reflector: 4 sessions, every block everywhere after {time.monotonic() - t0:.2f} s")
    for b in birds:
        established = [p for p in birdmod.protocols(b.socket_path) if p.proto == "BGP" and p.bgp_state == "Established"]
        assert established

    # graceful restart of node 2's BIRD: its block never leaves node 3's kernel (the reflector keeps
    # it as stale) and node 1's block never leaves node 2's (kept: `persist`); the new BIRD takes over
    watched, gone_at = str(block[nodes[1]]), []
    b2 = birds[1]
    t0 = time.monotonic()
    b2.graceful_restart()
    assert not b2.alive()
    down = time.monotonic()
    while time.monotonic() - down < 1.0:      # BIRD down: sample node 3's table
        if watched not in bird_routes(nodes[2]) or str(block[nodes[0]]) not in bird_routes(nodes[1]):
            gone_at.append(time.monotonic() - t0)
        time.sleep(0.05)
    b2.start(recover=True)
    wait_for("node 2 Established again", lambda: any(p.bgp_state == "Established" for p in birdmod.protocols(b2.socket_path)
                                                      if p.proto == "BGP"), timeout=60)
    assert watched in bird_routes(nodes[2]) and not gone_at, f"{watched} missing on node 3 at {gone_at}"
    print(f"graceful restart of node 2's BIRD: session back after {time.monotonic() - t0:.2f} s, no route lost")
