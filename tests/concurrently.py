"""Run a piece of a test in several threads at once and get back what they raised.

An exception in a plain thread is printed and lost: the test would pass. Here every thread's
exception is kept and returned, so the caller asserts there was none (and pytest shows it)."""
from __future__ import annotations

import threading
from typing import Callable


def run_in_threads(work: Callable[[int], None], count: int, timeout: float = 120.0) -> list[BaseException]:
    """`work(0)` ... `work(count - 1)`, each in a thread of its own, all started before any is
    joined. Returns the exceptions they raised (empty when all went well); a thread still running
    after `timeout` s (a deadline for a hang, not a speed assertion) is reported as one."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as e:   # noqa: BLE001 - returned to the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,), name=f"test-worker-{n}") for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    errors += [TimeoutError(f"{t.name} still running after {timeout} s") for t in threads if t.is_alive()]
    return errors
