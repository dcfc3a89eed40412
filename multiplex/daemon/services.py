"""What the node daemon lends every CNI call it serves (multiplex/cni/context.py `Services`).

- `observe_plugin`: each plugin call's latency and code, into the metrics.
- `source(conf)`: the daemon's watch caches of pods and NADs (multiplex/k8s/cached.py
  CachedSource) when the call's multiplex config names the Kubernetes API the daemon watches;
  else None, and the call builds its own source as a one-shot call does.
- `ipam_cache(kubeconfig, node)`: the kubernetes IPAM store's reads (IPPools, this node's
  IPBlocks) from the daemon's watches, with a warm client for the call's kubeconfig
  (multiplex/ipam/kube/cache.py Lent), by the same rule, and only for this daemon's node; else
  None (the store reads the API, as a one-shot call does). The IPAM plugin opens its store with
  the call's context (req.ctx.services), so only calls this daemon serves see its cache.
- `ip_pools()`: every IPPool's CIDR from the daemon's "ippools" informer (a known kind on the
  Kubernetes API; on a local directory registered by the BGP controller), for bgp-routed's rule
  that a routed pod's addresses lie in the admin's pools (delegates/routed_pools.py). Served for
  every call whatever API its config names: the admin's pod address space (every IPPool, also
  those the BGP settings' `ipPools` leaves out of the import filter), the authority on what this
  node may route to a pod. None when no controller of the daemon runs that informer (it is
  never started here, for one call) or it has not read its first list within POOLS_SYNC_TIMEOUT (the call then finds pools as a one-shot does).

The rule for "the API the daemon watches": the call's config has a `kubeconfig`, and the API
server URL in it (its current context's cluster `server`) equals the daemon's: the server of the
daemon's `--kubeconfig`, or, for a daemon running in a pod with no kubeconfig, the in-cluster
address (https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT). URLs are compared after
normalising scheme and host case, a default port and a trailing slash. A config without a
kubeconfig (local nadDir/podDir) or naming another cluster is never served from the caches: the
caches hold only what the daemon's own watches saw. A daemon on a local directory serves no
source at all (its files are what the call's LocalSource reads anyway, without a cache to lag).

Why compare server URLs and not kubeconfig paths: the daemon usually runs in-cluster while the
node's multiplex config names the kubeconfig file `multiplex install` wrote; both reach one API.
The caches are only read: the fallback GET on a miss and the network-status patch go out with the
call config's own credentials (a KubeClient per kubeconfig file, kept while the file is
unchanged), so the daemon never writes with another identity than the one-shot path would.
Kubeconfig files are read once per (path, mtime, size).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Optional
from urllib.parse import urlsplit

from ..util import log as _log

#: how long a call waits for the "ippools" informer's first list before finding pools elsewhere
POOLS_SYNC_TIMEOUT = 5.0
POOLS_KIND = "ippools"


def normalise_server(url: str) -> str:
    """`HTTPS://Api.Example:443/` -> `https://api.example:443`: one spelling per server."""
    text = (url or "").strip()
    if not text:
        return ""
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return text.rstrip("/").lower()
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


def server_of_kubeconfig(path: str) -> str:
    """The normalised server URL of a kubeconfig's current context, or "" when it names none."""
    import yaml

    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        return ""
    current = cfg.get("current-context") or ""
    contexts = {c.get("name"): c.get("context") or {} for c in cfg.get("contexts") or [] if isinstance(c, dict)}
    clusters = {c.get("name"): c.get("cluster") or {} for c in cfg.get("clusters") or [] if isinstance(c, dict)}
    ctx = contexts.get(current) or (next(iter(contexts.values())) if len(contexts) == 1 else {})
    cluster = clusters.get(ctx.get("cluster")) or (next(iter(clusters.values())) if len(clusters) == 1 and not ctx else {})
    return normalise_server(str(cluster.get("server") or ""))


def in_cluster_server(environ: Optional[dict] = None) -> str:
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    if not host:
        return ""
    port = env.get("KUBERNETES_SERVICE_PORT", "443")
    return normalise_server(f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}")


