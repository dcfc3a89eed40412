"""`multiplex-ipvlan`: an ipvlan sub-interface of a master link, in the pod netns, addressed by IPAM.

ADD, as its steps: validate the config (refuse a MAC request: every sub-interface of a master shares
the master's MAC); find the master (`master`, else the interface of the default route) in the node
netns - or in the pod netns with `linkInContainer` - and refuse it when missing or down; pick the
MTU (the master's, or `mtu` when not above it); claim the master's ipvlan mode (see below); make the
sub-interface directly inside the pod netns under a temporary name and rename it to CNI_IFNAME; ask
IPAM; address it, bring it up, add IPAM's routes. In `l2` routes go via their gateway, as on any
Ethernet; in `l3`/`l3s` the sub-interface does no ARP/ND, so every route goes via the device
(no gateway: the master's namespace routes the packet). A failure undoes what this call made.

DEL removes the sub-interface (nothing to do when the netns is gone) and releases the lease;
CHECK compares kind, mode, master, MTU, addresses and routes with the config and prevResult;
STATUS fails with code 50 when the master is gone or down; GC reads its keep-list strictly (code 7
before anything is touched), forgets this network's mode records that the list does not keep and
forwards to IPAM; `sweep` (a DEL without a cache) forgets every mode record of the container (its
sub-interfaces live in the pod netns and go with it). The network is the config `name`, which the
meta plugin sets to `<namespace>.<NAD name>`.

One mode per master: the kernel keeps the ipvlan mode on the master (its "port"), so a sub-interface
made in l3 on a master whose sub-interfaces are in l2 silently switches all of them to l3. ADD
therefore keeps a small record per master (in the state dir: `ipvlan/<netns inode>-<master>.json`,
the attachments and their mode, pruned of pods whose netns is gone) and refuses another mode with
code 7 naming `mode`. Sub-interfaces made by other tools are not in the record.

Config fields: docs/ipvlan.md, schemas/ipvlan.json.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

from multiplex.util import log
from multiplex.cni import skel
from multiplex.cni.errors import (CHECK_FAILED, CNIError, INVALID_ENVIRONMENT, NETLINK_FAILURE,
                                  PLUGIN_NOT_AVAILABLE, UNSUPPORTED_FIELD, invalid_config)
from multiplex.cni.plugin import Plugin
from multiplex.cni.request import Request
from multiplex.cni.types import DNS, Interface, IPConfig, Result, Route
from multiplex.cni.valid import Keep
from delegates.steps import (Undo, check_ipv6_mtu, check_prologue, ipam_add, ipam_forward, ipam_type,
                             open_pod_for_check)

TYPE_NAME = "multiplex-ipvlan"
MODES = {"l2": 0, "l3": 1, "l3s": 2}
MODE_NAMES = {v: k for k, v in MODES.items()}
IFA_F_PERMANENT = 0x80
SHARED_MAC = ("every ipvlan sub-interface uses its master's MAC address (the kernel tells pods apart by "
              "IP, not by MAC), so no MAC can be set per pod; use multiplex-bridge or macvlan for pods "
              "that need MACs of their own")


# ---- config --------------------------------------------------------------------------------------
@dataclass
class IpvlanConfig:
    network: str
    master: str = ""                 # "" = the interface of the default route
    mode: str = "l2"
    mtu: Optional[int] = None        # None = the master's
    link_in_container: bool = False
    dns: Optional[DNS] = None

    @property
    def routed(self) -> bool:
        """l3/l3s: no ARP/ND on the sub-interface; routes go via the device."""
        return self.mode != "l2"

    @classmethod
    def parse(cls, conf: dict) -> "IpvlanConfig":
        """Read a config already checked against schemas/ipvlan.json."""
        dns = DNS.from_dict(conf["dns"]) if isinstance(conf.get("dns"), dict) else None
        return cls(network=str(conf["name"]), master=str(conf.get("master") or ""),
                   mode=str(conf.get("mode") or "l2"), mtu=conf.get("mtu") or None,
                   link_in_container=bool(conf.get("linkInContainer", False)),
                   dns=dns if dns is not None and not dns.empty() else None)


def requested_macs(conf: dict, cni_args: Mapping[str, str], where: str = "$") -> list[tuple[str, Any]]:
    """Every place a MAC was asked for: (field, value)."""
    found: list[tuple[str, Any]] = []
    if conf.get("mac"):
        found.append((f"{where}.mac", conf["mac"]))
    rc = conf.get("runtimeConfig")
    if isinstance(rc, dict) and rc.get("mac"):
        found.append((f"{where}.runtimeConfig.mac", rc["mac"]))
    args = conf.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and cni.get("mac"):
        found.append((f"{where}.args.cni.mac", cni["mac"]))
    if cni_args.get("MAC"):
        found.append(("CNI_ARGS MAC", cni_args["MAC"]))
    return found


def refuse_mac(conf: dict, cni_args: Mapping[str, str], where: str = "$") -> None:
    """Code 2 (unsupported field) naming the field and value: ipvlan cannot honour a MAC."""
    for field, value in requested_macs(conf, cni_args, where):
        raise CNIError(UNSUPPORTED_FIELD, f"a MAC was requested ({field}={value}) but {SHARED_MAC}",
                       f"field: {field}; allowed: no MAC request with {TYPE_NAME}")


# ---- one mode per master ---------------------------------------------------------------------------
def _netns_inode(path: Optional[str]) -> int:
    return os.stat(path or "/proc/thread-self/ns/net").st_ino


def _records_dir() -> str:
    from multiplex.util import state

    return state.subdir("ipvlan")


def _record_paths() -> list[str]:
    """Every master's record; none (and no directory made) where ipvlan was never used."""
    from multiplex.util import state

    d = os.path.join(state.root(), "ipvlan")
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    return [os.path.join(d, n) for n in sorted(names) if n.endswith(".json")]


