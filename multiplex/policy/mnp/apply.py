"""Put a compiled ruleset into a pod's netns: one atomic `nft -f` transaction per change.

What is in a netns is remembered per netns path (the structure hash and each peer set's
elements), so a change that only moves peers is a set update (`add element` / `delete element` of what changed; the
rules and their counters stay) and anything else is a full replace (`delete table` + the whole
table, in one transaction: the kernel swaps them at once, the pod never sees a moment without
rules). The memory is only a shortcut: `apply(..., verify=True)` reads the table's comment (the
structure hash) first and replaces the table when it is missing or not ours, which is how a
resync repairs a table removed or edited by hand.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from ...cni.errors import CNIError, NETLINK_FAILURE
from . import compiler

Runner = Callable[..., object]   # multiplex.netlink.nft.run_in_netns
_COMMENT = re.compile(r'^\s*comment "' + re.escape(compiler.COMMENT_PREFIX) + r'([0-9a-f]+)"', re.M)


@dataclass
class Applied:
    hash: str
    sets: dict[str, frozenset[str]]


def _runner() -> Runner:
    from ...netlink.nft import run_in_netns

    return run_in_netns


class Applier:
    def __init__(self, runner: Optional[Runner] = None):
        self.run = runner or _runner()
        self.state: dict[str, Applied] = {}
        self._lock = threading.Lock()

    def _nft(self, netns: str, script: str, what: str) -> None:
        proc = self.run(netns, ["-f", "-"], script)
        if proc.returncode != 0:
            raise CNIError(NETLINK_FAILURE, f"cannot {what}: nft: {proc.stderr.strip()[-400:] or 'failed'}",
                           f"netns: {netns}; table {compiler.FAMILY} {compiler.TABLE}")

    def table_hash(self, netns: str) -> Optional[str]:
        """The structure hash of the table in `netns` (its comment), None when there is none.
        Read from nft's text form (`-t`: without set elements): its JSON form leaves out a
        table's comment (nftables 1.0.6)."""
        return table_hash(netns, self.run)

    def apply(self, netns: str, ruleset: compiler.Ruleset, verify: bool = False) -> str:
        """Bring `netns` to `ruleset`. Returns what was done: "full", "sets", "none", "removed"."""
        with self._lock:
            known = self.state.get(netns)
        if verify and known is not None and not ruleset.empty and self.table_hash(netns) != known.hash:
            known = None   # removed or changed behind our back
        if ruleset.empty:   # no policy polices this pod: no table (all allowed)
            if known is not None and known.hash == "":
                return "none"
            self._nft(netns, compiler.remove(), "remove the MultiNetworkPolicy table")
            with self._lock:
                self.state[netns] = Applied("", {})
            return "removed"
        if known is not None and known.hash == ruleset.hash:
            script = compiler.set_update(known.sets, ruleset)
            if not script:
                return "none"
            try:
                self._nft(netns, script, "update the MultiNetworkPolicy peer sets")
                done = "sets"
            except CNIError:   # the table went behind our back (removed by hand): put it back whole
                self._nft(netns, compiler.full_replace(ruleset), "apply the MultiNetworkPolicy table")
                done = "full"
        else:
            self._nft(netns, compiler.full_replace(ruleset), "apply the MultiNetworkPolicy table")
            done = "full"
        with self._lock:
            self.state[netns] = Applied(ruleset.hash, ruleset.dynamic_sets())
        return done

    def remove(self, netns: str) -> None:
        """Delete the table from `netns` (fine when there is none); forget the netns."""
        with self._lock:
            self.state.pop(netns, None)
        self._nft(netns, compiler.remove(), "remove the MultiNetworkPolicy table")

    def forget(self, netns: str) -> None:
        with self._lock:
            self.state.pop(netns, None)


def table_hash(netns: str, runner: Optional[Runner] = None) -> Optional[str]:
    """See Applier.table_hash."""
    proc = (runner or _runner())(netns, ["-t", "list", "table", compiler.FAMILY, compiler.TABLE])
    if proc.returncode != 0:
        return None
    found = _COMMENT.search(proc.stdout or "")
    return found.group(1) if found else None


def read_table(netns: str, runner: Optional[Runner] = None) -> Optional[dict]:
    """The table as `nft -j list table` gives it (rules with their counters, sets with elements),
    or None when there is none: what `multiplex policy show` prints."""
    run = runner or _runner()
    proc = run(netns, ["-j", "list", "table", compiler.FAMILY, compiler.TABLE])
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout or "{}")
