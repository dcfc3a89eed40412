"""One pod's MultiNetworkPolicies -> one nftables table for its netns (`inet multiplex_mnp`).

The table, for a pod whose `net1` is selected by a policy for ingress:

    table inet multiplex_mnp {
        comment "multiplex MultiNetworkPolicy 3f2a..."      # the structure's hash (CHECK reads it)
        set a1_4 { type ipv4_addr; comment "..."; elements = { 198.18.1.7, ... } }   # peer pods
        set a1_6 { type ipv6_addr; ... }
        chain input { type filter hook input priority filter; policy accept;
            ct state established,related accept             # replies, both directions
            iifname "net1" jump in_0 }
        chain in_0 {                                        # net1, isolated for ingress
            icmpv6 type { nd-... } accept                   # neighbour discovery always works
            ip saddr @a1_4 meta l4proto tcp th dport 8080 counter accept comment "ns/p ingress[0]"
            counter drop }
        chain output { ... oifname "net1" jump out_0 }      # only when isolated for egress
    }

Why this shape:
- **Peers live in sets, one set per (rule, family)**: a pod joining or leaving changes set
  elements, never the rules, so the update is `add element` / `delete element` of just those
  addresses in one transaction, and the counters survive. The *structure* (everything but the peer sets' elements) is hashed; the
  hash is the table's comment, so the applier knows when only sets changed and CHECK knows
  whether the table in the netns is the one it should be. A set exists even while empty, so a
  first peer arriving does not change the structure.
- **ipBlock peers** are `cidr` minus every `except` as prefixes in an interval set of their own
  (static: part of the structure).
- **Named ports**: on ingress they name the selected pod's own container port (compiled to its
  number; a name the pod does not have is a PolicyError, the issue's "unknown named port"); on
  egress each peer may number it differently, so they become a concatenated set
  `addr . port` of the peers that have it (peers without it are not allowed, as NetworkPolicy).
- **Replies** pass through conntrack (`ct state established,related accept`) before any policy
  chain, so an allowed connection's answers pass a direction that is isolated.
- **Only the input and output hooks**: a pod is an end host; forwarding through a pod is not a
  NetworkPolicy concept.
- **Fail closed**: an interface whose policies cannot be compiled gets a chain that drops all in
  both directions but neighbour discovery (engine.py says when).

`compile_pod` is pure (no I/O): the engine, the tests and the benchmark call it the same way.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Optional

from .model import Policy, PolicyError, PodInfo, Port, Rule

FAMILY = "inet"
TABLE = "multiplex_mnp"
COMMENT_PREFIX = "multiplex MultiNetworkPolicy "
ND_TYPES = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "nd-router-advert", "nd-redirect")
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_PROTO = {4: "ip", 6: "ip6"}


@dataclass
class NftSet:
    name: str
    type: str
    comment: str
    elements: list[str] = field(default_factory=list)
    interval: bool = False
    #: True: peer pods (changes without the structure); False: part of the structure (ipBlocks)
    dynamic: bool = True

    def declaration(self, with_elements: bool) -> str:
        parts = [f"type {self.type};"]
        if self.interval:
            parts.append("flags interval;")
        parts.append(f'comment "{self.comment}";')
        if with_elements and self.elements:
            parts.append("elements = { " + ", ".join(self.elements) + " };")
        return f"\tset {self.name} {{ " + " ".join(parts) + " }"


@dataclass
class InterfacePlan:
    """What applies to one interface of the pod (for `policy show` and the status file)."""
    ifname: str
    network: str
    ingress: list[str] = field(default_factory=list)   # policies isolating ingress
    egress: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)    # non-empty: the interface fails closed


@dataclass
class Ruleset:
    sets: dict[str, NftSet]
    chains: list[str]                                   # chain blocks, rendered
    interfaces: list[InterfacePlan]
    hash: str = ""

    @property
    def empty(self) -> bool:
        """No interface isolated in any direction: no table at all (no policy = all allowed)."""
        return not any(p.ingress or p.egress or p.errors for p in self.interfaces)

    def structure(self) -> str:
        lines = [s.declaration(with_elements=not s.dynamic) for s in self.sets.values()]
        return "\n".join(lines + self.chains)

    def render(self) -> str:
        """The table with every element: the body of a full replace."""
        lines = [f'\tcomment "{COMMENT_PREFIX}{self.hash}"']
        lines += [s.declaration(with_elements=True) for s in self.sets.values()]
        return f"table {FAMILY} {TABLE} {{\n" + "\n".join(lines + self.chains) + "\n}\n"

    def dynamic_sets(self) -> dict[str, frozenset[str]]:
        return {n: frozenset(s.elements) for n, s in self.sets.items() if s.dynamic}


@dataclass
class PolicyView:
    """Everything a pod's rules depend on, read once per pass."""
    policies: list[Policy]
    #: policies that did not parse: (namespace, networks it names or None when unknown, error)
    broken: list[tuple[str, Optional[tuple[str, ...]], PolicyError]]
    namespaces: dict[str, dict[str, str]]               # name -> labels
    pods: list[PodInfo]                                 # every pod known, with addresses per network

    def pod(self, key: str) -> Optional[PodInfo]:
        """The pod `namespace/name` (an index built on first use)."""
        index = self.__dict__.get("_index")
        if index is None:
            index = self.__dict__["_index"] = {p.key: p for p in self.pods}
        return index.get(key)

    def namespace_labels(self, name: str) -> dict[str, str]:
        from .model import NAMESPACE_NAME_LABEL

        return self.namespaces.get(name) or {NAMESPACE_NAME_LABEL: name}