@contextmanager
def _record(path: str) -> Iterator[dict]:
    """The record at `path`, locked; written back when the body changed it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "r+", encoding="utf-8") as f:
            text = f.read()
            try:
                data = json.loads(text) if text.strip() else {}
            except ValueError:
                data = {}
            attachments = data.get("attachments") if isinstance(data.get("attachments"), dict) else {}
            before = json.dumps(attachments, sort_keys=True)
            yield attachments
            if json.dumps(attachments, sort_keys=True) != before:
                f.seek(0)
                f.truncate()
                json.dump({"attachments": attachments}, f, indent=1, sort_keys=True)
    finally:
        os.close(fd)  # drops the flock


def attachment_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


def split_key(key: str) -> tuple[str, str]:
    """(containerID, ifname) of an attachment key (neither holds a `/`)."""
    cid, _, ifname = key.partition("/")
    return cid, ifname


def claim_mode(master: str, master_netns: Optional[str], mode: str, network: str, key: str, pod_netns: str) -> None:
    """Record that attachment `key` uses `mode` on `master`; refuse (code 7, `mode`) when live
    sub-interfaces of the same master use another mode."""
    path = os.path.join(_records_dir(), f"{_netns_inode(master_netns)}-{master}.json")
    with _record(path) as attachments:
        for k in [k for k, v in attachments.items() if k != key and not os.path.exists(str(v.get("netns", "")))]:
            del attachments[k]  # the pod is gone without a DEL: its sub-interface went with its netns
        others = {k: v for k, v in attachments.items() if k != key and v.get("mode") != mode}
        if others:
            k, v = next(iter(others.items()))
            # the node's log names them; the error (which a tenant may read) never names another
            # network's attachments
            log.get().warning("ipvlan mode refused: the master is in another mode", master=master, mode=mode,
                              network=network, held_by=k, held_by_network=v.get("network"), held_mode=v.get("mode"))
            ours = sum(1 for x in others.values() if x.get("network") == network)
            raise invalid_config(
                f"master {master} already carries {len(others)} ipvlan sub-interface(s) in mode {v.get('mode')} "
                f"({ours} of them on this network); the kernel keeps one mode per master, so a sub-interface "
                f"in mode {mode} would switch them all", "$.mode",
                f"\"{v.get('mode')}\" on master {master}, or another master for mode {mode}")
        attachments[key] = {"mode": mode, "network": network, "netns": pod_netns}


def release_mode(key: str, network: str = "") -> None:
    """Forget attachment `key` in every master's record (DEL does not need to know the master)."""
    for path in _record_paths():
        with _record(path) as attachments:
            if key in attachments and (not network or attachments[key].get("network") == network):
                del attachments[key]


def release_where(doomed: Callable[[str, dict], bool]) -> int:
    """Forget every attachment (key, record entry) that `doomed` accepts, in every master's record.
    Returns how many."""
    gone = 0
    for path in _record_paths():
        with _record(path) as attachments:
            for k in [k for k, v in attachments.items() if doomed(k, v if isinstance(v, dict) else {})]:
                del attachments[k]
                gone += 1
    return gone


def release_stale(network: str, keep: Keep) -> int:
    """GC: forget this network's attachments that `keep` does not keep. Returns how many."""
    return release_where(lambda k, v: v.get("network") == network and not keep.keeps(*split_key(k)))


