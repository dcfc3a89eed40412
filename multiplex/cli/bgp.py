"""`multiplex bgp status`: the node's BGP sessions and routes, read from its BIRD's control socket.

Per BGP session: the peer (node or explicit peer), its address and AS, BIRD's state and BGP state,
since when, and the routes imported and exported per channel (ipv4, ipv6); then the routes this
node's kernel holds from BIRD (`proto bird`: the other nodes' blocks and borrowed addresses, and
this node's blocks as blackholes). `-o json` prints one document {"socket", "sessions",
"kernelRoutes"}. Exit 0 when BIRD answered, 1 (reason on stderr) when it did not. Read-only.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Optional

UNREACHABLE = 1


def default_socket(state_dir: Optional[str]) -> str:
    from ..controllers.bgp import bgp_directory
    from ..bgp.bird import SOCK

    return os.path.join(bgp_directory(state_dir), SOCK)


def sessions(socket_path: str) -> list[dict]:
    """The BGP protocols of the BIRD on `socket_path`, as dicts (BirdError when it does not answer)."""
    from ..bgp.bird import protocols

    return [p.to_dict() for p in protocols(socket_path) if p.proto == "BGP"]


def kernel_routes() -> list[dict]:
    """This netns's routes installed by BIRD."""
    from ..netlink import open_node
    from ..netlink.routes import routes_by_proto

    with open_node() as h:
        return [{"dst": str(r.dst), "type": r.kind, "via": str(r.gateway) if r.gateway else ""}
                for r in routes_by_proto(h)]


def status(socket_path: Optional[str] = None, state_dir: Optional[str] = None, output: str = "table",
           echo: Callable[[str], None] = print, echo_err: Optional[Callable[[str], None]] = None) -> int:
    from ..bgp.bird import BirdError
    from ..cni.errors import CNIError

    echo_err = echo_err or (lambda text: print(text, file=sys.stderr))
    try:
        path = socket_path or default_socket(state_dir)
        found = sessions(path)
    except (BirdError, CNIError) as e:
        echo_err(f"multiplex bgp status: {getattr(e, 'msg', None) or e} (is the daemon's bgp controller running "
                 f"on this node? see docs/bgp-routed.md)")
        return UNREACHABLE
    routes = kernel_routes()
    if output == "json":
        echo(json.dumps({"socket": path, "sessions": found, "kernelRoutes": routes}, indent=2))
        return 0
    echo(f"BIRD {path}")
    rows = [("PEER", "ADDRESS", "AS", "STATE", "SINCE", "ROUTES IN/OUT")]
    for s in found:
        counts = ", ".join(f"{ch} {c.get('imported', 0)}/{c.get('exported', 0)}" for ch, c in sorted(s["routes"].items()))
        rows.append((s["description"] or s["name"], s["neighbor"], s["neighborAS"], s["bgpState"] or s["state"],
                     s["since"], counts or "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    echo(f"kernel routes from BIRD ({len(routes)}):")
    for r in routes:
        echo(f"  {r['dst']} " + (f"via {r['via']}" if r["via"] else r["type"]))
    return 0
