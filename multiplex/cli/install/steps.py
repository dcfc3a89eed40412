"""`install()`: the steps that put multiplex on a node, in order. Everything is decided and
checked before anything is written; the conflist is written last."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from .conflist import check_conflist, choose_cni_version, multiplex_conflist
from .files import json_bytes
from .kubeconfig import SERVICE_ACCOUNT_DIR, node_kubeconfig
from .launchers import daemon_files, launcher_files
from .layout import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, DEFAULT_CONF_NAME, host_join, in_root
from .network import choose_cluster_network, is_multiplex_config, read_netconf
from .record import InstallRecord, place_file, remove_placed
from .report import InstallError, InstallReport
from .runtime import choose_runtime, place_runtime

#: the node daemon's socket, as `multiplex daemon --socket` and `multiplex install --socket` default
DEFAULT_SOCKET = "/run/multiplex/multiplex.sock"


def install(root: str = "/", bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str = DEFAULT_CONF_DIR,
            python: Optional[str] = None, *,
            conf_name: str = DEFAULT_CONF_NAME,
            cluster_network: Optional[str] = None,
            cni_version: Optional[str] = None,
            kubeconfig_from_sa: Optional[bool] = None,
            kubeconfig: Optional[str] = None,
            service_account_dir: str = SERVICE_ACCOUNT_DIR,
            environ: Optional[Mapping[str, str]] = None,
            runtime_src: Optional[str] = None,
            runtime_dir: Optional[str] = None,
            options: Optional[Mapping[str, Any]] = None,
            launchers: Optional[Mapping[str, Any]] = None,
            daemon: bool = False,
            socket_path: str = DEFAULT_SOCKET,
            fallback: str = "exec") -> InstallReport:
    """Put multiplex on the node under `root`; run again, it changes nothing.

    root                the host's file system (`/host` in the DaemonSet). Nothing outside it is written.
    bin_dir, conf_dir   the CNI bin and config directories as the host (and its runtime) sees them.
    python              the interpreter the launchers exec, as the host sees it. Default: the
                        mirrored runtime's `bin/python3` with runtime_src, else this interpreter.
    conf_name           our conflist's file name; it must sort ahead of every other config.
    cluster_network     the network for eth0. Default: the name of the first config in conf_dir
                        that is not ours (required when there is none).
    cni_version         our conflist's cniVersion. Default: the cluster network config's.
    kubeconfig_from_sa  write a kubeconfig from the service account: None = when running in a pod,
                        True = required (error outside a pod), False = never.
    kubeconfig          a kubeconfig path (host view) to name in the conflist instead of writing one.
    service_account_dir where the pod's token and ca.crt are (tests point it elsewhere).
    environ             KUBERNETES_SERVICE_HOST/PORT come from here (default os.environ).
    runtime_src         a directory (in this file system, not under root) holding a self-contained
                        Python with multiplex installed; mirrored to runtime_dir under root.
    runtime_dir         where the runtime goes on the host (default: the same path as runtime_src).
    options             more fields for the multiplex plugin entry (namespaceIsolation,
                        globalNamespaces, defaultNetworks, logFile, logLevel, ...).
    launchers           name -> "module:attr" (or Launcher) instead of the installed entry points.
    daemon              daemon mode: `multiplex` in bin_dir is the shim (multiplex/daemon/shim.py)
                        that forwards every call to the node daemon at `socket_path` (as the host
                        sees it); the other launchers stay as they are.
    fallback            daemon mode, when the daemon is not there: "exec" runs the call in-process
                        through `multiplex-inprocess` (today's launcher, written beside the shim),
                        "fail" answers CNI code 11 naming the socket.
    Switching modes (run again with or without daemon) replaces the files and removes the ones no
    longer wanted (`multiplex-inprocess`); uninstall removes all of them.
    """
    environ = os.environ if environ is None else environ
    report = InstallReport(root=root)
    _check_arguments(root, bin_dir, conf_dir, conf_name)
    conf_real = in_root(root, conf_dir)
    in_root(root, bin_dir)  # refuses a bin_dir that resolves outside root before anything is written
    record = InstallRecord.load(root, conf_dir)
    conf_host = host_join(conf_dir, conf_name)

    # --- decide everything before writing anything -------------------------------------------
    _refuse_a_foreign_conflist(os.path.join(conf_real, conf_name), conf_host, record)
    net = choose_cluster_network(conf_real, conf_dir, conf_name, cluster_network)
    report.cluster_network, report.cluster_network_file = net.name, net.file
    version = choose_cni_version(cni_version, net)
    runtime_dir, python = choose_runtime(root, runtime_src, runtime_dir, python)

    # host path -> (bytes, mode), in writing order
    desired = (daemon_files(bin_dir, python, launchers, socket_path, fallback) if daemon
               else launcher_files(bin_dir, python, launchers))
    report.kubeconfig, kube_files = node_kubeconfig(conf_dir, kubeconfig, kubeconfig_from_sa,
                                                    service_account_dir, environ)
    desired.update(kube_files)
    conflist = multiplex_conflist(version, net.name, conf_dir, bin_dir, net.capabilities, report.kubeconfig, options)
    check_conflist(conflist)
    desired[conf_host] = (json_bytes(conflist), 0o644)  # last: the runtime sees it only when all is ready
    report.conflist = conf_host

    # --- write -------------------------------------------------------------------------------
    place_runtime(root, runtime_src, runtime_dir, record, report)
    if not os.access(in_root(root, python), os.X_OK):
        report.warnings.append(f"interpreter {python} not found under {root}: the launchers need it on the host")
    for host_path, (data, mode) in desired.items():
        place_file(root, bin_dir, conf_dir, host_path, data, mode, record, report)
    for host_path in sorted(set(record.files) - set(desired)):  # placed before, not wanted now
        remove_placed(root, host_path, record.files.pop(host_path), report)
    record.save()
    return report


def _check_arguments(root: str, bin_dir: str, conf_dir: str, conf_name: str) -> None:
    if not os.path.isdir(root):
        raise InstallError(f"root {root} is not a directory")
    for label, d in (("bin_dir", bin_dir), ("conf_dir", conf_dir)):
        if not d.startswith("/"):
            raise InstallError(f"{label} must be an absolute path (as the host sees it), got {d!r}")
    if not conf_name.endswith(".conflist") or "/" in conf_name or conf_name.startswith("."):
        raise InstallError(f"conf_name {conf_name!r} must be a plain file name ending in .conflist")


def _refuse_a_foreign_conflist(conf_file_real: str, conf_host: str, record: InstallRecord) -> None:
    """A file with our conflist's name that we did not place and that is no multiplex config is a
    node config of someone else's: install will not replace it."""
    if not os.path.lexists(conf_file_real) or conf_host in record.files:
        return
    try:
        existing_is_ours = is_multiplex_config(read_netconf(conf_file_real))
    except InstallError:
        existing_is_ours = False
    if not existing_is_ours:
        raise InstallError(f"{conf_host} exists and is not a multiplex config; install will not replace "
                           "a node config it did not write. Pass another conf_name")
