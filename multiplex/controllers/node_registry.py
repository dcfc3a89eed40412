"""The node registry: this node's facts on its Node object, and every node's facts for the others.

What a node publishes, as one JSON annotation `multiplex.dev/node-facts` on its Node:

    {"interface": "eth1", "mtu": 1400, "ipv4": "198.18.0.2", "ipv6": "fd00::2",
     "facts": {"vxlan/blue": {"vtepMAC": "..."}}}

- the underlay: the interface named by the daemon's `--underlay-interface`, else the one the
  default route leaves through (IPv4, then IPv6), else the first up non-loopback interface with a
  global address; its MTU; its first global address of each family (link-local and loopback
  addresses never count). A family the underlay lacks is left out.
- `facts`: what delegates register (`register(key, value)`, `unregister(key)`), e.g. the vxlan
  overlay's VTEP MAC per network. A value is any JSON value.

Who writes it: only the node's own daemon, through `patch` on its own Node (the DaemonSet's RBAC
grants `patch nodes`; with the NodeRestriction-style admission policy in manifests/, a daemon may
change only its own Node's annotation). Other nodes' daemons and every controller *read* it: a
node's facts are the node's word about itself, trusted as much as that node is (see
docs/controllers.md, "Trust").

The view: `nodes()` is every node's facts (nodes without a readable annotation are absent; a
malformed annotation is logged once and that node left out), `add_listener(fn)` calls
`fn(name, old, new)` whenever a node's facts appear (old None), change, or go (new None), on the
controller's thread.

Keys: "publish" (compute this node's facts; patch the Node only when the annotation differs) and
"node/<name>" (refresh the view of one node). Events on Nodes queue both as needed; the resync
(every `resync` seconds, default 10) re-reads the underlay, so an address change on the underlay
is published within that period without a netlink monitor thread.
"""
from __future__ import annotations

import ipaddress
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from ..daemon.controller import Controller, DaemonContext

ANNOTATION = "multiplex.dev/node-facts"
NAME = "node-registry"

Listener = Callable[[str, Optional["NodeFacts"], Optional["NodeFacts"]], None]


@dataclass(frozen=True)
class NodeFacts:
    """One node's published facts."""
    name: str
    interface: str = ""
    mtu: int = 0
    ipv4: str = ""
    ipv6: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The annotation's value: keys sorted, so equal facts are equal text (patch only on change)."""
        body: dict[str, Any] = {"interface": self.interface, "mtu": self.mtu}
        if self.ipv4:
            body["ipv4"] = self.ipv4
        if self.ipv6:
            body["ipv6"] = self.ipv6
        body["facts"] = self.facts
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, name: str, text: str) -> "NodeFacts":
        """Parse an annotation; ValueError saying what is wrong."""
        try:
            body = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"annotation {ANNOTATION} of node {name} is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise ValueError(f"annotation {ANNOTATION} of node {name} is not a JSON object")
        out: dict[str, Any] = {"name": name}
        for key, kind in (("interface", str), ("mtu", int), ("ipv4", str), ("ipv6", str), ("facts", dict)):
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"annotation {ANNOTATION} of node {name}: {key} must be a {kind.__name__}")
            out[key] = value
        for family, key in ((4, "ipv4"), (6, "ipv6")):
            if out.get(key):
                try:
                    ip = ipaddress.ip_address(out[key])
                except ValueError:
                    raise ValueError(f"annotation {ANNOTATION} of node {name}: {key} {out[key]!r} is not an address") from None
                if ip.version != family:
                    raise ValueError(f"annotation {ANNOTATION} of node {name}: {key} {out[key]!r} is not IPv{family}")
        return cls(**out)

    def address(self, family: int) -> Optional[ipaddress._BaseAddress]:
        text = self.ipv4 if family == 4 else self.ipv6
        return ipaddress.ip_address(text) if text else None


@dataclass(frozen=True)
class Underlay:
    interface: str
    mtu: int
    ipv4: str = ""
    ipv6: str = ""


def read_underlay(interface: str = "", netns: Optional[str] = None) -> Underlay:
    """The underlay as the module doc chooses it, read over netlink in `netns` (None: this one).
    A named interface that does not exist, or no candidate at all: ValueError saying so."""
    from ..netlink.handle import AF_INET, AF_INET6, Handle

    with Handle(netns) as h:
        links = {link.index: link for link in h.links()}
        addrs = [a for a in h.addresses() if _global(a.interface.ip)]
        if interface:
            link = next((l for l in links.values() if l.name == interface), None)
            if link is None:
                raise ValueError(f"underlay interface {interface!r} does not exist (--underlay-interface); "
                                 f"interfaces: {', '.join(sorted(l.name for l in links.values()))}")
        else:
            link = h.default_route_link(AF_INET) or h.default_route_link(AF_INET6)
            if link is None:
                with_addr = {a.index for a in addrs}
                link = next((l for _, l in sorted(links.items())
                             if l.up and l.name != "lo" and l.index in with_addr), None)
            if link is None:
                raise ValueError("no underlay interface: no default route and no up interface with a global "
                                 "address; name one with --underlay-interface")
        mine = [a.interface.ip for a in addrs if a.index == link.index]
    v4 = next((str(ip) for ip in mine if ip.version == 4), "")
    v6 = next((str(ip) for ip in mine if ip.version == 6), "")
    return Underlay(link.name, link.mtu, v4, v6)


