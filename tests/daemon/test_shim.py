"""The shim as the runtime execs it: the wire protocol and its bounds, the fallback (exec gets
stdin untouched; fail names the socket), a daemon that closes mid-call, what it imports and how
fast it starts next to a bare interpreter (printed, never asserted on time)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

from multiplex.cni import request as cnirequest
from multiplex.daemon import shim
from tests.daemonproc import real_python, shim_path


def run(path: str, env: dict, stdin: bytes = b"") -> tuple[int, str]:
    r = subprocess.run([path], input=stdin, env=env, capture_output=True, timeout=60)
    return r.returncode, r.stdout.decode()


ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin"}


# --- protocol ------------------------------------------------------------------------------------

class Pipe:
    """recv() over a bytes buffer, in small pieces (as a socket may deliver them)."""

    def __init__(self, data: bytes, piece: int = 7):
        self.data, self.piece = data, piece

    def recv(self, n: int) -> bytes:
        out, self.data = self.data[:min(n, self.piece)], self.data[min(n, self.piece):]
        return out


def test_request_and_answer_frames_round_trip():
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=a;X=é=b", "CNI_PATH": "/a:/b",
           "ODD": "\udcff bytes"}
    stdin = b'{"cniVersion": "1.1.0"}\x00\xff'
    frame = Pipe(shim.encode_request(env, stdin, 5000))
    env_len, stdin_len, size = shim.decode_request_header(shim.recv_exact(frame, shim.REQUEST_HEADER))
    assert (stdin_len, size) == (len(stdin), 5000)
    assert shim.decode_env(shim.recv_exact(frame, env_len)) == env
    assert shim.recv_exact(frame, stdin_len) == stdin and frame.data == b""
    answer = Pipe(shim.encode_answer(1, b'{"code": 7}'))
    assert shim.read_answer(answer) == (1, b'{"code": 7}')


def test_frames_that_are_not_ours_or_cut_short_are_refused():
    with pytest.raises(shim.ProtocolError, match="not a multiplex shim request"):
        shim.decode_request_header(b"GET / HTTP/1.1\r\nHost: x\r\n"[:shim.REQUEST_HEADER])
    newer = bytearray(shim.encode_request({}, b""))
    newer[4] = shim.PROTOCOL_VERSION + 1
    with pytest.raises(shim.ProtocolError, match="protocol version"):
        shim.decode_request_header(bytes(newer[:shim.REQUEST_HEADER]))
    with pytest.raises(shim.ProtocolError, match="closed before a whole frame"):
        shim.read_answer(Pipe(shim.encode_answer(0, b"{}")[:-1]))
    huge = shim.ANSWER_MAGIC + bytes((shim.PROTOCOL_VERSION, 0)) + (shim.OUT_MAX + 1).to_bytes(4, "big")
    with pytest.raises(shim.ProtocolError, match="more than"):
        shim.read_answer(Pipe(huge))


def test_the_shim_bounds_are_the_in_process_path_bounds():
    assert shim.STDIN_MAX == cnirequest.STDIN_MAX
    assert shim.ANSWER_TIMEOUT > cnirequest.CALL_BUDGET


@pytest.mark.parametrize("text", ['plain', 'quote " back\\slash', "new\nline\ttab\x01\x7f", "é ü 漢字",
                                  "lone \udcff surrogate"])
def test_json_strings_escaped_by_hand_parse_back(text):
    literal = shim.json_string(text)
    literal.encode("utf-8")  # what the shim writes: a lone surrogate is escaped, never written raw
    assert json.loads(literal) == text


@pytest.mark.parametrize("stdin, version", [
    (b'{"cniVersion": "0.4.0", "name": "x"}', "0.4.0"),
    (b'{\n  "name": "x",\n  "cniVersion"  :\n "1.0.0"}', "1.0.0"),
    (b'{"name": "x"}', "1.1.0"),
    (b'{"cniVersion": 4}', "1.1.0"),
    (b'{"cniVersion": "1.0.0\\" , \\"code\\": 0"}', "1.1.0"),
    (b"", "1.1.0"),
])
def test_the_config_version_is_found_by_a_bytes_search(stdin, version):
    assert shim.cni_version_in(stdin) == version


def test_render_bakes_the_settings_and_refuses_what_the_shim_could_not_use(tmp_path):
    text = shim.render("/run/x.sock", ["/opt/cni/bin/multiplex-inprocess"], "/usr/bin/python3")
    assert text.startswith("#!/usr/bin/python3 -IS\n# multiplex shim")
    assert "SOCKET = '/run/x.sock'\nFALLBACK = ['/opt/cni/bin/multiplex-inprocess']\n" in text
    compile(text, "shim", "exec")
    for args, match in ((("run/x.sock", None, "/usr/bin/python3"), "absolute"),
                        (("/" + "s" * 120, None, "/usr/bin/python3"), "longer than 107"),
                        (("/run/x.sock", None, "/usr/bin/my python"), "shebang"),
                        (("/run/x.sock", ["multiplex"], "/usr/bin/python3"), "absolute path")):
        with pytest.raises(ValueError, match=match):
            shim.render(*args)


# --- the shim process ------------------------------------------------------------------------------

ODD_SOCKETS = ['plain.sock', 'q"uote\\back.sock', "new\nline.sock", "é.sock"]


@pytest.mark.parametrize("name", ODD_SOCKETS)
def test_fallback_fail_prints_code_11_naming_the_socket(sock_dir, name):
    sock = os.path.join(sock_dir, name)
    sh = shim_path(sock_dir, sock, fallback="fail")
    rc, out = run(sh, ADD_ENV, b'{"cniVersion": "0.4.0", "name": "n", "type": "multiplex"}')
    err = json.loads(out)
    assert rc == 1 and err["code"] == 11 and err["cniVersion"] == "0.4.0"
    assert f"the multiplex daemon is not answering at {sock}" in err["msg"]
    assert f"socket: {sock}" in err["details"]


def test_fallback_exec_runs_the_in_process_path_with_stdin_untouched(sock_dir, tmp_path):
    seen = tmp_path / "seen.json"
    fallback = tmp_path / "inprocess"
    fallback.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        f"json.dump({{'stdin': sys.stdin.read(), 'command': os.environ.get('CNI_COMMAND'), "
                        f"'argv': sys.argv}}, open({str(seen)!r}, 'w'))\nprint('{{\"fallback\": true}}')\n")
    fallback.chmod(0o755)
    sock = os.path.join(sock_dir, "absent.sock")
    sh = os.path.join(sock_dir, "multiplex")
    with open(sh, "w") as f:
        f.write(shim.render(sock, [str(fallback), "--flag"], real_python()))
    os.chmod(sh, 0o755)
    config = b'{"cniVersion": "1.1.0", "name": "n", "type": "multiplex"}'
    for prepare in (lambda: None, lambda: _stale_socket(sock)):  # missing, then refused
        prepare()
        rc, out = run(sh, ADD_ENV, config)
        assert (rc, json.loads(out)) == (0, {"fallback": True})
        assert json.loads(seen.read_text()) == {"stdin": config.decode(), "command": "ADD",
                                                "argv": [str(fallback), "--flag"]}


def test_fallback_exec_to_the_real_multiplex_answers_version(sock_dir):
    sh = shim_path(sock_dir, os.path.join(sock_dir, "absent.sock"), fallback="exec")
    rc, out = run(sh, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.1.0"}')
    assert rc == 0 and "1.1.0" in json.loads(out)["supportedVersions"]


def _stale_socket(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


@contextmanager
def fake_daemon(sock: str, serve: Callable[..., None]) -> Iterator[None]:
    """A daemon that takes one call at `sock` in a thread: `serve(conn, env_len, stdin_len, size)`
    once the request header is read, then the connection is closed. On leaving, the thread is
    joined and the socket closed (also when the block failed)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock)
    listener.listen(1)

    def take_one() -> None:
        conn, _ = listener.accept()
        try:
            serve(conn, *shim.decode_request_header(shim.recv_exact(conn, shim.REQUEST_HEADER)))
        finally:
            conn.close()

    t = threading.Thread(target=take_one)
    t.start()
    try:
        yield
    finally:
        t.join(10)
        listener.close()


