"""Steps every delegate shares (as the reference plugins share pkg/ip and pkg/ipam): undoing an
ADD that failed half-way, taking the IPAM lease under that undo, opening the pod netns for CHECK."""
from __future__ import annotations

from typing import Any, Callable

from . import log
from .cni.errors import CHECK_FAILED, CNIError, DELEGATE_FAILED
from .cni.request import Request
from .cni.types import Result


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
    from .cni.invoke import invoke_ipam

    ipam = invoke_ipam(req.derive(command="ADD"))
    undo.push("release the IPAM lease", lambda: invoke_ipam(req.derive(command="DEL")))
    if ipam is None or not ipam.ips:
        raise CNIError(DELEGATE_FAILED, f"IPAM plugin {req.config['ipam']['type']} returned no IP address",
                       "field: $.ipam")
    return ipam


def check_prologue(req: Request) -> Result:
    """CHECK's first steps in every delegate: the ADD result it checks against (prevResult, which
    CHECK requires) and IPAM's own CHECK of the leases."""
    from .cni.errors import invalid_config
    from .cni.invoke import invoke_ipam

    if req.prev_result is None:
        raise invalid_config("CHECK needs the result of ADD in prevResult", "$.prevResult")
    prev = Result.from_dict(req.prev_result)
    invoke_ipam(req)
    return prev


def open_pod_for_check(req: Request, network: str):
    """The pod's netlink handle for CHECK; a pod netns that is gone fails CHECK (code 104)."""
    from . import netlink

    try:
        return netlink.open_netns(req.netns)
    except netlink.NetnsGone:
        raise CNIError(CHECK_FAILED, f"the pod network namespace {req.netns} does not exist",
                       f"field: CNI_NETNS; network: {network}") from None