def _global(ip: ipaddress._BaseAddress) -> bool:
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


class NodeRegistry(Controller):
    name = NAME
    watches = ("nodes",)
    resync = 10.0

    def __init__(self, node_name: str, underlay_interface: str = "", netns: Optional[str] = None,
                 read: Optional[Callable[[], Underlay]] = None):
        """`netns`: the namespace the underlay is read in (None: the daemon's own); `read`
        replaces the netlink read (tests of the view only)."""
        self.node_name = node_name
        self.underlay_interface = underlay_interface
        self.netns = netns
        self._read = read or (lambda: read_underlay(self.underlay_interface, self.netns))
        self._lock = threading.Lock()
        self._registered: dict[str, Any] = {}
        self._view: dict[str, NodeFacts] = {}
        self._bad: dict[str, str] = {}       # node -> the annotation text already logged as malformed
        self._listeners: list[Listener] = []
        self._published = False
        self.patches = 0

    # --- what delegates and other controllers call (any thread) -----------------------------------
    def register(self, key: str, value: Any) -> None:
        """Publish `value` (JSON) under `key` among this node's facts."""
        json.dumps(value)   # refuse what cannot be published, at the caller
        with self._lock:
            if self._registered.get(key, object()) == value:
                return
            self._registered[key] = value
        self.enqueue("publish")

    def unregister(self, key: str) -> None:
        with self._lock:
            if self._registered.pop(key, None) is None:
                return
        self.enqueue("publish")

    def nodes(self) -> dict[str, NodeFacts]:
        with self._lock:
            return dict(self._view)

    def facts(self, node: str) -> Optional[NodeFacts]:
        with self._lock:
            return self._view.get(node)

    def add_listener(self, fn: Listener) -> None:
        with self._lock:
            self._listeners.append(fn)

    # --- the controller ---------------------------------------------------------------------------
    def keys_for(self, kind: str, event: str, obj: dict) -> Iterable[str]:
        name = (obj.get("metadata") or {}).get("name") or ""
        keys = [f"node/{name}"] if name else []
        if name == self.node_name:
            keys.append("publish")
        return keys

    def all_keys(self) -> Iterable[str]:
        with self._lock:
            known = set(self._view)
        listed = {str((o.get("metadata") or {}).get("name") or "") for o in self._nodes().list()}
        return ["publish"] + [f"node/{n}" for n in sorted((known | listed) - {""})]

    def reconcile(self, key: str) -> None:
        if key == "publish":
            self.publish()
        elif key.startswith("node/"):
            self.refresh(key[len("node/"):])

    # --- the steps --------------------------------------------------------------------------------
    def desired(self) -> NodeFacts:
        u = self._read()
        with self._lock:
            extra = dict(self._registered)
        return NodeFacts(self.node_name, u.interface, u.mtu, u.ipv4, u.ipv6, extra)

    def publish(self) -> bool:
        """Patch this node's annotation when it differs from the facts now; True when patched."""
        want = self.desired().to_json()
        node = self._nodes().get(None, self.node_name)
        have = ((node or {}).get("metadata") or {}).get("annotations", {}) or {}
        if have.get(ANNOTATION) == want:
            self._published = True
            return False
        self.daemon.objects.patch_node_annotations(self.node_name, {ANNOTATION: want})
        self.patches += 1
        self._published = True
        self.daemon.log.info("node facts published", node=self.node_name, facts=want)
        return True

    def refresh(self, name: str) -> None:
        """Bring the view of node `name` in line with the cache; tell the listeners on a change."""
        obj = self._nodes().get(None, name)
        new: Optional[NodeFacts] = None
        if obj is not None:
            text = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
            if text is not None:
                try:
                    new = NodeFacts.from_json(name, text)
                    self._bad.pop(name, None)
                except ValueError as e:
                    if self._bad.get(name) != text:
                        self._bad[name] = text
                        self.daemon.log.warning("ignoring a node's malformed facts", node=name, error=str(e))
        with self._lock:
            old = self._view.get(name)
            if old == new:
                return
            if new is None:
                del self._view[name]
            else:
                self._view[name] = new
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(name, old, new)
            except Exception as e:   # one listener's bug must not starve the others
                self.daemon.log.error("node facts listener failed", node=name, error=repr(e))

    def _nodes(self):
        return self.daemon.objects.informer("nodes")


def controller(daemon: DaemonContext) -> NodeRegistry:
    """The entry point: every daemon runs one (other controllers find it as "node-registry")."""
    opts = daemon.options or {}
    return NodeRegistry(daemon.node_name, underlay_interface=str(opts.get("underlay_interface") or ""),
                        netns=opts.get("underlay_netns") or None)
