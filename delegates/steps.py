"""Steps every delegate shares (as the reference plugins share pkg/ip and pkg/ipam): undoing an
ADD that failed half-way, taking the IPAM lease under that undo, opening the pod netns for CHECK,
checking an `mtu` against the IPAM's IPv6 ranges."""
from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterator, Mapping

from multiplex.util import log
from multiplex.cni.errors import CHECK_FAILED, CNIError, DELEGATE_FAILED, invalid_config
from multiplex.cni.request import Request
from multiplex.cni.types import Result


class Undo:
    """What an ADD made, undone in reverse when a later step fails."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, fn: Callable[[], Any]) -> None:
        self.steps.append((what, fn))

    def run(self) -> None:
        for what, fn in reversed(self.steps):
            try:
                fn()
            except Exception as e:  # keep undoing; the original error is what the caller sees
                log.get().error("rollback step failed", step=what, error=str(e))
        self.steps.clear()


def ipam_add(req: Request, undo: Undo) -> Result:
    """IPAM ADD for this attachment; its release is pushed on `undo`. No address is an error."""
    from multiplex.cni.invoke import invoke_ipam

    ipam = invoke_ipam(req.derive(command="ADD"))
    undo.push("release the IPAM lease", lambda: invoke_ipam(req.derive(command="DEL")))
    if ipam is None or not ipam.ips:
        raise CNIError(DELEGATE_FAILED, f"IPAM plugin {req.config['ipam']['type']} returned no IP address",
                       "field: $.ipam")
    return ipam


def check_prologue(req: Request) -> Result:
    """CHECK's first steps in every delegate: the ADD result it checks against (prevResult, which
    CHECK requires) and IPAM's own CHECK of the leases."""
    from multiplex.cni.errors import invalid_config
    from multiplex.cni.invoke import invoke_ipam

    if req.prev_result is None:
        raise invalid_config("CHECK needs the result of ADD in prevResult", "$.prevResult")
    prev = Result.from_dict(req.prev_result)
    invoke_ipam(req)
    return prev


def open_pod_for_check(req: Request, network: str):
    """The pod's netlink handle for CHECK; a pod netns that is gone fails CHECK (code 104)."""
    from multiplex import netlink

    try:
        return netlink.open_netns(req.netns)
    except netlink.NetnsGone:
        raise CNIError(CHECK_FAILED, f"the pod network namespace {req.netns} does not exist",
                       f"field: CNI_NETNS; network: {network}") from None


IPV6_MIN_MTU = 1280  # RFC 8200: the kernel removes IPv6 from a link with a smaller MTU


def ipam_subnets(ipam: Any, where: str = "$.ipam") -> Iterator[tuple[str, Any]]:
    """(JSON path, subnet) of each range the IPAM config names in the shapes multiplex-ipam and
    host-local read: `ranges` (range sets), `range` (one range, or its subnet as a string) and
    host-local's legacy `subnet`. Whatever cannot be read is skipped: the IPAM plugin judges it."""
    if not isinstance(ipam, Mapping):
        return
    sets = ipam.get("ranges")
    if isinstance(sets, list):
        for i, rs in enumerate(sets):
            for j, r in enumerate(rs if isinstance(rs, list) else []):
                if isinstance(r, Mapping):
                    yield f"{where}.ranges[{i}][{j}].subnet", r.get("subnet")
    one = ipam.get("range")
    if isinstance(one, str):
        yield f"{where}.range", one
    elif isinstance(one, Mapping):
        yield f"{where}.range.subnet", one.get("subnet")
    if "subnet" in ipam:
        yield f"{where}.subnet", ipam.get("subnet")


def check_ipv6_mtu(conf: Mapping[str, Any], where: str = "$") -> None:
    """Code 7 naming `mtu` when it is under 1280 and the IPAM hands out IPv6 addresses: the kernel
    would refuse the pod's IPv6 address (EINVAL) only after the link and the lease exist."""
    from multiplex.cni.errors import invalid_config

    mtu = conf.get("mtu")
    if not isinstance(mtu, int) or isinstance(mtu, bool) or mtu >= IPV6_MIN_MTU:
        return
    for path, subnet in ipam_subnets(conf.get("ipam"), f"{where}.ipam"):
        try:
            net = ipaddress.ip_network(str(subnet), strict=False)
        except ValueError:
            continue
        if net.version == 6:
            raise invalid_config(f"mtu {mtu} is too small for IPv6 ({path} is {net}): IPv6 needs an MTU of "
                                 f"at least {IPV6_MIN_MTU}", f"{where}.mtu",
                                 f"{IPV6_MIN_MTU} to 65535 with an IPv6 range, or leave mtu out")


def ipam_type(req: Request) -> str:
    """The config's `ipam.type`, or code 7 naming it (checked before GC touches anything)."""
    ipam = req.config.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise invalid_config("this plugin needs an IPAM config with a type", "$.ipam.type",
                             "an IPAM config object with a \"type\"")
    return ipam["type"]


def ipam_speaks(req: Request, version: str) -> bool:
    """Whether the config's IPAM plugin supports `version` (built-in ones speak every version). STATUS
    and GC are not forwarded to an older IPAM, which would fail them (Debian's host-local is 1.0.0)."""
    import json
    import subprocess

    from multiplex.cni.invoke import find_plugin
    from multiplex.cni.registry import builtin

    ipam = ipam_type(req)
    if builtin(ipam) is not None:
        return True
    binary = find_plugin(ipam, req.path)
    env = req.derive(command="VERSION").env()
    try:
        proc = subprocess.run([binary], input=json.dumps({"cniVersion": version}).encode(), env=env,
                              capture_output=True, timeout=30)
        supported = json.loads(proc.stdout or b"{}").get("supportedVersions") or []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        supported = []
    if version in supported:
        return True
    log.get().info("IPAM plugin does not support this CNI version; not forwarded", ipam=ipam,
                   command=req.command, version=version)
    return False


def ipam_forward(req: Request) -> None:
    """STATUS and GC reach the delegate's IPAM as well, when it can take them: a built-in IPAM
    always; an exec'd one only when it speaks CNI 1.1.0 (Debian's host-local is 1.0.0), and GC only
    when the keep-list is interface pairs alone. The meta plugin keeps whole containers
    (`multiplex.dev/valid-containers`) that an exec'd IPAM cannot read: it would free the leases
    of a kept pod's `net1`, so it gets no GC then (logged)."""
    from multiplex.cni.invoke import invoke_ipam
    from multiplex.cni.registry import builtin
    from multiplex.cni.valid import VALID_CONTAINERS

    ipam = ipam_type(req)
    if builtin(ipam) is None:
        if req.command == "GC" and req.config.get(VALID_CONTAINERS):
            log.get().info("GC not forwarded to an exec'd IPAM: it reads interface pairs only and the keep-list "
                           "keeps whole containers", ipam=ipam)
            return
        if not ipam_speaks(req, "1.1.0"):
            return
    invoke_ipam(req)
