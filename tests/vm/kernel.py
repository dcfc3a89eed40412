"""What the VM tier needs to know about kernels: does the running one have ipvlan, and which Debian
kernel (with its modules) can the VM boot instead. Stdlib only: the runner imports it before pytest.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import uuid
from functools import lru_cache
from typing import Optional

#: Set in the guest's environment by tests/vm/run.py: "these tests run inside the VM tier".
GUEST_ENV = "MULTIPLEX_VM_GUEST"
#: The command that runs the VM tier (what a skipped vm test tells the reader to run).
RUN_COMMAND = ".venv/bin/python tests/vm/run.py"
#: Kernel link kinds the vm-marked tests need.
NEEDED_KINDS = ("ipvlan",)


def in_guest() -> bool:
    return os.environ.get(GUEST_ENV) == "1"


@lru_cache(maxsize=1)
def missing_feature() -> str:
    """Empty when the running kernel can make every link kind in NEEDED_KINDS, else why not.

    Probes for real, in a scratch netns (a veth as the master), so a kernel that has the module
    but cannot load it counts as missing. Creating the link makes the kernel autoload its module.
    """
    if os.geteuid() != 0:
        return "needs root to probe the kernel for ipvlan"
    if not shutil.which("ip"):
        return "needs iproute2 (`ip`)"
    ns = f"mpxprobe-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return "cannot create a network namespace to probe the kernel"
    try:
        ipn = ["ip", "-n", ns, "link"]
        r = subprocess.run(ipn + ["add", "mpxpa", "type", "veth", "peer", "name", "mpxpb"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"cannot probe the kernel: veth: {r.stderr.strip()}"
        for kind in NEEDED_KINDS:
            r = subprocess.run(ipn + ["add", "link", "mpxpa", "name", "mpxpk", "type", kind],
                               capture_output=True, text=True)
            if r.returncode != 0:
                return f"this kernel ({os.uname().release}) has no {kind} links ({r.stderr.strip()})"
            subprocess.run(ipn + ["del", "mpxpk"], capture_output=True)
        return ""
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _version_key(release: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-]", release))


def debian_kernels() -> list[tuple[str, str]]:
    """(vmlinuz path, release) of installed Debian amd64 kernels whose modules include ipvlan,
    newest first."""
    found = []
    for path in glob.glob("/boot/vmlinuz-*-amd64"):
        release = os.path.basename(path)[len("vmlinuz-"):]
        mods = f"/lib/modules/{release}/kernel/drivers/net/ipvlan"
        if glob.glob(os.path.join(mods, "ipvlan.ko*")):
            found.append((path, release))
    return sorted(found, key=lambda pr: _version_key(pr[1]), reverse=True)


def pick_kernel(explicit: Optional[str] = None) -> tuple[str, str]:
    """The kernel file to boot and its release. Raises RuntimeError saying what to install."""
    if explicit:
        path = os.path.abspath(explicit)
        if not os.path.isfile(path):
            raise RuntimeError(f"kernel {path} does not exist")
        release = os.path.basename(path)[len("vmlinuz-"):] if os.path.basename(path).startswith("vmlinuz-") else ""
        if not release or not os.path.isdir(f"/lib/modules/{release}"):
            raise RuntimeError(f"no modules for {path} under /lib/modules/{release or '?'}: the guest could "
                               "not load ipvlan; name a /boot/vmlinuz-<release> whose modules are installed")
        return path, release
    kernels = debian_kernels()
    if not kernels:
        raise RuntimeError("no Debian kernel with ipvlan modules (/boot/vmlinuz-*-amd64 and "
                           "/lib/modules/<release>/kernel/drivers/net/ipvlan): apt-get install linux-image-amd64")
    return kernels[0]
