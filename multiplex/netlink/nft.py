"""Masquerade rules in nftables, through the `nft` binary's JSON interface (`nft -j`).

Everything lives in a table of our own, `inet multiplex_masq`, chain `postrouting` (nat hook,
priority srcnat), so nothing we do touches anyone else's rules and `nft list table inet
multiplex_masq` shows exactly what multiplex made. One rule per pod address:

    ip saddr 198.18.0.5 ip daddr != 198.18.0.0/24 ip daddr != 224.0.0.0/4 masquerade comment "<owner>"

`<owner>` is `<containerID>/<ifname>/<network>` (see `owner_comment`), which is how DEL removes an
attachment's rules, GC finds rules of attachments that are gone and a cache-less DEL (sweep) finds
every rule of a container. Adding is one atomic nft batch
(table, chain and rules; `add` is idempotent for the table and chain, so concurrent callers are fine).
Rules are added/removed in the namespace the process runs in (the node's).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Optional, Union

from ..cni.errors import CNIError, NETLINK_FAILURE

FAMILY = "inet"
TABLE = "multiplex_masq"
CHAIN = "postrouting"
COMMENT_MAX = 128  # nft refuses longer comments
NFT = "nft"
_MULTICAST = {4: ("224.0.0.0", 4), 6: ("ff00::", 8)}

IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]


@dataclass
class Rule:
    handle: int
    comment: str
    saddr: str = ""


def digest(text: str) -> str:
    """How a part too long for an owner comment is written: `#` + 16 hex of its SHA-256."""
    return "#" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _fits(text: str) -> bool:
    return len(text.encode()) <= COMMENT_MAX


def owner_comment(container_id: str, ifname: str, network: str) -> str:
    """The comment naming an attachment: `<containerID>/<ifname>/<network>`, at most COMMENT_MAX
    bytes (nft's limit; the host veth's alias, limited to 255 by the kernel, is the same string).

    A namespaced network name (namespace up to 63 + NAD name up to 253) rarely fits: the network
    part then becomes `#` + 16 hex of its SHA-256, and if the container ID still does not fit, it
    does too. Neither a container ID nor a CNI network name starts with `#`, so the forms never clash,
    and comments of earlier versions (plain, or network hashed) parse the same way."""
    for c in (f"{container_id}/{ifname}/{network}", f"{container_id}/{ifname}/{digest(network)}"):
        if _fits(c):
            return c
    return f"{digest(container_id)}/{ifname}/{digest(network)}"


class Owner(NamedTuple):
    """An owner comment (or veth alias) read back: each part as written, maybe hashed."""
    container: str
    ifname: str
    network: str

    def of_container(self, container_id: str) -> bool:
        return self.container in (container_id, digest(container_id))

    def of_network(self, network: str) -> bool:
        return self.network in (network, digest(network))


def container_marks(container_ids: Iterable[str]) -> dict[str, str]:
    """The container part an owner comment may carry (plain or hashed) -> the container ID, for
    reading many comments against one list."""
    return {mark: cid for cid in container_ids for mark in (cid, digest(cid))}


def parse_owner(comment: str) -> Optional[Owner]:
    """(containerID, ifname, network) from an owner comment, each maybe `#`-hashed; None when the
    comment is not one of ours."""
    parts = comment.split("/", 2)
    return Owner(*parts) if len(parts) == 3 and all(parts) else None


def _run(args: list[str], stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    exe = shutil.which(NFT) or NFT
    try:
        return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise CNIError(NETLINK_FAILURE, "the nft binary is not installed (needed for ipMasq)",
                       "field: ipMasq; allowed: install nftables, or set ipMasq to false") from None
    except subprocess.TimeoutExpired:
        raise CNIError(NETLINK_FAILURE, "nft did not answer within 30s", f"nftables: table {FAMILY} {TABLE}") from None


def _apply(commands: list[dict], what: str) -> None:
    proc = _run(["-j", "-f", "-"], json.dumps({"nftables": commands}))
    if proc.returncode != 0:
        raise CNIError(NETLINK_FAILURE, f"cannot {what}: nft: {proc.stderr.strip()[-300:] or 'failed'}",
                       f"nftables: table {FAMILY} {TABLE} chain {CHAIN}")


def _masq_rule(address: IPInterface, comment: str) -> dict:
    proto = "ip" if address.version == 4 else "ip6"
    net = address.network
    mc_addr, mc_len = _MULTICAST[address.version]

    def daddr_not(addr: str, plen: int) -> dict:
        return {"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "daddr"}},
                          "right": {"prefix": {"addr": addr, "len": plen}}}}

    expr = [{"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                       "right": str(address.ip)}}]
    if net.prefixlen < address.max_prefixlen:
        expr.append(daddr_not(str(net.network_address), net.prefixlen))
    expr.append(daddr_not(mc_addr, mc_len))
    expr.append({"masquerade": None})
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": CHAIN, "comment": comment, "expr": expr}}}


def add_masquerade(addresses: Iterable[IPInterface], comment: str) -> None:
    """Masquerade traffic from each address to anywhere outside its subnet (one atomic batch)."""
    rules = [_masq_rule(a, comment) for a in addresses]
    if not rules:
        return
    base = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN, "type": "nat",
                           "hook": "postrouting", "prio": 100, "policy": "accept"}}},
    ]
    _apply(base + rules, f"add masquerade rules for {comment}")


def rules() -> list[Rule]:
    """Every rule in our chain (empty when the table does not exist)."""
    proc = _run(["-j", "list", "chain", FAMILY, TABLE, CHAIN])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr or "does not exist" in proc.stderr:
            return []
        raise CNIError(NETLINK_FAILURE, f"cannot list masquerade rules: nft: {proc.stderr.strip()[-300:]}",
                       f"nftables: table {FAMILY} {TABLE} chain {CHAIN}")
    out = []
    for item in json.loads(proc.stdout or "{}").get("nftables", []):
        r = item.get("rule")
        if not r:
            continue
        saddr = ""
        for e in r.get("expr", []):
            m = e.get("match", {})
            if m.get("op") == "==" and m.get("left", {}).get("payload", {}).get("field") == "saddr":
                saddr = str(m.get("right"))
        out.append(Rule(handle=int(r["handle"]), comment=r.get("comment", ""), saddr=saddr))
    return out


def delete_rules(match: Callable[[Rule], bool], what: str) -> int:
    """Delete every rule of our chain that `match` accepts. Returns how many went."""
    for attempt in range(3):
        doomed = [r for r in rules() if match(r)]
        if not doomed:
            return 0
        cmds = [{"delete": {"rule": {"family": FAMILY, "table": TABLE, "chain": CHAIN, "handle": r.handle}}}
                for r in doomed]
        proc = _run(["-j", "-f", "-"], json.dumps({"nftables": cmds}))
        if proc.returncode == 0:
            return len(doomed)
        # a rule vanished between list and delete (a concurrent DEL/GC): list again
    raise CNIError(NETLINK_FAILURE, f"cannot delete masquerade rules for {what}: nft: {proc.stderr.strip()[-300:]}",
                   f"nftables: table {FAMILY} {TABLE} chain {CHAIN}")


def delete_masquerade(comment: str) -> int:
    """Remove the rules `add_masquerade` made with `comment` (none is fine)."""
    return delete_rules(lambda r: r.comment == comment, comment)


# --- nft inside another network namespace (the pod's MultiNetworkPolicy tables) -------------------

def run_in_netns(netns: str, args: list[str], stdin: Optional[str] = None,
                 timeout: float = 30.0) -> subprocess.CompletedProcess:
    """`nft ARGS` inside the network namespace at path `netns` ("" = the caller's own), through
    `nsenter --net=PATH`: nft gets the namespace the kernel gives it, and this process never
    leaves its own. A missing nft or nsenter is a CNIError naming the binary."""
    exe = shutil.which(NFT) or NFT
    argv = [exe, *args]
    if netns:
        enter = shutil.which("nsenter")
        if enter is None:
            raise CNIError(NETLINK_FAILURE, "the nsenter binary (util-linux) is not installed",
                           "needed to apply MultiNetworkPolicy rules in a pod's netns")
        argv = [enter, f"--net={netns}", *argv]
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise CNIError(NETLINK_FAILURE, "the nft binary is not installed (needed for MultiNetworkPolicy)",
                       "install nftables") from None
    except subprocess.TimeoutExpired:
        raise CNIError(NETLINK_FAILURE, f"nft did not answer within {timeout:.0f}s", f"netns: {netns}") from None
