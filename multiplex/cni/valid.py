"""GC's keep-list: `cni.dev/valid-attachments`, read strictly, once, by every plugin.

The runtime lists the attachments it still uses as `{"containerID": ..., "ifname": ...}` pairs.
Anything malformed - the key absent, not a list, an item that is not an object with string
`containerID` and `ifname` (misspellings such as `containerId` or `ifName` included) - is refused
with code 7 *before* anything is touched: a list that cannot be read never means "nothing is valid".

The meta plugin runs its delegates on interfaces the runtime never sees (`net1`, ...), so what the
runtime lists is a pod (container), not each of its interfaces. When it forwards GC to a built-in
plugin it adds `multiplex.dev/valid-containers`: every attachment of those containers is kept,
whatever its interface name. Who sets it: the runtime's GC config (trusted) or the meta plugin,
which overwrites whatever a NAD's config may carry under that key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import CNIError, INVALID_CONFIG

VALID_ATTACHMENTS = "cni.dev/valid-attachments"
VALID_CONTAINERS = "multiplex.dev/valid-containers"
_SHAPE = '[{"containerID": "...", "ifname": "..."}]'


@dataclass(frozen=True)
class Keep:
    """What GC must leave alone: (containerID, ifname) pairs, and whole containers."""
    pairs: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    containers: frozenset[str] = field(default_factory=frozenset)

    def keeps(self, container_id: str, ifname: str) -> bool:
        return container_id in self.containers or (container_id, ifname) in self.pairs

    def to_config(self) -> dict[str, Any]:
        """The keys of a GC config that carry this keep-list (containers only when there are some)."""
        out: dict[str, Any] = {VALID_ATTACHMENTS: [{"containerID": c, "ifname": i} for c, i in sorted(self.pairs)]}
        if self.containers:
            out[VALID_CONTAINERS] = sorted(self.containers)
        return out


def _bad(msg: str, path: str, allowed: str = _SHAPE) -> CNIError:
    return CNIError(INVALID_CONFIG, msg, f"field: {path}; allowed: {allowed}")


def parse_keep(conf: Mapping[str, Any]) -> Keep:
    """The keep-list of a GC config; CNIError 7 naming the field when it is malformed."""
    path = f'$["{VALID_ATTACHMENTS}"]'
    raw = conf.get(VALID_ATTACHMENTS)
    if raw is None:
        raise _bad(f"GC needs {VALID_ATTACHMENTS} (the attachments to keep); an empty list keeps nothing",
                   path)
    if not isinstance(raw, list):
        raise _bad(f"{VALID_ATTACHMENTS} must be a list, not {type(raw).__name__}", path)
    pairs: set[tuple[str, str]] = set()
    for n, item in enumerate(raw):
        where = f"{path}[{n}]"
        if not isinstance(item, dict):
            raise _bad(f"{VALID_ATTACHMENTS}[{n}] must be an object", where)
        for key in ("containerID", "ifname"):
            value = item.get(key)
            if not isinstance(value, str) or not value:
                raise _bad(f"{VALID_ATTACHMENTS}[{n}] needs a non-empty string {key!r}"
                           + (f" (found keys: {', '.join(sorted(map(str, item)))})" if key not in item else ""),
                           f"{where}.{key}")
        pairs.add((item["containerID"], item["ifname"]))
    containers: set[str] = set()
    raw_c = conf.get(VALID_CONTAINERS)
    if raw_c is not None:
        cpath = f'$["{VALID_CONTAINERS}"]'
        if not isinstance(raw_c, list) or not all(isinstance(c, str) and c for c in raw_c):
            raise _bad(f"{VALID_CONTAINERS} must be a list of container IDs", cpath, '["<containerID>", ...]')
        containers = set(raw_c)
    return Keep(frozenset(pairs), frozenset(containers))


def keep_of(pairs: Iterable[tuple[str, str]] = (), containers: Iterable[str] = ()) -> Keep:
    return Keep(frozenset(pairs), frozenset(containers))
