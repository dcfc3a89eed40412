"""`multiplex install` and `multiplex uninstall`: put multiplex on a node, and take it off again.

What install does, every path relative to `root` (the host's file system as the DaemonSet mounts
it, `/host`; `/` when run on the node itself):

1. mirrors a Python runtime into `runtime_dir` when `runtime_src` is given (the container image's
   self-contained Python with multiplex installed), so the launchers have an interpreter on the host;
2. writes a launcher into `bin_dir` for `multiplex` and for every plugin of the `multiplex.plugins`
   entry-point group (each delegate, `multiplex-ipam`): a small shell script that execs `python`
   with the plugin's entry;
3. writes a node kubeconfig (plus the service account's token and CA beside it) into
   `conf_dir/multiplex.d/` when running in a pod;
4. writes `conf_dir/00-multiplex.conflist`, sorted ahead of the node's own default network config
   and naming that network as `clusterNetwork`, last, so the runtime sees multiplex only once
   everything it calls is in place.

Every file is written atomically (temporary file + rename) and only when its bytes or mode differ,
so a second run changes nothing. What install placed (and any file of someone else's it replaced)
is recorded in `conf_dir/multiplex.d/install.json`; uninstall removes exactly that, puts replaced
files back, and never touches the node's own network config. Paths are resolved inside `root` the
way a chroot would (an absolute symlink under root points under root), so nothing outside `root`
is ever written.

The click commands (`multiplex install`, `multiplex uninstall`) in multiplex/cli/commands.py are thin
wrappers around `install()` and `uninstall()`. Stdlib only.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional
from urllib.parse import quote

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CONF_NAME = "00-multiplex.conflist"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
STATE_SUBDIR = "multiplex.d"
KUBECONFIG_NAME = "multiplex.kubeconfig"
TOKEN_NAME = "token"
CA_NAME = "ca.crt"
STATE_NAME = "install.json"
RUNTIME_MARKER = ".multiplex-runtime"
PLUGIN_GROUP = "multiplex.plugins"
META_PLUGIN = "multiplex"
#: Extensions libcni (and so containerd and CRI-O) loads from the config directory.
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")
LAUNCHER_MARK = "# multiplex launcher"

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")  # fullmatch: "$" would let a trailing newline in
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")  # fullmatch, as _TARGET
#: Top-level fields of the conflist's plugin entry that `options` may not override.
_CORE_FIELDS = ("type", "name", "cniVersion", "clusterNetwork", "kubeconfig", "confDir", "binDir",
                "capabilities")


class InstallError(Exception):
    """Install or uninstall cannot go on: what is wrong, where, and what would be right."""


# ----------------------------------------------------------------------------------------------
# the report


@dataclass
class FileChange:
    path: str    #: the path as the host sees it (without root)
    action: str  #: created, updated, unchanged, removed, restored, backed-up


@dataclass
class InstallReport:
    root: str
    changes: list[FileChange] = field(default_factory=list)
    cluster_network: Optional[str] = None  #: the network named clusterNetwork
    cluster_network_file: Optional[str] = None  #: the node config it was taken from, if any
    conflist: Optional[str] = None  #: our conflist (host path)
    kubeconfig: Optional[str] = None  #: the kubeconfig named in our conflist (host path)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)

    def paths(self, action: str) -> list[str]:
        return [c.path for c in self.changes if c.action == action]

    def add(self, path: str, action: str) -> None:
        self.changes.append(FileChange(path, action))

    def lines(self) -> list[str]:
        """A human summary, one line per file, then the warnings."""
        out = [f"{c.action:<10} {c.path}" for c in self.changes]
        if self.cluster_network:
            src = f" (from {self.cluster_network_file})" if self.cluster_network_file else ""
            out.append(f"clusterNetwork {self.cluster_network}{src}")
        out.extend(f"warning: {w}" for w in self.warnings)
        out.append("changed" if self.changed else "unchanged: nothing to do")
        return out

    def to_dict(self) -> dict:
        return {"root": self.root, "changed": self.changed,
                "changes": [{"path": c.path, "action": c.action} for c in self.changes],
                "clusterNetwork": self.cluster_network, "clusterNetworkFile": self.cluster_network_file,
                "conflist": self.conflist, "kubeconfig": self.kubeconfig, "warnings": self.warnings}


# ----------------------------------------------------------------------------------------------
# paths inside root


def in_root(root: str, path: str, follow_last: bool = True) -> str:
    """`path` (as the host sees it) resolved inside `root` the way a chroot would.

    Symlinks are followed with absolute targets re-rooted under `root` and `..` clamped at it, so
    the answer never leaves `root`. With follow_last=False a symlink in the last component is not
    followed (we replace the link itself, never write through it).
    """
    root = os.path.realpath(root)
    pending = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if os.path.islink(here) and (pending or follow_last):
            hops += 1
            if hops > 40:
                raise InstallError(f"too many levels of symbolic links resolving {path} under {root}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        done.append(part)
    return os.path.join(root, *done)


def _join(*parts: str) -> str:
    return os.path.normpath(os.path.join(*parts))


# ----------------------------------------------------------------------------------------------
# atomic, idempotent file writes


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    d, base = os.path.split(path)
    os.makedirs(d, exist_ok=True)
    # the temporary name ends in neither .conf, .conflist nor .json: a runtime never loads it
    tmp = os.path.join(d, f".{base}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def put_file(path: str, data: bytes, mode: int) -> str:
    """Make `path` hold `data` with `mode`. Returns created, updated or unchanged.

    An unchanged file is not touched at all (same bytes, same mtime)."""
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
        if os.path.isdir(path) and not os.path.islink(path):
            raise InstallError(f"{path} is a directory; expected a file there")
        os.unlink(path)
        _write_atomic(path, data, mode)
        return "updated"
    old = _read(path)
    if old is None:
        _write_atomic(path, data, mode)
        return "created"
    if old == data:
        if stat.S_IMODE(os.stat(path).st_mode) == mode:
            return "unchanged"
        os.chmod(path, mode)
        return "updated"
    _write_atomic(path, data, mode)
    return "updated"


# ----------------------------------------------------------------------------------------------
# launchers


@dataclass(frozen=True)
class Launcher:
    name: str    #: file name in the CNI bin dir, the CNI type (`multiplex-bridge`)
    target: str  #: "module:attr"
    kind: str    #: "script" (a console-script main) or "plugin" (a Plugin object run by skel.main)


def discover_launchers() -> dict[str, Launcher]:
    """Every plugin of the `multiplex.plugins` group, plus `multiplex` itself.

    A plugin with a console script of the same name (pyproject's [project.scripts]) is launched
    through that script's function, which is the plugin's process entry (`multiplex.entry:main`
    also serves the CLI and keeps start-up lean); otherwise the plugin object is run with
    `multiplex.cni.skel.main`. The group is read as the registry reads it: our distribution first,
    every installed distribution when ours has none.
    """
    from importlib import metadata

    plugins: dict[str, str] = {}
    scripts: dict[str, str] = {}
    try:
        for ep in metadata.distribution("multiplex").entry_points:
            if ep.group == PLUGIN_GROUP:
                plugins[ep.name] = ep.value
            elif ep.group == "console_scripts":
                scripts[ep.name] = ep.value
    except metadata.PackageNotFoundError:
        pass
    if not plugins:
        for ep in metadata.entry_points(group=PLUGIN_GROUP):
            plugins.setdefault(ep.name, ep.value)
    names = set(plugins) | {META_PLUGIN}
    out: dict[str, Launcher] = {}
    for name in sorted(names):
        if name in scripts:
            out[name] = Launcher(name, scripts[name], "script")
        elif name in plugins:
            out[name] = Launcher(name, plugins[name], "plugin")
        else:
            raise InstallError(f"no entry for {name!r}: neither a console script nor a {PLUGIN_GROUP} "
                               "entry point; is the multiplex package installed?")
    return out


def _launchers_from(spec: Mapping[str, Any]) -> dict[str, Launcher]:
    out = {}
    for name, value in spec.items():
        out[name] = value if isinstance(value, Launcher) else Launcher(name, str(value), "plugin")
    return out


def launcher_script(launcher: Launcher, python: str) -> str:
    """The launcher's text: a POSIX shell script that execs `python` on the plugin's entry.

    `-I` (isolated mode): the runtime's environment (PYTHONPATH, PYTHONHOME) and the current
    directory never change what gets imported.
    """
    if not _NAME.fullmatch(launcher.name) or ".." in launcher.name:
        raise InstallError(f"invalid launcher name {launcher.name!r}: a CNI type is a plugin name, not a path")
    if not _TARGET.fullmatch(launcher.target):
        raise InstallError(f"invalid entry {launcher.target!r} for {launcher.name}: expected 'module:attribute'")
    module, _, attr = launcher.target.partition(":")
    head, _, last = attr.rpartition(".")
    if launcher.kind == "script":
        code = (f"import sys; from {module} import {attr}; sys.exit({attr}())" if not head else
                f"import sys; import {module} as m; sys.exit(m.{attr}())")
    elif launcher.kind == "plugin":
        code = (f"from multiplex.cni.skel import main; from {module} import {attr}; main({attr})" if not head
                else f"from multiplex.cni.skel import main; import {module} as m; main(m.{attr})")
    else:
        raise InstallError(f"unknown launcher kind {launcher.kind!r} for {launcher.name}")
    return ("#!/bin/sh\n"
            f"{LAUNCHER_MARK} for the CNI plugin {launcher.name} ({launcher.target}).\n"
            "# Written by `multiplex install`, which rewrites it; `multiplex uninstall` removes it.\n"
            f"exec {shlex.quote(python)} -I -c {shlex.quote(code)} \"$@\"\n")


def is_our_launcher(path: str) -> bool:
    data = _read(path)
    return data is not None and data.startswith(b"#!/bin/sh\n" + LAUNCHER_MARK.encode())


# ----------------------------------------------------------------------------------------------
# the node's cluster network


@dataclass
class ClusterNetwork:
    name: str
    cni_version: Optional[str]
    capabilities: dict[str, bool]
    file: Optional[str] = None  #: host path of the config it came from


def config_files(conf_dir_real: str) -> list[str]:
    """The config file names a runtime following libcni considers, in the order it does."""
    try:
        names = os.listdir(conf_dir_real)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(CONFIG_EXTENSIONS)
                  and os.path.isfile(os.path.join(conf_dir_real, n)))


def read_netconf(path: str) -> dict:
    """A plugin config or conflist file, parsed. InstallError says what is wrong with it."""
    data = _read(path)
    if data is None:
        raise InstallError(f"cannot read {path}")
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InstallError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(conf, dict):
        raise InstallError(f"{path} is not a JSON object")
    return conf


def _plugins_of(conf: dict) -> list[dict]:
    if isinstance(conf.get("plugins"), list):
        return [p for p in conf["plugins"] if isinstance(p, dict)]
    return [conf]


def is_multiplex_config(conf: dict) -> bool:
    plugins = _plugins_of(conf)
    return bool(plugins) and plugins[0].get("type") == META_PLUGIN


def cluster_network_of(conf: dict, where: str) -> ClusterNetwork:
    """Name, cniVersion and declared capabilities of a plugin config or conflist."""
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise InstallError(f"{where} has no network name (field: name); a CNI config must name its network")
    if "plugins" in conf:
        if not isinstance(conf["plugins"], list) or not conf["plugins"]:
            raise InstallError(f"{where}: plugins must be a non-empty list (field: plugins)")
    elif not conf.get("type"):
        raise InstallError(f"{where} is neither a plugin config (type) nor a conflist (plugins)")
    caps: dict[str, bool] = {}
    for plugin in _plugins_of(conf):
        declared = plugin.get("capabilities")
        if isinstance(declared, dict):
            for cap, on in declared.items():
                if on is True:
                    caps[str(cap)] = True
    version = conf.get("cniVersion")
    return ClusterNetwork(name=name, cni_version=version if isinstance(version, str) else None,
                          capabilities=dict(sorted(caps.items())))


def find_cluster_network(conf_dir_real: str, conf_dir: str, ours: str) -> Optional[ClusterNetwork]:
    """The node's default network, as Multus' auto-generated config picks it: the first config in
    lexical order that is not ours (a leftover multiplex config under another name is skipped too).
    None when there is none. A broken first config is an error: the runtime would fail on it too."""
    for name in config_files(conf_dir_real):
        if name == ours:
            continue
        path = os.path.join(conf_dir_real, name)
        conf = read_netconf(path)
        if is_multiplex_config(conf):
            continue
        net = cluster_network_of(conf, os.path.join(conf_dir, name))
        net.file = os.path.join(conf_dir, name)
        return net
    return None


# ----------------------------------------------------------------------------------------------
# the kubeconfig from the service account


@dataclass
class ServiceAccount:
    server: str
    token: bytes
    ca: bytes


def service_account(sa_dir: str, environ: Mapping[str, str]) -> Optional[ServiceAccount]:
    """The pod's service account credentials, or None when not running in a pod."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    token = _read(os.path.join(sa_dir, "token"))
    ca = _read(os.path.join(sa_dir, "ca.crt"))
    if not host or token is None or ca is None:
        return None
    port = environ.get("KUBERNETES_SERVICE_PORT") or "443"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return ServiceAccount(server=f"https://{host}:{port}", token=token.strip(), ca=ca)


def kubeconfig_text(server: str, ca_file: str, token_file: str) -> str:
    """A kubeconfig (YAML) that reads the token from a file, so a rotated token needs no rewrite
    of the kubeconfig itself. Strings are JSON-quoted, which YAML reads as they are."""
    q = json.dumps
    return ("# Written by `multiplex install` from the multiplex service account. Do not edit.\n"
            "apiVersion: v1\n"
            "kind: Config\n"
            "clusters:\n"
            "- name: local\n"
            "  cluster:\n"
            f"    server: {q(server)}\n"
            f"    certificate-authority: {q(ca_file)}\n"
            "users:\n"
            "- name: multiplex\n"
            "  user:\n"
            f"    tokenFile: {q(token_file)}\n"
            "contexts:\n"
            "- name: multiplex\n"
            "  context:\n"
            "    cluster: local\n"
            "    user: multiplex\n"
            "current-context: multiplex\n")


# ----------------------------------------------------------------------------------------------
# our conflist


def multiplex_conflist(cni_version: str, cluster_network: str, conf_dir: str, bin_dir: str,
                       capabilities: Mapping[str, bool], kubeconfig: Optional[str] = None,
                       options: Optional[Mapping[str, Any]] = None) -> dict:
    """The conflist the runtime runs: one plugin, `multiplex`, delegating eth0 to the cluster network.

    The runtime injects `name` and `cniVersion` into the plugin entry when it calls it. The
    `capabilities` are the cluster network's, so the runtime passes multiplex the runtimeConfig
    (portMappings, bandwidth, ...) the cluster network expects and multiplex hands it on.
    """
    plugin: dict[str, Any] = {"type": META_PLUGIN, "clusterNetwork": cluster_network, "confDir": conf_dir,
                              "binDir": bin_dir}
    if kubeconfig:
        plugin["kubeconfig"] = kubeconfig
    for key, value in sorted((options or {}).items()):
        if key in _CORE_FIELDS:
            raise InstallError(f"option {key!r} is set by install itself; pass it through its own parameter")
        plugin[key] = value
    if capabilities:
        plugin["capabilities"] = dict(sorted(capabilities.items()))
    return {"cniVersion": cni_version, "name": META_PLUGIN, "plugins": [plugin]}


def check_conflist(conflist: dict) -> None:
    """Our plugin entry, as the runtime hands it to multiplex (name and cniVersion injected), must
    pass schemas/multiplex.json: a misspelt option fails here, not on the node's first pod."""
    from ..util import schema

    plugin = dict(conflist["plugins"][0], name=conflist["name"], cniVersion=conflist["cniVersion"])
    problems = schema.errors("multiplex", plugin, prefix="$.plugins[0]")
    if problems:
        raise InstallError("the multiplex config install would write is invalid: " + "; ".join(problems))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


# ----------------------------------------------------------------------------------------------
# install state: what we placed and what we replaced


def _state_path(root: str, conf_dir: str) -> tuple[str, str]:
    host = _join(conf_dir, STATE_SUBDIR, STATE_NAME)
    return host, in_root(root, host, follow_last=False)


def _load_state(real: str) -> dict:
    data = _read(real)
    if data is None:
        return {"files": {}, "runtimeDir": None}
    try:
        state = json.loads(data)
        state.setdefault("files", {})
        state.setdefault("runtimeDir", None)
        return state
    except ValueError:
        raise InstallError(f"{real} is not valid JSON; it records what install placed. Remove it and "
                           "the files multiplex placed by hand, or restore it") from None


def _backup_host_path(conf_dir: str, host_path: str) -> str:
    return _join(conf_dir, STATE_SUBDIR, "backup", quote(host_path, safe=""))


# ----------------------------------------------------------------------------------------------
# runtime mirroring


def mirror_tree(src: str, dst: str, report: InstallReport, host_dst: str) -> None:
    """Make `dst` an exact copy of `src` (files, modes, symlinks, mtimes), writing only what differs.

    A file whose size and mtime match is taken as unchanged (as rsync does). `dst` must be ours:
    empty, missing, or holding our marker file."""
    check_runtime_dir(src, dst, host_dst)
    os.makedirs(dst, exist_ok=True)
    counts = {"created": 0, "updated": 0, "removed": 0}
    for cur, dirs, files in os.walk(src):
        rel = os.path.relpath(cur, src)
        out = dst if rel == "." else os.path.join(dst, rel)
        wanted = set(dirs) | set(files)
        if rel == ".":
            wanted.add(RUNTIME_MARKER)
        for name in sorted(os.listdir(out)):
            if name not in wanted:
                _remove_any(os.path.join(out, name))
                counts["removed"] += 1
        for name in list(dirs):
            s, d = os.path.join(cur, name), os.path.join(out, name)
            if os.path.islink(s):
                dirs.remove(name)  # a link to a directory is copied as a link, never descended
                if not _same_link(s, d):
                    counts[_mirror_link(s, d)] += 1
                continue
            if os.path.lexists(d) and (os.path.islink(d) or not os.path.isdir(d)):
                _remove_any(d)
            if not os.path.isdir(d):
                os.mkdir(d)
                counts["created"] += 1
            os.chmod(d, stat.S_IMODE(os.lstat(s).st_mode))
        for name in files:
            s, d = os.path.join(cur, name), os.path.join(out, name)
            if os.path.islink(s):
                if not _same_link(s, d):
                    counts[_mirror_link(s, d)] += 1
                continue
            st = os.stat(s)
            if not stat.S_ISREG(st.st_mode):
                continue  # sockets, fifos: nothing a runtime needs
            try:
                dt = os.lstat(d)
            except FileNotFoundError:
                dt = None
            if (dt is not None and stat.S_ISREG(dt.st_mode) and dt.st_size == st.st_size
                    and dt.st_mtime_ns == st.st_mtime_ns and stat.S_IMODE(dt.st_mode) == stat.S_IMODE(st.st_mode)):
                continue
            if dt is not None and stat.S_ISDIR(dt.st_mode):
                _remove_any(d)
            with open(s, "rb") as f:
                _write_atomic(d, f.read(), stat.S_IMODE(st.st_mode))
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
            counts["created" if dt is None else "updated"] += 1
    marker = os.path.join(dst, RUNTIME_MARKER)
    mark_action = put_file(marker, b"placed by multiplex install; removed by multiplex uninstall\n", 0o644)
    if mark_action == "created":
        report.add(host_dst, "created")
    elif any(counts.values()):
        report.add(host_dst, "updated")
    else:
        report.add(host_dst, "unchanged")


def check_runtime_dir(src: str, dst: str, host_dst: str) -> None:
    """Refuse to mirror into a place that is not ours (before anything is written)."""
    if not os.path.isdir(src):
        raise InstallError(f"runtime source {src} is not a directory")
    if os.path.lexists(dst):
        if os.path.islink(dst) or not os.path.isdir(dst):
            raise InstallError(f"{host_dst} exists and is not a directory; move it away or choose another runtime_dir")
        if os.listdir(dst) and not os.path.exists(os.path.join(dst, RUNTIME_MARKER)):
            raise InstallError(f"{host_dst} exists and was not placed by multiplex install (no {RUNTIME_MARKER}); "
                               "move it away or choose another runtime_dir")


def _same_link(s: str, d: str) -> bool:
    return os.path.islink(d) and os.readlink(d) == os.readlink(s)


def _mirror_link(s: str, d: str) -> str:
    existed = os.path.lexists(d)
    if existed:
        _remove_any(d)
    os.symlink(os.readlink(s), d)
    return "updated" if existed else "created"


def _remove_any(path: str) -> None:
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# ----------------------------------------------------------------------------------------------
# install


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
            launchers: Optional[Mapping[str, Any]] = None) -> InstallReport:
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
    """
    environ = os.environ if environ is None else environ
    report = InstallReport(root=root)
    if not os.path.isdir(root):
        raise InstallError(f"root {root} is not a directory")
    for label, d in (("bin_dir", bin_dir), ("conf_dir", conf_dir)):
        if not d.startswith("/"):
            raise InstallError(f"{label} must be an absolute path (as the host sees it), got {d!r}")
    if not conf_name.endswith(".conflist") or "/" in conf_name or conf_name.startswith("."):
        raise InstallError(f"conf_name {conf_name!r} must be a plain file name ending in .conflist")

    conf_real = in_root(root, conf_dir)
    in_root(root, bin_dir)  # refuses a bin_dir that resolves outside root before anything is written
    _, state_real = _state_path(root, conf_dir)
    state = _load_state(state_real)
    conf_host = _join(conf_dir, conf_name)
    conf_file_real = os.path.join(conf_real, conf_name)

    # --- decide everything before writing anything -------------------------------------------
    if os.path.lexists(conf_file_real) and conf_host not in state["files"]:
        try:
            existing_is_ours = is_multiplex_config(read_netconf(conf_file_real))
        except InstallError:
            existing_is_ours = False
        if not existing_is_ours:
            raise InstallError(f"{conf_host} exists and is not a multiplex config; install will not replace "
                               "a node config it did not write. Pass another conf_name")
    node_net = find_cluster_network(conf_real, conf_dir, conf_name)
    if node_net is not None:
        if not conf_name < os.path.basename(node_net.file or ""):
            raise InstallError(f"{conf_name} does not sort ahead of {node_net.file}: the runtime would keep using "
                               f"{node_net.file}. Pass a conf_name that sorts first, e.g. 00-0-multiplex.conflist")
    if cluster_network is not None:
        net = ClusterNetwork(name=cluster_network, cni_version=None, capabilities={})
        named = _find_network_by_name(conf_real, conf_dir, conf_name, cluster_network)
        if named is not None:
            net = named
    elif node_net is not None:
        net = node_net
    else:
        raise InstallError(f"no cluster network: {conf_dir} holds no CNI config (.conf, .conflist, .json) other "
                           "than ours. Install the cluster's default network (flannel, calico, ...) first, or "
                           "name one with cluster_network (--cluster-network)")
    report.cluster_network, report.cluster_network_file = net.name, net.file

    version = cni_version or net.cni_version
    from ..cni.version import SUPPORTED, CURRENT

    if version is None:
        version = CURRENT
    if version not in SUPPORTED:
        where = net.file or "the cluster network"
        raise InstallError(f"{where} has cniVersion {version!r}, which multiplex does not speak "
                           f"(supported: {', '.join(SUPPORTED)}); pass cni_version (--cni-version) to choose one")

    if runtime_src and not runtime_dir:
        runtime_dir = os.path.abspath(runtime_src)
    if python is None:
        python = _join(runtime_dir, "bin", "python3") if runtime_src else sys.executable
    if not python.startswith("/"):
        raise InstallError(f"python must be an absolute path as the host sees it, got {python!r}")
    if runtime_src:
        assert runtime_dir is not None
        if not runtime_dir.startswith("/") or _join(runtime_dir) in ("/", "/opt", "/usr", "/etc", "/var"):
            raise InstallError(f"runtime_dir must be a directory of its own, as the host sees it, got {runtime_dir!r}")
        check_runtime_dir(runtime_src, in_root(root, runtime_dir, follow_last=False), runtime_dir)

    found = _launchers_from(launchers) if launchers is not None else discover_launchers()
    desired: dict[str, tuple[bytes, int]] = {}  # host path -> (bytes, mode)
    for name, launcher in sorted(found.items()):
        desired[_join(bin_dir, name)] = (launcher_script(launcher, python).encode(), 0o755)

    kubeconfig_host = kubeconfig
    if kubeconfig is None and kubeconfig_from_sa is not False:
        sa = service_account(service_account_dir, environ)
        if sa is None and kubeconfig_from_sa:
            raise InstallError(f"no service account to write a kubeconfig from: need KUBERNETES_SERVICE_HOST and "
                               f"{service_account_dir}/token and ca.crt (are we running in a pod?)")
        if sa is not None:
            sub = _join(conf_dir, STATE_SUBDIR)
            token_host, ca_host = _join(sub, TOKEN_NAME), _join(sub, CA_NAME)
            kubeconfig_host = _join(sub, KUBECONFIG_NAME)
            desired[token_host] = (sa.token, 0o600)
            desired[ca_host] = (sa.ca, 0o644)
            desired[kubeconfig_host] = (kubeconfig_text(sa.server, ca_host, token_host).encode(), 0o600)
    report.kubeconfig = kubeconfig_host

    conflist = multiplex_conflist(version, net.name, conf_dir, bin_dir, net.capabilities, kubeconfig_host, options)
    check_conflist(conflist)
    desired[conf_host] = (_json_bytes(conflist), 0o644)  # last: the runtime sees it only when all is ready
    report.conflist = conf_host

    # --- write -------------------------------------------------------------------------------
    if runtime_src:
        assert runtime_dir is not None
        if state.get("runtimeDir") not in (None, runtime_dir):
            _remove_runtime(root, state["runtimeDir"], report)
        state["runtimeDir"] = runtime_dir
        _save_state(state_real, state)  # recorded first: an interrupted mirror is still ours to remove
        mirror_tree(runtime_src, in_root(root, runtime_dir, follow_last=False), report, runtime_dir)
    elif state.get("runtimeDir"):
        _remove_runtime(root, state["runtimeDir"], report)
        state["runtimeDir"] = None
    python_real = in_root(root, python)
    if not os.access(python_real, os.X_OK):
        report.warnings.append(f"interpreter {python} not found under {root}: the launchers need it on the host")

    for host_path, (data, mode) in desired.items():
        real = in_root(root, host_path, follow_last=False)
        entry = state["files"].get(host_path)
        if entry is None:
            entry = {"backup": None}
            if os.path.lexists(real) and host_path.startswith(_join(bin_dir) + "/") and not is_our_launcher(real):
                # someone else's file of the same name: keep it, and put it back on uninstall
                backup_host = _backup_host_path(conf_dir, host_path)
                backup_real = in_root(root, backup_host, follow_last=False)
                os.makedirs(os.path.dirname(backup_real), exist_ok=True)
                os.replace(real, backup_real)
                entry["backup"] = backup_host
                report.add(host_path, "backed-up")
            state["files"][host_path] = entry
            _save_state(state_real, state)  # recorded before the write: never an untracked file
        report.add(host_path, put_file(real, data, mode))

    for host_path in sorted(set(state["files"]) - set(desired)):  # placed before, not wanted now
        _remove_placed(root, host_path, state["files"].pop(host_path), report)
    _save_state(state_real, state)
    return report


def _find_network_by_name(conf_real: str, conf_dir: str, ours: str, name: str) -> Optional[ClusterNetwork]:
    for fname in config_files(conf_real):
        if fname == ours:
            continue
        try:
            conf = read_netconf(os.path.join(conf_real, fname))
        except InstallError:
            continue
        if conf.get("name") == name and not is_multiplex_config(conf):
            net = cluster_network_of(conf, os.path.join(conf_dir, fname))
            net.file = os.path.join(conf_dir, fname)
            return net
    return None


def _save_state(real: str, state: dict) -> None:
    put_file(real, _json_bytes({"files": dict(sorted(state["files"].items())),
                                "runtimeDir": state.get("runtimeDir")}), 0o600)


def _remove_placed(root: str, host_path: str, entry: dict, report: InstallReport) -> None:
    real = in_root(root, host_path, follow_last=False)
    if os.path.lexists(real):
        os.unlink(real)
        report.add(host_path, "removed")
    backup = entry.get("backup")
    if backup:
        backup_real = in_root(root, backup, follow_last=False)
        if os.path.lexists(backup_real):
            os.replace(backup_real, real)
            report.add(host_path, "restored")


def _remove_runtime(root: str, runtime_dir: str, report: InstallReport) -> None:
    real = in_root(root, runtime_dir, follow_last=False)
    if not os.path.isdir(real):
        return
    if not os.path.exists(os.path.join(real, RUNTIME_MARKER)):
        report.warnings.append(f"{runtime_dir} has no {RUNTIME_MARKER}; left in place")
        return
    # the contents first: the directory itself may be a mount point (the DaemonSet's hostPath)
    for name in os.listdir(real):
        if name != RUNTIME_MARKER:
            _remove_any(os.path.join(real, name))
    os.unlink(os.path.join(real, RUNTIME_MARKER))
    try:
        os.rmdir(real)
    except OSError:
        pass
    report.add(runtime_dir, "removed")


# ----------------------------------------------------------------------------------------------
# uninstall


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
    _, state_real = _state_path(root, conf_dir)
    state = _load_state(state_real)
    files: dict[str, dict] = dict(state["files"])
    conf_host = _join(conf_dir, conf_name)
    if not files:
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
                    files[_join(bin_dir, name)] = {"backup": None}
        for name in (KUBECONFIG_NAME, TOKEN_NAME, CA_NAME):
            files[_join(conf_dir, STATE_SUBDIR, name)] = {"backup": None}
    # the conflist first: from then on the runtime no longer calls multiplex
    order = sorted(files, key=lambda p: (p != conf_host, p))
    for host_path in order:
        _remove_placed(root, host_path, files[host_path], report)
    if state.get("runtimeDir"):
        _remove_runtime(root, state["runtimeDir"], report)
    if os.path.lexists(state_real):
        os.unlink(state_real)
    sub_real = in_root(root, _join(conf_dir, STATE_SUBDIR), follow_last=False)
    for d in (os.path.join(sub_real, "backup"), sub_real):
        try:
            os.rmdir(d)
        except (FileNotFoundError, OSError):
            pass
    if os.path.isdir(sub_real):
        report.warnings.append(f"{_join(conf_dir, STATE_SUBDIR)} holds files install did not place; left in place")
    return report


# ----------------------------------------------------------------------------------------------
# the DaemonSet's loop


def install_periodically(every: float, stop: Optional[threading.Event] = None,
                         on_report: Optional[Callable[[InstallReport], None]] = None,
                         on_error: Optional[Callable[[Exception], None]] = None,
                         **install_args: Any) -> None:
    """Run install now and then every `every` seconds until `stop` is set.

    This keeps the node current: a rotated service account token, a cluster network that appears
    late or changes, a new image's launchers. An error (no cluster network yet) is reported and
    retried on the next round, never fatal.
    """
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            rep = install(**install_args)
            if on_report:
                on_report(rep)
        except (InstallError, OSError) as e:
            if on_error:
                on_error(e)
        stop.wait(every)
