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
code 7 naming `mode`. Sub-interfaces made by other tools are not in the record. One call at a time
reads and rewrites the records (the records directory's flock, waited for until the call's
deadline: code 11 when another call still holds it); each record is replaced whole (atomic_write).

Config fields: docs/ipvlan.md, schemas/ipvlan.json.
"""
from __future__ import annotations

import errno
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

from multiplex.cni import skel
from multiplex.cni.errors import (CNIError, INVALID_ENVIRONMENT, NETLINK_FAILURE, PLUGIN_NOT_AVAILABLE,
                                  TRY_AGAIN_LATER, UNSUPPORTED_FIELD, invalid_config)
from multiplex.cni.plugin import Plugin
from multiplex.cni.request import Request
from multiplex.cni.types import DNS, Interface, IPConfig, Result, Route
from multiplex.cni.valid import Keep
from multiplex.util.log import Logger
from delegates.skeleton import Delegate
from delegates.steps import (Problem, Undo, add_pod_routes, address_pod_interface, check_ipv6_mtu, ipam_add,
                             missing_pod_interface, pod_interface_problems)

TYPE_NAME = "multiplex-ipvlan"
MODES = {"l2": 0, "l3": 1, "l3s": 2}
MODE_NAMES = {v: k for k, v in MODES.items()}
#: seconds a call without a deadline waits for the mode records' lock
RECORD_WAIT = 30.0
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


def attachment_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


def split_key(key: str) -> tuple[str, str]:
    """(containerID, ifname) of an attachment key (neither holds a `/`)."""
    cid, _, ifname = key.partition("/")
    return cid, ifname


@dataclass(frozen=True)
class ModeRecords:
    """The masters' mode records under one state root (`<root>/ipvlan/<netns inode>-<master>.json`),
    as one call sees them: `deadline` (time.monotonic()) is how long it waits for their lock, `log`
    where it says what it refused. The lock is the directory's flock, not a record's: a record is
    replaced whole by an atomic write (a new inode), so a lock on the old file would guard nothing."""
    state_dir: Optional[str]
    deadline: float
    log: Logger

    @classmethod
    def of(cls, req: Request) -> "ModeRecords":
        """The call's records: its state root, what is left of its deadline, its logger."""
        return cls(req.ctx.state_dir, time.monotonic() + req.time_left(RECORD_WAIT), req.ctx.log)

    @contextmanager
    def _locked(self, create: bool) -> Iterator[Optional[str]]:
        """The records directory, locked for this call; None when it does not exist and `create`
        is off (no directory is made where ipvlan was never used). Code 11 naming it and the time
        waited when another call still holds it at the deadline."""
        from multiplex.util import files, state

        d = state.subdir("ipvlan", self.state_dir) if create else os.path.join(state.root(self.state_dir), "ipvlan")
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        try:
            started = time.monotonic()
            if not files.lock(fd, self.deadline):
                raise CNIError(TRY_AGAIN_LATER, f"another CNI call still holds the lock of the ipvlan mode records "
                               f"({d}) after {files.waited(started)}", f"path: {d}; try again later")
            yield d
        finally:
            os.close(fd)  # drops the flock

    @staticmethod
    @contextmanager
    def _attachments(path: str) -> Iterator[dict]:
        """One master's attachments (under the lock); written back, atomically, when the body
        changed them. A missing or unreadable record is an empty one."""
        from multiplex.util import files, state

        try:
            with open(path, encoding="utf-8") as f:
                data = json.loads(f.read() or "{}")
        except (FileNotFoundError, ValueError):
            data = {}
        attachments = data.get("attachments") if isinstance(data, dict) else None
        if not isinstance(attachments, dict):
            attachments = {}
        before = json.dumps(attachments, sort_keys=True)
        yield attachments
        if json.dumps(attachments, sort_keys=True) != before:
            try:
                files.atomic_write(path, json.dumps({"attachments": attachments}, indent=1, sort_keys=True))
            except OSError as e:
                raise state.unusable(path, e) from None

    def claim(self, master: str, master_netns: Optional[str], mode: str, network: str, key: str,
              pod_netns: str) -> None:
        """Record that attachment `key` uses `mode` on `master`; refuse (code 7, `mode`) when live
        sub-interfaces of the same master use another mode."""
        with self._locked(create=True) as d, \
                self._attachments(os.path.join(d, f"{_netns_inode(master_netns)}-{master}.json")) as attachments:
            for k in [k for k, v in attachments.items() if k != key and not os.path.exists(str(v.get("netns", "")))]:
                del attachments[k]  # the pod is gone without a DEL: its sub-interface went with its netns
            others = {k: v for k, v in attachments.items() if k != key and v.get("mode") != mode}
            if others:
                k, v = next(iter(others.items()))
                # the node's log names them; the error (which a tenant may read) never names another
                # network's attachments
                self.log.warning("ipvlan mode refused: the master is in another mode", master=master, mode=mode,
                                 network=network, held_by=k, held_by_network=v.get("network"),
                                 held_mode=v.get("mode"))
                ours = sum(1 for x in others.values() if x.get("network") == network)
                raise invalid_config(
                    f"master {master} already carries {len(others)} ipvlan sub-interface(s) in mode {v.get('mode')} "
                    f"({ours} of them on this network); the kernel keeps one mode per master, so a sub-interface "
                    f"in mode {mode} would switch them all", "$.mode",
                    f"\"{v.get('mode')}\" on master {master}, or another master for mode {mode}")
            attachments[key] = {"mode": mode, "network": network, "netns": pod_netns}

    def release_where(self, doomed: Callable[[str, dict], bool]) -> int:
        """Forget every attachment (key, record entry) that `doomed` accepts, in every master's
        record. Returns how many."""
        gone = 0
        with self._locked(create=False) as d:
            if d is None:
                return 0
            for name in sorted(n for n in os.listdir(d) if n.endswith(".json")):
                with self._attachments(os.path.join(d, name)) as attachments:
                    for k in [k for k, v in attachments.items() if doomed(k, v if isinstance(v, dict) else {})]:
                        del attachments[k]
                        gone += 1
        return gone

    def release(self, key: str, network: str = "") -> int:
        """Forget attachment `key` (of `network`, when given) in every master's record: DEL does
        not need to know the master."""
        return self.release_where(lambda k, v: k == key and (not network or v.get("network") == network))

    def release_stale(self, network: str, keep: Keep) -> int:
        """GC: forget this network's attachments that `keep` does not keep. Returns how many."""
        return self.release_where(lambda k, v: v.get("network") == network and not keep.keeps(*split_key(k)))

    def release_container(self, container_id: str) -> int:
        """sweep: forget every attachment of `container_id`, whatever its network. Returns how many."""
        return self.release_where(lambda k, v: split_key(k)[0] == container_id)


