#!/usr/bin/python3 -IS
# multiplex shim: what the runtime execs for `type: multiplex` in daemon mode.
# Written by `multiplex install --daemon` (which rewrites it); `multiplex uninstall` removes it.
"""Forward one CNI call to the node daemon over its unix socket and print the answer.

Standalone and stdlib only, run as `python3 -IS`: it imports nothing but the builtin `posix`
and `_socket` (no `os`, `socket`, `json`, `struct`, `re`), so it starts about as fast as a
bare interpreter. It knows nothing about networks: the CNI environment and stdin go to the daemon,
the daemon's stdout and exit code come back.

This file is also the one definition of the wire protocol (multiplex/daemon/server.py imports
its framing helpers):

  request  "MPXQ" version(1) env_len(4) stdin_len(4) stdin_size(8) env stdin
  answer   "MPXA" version(1) exit_code(1) out_len(4) stdout

Integers are big-endian and unsigned. `env` is `KEY=VALUE\\0` pairs: the CNI_* variables and
MULTIPLEX_STATE_DIR / MULTIPLEX_KUBECONFIG when set. `stdin` holds at most STDIN_MAX + 1 bytes of
the runtime's stdin; `stdin_size` is its real size (the shim reads and drops the rest, as the
in-process path does), so the daemon refuses an oversized config with the same code 7 text.

When the socket is missing or refused, FALLBACK decides: the argv of the in-process `multiplex`
to exec (stdin is still untouched: the socket is tried before stdin is read), or None to fail with
CNI code 11 naming the socket. A daemon that closes the connection before a whole answer is an
error (code 11), never a false success.
"""

# --- settings (written by `multiplex install --daemon`) ---
SOCKET = "/run/multiplex/multiplex.sock"
FALLBACK = None
# --- end of settings ---

import posix

import _socket

REQUEST_MAGIC = b"MPXQ"
ANSWER_MAGIC = b"MPXA"
PROTOCOL_VERSION = 1
REQUEST_HEADER = 21  # magic 4, version 1, env_len 4, stdin_len 4, stdin_size 8
ANSWER_HEADER = 10   # magic 4, version 1, exit code 1, out_len 4
#: as multiplex/cni/request.py STDIN_MAX (a test keeps them equal)
STDIN_MAX = 1024 * 1024
#: what is read past STDIN_MAX and dropped, as multiplex/cni/skel.py does
STDIN_DRAIN_MAX = 64 * STDIN_MAX
#: the forwarded environment, encoded
ENV_MAX = 256 * 1024
#: the daemon's answer (a CNI result; a pod with many interfaces stays far below)
OUT_MAX = 16 * 1024 * 1024
#: seconds the shim waits for an answer: the daemon's own budget (cni/request.py CALL_BUDGET) plus
#: slack, so a hung daemon still gives the runtime an error before kubelet's 2 minutes
ANSWER_TIMEOUT = 90.0
FORWARDED = (b"MULTIPLEX_STATE_DIR", b"MULTIPLEX_KUBECONFIG")
TRY_AGAIN_LATER = 11
DEFAULT_CNI_VERSION = "1.1.0"


class ProtocolError(Exception):
    """A frame that is not ours, or a connection closed before a whole frame."""


# --- framing (shared with the server) ----------------------------------------------------------

def encode_env(env):
    """`KEY=VALUE\\0` pairs from a mapping of bytes (or str) to bytes (or str)."""
    out = []
    for k, v in env.items():
        k = k if isinstance(k, bytes) else k.encode("utf-8", "surrogateescape")
        v = v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")
        out.append(k + b"=" + v + b"\0")
    return b"".join(out)


def encode_request(env, stdin, stdin_size=None):
    """A whole request frame. `env` already encoded (encode_env) or a mapping."""
    if not isinstance(env, bytes):
        env = encode_env(env)
    if stdin_size is None:
        stdin_size = len(stdin)
    return (REQUEST_MAGIC + bytes((PROTOCOL_VERSION,)) + len(env).to_bytes(4, "big")
            + len(stdin).to_bytes(4, "big") + stdin_size.to_bytes(8, "big") + env + stdin)