class DaemonServices:
    """The daemon's Services: shared by every call, thread-safe."""

    def __init__(self, objects: Any, kubeconfig: Optional[str], metrics: Any, log: Optional[_log.Logger] = None,
                 *, server: Optional[str] = None):
        """`objects`: the daemon's ObjectSource; `kubeconfig`: the daemon's (None: in-cluster, or
        a local directory); `server`: the API server URL the daemon watches, when the caller knows
        it (default: read from `kubeconfig`, else the in-cluster address; "" for a daemon on a
        local directory: an ObjectSource without a `client`, i.e. LocalObjects)."""
        self.objects = objects
        self.kubeconfig = kubeconfig
        self.metrics = metrics
        self.log = log or _log.get()
        self._server = normalise_server(server) if server is not None else None
        self._lock = threading.Lock()
        self._servers: dict[str, tuple[tuple[int, int], str]] = {}
        self._clients: dict[str, tuple[tuple[int, int], Any]] = {}
        self._ipam: Any = None
        self._incluster: Any = None

    # --- Services ---------------------------------------------------------------------------------
    def observe_plugin(self, type_name: str, command: str, seconds: float, code: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_plugin(type_name, command, seconds, code)

    def source(self, conf: Any) -> Optional[Any]:
        path = getattr(conf, "kubeconfig", None)
        if not path or self.objects is None:
            return None
        mine = self.watched_server()
        if not mine:
            return None
        try:
            theirs = self._server_of(path)
        except (OSError, ValueError) as e:
            # unreadable: the call's own source will fail with the usual clear error
            self.log.debug("call kubeconfig unreadable; not served from the caches", kubeconfig=path, error=str(e))
            return None
        except Exception as e:   # yaml errors and the like
            self.log.debug("call kubeconfig unreadable; not served from the caches", kubeconfig=path, error=repr(e))
            return None
        if theirs != mine:
            return None
        from ..k8s.cached import CachedSource

        return CachedSource(self.objects, self._client_for(path), self.log)

    def ipam_cache(self, kubeconfig: Optional[str], node: str) -> Optional[Any]:
        """The IPAM watch cache and a client for `kubeconfig` (None: in-cluster), when that names
        the API the daemon watches and `node` is the daemon's node; else None."""
        if self.objects is None or getattr(self.objects, "client", None) is None:
            return None
        if not node or node != getattr(self.objects, "node_name", None):
            return None
        mine = self.watched_server()
        if not mine:
            return None
        try:
            theirs = self._server_of(kubeconfig) if kubeconfig else in_cluster_server()
        except Exception as e:   # unreadable: the store's own client fails with the usual clear error
            self.log.debug("IPAM kubeconfig unreadable; not served from the caches", kubeconfig=kubeconfig,
                           error=repr(e))
            return None
        if theirs != mine:
            return None
        from ..ipam.kube.cache import IPAMCache, Lent

        with self._lock:
            if self._ipam is None:
                self._ipam = IPAMCache(self.objects, node, log=self.log)
            cache = self._ipam
        return Lent(cache, self._client_for(kubeconfig) if kubeconfig else self._in_cluster_client())

    def ip_pools(self, timeout: float = POOLS_SYNC_TIMEOUT) -> Optional[list]:
        """Every IPPool's CIDR (disabled ones too, as the BGP import filter), or None (see above)."""
        if self.objects is None:
            return None
        # only a watch a controller (bgp, vxlan-peers) already runs: starting one here would make a
        # daemon without them watch IPPools forever, and on a cluster without the IPPool CRD every
        # bgp-routed ADD would wait the sync timeout before the one-shot path refuses it anyway
        informer = self.objects.started().get(POOLS_KIND)
        if informer is None:
            return None
        if not informer.synced() and not informer.wait_synced(timeout):
            self.log.info("IPPool informer not synced; the call finds pools itself")
            return None
        from ..bgp.plan import pools_from_ippools

        return pools_from_ippools(informer.list())

    def _in_cluster_client(self) -> Any:
        from ..k8s.client import KubeClient

        with self._lock:
            if self._incluster is None:
                self._incluster = KubeClient(None, log=self.log)
            return self._incluster

    # --- the rule ---------------------------------------------------------------------------------
    def watched_server(self) -> str:
        """The normalised URL of the API the daemon's watches read, or "" when it watches none."""
        if self._server is None:
            client = getattr(self.objects, "client", None)
            kubeconfig = self.kubeconfig or getattr(client, "kubeconfig", None)
            if client is None:
                self._server = ""          # a local directory (LocalObjects): no API watched
            elif kubeconfig:
                try:
                    self._server = server_of_kubeconfig(kubeconfig)
                except Exception as e:
                    self.log.warning("cannot read the daemon's kubeconfig server; calls build their own source",
                                     kubeconfig=kubeconfig, error=repr(e))
                    self._server = ""
            else:
                self._server = in_cluster_server()
        return self._server

    @staticmethod
    def _stamp(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size

    def _server_of(self, path: str) -> str:
        stamp = self._stamp(path)
        with self._lock:
            hit = self._servers.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        server = server_of_kubeconfig(path)
        with self._lock:
            self._servers[path] = (stamp, server)
        return server

    def _client_for(self, path: str) -> Any:
        """One KubeClient per kubeconfig file (a new one when the file changed: rotated credentials)."""
        from ..k8s.client import KubeClient

        stamp = self._stamp(path)
        with self._lock:
            hit = self._clients.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
            client = KubeClient(path, log=self.log)
            self._clients[path] = (stamp, client)
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
            if self._incluster is not None:
                clients["(in-cluster)"] = ((0, 0), self._incluster)
                self._incluster = None
        for _, client in clients.values():
            try:
                client.close()
            except Exception:
                pass