def _version(addr: str) -> int:
    """4 or 6 of an address or prefix already checked (model.py parses every one it reads)."""
    return 6 if ":" in addr else 4


class _Builder:
    def __init__(self, view: PolicyView, pod: PodInfo, per_address_rules: bool):
        self.view = view
        self.pod = pod
        self.sets: dict[str, NftSet] = {}
        self.group = 0
        self.per_address_rules = per_address_rules

    # peers ----------------------------------------------------------------------------------
    def selected_pods(self, policy: Policy, rule: Rule) -> Optional[list[PodInfo]]:
        """Pods the rule's selector peers select (None: the rule has no selector peer)."""
        selectors = [p for p in rule.peers if p.ip_block is None]
        if not selectors:
            return None
        cache = self.view.__dict__.setdefault("_selected", {})   # the same for every local pod of a pass
        hit = cache.get(id(rule))
        if hit is not None and hit[0] is rule:
            return hit[1]
        out = []
        for pod in self.view.pods:
            for peer in selectors:
                if peer.namespace_selector is None:
                    if pod.namespace != policy.namespace:
                        continue
                elif not peer.namespace_selector.matches(self.view.namespace_labels(pod.namespace)):
                    continue
                if peer.pod_selector is not None and not peer.pod_selector.matches(pod.labels):
                    continue
                out.append(pod)
                break
        cache[id(rule)] = (rule, out)
        return out

    def addresses(self, rule: Rule, pods: list[PodInfo], network: str) -> dict[int, list[str]]:
        """{4: [...], 6: [...]}: the addresses on `network` of the pods a rule selects (the same
        for every local pod of a pass, so computed once)."""
        cache = self.view.__dict__.setdefault("_addresses", {})
        hit = cache.get((id(rule), network))
        if hit is not None and hit[0] is rule:
            return hit[1]
        out: dict[int, list[str]] = {4: [], 6: []}
        for p in pods:
            for a in p.addresses.get(network, ()):
                out[_version(a)].append(a)
        cache[(id(rule), network)] = (rule, out)
        return out

    def new_set(self, prefix: str, version: int, comment: str, elements: Iterable[str], *, interval: bool = False,
                dynamic: bool = True, key_type: str = "") -> str:
        name = f"{prefix}{self.group}_{version}"
        self.sets[name] = NftSet(name, key_type or _ADDR_TYPE[version], comment, sorted(set(elements)),
                                 interval=interval, dynamic=dynamic)
        return name

    # ports ----------------------------------------------------------------------------------
    def port_matches(self, policy: Policy, rule_where: str, ports: tuple[Port, ...], ingress: bool
                     ) -> tuple[list[str], list[Port]]:
        """(`meta l4proto P th dport {...}` per protocol for numeric ports, egress named ports)."""
        numeric: dict[str, list[str]] = {}
        named: list[Port] = []
        for k, port in enumerate(ports):
            if port.port is None:
                numeric.setdefault(port.protocol, []).append("")
            elif isinstance(port.port, int):
                numeric.setdefault(port.protocol, []).append(
                    f"{port.port}-{port.end_port}" if port.end_port and port.end_port != port.port else str(port.port))
            elif ingress:
                found = [n for proto, n in self.pod.named_ports.get(port.port, []) if proto == port.protocol]
                if not found:
                    raise PolicyError(policy.key, f"{rule_where}.ports[{k}].port",
                                      f"named port {port.port!r} ({port.protocol}) is not a container port of pod "
                                      f"{self.pod.key}")
                numeric.setdefault(port.protocol, []).extend(str(n) for n in found)
            else:
                named.append(port)
        out = []
        for proto in sorted(numeric):
            values = numeric[proto]
            if "" in values:
                out.append(f"meta l4proto {proto.lower()}")
            else:
                vals = sorted(set(values), key=lambda v: int(v.split("-")[0]))
                out.append(f"meta l4proto {proto.lower()} th dport "
                           + (vals[0] if len(vals) == 1 else "{ " + ", ".join(vals) + " }"))
        return out, named

    # rules ----------------------------------------------------------------------------------
    def rule_lines(self, policy: Policy, rule: Rule, index: int, ingress: bool, network: str) -> list[str]:
        self.group += 1
        word = "ingress" if ingress else "egress"
        where = f"spec.{word}[{index}]"
        comment = f"{policy.key} {word}[{index}]"
        side = "saddr" if ingress else "daddr"
        port_exprs, named = self.port_matches(policy, where, rule.ports, ingress)
        if not rule.ports:
            port_exprs = [""]   # every port and protocol
        peer_exprs: list[str] = []
        pods = self.selected_pods(policy, rule)
        if not rule.peers:
            peer_exprs = [""]
        if pods is not None and port_exprs:   # (all ports named: the named-port sets carry the peers)
            by_family = self.addresses(rule, pods, network)
            for v in (4, 6):
                fam = by_family[v]
                if self.per_address_rules:   # the benchmark's "rules" side: one rule per peer address
                    peer_exprs += [f"{_PROTO[v]} {side} {a}" for a in sorted(fam)]
                else:
                    name = self.new_set("a", v, f"{comment} pods", fam)
                    peer_exprs.append(f"{_PROTO[v]} {side} @{name}")
        blocks = [p.ip_block for p in rule.peers if p.ip_block is not None]
        for v in (4, 6):
            prefixes = [str(n) for b in blocks for n in b.prefixes() if n.version == v]
            if prefixes:
                name = self.new_set("b", v, f"{comment} ipBlock", prefixes, interval=True, dynamic=False)
                peer_exprs.append(f"{_PROTO[v]} {side} @{name}")
        # every peer match with every numeric port match (none when all the ports are named)
        lines = [_rule(peer, ports, comment) for peer in peer_exprs for ports in port_exprs]
        for k, port in enumerate(named):   # egress named ports: (peer address . its port number)
            candidates = self.view.pods if pods is None and not rule.peers else (pods or [])
            for v in (4, 6):
                elems = []
                for p in candidates:
                    numbers = [n for proto, n in p.named_ports.get(str(port.port), []) if proto == port.protocol]
                    elems += [f"{a} . {n}" for a in p.addresses.get(network, []) if _version(a) == v for n in numbers]
                name = self.new_set(f"n{k}x", v, f"{comment} port {port.port}", elems,
                                    key_type=f"{_ADDR_TYPE[v]} . inet_service")
                lines.append(_rule(f"meta l4proto {port.protocol.lower()} {_PROTO[v]} {side} . th dport @{name}", "",
                                   comment))
        return lines


