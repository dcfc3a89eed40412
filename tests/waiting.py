"""Waiting for something a thread or another process makes happen (a watch event, a controller
pass, a daemon's socket), in one place for the tests.

A timeout here is a deadline for something hung, never an assertion about speed: the machine is
shared and slow, so the defaults are generous and a passing wait returns as soon as it can.

- `wait_for(cond, timeout, what)`: for a condition; fails the test naming `what` at the deadline.
- `eventually(fn, timeout)`: for a value; returns the first truthy one, or at the deadline the
  last one, so the caller's own `assert eventually(...), diagnostics` says what went wrong.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

TIMEOUT = 15.0      # seconds: a deadline for a hung thread, not a speed assertion
EVERY = 0.02        # seconds between two looks


def wait_for(cond: Callable[[], object], timeout: float = TIMEOUT, what: str = "condition",
             every: float = EVERY) -> None:
    """Return once `cond()` is true; raise AssertionError naming `what` when `timeout` passed first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def eventually(fn: Callable[[], T], timeout: float = TIMEOUT, every: float = EVERY) -> T:
    """The first truthy `fn()`, or `fn()` once more at the deadline (the caller asserts on it)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(every)
    return fn()
