"""MultiNetworkPolicy (k8s.cni.cncf.io/v1beta1) read into plain objects, and label selectors.

A MultiNetworkPolicy is a NetworkPolicy's spec under another kind, plus the annotation
`k8s.v1.cni.cncf.io/policy-for`: a comma list of NADs (`name` in the policy's namespace, or
`namespace/name`) whose interfaces it polices. A policy without the annotation polices nothing
(multi-networkpolicy-iptables does the same: the pod network is Kubernetes' NetworkPolicy's).

NetworkPolicy's rules as read here:
- `policyTypes` absent: Ingress, plus Egress when `spec.egress` is present.
- a rule's `from`/`to` absent or empty: every peer; its `ports` absent or empty: every port and
  protocol (ICMP included); a port's `protocol` defaults to TCP; `endPort` needs a numeric `port`.
- a peer is `podSelector` (pods of the policy's namespace), `namespaceSelector` (every pod of the
  namespaces selected), both (the pods selected in the namespaces selected), or `ipBlock`
  (`cidr` minus every `except`).
- an empty selector `{}` selects everything; a selector that is missing is "not given".

Anything malformed (an unknown operator, `In` without values, a bad CIDR, a port out of range)
is a PolicyError naming the policy and the field: the caller decides what a pod gets then
(engine.py: fail closed). Stdlib only.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Optional, Union

POLICY_FOR = "k8s.v1.cni.cncf.io/policy-for"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class PolicyError(ValueError):
    """A policy that cannot be applied: `policy` is `namespace/name`, `field` where it is wrong."""

    def __init__(self, policy: str, where: str, message: str):
        super().__init__(f"MultiNetworkPolicy {policy}: {where}: {message}")
        self.policy = policy
        self.where = where
        self.message = message


# --- label selectors ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str                  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels   # DoesNotExist


@dataclass(frozen=True)
class Selector:
    """A metav1.LabelSelector: every requirement must hold; no requirement selects everything."""
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Optional[dict[str, str]]) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def parse_selector(raw: Any, policy: str, where: str) -> Selector:
    """A LabelSelector (`matchLabels` and `matchExpressions`), checked as the API server would."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(policy, where, f"a label selector must be an object, not {type(raw).__name__}")
    reqs: list[Requirement] = []
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise PolicyError(policy, f"{where}.matchLabels", "must be an object of key: value")
    for k, v in sorted(labels.items()):
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise PolicyError(policy, f"{where}.matchLabels", f"{k!r}: {v!r} is not a string label")
        reqs.append(Requirement(k, "In", (v,)))
    exprs = raw.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise PolicyError(policy, f"{where}.matchExpressions", "must be a list")
    for i, e in enumerate(exprs):
        w = f"{where}.matchExpressions[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("key"), str) or not e.get("key"):
            raise PolicyError(policy, w, "needs a key")
        op, values = e.get("operator"), e.get("values") or []
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise PolicyError(policy, f"{w}.operator", f"{op!r} is not one of In, NotIn, Exists, DoesNotExist")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise PolicyError(policy, f"{w}.values", "must be a list of strings")
        if op in ("In", "NotIn") and not values:
            raise PolicyError(policy, f"{w}.values", f"operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            raise PolicyError(policy, f"{w}.values", f"operator {op} takes no values")
        reqs.append(Requirement(e["key"], op, tuple(values)))
    return Selector(tuple(reqs))


# --- the policy -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Port:
    protocol: str                  # TCP, UDP, SCTP
    port: Union[int, str, None]    # a number, a named port, or None (every port of the protocol)
    end_port: Optional[int] = None


@dataclass(frozen=True)
class IPBlock:
    cidr: Network
    excepts: tuple[Network, ...] = ()

    def prefixes(self) -> list[Network]:
        """`cidr` minus every `except`, as prefixes (what an nft interval set holds)."""
        out = [self.cidr]
        for ex in self.excepts:
            nxt: list[Network] = []
            for net in out:
                if ex.version != net.version or not net.overlaps(ex):
                    nxt.append(net)
                elif ex.supernet_of(net):
                    continue
                else:
                    nxt.extend(net.address_exclude(ex))
            out = nxt
        return sorted(out, key=lambda n: (n.version, n.network_address, n.prefixlen))


@dataclass(frozen=True)
class Peer:
    pod_selector: Optional[Selector] = None
    namespace_selector: Optional[Selector] = None
    ip_block: Optional[IPBlock] = None


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] = ()   # empty: every peer
    ports: tuple[Port, ...] = ()   # empty: every port and protocol


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    networks: tuple[str, ...]      # `namespace/name` of each NAD in policy-for
    pod_selector: Selector
    ingress: Optional[tuple[Rule, ...]]   # None: the policy does not police ingress
    egress: Optional[tuple[Rule, ...]]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selects(self, namespace: str, labels: dict[str, str]) -> bool:
        return namespace == self.namespace and self.pod_selector.matches(labels)