def release_container(container_id: str) -> int:
    """sweep: forget every attachment of `container_id`, whatever its network. Returns how many."""
    return release_where(lambda k, v: split_key(k)[0] == container_id)


# ---- the plugin ----------------------------------------------------------------------------------
class IpvlanPlugin(Plugin):
    type_name = TYPE_NAME
    capabilities = frozenset({"ips"})
    schema = "ipvlan"

    def validate(self, conf: dict, where: str = "$") -> None:
        super().validate(conf, where)
        refuse_mac(conf, {}, where)
        check_ipv6_mtu(conf, where)

    def config(self, req: Request) -> IpvlanConfig:
        self.validate(req.config)
        refuse_mac({}, req.args)
        return IpvlanConfig.parse(req.config)

    # ---- ADD -------------------------------------------------------------------------------------
    def add(self, req: Request) -> Result:
        from multiplex import netlink

        conf = self.config(req)
        undo = Undo()
        with netlink.open_netns(req.netns) as pod, netlink.open_node() as node:
            try:
                result = self._add(req, conf, node, pod, undo)
            except BaseException:
                undo.run()
                raise
        log.get().info("ipvlan add", network=conf.network, mode=conf.mode, container=req.container_id,
                       ifname=req.ifname, addresses=[str(ip.address) for ip in result.ips])
        return result

    def _add(self, req: Request, conf: IpvlanConfig, node, pod, undo: Undo) -> Result:
        from multiplex import netlink

        home = pod if conf.link_in_container else node  # where the master lives
        master = find_master(home, conf)
        mtu = pick_mtu(conf, master)
        if pod.link(req.ifname) is not None:
            raise CNIError(INVALID_ENVIRONMENT, f"an interface named {req.ifname} already exists in {pod.where}",
                           "field: CNI_IFNAME; allowed: a name not used in the pod's network namespace")

        key = attachment_key(req.container_id, req.ifname)
        claim_mode(master.name, home.netns or None, conf.mode, conf.network, key, req.netns)
        undo.push("release the master's mode record", lambda: release_mode(key, conf.network))
        link = make_ipvlan(home, pod, master, conf.mode, mtu)
        undo.push(f"delete the sub-interface {link.name}", lambda: pod.delete_link_at(link.index))
        pod.rename(link, req.ifname)

        ipam = ipam_add(req, undo)

        result = Result(cni_version=req.cni_version)
        index = result.add_interface(Interface(name=req.ifname, mac=link.mac, sandbox=req.netns, mtu=mtu))
        # l3/l3s: no neighbour resolution on the sub-interface, so a gateway means nothing there
        result.ips = [IPConfig(address=ip.address, gateway=None if conf.routed else ip.gateway, interface=index)
                      for ip in ipam.ips]
        result.routes = pod_routes(conf, ipam)
        result.dns = conf.dns or ipam.dns

        if any(ip.address.version == 6 for ip in result.ips):
            # IPAM guarantees uniqueness; DAD would leave the address unusable for a second or more
            netlink.sysctl.write(f"net/ipv6/conf/{req.ifname}/accept_dad", "0", netns=req.netns, missing_ok=True)
        for ip in result.ips:
            pod.add_address(link, ip.address, exist_ok=True)
        pod.set_up(link)
        for r in result.routes:
            pod.add_route(r.dst, link, r.gw, mtu=r.mtu, advmss=r.advmss, priority=r.priority, table=r.table,
                          scope=r.scope, exist_ok=True)
        return result

    # ---- DEL -------------------------------------------------------------------------------------
    def delete(self, req: Request) -> None:
        """Best effort and idempotent: no schema check (a config that never made anything still
        releases its lease), nothing to remove when the netns is gone."""
        from multiplex import netlink
        from multiplex.cni.invoke import invoke_ipam

        network = req.name
        removed = False
        if req.netns:
            try:
                with netlink.open_netns(req.netns) as pod:
                    removed = delete_sub_interface(pod, req.ifname)
            except netlink.NetnsGone:
                pass
        release_mode(attachment_key(req.container_id, req.ifname), network)
        if isinstance(req.config.get("ipam"), dict) and req.config["ipam"].get("type"):
            invoke_ipam(req)
        log.get().info("ipvlan del", network=network, container=req.container_id, ifname=req.ifname,
                       removed=removed)

    # ---- CHECK -----------------------------------------------------------------------------------
    def check(self, req: Request) -> None:
        from multiplex import netlink

        conf = self.config(req)
        prev = check_prologue(req)
        pod = open_pod_for_check(req, conf.network)
        with pod, netlink.open_node() as node:
            problems = check_pod(pod, node, conf, req, prev)
        if problems:
            raise CNIError(CHECK_FAILED, f"{req.ifname} on {conf.network} differs from what ADD made: "
                           + "; ".join(p for _, p in problems),
                           f"differs: {', '.join(dict.fromkeys(f for f, _ in problems))}; "
                           f"interface: {req.ifname}; netns: {req.netns}")

    # ---- STATUS, GC ------------------------------------------------------------------------------
    def status(self, req: Request) -> None:
        from multiplex import netlink

        conf = self.config(req)
        if not conf.link_in_container:  # otherwise the master lives in pods, which STATUS has none of
            with netlink.open_node() as node:
                try:
                    find_master(node, conf)
                except CNIError as e:
                    raise CNIError(PLUGIN_NOT_AVAILABLE, f"{TYPE_NAME} cannot attach pods: {e.msg}", e.details) from None
        ipam_forward(req)

    def gc(self, req: Request) -> None:
        from multiplex.cni.valid import parse_keep

        keep = parse_keep(req.config)  # code 7 before anything is touched
        conf = self.config(req)
        ipam_type(req)
        forgotten = release_stale(conf.network, keep)
        log.get().info("ipvlan gc", network=conf.network, records_forgotten=forgotten)
        ipam_forward(req)

    def sweep(self, req: Request) -> None:
        """A DEL without a cache entry: forget the container's mode records (any network, master or
        interface). Its sub-interfaces are in the pod netns and go with it; leases are the IPAM's
        own sweep. The config is not read (it may be another plugin's)."""
        if not req.container_id:
            return
        forgotten = release_container(req.container_id)
        if forgotten:
            log.get().info("ipvlan sweep", container=req.container_id, records_forgotten=forgotten)


