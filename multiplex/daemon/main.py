"""`multiplex daemon`: assemble the node daemon, serve until SIGTERM, drain, exit 0.

Start-up order: logging; the object source (the Kubernetes informers, or a local directory);
the metrics and the health endpoints (so a probe sees "not ready" with a reason at once); the
services every call borrows; the controllers; the warm imports (orchestrator, every built-in
delegate, IPAM); then the CNI server. Ready = the server listens, every informer a controller or
the services read has synced, and every controller is ready.

Stop (SIGTERM or SIGINT): the server stops accepting (socket closed and unlinked: a shim then
falls back or fails at once) and answers every call it admitted; then the controllers and the
watches stop; exit 0. A restart loses nothing: the result cache and the leases are on disk, and
a DEL of a call cut short finds them there.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Any, Optional

from ..util import log as _log

#: kinds the CNI path reads from the caches (the services' CachedSource)
CNI_KINDS = ("pods", "nads")
#: seconds a stop waits for the controllers' threads
CONTROLLER_STOP_TIMEOUT = 10.0


def run(socket_path: str = "/run/multiplex/multiplex.sock", state_dir: Optional[str] = None,
        node_name: Optional[str] = None, kubeconfig: Optional[str] = None, local_dir: Optional[str] = None,
        metrics_address: str = "127.0.0.1:9635", workers: int = 8, queue_size: int = 64,
        underlay_interface: Optional[str] = None, ipam_gc_every: float = 300.0, ipam_gc_grace: float = 300.0,
        controllers: str = "all", log_file: Optional[str] = None, log_level: str = "info",
        **extra: Any) -> int:
    """Run the daemon until SIGTERM/SIGINT. Returns the exit code: 0 after a clean stop, 1 when
    it could not start (the reason on stderr and in the log)."""
    log = _log.Logger(log_file or None, log_level or "info").child(component="daemon")
    _log._logger = log  # the process's logger: calls without a logFile of their own write here too
    node_name = node_name or os.environ.get("NODE_NAME") or socket.gethostname()
    stop_requested = threading.Event()
    _install_signal_handlers(stop_requested)
    daemon: Optional[Daemon] = None
    try:
        daemon = Daemon(socket_path=socket_path, state_dir=state_dir, node_name=node_name,
                        kubeconfig=kubeconfig, local_dir=local_dir, metrics_address=metrics_address,
                        workers=workers, queue_size=queue_size, controllers=controllers, log=log,
                        options=dict(underlay_interface=underlay_interface, ipam_gc_every=ipam_gc_every,
                                     ipam_gc_grace=ipam_gc_grace, **extra))
        daemon.start()
    except Exception as e:
        log.error("daemon could not start", error=f"{type(e).__name__}: {e}")
        print(f"multiplex daemon: {e}", file=sys.stderr)
        if daemon is not None:
            daemon.stop()
        return 1
    announced = False
    while not stop_requested.wait(0.1 if not announced else 1.0):
        if not announced and daemon.ready()[0]:
            announced = True
            log.info("daemon ready", socket=socket_path, node=node_name, metrics=daemon.metrics_url or "off")
            print(f"multiplex daemon: ready, serving {socket_path} (node {node_name}); health and metrics on "
                  f"{daemon.metrics_url or 'off'}", file=sys.stderr, flush=True)
    log.info("stop requested: draining")
    daemon.stop()
    log.info("daemon stopped")
    return 0


def _install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Daemon:
    """The daemon's parts, started and stopped in order."""

    def __init__(self, *, socket_path: str, state_dir: Optional[str], node_name: str,
                 kubeconfig: Optional[str], local_dir: Optional[str], metrics_address: str,
                 workers: int, queue_size: int, controllers: str, log: _log.Logger, options: dict):
        self.socket_path = socket_path
        self.state_dir = state_dir or os.environ.get("MULTIPLEX_STATE_DIR") or None
        self.node_name = node_name
        self.kubeconfig = kubeconfig
        self.local_dir = local_dir
        self.metrics_address = metrics_address
        self.workers = workers
        self.queue_size = queue_size
        self.controller_names = controllers
        self.log = log
        self.options = options
        self.objects: Any = None
        self.metrics: Any = None
        self.endpoint: Any = None
        self.services: Any = None
        self.runner: Any = None
        self.server: Any = None
        self.context: Any = None
        self._watched: list[str] = []

    @property
    def metrics_url(self) -> str:
        port = getattr(self.endpoint, "port", None)
        if not port:
            return ""
        host = getattr(self.endpoint, "host", "") or "127.0.0.1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    # --- start --------------------------------------------------------------------------------
    def start(self) -> None:
        from ..util.state import root
        from .controller import DaemonContext, Runner, load_controllers
        from .metrics import Metrics, serve
        from .server import CNIServer
        from .services import DaemonServices

        self.objects = self._object_source()
        ipam_dir = os.path.join(root(self.state_dir), "ipam")
        self.metrics = Metrics(ipam_data_dir=ipam_dir, objects=self.objects, kinds=self._cni_kinds())
        self.endpoint = serve(self.metrics_address, ready=self.ready, healthy=self.healthy,
                              metrics=self.metrics, log=self.log)
        self.services = DaemonServices(self.objects, self.kubeconfig, self.metrics, self.log)
        self.context = DaemonContext(node_name=self.node_name, objects=self.objects, state_dir=self.state_dir,
                                     kubeconfig=self.kubeconfig, metrics=self.metrics, log=self.log,
                                     options=dict(self.options))
        ctrls = load_controllers(self.context, self.controller_names)
        self._watched = sorted({k for c in ctrls for k in c.watches} | set(self._cni_kinds()))
        for kind in self._watched:
            self.objects.informer(kind)  # started now, so readiness can wait for its first list
        self.runner = Runner(self.context, ctrls)
        self.runner.start()
        warm_up(self.log)
        from ..ipam.store import warm as warm_ipam

        warm_ipam(self.state_dir, self.log)   # the node's lease database open and checked (never created)
        self.server = CNIServer(self.socket_path, services=self.services, workers=self.workers,
                                queue_size=self.queue_size, metrics=self.metrics, log=self.log,
                                state_dir=self.state_dir).start()

    def _object_source(self) -> Any:
        from ..k8s.objects import KubeObjects, LocalObjects

        if self.local_dir:
            return LocalObjects(self.local_dir, self.log)
        return KubeObjects(self.kubeconfig, self.node_name, self.log)

    def _cni_kinds(self) -> tuple[str, ...]:
        """The kinds the CNI path reads from caches: none on a local directory (its calls read
        their own nadDir/podDir, see services.py)."""
        return () if self.local_dir else CNI_KINDS

    # --- health -----------------------------------------------------------------------------
    def healthy(self) -> bool:
        return self.server is not None and self.server.listening()

    def ready(self) -> tuple[bool, str]:
        """(ready, why not): the server listens, every watched kind synced, controllers ready."""
        reasons = []
        if self.server is None or not self.server.listening():
            reasons.append("the CNI server is not listening")
        for kind in self._watched:
            try:
                if not self.objects.informer(kind).synced():
                    reasons.append(f"the {kind} informer has not synced")
            except Exception as e:
                reasons.append(f"the {kind} informer failed: {e}")
        if self.runner is not None:
            reasons += self.runner.not_ready()
        return (not reasons, "; ".join(reasons))

    # --- stop -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Drain the server, then stop the controllers, the watches and the endpoints."""
        if self.server is not None:
            drained = self.server.stop()
            if not drained:
                self.log.warning("some calls were not answered before their deadline")
        if self.context is not None:
            self.context.stopping.set()
        if self.runner is not None:
            self.runner.stop(CONTROLLER_STOP_TIMEOUT)
        if self.objects is not None:
            try:
                self.objects.stop()
            except Exception as e:
                self.log.warning("stopping the watches failed", error=repr(e))
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.services is not None:
            self.services.close()   # its warm API clients
        from ..ipam.sqlite.pool import POOL

        POOL.close_all()   # the kept lease-database connections, closed cleanly once no call runs


