"""Who may reach whom, as a user checks it: TCP listeners in pods' netns and connects from others.

For `multiplex lab`'s allowed/denied matrix (and the tests): `serve_tcp(netns, port)` listens on
every address of a pod (IPv4 and IPv6), `tcp_reaches(netns, address, port)` is True when a
connect from inside `netns` completes (a policy that drops the SYN makes it time out), and
`tcp_matrix` runs many probes at once, so a matrix costs about one timeout. Stdlib only; the
netns are entered by path on the calling thread (multiplex/netlink/netns.py), never by fork.
"""
from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ...netlink.netns import entered

TIMEOUT = 0.5


def _path(netns: str) -> str:
    return netns if netns.startswith("/") else f"/var/run/netns/{netns}"


def serve_tcp(netns: str, port: int) -> Callable[[], None]:
    """Listen on `port` (dual stack) inside `netns`, accepting and closing connections on a thread;
    returns the function that stops it."""
    with entered(_path(netns)):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(4096)
    s.settimeout(0.2)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = s.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=run, name=f"tcp-{port}", daemon=True)
    t.start()

    def close() -> None:
        stop.set()
        t.join(2)
        s.close()
    return close


def tcp_reaches(netns: str, address: str, port: int, timeout: float = TIMEOUT) -> bool:
    """A TCP connect from inside `netns` to `address`:`port` completes within `timeout`."""
    with entered(_path(netns)):
        s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((address, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def tcp_matrix(probes: list[tuple[str, str, int]], timeout: float = TIMEOUT, workers: int = 64
               ) -> dict[tuple[str, str, int], bool]:
    """(netns, address, port) -> reached, every probe at once."""
    with ThreadPoolExecutor(max(1, min(workers, len(probes) or 1))) as pool:
        got = list(pool.map(lambda p: tcp_reaches(p[0], p[1], p[2], timeout), probes))
    return dict(zip(probes, got))
