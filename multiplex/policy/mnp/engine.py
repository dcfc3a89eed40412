"""The node's MultiNetworkPolicy engine: which pods are here, what applies to each, and keeping
each pod's table in its netns current.

- **Local pods** are the node's result cache (`<state>/cache`, written by every ADD): each
  complete record names the pod, its netns and every attachment (network, ifname, addresses).
  The cache is on disk, so the engine needs no API server to know what is here, and a daemon
  restart loses nothing. An ADD under way registers its pod first (`enforce_add`).
- **Peers** are every pod the view knows (all namespaces, all nodes: their network-status
  annotation), with this node's pods' addresses taken from the cache (current before the
  annotation is written back).
- **One pass** (`sync_all`) reads the view once, compiles each local pod and applies what
  changed: nothing, a set update, or a full replace (apply.py). Compiling is pure Python; only a
  change runs nft.
- **A policy that cannot be applied** (a bad selector or CIDR, an unknown named port): the
  interfaces it may police **fail closed** (drop all both ways but neighbour discovery) until it
  is fixed. Chosen over "keep the last good ruleset" because a pod that never had a good one (a
  new pod, a daemon restart) would otherwise be open, and because the result is the same whatever
  happened before: what a policy author sees does not depend on history. Each error is logged
  once per distinct message, counted (`errors`, and `multiplex_policy_errors_total` in the
  daemon), and written to the pod's status file for `multiplex policy show`.
- **Status files** `<state>/policy/pods/<containerID>.json` say what applies to each interface
  and the structure hash now in the netns (CHECK and DEL read them, even from another process);
  `<state>/policy/networks.json` lists, per namespace, the networks policies name: a one-shot ADD
  (no daemon in its process) closes those interfaces until the controller takes over (hooks.py).

Thread-safe: the controller's thread and the CNI server's workers (ADD, DEL) share one engine;
its lock is held per pod, so an ADD never waits for a whole pass (`sync_all` says how a pass and an
ADD of the same pod are kept from undoing each other).
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ...util import log as _log
from . import compiler
from .apply import Applier
from .model import PolicyError, PodInfo, namespace_labels, parse_policy, pod_info, policy_networks

POD_NAMESPACE_ARG = "K8S_POD_NAMESPACE"
POD_NAME_ARG = "K8S_POD_NAME"


@dataclass
class LocalPod:
    container_id: str
    netns: str
    namespace: str
    name: str
    #: (ifname, network, addresses)
    interfaces: list[tuple[str, str, list[str]]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Snapshot:
    """What the engine reads from the watches: raw objects as the API serves them."""
    policies: list[dict]
    namespaces: list[dict]
    pods: list[dict]


def policy_dir(state_dir: Optional[str]) -> str:
    from ...util.state import root

    return os.path.join(root(state_dir), "policy")


def status_path(state_dir: Optional[str], container_id: str) -> str:
    return os.path.join(policy_dir(state_dir), "pods", f"{container_id}.json")


def read_status(state_dir: Optional[str], container_id: str) -> Optional[dict]:
    try:
        with open(status_path(state_dir, container_id), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def local_pod_from_record(container_id: str, record: dict) -> Optional[LocalPod]:
    """A cache record -> LocalPod (None when it names no pod or no netns)."""
    args = record.get("cniArgs") or {}
    name = args.get(POD_NAME_ARG) or ""
    netns = record.get("netns") or ""
    if not name or not netns:
        return None
    ifaces = []
    for entry in record.get("attachments") or []:
        if not isinstance(entry, dict) or not entry.get("result"):
            continue
        ips = [str(ip.get("address", "")).split("/")[0] for ip in (entry["result"].get("ips") or [])
               if isinstance(ip, dict)]
        ifaces.append((str(entry.get("ifname", "")), str(entry.get("network", "")), [i for i in ips if i]))
    return LocalPod(container_id, netns, args.get(POD_NAMESPACE_ARG) or "default", name, ifaces)


class Engine:
    def __init__(self, snapshot: Callable[[], Snapshot], state_dir: Optional[str] = None,
                 log: Optional[_log.Logger] = None, applier: Optional[Applier] = None,
                 on_error: Optional[Callable[[str], None]] = None, on_change: Optional[Callable[[], None]] = None,
                 per_address_rules: bool = False):
        """`snapshot`: reads the watched objects; `on_error(policy)`: a policy could not be applied
        (the daemon counts it); `on_change()`: the local pods changed outside a pass (an ADD or
        DEL), so the others' peer sets need a pass (the controller queues one).
        `per_address_rules`: one rule per peer address instead of sets (the benchmark's other side,
        as rule-per-address implementations do)."""
        self.snapshot = snapshot
        self.per_address_rules = per_address_rules
        self.state_dir = state_dir
        self.log = log or _log.get()
        self.applier = applier or Applier()
        self.on_error = on_error
        self.on_change = on_change
        self.errors = 0
        self._seen_errors: set[str] = set()
        self._pending: dict[str, tuple[LocalPod, Optional[dict]]] = {}
        self._labels: dict[str, dict] = {}     # containerID -> the pod object last seen
        #: containers being deleted: their cache entry lingers until DEL ends, the pass skips them
        self._deleted: set[str] = set()
        self._lock = threading.RLock()
        self.last_pass: dict[str, Any] = {}
        self._last_local: Optional[list[LocalPod]] = None
        self._generation = 0
        self._touched: dict[str, int] = {}

    # --- what is here ----------------------------------------------------------------------------
    def local_pods(self) -> list[LocalPod]:
        from ...cni.cache import ResultCache

        out: dict[str, LocalPod] = {}
        try:
            entries = list(ResultCache(os.path.join(os.path.dirname(policy_dir(self.state_dir)), "cache")).entries())
        except Exception as e:   # an unreadable state dir: nothing local (logged; next pass retries)
            self.log.warning("policy: cannot read the result cache", error=str(e))
            entries = []
        with self._lock:   # a DEL's tombstone lasts until its cache entry is gone
            self._deleted &= {cid for cid, _i, _r in entries}
            deleted = set(self._deleted)
        for cid, _ifname, record in entries:
            if cid in deleted:
                continue
            if isinstance(record, dict) and record.get("complete"):
                pod = local_pod_from_record(cid, record)
                if pod is not None:
                    out[cid] = pod
        with self._lock:
            for cid, (pod, _obj) in self._pending.items():
                out.setdefault(cid, pod)
        return list(out.values())

    # --- the view --------------------------------------------------------------------------------
    def view(self, snap: Snapshot, local: list[LocalPod]) -> compiler.PolicyView:
        policies, broken = [], []
        for obj in snap.policies:
            try:
                policies.append(parse_policy(obj))
            except PolicyError as e:
                meta = obj.get("metadata") or {}
                ns = meta.get("namespace") or "default"
                try:
                    nets: Optional[tuple[str, ...]] = policy_networks(
                        (meta.get("annotations") or {}).get("k8s.v1.cni.cncf.io/policy-for"), ns, e.policy)
                except PolicyError:
                    nets = None
                broken.append((ns, nets, e))
        namespaces = {(n.get("metadata") or {}).get("name", ""): namespace_labels(n) for n in snap.namespaces}
        pods: dict[str, PodInfo] = {}
        for obj in snap.pods:
            info = pod_info(obj)
            pods[info.key] = info
        with self._lock:
            pending_objs = {cid: obj for cid, (_p, obj) in self._pending.items() if obj}
        unknown: set[str] = set()
        for lp in local:
            info = pods.get(lp.key)
            if info is None:
                obj = pending_objs.get(lp.container_id) or self._labels.get(lp.container_id)
                info = pod_info(obj) if obj else PodInfo(lp.namespace, lp.name)
                pods[lp.key] = info
                if not obj:
                    unknown.add(lp.key)
            for _ifname, network, ips in lp.interfaces:
                if ips:
                    info.addresses[network] = list(ips)
        view = compiler.PolicyView(policies, broken, namespaces, list(pods.values()))
        view.__dict__["_unknown"] = unknown
        return view

    # --- passes ----------------------------------------------------------------------------------
    def compile(self, view: compiler.PolicyView, pod: LocalPod) -> compiler.Ruleset:
        """The pod's ruleset. A local pod whose labels are unknown (neither watched nor readable
        from the API yet) cannot be matched against its namespace's selectors: compiled without
        labels it would be left open by every policy that selects by label. Fail closed instead,
        as the one-shot ADD does: the networks its namespace's policies police are closed for it
        until a pass knows its labels."""
        info = view.pod(pod.key) or PodInfo(pod.namespace, pod.name)
        if pod.key in view.__dict__.get("_unknown", ()):
            policed = {n for p in view.policies if p.namespace == pod.namespace for n in p.networks}
            policed |= {n for ns, nets, _e in view.broken if ns == pod.namespace for n in (nets or ())}
            closed = tuple(n for _i, n, _a in pod.interfaces if n in policed)
            if closed:
                waiting = PolicyError("(labels unknown)", "metadata.labels",
                                      "the pod's labels are not known yet (not watched, not readable)")
                view = compiler.PolicyView(view.policies, view.broken + [(pod.namespace, closed, waiting)],
                                           view.namespaces, view.pods)
        return compiler.compile_pod(view, info, [(i, n) for i, n, _ in pod.interfaces], self.per_address_rules)

    def sync_all(self, verify: bool = False) -> dict[str, int]:
        """One pass over every local pod. Returns how many got a full replace, a set update,
        nothing, a removal, or failed (an nft error: raised after the pass, so it is retried).

        The engine's lock is held while the view is read and then for each pod in turn, not for the
        whole pass: an ADD waits for at most one pod's transaction, never for a pass over hundreds.
        A pod that an ADD or DEL touched after this pass read its view is left to the pass that
        the ADD or DEL queued (this one's view of it is older than what is in its netns)."""
        with self._lock:
            started = time.perf_counter()
            local = self.local_pods()
            self._last_local = local
            view = self.view(self.snapshot(), local)
            self._write_networks(view)
            generation = self._generation
        counts = {"full": 0, "sets": 0, "none": 0, "removed": 0, "failed": 0}
        first: Optional[Exception] = None
        for pod in local:
            with self._lock:
                if self._touched.get(pod.container_id, -1) > generation or pod.container_id in self._deleted:
                    continue
                if not os.path.exists(pod.netns):
                    continue   # the pod is gone; its DEL (or GC) cleans the cache
                try:
                    counts[self._sync(view, pod, verify)] += 1
                except Exception as e:
                    counts["failed"] += 1
                    first = first or e
                    self.log.warning("policy: cannot apply a pod's rules", pod=pod.key, error=str(e))
        self.last_pass = dict(counts, pods=len(local), seconds=round(time.perf_counter() - started, 4))
        if first is not None:
            raise first
        return counts

    def _touch(self, container_id: str) -> None:
        """Under the lock: an ADD or DEL changed this pod after any pass under way read its view."""
        self._generation += 1
        self._touched[container_id] = self._generation
        if len(self._touched) > 4096:   # old marks matter only to passes under way: keep the newest
            for cid in sorted(self._touched, key=self._touched.get)[:2048]:
                del self._touched[cid]

    def _sync(self, view: compiler.PolicyView, pod: LocalPod, verify: bool) -> str:
        rs = self.compile(view, pod)
        for plan in rs.interfaces:
            for err in plan.errors:
                self._report(err, pod, plan.ifname)
        done = self.applier.apply(pod.netns, rs, verify=verify)
        self._write_status(pod, rs)   # also when nft had nothing to do: the reasons may differ
        return done

    def _report(self, error: str, pod: LocalPod, ifname: str) -> None:
        key = f"{pod.container_id}/{ifname}: {error}"
        if key in self._seen_errors:
            return
        self._seen_errors.add(key)
        self.errors += 1
        self.log.error("policy cannot be applied; the interface fails closed", pod=pod.key, ifname=ifname,
                       error=error)
        if self.on_error is not None:   # the policy's namespace/name, as PolicyError words it
            self.on_error(error.split(":")[0].removeprefix("MultiNetworkPolicy ").strip())

    # --- the CNI path ----------------------------------------------------------------------------
    def enforce_add(self, pod: LocalPod, pod_object: Optional[dict]) -> compiler.Ruleset:
        """ADD: the pod's rules in its netns now (before ADD returns). The pod stays registered
        until its cache record is complete; the other pods' sets follow in the next pass."""
        with self._lock:
            self._touch(pod.container_id)
            self._deleted.discard(pod.container_id)
            self._pending[pod.container_id] = (pod, pod_object)
            if pod_object:
                self._labels[pod.container_id] = pod_object
            # the last pass's pods (reading the whole cache on an ADD's path would cost a file per pod)
            known = self._last_local if self._last_local is not None else self.local_pods()
            local = [p for p in known if p.container_id != pod.container_id and p.container_id not in self._deleted]
            local += [p for cid, (p, _o) in self._pending.items() if cid != pod.container_id] + [pod]
            view = self.view(self.snapshot(), local)
            rs = self.compile(view, pod)
            for plan in rs.interfaces:
                for err in plan.errors:
                    self._report(err, pod, plan.ifname)
            self.applier.apply(pod.netns, rs, verify=True)
            self._write_status(pod, rs)
        if self.on_change is not None:
            self.on_change()
        return rs

    def added(self, container_id: str) -> None:
        """The ADD's record is complete: the cache names the pod from now on."""
        with self._lock:
            self._pending.pop(container_id, None)

    def delete(self, container_id: str, netns: str) -> None:
        """DEL: the table out of the pod's netns (when it is still there) and the pod out of every
        later pass, under the engine's lock so that no pass puts the table back meanwhile; then a
        pass for the others' sets."""
        with self._lock:
            self._touch(container_id)
            self._deleted.add(container_id)
            self._pending.pop(container_id, None)
            self._labels.pop(container_id, None)
            self._seen_errors = {k for k in self._seen_errors if not k.startswith(container_id + "/")}
            if netns and os.path.exists(netns):
                self.applier.remove(netns)
            elif netns:
                self.applier.forget(netns)
        if self.on_change is not None:
            self.on_change()

    # --- files -----------------------------------------------------------------------------------
    def _write_status(self, pod: LocalPod, rs: compiler.Ruleset) -> None:
        write_status(self.state_dir, pod, rs)

    def _write_networks(self, view: compiler.PolicyView) -> None:
        from ...util.files import atomic_write

        nets: dict[str, set[str]] = {}
        for p in view.policies:
            nets.setdefault(p.namespace, set()).update(p.networks)
        for ns, names, _err in view.broken:
            nets.setdefault(ns, set()).update(names or ("*",))
        text = json.dumps({ns: sorted(v) for ns, v in sorted(nets.items())}, indent=1) + "\n"
        path = os.path.join(policy_dir(self.state_dir), "networks.json")
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return
        except OSError:
            pass
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, text, mode=0o644)


def write_status(state_dir: Optional[str], pod: LocalPod, rs: compiler.Ruleset) -> None:
    """What applies to each interface of `pod` and the hash now in its netns (CHECK, DEL, show)."""
    from ...util.files import atomic_write

    path = status_path(state_dir, pod.container_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {"pod": pod.key, "containerID": pod.container_id, "netns": pod.netns,
            "hash": "" if rs.empty else rs.hash,
            "interfaces": [{"ifname": p.ifname, "network": p.network, "ingress": p.ingress, "egress": p.egress,
                            "errors": p.errors} for p in rs.interfaces],
            "sets": {n: len(s.elements) for n, s in rs.sets.items()}}
    text = json.dumps(data, indent=1) + "\n"
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    atomic_write(path, text, mode=0o644)


def remove_status(state_dir: Optional[str], container_id: str) -> None:
    try:
        os.unlink(status_path(state_dir, container_id))
    except FileNotFoundError:
        pass
