"""`multiplex install --daemon`: `multiplex` in the bin dir is the shim, the in-process launcher
waits beside it as `multiplex-inprocess` (fallback exec), a second run changes nothing, switching
modes removes what is no longer wanted, uninstall leaves the node as it was."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from multiplex.cli.install.launchers import INPROCESS_NAME, is_our_launcher
from multiplex.cli.install.report import InstallError
from multiplex.cli.install.steps import DEFAULT_SOCKET, install
from multiplex.cli.install.uninstall import uninstall
from tests.unit.test_install import BIN_DIR, CONF_DIR, node_root, paths, real, snapshot  # noqa: F401

PY = sys.executable


def daemon_install(root: str, **kwargs):
    kwargs.setdefault("socket_path", "/run/multiplex/test.sock")
    return install(root, BIN_DIR, CONF_DIR, PY, daemon=True, **kwargs)


def read(root: str, host_path: str) -> str:
    with open(real(root, host_path), encoding="utf-8") as f:
        return f.read()


def run_shim(path: str, command: str = "VERSION", stdin: bytes = b'{"cniVersion": "0.4.0"}') -> tuple[int, dict]:
    r = subprocess.run([path], input=stdin, env={"CNI_COMMAND": command}, capture_output=True, timeout=60)
    return r.returncode, json.loads(r.stdout)


def test_daemon_mode_writes_the_shim_and_the_in_process_fallback(node_root, tmp_path):
    report = daemon_install(node_root, socket_path=str(tmp_path / "absent.sock"))
    shim = read(node_root, f"{BIN_DIR}/multiplex")
    assert shim.startswith(f"#!{PY} -IS\n# multiplex shim")
    assert f"SOCKET = {str(tmp_path / 'absent.sock')!r}\n" in shim
    assert f"FALLBACK = [{BIN_DIR + '/' + INPROCESS_NAME!r}]\n" in shim
    inprocess = read(node_root, f"{BIN_DIR}/{INPROCESS_NAME}")
    assert inprocess.startswith("#!/bin/sh\n# multiplex launcher") and "multiplex.entry" in inprocess
    assert is_our_launcher(real(node_root, f"{BIN_DIR}/multiplex"))
    assert f"{BIN_DIR}/multiplex-bridge" in paths(report, "created")  # the delegates' launchers as ever
    assert os.access(real(node_root, f"{BIN_DIR}/multiplex"), os.X_OK)


def test_a_second_daemon_install_changes_nothing(node_root):
    daemon_install(node_root)
    before = snapshot(node_root)
    report = daemon_install(node_root)
    assert snapshot(node_root) == before
    assert not paths(report, "created") and not paths(report, "updated")


def test_the_installed_shim_without_a_daemon_falls_back_or_fails_as_configured(node_root, tmp_path):
    sock = str(tmp_path / "absent.sock")
    # the bin dir as the host sees it is under node_root here: point the fallback there
    install(node_root, BIN_DIR, CONF_DIR, PY, daemon=True, socket_path=sock)
    shim = real(node_root, f"{BIN_DIR}/multiplex")
    with open(shim, encoding="utf-8") as f:
        text = f.read().replace(repr(f"{BIN_DIR}/{INPROCESS_NAME}"), repr(real(node_root, f"{BIN_DIR}/{INPROCESS_NAME}")))
    with open(shim, "w", encoding="utf-8") as f:
        f.write(text)
    rc, out = run_shim(shim)
    assert rc == 0 and "1.1.0" in out["supportedVersions"]  # the in-process multiplex answered

    install(node_root, BIN_DIR, CONF_DIR, PY, daemon=True, socket_path=sock, fallback="fail")
    assert not os.path.lexists(real(node_root, f"{BIN_DIR}/{INPROCESS_NAME}"))
    rc, out = run_shim(shim, "ADD")
    assert rc == 1 and out["code"] == 11 and out["cniVersion"] == "0.4.0"
    assert f"not answering at {sock}" in out["msg"]


def test_switching_modes_replaces_the_files_and_removes_the_fallback(node_root):
    install(node_root, BIN_DIR, CONF_DIR, PY)
    plain = read(node_root, f"{BIN_DIR}/multiplex")
    report = daemon_install(node_root)
    assert f"{BIN_DIR}/multiplex" in paths(report, "updated") and not paths(report, "backed-up")
    report = install(node_root, BIN_DIR, CONF_DIR, PY)
    assert read(node_root, f"{BIN_DIR}/multiplex") == plain
    assert f"{BIN_DIR}/{INPROCESS_NAME}" in paths(report, "removed")
    assert not os.path.lexists(real(node_root, f"{BIN_DIR}/{INPROCESS_NAME}"))


@pytest.mark.parametrize("lose_the_record", [False, True])
def test_uninstall_after_a_daemon_install_leaves_the_node_as_it_was(node_root, lose_the_record):
    before = snapshot(node_root)
    daemon_install(node_root)
    if lose_the_record:  # uninstall then recognizes our files by their marks (the shim's too)
        os.unlink(real(node_root, f"{CONF_DIR}/multiplex.d/install.json"))
    uninstall(node_root, BIN_DIR, CONF_DIR)
    assert snapshot(node_root) == before


def test_a_foreign_multiplex_binary_is_backed_up_and_restored(node_root):
    foreign = real(node_root, f"{BIN_DIR}/multiplex")
    with open(foreign, "w") as f:
        f.write("#!/bin/sh\necho someone else's\n")
    os.chmod(foreign, 0o755)
    before = snapshot(node_root)
    report = daemon_install(node_root)
    assert f"{BIN_DIR}/multiplex" in paths(report, "backed-up")
    uninstall(node_root, BIN_DIR, CONF_DIR)
    assert snapshot(node_root) == before


@pytest.mark.parametrize("socket_path, fallback, match", [
    ("run/x.sock", "exec", "absolute"),
    ("/run/" + "x" * 120 + ".sock", "exec", "longer than 107 bytes"),
    (DEFAULT_SOCKET, "retry", "invalid fallback"),
])
def test_bad_daemon_settings_are_refused_before_anything_is_written(node_root, socket_path, fallback, match):
    before = snapshot(node_root)
    with pytest.raises(InstallError, match=match):
        daemon_install(node_root, socket_path=socket_path, fallback=fallback)
    assert snapshot(node_root) == before


def test_the_cli_passes_daemon_socket_and_fallback(node_root):
    from multiplex.cli.commands import cli

    r = CliRunner().invoke(cli, ["install", "--root", node_root, "--python", PY, "--daemon",
                                 "--socket", "/run/m/x.sock", "--fallback", "fail"])
    assert r.exit_code == 0, r.output
    shim = read(node_root, f"{BIN_DIR}/multiplex")
    assert "SOCKET = '/run/m/x.sock'\nFALLBACK = None\n" in shim
