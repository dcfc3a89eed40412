"""`uninstall()`: remove what install placed, put back what it replaced; the node's own configs stay."""
from __future__ import annotations

import os
from typing import Optional

from .kubeconfig import CA_NAME, KUBECONFIG_NAME, TOKEN_NAME
from .launchers import is_our_launcher
from .layout import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, DEFAULT_CONF_NAME, STATE_SUBDIR, host_join, in_root
from .network import is_multiplex_config, read_netconf
from .record import InstallRecord, remove_placed
from .report import InstallError, InstallReport
from .runtime import remove_runtime


def uninstall(root: str = "/", bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str = DEFAULT_CONF_DIR, *,
              conf_name: str = DEFAULT_CONF_NAME, node_devices: Optional[bool] = None,
              netns: Optional[str] = None) -> InstallReport:
    """Remove what install placed and put back what it replaced; the node's own configs are untouched.

    Works from install's record; without one (lost, or an install by hand) it removes only what is
    recognizably ours: our conflist if it is a multiplex config, launchers carrying our mark, the
    kubeconfig files in multiplex.d. Running it twice is fine.

    Then the node devices multiplex's overlays and BGP made (`remove_node_devices`), when
    `node_devices` (default: when this process runs in the node's network namespace, `on_the_node`,
    so an uninstall of a test root never touches the machine's links); `netns`: a namespace path
    to clean instead of this one (tests).
    """
    report = InstallReport(root=root)
    if not os.path.isdir(root):
        raise InstallError(f"root {root} is not a directory")
    record = InstallRecord.load(root, conf_dir)
    conf_host = host_join(conf_dir, conf_name)
    files = dict(record.files) or _recognizably_ours(root, bin_dir, conf_dir, conf_host)
    # the conflist first: from then on the runtime no longer calls multiplex
    for host_path in sorted(files, key=lambda p: (p != conf_host, p)):
        remove_placed(root, host_path, files[host_path], report)
    if record.runtime_dir:
        remove_runtime(root, record.runtime_dir, report)
    record.remove()
    sub_host = host_join(conf_dir, STATE_SUBDIR)
    sub_real = in_root(root, sub_host, follow_last=False)
    for d in (os.path.join(sub_real, "backup"), sub_real):
        try:
            os.rmdir(d)
        except OSError:
            pass
    if os.path.isdir(sub_real):
        report.warnings.append(f"{sub_host} holds files install did not place; left in place")
    if node_devices if node_devices is not None else on_the_node(root):
        remove_node_devices(report, netns)
    return report


def on_the_node(root: str) -> bool:
    """Whether this process is in the network namespace of the node whose file system `root` is:
    `root` is `/`, or `<root>/proc/1/ns/net` (the node's init, through a `--root=/host` mount of
    a privileged pod) is this process's namespace (a pod with hostNetwork)."""
    if os.path.realpath(root) == "/":
        return True
    try:
        theirs, mine = os.stat(os.path.join(root, "proc/1/ns/net")), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)


def remove_node_devices(report: InstallReport, netns: Optional[str] = None) -> list[str]:
    """The links, rules and routes multiplex made on the node (multiplex/controllers/overlay_devices.py
    remove_all: overlay bridges and VXLAN devices, recognized by their alias and names; mpxbgp0;
    mpxwg0 with its rules and table 47890), each a report line `removed`. A bridge that still had
    pods is removed too (their overlay networks end with multiplex) and named in a warning. A
    netlink failure is a warning: the files are already gone."""
    from ...controllers.overlay_devices import overlays, remove_all
    from ...netlink.handle import Handle

    try:
        with Handle(netns) as h:
            busy = sorted(o.bridge or o.vxlan for o in overlays(h) if o.ports)
            removed = remove_all(h)
    except Exception as e:   # noqa: BLE001 - whatever netlink says, the report carries it
        report.warnings.append(f"node devices not removed: {e}")
        return []
    for what in removed:
        report.add(f"node: {what}", "removed")
    if busy:
        report.warnings.append(f"overlay bridges removed while pods were still on them: {', '.join(busy)}")
    return removed


def _recognizably_ours(root: str, bin_dir: str, conf_dir: str, conf_host: str) -> dict[str, dict]:
    """Without a record: our conflist if it is a multiplex config, launchers with our mark, the
    node kubeconfig files (none has a backup)."""
    files: dict[str, dict] = {}
    conf_real = in_root(root, conf_host, follow_last=False)
    try:
        if os.path.lexists(conf_real) and is_multiplex_config(read_netconf(conf_real)):
            files[conf_host] = {"backup": None}
    except InstallError:
        pass
    bin_real = in_root(root, bin_dir)
    if os.path.isdir(bin_real):
        for name in sorted(os.listdir(bin_real)):
            if is_our_launcher(os.path.join(bin_real, name)):
                files[host_join(bin_dir, name)] = {"backup": None}
    for name in (KUBECONFIG_NAME, TOKEN_NAME, CA_NAME):
        files[host_join(conf_dir, STATE_SUBDIR, name)] = {"backup": None}
    return files
