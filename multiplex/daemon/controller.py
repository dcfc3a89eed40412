"""The controller framework: reconcile loops over watched objects, as delegates and policy need.

A controller says which kinds it watches (multiplex/k8s/objects.py KINDS); every event of those
kinds is turned into keys (`keys_for`), queued (a key queued twice is reconciled once), and
`reconcile(key)` makes the node match the desired state for that key. A reconcile that raises is
retried with exponential backoff (per key, capped); every `resync` seconds every key of
`all_keys()` is queued again, so a change made behind the controller's back (an FDB entry deleted
by hand) is repaired. Reconciles of one controller run on one thread, in order: a controller need
not lock against itself.

Controllers are found through the `multiplex.controllers` entry points: each names a factory
`controller(daemon: DaemonContext) -> Controller | None` (`load_controllers`). `Runner` runs them:
one thread and one deduplicating key queue per controller, informer handlers feeding it, the
resync, per-key backoff (0.5 s doubling to 60 s, jittered), `setup()` first, `stop()` last.
docs/controllers.md says why each choice was made.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from ..util import log as _log

ENTRY_POINT_GROUP = "multiplex.controllers"
_ENQUEUE_LOCK = threading.Lock()


@dataclass
class DaemonContext:
    """What a controller gets from the daemon."""

    node_name: str
    #: the watched objects (multiplex.k8s.objects.ObjectSource)
    objects: Any
    #: the state root (result cache, locks, node IPAM)
    state_dir: Optional[str] = None
    #: the daemon's kubeconfig, or None (local directory / in-cluster default)
    kubeconfig: Optional[str] = None
    #: the daemon's multiplex.daemon.metrics.Metrics
    metrics: Any = None
    log: _log.Logger = field(default_factory=_log.get)
    #: set when the daemon stops
    stopping: threading.Event = field(default_factory=threading.Event)
    #: other controllers by name, once all are built (the node registry is "node-registry")
    controllers: dict[str, "Controller"] = field(default_factory=dict)
    #: the daemon's command-line options (`multiplex daemon --help`), e.g. "underlay_interface",
    #: "ipam_gc_every", "ipam_gc_grace"
    options: dict[str, Any] = field(default_factory=dict)


class Controller:
    """Subclass and override. `name` is the entry point's name."""

    name: str = ""
    #: kinds whose events queue keys
    watches: tuple[str, ...] = ()
    #: seconds between full resyncs (0: never)
    resync: float = 30.0

    def setup(self, daemon: DaemonContext) -> None:
        """Called once before the first reconcile (on the runner's thread)."""
        self.daemon = daemon

    def keys_for(self, kind: str, event: str, obj: dict) -> Iterable[str]:
        """The keys an event touches. Default: the one key "all" (reconcile everything)."""
        return ("all",)

    def all_keys(self) -> Iterable[str]:
        """Every key, for a resync. Default: "all"."""
        return ("all",)

    def reconcile(self, key: str) -> None:
        """Make the node match the desired state for `key`; raise to be retried with backoff."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Part of /readyz: True once the controller has done its first full reconcile."""
        return True

    def stop(self) -> None:
        """Called once when the daemon stops (after the last reconcile)."""

    # --- given by the runner ---------------------------------------------------------------------
    def enqueue(self, *keys: str) -> None:
        """Queue `keys` for reconcile (from any thread: a delegate registering a fact, a timer).
        Before the runner has started the controller, the keys wait and are queued at its start."""
        with _ENQUEUE_LOCK:
            sink = getattr(self, "_enqueue_to", None)
            if sink is None:
                self.__dict__.setdefault("_pending_keys", []).extend(keys)
                return
        sink(keys)


# --- loading ----------------------------------------------------------------------------------

