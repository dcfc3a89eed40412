"""An exec'd plugin's environment in the node daemon: the call's state root and kubeconfig come
from the call (its context), never from the daemon's own environment (cni/request.py env())."""
from __future__ import annotations

from multiplex.cni.context import KUBECONFIG_ENV, STATE_DIR_ENV, CallContext
from multiplex.cni.request import Request


def req(ctx: CallContext) -> Request:
    return Request(command="ADD", container_id="c1", ifname="net1", netns="/var/run/netns/p",
                   config={"cniVersion": "1.1.0", "name": "n", "type": "bridge"}, ctx=ctx)


def test_a_call_without_a_kubeconfig_does_not_pass_on_the_daemons(monkeypatch):
    monkeypatch.setenv(KUBECONFIG_ENV, "/daemon/own.kubeconfig")
    monkeypatch.setenv(STATE_DIR_ENV, "/daemon/state")
    env = req(CallContext()).env()
    assert KUBECONFIG_ENV not in env and STATE_DIR_ENV not in env
    assert env["CNI_COMMAND"] == "ADD"


def test_the_calls_own_values_are_passed_on(monkeypatch):
    monkeypatch.setenv(KUBECONFIG_ENV, "/daemon/own.kubeconfig")
    env = req(CallContext(state_dir="/call/state", kubeconfig="/call/kc")).env()
    assert (env[STATE_DIR_ENV], env[KUBECONFIG_ENV]) == ("/call/state", "/call/kc")
    env = req(CallContext()).env({"HOME": "/root", KUBECONFIG_ENV: "/from/base"})
    assert env.get("HOME") == "/root" and KUBECONFIG_ENV not in env
