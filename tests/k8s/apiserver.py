"""A stateful fake Kubernetes API server over real HTTP, for tests.

The `kubernetes` Python client talks to it unchanged (through a kubeconfig this module writes).
Why not kmock: kmock (0.8) serves CRUD and watch but neither bumps nor checks resourceVersion,
and the IPAM store depends on a stale resourceVersion being refused with 409.
It serves, for any group/version/plural (core v1 pods, nodes, namespaces; NADs
`k8s.cni.cncf.io/v1`; any custom resource, namespaced or cluster-scoped):

    GET    .../{plural}                 list (labelSelector, fieldSelector, limit/continue)
    GET    .../{plural}?watch=true      watch: chunked JSON lines (resourceVersion, timeoutSeconds)
    GET    .../{plural}/{name}          get                       404 NotFound
    POST   .../{plural}                 create                    409 AlreadyExists
    PUT    .../{plural}/{name}[/status] replace                   409 Conflict on a stale resourceVersion
    PATCH  .../{plural}/{name}[/status] merge, strategic (as merge) and JSON patch
    DELETE .../{plural}/{name}          delete (DeleteOptions preconditions)  404 NotFound
    DELETE .../{plural}                 deletecollection

Semantics (resourceVersion, uid, events) live in fakestore.py. Test controls:
- `stop()` / `start()`: the API goes down (connection refused, open connections cut) and comes
  back on the same port with the same objects;
- `count(verb, resource, code)` / `reset_counts()`: requests seen, by verb (`get`, `list`,
  `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`), resource and status;
- `latency` (seconds before each answer), `fail_next(n, status)` (5xx/429 injection),
  `deny(verb, resource)` (403), `token` (401 without it), `tls=True` (HTTPS with a throwaway CA).
- `store`: direct helpers (`add_pod`, `add_nad`, `add_node`, `get`, `delete`, ...) that go
  through the same semantics without HTTP.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from tests.k8s.fakestore import ApiError, ResourceType, Store, field_matcher, label_matcher

PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "merge",   # same as merge for maps; lists replaced
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
}


@dataclass
class Route:
    """What a URL names: the resource type, namespace, object name and subresource."""
    rt: Optional[ResourceType]
    namespace: Optional[str] = None
    name: str = ""
    subresource: str = ""


@dataclass
class Fault:
    remaining: int
    status: int
    verbs: Optional[set] = None
    resource: str = ""
    retry_after: Optional[int] = None

    def matches(self, verb: str, resource: str) -> bool:
        return (self.remaining > 0 and (not self.verbs or verb in self.verbs)
                and (not self.resource or self.resource == resource))


@dataclass
class Request:
    verb: str
    resource: str
    namespace: str
    name: str
    code: int = 0


# --- the test-facing object store -------------------------------------------------------------

class ObjectStore(Store):
    """The server's store with short helpers for tests (same semantics as the API)."""

    def rt(self, group: str, version: str, plural: str, namespaced: bool = True) -> ResourceType:
        return self.resource(group, version, plural, namespaced)

    def add(self, obj: dict, plural: Optional[str] = None) -> dict:
        """Create any object from its apiVersion/kind (plural guessed as kind lower + 's')."""
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = plural or next((t.plural for t in self.types.values()
                                 if t.group == group and t.kind == obj["kind"]), obj["kind"].lower() + "s")
        ns = (obj.get("metadata") or {}).get("namespace")
        rt = self.resource(group, version, plural, ns is not None)
        return self.create(rt, ns, obj)

    def add_namespace(self, name: str) -> dict:
        return self.create(self.rt("", "v1", "namespaces"), None, {"metadata": {"name": name}})

    def add_pod(self, name: str, namespace: str = "default", annotations: Optional[dict] = None,
                labels: Optional[dict] = None, node_name: str = "", uid: str = "") -> dict:
        """A pod; `uid` forces metadata.uid (to match a CNI_ARGS K8S_POD_UID)."""
        pod = {"metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations or {}),
                            "labels": dict(labels or {})},
               "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "busybox"}]},
               "status": {"phase": "Pending"}}
        return self.create(self.rt("", "v1", "pods"), namespace, pod, uid=uid)

    def add_nad(self, name: str, namespace: str = "default", config: Any = None,
                annotations: Optional[dict] = None) -> dict:
        """A NetworkAttachmentDefinition; `config` a dict (dumped to JSON), a JSON string, or None
        for an empty spec.config (the config then comes from a file on the node)."""
        spec = {"config": config if isinstance(config, str) else json.dumps(config) if config is not None else ""}
        nad = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations or {})},
               "spec": spec}
        return self.create(self.rt("k8s.cni.cncf.io", "v1", "network-attachment-definitions"), namespace, nad)

    def add_node(self, name: str, labels: Optional[dict] = None, pod_cidrs: Optional[list] = None) -> dict:
        node = {"metadata": {"name": name, "labels": dict(labels or {})},
                "spec": {"podCIDRs": list(pod_cidrs or [])}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        return self.create(self.rt("", "v1", "nodes", False), None, node)

    def get_pod(self, name: str, namespace: str = "default") -> dict:
        return self.get(self.rt("", "v1", "pods"), namespace, name)

    def get_object(self, group: str, version: str, plural: str, name: str, namespace: Optional[str] = None) -> dict:
        return self.get(self.rt(group, version, plural, namespace is not None), namespace, name)

    def items(self, group: str, version: str, plural: str, namespace: Optional[str] = None) -> list[dict]:
        return self.list(self.rt(group, version, plural, namespace is not None), namespace)["items"]

    def delete_pod(self, name: str, namespace: str = "default") -> dict:
        return self.delete(self.rt("", "v1", "pods"), namespace, name)

    def delete_node(self, name: str) -> dict:
        return self.delete(self.rt("", "v1", "nodes", False), None, name)

    def delete_object(self, group: str, version: str, plural: str, name: str, namespace: Optional[str] = None) -> dict:
        return self.delete(self.rt(group, version, plural, namespace is not None), namespace, name)


# --- HTTP -------------------------------------------------------------------------------------

def _decode_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None


def parse_path(store: Store, path: str) -> Route:
    """/api/v1/... and /apis/{group}/{version}/... -> Route (rt None for discovery paths)."""
    parts = [unquote(p) for p in path.strip("/").split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return Route(None)
    if not rest:
        return Route(None)
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
        rt = store.resource(group, version, rest[0], True)
        if not rt.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
    else:
        namespace = None
        rt = store.resource(group, version, rest[0], None)
    if len(rest) > 3:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return Route(rt, namespace, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else "")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, api: "ApiServer"):
        self.api = api
        self.open_sockets: set = set()
        self.sockets_lock = threading.Lock()
        super().__init__(addr, handler)

    def get_request(self):
        conn, addr = super().get_request()
        if self.api.ssl_context is not None:
            conn = self.api.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def process_request(self, request, client_address):
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        pass   # a client that goes away mid-request (or a failed TLS handshake) is not a server error

    def cut_connections(self) -> None:
        with self.sockets_lock:
            socks = list(self.open_sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # else a small body waits for the client's delayed ACK (~40 ms)
    wbufsize = -1                    # buffered: headers and body leave in one segment on flush
    server: _HTTPServer

    def log_message(self, fmt, *args):  # quiet: tests read counts, not access logs
        pass

    def setup(self):
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()

    def handle(self):
        with contextlib.suppress(ssl.SSLError, ConnectionError, OSError):
            super().handle()

    def finish(self):
        with contextlib.suppress(ssl.SSLError, ConnectionError, OSError):
            super().finish()

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # plumbing ---------------------------------------------------------------------------------
    def _send_json(self, code: int, body: Any, headers: Optional[dict] = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        req = Request(verb=method.lower(), resource="", namespace="", name="")
        try:
            raw = self._raw_body()      # read first: an unread body would corrupt the next request
            if self._discovery(method, url.path):
                return
            route = parse_path(api.store, url.path)
            if route.rt is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            req.verb = self._verb(method, route, q)
            req.resource, req.namespace, req.name = route.rt.plural, route.namespace or "", route.name
            api.record(req)             # counted on arrival, so a client that timed out was still seen
            api.wait_latency()
            if api.token and not api.authorized(self.headers.get("Authorization", "")):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            api.check_access(req, route.rt)
            fault = api.take_fault(req.verb, req.resource)
            if fault is not None:
                reason = {429: "TooManyRequests", 503: "ServiceUnavailable", 504: "Timeout"}.get(fault.status,
                                                                                              "InternalError")
                err = ApiError(fault.status, reason, f"injected failure {fault.status}")
                err.headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                raise err
            body = _decode_body(raw)
            if req.verb == "watch":
                req.code = 200
                self._watch(route, q)
                return
            code, out = self._serve(req.verb, route, q, body, self.headers.get("Content-Type", ""))
            req.code = code
            self._send_json(code, out)
        except ApiError as e:
            if not req.resource:
                api.record(req)
            req.code = e.code
            self._send_json(e.code, e.status(), getattr(e, "headers", None))

    def _raw_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _discovery(self, method: str, path: str) -> bool:
        if method != "GET":
            return False
        path = path.rstrip("/")
        if path == "/version":
            self._send_json(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-multiplex-test"})
        elif path in ("/healthz", "/readyz", "/livez"):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/api":
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"]})
        else:
            return False
        return True

    @staticmethod
    def _verb(method: str, route: Route, q: dict) -> str:
        if method == "GET":
            if route.name:
                return "get"
            return "watch" if q.get("watch") in ("true", "1") else "list"
        if method == "POST":
            if route.name:
                raise ApiError(405, "MethodNotAllowed", "POST is only allowed on a collection")
            return "create"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        if not route.name:
            raise ApiError(405, "MethodNotAllowed", f"{method} needs an object name")
        return "update" if method == "PUT" else "patch"

    def _serve(self, verb: str, route: Route, q: dict, body: Any, content_type: str) -> tuple[int, dict]:
        store, rt, ns, name = self.server.api.store, route.rt, route.namespace, route.name
        if route.subresource and route.subresource != "status":
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({route.subresource})")
        if verb == "get":
            return 200, store.get(rt, ns, name)
        if verb == "list":
            return 200, store.list(rt, ns, q.get("labelSelector", ""), q.get("fieldSelector", ""),
                                   int(q.get("limit") or 0), q.get("continue", ""))
        if verb == "create":
            return 201, store.create(rt, ns, body)
        if verb == "update":
            return 200, store.replace(rt, ns, name, body, route.subresource)
        if verb == "patch":
            ptype = PATCH_TYPES.get(content_type.split(";")[0].strip())
            if ptype is None or ptype == "apply":
                raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                               f"accepted media types include: {', '.join(k for k, v in PATCH_TYPES.items() if v != 'apply')}")
            return 200, store.patch(rt, ns, name, ptype, body, route.subresource)
        if verb == "delete":
            pre = (body or {}).get("preconditions") if isinstance(body, dict) else None
            return 200, store.delete(rt, ns, name, pre)
        if verb == "deletecollection":
            return 200, store.delete_collection(rt, ns, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        raise ApiError(405, "MethodNotAllowed", f"verb {verb} not served")

    def _watch(self, route: Route, q: dict) -> None:
        api = self.server.api
        timeout = float(q.get("timeoutSeconds") or 1800)
        rv = q.get("resourceVersion", "")
        if rv and not rv.isdigit():
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv!r}")
        # the selectors are checked before any header is sent, so a bad one is a 400
        label_matcher(q.get("labelSelector", ""))
        field_matcher(q.get("fieldSelector", ""))
        events = api.store.watch(route.rt, route.namespace, rv,
                                 q.get("labelSelector", ""), q.get("fieldSelector", ""),
                                 alive=lambda: api.running, deadline=time.monotonic() + timeout)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()      # as a real server: the client sees the watch open before any event

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            for etype, obj in events:
                chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
            if api.running:
                chunk(b"")
            else:
                self.close_connection = True
        except (BrokenPipeError, ConnectionError, OSError):
            self.close_connection = True


class ApiServer:
    """The test API server: `url`, `kubeconfig` (after write_kubeconfig), `store`, and the controls above."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool = False, token: str = "",
                 certdir: Optional[str] = None, netns: Optional[str] = None):
        self.host, self.port = host, port
        #: listen inside this network namespace (a path): a simulated node's own loopback
        self.netns = netns
        self.store = ObjectStore()
        self.token = token
        self.latency = 0.0
        self.running = False
        self.denied: set[tuple[str, str]] = set()
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.ssl_context: Optional[ssl.SSLContext] = None
        self.ca_file = ""
        self.kubeconfig = ""   # path of the kubeconfig written by write_kubeconfig()
        if tls:
            self.ca_file, cert, key = make_certificate(certdir or _tmpdir(), host)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.ssl_context = ctx

    # lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def start(self) -> "ApiServer":
        """Listen (on the same port as before after a stop()); objects are kept."""
        if self.running:
            return self
        if self.netns:
            # the listening socket is made inside the node's namespace and stays there
            from multiplex.netlink.netns import entered

            with entered(self.netns):
                self._httpd = _HTTPServer((self.host, self.port), _Handler, self)
        else:
            self._httpd = _HTTPServer((self.host, self.port), _Handler, self)
        self.port = self._httpd.server_address[1]
        self.running = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"apiserver:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The API goes away: new connections are refused and open ones (keep-alive, watches) cut."""
        if not self.running or self._httpd is None:
            return
        self.running = False
        with self.store.changed:
            self.store.changed.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.cut_connections()
        if self._thread:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # credentials ------------------------------------------------------------------------------
    def write_kubeconfig(self, path: str, namespace: str = "default") -> str:
        """Write a kubeconfig for this server (token user when `token` is set) and return its path."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca_file:
            cluster["certificate-authority"] = self.ca_file
        user = {"token": self.token} if self.token else {}
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
               "clusters": [{"name": "test", "cluster": cluster}],
               "users": [{"name": "test", "user": user}],
               "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)   # JSON is YAML: the client reads it as a kubeconfig
        self.kubeconfig = path
        return path

    # controls ---------------------------------------------------------------------------------
    def wait_latency(self) -> None:
        end = time.monotonic() + self.latency
        while self.running and time.monotonic() < end:
            time.sleep(min(0.02, end - time.monotonic()) if end > time.monotonic() else 0)

    def fail_next(self, count: int = 1, status: int = 503, verbs: Optional[set | list | str] = None,
                  resource: str = "", retry_after: Optional[int] = None) -> None:
        """Answer the next `count` matching requests with `status` (and Retry-After when given)."""
        verbs = {verbs} if isinstance(verbs, str) else set(verbs) if verbs else None
        with self._lock:
            self.faults.append(Fault(count, status, verbs, resource, retry_after))

    def take_fault(self, verb: str, resource: str) -> Optional[Fault]:
        with self._lock:
            for f in self.faults:
                if f.matches(verb, resource):
                    f.remaining -= 1
                    return f
        return None

    def authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and value.strip() == self.token

    def deny(self, verb: str, resource: str) -> None:
        """Answer `verb` on `resource` (plural) with 403 Forbidden, as missing RBAC would."""
        self.denied.add((verb, resource))

    def allow_all(self) -> None:
        self.denied.clear()

    def check_access(self, req: Request, rt: ResourceType) -> None:
        if (req.verb, req.resource) in self.denied or (req.verb, "*") in self.denied:
            where = f' in the namespace "{req.namespace}"' if req.namespace else " at the cluster scope"
            what = f'{rt.qualified} "{req.name}"' if req.name else rt.qualified
            raise ApiError(403, "Forbidden", f'{what} is forbidden: User "system:serviceaccount:kube-system:multiplex" '
                           f'cannot {req.verb} resource "{rt.plural}" in API group "{rt.group}"{where}',
                           {"name": req.name, "group": rt.group, "kind": rt.plural})

    def record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def count(self, verb: Optional[str] = None, resource: Optional[str] = None, code: Optional[int] = None) -> int:
        """Requests seen (since the last reset) matching verb, resource (plural) and status code."""
        with self._lock:
            return sum(1 for r in self.requests if (verb is None or r.verb == verb)
                       and (resource is None or r.resource == resource) and (code is None or r.code == code))

    def counts(self) -> Counter:
        """{verb: n} for every request seen."""
        with self._lock:
            return Counter(r.verb for r in self.requests)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()


# --- helpers ----------------------------------------------------------------------------------

def _tmpdir() -> str:
    import tempfile
    return tempfile.mkdtemp(prefix="mpx-apiserver-")


def make_certificate(directory: str, host: str) -> tuple[str, str, str]:
    """A self-signed certificate for `host` (openssl): returns (ca file, cert file, key file)."""
    cert, key = os.path.join(directory, "apiserver.crt"), os.path.join(directory, "apiserver.key")
    san = f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={host}", "-addext", f"subjectAltName={san}",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, cert, key


@contextlib.contextmanager
def running_apiserver(directory: str, **kwargs: Any) -> Iterator[ApiServer]:
    """Start a server, write `directory`/kubeconfig, stop it on exit (used by the fixture)."""
    server = ApiServer(certdir=str(directory) if kwargs.get("tls") else None, **kwargs).start()
    server.write_kubeconfig(os.path.join(str(directory), "kubeconfig"))
    try:
        yield server
    finally:
        server.stop()