def recv_exact(sock, n):
    """Exactly `n` bytes from `sock`; ProtocolError when it closes first."""
    parts = []
    while n > 0:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ProtocolError("connection closed before a whole frame")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def read_answer(sock):
    """(exit code, stdout bytes) of one answer frame."""
    header = recv_exact(sock, ANSWER_HEADER)
    if header[:4] != ANSWER_MAGIC or header[4] != PROTOCOL_VERSION:
        raise ProtocolError("not a multiplex daemon answer")
    size = int.from_bytes(header[6:10], "big")
    if size > OUT_MAX:
        raise ProtocolError(f"answer of {size} bytes, more than {OUT_MAX}")
    return header[5], recv_exact(sock, size)


# --- what the shim prints on its own -----------------------------------------------------------

def json_string(text):
    """`text` as a JSON string literal (RFC 8259 escapes), without the json module."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif o < 0x20 or 0xD800 <= o <= 0xDFFF or o == 0x7F:
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def cni_version_in(stdin):
    """The config's cniVersion by a cheap bytes search of stdin (the first one), else 1.1.0."""
    i = stdin.find(b'"cniVersion"')
    if i < 0:
        return DEFAULT_CNI_VERSION
    rest = stdin[i + 12:i + 64].lstrip(b" \t\r\n")
    if not rest.startswith(b":"):
        return DEFAULT_CNI_VERSION
    rest = rest[1:].lstrip(b" \t\r\n")
    end = rest.find(b'"', 1)
    value = rest[1:end] if rest.startswith(b'"') and 0 < end <= 17 else b""
    if not value or value.strip(b"0123456789."):
        return DEFAULT_CNI_VERSION
    return value.decode("ascii")


def error_json(version, code, msg, details):
    return ('{"cniVersion": %s, "code": %d, "msg": %s, "details": %s}'
            % (json_string(version), code, json_string(msg), json_string(details)))


# --- the shim ------------------------------------------------------------------------------------

def read_stdin():
    """(the first STDIN_MAX + 1 bytes of stdin, its real size up to STDIN_DRAIN_MAX)."""
    parts, kept, size = [], 0, 0
    while size < STDIN_DRAIN_MAX:
        try:
            chunk = posix.read(0, 1 << 16)
        except OSError:  # no stdin at all (closed): an empty config
            break
        if not chunk:
            break
        size += len(chunk)
        if kept <= STDIN_MAX:
            parts.append(chunk)
            kept += len(chunk)
    return b"".join(parts)[:STDIN_MAX + 1], size


def forwarded_env(environ):
    return {k: v for k, v in environ.items() if k.startswith(b"CNI_") or k in FORWARDED}


def write_all(fd, data):
    while data:
        try:
            n = posix.write(fd, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]


def fail(stdin, msg, details):
    """Print a CNI error (code 11) in the config's version and exit 1."""
    write_all(1, error_json(cni_version_in(stdin), TRY_AGAIN_LATER, msg, details).encode("utf-8", "replace"))
    posix._exit(1)


def main():
    environ = posix.environ
    command = environ.get(b"CNI_COMMAND", b"").decode("utf-8", "replace")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(ANSWER_TIMEOUT)  # a stopped daemon with a full backlog must not hang the runtime
    try:
        sock.connect(SOCKET)
    except OSError as e:
        sock.close()
        why = e.strerror or str(e)
        if FALLBACK:
            try:
                posix.execv(FALLBACK[0], FALLBACK)
            except OSError as e2:
                fail(read_stdin()[0], f"the multiplex daemon is not answering at {SOCKET} ({why}) and the "
                     f"in-process fallback {FALLBACK[0]} could not be run ({e2.strerror or e2})",
                     f"socket: {SOCKET}; fallback: {FALLBACK[0]}; reinstall with `multiplex install --daemon`")
        stdin = b"" if command == "VERSION" else read_stdin()[0]
        fail(stdin, f"the multiplex daemon is not answering at {SOCKET} ({why})",
             f"socket: {SOCKET}; start the node daemon (`multiplex daemon`), or install with "
             "`--fallback exec` to run calls in-process while it is away")
    stdin, size = (b"", 0) if command == "VERSION" else read_stdin()
    frame = encode_request(forwarded_env(environ), stdin, size)
    try:
        try:
            sock.sendall(frame)
        except OSError:
            pass  # the daemon may have answered (refused) before reading it all: read its answer
        code, out = read_answer(sock)
    except TimeoutError:
        fail(stdin, f"the multiplex daemon at {SOCKET} did not answer {command} within {ANSWER_TIMEOUT:.0f} s; "
             "the runtime will retry, and DEL cleans up from the cache",
             f"socket: {SOCKET}; command: {command}")
    except (OSError, ProtocolError) as e:
        fail(stdin, f"the multiplex daemon at {SOCKET} closed the connection before answering {command}; "
             "the runtime will retry, and DEL cleans up from the cache",
             f"socket: {SOCKET}; command: {command}; error: {e}")
    write_all(1, out)
    posix._exit(code)


