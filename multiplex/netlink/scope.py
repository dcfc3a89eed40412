"""A call's pod-netns handles: `open_netns(path)` opened once per CNI call, not once per delegate.

An ADD of four attachments used to open four handles on the same pod namespace (each delegate its
own: two sockets, one a pyroute2 IPRoute, ~0.5-1 ms each) and its default-route step a fifth. A
call opens a `NetnsHandles` slot around its work (`cni/skel.run`, the process-level call that the
one-shot binary and the node daemon both run); while it is open, `netlink.open_netns(path)` on the
call's thread lends the slot's handle for that path, opening it on first use, and the slot closes
every handle when the call ends. The delegates keep writing `with netlink.open_netns(req.netns) as
pod:`: leaving that block gives the handle back instead of closing it.

Why a context variable and not a field of CallContext read by the delegates: `open_netns(path)`
has no Request to read it from, and the delegates are not changed for this. The variable is set
and reset by the call itself (`with scope.call():`), so it never outlives the call, and a thread
the call does not run on (another call's worker in the daemon) never sees it: each thread has its
own context. Outside a call (a test calling a delegate directly, a CLI command) there is no slot
and `open_netns` opens and closes a handle as before.

What is shared, and what is not:
- Only pod namespaces, only for one call. The node's handles have their own per-thread keeping
  (handle.py), and a pod's socket must never outlive the call (it holds the namespace alive).
- A handle that saw anything but clean requests or kernel refusals (CNIError) is dropped from the
  slot and closed once its last borrower lets go; the next `open_netns` opens a new one.
- Nested borrowers of one path share one handle (one thread, one request at a time, as before).
- A namespace that cannot be opened (gone, not a namespace) raises as before, and nothing is kept.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:
    from .handle import Handle

_current: "contextvars.ContextVar[Optional[NetnsHandles]]" = contextvars.ContextVar("multiplex_netns_handles",
                                                                                 default=None)


class NetnsHandles:
    """The pod-netns handles of one call, by (path, field). Each borrower gets a Handle object of
    its own sharing the kept one's sockets, so closing it twice, or using another borrower's after
    closing one's own, is the same as with handles of their own."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], "Handle"] = {}
        self._borrowers: dict[int, int] = {}     # id(kept handle) -> borrowers not yet done
        self.opened = 0          # handles made for this call (tests count them)

    def borrow(self, path: str, field: str) -> "Handle":
        from .handle import Handle

        key = (path, field)
        kept = self._open.get(key)
        if kept is None:
            kept = Handle(path, field)
            self._open[key] = kept
            self.opened += 1
        self._borrowers[id(kept)] = self._borrowers.get(id(kept), 0) + 1
        return kept.lent(self)

    def give_back(self, kept: "Handle", reusable: bool) -> None:
        """A borrower is done with `kept`; one that is not `reusable` takes it out of the slot
        (closed when its last borrower is done)."""
        left = self._borrowers.get(id(kept), 1) - 1
        self._borrowers[id(kept)] = left
        key = (kept.netns, kept.field)
        if not reusable and self._open.get(key) is kept:
            del self._open[key]
        if left <= 0:
            self._borrowers.pop(id(kept), None)
            if self._open.get(key) is not kept:
                kept.close(reusable=False)

    def close(self) -> None:
        """The call is over: close every kept handle (nobody may use them now)."""
        handles, self._open = list(self._open.values()), {}
        self._borrowers.clear()
        for h in handles:
            h.close(reusable=False)


def current() -> Optional[NetnsHandles]:
    """The running call's slot, or None outside a call."""
    return _current.get()


@contextmanager
def call() -> Iterator[NetnsHandles]:
    """Open the slot for one call's work on this thread (an enclosing call's slot is reused:
    the in-process delegates of a call run inside it)."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    slot = NetnsHandles()
    token = _current.set(slot)
    try:
        yield slot
    finally:
        _current.reset(token)
        slot.close()
