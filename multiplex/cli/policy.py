"""`multiplex policy show NAMESPACE/POD|CONTAINERID`: what MultiNetworkPolicy does to a pod here.

The pod is found in the node's result cache as `multiplex inspect` finds it. For each of its
sandboxes: every interface with the network it is on, the policies isolating it for ingress and
egress (or "fail closed" with the reason when a policy cannot be applied), the table in its netns
(present, missing, or not the one the engine put there), every rule with its nft counters
(packets, bytes) and every peer set with its elements. The status file the engine writes
(`<state>/policy/pods/<containerID>.json`) says what should be; the netns says what is.

Exit 0 when the pod is found; 1 when it is not (the reason on stderr). Nothing is written.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Optional


def show(target: str, state_dir: Optional[str] = None, output: str = "table",
         echo: Callable[[str], None] = print) -> int:
    import os

    from ..util import state
    from .inspect import NotFound, find_entries

    try:
        entries = find_entries(os.path.join(state.root(state_dir), "cache"), target)
    except NotFound as e:
        print(f"multiplex policy show: {e}", file=sys.stderr)
        return 1
    views = [describe(cid, record, state_dir) for cid, _ifname, record in entries]
    if output == "json":
        echo(json.dumps({"target": target, "pods": views}, indent=2))
    else:
        echo("\n\n".join(render(v) for v in views))
    return 0


def describe(container_id: str, record: dict, state_dir: Optional[str]) -> dict[str, Any]:
    """One sandbox: the engine's status beside the table read from its netns."""
    import os

    from ..policy.mnp.apply import read_table, table_hash
    from ..policy.mnp.engine import read_status

    args = record.get("cniArgs") or {}
    netns = str(record.get("netns") or "")
    status = read_status(state_dir, container_id) or {}
    view: dict[str, Any] = {"pod": f"{args.get('K8S_POD_NAMESPACE', 'default')}/{args.get('K8S_POD_NAME', '')}",
                            "containerID": container_id, "netns": netns, "expected": status.get("hash", ""),
                            "interfaces": status.get("interfaces") or [
                                {"ifname": a.get("ifname"), "network": a.get("network"), "ingress": [], "egress": [],
                                 "errors": []} for a in record.get("attachments") or [] if isinstance(a, dict)],
                            "table": None, "rules": [], "sets": {}}
    if not netns or not os.path.exists(netns):
        view["table"] = "netns gone"
        return view
    data = read_table(netns)
    if data is None:
        view["table"] = "missing" if view["expected"] else "none"
        return view
    for item in data.get("nftables", []):
        if "table" in item:
            found = table_hash(netns) or ""
            view["table"] = "present" if found and found == view["expected"] else f"differs (structure {found or '?'})"
        elif "set" in item:
            s = item["set"]
            view["sets"][s["name"]] = {"comment": s.get("comment", ""), "elements": [_element(e) for e in s.get("elem", [])]}
        elif "rule" in item:
            r = item["rule"]
            counter = next((e["counter"] for e in r.get("expr", []) if isinstance(e, dict) and "counter" in e), None)
            if counter is None:
                continue
            verdict = "drop" if any(isinstance(e, dict) and "drop" in e for e in r["expr"]) else "accept"
            view["rules"].append({"chain": r.get("chain"), "comment": r.get("comment", ""), "verdict": verdict,
                                  "packets": counter.get("packets", 0), "bytes": counter.get("bytes", 0),
                                  "match": _match_text(r.get("expr", []))})
    return view


def _element(e: Any) -> str:
    if isinstance(e, dict):
        if "prefix" in e:
            return f"{e['prefix']['addr']}/{e['prefix']['len']}"
        if "concat" in e:
            return " . ".join(str(_element(x)) for x in e["concat"])
        if "elem" in e:
            return _element(e["elem"]["val"])
        if "range" in e:
            return "-".join(str(_element(x)) for x in e["range"])
    return str(e)


def _match_text(exprs: list) -> str:
    """A rule's matches in a few words: `ip saddr @a1_4`, `tcp dport 8080`."""
    words = []
    for e in exprs:
        m = e.get("match") if isinstance(e, dict) else None
        if not m:
            continue
        left, right = m.get("left", {}), m.get("right")
        if "payload" in left:
            p = left["payload"]
            name = f"{p.get('protocol', 'th')} {p.get('field', '')}"
        elif "meta" in left:
            name = f"meta {left['meta'].get('key')}"
        elif "concat" in left:
            name = " . ".join(f"{x.get('payload', {}).get('protocol', '')} {x.get('payload', {}).get('field', '')}".strip()
                              for x in left["concat"])
        else:
            name = "?"
        if isinstance(right, dict) and "set" in right:
            value = "{" + ", ".join(str(_element(x)) for x in right["set"]) + "}"
        elif isinstance(right, dict):
            value = _element(right)
        else:
            value = str(right)
        if name == "meta l4proto" and value == "ipv6-icmp":
            continue
        words.append(f"{name} {value}")
    return " ".join(words) or "(any)"


def render(v: dict[str, Any]) -> str:
    lines = [f"pod {v['pod']}  container {v['containerID'][:16]}  netns {v['netns']}"]
    for i in v["interfaces"]:
        what = []
        if i.get("errors"):
            what.append("fail closed: " + "; ".join(i["errors"]))
        else:
            what.append("ingress: " + (", ".join(i["ingress"]) if i.get("ingress") else "open (no policy)"))
            what.append("egress: " + (", ".join(i["egress"]) if i.get("egress") else "open (no policy)"))
        lines.append(f"  {i['ifname']} ({i['network']})  " + "  ".join(what))
    lines.append(f"  table inet multiplex_mnp: {v['table']}" + (f" (structure {v['expected']})" if v["expected"] else ""))
    if v["rules"]:
        lines.append(f"  {'chain':10} {'verdict':7} {'packets':>8} {'bytes':>10}  match / comment")
        for r in v["rules"]:
            lines.append(f"  {r['chain']:10} {r['verdict']:7} {r['packets']:>8} {r['bytes']:>10}  {r['match']}"
                         + (f"  \"{r['comment']}\"" if r["comment"] else ""))
    for name, s in v["sets"].items():
        lines.append(f"  set {name} ({s['comment']}): " + (", ".join(s["elements"]) or "(empty)"))
    return "\n".join(lines)