# --- daemon side only: render() leaves this section out of the installed shim ---

def decode_env(data):
    """The environment as str -> str (undecodable bytes kept as surrogates, as os.environ does)."""
    env = {}
    for pair in data.split(b"\0"):
        if not pair:
            continue
        k, sep, v = pair.partition(b"=")
        if not sep or not k:
            raise ProtocolError("malformed environment pair")
        env[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
    return env


def decode_request_header(header):
    """(env_len, stdin_len, stdin_size) from the first REQUEST_HEADER bytes."""
    if len(header) != REQUEST_HEADER or header[:4] != REQUEST_MAGIC:
        raise ProtocolError("not a multiplex shim request")
    if header[4] != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header[4]}, this daemon speaks {PROTOCOL_VERSION}")
    return (int.from_bytes(header[5:9], "big"), int.from_bytes(header[9:13], "big"),
            int.from_bytes(header[13:21], "big"))


def encode_answer(code, stdout):
    return (ANSWER_MAGIC + bytes((PROTOCOL_VERSION, code & 0xFF)) + len(stdout).to_bytes(4, "big") + stdout)


SHIM_MARK = "# multiplex shim"
_SETTINGS_START = "# --- settings (written by `multiplex install --daemon`) ---\n"
_SETTINGS_END = "# --- end of settings ---\n"
_DAEMON_SIDE = "# --- daemon side only: render() leaves this section out of the installed shim ---\n"
_DAEMON_SIDE_END = "# --- end of the daemon side ---\n"
#: sun_path holds 108 bytes, the last a NUL
SOCKET_PATH_MAX = 107


def render(socket_path, fallback_argv, python):
    """The text of an installed shim: this file with its settings (socket, fallback) baked in and
    `python -IS` as its interpreter (one shebang argument: Linux passes everything after the
    interpreter as one). The module docstring and this daemon-side section are left out: the
    shim is compiled at every run (a script has no .pyc), and every line costs start-up.
    ValueError for a setting the shim could not use."""
    if not isinstance(python, str) or not python.startswith("/") or any(c.isspace() for c in python) \
            or len(python) > 200:
        raise ValueError(f"python must be an absolute path without whitespace (a shebang), got {python!r}")
    if not isinstance(socket_path, str) or not socket_path.startswith("/") or "\0" in socket_path:
        raise ValueError(f"socket path must be an absolute path, got {socket_path!r}")
    if len(socket_path.encode("utf-8", "surrogateescape")) > SOCKET_PATH_MAX:
        raise ValueError(f"socket path {socket_path!r} is longer than {SOCKET_PATH_MAX} bytes (a unix socket's limit)")
    if fallback_argv is not None:
        fallback_argv = list(fallback_argv)
        if not fallback_argv or not all(isinstance(a, str) and "\0" not in a for a in fallback_argv) \
                or not fallback_argv[0].startswith("/"):
            raise ValueError(f"fallback must be an argv whose first item is an absolute path, got {fallback_argv!r}")
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    head, rest = source.split(_SETTINGS_START, 1)
    _, tail = rest.split(_SETTINGS_END, 1)
    head = head.split("\n", 1)[1]  # our own shebang goes
    head = head[:head.index('"""')] + "# (protocol and choices: multiplex/daemon/shim.py in the multiplex package)\n"
    code, daemon_side = tail.split(_DAEMON_SIDE, 1)
    tail = code + daemon_side.split(_DAEMON_SIDE_END, 1)[1]
    settings = f"SOCKET = {socket_path!r}\nFALLBACK = {fallback_argv!r}\n"
    return f"#!{python} -IS\n{head}{_SETTINGS_START}{settings}{_SETTINGS_END}{tail}"


# --- end of the daemon side ---


if __name__ == "__main__":
    main()
