"""The multiplex image, built and run the way an admin without a registry would.

scripts/image.sh builds the OCI archive (mmdebstrap + a wheel of this tree + umoci); it is imported
into a containerd of the test's own (Debian's `containerd`, its root, state and socket under a tmp
dir, the CRI plugin off, stopped by its pid), and run with `ctr`:

- `multiplex --version` answers this tree's version; the image runs as root and carries the tools
  the delegates drive (ip, nft, bird, wg);
- `multiplex daemon`, in a network namespace the test makes (the DaemonSet runs it in the host's;
  here a netns stands in for the host), with a local directory bind-mounted for its objects and
  the socket directory bind-mounted from the "host" as the DaemonSet mounts /run/multiplex:
  /healthz and /readyz answer 200 on its loopback metrics port, the node registry writes this
  node's facts (the netns's underlay address) into nodes/<node>.json, a shim on the host answers a
  CNI VERSION call through the socket, and SIGTERM ends it with exit code 0.

The archive is built once per test run (a session fixture; MULTIPLEX_IMAGE_ARCHIVE names one built
earlier instead). Downloaded .debs and wheels are cached in /var/cache/multiplex-image, so only the
first build on a machine downloads them. Everything is removed at the end, also on failure: the
containers and tasks (killed, deleted), the shims' processes (by the pids containerd recorded),
containerd (by its pid), mounts under the tmp dir, the netns.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_SH = os.path.join(REPO, "scripts", "image.sh")
NAMESPACE = "mpxtest"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

pytestmark = pytest.mark.root


def image_name() -> str:
    with open(os.path.join(REPO, "manifests", "image")) as f:
        return f.read().strip()


def missing_tools() -> list[str]:
    return [t for t in ("mmdebstrap", "umoci", "containerd", "ctr", "runc") if shutil.which(t) is None]


# --- the archive -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def image_archive(tmp_path_factory) -> str:
    """The OCI archive of this tree: built by scripts/image.sh into a session tmp dir (its size and
    build time printed), or the one MULTIPLEX_IMAGE_ARCHIVE names."""
    prebuilt = os.environ.get("MULTIPLEX_IMAGE_ARCHIVE")
    if prebuilt:
        assert os.path.isfile(prebuilt), f"MULTIPLEX_IMAGE_ARCHIVE={prebuilt} does not exist"
        return prebuilt
    assert not missing_tools(), f"missing {missing_tools()}: scripts/setup.sh test installs them"
    out = tmp_path_factory.mktemp("image")
    env = dict(os.environ, MULTIPLEX_IMAGE_OUT=str(out))
    started = time.monotonic()
    build = subprocess.run([IMAGE_SH, "build"], env=env, capture_output=True, text=True, timeout=1500)
    assert build.returncode == 0, f"scripts/image.sh build failed:\n{build.stdout[-6000:]}\n{build.stderr[-6000:]}"
    summary = [line for line in build.stdout.splitlines() if line.startswith("image:") or line[:1].isdigit()]
    print(f"\nimage build: {time.monotonic() - started:.0f} s\n" + "\n".join(summary))
    archive = subprocess.run([IMAGE_SH, "archive"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.isfile(archive), archive
    return archive


# --- a containerd of the test's own ----------------------------------------------------------------

class Containerd:
    """containerd with its own root, state and socket under `base`; `ctr()` runs ctr against it."""

    def __init__(self, base: str):
        self.base = base
        self.socket = os.path.join(base, "containerd.sock")
        self.state = os.path.join(base, "state")
        self.config = os.path.join(base, "config.toml")
        self.log_path = os.path.join(base, "containerd.log")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Containerd":
        with open(self.config, "w") as f:
            f.write(f'version = 2\nroot = "{self.base}/root"\nstate = "{self.state}"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{self.socket}"\n[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
                    '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["containerd", "--config", self.config], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        limit = time.monotonic() + START_TIMEOUT
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None, f"containerd exited with {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < limit, f"containerd not serving within {START_TIMEOUT} s:\n{self.log()}"
            time.sleep(0.1)
        return self

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run(["ctr", "--address", self.socket, "--namespace", NAMESPACE, *args],
                             capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, f"ctr {' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.socket, "--namespace", NAMESPACE, *args]

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def remove_container(self, cid: str) -> None:
        """Kill and delete a task and its container, whatever state they are in."""
        if self.ctr("task", "ls", "-q", check=False).stdout.split().count(cid):
            self.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
            limit = time.monotonic() + STOP_TIMEOUT
            while "RUNNING" in self.ctr("task", "ls", check=False).stdout and time.monotonic() < limit:
                time.sleep(0.1)
            self.ctr("task", "delete", cid, check=False)
        self.ctr("container", "delete", cid, check=False)

    def stop(self) -> None:
        """Every container, the shims (by the pids containerd wrote), containerd (by its pid), the
        mounts left under `base`."""
        if self.proc is not None and self.proc.poll() is None:
            for cid in self.ctr("container", "ls", "-q", check=False).stdout.split():
                self.remove_container(cid)
        shim_pids = []
        for path in glob.glob(os.path.join(self.state, "io.containerd.runtime.v2.task", "*", "*", "shim.pid")):
            try:
                shim_pids.append(int(open(path).read().strip()))
            except (OSError, ValueError):
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        for pid in shim_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        mounts = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point.startswith(self.base + "/"):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory, image_archive):
    """A running containerd with the archive imported under the image's name."""
    assert not missing_tools(), f"missing {missing_tools()}: scripts/setup.sh test installs them"
    base = str(tmp_path_factory.mktemp("containerd"))
    c = Containerd(base)
    try:
        c.start()
        started = time.monotonic()
        c.ctr("images", "import", image_archive, timeout=300)
        print(f"\nimage import: {time.monotonic() - started:.1f} s")
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_the_archive_is_the_image_the_manifests_name(containerd):
    names = containerd.ctr("images", "ls", "-q").stdout.split()
    assert image_name() in names