def _rule(peer: str, ports: str, comment: str) -> str:
    body = " ".join(x for x in (peer, ports) if x)
    return f'\t\t{body + " " if body else ""}counter accept comment "{comment}"'


def _chain(name: str, lines: list[str], comment: str) -> str:
    nd = "\t\tmeta l4proto ipv6-icmp icmpv6 type { " + ", ".join(ND_TYPES) + " } accept"
    body = [nd] + lines + ['\t\tcounter drop comment "default deny"']
    return f'\tchain {name} {{\n\t\tcomment "{comment}"\n' + "\n".join(body) + "\n\t}"


def _broken_here(view: PolicyView, pod: PodInfo, network: str) -> list[str]:
    """Errors of unparsable policies that may police this interface: in the pod's namespace, naming
    its network (or naming networks we could not read)."""
    return [str(err) for ns, nets, err in view.broken
            if ns == pod.namespace and (nets is None or network in nets)]


def compile_pod(view: PolicyView, pod: PodInfo, interfaces: list[tuple[str, str]],
                per_address_rules: bool = False) -> Ruleset:
    """The ruleset of `pod`, whose `interfaces` are (ifname, network) pairs. A policy that cannot
    be compiled for an interface (unknown named port) or a broken policy that may police it makes
    that interface fail closed; the others are compiled as usual."""
    b = _Builder(view, pod, per_address_rules)
    plans: list[InterfacePlan] = []
    in_chains: list[tuple[str, str]] = []   # (ifname, chain) jumps of the input hook
    out_chains: list[tuple[str, str]] = []
    chains: list[str] = []
    for idx, (ifname, network) in enumerate(sorted(interfaces)):
        plan = InterfacePlan(ifname, network)
        plans.append(plan)
        applying = [p for p in view.policies if network in p.networks and p.selects(pod.namespace, pod.labels)]
        plan.errors = _broken_here(view, pod, network)
        mark = (b.group, dict(b.sets))
        ingress: list[str] = []
        egress: list[str] = []
        if not plan.errors:
            try:
                for p in applying:
                    if p.ingress is not None:
                        plan.ingress.append(p.key)
                        for i, r in enumerate(p.ingress):
                            ingress += b.rule_lines(p, r, i, True, network)
                    if p.egress is not None:
                        plan.egress.append(p.key)
                        for i, r in enumerate(p.egress):
                            egress += b.rule_lines(p, r, i, False, network)
            except PolicyError as e:
                plan.errors.append(str(e))
        if plan.errors:   # fail closed: drop both ways, drop the sets this interface had begun
            b.group, b.sets = mark
            plan.ingress, plan.egress = [], []
            ingress, egress = [], []
            for name, hook in ((f"in_{idx}", in_chains), (f"out_{idx}", out_chains)):
                chains.append(_chain(name, [], f"{ifname} {network}: fail closed, a policy cannot be applied"))
                hook.append((ifname, name))
            continue
        if plan.ingress:
            chains.append(_chain(f"in_{idx}", ingress, f"{ifname} {network} ingress: {', '.join(plan.ingress)}"))
            in_chains.append((ifname, f"in_{idx}"))
        if plan.egress:
            chains.append(_chain(f"out_{idx}", egress, f"{ifname} {network} egress: {', '.join(plan.egress)}"))
            out_chains.append((ifname, f"out_{idx}"))
    hooks = []
    for hook, direction, jumps in (("input", "iifname", in_chains), ("output", "oifname", out_chains)):
        lines = [f"\tchain {hook} {{", f"\t\ttype filter hook {hook} priority filter; policy accept;",
                 "\t\tct state established,related accept"]
        lines += [f'\t\t{direction} "{ifname}" jump {name}' for ifname, name in jumps]
        hooks.append("\n".join(lines) + "\n\t}")
    rs = Ruleset(b.sets, hooks + chains, plans)
    rs.hash = hashlib.sha256(rs.structure().encode()).hexdigest()[:16]
    return rs


def set_update(old: dict[str, frozenset[str]], new: Ruleset) -> str:
    """The transaction that brings the dynamic sets from `old` to `new` (same structure): the
    elements that went are deleted, the new ones added; a peer joining is one `add element`
    whatever the set's size. "" when nothing changed."""
    lines = []
    for name, elements in new.dynamic_sets().items():
        before = old.get(name, frozenset())
        gone, came = before - elements, elements - before
        if gone:
            lines.append(f"delete element {FAMILY} {TABLE} {name} {{ " + ", ".join(sorted(gone)) + " }")
        if came:
            lines.append(f"add element {FAMILY} {TABLE} {name} {{ " + ", ".join(sorted(came)) + " }")
    return "\n".join(lines) + ("\n" if lines else "")


def full_replace(new: Ruleset) -> str:
    """The transaction that replaces the table whole (create it empty first so the delete never
    fails): one `nft -f`, so the pod never sees a moment without rules."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n" + new.render()


def remove() -> str:
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
