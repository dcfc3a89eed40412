"""policy: the node daemon keeps every local pod's MultiNetworkPolicy table current.

Watches three kinds it registers itself (before their first use, in the factory):

| kind | what | from the API | from a local directory |
|---|---|---|---|
| `multinetworkpolicies` | the policies | k8s.cni.cncf.io/v1beta1 multi-networkpolicies, every namespace | `MultiNetworkPolicy` objects (e.g. `multinetworkpolicies/`) |
| `namespaces` | namespace labels (namespaceSelector) | v1 namespaces | `Namespace` objects (e.g. `namespaces/`) |
| `policy-pods` | every pod of the cluster: labels, named ports, network-status (peers) | v1 pods, no field selector | `Pod` objects |

One key, "all": a pass of the engine (multiplex/policy/mnp/engine.py) over every local pod: a
pod joining or leaving anywhere changes peer sets only (one `nft -f` per pod whose sets
changed); a policy added, changed or removed replaces the tables it touches. The resync (30 s)
queues "verify": the same pass, but each table is read back first, so a table removed or edited
by hand is back within that period. The engine is registered for the meta plugin's enforce step
(multiplex/policy/mnp/hooks.py): an ADD served by this daemon gets its rules before it returns
and queues a pass for the others' sets; a DEL does too.

Errors: a policy that cannot be applied is logged once per pod interface and counted in
`multiplex_policy_errors_total{policy}` (registered on the daemon's metrics registry); its
interfaces fail closed (engine.py says why).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from ..daemon.controller import Controller, DaemonContext

NAME = "policy"
POLICIES_KIND = "multinetworkpolicies"
NAMESPACES_KIND = "namespaces"
PODS_KIND = "policy-pods"


def register_kinds(objects: Any) -> None:
    """Make the three kinds known to the ObjectSource (a source without `register`, a test double,
    serves any kind it is asked for)."""
    register = getattr(objects, "register", None)
    if register is None:
        return
    kinds = getattr(objects, "kinds", {})
    from ..k8s.objects import KubeKind, KubeObjects, LocalKind

    if isinstance(objects, KubeObjects):
        from ..k8s.client import PODS, Resource

        specs = {POLICIES_KIND: KubeKind(Resource(MNP_GROUP, MNP_VERSION, MNP_PLURAL, "MultiNetworkPolicy")),
                 NAMESPACES_KIND: KubeKind(Resource("", "v1", "namespaces", "namespace")),
                 PODS_KIND: KubeKind(PODS)}
    else:
        specs = {POLICIES_KIND: LocalKind("MultiNetworkPolicy"), NAMESPACES_KIND: LocalKind("Namespace", namespaced=False),
                 PODS_KIND: LocalKind("Pod")}
    for kind, spec in specs.items():
        if kind not in kinds:
            try:
                register(kind, spec)
            except ValueError:
                pass   # already watched (the authorize hooks' namespaces): the same objects, which is all we need


class PolicyController(Controller):
    name = NAME
    watches = (POLICIES_KIND, NAMESPACES_KIND, PODS_KIND)
    resync = 30.0

    def __init__(self) -> None:
        self.engine: Any = None
        self._errors: Any = None
        #: pod -> what policies read of it, as last seen (keys_for runs on the informer's thread only)
        self._fingerprints: dict[str, tuple] = {}

    def setup(self, daemon: DaemonContext) -> None:
        super().setup(daemon)
        from ..policy.mnp import hooks
        from ..policy.mnp.engine import Engine, Snapshot

        objects = daemon.objects

        def snapshot() -> Snapshot:
            return Snapshot(objects.informer(POLICIES_KIND).list(), objects.informer(NAMESPACES_KIND).list(),
                            objects.informer(PODS_KIND).list())

        self._errors = _error_counter(daemon.metrics)
        self.engine = Engine(snapshot, daemon.state_dir, daemon.log.child(controller=NAME),
                             on_error=self._count_error, on_change=lambda: self.enqueue("all"))
        hooks.register(self.engine)

    def _count_error(self, policy: str) -> None:
        if self._errors is not None:
            self._errors.labels(policy=policy).inc()

    def keys_for(self, kind: str, event: str, obj: dict) -> Iterable[str]:
        """A pass for every policy and namespace event; for a pod, only when what policies read of
        it changed (labels, named ports, network-status) or it went: a busy cluster's pod status
        updates do not each cost a pass over this node's pods."""
        if kind != PODS_KIND:
            return ("all",)
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        if event == "DELETED":
            self._fingerprints.pop(key, None)
            return ("all",)
        from ..policy.mnp.model import named_ports

        print_ = (tuple(sorted((meta.get("labels") or {}).items())), repr(named_ports(obj)),
                  (meta.get("annotations") or {}).get("k8s.v1.cni.cncf.io/network-status", ""))
        if self._fingerprints.get(key) == print_:
            return ()
        self._fingerprints[key] = print_
        return ("all",)

    def all_keys(self) -> Iterable[str]:
        return ("verify",)

    def reconcile(self, key: str) -> None:
        counts = self.engine.sync_all(verify=key == "verify")
        if counts["full"] or counts["sets"] or counts["removed"]:
            self.daemon.log.info("policy pass", key=key, **self.engine.last_pass)

    def stop(self) -> None:
        from ..policy.mnp import hooks

        if self.engine is not None:
            hooks.unregister(self.engine)


def _error_counter(metrics: Any) -> Any:
    """`multiplex_policy_errors_total{policy}` on the daemon's registry (None without one)."""
    registry = getattr(metrics, "registry", None)
    if registry is None:
        return None
    from prometheus_client import Counter

    try:
        return Counter("multiplex_policy_errors_total", "MultiNetworkPolicy errors (a pod interface failed closed), "
                       "by policy", ["policy"], registry=registry)
    except ValueError:   # registered already (a second controller on one registry)
        return None


MNP_GROUP, MNP_VERSION, MNP_PLURAL = "k8s.cni.cncf.io", "v1beta1", "multi-networkpolicies"


def crd_served(objects: Any, log: Any) -> bool:
    """Whether the API serves MultiNetworkPolicies (one `list ?limit=1`). Without the CRD (404) or
    the right to list them (403) the watch could never sync and the daemon would never be ready,
    so the controller is left out, with the reason logged; install the CRD (and RBAC) and restart
    the daemon to enforce policies. An API that cannot be reached now says nothing: the controller
    runs and waits for its watch like every other."""
    client = getattr(objects, "client", None)
    if client is None:
        return True
    from ..k8s.client import custom
    from ..k8s.errors import Forbidden, NotFound

    try:
        client.request("list", "GET", custom(MNP_GROUP, MNP_VERSION, MNP_PLURAL), query={"limit": "1"})
    except NotFound:
        log.warning("MultiNetworkPolicy CRD not installed (multi-networkpolicies.k8s.cni.cncf.io v1beta1): "
                    "the policy controller is not run; install it and restart the daemon to enforce policies")
        return False
    except Forbidden as e:
        log.error("cannot list multi-networkpolicies (RBAC): the policy controller is not run", error=e.msg)
        return False
    except Exception as e:  # noqa: BLE001 - unreachable now: run, the watch retries
        log.warning("cannot ask the API for multi-networkpolicies yet; the policy controller waits for its watch",
                    error=str(e))
    return True


def controller(daemon: DaemonContext) -> Optional[PolicyController]:
    """The entry point: every daemon runs one where policies can exist (a local directory, or an
    API serving the CRD); without policies it adds nothing and removes nothing."""
    if not crd_served(daemon.objects, daemon.log):
        return None
    register_kinds(daemon.objects)
    return PolicyController()
