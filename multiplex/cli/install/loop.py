"""`install --every`: the DaemonSet's loop, which keeps the node current."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from .report import InstallError, InstallReport
from .steps import install


def install_periodically(every: float, stop: Optional[threading.Event] = None,
                         on_report: Optional[Callable[[InstallReport], None]] = None,
                         on_error: Optional[Callable[[Exception], None]] = None,
                         **install_args: Any) -> None:
    """Run install now and then every `every` seconds until `stop` is set.

    This keeps the node current: a rotated service account token, a cluster network that appears
    late or changes, a new image's launchers. An error (no cluster network yet) is reported and
    retried on the next round, never fatal.
    """
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            rep = install(**install_args)
            if on_report:
                on_report(rep)
        except (InstallError, OSError) as e:
            if on_error:
                on_error(e)
        stop.wait(every)
