"""The BGP controller: one BIRD 2 per node, configured from the cluster, for bgp-routed networks.

Each reconcile gathers what the node should announce and to whom, and makes BIRD match:
- the settings file (multiplex/bgp/settings.py: ASN, mesh, reflector label, BFD, graceful
  restart, explicit peers), read again at every pass;
- this node's underlay subnets (read from its underlay interface): nodes outside them are
  reached through a VXLAN device (multiplex/bgp/crosssubnet.py, Calico's CrossSubnet);
- every node's published underlay (the node registry's view: `nodes()`), labels (route
  reflectors) and annotations (a per-node ASN), from the Nodes informer;
- this node's affine IPBlocks and the addresses it borrowed in other nodes' blocks, and every
  IPPool's CIDR (the import filter), from the IPBlock / IPPool informers.
multiplex/bgp/plan.py makes the plan, render.py BIRD's config. When the text differs from the file
(or BIRD is not running) the new text is checked with `bird -p`, written, and applied with
`configure` (sessions whose config is unchanged stay up), or BIRD is started on it. A pass with
nothing new costs a few dict reads and one file read.

BIRD's files are `<state>/bgp/` (bird.conf, bird.ctl - what `multiplex bgp status` reads -,
bird.pid, bird.log). A BIRD that exits is started again at once (a thread waits on it). BIRD runs
in a session of its own: a daemon that crashes leaves it running,
and the next daemon adopts it (pid file + a socket that answers), so routes survive a daemon
restart. A daemon that stops (SIGTERM) stops BIRD for a graceful restart (when it is on) after
writing a marker in `<state>/bgp/`; the next daemon then starts BIRD with `-R` (recovery: the
kernel keeps the routes, `persist`, until the peers' End-of-RIB) and removes the marker once BIRD
has left recovery. Without the marker (a crash, a first start) BIRD starts normally.

The controller runs only where the admin asked for BGP: its factory returns None when the
settings file ($MULTIPLEX_BGP_CONFIG, default /etc/multiplex/bgp.json) does not exist.
Readiness: BIRD answers on its socket.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from ..daemon.controller import Controller, DaemonContext

NAME = "bgp"
BLOCKS_KIND, POOLS_KIND = "ipblocks", "ippools"


def local_subnets(interface: str) -> list:
    from ..bgp.crosssubnet import local_subnets as read

    return read(interface)


def register_kinds(objects: Any) -> None:
    """Make the IPAM's IPBlocks and IPPools watchable on this object source (unless already
    registered, e.g. by the cluster IPAM's own controller), for the Kubernetes API and for a local
    directory alike."""
    from ..ipam.kube.model import BLOCK_KIND, BLOCKS, GROUP, POOL_KIND, POOLS, VERSION

    kinds = getattr(objects, "kinds", None)
    if kinds is None or not hasattr(objects, "register"):
        return
    for kind, plural, object_kind in ((BLOCKS_KIND, BLOCKS, BLOCK_KIND), (POOLS_KIND, POOLS, POOL_KIND)):
        if kind in kinds:
            continue
        if type(objects).__name__ == "KubeObjects":
            from ..k8s.client import custom
            from ..k8s.objects import KubeKind

            objects.register(kind, KubeKind(custom(GROUP, VERSION, plural)))
        else:
            from ..k8s.objects import LocalKind

            objects.register(kind, LocalKind(object_kind, namespaced=False))


class BgpController(Controller):
    name = NAME
    watches = ("nodes", BLOCKS_KIND, POOLS_KIND)
    resync = 10.0

    def __init__(self, node_name: str, directory: str, settings_path: str, binary: Optional[str] = None):
        from ..bgp.bird import Bird

        self.node_name = node_name
        self.directory = directory
        self.settings_path = settings_path
        self.bird = Bird(directory, binary)
        self.plan: Any = None
        self.applied = 0          # configs written and applied (start or configure)
        self.underlay_mtu = 0
        self.cross: dict = {}     # the VXLAN device's entries (nodes on other subnets)
        self.last_result = ""

    # --- the framework's hooks ----------------------------------------------------------------------
    def setup(self, daemon: DaemonContext) -> None:
        super().setup(daemon)
        from ..bgp import settings

        settings.load(self.settings_path)   # a bad file fails setup, named in /readyz and the log
        if not (os.path.isabs(self.bird.binary) and os.access(self.bird.binary, os.X_OK)):
            raise RuntimeError(f"BIRD 2 is not installed on this node (no {self.bird.binary!r}): install the "
                               f"bird2 package, or remove {self.settings_path} to run without BGP")
        registry = daemon.controllers.get("node-registry")
        if registry is None:
            raise RuntimeError("the bgp controller needs the node-registry controller (--controllers)")
        registry.add_listener(lambda name, old, new: self.enqueue("all"))
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if self.bird.adopt():
            daemon.log.info("adopted a running BIRD", pid=self.bird.pid, socket=self.bird.socket_path)
            if os.path.exists(self.bird.marker):
                # the previous daemon started it with -R and died before its recovery ended: this
                # daemon removes the marker when it does (else a later BIRD crash recovers again)
                self._watch_recovery(None)

    def reconcile(self, key: str) -> None:
        self.apply()

    def ready(self) -> bool:
        return self.bird.alive() and self.bird.answers()

    def stop(self) -> None:
        """Stop BIRD. With graceful restart on (the default), BIRD stops for a graceful restart, so
        its peers keep this node's routes as stale until the next daemon's BIRD has converged (a
        rolling update drops no route); a SIGTERM would send Cease and the peers would withdraw at
        once. The marker BIRD's graceful_restart() writes tells the next daemon to start BIRD in
        recovery (`bird -R`). Without graceful restart, or when BIRD does not stop that way: SIGTERM."""
        pid = self.bird.pid
        graceful = self.plan is not None and self.plan.settings.graceful_restart and self.bird.alive()
        if graceful:
            graceful = self.bird.graceful_restart()
        if not graceful:
            self.bird.finish_recovery()     # a plain stop: the next BIRD starts afresh
        self.bird.stop()
        if pid:
            self.daemon.log.info("BIRD stopped", pid=pid, graceful=graceful)

    # --- the steps ---------------------------------------------------------------------------------
    def gather(self):
        """The plan's inputs from the settings file, the node registry and the informers."""
        from ..bgp import plan as bgp_plan
        from ..bgp import settings

        conf = settings.load(self.settings_path)
        objects = self.daemon.objects
        nodes_inf = objects.informer("nodes")
        facts = self.daemon.controllers["node-registry"].nodes()
        infos = []
        for name, f in facts.items():
            meta = (nodes_inf.get(None, name) or {}).get("metadata") or {}
            infos.append(bgp_plan.NodeInfo(name, f.ipv4, f.ipv6, dict(meta.get("labels") or {}),
                                           dict(meta.get("annotations") or {})))
        me = next((i for i in infos if i.name == self.node_name), None)
        if me is None:
            raise RuntimeError(f"node {self.node_name} has not published its node facts yet (node-registry)")
        blocks, borrowed, error = bgp_plan.blocks_from_ipblocks(objects.informer(BLOCKS_KIND).list(), self.node_name)
        if error:
            self.daemon.log.warning("ignoring a malformed IPBlock", error=error)
        ippools = objects.informer(POOLS_KIND).list()
        pools = bgp_plan.pools_from_ippools(ippools, conf.ip_pools)
        missing = bgp_plan.missing_pools(ippools, conf.ip_pools)
        if missing:
            self.daemon.log.warning("the BGP settings' ipPools name IPPools that do not exist", missing=missing)
        mine = facts[self.node_name]
        self.underlay_mtu = mine.mtu
        subnets = local_subnets(mine.interface) if mine.interface else []
        return bgp_plan.make_plan(me, infos, conf, blocks, borrowed, pools, subnets, mine.interface)

    def apply(self) -> bool:
        """Make BIRD run the config of the current plan. True when something was (re)applied."""
        from ..bgp import crosssubnet
        from ..bgp.render import render
        from ..util.files import atomic_write

        plan = self.gather()
        # the VXLAN device first: BIRD's import filter names it for nodes on other subnets
        self.cross = crosssubnet.sync(plan, self.underlay_mtu)
        text = render(plan)
        try:
            with open(self.bird.conf, encoding="utf-8") as f:
                current = f.read()
        except OSError:
            current = None
        running = self.bird.alive()
        if text == current and running:
            self.plan = plan
            return False
        self.bird.check_config(text)
        atomic_write(self.bird.conf, text, mode=0o600)
        if running:
            self.last_result = self.bird.configure()
            self.daemon.log.info("BIRD reconfigured", result=self.last_result, neighbors=len(plan.neighbors),
                                 blocks=[str(b) for b in plan.blocks], borrowed=[str(b) for b in plan.borrowed])
        else:
            recover = plan.settings.graceful_restart and self.bird.restart_pending(plan.settings.restart_time)
            if not recover:
                self.bird.finish_recovery()
            pid = self.bird.start(recover=recover)
            self._watch_exit(self.bird.proc)
            if recover:
                self._watch_recovery(self.bird.proc)
            self.last_result = "started in graceful restart recovery" if recover else "started"
            self.daemon.log.info("BIRD started", pid=pid, socket=self.bird.socket_path, recover=recover,
                                 neighbors=len(plan.neighbors), blocks=[str(b) for b in plan.blocks])
        self.plan = plan
        self.applied += 1
        return True


    def _watch_recovery(self, proc) -> None:
        """Remove the graceful restart marker once BIRD (started with -R) has left recovery, i.e.
        its peers sent End-of-RIB and the kernel is synced (BIRD ends it itself after `graceful
        restart wait`, 240 s, if a peer never comes back). A BIRD that dies meanwhile keeps the
        marker: the next one recovers too, the peers still hold our stale routes. `proc` None: the
        adopted BIRD (its pid)."""
        import threading
        import time

        from ..bgp.bird import BirdError

        pid = proc.pid if proc is not None else self.bird.pid

        def running() -> bool:
            return proc.poll() is None if proc is not None else self.bird.pid == pid and self.bird.alive()

        def wait() -> None:
            t0 = time.monotonic()
            while running() and not self.daemon.stopping.is_set():
                try:
                    if not self.bird.recovering():
                        self.bird.finish_recovery()
                        self.daemon.log.info("BIRD's graceful restart recovery done",
                                             seconds=round(time.monotonic() - t0, 2))
                        return
                except (BirdError, OSError):
                    pass
                time.sleep(0.2)

        if pid is not None:
            threading.Thread(target=wait, name=f"bird-recovery-{pid}", daemon=True).start()

    def _watch_exit(self, proc) -> None:
        """A BIRD that exits (crash, kill) is started again at once, not at the next resync."""
        import threading

        def wait() -> None:
            code = proc.wait()
            if not self.daemon.stopping.is_set():
                self.daemon.log.warning("BIRD exited; starting it again", pid=proc.pid, code=code,
                                        log=self.bird.log_tail(500))
                self.enqueue("all")

        if proc is not None:
            threading.Thread(target=wait, name=f"bird-{proc.pid}", daemon=True).start()


def bgp_directory(state_dir: Optional[str]) -> str:
    from ..util.state import root

    return os.path.join(root(state_dir), "bgp")


def controller(daemon: DaemonContext) -> Optional[BgpController]:
    """The entry point: a controller when the BGP settings file exists, else None (no BGP here)."""
    from ..bgp import settings

    path = settings.settings_path()
    if not os.path.exists(path):
        daemon.log.debug("no BGP settings file; the bgp controller is not needed", path=path)
        return None
    register_kinds(daemon.objects)
    return BgpController(daemon.node_name, bgp_directory(daemon.state_dir), path)
