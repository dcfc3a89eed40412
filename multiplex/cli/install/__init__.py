"""`multiplex install` and `multiplex uninstall`: put multiplex on a node, and take it off again.

What install does (steps.py), every path as the host sees it and written under `root` (the host's
file system as the DaemonSet mounts it, `/host`; `/` when run on the node itself):

1. picks the cluster network - the node's first CNI config that is not ours (network.py);
2. mirrors a self-contained Python runtime onto the host when given one (runtime.py);
3. writes a launcher into the CNI bin directory for `multiplex` and every plugin of the
   `multiplex.plugins` entry-point group: a shell script that execs Python (launchers.py);
4. writes a node kubeconfig, with the service account's token and CA, into
   `conf_dir/multiplex.d/` when running in a pod (kubeconfig.py);
5. writes our conflist, sorted ahead of the node's own config and naming it `clusterNetwork`,
   last, so the runtime sees multiplex only once everything it calls is in place (conflist.py).

Every file is written atomically and only when its bytes or mode differ (files.py), so a second
run changes nothing. What install placed, and any file of someone else's it replaced, is in the
install record (record.py); uninstall (uninstall.py) removes exactly that and puts replaced files
back. Paths resolve inside root the way a chroot would (layout.py). loop.py is `install --every`,
report.py the error and the report both return. The click commands are in cli/commands.py.

Import from the module of a concern. The names below are kept here for callers outside the
command line (tests/unit/test_manifests.py, tests/unit/test_input_limits.py). Stdlib only.
"""
from .launchers import Launcher, launcher_script
from .layout import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, DEFAULT_CONF_NAME
from .report import InstallError

__all__ = ["DEFAULT_BIN_DIR", "DEFAULT_CONF_DIR", "DEFAULT_CONF_NAME", "InstallError", "Launcher",
           "launcher_script"]