# ---- the plugin ----------------------------------------------------------------------------------
class IpvlanPlugin(Delegate):
    type_name = TYPE_NAME
    label = "ipvlan"
    capabilities = frozenset({"ips"})
    schema = "ipvlan"

    def validate(self, conf: dict, where: str = "$") -> None:
        """The schema, then a MAC request (code 2) before the IPv6 `mtu` check: its own order."""
        Plugin.validate(self, conf, where)
        refuse_mac(conf, {}, where)
        check_ipv6_mtu(conf, where)

    def config(self, req: Request) -> IpvlanConfig:
        self.validate(req.config)
        refuse_mac({}, req.args)
        return IpvlanConfig.parse(req.config)

    # ---- ADD -------------------------------------------------------------------------------------
    def conf_fields(self, conf: IpvlanConfig) -> dict[str, Any]:
        return {"mode": conf.mode}

    def attach(self, req: Request, conf: IpvlanConfig, node, pod, undo: Undo, ready: None) -> Result:
        home = pod if conf.link_in_container else node  # where the master lives
        master = find_master(home, conf)
        mtu = pick_mtu(conf, master)
        if pod.link(req.ifname) is not None:
            raise CNIError(INVALID_ENVIRONMENT, f"an interface named {req.ifname} already exists in {pod.where}",
                           "field: CNI_IFNAME; allowed: a name not used in the pod's network namespace")

        key = attachment_key(req.container_id, req.ifname)
        records = ModeRecords.of(req)
        records.claim(master.name, home.netns or None, conf.mode, conf.network, key, req.netns)
        undo.push("release the master's mode record", lambda: records.release(key, conf.network))
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

        address_pod_interface(req, pod, link, result.ips)
        add_pod_routes(pod, link, result.routes, result.ips)
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
                    removed = delete_sub_interface(pod, req.ifname, req.ctx.log)
            except netlink.NetnsGone:
                pass
        ModeRecords.of(req).release(attachment_key(req.container_id, req.ifname), network)
        if isinstance(req.config.get("ipam"), dict) and req.config["ipam"].get("type"):
            invoke_ipam(req)
        req.ctx.log.info("ipvlan del", network=network, container=req.container_id, ifname=req.ifname,
                       removed=removed)

    # ---- CHECK -----------------------------------------------------------------------------------
    def problems(self, req: Request, conf: IpvlanConfig, node, pod, prev: Result) -> list[Problem]:
        return check_pod(pod, node, conf, req, prev)

    # ---- STATUS, GC, sweep -----------------------------------------------------------------------
    def ready(self, req: Request, conf: IpvlanConfig) -> None:
        """Code 50 when the master is gone or down."""
        from multiplex import netlink

        if not conf.link_in_container:  # otherwise the master lives in pods, which STATUS has none of
            with netlink.open_node(batch=req.ctx.batch) as node:
                try:
                    find_master(node, conf)
                except CNIError as e:
                    raise CNIError(PLUGIN_NOT_AVAILABLE, f"{TYPE_NAME} cannot attach pods: {e.msg}", e.details) from None

    def collect(self, req: Request, conf: IpvlanConfig, keep: Keep) -> dict[str, int]:
        """Forget this network's mode records that the keep-list does not keep."""
        return {"records_forgotten": ModeRecords.of(req).release_stale(conf.network, keep)}

    def sweep_container(self, req: Request, cid: str) -> dict[str, int]:
        """Forget the container's mode records (any network, master or interface). Its
        sub-interfaces are in the pod netns and go with it."""
        return {"records_forgotten": ModeRecords.of(req).release_container(cid)}


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
    from multiplex.netlink.veth import temporary_name

    where = f"field: $.master; master: {master.name}"
    refusals = {
        errno.EOPNOTSUPP: CNIError(NETLINK_FAILURE, "this kernel cannot make ipvlan links (no ipvlan module: "
                                   "modprobe ipvlan, or CONFIG_IPVLAN)", where),
        errno.EBUSY: CNIError(NETLINK_FAILURE, f"master {master.name} is taken by another kind of sub-interface "
                              "(macvlan?) or is a bridge port", where),
    }
    return home.add_link_into(pod, temporary_name(), "ipvlan",
                              f"create an ipvlan sub-interface of {master.name} in mode {mode}",
                              about=f"master: {master.name}", refusals=refusals, link=master.index,
                              ipvlan_mode=MODES[mode], mtu=mtu)


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


