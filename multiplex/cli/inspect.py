"""`multiplex inspect NAMESPACE/POD|CONTAINERID`: a pod's networks on this node, in one view.

The pod is found in the node's result cache (multiplex/cni/cache.py): by the K8S_POD_NAMESPACE and
K8S_POD_NAME the runtime passed to ADD (the entry's `cniArgs`), or by its container ID (a unique
prefix is enough). Every cache entry that matches is shown (a pod whose sandbox was recreated may
have the old one still waiting for its DEL). For each attachment, cli/inspect_attachment.py reads
the kernel and the node's IPAM store beside what the cache records.

Output: a table, or (`-o json`) one JSON document {"target", "entries": [...], "differs": [...]}.
Every difference between the cache and the kernel is a "differs:" line in the table and a string
in the JSON lists (per attachment, per entry, and all of them at the top, prefixed with the
container and interface). Exit 0 when the target is found, differences or not; 1 when it is not in
the cache (or the prefix is ambiguous), with the reason on stderr. Nothing is written anywhere.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Optional

from ..cni.cache import SUFFIX, TMP_PREFIX, read_envelope

NOT_FOUND = 1


class NotFound(Exception):
    """The target is not in the cache; the message says what was looked for, and where."""


def run(target: str, state_dir: Optional[str] = None, output: str = "table",
        echo: Callable[[str], None] = print, echo_err: Optional[Callable[[str], None]] = None) -> int:
    """Inspect `target` on this node; print the view; return the exit code."""
    from ..cni.errors import CNIError
    from ..util import state

    echo_err = echo_err or (lambda text: print(text, file=sys.stderr))
    try:
        cache_dir = os.path.join(state.root(state_dir), "cache")
        entries = find_entries(cache_dir, target)
    except NotFound as e:
        echo_err(f"inspect: {e}")
        return NOT_FOUND
    except CNIError as e:
        echo_err(f"inspect: {e.msg}" + (f" ({e.details})" if e.details else ""))
        return NOT_FOUND
    views = [inspect_entry(cid, ifname, record, state_dir) for cid, ifname, record in entries]
    report = {"target": target, "entries": views,
              "differs": [d for v in views for d in all_differences(v)]}
    echo(json.dumps(report, indent=2) if output == "json" else "\n".join(table(report)))
    return 0


# ---- finding the target -------------------------------------------------------------------------
def cache_entries(cache_dir: str) -> list[tuple[str, str, dict]]:
    """Every readable entry, read without creating the directory (ResultCache would make it)."""
    try:
        names = sorted(os.listdir(cache_dir))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.startswith(TMP_PREFIX) or not name.endswith(SUFFIX):
            continue
        found = read_envelope(os.path.join(cache_dir, name))
        if isinstance(found, tuple):
            out.append(found)
    return out


def pod_of(record: dict) -> tuple[str, str]:
    args = record.get("cniArgs") or {}
    return str(args.get("K8S_POD_NAMESPACE") or ""), str(args.get("K8S_POD_NAME") or "")


def find_entries(cache_dir: str, target: str) -> list[tuple[str, str, dict]]:
    """The cache entries of `target`: NAMESPACE/POD, or a container ID or a unique prefix of one."""
    entries = cache_entries(cache_dir)
    where = f"the cache at {cache_dir}"
    if not entries:
        raise NotFound(f"{target} is not in {where}: it holds no entries"
                       + ("" if os.path.isdir(cache_dir) else " (no such directory; see --state-dir)"))
    if "/" in target:
        ns, _, name = target.partition("/")
        found = [e for e in entries if pod_of(e[2]) == (ns, name)]
        if not found:
            raise NotFound(f"pod {target} is not in {where}: no attachment on this node was made for it")
        return found
    exact = [e for e in entries if e[0] == target]
    if exact:
        return exact
    matches = sorted({e[0] for e in entries if e[0].startswith(target)})
    if len(matches) > 1:
        raise NotFound(f"container ID prefix {target} is ambiguous in {where}: it matches "
                       + ", ".join(m[:16] for m in matches[:5]) + (" ..." if len(matches) > 5 else ""))
    if not matches:
        pods = sorted({"/".join(pod_of(e[2])) for e in entries if pod_of(e[2])[1] == target})
        hint = f" (a pod named {target}: give it as {' or '.join(pods)})" if pods else ""
        raise NotFound(f"container {target} is not in {where}{hint}")
    return [e for e in entries if e[0] == matches[0]]


# ---- one entry ----------------------------------------------------------------------------------
def inspect_entry(container_id: str, ifname: str, record: dict, state_dir: Optional[str]) -> dict:
    """One cache entry (a runtime's ADD): its pod, netns and every attachment's view."""
    from .inspect_attachment import Kernel, describe_attachment

    ns, name = pod_of(record)
    args = record.get("cniArgs") or {}
    netns = str(record.get("netns") or "")
    view: dict[str, Any] = {
        "containerID": container_id, "ifname": ifname,
        "pod": {"namespace": ns, "name": name, "uid": args.get("K8S_POD_UID") or None} if name else None,
        "netns": netns, "complete": bool(record.get("complete")), "defaultAttachment": record.get("default"),
    }
    differs: list[str] = []
    if not view["complete"]:
        differs.append("the cache entry is incomplete: an ADD is under way, or one crashed (the next DEL undoes it)")
    kernel = Kernel.open(netns)
    try:
        view["netnsExists"] = kernel.pod is not None
        if kernel.pod is None:
            differs.append(f"the pod's network namespace cannot be read: {kernel.pod_gone}")
        entry = {"containerID": container_id}
        view["attachments"] = [describe_attachment(att, entry, kernel, state_dir)
                               for att in record.get("attachments") or []]
    finally:
        kernel.close()
    default = record.get("default")
    for n, att in enumerate(view["attachments"]):
        att["defaultRoute"] = n == default
    view["differs"] = differs
    return view


def all_differences(view: dict) -> list[str]:
    head = view["containerID"][:12]
    out = [f"{head}: {d}" for d in view["differs"]]
    for att in view["attachments"]:
        out += [f"{head} {att['ifname']}: {d}" for d in att["differs"]]
    return out


# ---- the table ----------------------------------------------------------------------------------
def table(report: dict) -> list[str]:
    lines: list[str] = []
    for view in report["entries"]:
        if lines:
            lines.append("")
        pod = view["pod"]
        who = f"pod {pod['namespace']}/{pod['name']}" if pod else "no pod recorded"
        lines.append(f"{who}  container {view['containerID']}  (runtime interface {view['ifname']})")
        lines.append(f"netns {view['netns'] or '-'}" + ("" if view["netnsExists"] else "  (gone)"))
        for d in view["differs"]:
            lines.append(f"differs: {d}")
        for att in view["attachments"]:
            lines.append("")
            lines += attachment_lines(att)
    return lines


def attachment_lines(att: dict) -> list[str]:
    tags = [f"NAD {att['nad']}" if att["nad"] else "node config"]
    if att["cluster"]:
        tags.append("cluster network")
    if att["defaultRoute"]:
        tags.append("default route")
    out = [f"{att['ifname']}  network {att['network']} ({', '.join(tags)})"]
    row = lambda key, text: out.append(f"  {key:<10} {text}")  # noqa: E731
    chain = att["chain"][1:]
    row("delegate", att["delegate"] + (f" (then {', '.join(chain)})" if chain else ""))
    iface = att["interface"]
    if iface is None:
        row("interface", f"{att['ifname']}: not in the pod")
    else:
        row("interface", f"{iface['name']}  mac {iface['mac']}  mtu {iface['mtu']}  "
                         f"{'up' if iface['up'] else 'down'}" + (f"  {iface['kind']}" if iface["kind"] else ""))
        row("addresses", ", ".join(iface["addresses"]) or "-")
        row("routes", "; ".join(route_text(r) for r in iface["routes"]) or "-")
    node = att["node"]
    if node:
        row("node", node_text(node))
    for lease in att["leases"]:
        row("lease", lease_text(lease))
    for r in att["nft"]:
        row("nft", f"{r['netns']}: {r['table']} {r['chain']} handle {r['handle']}: {r['rule']}")
    for d in att["differs"]:
        out.append(f"  differs: {d}")
    return out


def route_text(r: dict) -> str:
    dst = "default" if r["dst"] in ("0.0.0.0/0", "::/0") else r["dst"]
    return dst + (f" via {r['gw']}" if r.get("gw") else "")


def node_text(node: dict) -> str:
    parts = []
    if node.get("kind") == "veth":
        peer = node.get("peer")
        parts.append(f"veth {peer} (mac {node.get('peerMac')})" if peer else "veth peer not found")
        if node.get("bridge"):
            parts.append(f"on bridge {node['bridge']}")
        if node.get("vlans"):
            parts.append("vlan " + ",".join(map(str, node["vlans"])))
        for v in node.get("vteps") or []:
            parts.append(f"vtep {v['name']} vni {v['vni']} local {v['local']} port {v['port']} mtu {v['mtu']}"
                         f" peers {', '.join(v['peers']) or 'none'}")
        if "routes" in node:
            parts.append("node routes " + ("; ".join(r["dst"] + (f" via {r['gw']}" if r.get("gw") else "")
                                                      for r in node["routes"]) or "none"))
    elif node.get("kind"):
        parts.append(node["kind"] + (f" on master {node['master']}" if node.get("master") else ""))
    known = {"kind", "peer", "peerMac", "peerUp", "bridge", "vlans", "master", "hostAlias", "vteps", "routes"}
    parts += [f"{k} {json.dumps(v) if not isinstance(v, str) else v}" for k, v in node.items() if k not in known]
    return "  ".join(parts)


def lease_text(lease: dict) -> str:
    if not lease.get("checked"):
        return f"{lease['store']} {lease['address']} (not checked: the store is not on this node)"
    owner = lease.get("owner") or {}
    who = "/".join(str(owner[k]) for k in ("containerID", "ifname", "network") if owner.get(k))
    return f"{lease['store']} {lease.get('pool', '')} {lease['address']} owner {who}" + (
        f" pod {owner['pod']}" if owner.get("pod") else "")
