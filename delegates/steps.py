"""Steps every delegate shares (as the reference plugins share pkg/ip and pkg/ipam), so a delegate
reads as its own steps only:

- ADD: an `Undo` that takes back what a failed ADD made (`undone_on_failure`), the IPAM lease under
  it (`ipam_add`), the pod interface addressed and up (`address_pod_interface`) and routed
  (`add_pod_routes`: a route without gw goes via its family's gateway);
- CHECK: prevResult and IPAM's CHECK (`check_prologue`), the pod netns (`open_pod_for_check`), the
  pod interface against prevResult (`pod_interface_problems`: up, MAC, addresses, routes) and the
  one error that lists what differs (`check_failed`);
- config: an `mtu` against the IPAM's IPv6 ranges, the IPAM type;
- STATUS/GC forwarded to the IPAM when it can take them (`ipam_forward`).
Every step logs through the call's logger (`req.ctx.log`). The commands built of these steps, the
same in every delegate, are delegates/skeleton.py's template methods."""
from __future__ import annotations

import ipaddress
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from multiplex.cni.errors import CHECK_FAILED, CNIError, DELEGATE_FAILED, invalid_config
from multiplex.cni.request import Request
from multiplex.cni.types import IPConfig, Result, Route
from multiplex.util.log import Logger

if TYPE_CHECKING:  # netlink (and pyroute2 behind it) is imported by the steps that use it
    from multiplex.netlink import Address, Handle, Link, RouteEntry

#: one difference CHECK found: (what differs - a config or result field -, a sentence saying how)
Problem = tuple[str, str]

IFA_F_PERMANENT = 0x80  # an address someone added, not one the kernel made (SLAAC, temporary)


# ---- ADD -----------------------------------------------------------------------------------------
class Undo:
    """What an ADD made, undone in reverse when a later step fails."""

    def __init__(self, log: Logger) -> None:
        self.log = log
        self.steps: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, fn: Callable[[], Any]) -> None:
        self.steps.append((what, fn))

    def run(self) -> None:
        for what, fn in reversed(self.steps):
            try:
                fn()
            except Exception as e:  # keep undoing; the original error is what the caller sees
                self.log.error("rollback step failed", step=what, error=str(e))
        self.steps.clear()


@contextmanager
def undone_on_failure(req: Request) -> Iterator[Undo]:
    """An Undo for one ADD: when the body raises, what was pushed on it is undone (in reverse) and
    the error goes on to the caller."""
    undo = Undo(req.ctx.log)
    try:
        yield undo
    except BaseException:
        undo.run()
        raise


def ipam_add(req: Request, undo: Undo) -> Result:
    """IPAM ADD for this attachment; its release is pushed on `undo`. No address is an error."""
    from multiplex.cni.invoke import invoke_ipam

    ipam = invoke_ipam(req.derive(command="ADD"))
    undo.push("release the IPAM lease", lambda: invoke_ipam(req.derive(command="DEL")))
    if ipam is None or not ipam.ips:
        raise CNIError(DELEGATE_FAILED, f"IPAM plugin {req.config['ipam']['type']} returned no IP address",
                       "field: $.ipam")
    return ipam


def address_pod_interface(req: Request, pod: "Handle", link: "Link", ips: Iterable[IPConfig]) -> None:
    """The pod interface gets its addresses, then comes up. IPv6 skips duplicate address detection
    (accept_dad=0 and IFA_F_NODAD): IPAM guarantees uniqueness, and DAD would keep a new address
    "tentative" - unusable - for a second or more after ADD returns."""
    from multiplex import netlink

    ips = list(ips)
    if any(ip.address.version == 6 for ip in ips):
        netlink.sysctl.write(f"net/ipv6/conf/{link.name}/accept_dad", "0", netns=req.netns, missing_ok=True)
    for ip in ips:
        pod.add_address(link, ip.address, exist_ok=True)
    pod.set_up(link)


def family_gateways(ips: Iterable[IPConfig]) -> dict[int, Any]:
    """The gateway of each IP version among `ips` (the last that has one)."""
    return {ip.address.version: ip.gateway for ip in ips if ip.gateway is not None}


def route_gateway(route: Route, gateways: Mapping[int, Any]) -> Any:
    """Where `route` goes: its own gw, else its family's gateway (as the spec allows), else none
    (out of the device)."""
    return route.gw or gateways.get(route.dst.version)


def add_pod_routes(pod: "Handle", link: "Link", routes: Iterable[Route], ips: Iterable[IPConfig]) -> None:
    """The result's routes out of the pod interface; a route without gw goes via its family's
    gateway among `ips` (the result's)."""
    gateways = family_gateways(ips)
    for r in routes:
        pod.add_route(r.dst, link, route_gateway(r, gateways), mtu=r.mtu, advmss=r.advmss, priority=r.priority,
                      table=r.table, scope=r.scope, exist_ok=True)


# ---- CHECK ---------------------------------------------------------------------------------------
def check_prologue(req: Request) -> Result:
    """CHECK's first steps in every delegate: the ADD result it checks against (prevResult, which
    CHECK requires) and IPAM's own CHECK of the leases."""
    from multiplex.cni.invoke import invoke_ipam

    if req.prev_result is None:
        raise invalid_config("CHECK needs the result of ADD in prevResult", "$.prevResult")
    prev = Result.from_dict(req.prev_result)
    invoke_ipam(req)
    return prev


