"""Kubernetes API access for multiplex, on the `kubernetes` client library.

`import kubernetes` is slow (a few hundred ms), so this module imports it only when a client
first makes a call: building a KubeClient is free, and a config with no Kubernetes source never
pays for it.

Credentials, first match wins:
1. `kubeconfig` given: that file (its current context, or `context`);
2. KUBERNETES_SERVICE_HOST set: in-cluster, the pod's service account (token re-read on rotation);
3. $KUBECONFIG or ~/.kube/config when it exists (an admin running the CLI);
otherwise NoCredentials (code 7).

Every call has a timeout (connect and read, `timeout` seconds) and is retried `retries` times
with jittered exponential backoff when the server cannot be reached, times out, or answers 429
or 5xx (Retry-After honoured, capped). Then Unavailable (code 11) naming the server URL. Other
answers map to the typed errors of multiplex.k8s.errors (404 NotFound, 409 Conflict /
AlreadyExists, 403 Forbidden, ...). Writes are retried too: a create that did land answers
AlreadyExists on the retry, a replace answers Conflict, a delete NotFound, so callers that read
back after those errors are safe.

`watch()` opens a watch with the same timeouts, retries and typed errors and returns a
WatchStream of (type, object) events (multiplex/k8s/informer.py keeps caches with it).

Objects come back as plain dicts (the JSON the server sent), never as generated models.
One client is safe to share between threads and to keep for the life of a process.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import quote

from ..util import log as _log
from . import errors
from .errors import KubeError, NoCredentials, Unavailable

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PAGE_SIZE = 500
#: seconds a watch's read may wait beyond its timeoutSeconds before the connection counts as dead
WATCH_READ_MARGIN = 30.0

MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Resource:
    """A kind of object on the API: where it lives and how messages name it."""
    group: str
    version: str
    plural: str
    kind: str

    def path(self, namespace: Optional[str] = None, name: str = "", subresource: str = "") -> str:
        p = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if namespace:
            p += f"/namespaces/{quote(namespace, safe='')}"
        p += f"/{self.plural}"
        if name:
            p += f"/{quote(name, safe='')}"
        if subresource:
            p += f"/{subresource}"
        return p

    def describe(self, namespace: Optional[str], name: str = "") -> str:
        """`pod default/web`, `NetworkAttachmentDefinition default/macvlan`, `node n1`, `pods in default`."""
        if name:
            return f"{self.kind} {namespace}/{name}" if namespace else f"{self.kind} {name}"
        return f"{self.plural} in namespace {namespace}" if namespace else f"{self.plural}"


PODS = Resource("", "v1", "pods", "pod")
NODES = Resource("", "v1", "nodes", "node")
NADS = Resource("k8s.cni.cncf.io", "v1", "network-attachment-definitions", "NetworkAttachmentDefinition")


def custom(group: str, version: str, plural: str) -> Resource:
    known = {(r.group, r.plural): r for r in (PODS, NODES, NADS)}
    r = known.get((group, plural))
    if r is not None and r.version == version:
        return r
    return Resource(group, version, plural, f"{plural}.{group}" if group else plural)


def require_kubernetes() -> None:
    """The `kubernetes` package is an extra (`multiplex[k8s]`): without it, a config that names a
    kubeconfig (or runs in a cluster) gets a CNI error saying what to install, not an ImportError."""
    try:
        import kubernetes.client  # noqa: F401
    except ImportError as e:
        raise NoCredentials(f"talking to the Kubernetes API needs the 'kubernetes' Python package, which "
                            f"is not installed ({e}); install multiplex[k8s] (pip install 'multiplex[k8s]')",
                            "field: kubeconfig; allowed: install multiplex[k8s], or use nadDir/podDir "
                            "without a kubeconfig") from None


class ObjectList(list):
    """The items of a list call, with the list's resourceVersion (to start a watch from)."""
    resource_version: str = ""


