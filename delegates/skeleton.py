"""One skeleton for the delegates (bridge, ipvlan, vxlan-overlay, bgp-routed): the CNI commands as
template methods, so each delegate module holds only its own steps.

What every delegate does the same way lives here once:

- config: the schema and the IPv6 `mtu` check, then the delegate's own (`validate_fields`), for
  ADD and CHECK; the delegate's `config_class` parses it.
- ADD: read the config; open the node, then the pod netns, then an `Undo` (innermost, so an undo
  step may use either handle: ipvlan's deletes the sub-interface in the pod); `attach` makes the
  attachment; one log line `<label> add` with the network, the delegate's own fields, the
  container, the interface and the addresses. Hooks: `add_lock` (held around all of it),
  `prepare` (node-side checks before anything is made; what it returns reaches `attach` as
  `ready`), `added` (after the handles are closed, before the log line).
- CHECK: config, prevResult and IPAM's CHECK, the pod netns (code 104 when gone), then the node
  and the pod; every difference in one error (`check_failed`). Hook: `node_problems`; a delegate
  whose pod side is not the shared comparison overrides `problems`.
- STATUS: config, `ready` (the delegate's own "can I attach pods"), IPAM's STATUS.
- GC: keep-list (code 7 before anything is touched), config, IPAM type; `collect` removes what the
  keep-list does not keep and answers the log fields; `<label> gc`; IPAM's GC.
- sweep (a DEL without a cache entry): `sweep_container` answers the log fields; `<label> sweep`
  only when it removed something.

`VethDelegate` adds the DEL of the three delegates whose host end is a veth with a fixed name
(`host_veth_name`): delete it in the node (no pod netns needed; the pod end goes with it),
`removed` (bridge: its masquerade rules), IPAM's DEL, `<label> del`. `remove_host_veths` is the
GC and sweep of those veths, found by name prefix and alias (nft.owner_comment).

Design choice, named: the handles' order in ADD is one for all (node, pod, undo). Before, the veth
delegates opened the Undo outside the pod handle (so they undid after closing it) and ipvlan
opened the pod first: neither difference is observable (no veth delegate's undo step uses the
pod; opening the node does not fail), and one order lets the skeleton serve all four.
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager

from multiplex.cni.plugin import Plugin
from multiplex.cni.request import Request
from multiplex.cni.types import Result
from delegates.steps import (Problem, Undo, check_failed, check_ipv6_mtu, check_prologue, ipam_forward, ipam_type,
                             missing_pod_interface, open_pod_for_check, pod_interface_problems, undone_on_failure)


class Delegate(Plugin):
    """The CNI commands of a delegate as template methods; a subclass gives `label`,
    `config_class` (or its own `config`), `attach`, `node_problems` (or `problems`), `collect`,
    `sweep_container`, and `delete` (VethDelegate has one)."""

    #: the first word of the delegate's log lines: "<label> add", "<label> gc", ...
    label: str = ""
    #: the delegate's config, read by its `parse(dict)` classmethod
    config_class: Any = None
    #: the commands whose config is validated: the JSON Schema (and its jsonschema import) guards
    #: what ADD and CHECK act on; teardown (DEL, GC) and STATUS parse leniently, so they work with
    #: whatever config the runtime has
    validated_commands: frozenset[str] = frozenset({"ADD", "CHECK"})

    def validate(self, conf: dict, where: str = "$") -> None:
        """The schema, an `mtu` too small for the IPAM's IPv6 ranges, then `validate_fields`."""
        super().validate(conf, where)
        check_ipv6_mtu(conf, where)
        self.validate_fields(conf, where)

    def validate_fields(self, conf: dict, where: str) -> None:
        """The delegate's own checks of its fields, after the schema's (code 7 naming the field)."""

    def config(self, req: Request) -> Any:
        """The call's config, validated when the command is one of `validated_commands`."""
        if req.command in self.validated_commands:
            self.validate(req.config)
        return self.config_class.parse(req.config)

    # ---- ADD -------------------------------------------------------------------------------------
    def add(self, req: Request) -> Result:
        from multiplex import netlink

        conf = self.config(req)
        with self.add_lock(req), netlink.open_node(batch=req.ctx.batch) as node:
            ready = self.prepare(req, conf, node)
            with netlink.open_netns(req.netns) as pod, undone_on_failure(req) as undo:
                result = self.attach(req, conf, node, pod, undo, ready)
        self.added(req, conf)
        req.ctx.log.info(f"{self.label} add", **self.add_fields(req, conf, ready),
                         addresses=[str(ip.address) for ip in result.ips])
        return result

    def add_lock(self, req: Request) -> ContextManager[Any]:
        """What ADD holds around all of its work: nothing by default."""
        from contextlib import nullcontext

        return nullcontext()

    def prepare(self, req: Request, conf: Any, node) -> Any:
        """The node-side checks before anything is made (the pod netns not yet opened); what it
        returns reaches `attach` and `add_fields` as `ready`."""
        return None

    def attach(self, req: Request, conf: Any, node, pod, undo: Undo, ready: Any) -> Result:
        """Make the attachment, pushing on `undo` how to take back each thing made; its result."""
        raise NotImplementedError

    def added(self, req: Request, conf: Any) -> None:
        """After a successful ADD, its handles closed (vxlan-overlay wakes its controller)."""

    def conf_fields(self, conf: Any) -> dict[str, Any]:
        """The delegate's own fields of its add log line, after `network`."""
        return {}

    def add_fields(self, req: Request, conf: Any, ready: Any) -> dict[str, Any]:
        """The add log line's fields before `addresses`."""
        return {"network": conf.network, **self.conf_fields(conf), "container": req.container_id,
                "ifname": req.ifname}

    # ---- CHECK -----------------------------------------------------------------------------------
    def check(self, req: Request) -> None:
        from multiplex import netlink

        conf = self.config(req)
        prev = check_prologue(req)
        pod = open_pod_for_check(req, conf.network)
        with netlink.open_node(batch=req.ctx.batch) as node, pod:
            problems = self.problems(req, conf, node, pod, prev)
        if problems:
            raise check_failed(req, conf.network, problems)

    def problems(self, req: Request, conf: Any, node, pod, prev: Result) -> list[Problem]:
        """The node side (`node_problems`), then the pod interface against prevResult."""
        problems = self.node_problems(req, conf, node, prev)
        iface = pod.link(req.ifname)
        return problems + (missing_pod_interface(req) if iface is None else pod_interface_problems(pod, iface, prev))

    def node_problems(self, req: Request, conf: Any, node, prev: Result) -> list[Problem]:
        """How the node side of the attachment differs from what ADD made."""
        raise NotImplementedError

    # ---- STATUS ----------------------------------------------------------------------------------
    def status(self, req: Request) -> None:
        conf = self.config(req)
        self.ready(req, conf)
        ipam_forward(req)

    def ready(self, req: Request, conf: Any) -> None:
        """Code 50 when this network cannot attach pods on this node; nothing to check by default."""

    # ---- GC, sweep -------------------------------------------------------------------------------
    def gc(self, req: Request) -> None:
        """This network's attachments that the keep-list does not keep (`collect`); then IPAM's GC.
        A malformed keep-list is code 7 before anything is touched."""
        from multiplex.cni.valid import parse_keep

        keep = parse_keep(req.config)
        conf = self.config(req)
        ipam_type(req)
        fields = self.collect(req, conf, keep)
        req.ctx.log.info(f"{self.label} gc", network=conf.network, **fields)
        ipam_forward(req)

    def collect(self, req: Request, conf: Any, keep: Any) -> dict[str, Any]:
        """Remove what of this network `keep` does not keep; the gc log line's fields."""
        raise NotImplementedError

    def sweep(self, req: Request) -> None:
        """A DEL without a cache entry: what this plugin made for `req.container_id`, whatever its
        network or interface (`sweep_container`). The config is not read (it may be another
        plugin's); leases are the IPAM's own sweep."""
        cid = req.container_id
        if not cid:
            return
        fields = self.sweep_container(req, cid)
        if any(fields.values()):
            req.ctx.log.info(f"{self.label} sweep", container=cid, **fields)

    def sweep_container(self, req: Request, cid: str) -> dict[str, Any]:
        """Remove what this plugin made for container `cid`; the sweep log line's fields."""
        raise NotImplementedError