def open_pod_for_check(req: Request, network: str) -> "Handle":
    """The pod's netlink handle for CHECK; a pod netns that is gone fails CHECK (code 104)."""
    from multiplex import netlink

    try:
        return netlink.open_netns(req.netns)
    except netlink.NetnsGone:
        raise CNIError(CHECK_FAILED, f"the pod network namespace {req.netns} does not exist",
                       f"field: CNI_NETNS; network: {network}") from None


def missing_pod_interface(req: Request) -> list[Problem]:
    return [("interface", f"interface {req.ifname} is missing in {req.netns}")]


def pod_interface_problems(pod: "Handle", link: "Link", prev: Result) -> list[Problem]:
    """How the pod interface `link` differs from what ADD reported in `prev`, read from the pod."""
    return compare_pod_interface(link, pod.addresses(link), pod.routes(table=None), prev)


def compare_pod_interface(link: "Link", addresses: list["Address"], routes: list["RouteEntry"],
                          prev: Result) -> list[Problem]:
    """The pod interface as the kernel shows it (`link`, its `addresses`, the pod's `routes` of
    every table) against prevResult: up; its MAC; every address of this interface there, and no
    address added by someone else (link-local and kernel-made SLAAC addresses are not counted);
    every route there, out of this interface, via the gateway ADD gave it."""
    name = link.name
    problems: list[Problem] = []
    if not link.up:
        problems.append(("interface", f"interface {name} is down"))
    mine = {n for n, i in enumerate(prev.interfaces) if i.name == name and i.sandbox}
    for n in sorted(mine):
        want_mac = prev.interfaces[n].mac
        if want_mac and want_mac.lower() != link.mac.lower():
            problems.append(("mac", f"MAC of {name} is {link.mac}, not {want_mac}"))
    ips = [ip for ip in prev.ips if ip.interface is None or ip.interface in mine]
    want = {ip.address for ip in ips}
    present = [a for a in addresses if a.index == link.index and not a.interface.ip.is_link_local]
    have = {a.interface for a in present}
    static = {a.interface for a in present if a.flags & IFA_F_PERMANENT}
    for a in sorted(want - have, key=str):
        problems.append(("addresses", f"address {a} is missing on {name}"))
    for a in sorted(static - want, key=str):
        problems.append(("addresses", f"address {a} on {name} was not made by ADD"))
    gateways = family_gateways(ips)
    for r in prev.routes:
        table, gw = r.table or 254, route_gateway(r, gateways)
        if not any(x.dst == r.dst and x.table == table and x.oif == link.index and x.gw == gw for x in routes):
            problems.append(("routes", f"route {r.dst}" + (f" via {gw}" if gw else f" dev {name}") + " is missing"))
    return problems


def check_failed(req: Request, network: str, problems: list[Problem]) -> CNIError:
    """CHECK's one error (code 104): every difference in the message, the fields in the details."""
    fields = ", ".join(dict.fromkeys(f for f, _ in problems))
    return CNIError(CHECK_FAILED, f"{req.ifname} on {network} differs from what ADD made: "
                    + "; ".join(p for _, p in problems),
                    f"differs: {fields}; interface: {req.ifname}; netns: {req.netns}")


# ---- config --------------------------------------------------------------------------------------
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


# ---- STATUS, GC ----------------------------------------------------------------------------------
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

    from multiplex.cni.invoke import _run, find_plugin
    from multiplex.cni.registry import builtin

    ipam = ipam_type(req)
    if builtin(ipam) is not None:
        return True
    binary = find_plugin(ipam, req.path, "ipam.type")
    probe = req.derive(command="VERSION", config={"cniVersion": version})
    try:  # invoke's bounded run: within the call's deadline, the plugin's session killed on timeout
        proc = _run(binary, probe, min(30.0, req.time_left(30.0)))
        supported = json.loads(proc.stdout or b"{}").get("supportedVersions") or []
    except (OSError, ValueError, AttributeError, subprocess.TimeoutExpired):
        supported = []
    if version in supported:
        return True
    req.ctx.log.info("IPAM plugin does not support this CNI version; not forwarded", ipam=ipam,
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
            req.ctx.log.info("GC not forwarded to an exec'd IPAM: it reads interface pairs only and the keep-list "
                           "keeps whole containers", ipam=ipam)
            return
        if not ipam_speaks(req, "1.1.0"):
            return
    invoke_ipam(req)


# ---- GC ------------------------------------------------------------------------------------------

def not_kept(keep: Any, network: str) -> Callable[[str], bool]:
    """GC's test for one owner mark (a host veth's alias, an nft comment): True when the mark is an
    attachment of `network` that the keep-list (multiplex.cni.valid.Keep) does not keep. Marks name
    containers by a short form (nft.container_marks maps it back to the kept IDs)."""
    from multiplex.netlink import nft

    kept = nft.container_marks(set(keep.containers) | {cid for cid, _ in keep.pairs})

    def stale(mark: str) -> bool:
        o = nft.parse_owner(mark)
        if o is None or not o.of_network(network):
            return False
        cid = kept.get(o.container)
        return cid is None or not keep.keeps(cid, o.ifname)

    return stale
