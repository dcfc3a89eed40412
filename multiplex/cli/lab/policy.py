"""The lab's MultiNetworkPolicy, as a user checks it: TCP 8080 from every pod to every server pod.

The policy (cluster.policy_object: only `role=client` may reach `role=server` on TCP 8080, over the
overlay) is written once the ping matrices are done, so those show the overlay open, and the
matrix shows the policy taking effect on a running lab: the daemons' policy controllers read it at
their next poll of the objects directory (about a second) and put each server pod's rules in its
netns (table `inet multiplex_mnp`). The lab waits until every server pod has that table and the
matrix is what the policy says (an allowed cell is allowed without the policy too, so the
table is what shows the policy arrived), or POLICY_TIMEOUT passes, and prints how long that took;
a cell that still differs is marked `!` and fails the lab.

The TCP listeners are sockets of the lab's own process opened inside each server pod's netns
(multiplex.policy.mnp.matrix.serve_tcp), not child processes: they close with the lab, so even a
lab that is killed leaves no listener behind to stop by pid. A denied connect times out after
matrix.TIMEOUT; all probes run at once, so a round costs about that.
"""
from __future__ import annotations

import time
from typing import Callable

from .cluster import POLICY_NETWORK, POLICY_PORT
from .report import _address
from .topology import Pod, sh

TABLE = ("inet", "multiplex_mnp")     # the policy engine's table in a pod's netns (docs/policy.md)

POLICY_TIMEOUT = 20.0


def expected(src: Pod, dst: Pod) -> bool:
    """What the policy allows: a client to a server (servers only are isolated)."""
    return src.role == "client"


def members(pods: list[Pod]) -> tuple[list[Pod], list[Pod]]:
    """(every pod on the policy's network, the server pods among them)."""
    on = [p for p in pods if POLICY_NETWORK in p.networks]
    return on, [p for p in on if p.role == "server"]


def serve(servers: list[Pod]) -> list[Callable[[], None]]:
    from ...policy.mnp.matrix import serve_tcp

    closers = []
    try:
        for pod in servers:
            closers.append(serve_tcp(pod.netns, POLICY_PORT))
    except BaseException:
        close(closers)
        raise
    return closers


def close(closers: list[Callable[[], None]]) -> None:
    for c in closers:
        c()


def probe(sources: list[Pod], servers: list[Pod]) -> dict[tuple[str, str], dict[int, bool]]:
    """(source netns, server name) -> family -> TCP connect completed, over the policy's network."""
    from ...policy.mnp.matrix import tcp_matrix

    plan = {(src.netns, dst.name, f): addr for src in sources for dst in servers if src is not dst
            for f in (4, 6) if _address(src, POLICY_NETWORK, f) and (addr := _address(dst, POLICY_NETWORK, f))}
    got = tcp_matrix([(ns, addr, POLICY_PORT) for (ns, _, _), addr in plan.items()])
    out: dict[tuple[str, str], dict[int, bool]] = {}
    for (ns, name, f), addr in plan.items():
        out.setdefault((ns, name), {})[f] = got[(ns, addr, POLICY_PORT)]
    return out


def has_table(pod: Pod) -> bool:
    return sh("ip", "netns", "exec", pod.netns, "nft", "list", "table", *TABLE, check=False).returncode == 0


def wait_for_policy(sources: list[Pod], servers: list[Pod], timeout: float = POLICY_TIMEOUT
                    ) -> tuple[dict[tuple[str, str], dict[int, bool]], float, list[str]]:
    """Probe until every server has its table and every cell is what the policy says, or
    `timeout`; (last result, seconds, the servers without a table)."""
    started = time.monotonic()
    want = {(s.netns, d.name): expected(s, d) for s in sources for d in servers if s is not d}
    while True:
        missing = [p.name for p in servers if not has_table(p)]
        got = probe(sources, servers)
        if not missing and all(all(v == want[k] for v in fams.values()) for k, fams in got.items()) \
                and len(got) == len(want):
            return got, time.monotonic() - started, missing
        if time.monotonic() - started > timeout:
            return got, time.monotonic() - started, missing
        time.sleep(0.2)