def policy_networks(annotation: Any, namespace: str, policy: str) -> tuple[str, ...]:
    """policy-for: `a, other/b` -> ("ns/a", "other/b")."""
    if annotation is None:
        return ()
    if not isinstance(annotation, str):
        raise PolicyError(policy, f"metadata.annotations[{POLICY_FOR}]", "must be a string")
    out = []
    for item in annotation.split(","):
        item = item.strip()
        if not item:
            continue
        ns, _, name = item.rpartition("/")
        if not name or "/" in ns:
            raise PolicyError(policy, f"metadata.annotations[{POLICY_FOR}]", f"{item!r} is not NAME or NAMESPACE/NAME")
        out.append(f"{ns or namespace}/{name}")
    return tuple(dict.fromkeys(out))


def _port(raw: Any, policy: str, where: str) -> Port:
    if not isinstance(raw, dict):
        raise PolicyError(policy, where, "a port must be an object")
    proto = raw.get("protocol") or "TCP"
    if proto not in PROTOCOLS:
        raise PolicyError(policy, f"{where}.protocol", f"{proto!r} is not one of {', '.join(PROTOCOLS)}")
    port, end = raw.get("port"), raw.get("endPort")
    if isinstance(port, bool) or not (port is None or isinstance(port, (int, str))):
        raise PolicyError(policy, f"{where}.port", "must be a number or a port name")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, int) and not 1 <= port <= 65535:
        raise PolicyError(policy, f"{where}.port", f"{port} is not in 1-65535")
    if isinstance(port, str) and not port:
        raise PolicyError(policy, f"{where}.port", "an empty port name")
    if end is not None:
        if not isinstance(port, int):
            raise PolicyError(policy, f"{where}.endPort", "needs a numeric port")
        if isinstance(end, bool) or not isinstance(end, int) or not port <= end <= 65535:
            raise PolicyError(policy, f"{where}.endPort", f"{end!r} must be a number from port ({port}) to 65535")
    return Port(proto, port, end)


def _peer(raw: Any, policy: str, where: str) -> Peer:
    if not isinstance(raw, dict):
        raise PolicyError(policy, where, "a peer must be an object")
    block = raw.get("ipBlock")
    if block is not None:
        if raw.get("podSelector") is not None or raw.get("namespaceSelector") is not None:
            raise PolicyError(policy, where, "ipBlock cannot be combined with a selector")
        if not isinstance(block, dict):
            raise PolicyError(policy, f"{where}.ipBlock", "must be an object")
        try:
            cidr = ipaddress.ip_network(str(block.get("cidr")), strict=False)
            excepts = tuple(ipaddress.ip_network(str(e), strict=False) for e in block.get("except") or [])
        except ValueError as e:
            raise PolicyError(policy, f"{where}.ipBlock", f"not a CIDR: {e}") from None
        for ex in excepts:
            if ex.version != cidr.version or not ex.subnet_of(cidr):
                raise PolicyError(policy, f"{where}.ipBlock.except", f"{ex} is not inside {cidr}")
        return Peer(ip_block=IPBlock(cidr, excepts))
    pods = raw.get("podSelector")
    nss = raw.get("namespaceSelector")
    if pods is None and nss is None:
        raise PolicyError(policy, where, "a peer needs podSelector, namespaceSelector or ipBlock")
    return Peer(pod_selector=None if pods is None else parse_selector(pods, policy, f"{where}.podSelector"),
                namespace_selector=None if nss is None else parse_selector(nss, policy, f"{where}.namespaceSelector"))


