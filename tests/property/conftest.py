"""Shared pieces of the property-based suite: a scratch node and pod netns the plugin entries run
in (the test thread itself enters the scratch node, so nothing generated can reach the root
namespace's links), the CNI outcome every input must have, and the example count printed last."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
from typing import Any, Iterator, Optional

import pytest


#: The spec's codes, plus multiplex's documented own codes except 100 (an internal error, a bug).
SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}
OWN_CODES = {101, 102, 103, 104, 105, 106, 107}
ALLOWED_CODES = SPEC_CODES | OWN_CODES
#: codes whose details must name the field that was wrong
FIELD_CODES = {4, 6, 7}


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.property.strategies import EXAMPLES

    if EXAMPLES:
        per = ", ".join(f"{k} {v}" for k, v in sorted(EXAMPLES.items()))
        terminalreporter.write_line(f"property-based examples by property: {per}")
        terminalreporter.write_line(f"property-based suite: {sum(EXAMPLES.values())} examples "
                                    f"over {len(EXAMPLES)} properties")


def check_cni_error(e: Any, where: str) -> None:
    """A CNIError a parser raised: a spec (or documented own) code, a message, a named field."""
    assert e.code in ALLOWED_CODES, f"{where}: code {e.code} ({e.msg}) is not a spec code"
    assert isinstance(e.msg, str) and e.msg, f"{where}: error without a message"
    if e.code in FIELD_CODES:
        assert "field:" in (e.details or ""), f"{where}: code {e.code} details do not name the field: {e.details!r} ({e.msg})"


def check_outcome(rc: int, out: str, err: str, where: str) -> Optional[dict]:
    """What a runtime reads from a plugin: exit 0 with a result (or nothing), or exit 1 with one
    JSON error object with an allowed code; never a traceback."""
    assert "Traceback (most recent call last)" not in err, f"{where}: traceback on stderr:\n{err[-3000:]}"
    assert rc in (0, 1), f"{where}: exit code {rc}"
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        raise AssertionError(f"{where}: stdout is not one JSON document: {out[:300]!r}") from None
    if rc == 1:
        assert isinstance(doc, dict), f"{where}: exit 1 without an error object: {out[:300]!r}"
        code = doc.get("code")
        assert code in ALLOWED_CODES, f"{where}: error code {code} is not a spec code: {doc}"
        assert isinstance(doc.get("msg"), str) and doc["msg"], f"{where}: error without msg: {doc}"
        if code in FIELD_CODES:
            assert "field:" in str(doc.get("details", "")), f"{where}: code {code} does not name the field: {doc}"
    return doc


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """The calling thread (and whatever it forks) in `netns`; back home afterwards."""
    from multiplex.netlink.netns import entered

    with entered(f"/var/run/netns/{netns}"):
        yield


def link_names() -> set[str]:
    """Links of the namespace the calling thread is in (netlink from this thread)."""
    return {name for _, name in socket.if_nameindex()}


def link_kinds() -> dict[str, str]:
    """{name: kind} of the links of the calling thread's namespace ("" for a link without one)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        out = {}
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            out[link.get_attr("IFLA_IFNAME")] = (info.get_attr("IFLA_INFO_KIND") if info else "") or ""
        return out


def lease_rows(state_dir: str) -> list[str]:
    """Every lease row under `state_dir` (and every database there that cannot be read), one line
    each: the adversarial tier's residue reader (tests/adversarial/residue.py)."""
    from tests.adversarial.residue import lease_rows as rows_under

    return sorted(rows_under([state_dir]))


class Scratch:
    """A node netns, a pod netns and a tmp tree, for plugin entries fed generated inputs."""

    def __init__(self, root: str):
        from tests.cnitool import NetnsPool

        self.netns = NetnsPool(f"mpxp{os.getpid()}")
        self.node, self.pod = self.netns.make("n"), self.netns.make("p")
        self.root = root
        for d in ("state", "nads", "pods", "conf", "bin", "cwd"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        self.regular_file = os.path.join(root, "not-a-netns")
        with open(self.regular_file, "w") as f:
            f.write("x")

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def pod_path(self) -> str:
        return f"/var/run/netns/{self.pod}"

    def close(self) -> None:
        self.netns.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 (the plugin entries run in a scratch network namespace)")
    s = Scratch(str(tmp_path_factory.mktemp("prop")))
    try:
        yield s
    finally:
        s.close()


def run_entry(plugin, env: dict, stdin: bytes, scratch: Scratch) -> tuple[int, str, str]:
    """`skel.run` as a plugin process would, from inside the scratch node, state and cwd in tmp;
    the process environment (which the meta plugin sets MULTIPLEX_STATE_DIR in) is restored."""
    from multiplex.cni import skel

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    cwd = os.getcwd()
    os.environ["MULTIPLEX_STATE_DIR"] = scratch.path("state")
    os.chdir(scratch.path("cwd"))
    try:
        with inside(scratch.node), contextlib.redirect_stderr(err):
            rc = skel.run(plugin, env, stdin, out)
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
    return rc, out.getvalue(), err.getvalue()