def warm_up(log: _log.Logger) -> None:
    """Import and prepare what every call needs, so the first call pays no import: the
    orchestrator, every built-in delegate, IPAM, the config validators, and netlink (pyroute2 is
    imported by the first request a Handle sends through it; one dump here also builds its message
    classes). Then each
    worker thread keeps its node-netns netlink socket between calls (`keep_node_sockets`, a
    per-thread pool: see multiplex/netlink/handle.py). A plugin that fails to load is logged: the
    call that names it gets the error in the protocol, as a one-shot call would."""
    from ..cni import registry
    from ..meta import orchestrator  # noqa: F401

    for name in registry.builtin_names():
        try:
            registry.builtin(name)
        except Exception as e:
            log.warning("built-in plugin failed to load", plugin=name, error=repr(e))
    try:
        from ..ipam import plugin as _ipam  # noqa: F401
    except Exception as e:
        log.warning("IPAM failed to load", error=repr(e))
    _warm_validators(log)
    _warm_netlink(log)


def _warm_validators(log: _log.Logger) -> None:
    """Compile the config schemas' validators now (jsonschema and its first-use imports)."""
    from ..util import schema

    try:
        schema.warm()
    except Exception as e:
        log.warning("config validators failed to warm up", error=repr(e))


def _warm_netlink(log: _log.Logger) -> None:
    """pyroute2 imported and exercised once, then node sockets kept per thread. The hot requests
    go through rtlink (a look-up of lo exercises nothing of pyroute2) and a pod's Handle builds its
    pyroute2 IPRoute only when a request needs it, so the warm-up sends one request through
    pyroute2 (a dump of links): else the first call creating a bridge would build its message
    classes, or import pyroute2 itself, inside the call."""
    from .. import netlink
    from ..netlink import handle

    try:
        with netlink.open_node() as node:
            node.link("lo")
            node.links()
    except Exception as e:  # a call will report it as its own error
        log.warning("netlink failed to warm up", error=repr(e))
    handle.keep_node_sockets(True)