def test_the_image_runs_multiplex_as_root_with_its_tools(containerd):
    """`multiplex --version` in the image is this tree's; the image runs as root (a CNI plugin's
    daemon needs it) and has the programs the delegates run."""
    cid = f"mpxver-{os.getpid()}"
    try:
        out = containerd.ctr("run", "--rm", image_name(), cid, "multiplex", "--version").stdout
    finally:
        containerd.remove_container(cid)
    here = subprocess.run([os.path.join(os.path.dirname(sys.executable), "multiplex"), "--version"],
                          capture_output=True, text=True, check=True).stdout
    assert out.strip() == here.strip()
    cid = f"mpxtools-{os.getpid()}"
    try:
        out = containerd.ctr("run", "--rm", image_name(), cid, "sh", "-c",
                             "id -u; ip -V; nft --version; bird --version 2>&1; wg --version").stdout
    finally:
        containerd.remove_container(cid)
    lines = out.splitlines()
    assert lines[0] == "0", out
    for tool in ("iproute2", "nftables", "BIRD version 2", "wireguard-tools"):
        assert any(tool in line for line in lines), f"{tool} missing in the image:\n{out}"


# --- the daemon in the image -------------------------------------------------------------------

@pytest.fixture
def host_netns():
    """A netns standing in for the node's host network: loopback up and an underlay interface
    (a veth pair inside it) with an address of 198.18.0.0/15."""
    name = f"mpximg{os.getpid() % 100000}"
    link = "mpxund0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", link, "type", "veth", "peer", "name", link + "p"],
                    ["addr", "add", "198.18.122.2/24", "dev", link], ["link", "set", link, "up"],
                    ["link", "set", link + "p", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name, link, "198.18.122.2"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def http_get(netns: str, url: str) -> tuple[int, str]:
    """GET `url` from inside `netns` (its loopback is where the daemon listens)."""
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n"
            "    r = urllib.request.urlopen(sys.argv[1], timeout=3); print(r.status); sys.stdout.write(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); sys.stdout.write(e.read().decode())\n"
            "except OSError as e:\n"
            "    print(0); print(e)\n")
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, url],
                         capture_output=True, text=True, timeout=30)
    status, _, body = out.stdout.partition("\n")
    return int(status or 0), body + out.stderr