@pytest.mark.parametrize("cut", ["before-answer", "mid-answer"])
def test_a_daemon_that_closes_mid_call_is_an_error_never_a_success(sock_dir, cut):
    sock = os.path.join(sock_dir, "d.sock")
    got: dict = {}

    def dies(conn, env_len, stdin_len, size):
        got["env"] = shim.decode_env(shim.recv_exact(conn, env_len))
        got["stdin"] = shim.recv_exact(conn, stdin_len)
        if cut == "mid-answer":
            conn.sendall(shim.encode_answer(0, b'{"cniVersion": "1.0.0", "ips": []}')[:14])

    with fake_daemon(sock, dies):
        sh = shim_path(sock_dir, sock, fallback="exec")  # a connected call never falls back
        config = b'{"cniVersion": "1.0.0", "name": "n", "type": "multiplex"}'
        rc, out = run(sh, dict(ADD_ENV, MULTIPLEX_STATE_DIR="/var/lib/x", HOME="/root"), config)
    err = json.loads(out)
    assert rc == 1 and err["code"] == 11 and err["cniVersion"] == "1.0.0"
    assert err["msg"] == (f"the multiplex daemon at {sock} closed the connection before answering ADD; "
                          "the runtime will retry, and DEL cleans up from the cache")
    assert got["stdin"] == config
    assert got["env"] == dict(ADD_ENV, MULTIPLEX_STATE_DIR="/var/lib/x")  # CNI_* and ours, nothing else


