"""What one CNI call carries besides its CNI parameters, passed down explicitly.

A warm process (the node daemon) serves many calls at once, so nothing of one call may live in
`os.environ`, a module global or a thread-local. What a call needs travels on its Request as a
CallContext, and every Request derived from it (a delegate's, its IPAM's) shares it:

- `state_dir`: the state root (result cache, locks, the node IPAM database), the multiplex
  config's `stateDir`; None means the default root.
- `kubeconfig`: the meta plugin's kubeconfig, for a delegate's IPAM with `store: kubernetes`.
- `log`: a logger carrying this call's fields (command, container, pod).
- `batch`: the netlink delete batch (node-side links deleted as one link group at the end of a
  DEL), or None.
- `services`: what a warm process (the node daemon) shares with every call it serves, or None in
  a one-shot process. It answers the `Services` protocol below: the meta plugin asks it for a
  Source of pods and NADs (the daemon's watch caches) and every plugin call reports its latency
  to it (metrics). It is never sent to an exec'd plugin.
The deadline stays on the Request itself (`Request.deadline`).

An exec'd plugin is another process: it gets `state_dir` and `kubeconfig` in its environment
(`environ()`, read back by `from_environ()` at its entry), as the CNI spec has plugins read their
parameters from config and environment.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Protocol

from ..util import log as _log

STATE_DIR_ENV = "MULTIPLEX_STATE_DIR"
KUBECONFIG_ENV = "MULTIPLEX_KUBECONFIG"


class Services(Protocol):
    """What the node daemon lends to the calls it serves (multiplex/daemon/)."""

    def source(self, conf: Any) -> Optional[Any]:
        """A Source (multiplex.meta.sources) for the meta plugin's config `conf`
        (a MultiplexConfig) served from the daemon's caches, or None when the daemon does not
        watch what `conf` names (the call then builds its own source, as a one-shot call does)."""

    def observe_plugin(self, type_name: str, command: str, seconds: float, code: int) -> None:
        """One plugin call (a delegate, an IPAM, a chained plugin) took `seconds`; `code` is 0 or
        the CNI error code it raised."""

    def ipam_cache(self, kubeconfig: Optional[str], node: str) -> Optional[Any]:
        """The kubernetes IPAM store's reads served from the daemon's watches of IPPools and this
        node's IPBlocks, with a client for `kubeconfig` (multiplex.ipam.kube.cache.Lent), or None
        when the daemon does not watch that API server for `node` (the store reads the API)."""

    def ip_pools(self) -> Optional[list]:
        """Every IPPool's CIDR (ipaddress networks) from the daemon's watch, or None when it does
        not watch IPPools (bgp-routed then finds them as a one-shot call does)."""


@dataclass(frozen=True)
class CallContext:
    state_dir: Optional[str] = None
    kubeconfig: Optional[str] = None
    log: _log.Logger = field(default_factory=_log.get)
    batch: Optional[Any] = None
    services: Optional[Services] = None

    def with_(self, **changes: Any) -> "CallContext":
        """A copy with some fields replaced (the original, shared by other requests, is frozen)."""
        return replace(self, **changes)

    def environ(self) -> dict[str, str]:
        """What an exec'd plugin finds in its environment."""
        out: dict[str, str] = {}
        if self.state_dir:
            out[STATE_DIR_ENV] = self.state_dir
        if self.kubeconfig:
            out[KUBECONFIG_ENV] = self.kubeconfig
        return out

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "CallContext":
        """The context an exec'd plugin starts with: what its caller put in its environment."""
        return cls(state_dir=environ.get(STATE_DIR_ENV) or None, kubeconfig=environ.get(KUBECONFIG_ENV) or None)
