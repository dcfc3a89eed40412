"""`uninstall()`: remove what install placed, put back what it replaced; the node's own configs stay."""
from __future__ import annotations

import os

from .kubeconfig import CA_NAME, KUBECONFIG_NAME, TOKEN_NAME
from .launchers import is_our_launcher
from .layout import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, DEFAULT_CONF_NAME, STATE_SUBDIR, host_join, in_root
from .network import is_multiplex_config, read_netconf
from .record import InstallRecord, remove_placed
from .report import InstallError, InstallReport
from .runtime import remove_runtime


def uninstall(root: str = "/", bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str = DEFAULT_CONF_DIR, *,
              conf_name: str = DEFAULT_CONF_NAME) -> InstallReport:
    """Remove what install placed and put back what it replaced; the node's own configs are untouched.

    Works from install's record; without one (lost, or an install by hand) it removes only what is
    recognizably ours: our conflist if it is a multiplex config, launchers carrying our mark, the
    kubeconfig files in multiplex.d. Running it twice is fine.
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
    return report


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
