"""steps.ipam_forward: which STATUS/GC calls reach a delegate's IPAM.

An exec'd IPAM reads only interface pairs from `cni.dev/valid-attachments`; when the meta plugin
keeps whole containers (`multiplex.dev/valid-containers`: a listed pod whose `net1` the runtime
never sees), GC must not reach it, or it would free the leases of a pod that is still running.
"""
from __future__ import annotations

import pytest

from delegates import steps
from multiplex.cni.errors import CNIError
from multiplex.cni.request import Request
from multiplex.cni.valid import VALID_ATTACHMENTS, VALID_CONTAINERS


@pytest.fixture
def calls(monkeypatch):
    seen: list[str] = []
    import multiplex.cni.invoke as invoke

    monkeypatch.setattr(invoke, "invoke_ipam", lambda req: seen.append(req.config["ipam"]["type"]))
    monkeypatch.setattr(steps, "ipam_speaks", lambda req, version: True)
    return seen


def gc_request(ipam_type: str, containers: list[str] | None) -> Request:
    conf = {"cniVersion": "1.1.0", "name": "n", "type": "multiplex-bridge", "ipam": {"type": ipam_type},
            VALID_ATTACHMENTS: [{"containerID": "c1", "ifname": "eth0"}]}
    if containers is not None:
        conf[VALID_CONTAINERS] = containers
    return Request(command="GC", config=conf)


def test_exec_ipam_gets_no_gc_when_whole_containers_are_kept(calls):
    steps.ipam_forward(gc_request("host-local", ["c1"]))
    assert calls == []


def test_exec_ipam_gets_gc_with_interface_pairs_only(calls):
    steps.ipam_forward(gc_request("host-local", None))
    assert calls == ["host-local"]


def test_builtin_ipam_gets_gc_with_whole_containers(calls):
    steps.ipam_forward(gc_request("multiplex-ipam", ["c1"]))
    assert calls == ["multiplex-ipam"]


def test_missing_ipam_type_is_code_7_naming_it(calls):
    req = gc_request("x", None)
    req.config["ipam"] = {}
    with pytest.raises(CNIError) as e:
        steps.ipam_forward(req)
    assert e.value.code == 7 and "$.ipam.type" in e.value.details
    assert calls == []