class KubeClient:
    """Kubernetes API client: pods, NADs, nodes, and any custom object, as dicts."""

    def __init__(self, kubeconfig: Optional[str] = None, timeout: float = 10.0, retries: int = 3, *,
                 context: Optional[str] = None, backoff: float = 0.2, max_backoff: float = 5.0,
                 service_account_dir: str = SERVICE_ACCOUNT_DIR, log: Optional[_log.Logger] = None):
        self.kubeconfig = kubeconfig or None
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.context = context
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.service_account_dir = service_account_dir
        #: where it logs: a call's logger when made for one call (the IPAM's store), else the process's
        self.log = log or _log.get()
        self.stats: Counter = Counter()        # requests, retries, failures (for benchmarks)
        self.sleep: Callable[[float], None] = time.sleep
        self._api = None
        self._host = ""
        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------------------------
    @property
    def server(self) -> str:
        """The API server URL (loads credentials on first use)."""
        self._client()
        return self._host

    def _client(self):
        if self._api is None:
            with self._lock:
                if self._api is None:
                    started = time.perf_counter()
                    require_kubernetes()
                    from kubernetes.client import ApiClient
                    cfg = self._configuration()
                    self._host = cfg.host
                    api = ApiClient(cfg)
                    api.user_agent = "multiplex"
                    self._api = api
                    # importing the client and loading credentials: a per-call process pays it once
                    self.stats["setup_ms"] += (time.perf_counter() - started) * 1000
        return self._api

    def _configuration(self):
        from kubernetes.client import Configuration
        from kubernetes.config import ConfigException

        cfg = Configuration()
        try:
            source = self._load_credentials(cfg)
        except (ConfigException, OSError, ValueError, TypeError, KeyError) as e:
            where = self.kubeconfig or ("in-cluster service account " + self.service_account_dir
                                        if os.environ.get("KUBERNETES_SERVICE_HOST") else "kubeconfig")
            raise NoCredentials(f"cannot load Kubernetes credentials from {where}: {e}",
                                "field: kubeconfig; allowed: a readable kubeconfig file, or run in a pod "
                                "with a service account") from None
        cfg.retries = False           # our loop retries, so every attempt is counted and bounded
        if hasattr(cfg, "client_go_retries"):
            cfg.client_go_retries = False
        self.log.debug("kubernetes credentials loaded", source=source, server=cfg.host)
        return cfg

    def _load_credentials(self, cfg) -> str:
        from kubernetes.config import incluster_config, kube_config

        if self.kubeconfig:
            if not os.path.isfile(self.kubeconfig):
                raise NoCredentials(f"kubeconfig {self.kubeconfig} does not exist",
                                    "field: kubeconfig; allowed: the path of a readable kubeconfig file")
            kube_config.load_kube_config(config_file=self.kubeconfig, context=self.context,
                                         client_configuration=cfg, persist_config=False)
            return self.kubeconfig
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            incluster_config.InClusterConfigLoader(
                token_filename=os.path.join(self.service_account_dir, "token"),
                cert_filename=os.path.join(self.service_account_dir, "ca.crt"),
                try_refresh_token=True).load_and_set(cfg)
            return "in-cluster"
        fallback = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
        if os.path.isfile(fallback):
            kube_config.load_kube_config(config_file=fallback, context=self.context,
                                         client_configuration=cfg, persist_config=False)
            return fallback
        raise NoCredentials("no Kubernetes credentials: no kubeconfig configured, not running in a "
                            "cluster (KUBERNETES_SERVICE_HOST unset), and no $KUBECONFIG or ~/.kube/config",
                            "field: kubeconfig; allowed: the path of a kubeconfig file")

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    # --- the one request path -----------------------------------------------------------------
    def request(self, verb: str, method: str, resource: Resource, namespace: Optional[str] = None,
                name: str = "", *, subresource: str = "", query: Optional[dict] = None,
                body: Any = None, content_type: str = "application/json") -> dict:
        """One API call with timeout and retries; the decoded JSON answer, or a typed KubeError.
        `verb` is the RBAC verb (get, list, create, update, patch, delete), used in messages;
        `name` is the object's (for create it names the object in messages, the URL is the collection)."""
        resp = self._send(verb, method, resource, namespace, name, subresource, query, body, content_type,
                          read_timeout=self.timeout)
        try:
            data = resp.read()
        finally:
            resp.response.release_conn()
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise errors.Invalid(f"the API server sent a non-JSON answer to {verb} {resource.describe(namespace, name)}",
                                 f"server: {self._host}", resp.status) from None

    def _send(self, verb, method, resource, namespace, name, subresource, query, body, content_type,
              read_timeout: float):
        api = self._client()  # first: the client's import is counted in setup_ms, not request_ms
        started = time.perf_counter()
        try:
            return self._send_timed(api, verb, method, resource, namespace, name, subresource, query, body,
                                    content_type, read_timeout)
        finally:
            self.stats["request_ms"] += (time.perf_counter() - started) * 1000

    def _send_timed(self, api, verb, method, resource, namespace, name, subresource, query, body, content_type,
                    read_timeout: float):
        import urllib3
        from kubernetes.client.exceptions import ApiException

        target = resource.describe(namespace, name)
        path = resource.path(namespace, "" if verb == "create" else name, subresource)
        params = [(k, v) for k, v in (query or {}).items() if v not in (None, "")]
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
            self.stats["requests"] += 1
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            try:
                m, url, hdrs, b, post = api.param_serialize(method=method, resource_path=path, query_params=params,
                                                            header_params=headers, body=body,
                                                            auth_settings=["BearerToken"])
                resp = api.call_api(m, url, header_params=hdrs, body=b, post_params=post,
                                    _request_timeout=(self.timeout, read_timeout))
            except ApiException as e:        # TLS failures come back this way (status 0): not retried
                self.stats["failures"] += 1
                raise Unavailable(f"Kubernetes API server {self._host}: {verb} {target} failed: "
                                  f"{(e.reason or '').splitlines()[0] if e.reason else e}",
                                  f"server: {self._host}", e.status or 0) from None
            except (urllib3.exceptions.HTTPError, OSError) as e:
                last = _short(e)
                if attempt < self.retries:
                    self._pause(attempt, None, verb, target, last)
                    continue
                self.stats["failures"] += 1
                raise Unavailable(f"Kubernetes API server {self._host} unreachable: {verb} {target} failed "
                                  f"{attempt + 1} times, last: {last}",
                                  f"server: {self._host}; timeout: {self.timeout:g}s; retries: {self.retries}") from None
            if 200 <= resp.status < 300:
                return resp
            try:
                data = resp.read()
            finally:
                resp.response.release_conn()
            err = self._error(verb, resource, namespace, name, resp.status, data, attempt + 1)
            if isinstance(err, Unavailable) and attempt < self.retries:
                self._pause(attempt, resp.headers.get("Retry-After"), verb, target, f"HTTP {resp.status}")
                continue
            self.stats["failures"] += 1
            raise err
        raise AssertionError("unreachable")  # pragma: no cover

    def _pause(self, attempt: int, retry_after: Optional[str], verb: str, target: str, why: str) -> None:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * random.uniform(0.5, 1.0)
        if retry_after and str(retry_after).isdigit():
            delay = max(delay, min(float(retry_after), self.max_backoff))
        self.log.warning("kubernetes API call failed, retrying", verb=verb, target=target, server=self._host,
                          attempt=attempt + 1, retries=self.retries, error=why, delay=round(delay, 3))
        self.sleep(delay)

    def _error(self, verb: str, resource: Resource, namespace: Optional[str], name: str, status: int,
               data: bytes, attempts: int) -> KubeError:
        try:
            st = json.loads(data) if data else {}
        except ValueError:
            st = {}
        st = st if isinstance(st, dict) else {}
        reason = str(st.get("reason") or "")
        message = str(st.get("message") or (data[:200].decode(errors="replace") if data else f"HTTP {status}"))
        cls = errors.for_status(status, reason)
        target = resource.describe(namespace, name)
        ns_part = f"namespace: {namespace}; " if namespace else ""
        if cls is errors.NotFound:
            return cls(f"{target} not found", f"kind: {resource.kind}; {ns_part}name: {name}", status, reason)
        if cls is errors.Forbidden:
            what = "not authenticated" if status == 401 else "not allowed"
            return cls(f"{what} to {verb} {resource.plural}{' in namespace ' + namespace if namespace else ''} "
                       f"({target}): {message}",
                       f"verb: {verb}; resource: {resource.plural}; group: {resource.group or 'core'}; "
                       f"{ns_part}allowed: grant '{verb}' on '{resource.plural}' to multiplex's service account "
                       f"(manifests/rbac) or fix the kubeconfig credentials", status, reason)
        if cls is errors.AlreadyExists:
            return cls(f"{target} already exists", f"kind: {resource.kind}; {ns_part}name: {name}", status, reason)
        if cls is errors.Conflict:
            return cls(f"{verb} {target} conflicted: {message}", f"kind: {resource.kind}; {ns_part}name: {name}; "
                       "allowed: re-read the object and retry with its current resourceVersion", status, reason)
        if cls is errors.Unavailable:
            return cls(f"Kubernetes API server {self._host} unavailable: {verb} {target} answered HTTP {status} "
                       f"{attempts} times: {message}", f"server: {self._host}; retries: {self.retries}", status, reason)
        return cls(f"{verb} {target}: {message}", f"{ns_part}reason: {reason or status}", status, reason)

    # --- pods, NADs, nodes --------------------------------------------------------------------
    def get_pod(self, namespace: str, name: str) -> dict:
        return self.request("get", "GET", PODS, namespace, name)

    def list_pods(self, namespace: Optional[str] = None, label_selector: str = "",
                  field_selector: str = "") -> ObjectList:
        """Pods of one namespace, or of all (`field_selector="spec.nodeName=n1"` for one node's)."""
        return self._list(PODS, namespace, label_selector, field_selector)

    def patch_pod_annotations(self, namespace: str, name: str, annotations: dict[str, Optional[str]],
                              uid: str = "") -> dict:
        """Merge the annotations into the pod (a None value removes one). With `uid`, a pod of the
        same name but another UID (recreated) is not touched: Conflict."""
        patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
        if uid:
            patch["metadata"]["uid"] = uid
        return self.request("patch", "PATCH", PODS, namespace, name, body=patch, content_type=MERGE_PATCH)

    def get_nad(self, namespace: str, name: str) -> dict:
        return self.request("get", "GET", NADS, namespace, name)

    def get_node(self, name: str) -> dict:
        return self.request("get", "GET", NODES, None, name)

    def list_nodes(self, label_selector: str = "") -> ObjectList:
        return self._list(NODES, None, label_selector)

    # --- any object (custom resources; group "" reaches core/v1 too) --------------------------
    def get_object(self, group: str, version: str, plural: str, name: str, namespace: Optional[str] = None) -> dict:
        return self.request("get", "GET", custom(group, version, plural), namespace, name)

    def list_objects(self, group: str, version: str, plural: str, namespace: Optional[str] = None,
                     label_selector: str = "", field_selector: str = "") -> ObjectList:
        return self._list(custom(group, version, plural), namespace, label_selector, field_selector)

    def create_object(self, group: str, version: str, plural: str, body: dict,
                      namespace: Optional[str] = None) -> dict:
        """Create; AlreadyExists when the name is taken (the atomic claim the IPAM store relies on)."""
        name = str((body.get("metadata") or {}).get("name") or "")
        return self.request("create", "POST", custom(group, version, plural), namespace, name, body=body)

    def replace_object(self, group: str, version: str, plural: str, name: str, body: dict,
                       namespace: Optional[str] = None, subresource: str = "") -> dict:
        """PUT the whole object. `body.metadata.resourceVersion` is the precondition: Conflict
        when the object changed since it was read (re-read and try again)."""
        return self.request("update", "PUT", custom(group, version, plural), namespace, name,
                            subresource=subresource, body=body)

    def delete_object(self, group: str, version: str, plural: str, name: str, namespace: Optional[str] = None,
                      *, resource_version: str = "", uid: str = "") -> dict:
        """Delete; with `resource_version`/`uid` only if the object is still that one (Conflict if not)."""
        pre = {k: v for k, v in (("resourceVersion", resource_version), ("uid", uid)) if v}
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": pre} if pre else None
        return self.request("delete", "DELETE", custom(group, version, plural), namespace, name, body=body)

    def patch_node_annotations(self, name: str, annotations: dict[str, Optional[str]]) -> dict:
        """Merge the annotations into the Node `name` (a None value removes one)."""
        return self.request("patch", "PATCH", NODES, None, name, body={"metadata": {"annotations": annotations}},
                            content_type=MERGE_PATCH)

    # --- any resource, by its Resource (informers) --------------------------------------------
    def get_resource(self, resource: Resource, namespace: Optional[str], name: str) -> dict:
        return self.request("get", "GET", resource, namespace, name)

    def list_resource(self, resource: Resource, namespace: Optional[str] = None, label_selector: str = "",
                      field_selector: str = "") -> ObjectList:
        """Every object (paged), with the list's resourceVersion to start a watch from."""
        return self._list(resource, namespace, label_selector, field_selector)

    def watch(self, resource: Resource, namespace: Optional[str] = None, resource_version: str = "", *,
              label_selector: str = "", field_selector: str = "", timeout_seconds: int = 300,
              bookmarks: bool = True) -> "WatchStream":
        """Open a watch from `resource_version`: iterate the returned stream for (type, object).
        The server ends it after `timeout_seconds`; the read timeout is that plus WATCH_READ_MARGIN,
        so a silently dead connection cannot look alive for longer. Opening it is one request with
        the client's connect timeout, retries and typed errors (410 Gone: Expired)."""
        query = {"watch": "true", "resourceVersion": resource_version, "labelSelector": label_selector,
                 "fieldSelector": field_selector, "timeoutSeconds": str(int(timeout_seconds)),
                 "allowWatchBookmarks": "true" if bookmarks else ""}
        resp = self._send("watch", "GET", resource, namespace, "", "", query, None, "application/json",
                          read_timeout=float(timeout_seconds) + WATCH_READ_MARGIN)
        self.stats["watches"] += 1
        return WatchStream(self, resp, resource, namespace)

    def _list(self, resource: Resource, namespace: Optional[str], label_selector: str = "",
              field_selector: str = "") -> ObjectList:
        out = ObjectList()
        cont = ""
        while True:
            page = self.request("list", "GET", resource, namespace, query={
                "labelSelector": label_selector, "fieldSelector": field_selector,
                "limit": str(PAGE_SIZE), "continue": cont})
            if not out.resource_version:
                out.resource_version = str((page.get("metadata") or {}).get("resourceVersion", ""))
            out.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                return out


