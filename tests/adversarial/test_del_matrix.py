"""The DEL matrix through the real multiplex binary (issue 8): after a real ADD of a pod with three
attachments (eth0 from the cluster network + two NADs by annotation, each with masquerade rules),
DEL in every awkward situation a runtime can produce exits 0 and leaves nothing: no veth, no pod
interface, no lease, no cache file, no nft rule, no FDB entry, no process (tests/adversarial/residue.py).

Situations: the pod netns gone; the cache file deleted, truncated, not JSON, empty; DEL twice;
DEL of a container never added; DEL with another config (other networks, no NAD or pod source,
the same stateDir: the state root is where DEL finds what ADD made, so an admin who moves it moves
the files too); DEL with the API down (a kubeconfig pointing to a closed port), with and without the cache.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional

import pytest

from tests.adversarial.residue import Snapshot, Watch, diff
from tests.cnitool import BIN, CNI_PATH, links
from tests.netns.mpxlab import LabFiles, bridge_conf

pytestmark = pytest.mark.root

CALL_TIMEOUT = 60.0


@dataclass
class MatrixNode(LabFiles):
    """The lab's files (nads/, pods/, state/ under `root`: tests/netns/mpxlab.py), the node netns."""
    name: str
    root: str
    pool: object
    watch: Watch

    @property
    def other_state_dir(self) -> str:
        return os.path.join(self.root, "other-state")

    @property
    def kubeconfig(self) -> str:
        return os.path.join(self.root, "kubeconfig-api-down")

    def config(self, **overrides) -> dict:
        """The lab's multiplex config; an override of None takes that field out."""
        return {k: v for k, v in super().config(**overrides).items() if v is not None}

    def cni(self, command: str, pod: str, cid: str, netns: Optional[str], config: Optional[dict] = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update({"CNI_COMMAND": command, "CNI_PATH": CNI_PATH, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
                    "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
                    "MULTIPLEX_LOG_FILE": os.path.join(self.root, "plugins.log")})
        env.pop("MULTIPLEX_STATE_DIR", None)
        if netns:
            env["CNI_NETNS"] = netns
        proc = subprocess.run(["ip", "netns", "exec", self.name, os.path.join(BIN, "multiplex")],
                              input=json.dumps(config or self.config()).encode(), env=env, capture_output=True,
                              timeout=CALL_TIMEOUT)
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")

    def cache_files(self, cid: str) -> list[str]:
        return glob.glob(os.path.join(self.state_dir, "cache", f"{cid}*"))


def _write_api_down_kubeconfig(path: str) -> None:
    """A kubeconfig whose server is a closed port on the node's loopback (nothing listens there)."""
    kc = {"apiVersion": "v1", "kind": "Config", "current-context": "down",
          "clusters": [{"name": "down", "cluster": {"server": "http://127.0.0.1:9"}}],
          "users": [{"name": "node", "user": {"token": "t"}}],
          "contexts": [{"name": "down", "context": {"cluster": "down", "user": "node"}}]}
    with open(path, "w") as f:
        json.dump(kc, f)


@pytest.fixture(scope="module")
def mnode(netns_pool, tmp_path_factory) -> MatrixNode:
    root = str(tmp_path_factory.mktemp("delmatrix"))
    for d in ("nads", "pods", "state", "other-state"):
        os.makedirs(os.path.join(root, d))
    node = netns_pool.make("d")
    watch = Watch(node=node, dirs=[os.path.join(root, "state"), os.path.join(root, "other-state")])
    m = MatrixNode(name=node, root=root, pool=netns_pool, watch=watch)
    m.add_nad("podnet", bridge_conf("mpxd-pod", "198.18.130.0/24", isGateway=True, isDefaultGateway=True, ipMasq=True))
    m.add_nad("blue", bridge_conf("mpxd-blue", "198.18.131.0/24", isGateway=True, ipMasq=True))
    m.add_nad("green", bridge_conf("mpxd-green", "198.18.132.0/24", "fd00:132::/64", isGateway=True, ipMasq=True))
    _write_api_down_kubeconfig(m.kubeconfig)
    # warm-up: the bridges (shared, kept by design) and the nft table exist before any scenario's baseline
    m.add_pod("warmup", "blue, green")
    ns = netns_pool.make("w")
    rc, out, err = m.cni("ADD", "warmup", "cid-warmup", f"/var/run/netns/{ns}")
    assert rc == 0, (out, err)
    assert m.cni("DEL", "warmup", "cid-warmup", f"/var/run/netns/{ns}")[0] == 0
    netns_pool.drop(ns)
    # the other config's stateDir gets its own lock and cache directories on first use: not residue
    assert m.cni("DEL", "warmup", "cid-warmup", None, m.config(stateDir=m.other_state_dir))[0] == 0
    return m


# ---- the scenarios: what happens between ADD and DEL, and how DEL is called ------------------------

def _netns_gone(m: MatrixNode, s: "Step") -> None:
    m.pool.drop(s.ns)


def _cache_deleted(m: MatrixNode, s: "Step") -> None:
    files = m.cache_files(s.cid)
    assert files, "ADD wrote no cache file"
    for f in files:
        os.remove(f)


def _cache_truncated(m: MatrixNode, s: "Step") -> None:
    for f in m.cache_files(s.cid):
        size = os.path.getsize(f)
        os.truncate(f, size // 2)


def _cache_written(text: str) -> Callable[[MatrixNode, "Step"], None]:
    def corrupt(m: MatrixNode, s: "Step") -> None:
        files = m.cache_files(s.cid)
        assert files, "ADD wrote no cache file"
        for f in files:
            with open(f, "w") as fh:
                fh.write(text)
    return corrupt


def _both(*fs: Callable) -> Callable:
    def run(m: MatrixNode, s: "Step") -> None:
        for f in fs:
            f(m, s)
    return run


@dataclass
class Step:
    cid: str
    pod: str
    ns: str


@dataclass
class Scenario:
    id: str
    between: Optional[Callable] = None          # what happens between ADD and DEL
    dels: int = 1                               # how many DELs
    add: bool = True                            # False: DEL of a container never added
    netns_env: bool = True                      # False: DEL without CNI_NETNS
    config: Optional[Callable[[MatrixNode], dict]] = None   # the DEL's config (default: the ADD's)


SCENARIOS = [
    Scenario("plain-del"),
    Scenario("netns-gone", between=_netns_gone),
    Scenario("netns-gone-and-no-CNI_NETNS", between=_netns_gone, netns_env=False),
    Scenario("cache-deleted", between=_cache_deleted),
    Scenario("cache-truncated", between=_cache_truncated),
    Scenario("cache-not-json", between=_cache_written("this is not json {")),
    Scenario("cache-empty", between=_cache_written("")),
    Scenario("cache-a-json-list", between=_cache_written("[1, 2, 3]")),
    Scenario("del-twice", dels=2),
    Scenario("cache-deleted-del-twice", between=_cache_deleted, dels=2),
    Scenario("cache-deleted-and-netns-gone", between=_both(_cache_deleted, _netns_gone)),
    Scenario("never-added", add=False),
    Scenario("never-added-twice", add=False, dels=2),
    Scenario("other-config", config=lambda m: m.config(
        clusterNetwork={"cniVersion": "1.1.0", "name": "othernet", "type": "multiplex-bridge",
                        "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.250.0/24"}]]}},
        nadDir=None, podDir=None)),
    Scenario("other-config-and-cache-deleted", between=_cache_deleted, config=lambda m: m.config(
        clusterNetwork={"cniVersion": "1.1.0", "name": "othernet", "type": "multiplex-bridge",
                        "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.250.0/24"}]]}},
        nadDir=None, podDir=None)),
    Scenario("api-down-kubeconfig", config=lambda m: m.config(kubeconfig=m.kubeconfig, nadDir=None, podDir=None)),
    Scenario("api-down-kubeconfig-and-cache-deleted", between=_cache_deleted,
             config=lambda m: m.config(kubeconfig=m.kubeconfig, nadDir=None, podDir=None)),
]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_del_exits_0_and_leaves_nothing(mnode: MatrixNode, sc: Scenario):
    idx = SCENARIOS.index(sc)
    step = Step(cid=f"delm-{idx:02d}-{os.getpid()}", pod=f"pod{idx:02d}", ns=mnode.pool.make("p"))
    netns_path = f"/var/run/netns/{step.ns}"
    mnode.add_pod(step.pod, "blue, green")
    before: Snapshot = mnode.watch.snapshot()
    try:
        if sc.add:
            rc, out, err = mnode.cni("ADD", step.pod, step.cid, netns_path)
            assert rc == 0, f"ADD failed: {out} {err[-500:]}"
            assert links(step.ns) >= {"eth0", "net1", "net2"}
            made = diff(before, mnode.watch.snapshot())
            for kind in ("links", "nft", "leases", "files"):
                assert any(l.startswith(f"+ {kind}:") for l in made), f"ADD made no {kind}: the matrix tests nothing"
        if sc.between:
            sc.between(mnode, step)
        config = sc.config(mnode) if sc.config else None
        for n in range(sc.dels):
            rc, out, err = mnode.cni("DEL", step.pod, step.cid, netns_path if sc.netns_env else None, config)
            assert rc == 0 and "Traceback" not in err, f"DEL #{n + 1} exit {rc}: {out} {err[-600:]}"
        left = diff(before, mnode.watch.snapshot())
        if os.path.exists(netns_path):
            left += [f"+ pod link: {l}" for l in sorted(links(step.ns) - {"lo"})]
        assert left == [], f"{sc.id}: DEL left behind:\n" + "\n".join(left)
    finally:
        _clean(mnode, step, netns_path)


def _clean(m: MatrixNode, step: Step, netns_path: str) -> None:
    """Whatever a failed scenario left: a DEL with a fresh cache-less sweep attempt, then the pod netns
    (its veths go with it); the next scenario takes its own baseline."""
    if os.path.exists(netns_path):
        m.pool.drop(step.ns)
    for f in m.cache_files(step.cid):
        os.remove(f)
