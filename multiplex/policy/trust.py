"""What a NetworkAttachmentDefinition's config may say: NAD configs are untrusted input.

multiplex runs as root on every node, but the people who write NADs (and pod annotations) are
often not the node's admin. A NAD writer decides their own namespace's networks: which plugins,
which ranges, which bridge. They may not decide anything about the node itself, because every
such field turns into code run or files written as root:

- `type: multiplex` (as the plugin type, in `plugins[]`, or as `ipam.type`): the meta plugin
  would read node-level fields (`binDir`, `clusterNetwork`, `logFile`, ...) from the NAD and run
  whatever they name;
- node paths, credentials and identity, anywhere in the config (`binDir`, `stateDir`, `logFile`,
  `kubeconfig`, `ipam.dataDir`, `ipam.nodeName`, `authorizeHooks`, ...): only the node's own
  multiplex config (the admin's) may set them;
- keys under `cni.dev/` and `multiplex.dev/`: runtime and meta-plugin conventions
  (`cni.dev/valid-attachments` decides what GC keeps), never a NAD's to set.

`check_untrusted` walks the whole config iteratively (a deep document cannot overflow the stack)
and refuses the first such field with code 7, naming it by JSON path. It runs in `select` before
anything is executed or written. `is_multiplex_config` keeps name lookups from ever resolving to
the node's own multiplex config (a NAD named like it would otherwise make multiplex call itself).
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from ..cni.errors import CNIError, INVALID_CONFIG

MULTIPLEX_TYPE = "multiplex"

#: Keys (compared case-insensitively) that point at the node's file system, credentials or
#: identity. They are honoured only in the node's multiplex config.
NODE_FIELDS = frozenset(k.lower() for k in (
    "binDir", "confDir", "stateDir", "logFile", "nadDir", "podDir", "kubeconfig", "dataDir",
    "nodeName", "readinessindicatorfile", "daemonSocketPath", "socketPath",
    "authorizeHooks",   # executables run as root (policy/external.py): the admin's alone
))
#: Key prefixes reserved for the runtime and the meta plugin.
RESERVED_PREFIXES = ("cni.dev/", "multiplex.dev/")

NODE_ONLY = "only the node's own multiplex config (the admin's) may set it"

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_untrusted(netconf: Any, network: str, root: str = "") -> None:
    """Refuse (code 7) a NAD-sourced config that names `type: multiplex` or carries a node field.

    `network` is the NAD as `namespace/name`; it prefixes the JSON path in the details, as the
    meta plugin's other errors about that config do (`tenant-a/blue:$.ipam.kubeconfig`). `root`
    replaces that prefix for other untrusted objects (a pod's `cni-args`, which reach every plugin
    of the attachment as `args.cni`)."""
    for path, key, value in _walk(netconf, root or f"{network}:$"):
        if key is None:
            continue
        if key.lower() in NODE_FIELDS:
            raise CNIError(INVALID_CONFIG,
                           f"network {network}: {key!r} is a node field, not allowed in a "
                           "NetworkAttachmentDefinition or a pod annotation",
                           f"field: {path}; allowed: not in a NetworkAttachmentDefinition or a pod "
                           f"annotation: {NODE_ONLY}")
        if key.lower().startswith(RESERVED_PREFIXES):
            raise CNIError(INVALID_CONFIG,
                           f"network {network}: {key!r} is reserved for the runtime and the meta plugin",
                           f"field: {path}; allowed: no cni.dev/ or multiplex.dev/ keys in a "
                           f"NetworkAttachmentDefinition or a pod annotation: {NODE_ONLY}")
        if key == "type" and isinstance(value, str) and value.strip().lower() == MULTIPLEX_TYPE:
            raise CNIError(INVALID_CONFIG,
                           f"network {network}: type {MULTIPLEX_TYPE!r} may not be used by a "
                           "NetworkAttachmentDefinition or a pod annotation",
                           f"field: {path}; allowed: any delegate or IPAM type except "
                           f"{MULTIPLEX_TYPE!r}: {NODE_ONLY}")


def is_multiplex_config(doc: Any) -> bool:
    """A config that would run the meta plugin: `type: multiplex`, or a conflist with it in
    `plugins[]`. Name lookups skip these, so nothing resolves to the node's own config."""
    if not isinstance(doc, dict):
        return False
    if _is_multiplex_type(doc.get("type")):
        return True
    plugins = doc.get("plugins")
    return isinstance(plugins, list) and any(isinstance(p, dict) and _is_multiplex_type(p.get("type"))
                                             for p in plugins)


def _is_multiplex_type(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == MULTIPLEX_TYPE


def _walk(doc: Any, root: str) -> Iterator[tuple[str, Any, Any]]:
    """(JSON path, key or None, value) for every value of `doc`, depth first, without recursion."""
    stack: list[tuple[str, Any, Any]] = [(root, None, doc)]
    while stack:
        path, key, value = stack.pop()
        yield path, key, value
        if isinstance(value, dict):
            for k, v in reversed(list(value.items())):
                stack.append((_child(path, str(k)), str(k), v))
        elif isinstance(value, list):
            for n in range(len(value) - 1, -1, -1):
                stack.append((f"{path}[{n}]", None, value[n]))


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if _PLAIN_KEY.fullmatch(key) else f'{path}["{key}"]'