def available_controllers() -> dict[str, Any]:
    """name -> entry point of every installed controller (the `multiplex.controllers` group)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_controllers(daemon: DaemonContext, names: str) -> list[Controller]:
    """Build the controllers `names` asks for ("all", "none", or a comma list of entry-point
    names) and fill `daemon.controllers`. A factory that returns None (nothing to do on this node,
    e.g. the IPAM GC without a cluster) is skipped and logged. An unknown name is a ValueError
    naming the known ones: a typo in `--controllers` must not silently run fewer loops."""
    known = available_controllers()
    text = (names or "all").strip()
    if text == "none":
        wanted: list[str] = []
    elif text == "all":
        wanted = sorted(known)
    else:
        wanted = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ValueError(f"unknown controller{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in "
                             f"--controllers; known: {', '.join(sorted(known)) or '(none installed)'}, "
                             f"or 'all' / 'none'")
    out: list[Controller] = []
    for name in dict.fromkeys(wanted):
        ctrl = known[name].load()(daemon)
        if ctrl is None:
            daemon.log.info("controller not needed on this node, skipped", controller=name)
            continue
        ctrl.name = ctrl.name or name
        daemon.controllers[ctrl.name] = ctrl
        out.append(ctrl)
    return out


# --- the runner -------------------------------------------------------------------------------

#: per-key backoff after a failed reconcile: BACKOFF_BASE doubling up to BACKOFF_CAP seconds,
#: each wait drawn from [half, all] of it so that keys failing together do not retry together
BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0


def backoff_delay(failures: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP,
                  rand: Callable[[], float] = random.random) -> float:
    """The wait before retry number `failures` (1, 2, ...): base * 2^(failures-1), capped, jittered."""
    full = min(cap, base * (2 ** min(max(failures - 1, 0), 30)))
    return full * (0.5 + 0.5 * rand())


class _NullMetrics:
    def observe_reconcile(self, controller: str, seconds: float, error: bool) -> None:
        pass

    def controller_queue(self, controller: str, depth: int) -> None:
        pass


class _Loop:
    """One controller's thread and work queue.

    The queue is an insertion-ordered dict used as a set: a key queued while already waiting is
    not queued twice. A key being reconciled and queued again meanwhile runs once more afterwards
    (the event may have come after the reconcile read its state). Keys in backoff wait in
    `delayed` (key -> monotonic due time); an event for such a key queues it at once (new
    information), but its failure count stays, so a key that keeps failing keeps backing off.
    """

    def __init__(self, runner: "Runner", ctrl: Controller):
        self.runner = runner
        self.ctrl = ctrl
        self.name = ctrl.name
        self.cond = threading.Condition()
        self.queue: dict[str, None] = {}
        self.delayed: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.thread: Optional[threading.Thread] = None
        self.set_up = False
        #: True once every key of the first all_keys() was reconciled (or failed) once
        self.first_pass_done = False
        self._first_pass: set[str] = set()
        self.next_resync = 0.0
        self.reconciles = 0
        self.errors = 0
        self.last_error = ""

    # queueing (any thread) ----------------------------------------------------------------------
    def add(self, keys: Iterable[str]) -> None:
        with self.cond:
            for key in keys:
                self.delayed.pop(key, None)
                self.queue[key] = None
            self.cond.notify()

    def handler(self, kind: str) -> Callable[[str, dict], None]:
        def on_event(event: str, obj: dict) -> None:
            try:
                keys = list(self.ctrl.keys_for(kind, event, obj))
            except Exception as e:  # a bug in one controller's mapping must not kill the informer
                self.runner.log.error("controller could not map an event to keys", controller=self.name,
                                      kind=kind, event=event, error=repr(e))
                return
            if keys:
                self.add(keys)
        return on_event

    # the thread ---------------------------------------------------------------------------------
    def run(self) -> None:
        log, stopping = self.runner.log, self.runner.stopping
        if not self._setup():
            return
        while not stopping.is_set():
            key = self._next_key()
            if key is None:
                continue
            started = time.monotonic()
            error: Optional[BaseException] = None
            try:
                self.ctrl.reconcile(key)
            except Exception as e:
                error = e
            seconds = time.monotonic() - started
            self.runner.metrics.observe_reconcile(self.name, seconds, error is not None)
            with self.cond:
                self.reconciles += 1
                if error is None:
                    self.failures.pop(key, None)
                else:
                    self.errors += 1
                    n = self.failures[key] = self.failures.get(key, 0) + 1
                    delay = backoff_delay(n)
                    self.last_error = f"{key}: {error}"
                    if key not in self.queue:
                        self.delayed[key] = time.monotonic() + delay
                self._first_pass.discard(key)
                if not self._first_pass:
                    self.first_pass_done = True
            if error is not None:
                log.warning("reconcile failed, retried with backoff", controller=self.name, key=key,
                            failures=n, retry_in=round(delay, 2), error=str(error) or repr(error))

    def _setup(self) -> bool:
        """setup() with backoff until it succeeds or the daemon stops; then the first full pass."""
        log, stopping = self.runner.log, self.runner.stopping
        failures = 0
        while not stopping.is_set():
            try:
                self._wait_synced()
                self.ctrl.setup(self.runner.daemon)
                break
            except Exception as e:
                failures += 1
                self.errors += 1
                self.last_error = f"setup: {e}"
                delay = backoff_delay(failures)
                self.runner.metrics.observe_reconcile(self.name, 0.0, True)
                log.error("controller setup failed, retried with backoff", controller=self.name,
                          failures=failures, retry_in=round(delay, 2), error=str(e) or repr(e))
                stopping.wait(delay)
        else:
            return False
        keys = list(self.ctrl.all_keys())
        with self.cond:
            self._first_pass = set(keys)
            self.first_pass_done = not keys
            self.set_up = True
        with _ENQUEUE_LOCK:
            self.ctrl._enqueue_to = self.add
            pending = self.ctrl.__dict__.pop("_pending_keys", [])
        self.add(keys + list(pending))
        self.next_resync = time.monotonic() + self.ctrl.resync if self.ctrl.resync > 0 else 0.0
        return True

    def _wait_synced(self) -> None:
        """The controller's first reconcile sees complete caches: wait for its informers' first list."""
        for kind in self.ctrl.watches:
            inf = self.runner.daemon.objects.informer(kind)
            while not inf.wait_synced(1.0):
                if self.runner.stopping.is_set():
                    return

    def _next_key(self) -> Optional[str]:
        """The next key to reconcile, or None after a wait (stop, resync, backoff expiry)."""
        with self.cond:
            now = time.monotonic()
            if self.next_resync and now >= self.next_resync:
                for key in self.ctrl.all_keys():
                    if key not in self.delayed:   # a key in backoff keeps its wait
                        self.queue[key] = None
                self.next_resync = now + self.ctrl.resync
            for key, due in list(self.delayed.items()):
                if due <= now:
                    del self.delayed[key]
                    self.queue[key] = None
            if self.queue:
                key = next(iter(self.queue))
                del self.queue[key]
                self.runner.metrics.controller_queue(self.name, len(self.queue))
                return key
            wake = [t for t in (self.next_resync, *self.delayed.values()) if t]
            timeout = max(0.0, min(wake) - now) if wake else None
            if not self.runner.stopping.is_set():
                self.cond.wait(timeout)
            return None

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


class Runner:
    """Runs the controllers: one thread each, fed by the informers of the kinds they watch.

    Thread-safe. Nothing polls: each thread sleeps on its Condition until a key is queued, a
    backoff or the resync is due, or stop() is called.
    """

    def __init__(self, daemon: DaemonContext, controllers: Iterable[Controller]):
        self.daemon = daemon
        self.log = daemon.log
        self.metrics = daemon.metrics if daemon.metrics is not None else _NullMetrics()
        if not hasattr(self.metrics, "observe_reconcile"):
            self.metrics = _NullMetrics()
        self.stopping = daemon.stopping
        self.loops = [_Loop(self, c) for c in controllers]
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Subscribe every loop to its informers and start its thread (once)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        for loop in self.loops:
            for kind in loop.ctrl.watches:
                self.daemon.objects.informer(kind).add_handler(loop.handler(kind))
            loop.thread = threading.Thread(target=self._run_loop, args=(loop,),
                                           name=f"controller:{loop.name}", daemon=True)
            loop.thread.start()

    def _run_loop(self, loop: _Loop) -> None:
        try:
            loop.run()
        except BaseException as e:   # the loop itself broke (a bug): say so loudly, readiness drops
            loop.last_error = f"loop died: {e!r}"
            self.log.error("controller loop died", controller=loop.name, error=repr(e))

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop every loop (a reconcile under way finishes), join the threads, then call each
        controller's stop(). True when every thread ended within `timeout`."""
        self.stopping.set()
        for loop in self.loops:
            loop.wake()
        deadline = time.monotonic() + timeout
        clean = True
        for loop in self.loops:
            if loop.thread is not None:
                loop.thread.join(max(0.0, deadline - time.monotonic()))
                if loop.thread.is_alive():
                    clean = False
                    self.log.warning("controller did not stop in time", controller=loop.name)
        for loop in self.loops:
            try:
                loop.ctrl.stop()
            except Exception as e:
                self.log.error("controller stop failed", controller=loop.name, error=repr(e))
        return clean

    def not_ready(self) -> list[str]:
        """Why the controllers are not ready ([] when they are): for /readyz's reason text."""
        out = []
        for loop in self.loops:
            if loop.thread is None or not loop.thread.is_alive() and not self.stopping.is_set():
                out.append(f"controller {loop.name} is not running" + (f" ({loop.last_error})" if loop.last_error else ""))
            elif not loop.set_up:
                out.append(f"controller {loop.name} is not set up" + (f" ({loop.last_error})" if loop.last_error else ""))
            elif not loop.first_pass_done:
                out.append(f"controller {loop.name} has not finished its first pass")
            else:
                try:
                    ok = loop.ctrl.ready()
                except Exception as e:
                    ok = False
                    loop.last_error = f"ready: {e}"
                if not ok:
                    out.append(f"controller {loop.name} is not ready" + (f" ({loop.last_error})" if loop.last_error else ""))
        return out

    def ready(self) -> bool:
        """True once every controller is set up, has tried each of its first keys once, and says
        it is ready. A key that keeps failing does not hold readiness back (the CNI server works
        without it); its errors are in the log and the metrics."""
        return not self.not_ready()

    def status(self) -> dict[str, dict]:
        """Per controller: reconciles, errors, queued, in backoff, the last error (for inspect)."""
        out = {}
        for loop in self.loops:
            with loop.cond:
                out[loop.name] = {"reconciles": loop.reconciles, "errors": loop.errors, "queued": len(loop.queue),
                                  "backoff": len(loop.delayed), "lastError": loop.last_error,
                                  "ready": loop.set_up and loop.first_pass_done}
        return out