# ---- steps ---------------------------------------------------------------------------------------
def find_master(home, conf: IpvlanConfig):
    """The master link in `home` (a netlink Handle). Code 7 naming `master` when it is missing or down."""
    from multiplex import netlink

    name = conf.master
    if not name:
        for family in (netlink.AF_INET, netlink.AF_INET6):
            link = home.default_route_link(family)
            if link is not None:
                return _usable_master(link, home, "the interface of the default route")
        raise invalid_config(f"no master given and {home.where} has no default route to take it from",
                             "$.master", "the name of the interface the sub-interfaces hang off, e.g. \"eth1\"")
    link = home.link(name)
    if link is None:
        raise invalid_config(f"master {name} does not exist in {home.where}", "$.master",
                             "the name of an existing interface" + (" in the pod's netns (linkInContainer)"
                                                                   if conf.link_in_container else " on the node"))
    return _usable_master(link, home, "master")


def _usable_master(link, home, what: str):
    if link.kind == "ipvlan":
        raise invalid_config(f"{what} {link.name} is itself an ipvlan sub-interface", "$.master",
                             "a physical, bond, veth or VLAN interface")
    if not link.up:
        raise invalid_config(f"{what} {link.name} is down in {home.where}", "$.master",
                             f"an interface that is up (ip link set {link.name} up)")
    return link


def pick_mtu(conf: IpvlanConfig, master) -> int:
    """`mtu` when given and not above the master's; the master's otherwise."""
    if conf.mtu is None:
        return master.mtu
    if conf.mtu > master.mtu:
        raise invalid_config(f"mtu {conf.mtu} is above the MTU of master {master.name} ({master.mtu})", "$.mtu",
                             f"at most {master.mtu} (the master's MTU), or leave mtu out to use it")
    return conf.mtu


def make_ipvlan(home, pod, master, mode: str, mtu: int):
    """A sub-interface of `master` (in `home`), born inside the pod netns under a temporary name
    (so CNI_IFNAME never clashes with a node interface). Returned down."""
    from pyroute2.netlink.exceptions import NetlinkError

    from multiplex.netlink import kernel_error
    from multiplex.netlink.netns import open_fd
    from multiplex.netlink.veth import temporary_name

    tmp = temporary_name()
    attrs: dict[str, Any] = {"ifname": tmp, "kind": "ipvlan", "link": master.index, "ipvlan_mode": MODES[mode],
                             "mtu": mtu}
    fd = open_fd(pod.netns) if home is not pod else None
    try:
        if fd is not None:
            attrs["net_ns_fd"] = fd
        home._ipr.link("add", **attrs)
    except NetlinkError as e:
        if e.code == errno.EOPNOTSUPP:
            raise CNIError(NETLINK_FAILURE, "this kernel cannot make ipvlan links (no ipvlan module: "
                           "modprobe ipvlan, or CONFIG_IPVLAN)", f"field: $.master; master: {master.name}") from None
        if e.code == errno.EBUSY:
            raise CNIError(NETLINK_FAILURE, f"master {master.name} is taken by another kind of sub-interface "
                           "(macvlan?) or is a bridge port", f"field: $.master; master: {master.name}") from None
        raise kernel_error(e, f"create an ipvlan sub-interface of {master.name} in mode {mode}",
                           f"master: {master.name} in {home.where}") from None
    finally:
        if fd is not None:
            os.close(fd)
    return pod.require_link(tmp)


