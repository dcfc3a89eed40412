"""Shell completion through click, and `multiplex --version`, run as an admin's shell runs them:
the installed `multiplex` console script in a subprocess (so multiplex/entry.py's routing between
the CNI path and the CLI is part of what is tested), with a shell-like environment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest

MULTIPLEX = os.path.join(os.path.dirname(sys.executable), "multiplex")


def run_multiplex(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The console script with a minimal environment plus `env` (no CNI_* from the test runner)."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([MULTIPLEX, *args], env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60)


def complete(words: str, shell: str = "bash") -> list[str]:
    """What the shell would be offered for the command line `words` (the cursor after the last)."""
    parts = words.split(" ")
    got = run_multiplex(env={"_MULTIPLEX_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
                             "COMP_CWORD": str(len(parts) - 1)})
    assert got.returncode == 0, got.stderr
    # bash: one "type,value" per line
    return [line.split(",", 1)[1] for line in got.stdout.splitlines() if "," in line]


def test_version_names_the_installed_package():
    got = run_multiplex("--version")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == f"multiplex {version('multiplex')}"


@pytest.mark.parametrize("shell, marks", [
    ("bash", ["_multiplex_completion()", "complete -o nosort -F _multiplex_completion multiplex"]),
    ("zsh", ["#compdef multiplex", "_multiplex_completion()", "compdef _multiplex_completion multiplex"]),
    ("fish", ["function _multiplex_completion", "complete --no-files --command multiplex"]),
])
def test_each_shell_gets_its_completion_script(shell, marks):
    got = run_multiplex(env={"_MULTIPLEX_COMPLETE": f"{shell}_source"})
    assert got.returncode == 0, got.stderr
    for mark in marks:
        assert mark in got.stdout, f"{shell} script lacks {mark!r}:\n{got.stdout}"
    assert "_MULTIPLEX_COMPLETE" in got.stdout   # the script calls back into multiplex for words


def test_completion_reaches_the_cli_even_from_a_shell_with_cni_variables():
    """An admin who exported CNI_PATH (to try plugins by hand) still gets the script, not a CNI
    error: no arguments and CNI_* set would otherwise look like a runtime's broken call."""
    got = run_multiplex(env={"_MULTIPLEX_COMPLETE": "bash_source", "CNI_PATH": "/opt/cni/bin"})
    assert got.returncode == 0, got.stdout + got.stderr
    assert "_multiplex_completion()" in got.stdout and "cniVersion" not in got.stdout
    # and without _MULTIPLEX_COMPLETE, the same environment is still answered as a CNI call
    runtime = run_multiplex(env={"CNI_PATH": "/opt/cni/bin"})
    assert '"code": 4' in runtime.stdout


def test_commands_subcommands_and_options_complete():
    assert complete("multiplex ip") == ["ipam"]
    assert complete("multiplex ipam g") == ["gc"]
    assert complete("multiplex ipam gc --gr") == ["--grace"]
    assert set(complete("multiplex ins")) == {"inspect", "install"}
    assert complete("multiplex inspect -o ") == ["table", "json"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_sources_the_script_and_registers_the_completion(tmp_path):
    """What the docs tell an admin to put in ~/.bashrc, run by a real bash."""
    bin_dir = os.path.dirname(MULTIPLEX)
    script = 'eval "$(_MULTIPLEX_COMPLETE=bash_source multiplex)"; complete -p multiplex'
    got = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "complete -o nosort -F _multiplex_completion multiplex"