class WatchStream:
    """One open watch: iterating it yields (type, object) for ADDED, MODIFIED, DELETED and
    BOOKMARK events and ends when the server ends the watch. An ERROR event raises its typed error
    (410 Gone: Expired, so the caller relists); a connection cut mid-stream raises Unavailable.
    `close()`, from any thread, ends the iteration quietly (it shuts the socket down, so a
    blocked read returns at once)."""

    def __init__(self, client: KubeClient, resp: Any, resource: Resource, namespace: Optional[str]):
        self._client = client
        self._resp = resp
        self._target = resource.describe(namespace)
        self._resource = resource
        self._namespace = namespace
        self.closed = False

    def __iter__(self):
        import urllib3

        raw = self._resp.response
        buf = b""
        try:
            for chunk in raw.stream(amt=None, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield self._event(line)
            if buf.strip() and not self.closed:
                yield self._event(buf)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            if self.closed:
                return
            self._discard()
            raise Unavailable(f"Kubernetes API server {self._client._host}: the watch of {self._target} was cut: "
                              f"{_short(e)}", f"server: {self._client._host}") from None
        if self.closed:
            return
        raw.release_conn()   # a watch the server ended cleanly: its connection can serve again

    def _event(self, line: bytes) -> tuple[str, dict]:
        try:
            ev = json.loads(line)
        except ValueError:
            raise errors.Invalid(f"the API server sent a non-JSON watch event for {self._target}",
                                 f"server: {self._client._host}") from None
        etype, obj = str(ev.get("type") or ""), ev.get("object") or {}
        if etype == "ERROR":
            self._discard()
            status = int(obj.get("code") or 0) if isinstance(obj, dict) else 0
            reason = str(obj.get("reason") or "") if isinstance(obj, dict) else ""
            message = str(obj.get("message") or "") if isinstance(obj, dict) else str(obj)
            cls = errors.for_status(status, reason) if status else errors.Invalid
            raise cls(f"the watch of {self._target} ended with an error: {message or status}",
                      f"server: {self._client._host}; status: {status}; reason: {reason}", status, reason)
        return etype, obj if isinstance(obj, dict) else {}

    def _discard(self) -> None:
        """The connection is in an unknown state: close it rather than return it to the pool."""
        try:
            self._resp.response.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways
            pass

    def close(self) -> None:
        self.closed = True
        raw = self._resp.response
        try:
            if hasattr(raw, "shutdown"):
                raw.shutdown()
        except Exception:  # noqa: BLE001
            pass
        self._discard()


def _short(e: BaseException) -> str:
    """A one-line reason for a connection failure: `connection refused`, `read timed out`."""
    text = str(getattr(e, "reason", None) or e)
    low = text.lower()
    for needle, short in (("refused", "connection refused"), ("timed out", "timed out"),
                          ("name or service not known", "host name not known"), ("reset", "connection reset")):
        if needle in low:
            return f"{short} ({type(e).__name__})"
    return f"{type(e).__name__}: {text[:200]}"