def pod_routes(conf: IpvlanConfig, ipam: Result) -> list[Route]:
    """IPAM's routes as the pod gets them. l2: a route without `gw` goes via its family's gateway
    (when IPAM gave one). l3/l3s: every route via the device, without a gateway."""
    gw_by_family = {ip.address.version: ip.gateway for ip in ipam.ips if ip.gateway is not None}
    out = []
    for r in ipam.routes:
        gw = None if conf.routed else (r.gw or gw_by_family.get(r.dst.version))
        out.append(Route(dst=r.dst, gw=gw, mtu=r.mtu, advmss=r.advmss, priority=r.priority, table=r.table,
                         scope=r.scope))
    return out


def delete_sub_interface(pod, ifname: str) -> bool:
    """Delete `ifname` in the pod when it is an ipvlan link (never someone else's interface)."""
    link = pod.link(ifname)
    if link is None:
        return False
    if link.kind != "ipvlan":
        log.get().warning("not deleting a non-ipvlan interface", ifname=ifname, kind=link.kind or "device")
        return False
    return pod.delete_link_at(link.index)


@dataclass
class IpvlanInfo:
    mode: str
    parent: int          # IFLA_LINK: the master's index in its own netns
    parent_elsewhere: bool  # IFLA_LINK_NETNSID present: the master is in another netns


def ipvlan_info(handle, link) -> IpvlanInfo:
    msg = handle._ipr.link("get", index=link.index)[0]
    mode = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_IPVLAN_MODE")
    return IpvlanInfo(mode=MODE_NAMES.get(mode, str(mode)), parent=msg.get("link") or 0,
                      parent_elsewhere=msg.get("link_netnsid") is not None)


def check_pod(pod, node, conf: IpvlanConfig, req: Request, prev: Result) -> list[tuple[str, str]]:
    """What differs, as (field, description) pairs."""
    link = pod.link(req.ifname)
    if link is None:
        return [("interface", f"interface {req.ifname} is missing in {req.netns}")]
    if link.kind != "ipvlan":
        return [("interface", f"{req.ifname} is a {link.kind or 'plain'} link, not ipvlan")]
    problems: list[tuple[str, str]] = []
    info = ipvlan_info(pod, link)
    if info.mode != conf.mode:
        problems.append(("mode", f"mode is {info.mode}, not {conf.mode}"))
    home = pod if conf.link_in_container else node
    try:
        master = find_master(home, conf)
    except CNIError as e:
        problems.append(("master", e.msg))
    else:
        if info.parent != master.index or info.parent_elsewhere == conf.link_in_container:
            problems.append(("master", f"{req.ifname} is not a sub-interface of {master.name}"))
        mtu = conf.mtu or master.mtu
        if link.mtu != mtu:
            problems.append(("mtu", f"MTU is {link.mtu}, not {mtu}"))
    if not link.up:
        problems.append(("interface", f"{req.ifname} is down"))
    mine = {n for n, i in enumerate(prev.interfaces) if i.name == req.ifname and i.sandbox}
    want = {ip.address for ip in prev.ips if ip.interface is None or ip.interface in mine}
    present = [a for a in pod.addresses(link) if not a.interface.ip.is_link_local]
    have = {a.interface for a in present}
    static = {a.interface for a in present if a.flags & IFA_F_PERMANENT}  # not SLAAC/kernel-made
    for a in sorted(want - have, key=str):
        problems.append(("addresses", f"address {a} is missing"))
    for a in sorted(static - want, key=str):
        problems.append(("addresses", f"address {a} was not made by ADD"))
    routes = pod.routes(table=None)
    for r in prev.routes:
        table = r.table or 254
        if not any(x.dst == r.dst and x.table == table and x.oif == link.index and x.gw == r.gw for x in routes):
            problems.append(("routes", f"route {r.dst}" + (f" via {r.gw}" if r.gw else f" dev {req.ifname}")
                             + " is missing"))
    return problems


plugin = IpvlanPlugin()


def main() -> None:
    skel.main(plugin)


if __name__ == "__main__":
    main()
