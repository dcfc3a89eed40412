"""Cluster-wide garbage collection of the kubernetes IPAM store (`multiplex ipam gc`).

The leaks of block IPAM: pods deleted without a CNI DEL (their node crashed or was removed), and
blocks affine to nodes that no longer exist. One pass:

1. LIST every IPBlock, then every node and every pod. Blocks first: whatever a block records was
   written before the listings, so a pod or node that exists is in them.
2. An allocation is *gone* when its node no longer exists, or its pod (namespace/name) no longer
   exists, or exists with another UID (recreated under the same name). An allocation without a pod
   name (not made for a Kubernetes pod) is judged by its node only.
3. A gone allocation is first marked (`missingSince`, now); a later pass frees it once it has been
   gone for `grace` seconds. An allocation found alive again is unmarked. The grace period spares a
   pod whose sandbox is still being torn down (the API forgets a pod before its CNI DEL runs).
   With `grace` 0 nothing is to be waited for, so a gone allocation is freed in the pass that
   finds it (no mark written first: a mark would only make the admin run a second pass).
4. A block affine to a node that no longer exists is deleted once it is empty, or handed over to
   the existing node holding most of its addresses (their addresses stop being borrowed).

Every write carries the block's resourceVersion; a conflict re-reads that block and decides again
(bounded). A mark is harmless, so a pass that raced a new allocation costs nothing.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..util import log
from .kube.model import BLOCKS, GROUP, VERSION, Block

DEFAULT_GRACE = 300.0
RETRIES = 5


@dataclass(frozen=True)
class Action:
    """One thing a pass did (or, with dry_run, would do)."""
    kind: str          # marked, unmarked, freed, released, handed-over
    block: str
    address: str = ""
    node: str = ""     # the allocation's node, or for handed-over the new node
    reason: str = ""

    def line(self) -> str:
        what = {"marked": "marked as gone", "unmarked": "alive again", "freed": "freed",
                "released": "released block", "handed-over": "handed block over"}[self.kind]
        target = f"{self.address} in {self.block}" if self.address else self.block
        to = f" to node {self.node}" if self.kind == "handed-over" else ""
        return f"{what} {target}{to}" + (f": {self.reason}" if self.reason else "")

    def to_dict(self) -> dict:
        return {"action": self.kind, "block": self.block, "address": self.address, "node": self.node,
                "reason": self.reason}


@dataclass
class Report:
    actions: list[Action] = field(default_factory=list)
    blocks: int = 0
    allocations: int = 0
    conflicts: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for a in self.actions if a.kind == kind)

    def lines(self) -> list[str]:
        head = (f"ipam gc: {self.blocks} blocks, {self.allocations} allocations; freed {self.count('freed')}, "
                f"marked {self.count('marked')}, released {self.count('released')} blocks, "
                f"handed over {self.count('handed-over')}")
        return [head] + ["  " + a.line() for a in self.actions]

    def to_dict(self) -> dict:
        return {"blocks": self.blocks, "allocations": self.allocations, "conflicts": self.conflicts,
                "actions": [a.to_dict() for a in self.actions]}


@dataclass(frozen=True)
class Cluster:
    """What exists: node names, and pods by (namespace, name) -> uid."""
    nodes: frozenset
    pods: dict

    @classmethod
    def read(cls, client) -> "Cluster":
        nodes = frozenset(str((n.get("metadata") or {}).get("name")) for n in client.list_nodes())
        pods = {}
        for p in client.list_pods():
            meta = p.get("metadata") or {}
            pods[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = str(meta.get("uid") or "")
        return cls(nodes, pods)

    def why_gone(self, a) -> str:
        """Empty when the allocation's node and pod exist; else why it is gone."""
        if a.node and a.node not in self.nodes:
            return f"node {a.node} no longer exists"
        if not a.pod_name:
            return ""
        pod = f"pod {a.pod_namespace}/{a.pod_name}"
        uid = self.pods.get((a.pod_namespace, a.pod_name))
        if uid is None:
            return f"{pod} no longer exists"
        if a.pod_uid and uid and uid != a.pod_uid:
            return f"{pod} was recreated (uid {uid}, the lease is for {a.pod_uid})"
        return ""


def collect(client, grace: float = DEFAULT_GRACE, now: Callable[[], float] = time.time,
            dry_run: bool = False) -> Report:
    """One pass over every block (see the module doc). `client` is a KubeClient."""
    from ..k8s.errors import Conflict, NotFound

    report = Report()
    objects = client.list_objects(GROUP, VERSION, BLOCKS)
    cluster = Cluster.read(client)
    report.blocks = len(objects)
    for obj in objects:
        try:
            block = Block.from_object(obj)
        except (ValueError, TypeError, AttributeError) as e:
            log.get().warning("ignoring a malformed IPBlock", block=(obj.get("metadata") or {}).get("name"),
                              error=str(e))
            continue
        report.allocations += len(block.allocations)
        for attempt in range(RETRIES):
            try:
                done = _collect_block(client, block, cluster, grace, now(), dry_run)
            except Conflict:
                report.conflicts += 1
            except NotFound:
                break   # released meanwhile
            else:
                for act in done:
                    log.get().info("ipam gc", dry_run=dry_run, **act.to_dict())
                report.actions += done
                break
            try:
                block = Block.from_object(client.get_object(GROUP, VERSION, BLOCKS, block.name))
            except NotFound:
                break
        else:
            log.get().warning("ipam gc: block kept changing, left for the next pass", block=block.name)
    return report


def _collect_block(client, block: Block, cluster: Cluster, grace: float, now: float,
                   dry_run: bool) -> list[Action]:
    actions: list[Action] = []
    changed = False
    for addr, a in list(block.allocations.items()):
        why = cluster.why_gone(a)
        if not why:
            if a.missing_since is not None:
                a.missing_since = None
                changed = True
                actions.append(Action("unmarked", block.name, addr, a.node))
            continue
        if a.missing_since is None and grace > 0:
            a.missing_since = now
            changed = True
            actions.append(Action("marked", block.name, addr, a.node, why))
        elif a.missing_since is None or now - a.missing_since >= grace:
            del block.allocations[addr]
            changed = True
            since = "no grace period" if a.missing_since is None else f"gone for {int(now - a.missing_since)}s"
            actions.append(Action("freed", block.name, addr, a.node, f"{why} ({since})"))
    if block.node not in cluster.nodes:
        alive = Counter(a.node for a in block.allocations.values() if a.node in cluster.nodes)
        if not block.allocations:
            actions.append(Action("released", block.name, reason=f"node {block.node} no longer exists"))
            if not dry_run:
                client.delete_object(GROUP, VERSION, BLOCKS, block.name, resource_version=block.resource_version)
            return actions
        if alive:
            heir = sorted(alive.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            actions.append(Action("handed-over", block.name, node=heir,
                                  reason=f"node {block.node} no longer exists"))
            block.node = heir
            changed = True
    if changed and not dry_run:
        client.replace_object(GROUP, VERSION, BLOCKS, block.name, block.to_object())
    return actions


def run_every(client, every: float, grace: float = DEFAULT_GRACE, on_report: Callable[[Report], None] = print,
              on_error: Optional[Callable[[Exception], None]] = None, stop: Optional[threading.Event] = None,
              now: Callable[[], float] = time.time, dry_run: bool = False) -> None:
    """A pass every `every` seconds until `stop` is set; a failed pass is reported and retried."""
    from ..cni.errors import CNIError

    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            on_report(collect(client, grace, now, dry_run))
        except CNIError as e:
            (on_error or (lambda err: log.get().error("ipam gc failed", error=str(err))))(e)
        stop.wait(every)