def test_the_daemon_in_the_image_serves_health_and_the_shim(containerd, host_netns, tmp_path):
    from tests.daemonproc import free_port, shim_path

    netns, link, address = host_netns
    local = tmp_path / "objects"
    for kind in ("nodes", "pods", "nads"):
        (local / kind).mkdir(parents=True)
    run_dir = tmp_path / "run-multiplex"
    run_dir.mkdir()
    port = free_port()
    cid = f"mpxd-{os.getpid()}"
    argv = containerd.ctr_argv(
        "run", "--rm", "--privileged", "--with-ns", f"network:/var/run/netns/{netns}",
        "--mount", f"type=bind,src={local},dst=/srv/objects,options=rbind:rw",
        "--mount", f"type=bind,src={run_dir},dst=/run/multiplex,options=rbind:rw",
        image_name(), cid,
        "multiplex", "daemon", "--local-dir=/srv/objects", f"--metrics-address=127.0.0.1:{port}",
        "--node-name=n1", "--socket=/run/multiplex/multiplex.sock", "--state-dir=/var/lib/cni/multiplex")
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def daemon_log() -> str:
        return (tmp_path / "daemon.log").read_text(errors="replace")[-4000:]

    try:
        url = f"http://127.0.0.1:{port}"
        limit = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the daemon exited with {proc.returncode}:\n{daemon_log()}"
            status, body = http_get(netns, url + "/readyz")
            if status == 200:
                break
            assert time.monotonic() < limit, f"/readyz: {status} {body}\n{daemon_log()}"
            time.sleep(0.5)
        assert http_get(netns, url + "/healthz") == (200, "ok\n")
        # the node registry published the node's underlay, read inside the image from the netns
        limit = time.monotonic() + 30
        while not (local / "nodes" / "n1.json").exists():
            assert time.monotonic() < limit, f"no nodes/n1.json:\n{daemon_log()}"
            time.sleep(0.2)
        node = json.loads((local / "nodes" / "n1.json").read_text())
        facts = json.loads(node["metadata"]["annotations"]["multiplex.dev/node-facts"])
        assert (facts["interface"], facts["ipv4"]) == (link, address)
        # the DaemonSet's path: a shim on the host, the daemon's socket in a directory from the host
        sock = run_dir / "multiplex.sock"
        assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o600
        shim = shim_path(tmp_path / "bin", str(sock), fallback="fail")
        answer = subprocess.run([shim], input=json.dumps({"cniVersion": "1.1.0"}), capture_output=True, text=True,
                                env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}, timeout=30)
        assert answer.returncode == 0, (answer.stdout, answer.stderr, daemon_log())
        assert "1.1.0" in json.loads(answer.stdout)["supportedVersions"]
        # SIGTERM: the daemon drains and exits 0 (ctr run returns the task's exit code)
        containerd.ctr("task", "kill", "-s", "SIGTERM", cid)
        assert proc.wait(STOP_TIMEOUT) == 0, daemon_log()
    finally:
        if proc.poll() is None:
            containerd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        containerd.remove_container(cid)


# --- the install container, as the DaemonSet runs it ---------------------------------------------

#: containerd's default capability set: dropping each is `capabilities: {drop: [ALL]}` (ctr has no ALL)
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
                "CAP_KILL", "CAP_AUDIT_WRITE")


def install_command() -> list[str]:
    """The DaemonSet's install command (manifests/30-daemonset.yaml), once (no --every)."""
    import yaml

    with open(os.path.join(REPO, "manifests", "30-daemonset.yaml")) as f:
        [ds] = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet"]
    [c] = [c for c in ds["spec"]["template"]["spec"]["initContainers"] if c["name"] == "install"]
    return [a for a in c["command"] if not a.startswith("--every")]


def test_the_install_container_writes_a_shim_the_host_runs(containerd, tmp_path):
    """The DaemonSet's install command, in the image, as uid 0 with every capability dropped and a
    read-only root file system, against a host root with a cluster network: the conflist names
    multiplex first, and /opt/cni/bin/multiplex is the shim on the host's /usr/bin/python3, which
    fails with code 11 naming the socket while no daemon listens there (--fallback=fail)."""
    host = tmp_path / "host"
    (host / "etc/cni/net.d").mkdir(parents=True)
    (host / "opt/cni/bin").mkdir(parents=True)
    (host / "etc/cni/net.d/10-podnet.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "podnet", "plugins": [{"type": "bridge", "bridge": "cni0"}]}))
    command = install_command()
    assert "--root=/host" in command
    cid = f"mpxinst-{os.getpid()}"
    try:
        drop = [a for cap in DEFAULT_CAPS for a in ("--cap-drop", cap)]
        out = containerd.ctr("run", "--rm", "--read-only", *drop,
                             "--mount", f"type=bind,src={host / 'etc/cni/net.d'},dst=/host/etc/cni/net.d,options=rbind:rw",
                             "--mount", f"type=bind,src={host / 'opt/cni/bin'},dst=/host/opt/cni/bin,options=rbind:rw",
                             image_name(), cid, *command)
    finally:
        containerd.remove_container(cid)
    conflist = json.loads((host / "etc/cni/net.d/00-multiplex.conflist").read_text())
    assert conflist["plugins"][0]["type"] == "multiplex" and conflist["plugins"][0]["clusterNetwork"] == "podnet", out
    shim = host / "opt/cni/bin/multiplex"
    assert shim.read_text().startswith("#!/usr/bin/python3 -IS"), shim.read_text()[:200]
    # the host (this machine) runs it: nothing of the image is needed
    socket_arg = [a for a in command if a.startswith("--socket=")][0].split("=", 1)[1]
    answer = subprocess.run([str(shim)], input=json.dumps({"cniVersion": "1.1.0", "name": "x", "type": "multiplex"}),
                            capture_output=True, text=True, timeout=30,
                            env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/1/ns/net",
                                 "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "PATH": "/usr/bin:/bin"})
    if os.path.exists(socket_arg):
        pytest.fail(f"{socket_arg} exists on this machine; the test expects no daemon there")
    assert answer.returncode != 0
    error = json.loads(answer.stdout)
    assert error["code"] == 11 and socket_arg in error["msg"] + error.get("details", ""), error
