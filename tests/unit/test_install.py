"""`multiplex install` / `uninstall` on a temporary root that stands for a node's file system.

The node already runs a flannel-like cluster network (10-flannel.conflist: flannel + portmap).
Install must put multiplex ahead of it, name it as clusterNetwork, change nothing when run again,
and uninstall must leave the node exactly as it was.
"""
from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys

import pytest

from multiplex.cli.install.launchers import Launcher, discover_launchers, is_our_launcher, launcher_script
from multiplex.cli.install.layout import in_root
from multiplex.cli.install.loop import install_periodically
from multiplex.cli.install.network import config_files
from multiplex.cli.install.report import InstallError
from multiplex.cli.install.steps import install
from multiplex.cli.install.uninstall import uninstall

FLANNEL = {
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
CONF_DIR = "/etc/cni/net.d"
BIN_DIR = "/opt/cni/bin"


def _write(path, data: bytes | str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)


def snapshot(root) -> dict[str, tuple]:
    """Every entry under root: kind, bytes (or link target), mode, mtime."""
    out = {}
    for cur, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(cur, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", f.read(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


@pytest.fixture
def node_root(tmp_path):
    """A node's file system: flannel's conflist, some CNI binaries, /var/lib/cni."""
    root = tmp_path / "host"
    _write(str(root / "etc/cni/net.d/10-flannel.conflist"), json.dumps(FLANNEL, indent=2) + "\n")
    for name in ("flannel", "portmap", "loopback"):
        _write(str(root / "opt/cni/bin" / name), f"#!/bin/sh\necho {name}\n", 0o755)
    (root / "var/lib/cni").mkdir(parents=True)
    return str(root)


def real(root: str, host_path: str) -> str:
    return os.path.join(root, host_path.lstrip("/"))


def paths(report, action: str) -> list[str]:
    """The host paths the report lists with `action` (created, updated, removed, ...), in its order."""
    return [c.path for c in report.changes if c.action == action]


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def not_in_pod(**kw):
    """install() as run outside a pod (no service account), unless the test says otherwise."""
    kw.setdefault("environ", {})
    return kw


# ------------------------------------------------------------------------------------------------
# the generated config


def test_conflist_sorts_ahead_of_the_cluster_network_and_names_it(node_root):
    report = install(node_root, **not_in_pod())
    files = config_files(real(node_root, CONF_DIR))
    assert files == ["00-multiplex.conflist", "10-flannel.conflist"]  # the runtime picks the first
    conf = read_json(real(node_root, CONF_DIR + "/00-multiplex.conflist"))
    assert conf["name"] == "multiplex"
    assert conf["cniVersion"] == "0.3.1"  # the cluster network's
    [plugin] = conf["plugins"]
    assert plugin["type"] == "multiplex"
    assert plugin["clusterNetwork"] == "cbr0"
    assert plugin["capabilities"] == {"portMappings": True, "io.kubernetes.cri.pod-annotations": True}
    assert plugin["confDir"] == CONF_DIR and plugin["binDir"] == BIN_DIR
    assert "kubeconfig" not in plugin  # not in a pod: no kubeconfig written or named
    assert report.cluster_network == "cbr0"
    assert report.cluster_network_file == CONF_DIR + "/10-flannel.conflist"
    assert report.conflist == CONF_DIR + "/00-multiplex.conflist"


def test_conflist_passes_the_multiplex_schema(node_root):
    """What the runtime hands multiplex (the plugin entry with name and cniVersion injected, as
    libcni does) is a valid multiplex config."""
    from multiplex.util import schema

    install(node_root, kubeconfig="/etc/kubernetes/kubelet.conf", environ={},
            options={"namespaceIsolation": True, "globalNamespaces": ["default"], "logLevel": "info"})
    conf = read_json(real(node_root, CONF_DIR + "/00-multiplex.conflist"))
    [plugin] = conf["plugins"]
    netconf = dict(plugin, name=conf["name"], cniVersion=conf["cniVersion"])
    assert schema.errors("multiplex", netconf) == []
    assert plugin["kubeconfig"] == "/etc/kubernetes/kubelet.conf"
    assert plugin["namespaceIsolation"] is True


def test_capabilities_and_version_from_a_single_plugin_conf(tmp_path):
    root = str(tmp_path)
    _write(real(root, CONF_DIR + "/05-calico.conf"),
           json.dumps({"name": "k8s-pod-network", "cniVersion": "1.0.0", "type": "calico",
                       "capabilities": {"portMappings": True, "bandwidth": True, "ips": False}}))
    install(root, **not_in_pod())
    conf = read_json(real(root, CONF_DIR + "/00-multiplex.conflist"))
    assert conf["cniVersion"] == "1.0.0"
    assert conf["plugins"][0]["clusterNetwork"] == "k8s-pod-network"
    assert conf["plugins"][0]["capabilities"] == {"bandwidth": True, "portMappings": True, "io.kubernetes.cri.pod-annotations": True}


def test_the_first_config_in_lexical_order_is_the_cluster_network(node_root):
    _write(real(node_root, CONF_DIR + "/20-other.conflist"), json.dumps(
        {"name": "other", "cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}))
    _write(real(node_root, CONF_DIR + "/05-notes.txt"), "not a config")  # not an extension libcni loads
    report = install(node_root, **not_in_pod())
    assert report.cluster_network == "cbr0"


def test_cluster_network_change_is_picked_up_on_the_next_run(node_root):
    install(node_root, **not_in_pod())
    flannel = dict(FLANNEL, name="flannel-net", cniVersion="1.0.0")
    _write(real(node_root, CONF_DIR + "/10-flannel.conflist"), json.dumps(flannel))
    report = install(node_root, **not_in_pod())
    assert paths(report, "updated") == [CONF_DIR + "/00-multiplex.conflist"]
    conf = read_json(real(node_root, CONF_DIR + "/00-multiplex.conflist"))
    assert conf["cniVersion"] == "1.0.0"
    assert conf["plugins"][0]["clusterNetwork"] == "flannel-net"


# ------------------------------------------------------------------------------------------------
# launchers


def test_a_launcher_for_multiplex_and_every_builtin_plugin(node_root):
    install(node_root, **not_in_pod())
    expected = set(discover_launchers())
    assert {"multiplex", "multiplex-ipam", "multiplex-bridge"} <= expected
    bin_real = real(node_root, BIN_DIR)
    for name in expected:
        path = os.path.join(bin_real, name)
        assert os.path.isfile(path), name
        assert os.stat(path).st_mode & 0o111 == 0o111, f"{name} is not executable"
        assert is_our_launcher(path)
        with open(path) as f:
            assert sys.executable in f.read()


def test_launchers_follow_the_entry_point_group(node_root):
    """A new delegate in the group gets a launcher; one that left the group loses its launcher."""
    entries = {"multiplex": "multiplex.entry:main", "multiplex-newnet": "delegates.newnet:plugin"}
    install(node_root, launchers=entries, **not_in_pod())
    assert os.path.exists(real(node_root, BIN_DIR + "/multiplex-newnet"))
    report = install(node_root, launchers={"multiplex": "multiplex.entry:main"}, **not_in_pod())
    assert paths(report, "removed") == [BIN_DIR + "/multiplex-newnet"]
    assert not os.path.exists(real(node_root, BIN_DIR + "/multiplex-newnet"))


def _module_present(target: str) -> bool:
    module = target.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("name", sorted(discover_launchers()))
def test_installed_launcher_answers_version(node_root, name):
    launcher = discover_launchers()[name]
    if not _module_present(launcher.target):
        pytest.skip(f"{launcher.target} is not written yet; its launcher is placed but cannot run")
    install(node_root, **not_in_pod())
    out = subprocess.run([real(node_root, BIN_DIR + "/" + name)], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                         input=b"", capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    answer = json.loads(out.stdout)
    assert "1.1.0" in answer["supportedVersions"]


def test_plugin_kind_launcher_runs_skel(tmp_path):
    """A plugin without a console script runs through multiplex.cni.skel.main."""
    path = str(tmp_path / "multiplex-x")
    text = launcher_script(Launcher("multiplex-x", "multiplex.cni.plugin:Plugin", "plugin"), sys.executable)
    _write(path, text, 0o755)
    out = subprocess.run([path], env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout)["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("launcher, what", [
    (Launcher("../evil", "multiplex.entry:main", "script"), "invalid launcher name"),
    (Launcher("a/b", "multiplex.entry:main", "script"), "invalid launcher name"),
    (Launcher("multiplex-x", "os; rm -rf /", "script"), "invalid entry"),
    (Launcher("multiplex-x", "multiplex.entry", "script"), "invalid entry"),
    (Launcher("multiplex-x", "multiplex.entry:main", "binary"), "unknown launcher kind"),
])
def test_bad_launcher_entries_are_refused(launcher, what):
    with pytest.raises(InstallError, match=what):
        launcher_script(launcher, sys.executable)


def test_someone_elses_binary_is_kept_and_restored(node_root):
    other = real(node_root, BIN_DIR + "/multiplex-ipam")
    _write(other, b"\x7fELF not ours", 0o755)
    before = snapshot(node_root)
    report = install(node_root, **not_in_pod())
    assert paths(report, "backed-up") == [BIN_DIR + "/multiplex-ipam"]
    assert is_our_launcher(other)
    assert install(node_root, **not_in_pod()).changed is False
    report = uninstall(node_root)
    assert BIN_DIR + "/multiplex-ipam" in paths(report, "restored")
    assert snapshot(node_root) == before


# ------------------------------------------------------------------------------------------------
# idempotence and uninstall


def test_second_run_changes_nothing(node_root):
    first = install(node_root, **not_in_pod())
    assert first.changed
    assert set(paths(first, "created")) >= {CONF_DIR + "/00-multiplex.conflist", BIN_DIR + "/multiplex"}
    after_first = snapshot(node_root)
    second = install(node_root, **not_in_pod())
    assert not second.changed
    assert {c.action for c in second.changes} == {"unchanged"}
    assert "unchanged: nothing to do" in second.lines()
    assert snapshot(node_root) == after_first  # same bytes, modes and mtimes


def test_a_launcher_edited_by_hand_is_rewritten(node_root):
    install(node_root, **not_in_pod())
    path = real(node_root, BIN_DIR + "/multiplex")
    with open(path, "a") as f:
        f.write("# edited\n")
    os.chmod(path, 0o700)
    report = install(node_root, **not_in_pod())
    assert paths(report, "updated") == [BIN_DIR + "/multiplex"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755


def test_uninstall_restores_the_node(node_root):
    before = snapshot(node_root)
    install(node_root, **not_in_pod())
    report = uninstall(node_root)
    assert CONF_DIR + "/00-multiplex.conflist" in paths(report, "removed")
    assert config_files(real(node_root, CONF_DIR)) == ["10-flannel.conflist"]
    assert not os.path.exists(real(node_root, CONF_DIR + "/multiplex.d"))
    assert snapshot(node_root) == before  # flannel's conflist byte-identical, nothing else left
    assert uninstall(node_root).changed is False  # twice is fine


def test_uninstall_without_the_install_record(node_root):
    """The record lost: only what is recognizably ours goes."""
    before = snapshot(node_root)
    install(node_root, **not_in_pod())
    os.unlink(real(node_root, CONF_DIR + "/multiplex.d/install.json"))
    uninstall(node_root)
    assert snapshot(node_root) == before


# ------------------------------------------------------------------------------------------------
# refusals: a clear error, and nothing written


def test_no_cluster_network_is_an_error(tmp_path):
    root = str(tmp_path)
    os.makedirs(real(root, CONF_DIR))
    before = snapshot(root)
    with pytest.raises(InstallError, match="no cluster network.*--cluster-network"):
        install(root, **not_in_pod())
    assert snapshot(root) == before


def test_explicit_cluster_network_without_a_node_config(tmp_path):
    root = str(tmp_path)
    report = install(root, cluster_network="pods", cni_version="1.0.0", **not_in_pod())
    conf = read_json(real(root, CONF_DIR + "/00-multiplex.conflist"))
    assert conf["cniVersion"] == "1.0.0"
    assert conf["plugins"][0]["clusterNetwork"] == "pods"
    assert conf["plugins"][0]["capabilities"] == {"io.kubernetes.cri.pod-annotations": True}  # multiplex's own
    assert report.cluster_network_file is None


def test_explicit_cluster_network_takes_its_capabilities(node_root):
    _write(real(node_root, CONF_DIR + "/20-sriov.conf"),
           json.dumps({"name": "sriov", "cniVersion": "1.0.0", "type": "sriov", "capabilities": {"mac": True}}))
    install(node_root, cluster_network="sriov", **not_in_pod())
    conf = read_json(real(node_root, CONF_DIR + "/00-multiplex.conflist"))
    assert conf["plugins"][0]["clusterNetwork"] == "sriov"
    assert conf["plugins"][0]["capabilities"] == {"mac": True, "io.kubernetes.cri.pod-annotations": True}
    assert conf["cniVersion"] == "1.0.0"


@pytest.mark.parametrize("name, body, what", [
    ("00-aaa.conflist", json.dumps(FLANNEL), "does not sort ahead of /etc/cni/net.d/00-aaa.conflist"),
    ("01-broken.conf", "{not json", "01-broken.conf is not valid JSON"),
    ("01-list.json", "[1, 2]", "01-list.json is not a JSON object"),
    ("01-noname.conf", json.dumps({"cniVersion": "1.0.0", "type": "bridge"}), "01-noname.conf has no network name"),
    ("01-notype.conf", json.dumps({"cniVersion": "1.0.0", "name": "x"}), "neither a plugin config"),
    ("01-empty.conflist", json.dumps({"cniVersion": "1.0.0", "name": "x", "plugins": []}), "plugins must be a non-empty list"),
    ("01-old.conf", json.dumps({"cniVersion": "0.2.0", "name": "x", "type": "bridge"}), "cniVersion '0.2.0'.*--cni-version"),
])
def test_bad_node_configs_are_refused(node_root, name, body, what):
    _write(real(node_root, CONF_DIR + "/" + name), body)
    before = snapshot(node_root)
    with pytest.raises(InstallError, match=what):
        install(node_root, **not_in_pod())
    assert snapshot(node_root) == before


def test_a_conf_name_that_sorts_first_fixes_the_order(node_root):
    _write(real(node_root, CONF_DIR + "/00-aaa.conflist"), json.dumps(dict(FLANNEL, name="aaa")))
    install(node_root, conf_name="00-0-multiplex.conflist", **not_in_pod())
    assert config_files(real(node_root, CONF_DIR))[0] == "00-0-multiplex.conflist"


def test_a_foreign_file_with_our_name_is_not_replaced(node_root):
    _write(real(node_root, CONF_DIR + "/00-multiplex.conflist"), json.dumps(dict(FLANNEL, name="mine")))
    before = snapshot(node_root)
    with pytest.raises(InstallError, match="exists and is not a multiplex config"):
        install(node_root, **not_in_pod())
    assert snapshot(node_root) == before


@pytest.mark.parametrize("kw, what", [
    ({"conf_name": "multiplex.conf"}, "must be a plain file name ending in .conflist"),
    ({"conf_name": "../00-multiplex.conflist"}, "must be a plain file name"),
    ({"conf_dir": "etc/cni/net.d"}, "conf_dir must be an absolute path"),
    ({"python": "python3"}, "python must be an absolute path"),
    ({"options": {"clusterNetwork": "x"}}, "option 'clusterNetwork' is set by install itself"),
    ({"kubeconfig_from_sa": True}, "no service account"),
    ({"options": {"namespaceIsolaton": True}}, r"invalid: \$\.plugins\[0\].*Additional properties.*'namespaceIsolaton'"),
    ({"options": {"logLevel": "loud"}}, r"invalid: \$\.plugins\[0\]\.logLevel: 'loud' is not one of"),
])
def test_bad_parameters_are_refused(node_root, kw, what):
    before = snapshot(node_root)
    with pytest.raises(InstallError, match=what):
        install(node_root, **not_in_pod(**kw))
    assert snapshot(node_root) == before


# ------------------------------------------------------------------------------------------------
# the kubeconfig from the service account


@pytest.fixture
def service_account(tmp_path):
    sa = tmp_path / "serviceaccount"
    _write(str(sa / "token"), "eyJhbGciOi.token-one\n", 0o600)
    _write(str(sa / "ca.crt"), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    _write(str(sa / "namespace"), "kube-system")
    return str(sa)


def test_kubeconfig_from_the_service_account(tmp_path, service_account):
    """Run with root=/ and directories inside tmp_path, so the kubeconfig's own paths are real and
    the `kubernetes` client can load it unchanged."""
    conf_dir, bin_dir = str(tmp_path / "net.d"), str(tmp_path / "bin")
    _write(os.path.join(conf_dir, "10-flannel.conflist"), json.dumps(FLANNEL))
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    report = install("/", bin_dir, conf_dir, service_account_dir=service_account, environ=env)
    kubeconfig = os.path.join(conf_dir, "multiplex.d", "multiplex.kubeconfig")
    assert report.kubeconfig == kubeconfig
    assert read_json(os.path.join(conf_dir, "00-multiplex.conflist"))["plugins"][0]["kubeconfig"] == kubeconfig
    for name, mode in (("multiplex.kubeconfig", 0o600), ("token", 0o600), ("ca.crt", 0o644)):
        assert stat.S_IMODE(os.stat(os.path.join(conf_dir, "multiplex.d", name)).st_mode) == mode

    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.api_key["BearerToken"] == "Bearer eyJhbGciOi.token-one"
    with open(cfg.ssl_ca_cert) as f:
        assert "BEGIN CERTIFICATE" in f.read()

    # the token rotates: only the token file changes, the kubeconfig and conflist stay
    _write(os.path.join(service_account, "token"), "eyJhbGciOi.token-two\n", 0o600)
    report = install("/", bin_dir, conf_dir, service_account_dir=service_account, environ=env)
    assert paths(report, "updated") == [os.path.join(conf_dir, "multiplex.d", "token")]

    # uninstall takes the credentials away too
    uninstall("/", bin_dir, conf_dir)
    assert sorted(os.listdir(conf_dir)) == ["10-flannel.conflist"]
    assert os.listdir(bin_dir) == []


def test_kubeconfig_server_for_an_ipv6_service_host(node_root, service_account):
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "6443"}
    install(node_root, service_account_dir=service_account, environ=env)
    with open(real(node_root, CONF_DIR + "/multiplex.d/multiplex.kubeconfig")) as f:
        text = f.read()
    assert 'server: "https://[fd00:10:96::1]:6443"' in text
    assert 'tokenFile: "/etc/cni/net.d/multiplex.d/token"' in text  # the host's path, not under root


def test_outside_a_pod_no_kubeconfig_and_a_stale_one_goes(node_root, service_account):
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    install(node_root, service_account_dir=service_account, environ=env)
    assert os.path.exists(real(node_root, CONF_DIR + "/multiplex.d/multiplex.kubeconfig"))
    report = install(node_root, service_account_dir=service_account, environ=env, kubeconfig_from_sa=False)
    assert CONF_DIR + "/multiplex.d/multiplex.kubeconfig" in paths(report, "removed")
    conf = read_json(real(node_root, CONF_DIR + "/00-multiplex.conflist"))
    assert "kubeconfig" not in conf["plugins"][0]


# ------------------------------------------------------------------------------------------------
# never outside root


def test_absolute_symlinks_resolve_inside_root(node_root):
    """/opt/cni/bin on the node is a link to /usr/lib/cni: the launchers land in root's
    /usr/lib/cni, never in this machine's."""
    bin_real = real(node_root, BIN_DIR)
    os.makedirs(real(node_root, "/usr/lib"))
    os.rename(bin_real, real(node_root, "/usr/lib/cni"))
    os.symlink("/usr/lib/cni", bin_real)
    outside = set(os.listdir("/usr/lib/cni")) if os.path.isdir("/usr/lib/cni") else set()
    install(node_root, **not_in_pod())
    assert os.path.isfile(real(node_root, "/usr/lib/cni/multiplex"))
    assert os.path.islink(bin_real)
    if os.path.isdir("/usr/lib/cni"):
        assert set(os.listdir("/usr/lib/cni")) == outside


def test_in_root_clamps_dotdot_and_absolute_links(tmp_path):
    root = str(tmp_path)
    os.makedirs(real(root, "/a/b"))
    os.symlink("/etc", real(root, "/a/b/up"))
    os.symlink("../../../../../../tmp", real(root, "/a/rel"))
    assert in_root(root, "/a/b/up/x") == os.path.join(os.path.realpath(root), "etc/x")
    assert in_root(root, "/../../x") == os.path.join(os.path.realpath(root), "x")
    assert in_root(root, "/a/rel/y") == os.path.join(os.path.realpath(root), "tmp/y")
    os.symlink("loop", real(root, "/loop"))
    with pytest.raises(InstallError, match="too many levels"):
        in_root(root, "/loop/x")


# ------------------------------------------------------------------------------------------------
# the Python runtime mirrored onto the host


@pytest.fixture
def runtime_src(tmp_path):
    src = tmp_path / "image" / "opt" / "multiplex"
    _write(str(src / "bin/python3"), "#!/bin/sh\necho fake python\n", 0o755)
    _write(str(src / "lib/python3.12/site-packages/multiplex/__init__.py"), "")
    os.symlink("python3", str(src / "bin/python"))
    os.symlink("python3.12", str(src / "lib/python3"))
    return str(src)


def test_runtime_is_mirrored_and_removed(node_root, runtime_src):
    rdir = "/opt/multiplex"
    before = snapshot(node_root)
    report = install(node_root, runtime_src=runtime_src, runtime_dir=rdir, **not_in_pod())
    assert paths(report, "created")[0] == rdir
    dst = real(node_root, rdir)
    assert os.readlink(os.path.join(dst, "bin/python")) == "python3"
    assert os.path.islink(os.path.join(dst, "lib/python3"))
    assert os.access(os.path.join(dst, "bin/python3"), os.X_OK)
    with open(real(node_root, BIN_DIR + "/multiplex")) as f:
        assert "exec /opt/multiplex/bin/python3 -I" in f.read()
    assert report.warnings == []  # the interpreter is on the "host" now

    mirrored = snapshot(node_root)
    assert install(node_root, runtime_src=runtime_src, runtime_dir=rdir, **not_in_pod()).changed is False
    assert snapshot(node_root) == mirrored

    # a new image: a changed file, a new file, a removed file
    _write(os.path.join(runtime_src, "bin/python3"), "#!/bin/sh\necho newer fake python\n", 0o755)
    _write(os.path.join(runtime_src, "lib/new.py"), "x = 1\n")
    os.unlink(os.path.join(runtime_src, "lib/python3.12/site-packages/multiplex/__init__.py"))
    report = install(node_root, runtime_src=runtime_src, runtime_dir=rdir, **not_in_pod())
    assert paths(report, "updated") == [rdir]
    assert snapshot(dst) == {k: v for k, v in snapshot(runtime_src).items()} | {
        ".multiplex-runtime": snapshot(dst)[".multiplex-runtime"]}

    uninstall(node_root)
    assert snapshot(node_root) == before


def test_runtime_dir_not_ours_is_refused(node_root, runtime_src):
    _write(real(node_root, "/opt/multiplex/important"), "someone's data")
    before = snapshot(node_root)
    with pytest.raises(InstallError, match="was not placed by multiplex install"):
        install(node_root, runtime_src=runtime_src, runtime_dir="/opt/multiplex", **not_in_pod())
    assert snapshot(node_root) == before


# ------------------------------------------------------------------------------------------------
# the DaemonSet's loop


def test_install_periodically_retries_until_the_cluster_network_appears(tmp_path):
    import threading

    root = str(tmp_path)
    os.makedirs(real(root, CONF_DIR))
    stop = threading.Event()
    errors, reports = [], []

    def on_error(e):
        errors.append(e)
        _write(real(root, CONF_DIR + "/10-flannel.conflist"), json.dumps(FLANNEL))  # flannel arrives

    def on_report(r):
        reports.append(r)
        if len(reports) == 2:
            stop.set()

    install_periodically(0, stop, on_report=on_report, on_error=on_error, root=root, environ={})
    assert len(errors) == 1 and "no cluster network" in str(errors[0])
    assert reports[0].changed and not reports[1].changed