def of_container(cid: str) -> Callable[[str], bool]:
    """The sweep's test for one owner mark (a host veth's alias, an nft comment): True when it is
    an attachment of container `cid`."""
    from multiplex.netlink import nft

    def mine(mark: str) -> bool:
        o = nft.parse_owner(mark)
        return o is not None and o.of_container(cid)

    return mine


class VethDelegate(Delegate):
    """A delegate whose host end is a veth with a name fixed by (containerID, ifname), carrying
    its owner as alias: bridge, vxlan-overlay, bgp-routed."""

    #: (containerID, ifname) -> the host veth's name
    host_veth_name: Callable[[str, str], str]

    # ---- DEL -------------------------------------------------------------------------------------
    def delete(self, req: Request) -> None:
        from multiplex import netlink
        from multiplex.cni.invoke import invoke_ipam

        conf = self.config(req)
        name = self.host_veth_name(req.container_id, req.ifname)
        with netlink.open_node(batch=req.ctx.batch) as node:
            # the host end has a fixed name: no need for the pod netns, which may be gone
            gone = node.delete_link(name)
        self.removed(req, conf)
        invoke_ipam(req)
        req.ctx.log.info(f"{self.label} del", network=conf.network, container=req.container_id, ifname=req.ifname,
                         veth_deleted=gone)

    def removed(self, req: Request, conf: Any) -> None:
        """DEL, after the host veth: what else the attachment has on the node (bridge: masquerade)."""


def remove_host_veths(req: Request, prefix: str, match: Callable[[str], bool]) -> list[str]:
    """Delete the host veths named `prefix`... whose alias `match` accepts (GC, sweep); their names."""
    from multiplex import netlink

    removed = []
    with netlink.open_node(batch=req.ctx.batch) as node:
        for link in node.links():
            if link.kind == "veth" and link.name.startswith(prefix) and link.alias and match(link.alias):
                if node.delete_link(link.name):
                    removed.append(link.name)
    return removed
