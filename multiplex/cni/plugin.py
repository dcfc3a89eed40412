"""The interface every built-in plugin implements (delegates, IPAM, hooks, the meta plugin).

A plugin is an object with `add`, `delete`, `check`, `status`, `gc`. It gets a Request (already
parsed and version-checked) and returns a Result for ADD, nothing for the others, and raises
CNIError on failure. The same object serves an in-process call from multiplex and an exec'd call
from a runtime (through `multiplex.cni.skel.main`).
"""
from __future__ import annotations

from typing import Optional

from .request import Request
from .types import Result


class Plugin:
    #: The CNI type name the plugin answers to (`multiplex-bridge`, ...).
    type_name: str = ""
    #: runtimeConfig keys this plugin understands (CNI `capabilities`), e.g. {"ips", "mac"}.
    capabilities: frozenset[str] = frozenset()
    #: The JSON Schema file (in schemas/) the plugin's config is checked against, if any.
    schema: Optional[str] = None

    def validate(self, conf: dict, where: str = "$") -> None:
        """Check a config of this plugin before anything is touched (CNIError 7 naming the field).

        The meta plugin calls this for every plugin of every attachment before the first one is
        made. The default checks `schema`; plugins with semantic checks (IPAM ranges) extend it.
        """
        if self.schema:
            from ..util import schema

            schema.validate(self.schema, conf, prefix=where)

    def add(self, req: Request) -> Result:
        raise NotImplementedError

    def delete(self, req: Request) -> None:
        raise NotImplementedError

    def check(self, req: Request) -> None:
        raise NotImplementedError

    def status(self, req: Request) -> None:
        """Raise CNIError 50/51 when the plugin cannot serve ADDs."""
        return None

    def gc(self, req: Request) -> None:
        """Remove whatever belongs to attachments not in `cni.dev/valid-attachments`."""
        return None

    def sweep(self, req: Request) -> None:
        """DEL of a container whose attachments are unknown (no usable cache entry): remove what
        this plugin made for `req.container_id` on this node, found by the marks it leaves (veth
        aliases, lease owners, nft comments), whatever the network or interface. Idempotent; the
        default has nothing to sweep."""
        return None
