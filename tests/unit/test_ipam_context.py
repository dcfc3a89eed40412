"""The IPAM takes where it works from the call's context (req.ctx), never from os.environ.

A warm process serves many calls: the state root and kubeconfig of one call travel on its
Request (CallContext), and MULTIPLEX_STATE_DIR / MULTIPLEX_KUBECONFIG are read only where an
exec'd plugin starts (CallContext.from_environ).
"""
from __future__ import annotations

import json
import os

import pytest

from multiplex.cni.context import KUBECONFIG_ENV, STATE_DIR_ENV, CallContext
from multiplex.cni.request import Request
from multiplex.ipam import config
from multiplex.ipam.kube.store import resolve_kubeconfig
from multiplex.ipam.plugin import plugin
from multiplex.ipam.sqlite.store import FILENAME, SQLiteStore
from multiplex.util import log
from tests.concurrently import run_in_threads


def request(command: str, ctx: CallContext, cid: str = "c1", name: str = "blue", **ipam_extra) -> Request:
    conf = {"cniVersion": "1.1.0", "name": name, "type": "bridge",
            "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.40.0/29"}]], **ipam_extra}}
    return Request(command=command, container_id=cid, netns="/var/run/netns/pod", ifname="eth0",
                   config=conf, ctx=ctx)


def leased(state_dir: str) -> list[str]:
    d = os.path.join(state_dir, "ipam")
    if not os.path.isfile(os.path.join(d, FILENAME)):
        return []
    with SQLiteStore(d) as s:
        return [f"{x.owner.container_id}:{x.address}" for x in s.leases()]


def test_the_call_state_dir_wins_over_the_process_environment(tmp_path, monkeypatch):
    mine, other = str(tmp_path / "mine"), str(tmp_path / "other")
    monkeypatch.setenv(STATE_DIR_ENV, other)
    ctx = CallContext(state_dir=mine)
    plugin.add(request("ADD", ctx))
    assert leased(mine) == ["c1:198.18.40.2"]
    assert not os.path.exists(other)
    plugin.delete(request("DEL", ctx))
    assert leased(mine) == []


def test_sweep_finds_the_node_store_under_the_call_state_dir(tmp_path, monkeypatch):
    mine = str(tmp_path / "mine")
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "other"))
    ctx = CallContext(state_dir=mine)
    plugin.add(request("ADD", ctx))
    # a DEL without a cache entry and without an ipam block: the node's store of the call's root
    plugin.sweep(Request(command="DEL", container_id="c1", ifname="eth0", config={"name": "x"}, ctx=ctx))
    assert leased(mine) == []


def test_two_calls_with_different_state_dirs_at_once_see_only_their_own(tmp_path, monkeypatch):
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    roots = [str(tmp_path / f"root{n}") for n in range(2)]

    def calls(n: int) -> None:
        for i in range(5):
            plugin.add(request("ADD", CallContext(state_dir=roots[n]), cid=f"r{n}c{i}"))

    errors = run_in_threads(calls, 2)
    assert not errors
    for n, root in enumerate(roots):
        assert sorted(leased(root)) == sorted(f"r{n}c{i}:198.18.40.{i + 2}" for i in range(5))


def test_the_store_location_carries_the_call_context(tmp_path):
    conf = request("DEL", CallContext()).config
    where = config.store_location(conf, state_dir="/run/x", kubeconfig="/etc/a.kubeconfig")
    assert where.state_dir == "/run/x" and where.data_dir == "" and where.kubeconfig == "/etc/a.kubeconfig"
    conf["ipam"]["kubeconfig"] = "/etc/own.kubeconfig"   # the ipam block's own wins
    assert config.store_location(conf, kubeconfig="/etc/a.kubeconfig").kubeconfig == "/etc/own.kubeconfig"


def test_the_kubeconfig_comes_from_the_caller_not_the_environment(monkeypatch):
    monkeypatch.setenv(KUBECONFIG_ENV, "/from/environment")
    assert resolve_kubeconfig("", "/from/context") == "/from/context"
    assert resolve_kubeconfig("/from/ipam", "/from/context") == "/from/ipam"
    assert resolve_kubeconfig("", None) != "/from/environment"


def test_the_ipam_logs_through_the_call_logger(tmp_path, monkeypatch):
    path = str(tmp_path / "call.log")
    call_log = log.get().child(path=path, level="info", container="c1", command="ADD")
    plugin.add(request("ADD", CallContext(state_dir=str(tmp_path / "root"), log=call_log)))
    with open(path) as f:
        records = [json.loads(line) for line in f]
    added = [r for r in records if r["msg"] == "ipam add"]
    assert added and added[0]["command"] == "ADD" and added[0]["addresses"] == ["198.18.40.2"]


@pytest.mark.parametrize("ctx_state", [True, False])
def test_default_data_dir_follows_the_state_dir(tmp_path, monkeypatch, ctx_state):
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "env"))
    got = config.default_data_dir(str(tmp_path / "ctx") if ctx_state else None, create=False)
    assert got == str(tmp_path / ("ctx" if ctx_state else "env") / "ipam")