def _rules(raw: Any, peers_key: str, policy: str, where: str) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise PolicyError(policy, where, "must be a list of rules")
    out = []
    for i, r in enumerate(raw):
        w = f"{where}[{i}]"
        if r is None:
            r = {}
        if not isinstance(r, dict):
            raise PolicyError(policy, w, "a rule must be an object")
        peers = r.get(peers_key) or []
        ports = r.get("ports") or []
        if not isinstance(peers, list) or not isinstance(ports, list):
            raise PolicyError(policy, w, f"{peers_key} and ports must be lists")
        out.append(Rule(tuple(_peer(p, policy, f"{w}.{peers_key}[{k}]") for k, p in enumerate(peers)),
                        tuple(_port(p, policy, f"{w}.ports[{k}]") for k, p in enumerate(ports))))
    return tuple(out)


def parse_policy(obj: dict) -> Policy:
    """A MultiNetworkPolicy object (as the API serves it) -> Policy; PolicyError when malformed."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    key = f"{namespace}/{meta.get('name', '?')}"
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise PolicyError(key, "spec", "missing")
    networks = policy_networks((meta.get("annotations") or {}).get(POLICY_FOR), namespace, key)
    types = spec.get("policyTypes")
    if types is None:
        types = ["Ingress"] + (["Egress"] if "egress" in spec else [])
    if not isinstance(types, list) or any(t not in ("Ingress", "Egress") for t in types):
        raise PolicyError(key, "spec.policyTypes", f"{types!r}: a list of Ingress and Egress")
    selector = parse_selector(spec.get("podSelector"), key, "spec.podSelector")
    ingress = _rules(spec.get("ingress") or [], "from", key, "spec.ingress") if "Ingress" in types else None
    egress = _rules(spec.get("egress") or [], "to", key, "spec.egress") if "Egress" in types else None
    return Policy(namespace, str(meta.get("name", "")), networks, selector, ingress, egress)


# --- pods as the engine sees them ------------------------------------------------------------------

@dataclass
class PodInfo:
    """A pod: labels, named ports (name -> [(protocol, port)]), addresses per network."""
    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    named_ports: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    #: network (`ns/name`) -> addresses on it (no prefix length)
    addresses: dict[str, list[str]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def named_ports(pod: dict) -> dict[str, list[tuple[str, int]]]:
    """`spec.containers[*].ports[*]` with a name -> [(protocol, containerPort)]."""
    out: dict[str, list[tuple[str, int]]] = {}
    for c in ((pod.get("spec") or {}).get("containers") or []):
        for p in (c.get("ports") or []) if isinstance(c, dict) else []:
            if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int):
                out.setdefault(p["name"], []).append((p.get("protocol") or "TCP", p["containerPort"]))
    return out


def status_addresses(pod: dict) -> dict[str, list[str]]:
    """network -> addresses, from the pod's network-status annotation (malformed: none)."""
    import json

    text = ((pod.get("metadata") or {}).get("annotations") or {}).get("k8s.v1.cni.cncf.io/network-status")
    try:
        entries = json.loads(text) if text else []
    except ValueError:
        return {}
    out: dict[str, list[str]] = {}
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("name"), str):
            for ip in e.get("ips") or []:
                try:
                    out.setdefault(e["name"], []).append(str(ipaddress.ip_address(str(ip).split("/")[0])))
                except ValueError:
                    continue
    return out


def pod_info(pod: dict) -> PodInfo:
    meta = pod.get("metadata") or {}
    return PodInfo(meta.get("namespace") or "default", meta.get("name") or "", dict(meta.get("labels") or {}),
                   named_ports(pod), status_addresses(pod))


def namespace_labels(ns: dict) -> dict[str, str]:
    """A Namespace's labels, with `kubernetes.io/metadata.name` as the API server sets it."""
    meta = ns.get("metadata") or {}
    return {**(meta.get("labels") or {}), NAMESPACE_NAME_LABEL: meta.get("name") or ""}