def test_an_oversized_stdin_is_sent_cut_with_its_real_size(sock_dir):
    sock = os.path.join(sock_dir, "d.sock")
    got: dict = {}

    def refuses(conn, env_len, stdin_len, size):
        got.update(stdin_len=stdin_len, size=size)
        shim.recv_exact(conn, env_len + stdin_len)
        conn.sendall(shim.encode_answer(1, b'{"code": 7}'))

    with fake_daemon(sock, refuses):
        rc, out = run(shim_path(sock_dir, sock, fallback="fail"), ADD_ENV, b"x" * (3 * shim.STDIN_MAX))
    assert (rc, out) == (1, '{"code": 7}')
    assert got == {"stdin_len": shim.STDIN_MAX + 1, "size": 3 * shim.STDIN_MAX}


# --- start-up --------------------------------------------------------------------------------------

def test_the_shim_imports_nothing_but_the_builtin_socket_module(sock_dir):
    sh = shim_path(sock_dir, os.path.join(sock_dir, "absent.sock"), fallback="fail")
    py = real_python()

    def imported(argv):
        r = subprocess.run([py, "-I", "-S", "-X", "importtime", *argv], env={"CNI_COMMAND": "VERSION"},
                           capture_output=True, text=True, timeout=30)
        return {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}

    extra = imported([sh]) - imported(["-c", "pass"]) - {"package"}
    assert extra == {"_socket"}, extra


def test_shim_start_up_beside_a_bare_interpreter(sock_dir):
    """Printed figures: 50 runs each, interleaved (the shim answering code 11 without a daemon:
    its whole start-up, a failed connect and the error it prints)."""
    sh = shim_path(sock_dir, os.path.join(sock_dir, "absent.sock"), fallback="fail")
    py = real_python()
    bare, ours = [], []
    for _ in range(50):
        for argv, into in (([py, "-I", "-S", "-c", "pass"], bare), ([sh], ours)):
            t = time.perf_counter()
            subprocess.run(argv, env={"CNI_COMMAND": "DEL"}, stdin=subprocess.DEVNULL, capture_output=True)
            into.append((time.perf_counter() - t) * 1000)
    for label, xs in (("python3 -I -S -c pass", bare), ("shim (no daemon, code 11)", ours)):
        xs.sort()
        print(f"\n{label:28s} median {xs[len(xs) // 2]:6.2f} ms  p10 {xs[5]:6.2f} ms  min {xs[0]:6.2f} ms", end="")
    print()
    assert len(ours) == 50
