#!/usr/bin/env python3
"""The VM tier: run every test marked `vm` in ONE boot of Debian's kernel under QEMU.

    .venv/bin/python tests/vm/run.py [--kernel /boot/vmlinuz-X-amd64] [--direct|--vm] [-- PYTEST ARGS]

This machine's kernel has no ipvlan (nor dummy, ipip, vrf); Debian's `linux-image-amd64` has them as
modules. virtme-ng (`vng`, from PyPI) boots that kernel with this machine's root file system shared
read-only and the repository shared read-write, and runs pytest inside as root. The guest writes a
junit report and its exit status into the repository (tests/vm/.out/run-<pid>/), which is how they
come back out; the runner prints a summary and the time the tier took.

When the running kernel can make ipvlan links itself, the same tests run directly (no VM).

Exit status: 0 all passed; 1 tests failed (or were skipped inside the VM, which would hide them);
2 the tier could not run (no kernel, no vng, no QEMU, the VM did not boot or never finished) - always
with the reason printed. It never passes without having run the tests.

Traps this handles (met on this kind of machine): /dev/kvm is nested and cannot boot a guest, so
QEMU emulates (`--disable-kvm`, about 30x slower; Python imports dominate); the kernel file is
always named (the running kernel's modules are not installed); stdin is /dev/null; vng's output is
piped through `cat` (QEMU reopens its descriptors and overwrites a file it was redirected to); the
guest root is read-only except the repository and a few tmpfs/overlays, so HOME=/tmp and absolute
paths; the host environment does not pass in, so the guest's is spelled out.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.vm import kernel  # noqa: E402  (after the path fix, so the file runs as a script)

OUT_BASE = os.path.join(ROOT, "tests", "vm", ".out")
GUEST_UP = "vm-tier: guest up"
EXIT_FAILED, EXIT_BROKEN = 1, 2
DEFAULT_TIMEOUT = 1800.0
KEEP_RUNS = 3


class TierBroken(Exception):
    """The tier could not run its tests (as opposed to: the tests failed)."""


@dataclass
class Report:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    skip_reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped


def log(msg: str) -> None:
    print(f"[vm-tier] {msg}", flush=True)


# ---- what to run -----------------------------------------------------------------------------------
def python() -> str:
    """The venv's python, by its absolute (unresolved) path: resolving would leave the venv."""
    return os.path.abspath(sys.executable)


def venv_bin() -> str:
    return os.path.dirname(python())


def vm_test_files(paths: list[str]) -> list[str]:
    """Files holding vm-marked tests, from a collection on this machine (cheap, authoritative)."""
    cmd = [python(), "-m", "pytest", "--collect-only", "-q", "-m", "vm", "-p", "no:cacheprovider", *paths]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode not in (0, 5):
        raise TierBroken(f"collecting the vm tests failed (pytest exit {r.returncode}):\n"
                         + (r.stdout + r.stderr)[-3000:])
    files = []
    for line in r.stdout.splitlines():
        if "::" in line:
            f = line.split("::", 1)[0]
            if f not in files:
                files.append(f)
    return files


def pytest_argv(files: list[str], out: str, extra: list[str]) -> list[str]:
    return [python(), "-m", "pytest", "-m", "vm", "-p", "no:cacheprovider", "-ra", "-v", "--durations=10",
            f"--junitxml={os.path.join(out, 'junit.xml')}", *extra, *files]


# ---- the guest ---------------------------------------------------------------------------------------
def guest_env() -> dict[str, str]:
    """Everything the guest's pytest gets: the host environment does not pass into the VM."""
    env = {
        "PATH": f"{venv_bin()}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        kernel.GUEST_ENV: "1",
    }
    for k in ("MULTIPLEX_LOG_LEVEL", "MULTIPLEX_TEST_EXEC", "PYTEST_ADDOPTS"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    return env


def guest_script(out: str, argv: list[str]) -> str:
    """The shell script the VM executes (written into `out`, which the guest sees read-write)."""
    status = os.path.join(out, "status")
    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in guest_env().items())
    return f"""#!/bin/sh
# Written by tests/vm/run.py; executed inside the VM as root.
echo "{GUEST_UP}: kernel $(uname -r), $(nproc) cpus, uptime $(cut -d' ' -f1 /proc/uptime)s"
cd {shlex.quote(ROOT)} || {{ echo "vm-tier: the repository is not mounted in the guest"; echo 98 > {status}; exit 98; }}
for m in ipvlan dummy; do
  modprobe "$m" || echo "vm-tier: modprobe $m failed (is /lib/modules/$(uname -r) there?)"
done
mkdir -p /var/run/netns || echo "vm-tier: /var/run/netns is not writable"
env -i {envs} {" ".join(shlex.quote(a) for a in argv)}
rc=$?
echo $rc > {status}
sync
exit $rc
"""


