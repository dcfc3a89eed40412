"""The delegates' skeleton (delegates/skeleton.py) as its contract says, with a toy delegate and the
netlink handles stood in (no netns): what a caller of any delegate sees - the error of a failed ADD
after its undo steps ran in reverse, the log lines and their fields in order, GC refusing a bad
keep-list before anything is removed, CHECK's one error, a sweep that logs only what it removed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from delegates.skeleton import VethDelegate, of_container
from multiplex.cni.context import CallContext
from multiplex.cni.errors import CHECK_FAILED, CNIError, INVALID_CONFIG, NETLINK_FAILURE
from multiplex.cni.request import Request
from multiplex.cni.types import Result
from multiplex.netlink import nft
from multiplex.util.log import Logger


class Recorder(Logger):
    def __init__(self) -> None:
        super().__init__(level="debug")
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def log(self, level: str, msg: str, **fields: Any) -> None:
        self.lines.append((level, msg, fields))


@dataclass
class ToyConfig:
    network: str
    colour: str

    @classmethod
    def parse(cls, conf: dict) -> "ToyConfig":
        return cls(network=conf["name"], colour=conf.get("colour", "red"))


class Handle:
    """A stand-in netlink handle: records when it is closed, has no links."""

    def __init__(self, events: list[str], name: str) -> None:
        self.events, self.name = events, name

    def link(self, name: str) -> None:
        return None

    def __enter__(self) -> "Handle":
        self.events.append(f"open {self.name}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.events.append(f"close {self.name}")


class Toy(VethDelegate):
    type_name = "toy"
    label = "toy"
    config_class = ToyConfig
    host_veth_name = staticmethod(lambda cid, ifname: f"toy{cid[:4]}{ifname}")

    def __init__(self, events: list[str], fail: bool = False) -> None:
        self.events, self.fail = events, fail

    def conf_fields(self, conf: ToyConfig) -> dict[str, Any]:
        return {"colour": conf.colour}

    def attach(self, req: Request, conf: ToyConfig, node, pod, undo, ready) -> Result:
        undo.push("first", lambda: self.events.append("undo first"))
        undo.push("second", lambda: self.events.append("undo second"))
        if self.fail:
            raise CNIError(NETLINK_FAILURE, "the toy link cannot be made", "field: colour")
        return Result.from_dict({"cniVersion": "1.1.0", "ips": [{"address": "198.18.90.5/24"}]})

    def added(self, req: Request, conf: ToyConfig) -> None:
        self.events.append("added")

    def node_problems(self, req, conf, node, prev) -> list:
        return [("colour", f"the node's toy is not {conf.colour}")]

    def collect(self, req, conf, keep) -> dict[str, Any]:
        self.events.append("collect")
        return {"toys": ["t1"]}

    def sweep_container(self, req, cid: str) -> dict[str, Any]:
        self.events.append(f"sweep {cid}")
        return {"toys": [], "rules": 0}


@pytest.fixture
def handles(monkeypatch):
    """The node and pod handles as stand-ins; the events they and the toy record."""
    from multiplex import netlink

    events: list[str] = []
    monkeypatch.setattr(netlink, "open_node", lambda batch=None: Handle(events, "node"))
    monkeypatch.setattr(netlink, "open_netns", lambda path: Handle(events, "pod"))
    return events


def request(command: str, log: Logger, **conf: Any) -> Request:
    return Request(command=command, container_id="c0ffee", netns="/run/netns/toy", ifname="net1",
                   config={"cniVersion": "1.1.0", "name": "ns.toy", "type": "toy", **conf},
                   ctx=CallContext(log=log))


def test_a_failed_add_undoes_in_reverse_with_both_handles_open_and_raises_the_error_unchanged(handles):
    log = Recorder()
    with pytest.raises(CNIError) as e:
        Toy(handles, fail=True).add(request("ADD", log))
    assert (e.value.code, e.value.msg, e.value.details) == (NETLINK_FAILURE, "the toy link cannot be made",
                                                             "field: colour")
    assert handles == ["open node", "open pod", "undo second", "undo first", "close pod", "close node"]
    assert [m for _, m, _ in log.lines] == []


def test_an_add_logs_one_line_with_its_fields_in_order_after_the_handles_are_closed(handles):
    log = Recorder()
    result = Toy(handles).add(request("ADD", log, colour="blue"))
    assert [str(ip.address) for ip in result.ips] == ["198.18.90.5/24"]
    assert handles == ["open node", "open pod", "close pod", "close node", "added"]
    assert log.lines == [("info", "toy add", {"network": "ns.toy", "colour": "blue", "container": "c0ffee",
                                              "ifname": "net1", "addresses": ["198.18.90.5/24"]})]


def test_gc_refuses_a_bad_keep_list_before_anything_is_removed(handles):
    log = Recorder()
    with pytest.raises(CNIError) as e:
        Toy(handles).gc(request("GC", log, **{"cni.dev/valid-attachments": "all"}))
    assert e.value.code == INVALID_CONFIG and "valid-attachments" in e.value.details
    assert "collect" not in handles and log.lines == []


def test_check_raises_one_error_naming_what_differs(handles, monkeypatch):
    monkeypatch.setattr("multiplex.cni.invoke.invoke_ipam", lambda req: None)   # IPAM's CHECK: nothing to say
    log = Recorder()
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "198.18.90.5/24"}]}
    with pytest.raises(CNIError) as e:
        Toy(handles).check(request("CHECK", log, prevResult=prev))
    assert e.value.code == CHECK_FAILED
    assert "the node's toy is not red" in e.value.msg and "interface net1 is missing" in e.value.msg
    assert e.value.details.startswith("differs: colour, interface;")


def test_a_sweep_logs_only_what_it_removed_and_needs_a_container(handles):
    log = Recorder()
    toy = Toy(handles)
    toy.sweep(request("DEL", log))
    toy.sweep(Request(command="DEL", ctx=CallContext(log=log)))
    assert handles == ["sweep c0ffee"] and log.lines == []


def test_of_container_accepts_the_marks_of_that_container_only():
    mine = of_container("c0ffee")
    assert mine(nft.owner_comment("c0ffee", "net1", "ns.toy"))
    assert not mine(nft.owner_comment("beef", "net1", "ns.toy"))
    assert not mine("made by someone else")