def delete_sub_interface(pod, ifname: str, log: Logger) -> bool:
    """Delete `ifname` in the pod when it is an ipvlan link (never someone else's interface)."""
    link = pod.link(ifname)
    if link is None:
        return False
    if link.kind != "ipvlan":
        log.warning("not deleting a non-ipvlan interface", ifname=ifname, kind=link.kind or "device")
        return False
    return pod.delete_link_at(link.index)


@dataclass
class IpvlanInfo:
    mode: str
    parent: int          # IFLA_LINK: the master's index in its own netns
    parent_elsewhere: bool  # IFLA_LINK_NETNSID present: the master is in another netns


def ipvlan_info(handle, link) -> IpvlanInfo:
    details = handle.link_details(link)
    mode = details["data"].get("IFLA_IPVLAN_MODE")
    return IpvlanInfo(mode=MODE_NAMES.get(mode, str(mode)), parent=details["parent"],
                      parent_elsewhere=details["parent_elsewhere"])


def check_pod(pod, node, conf: IpvlanConfig, req: Request, prev: Result) -> list[Problem]:
    """What differs: the sub-interface's kind, mode, master and MTU against the config, then the
    shared comparison with prevResult (up, MAC, addresses, routes)."""
    link = pod.link(req.ifname)
    if link is None:
        return missing_pod_interface(req)
    if link.kind != "ipvlan":
        return [("interface", f"{req.ifname} is a {link.kind or 'plain'} link, not ipvlan")]
    problems: list[Problem] = []
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
    return problems + pod_interface_problems(pod, link, prev)


plugin = IpvlanPlugin()


def main() -> None:
    skel.main(plugin)


if __name__ == "__main__":
    main()