def vng_argv(vng: str, kernel_file: str, script: str, cpus: int, memory: str, kvm: bool) -> list[str]:
    argv = [vng, "--run", kernel_file]
    if not kvm:
        argv.append("--disable-kvm")
    return argv + ["--memory", memory, "--cpus", str(cpus), "--rwdir", ROOT, "--cwd", ROOT,
                   "--exec", f"/bin/sh {script}"]


def tools() -> tuple[str, dict[str, str]]:
    """vng's path and the host environment it runs with. Raises TierBroken naming what is missing."""
    path = f"{venv_bin()}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    vng = shutil.which("vng", path=path)
    if vng is None:
        raise TierBroken(f"virtme-ng is not installed (no `vng` in {venv_bin()} or PATH): "
                         f"{venv_bin()}/pip install virtme-ng")
    if shutil.which("qemu-system-x86_64", path=path) is None:
        raise TierBroken("QEMU is not installed (no qemu-system-x86_64): apt-get install qemu-system-x86")
    if shutil.which("busybox", path=path) is None:
        raise TierBroken("busybox is not installed (virtme-ng's initramfs needs it): apt-get install busybox-static")
    return vng, {"PATH": path, "HOME": "/tmp", "TERM": "dumb", "LANG": "C.UTF-8"}


@dataclass
class Boot:
    rc: int
    tail: list[str]
    timed_out: bool
    guest_up: bool


