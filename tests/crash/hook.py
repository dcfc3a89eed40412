"""Run the real `multiplex` entry with a crash hook: SIGKILL at the N-th step of an ADD.

    MPX_CRASH_AT=N MPX_CRASH_LOG=/tmp/steps python -m tests.crash.hook   (the CNI env and stdin as usual)

A step is an event every ADD passes through in order: each `Undo.push` (a delegate calls it right
after each change it made to the node or the pod: veth, lease, rules, ...) and each
`ResultCache.save` (before and after the write). With MPX_CRASH_AT=0 nothing is killed and the
log lists every step of a full ADD, so a test knows how many steps to kill at. The process kills
itself with SIGKILL: no handler, no finally, no atexit runs, as when the node loses power or
the runtime kills the plugin.
"""
from __future__ import annotations

import os
import signal
import sys

_count = 0


def _event(what: str) -> None:
    global _count
    _count += 1
    log = os.environ.get("MPX_CRASH_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{_count}\t{what}\n")
    if _count == int(os.environ.get("MPX_CRASH_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    from delegates import steps
    from multiplex.cni import cache

    push = steps.Undo.push
    save = cache.ResultCache.save

    def counted_push(self, what, fn):
        push(self, what, fn)
        _event(f"after a change (its undo: {what})")

    def counted_save(self, container_id, ifname, record):
        done = sum(1 for a in record.get("attachments", []) if a.get("result") is not None)
        tag = f"{len(record.get('attachments', []))} attachments, {done} done, complete={record.get('complete')}"
        _event(f"before cache save ({tag})")
        save(self, container_id, ifname, record)
        _event(f"after cache save ({tag})")

    steps.Undo.push = counted_push
    cache.ResultCache.save = counted_save


if __name__ == "__main__":
    install()
    sys.argv = ["multiplex"]
    from multiplex.entry import main

    main()