def boot_and_run(vng_cmd: list[str], env: dict[str, str], timeout: float) -> Boot:
    """Run vng (stdin /dev/null, output through `cat`), echoing the guest's output as it comes."""
    tail: deque[str] = deque(maxlen=80)
    guest_up = False
    vng = subprocess.Popen(vng_cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
    cat = subprocess.Popen(["cat"], stdin=vng.stdout, stdout=subprocess.PIPE)
    assert vng.stdout is not None and cat.stdout is not None
    vng.stdout.close()  # cat holds the read end now
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            os.killpg(vng.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        for raw in cat.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
            guest_up = guest_up or GUEST_UP in line
        rc = vng.wait()
        cat.wait()
    except KeyboardInterrupt:
        kill()
        vng.wait()
        raise
    finally:
        timer.cancel()
    return Boot(rc, list(tail), timed_out.is_set(), guest_up)


# ---- results -----------------------------------------------------------------------------------------
def read_report(path: str) -> Report:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise TierBroken(f"no readable test report at {path} ({e})") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    r = Report()
    reasons = []
    for s in suites:
        r.tests += int(s.get("tests", 0))
        r.failures += int(s.get("failures", 0))
        r.errors += int(s.get("errors", 0))
        r.skipped += int(s.get("skipped", 0))
        r.seconds += float(s.get("time", 0) or 0)
        for case in s.iter("testcase"):
            sk = case.find("skipped")
            if sk is not None:
                reasons.append(f"{case.get('classname')}.{case.get('name')}: {sk.get('message', '')}")
    r.skip_reasons = tuple(reasons)
    return r


def read_status(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def verdict(report: Report, allow_skips: bool) -> int:
    if report.tests == 0:
        raise TierBroken("the test report lists no tests: nothing ran")
    if report.failures or report.errors:
        return EXIT_FAILED
    if report.skipped and not allow_skips:
        log(f"{report.skipped} vm test(s) were SKIPPED where they should have run; the tier exists so "
            "that nothing is skipped:")
        for reason in report.skip_reasons:
            log(f"  {reason}")
        return EXIT_FAILED
    return 0


def new_out_dir() -> str:
    os.makedirs(OUT_BASE, exist_ok=True)
    runs = sorted((d for d in os.listdir(OUT_BASE) if d.startswith("run-")),
                  key=lambda d: os.path.getmtime(os.path.join(OUT_BASE, d)))
    for old in runs[:-KEEP_RUNS] if len(runs) >= KEEP_RUNS else []:
        shutil.rmtree(os.path.join(OUT_BASE, old), ignore_errors=True)
    out = os.path.join(OUT_BASE, f"run-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    return out


# ---- the two ways to run ---------------------------------------------------------------------------------
def run_direct(files: list[str], out: str, extra: list[str]) -> tuple[Report, int]:
    log("running the vm tests directly on this kernel (no VM)")
    rc = subprocess.run(pytest_argv(files, out, extra), cwd=ROOT, stdin=subprocess.DEVNULL).returncode
    return read_report(os.path.join(out, "junit.xml")), rc


def run_in_vm(files: list[str], out: str, extra: list[str], args: argparse.Namespace) -> tuple[Report, int]:
    kernel_file, release = kernel.pick_kernel(args.kernel)
    vng, env = tools()
    script = os.path.join(out, "guest.sh")
    with open(script, "w") as f:
        f.write(guest_script(out, pytest_argv(files, out, extra)))
    cmd = vng_argv(vng, kernel_file, script, args.cpus, args.memory, args.kvm)
    log(f"booting {kernel_file} ({release}) under QEMU {'with KVM' if args.kvm else 'emulation (TCG)'}, "
        f"{args.cpus} cpus, {args.memory}: {len(files)} test file(s)")
    log("$ " + " ".join(shlex.quote(a) for a in cmd) + " </dev/null 2>&1 | cat")
    boot = boot_and_run(cmd, env, args.timeout)
    status = read_status(os.path.join(out, "status"))
    if boot.timed_out:
        raise TierBroken(f"the VM did not finish within {args.timeout:.0f} s and was killed "
                         "(--timeout to change); its last output is above")
    if status is None:
        what = ("the VM booted but the tests never reported an exit status" if boot.guest_up
                else "the VM did not boot (the guest never started the tests)")
        raise TierBroken(f"{what}; vng exit status {boot.rc}. To see the console, run the vng command above "
                         "with --verbose. Last output:\n" + "\n".join(boot.tail[-40:]))
    if boot.rc != status:
        log(f"warning: vng exited {boot.rc} while the guest's pytest exited {status}; using the guest's")
    return read_report(os.path.join(out, "junit.xml")), status


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", help="the kernel to boot (default: the newest /boot/vmlinuz-*-amd64 with ipvlan modules)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--vm", action="store_true", help="boot the VM even when this kernel has ipvlan")
    mode.add_argument("--direct", action="store_true", help="run here, without a VM (needs a kernel with ipvlan)")
    p.add_argument("--kvm", action="store_true", help="use KVM (a nested /dev/kvm here cannot boot a guest)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--memory", default="1G")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds before the VM is killed")
    p.add_argument("--allow-skips", action="store_true", help="do not fail when a test skips inside the VM")
    p.add_argument("--junitxml", help="also copy the tier's junit report here")
    p.add_argument("--paths", nargs="*", default=["tests"], help="where to look for vm tests (default: tests)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -k l3 -x")
    args = p.parse_args(argv)

    start = time.monotonic()
    code = EXIT_BROKEN
    try:
        files = vm_test_files(args.paths)
        if not files:
            raise TierBroken(f"no tests marked vm under {' '.join(args.paths)}: nothing to run")
        out = new_out_dir()
        direct = args.direct or (not args.vm and not kernel.missing_feature())
        if args.direct and kernel.missing_feature():
            raise TierBroken(f"--direct, but {kernel.missing_feature()}")
        report, rc = (run_direct(files, out, args.pytest_args) if direct
                      else run_in_vm(files, out, args.pytest_args, args))
        code = verdict(report, args.allow_skips)
        if code == 0 and rc != 0:
            log(f"pytest exited {rc} although the report shows no failure")
            code = EXIT_FAILED
        if args.junitxml:
            shutil.copyfile(os.path.join(out, "junit.xml"), args.junitxml)
        log(f"{'PASSED' if code == 0 else 'FAILED'}: {report.passed} passed, {report.failures} failed, "
            f"{report.errors} errors, {report.skipped} skipped; tests {report.seconds:.0f} s; "
            f"report {os.path.relpath(os.path.join(out, 'junit.xml'), ROOT)}")
    except (TierBroken, RuntimeError) as e:
        log(f"BROKEN: the VM tier could not run its tests: {e}")
        code = EXIT_BROKEN
    except KeyboardInterrupt:
        log("interrupted")
        code = EXIT_BROKEN
    log(f"time: {time.monotonic() - start:.0f} s for the whole VM tier (boot, imports, tests)")
    return code


if __name__ == "__main__":
    sys.exit(main())
