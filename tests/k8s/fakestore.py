"""The state behind the test API server: objects, one global resourceVersion, and a watch log.

Semantics follow the real API server where a client can see them:
- every write bumps one cluster-wide resourceVersion (a counter), stored in the object;
- create sets uid, creationTimestamp, generation and refuses an existing name (409 AlreadyExists);
- replace with a stale metadata.resourceVersion is refused (409 Conflict); custom resources
  must carry one (422), core objects may omit it (unconditional update);
- merge patch (strategic merge is treated as merge), JSON patch (RFC 6902); a patch naming a
  stale metadata.resourceVersion is refused (409);
- delete of a missing object is 404; DeleteOptions preconditions (uid, resourceVersion) are
  checked (409); objects with finalizers get a deletionTimestamp and stay until they are gone;
- every write is an event (ADDED, MODIFIED, DELETED) a watch can replay from a resourceVersion.
Not served: graceful pod deletion (pods go at once), namespace cascade, server-side apply,
admission, field validation against OpenAPI schemas.
"""
from __future__ import annotations

import base64
import bisect
import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

HISTORY = 20000  # watch events kept; older resourceVersions answer 410 Gone


class ApiError(Exception):
    """An error the server answers with a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: Optional[dict] = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def custom(self) -> bool:
        """A custom resource (served from a CRD): updates must name a resourceVersion."""
        return self.group not in ("", "apiextensions.k8s.io", "coordination.k8s.io")

    @property
    def qualified(self) -> str:
        """How the real server names the resource in messages: `pods`, `blocks.ipam.example`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


BUILTIN = [
    ResourceType("", "v1", "pods", "Pod", True),
    ResourceType("", "v1", "nodes", "Node", False),
    ResourceType("", "v1", "namespaces", "Namespace", False),
    ResourceType("", "v1", "configmaps", "ConfigMap", True),
    ResourceType("", "v1", "events", "Event", True),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True),
    ResourceType("k8s.cni.cncf.io", "v1", "network-attachment-definitions", "NetworkAttachmentDefinition", True),
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
]


def kind_from_plural(plural: str) -> str:
    """`network-attachment-definitions` -> `NetworkAttachmentDefinition` (a guess; register for exact)."""
    singular = plural[:-3] + "y" if plural.endswith("ies") else plural[:-1] if plural.endswith("s") else plural
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[-_.]", singular) if p)


@dataclass
class Event:
    rv: int
    type: str          # ADDED, MODIFIED, DELETED
    resource: tuple    # (group, plural)
    obj: dict


# --- selectors --------------------------------------------------------------------------------

_REQ = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_outside_parens(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in (x.strip() for x in parts) if p]


def label_matcher(selector: str) -> Callable[[dict], bool]:
    """Equality (=, ==, !=), set (in, notin) and existence (key, !key) requirements, ANDed."""
    reqs = []
    for part in _split_outside_parens(selector or ""):
        m = _REQ.match(part)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, val, setop, values = m.groups()
        if neg and (op or setop):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        if setop:
            vals = {v.strip() for v in values.split(",") if v.strip()}
            reqs.append(lambda l, k=key, s=vals, o=setop: (l.get(k) in s) if o == "in" else (l.get(k) not in s))
        elif op in ("=", "=="):
            reqs.append(lambda l, k=key, v=val: l.get(k) == v)
        elif op == "!=":
            reqs.append(lambda l, k=key, v=val: l.get(k) != v)
        elif neg:
            reqs.append(lambda l, k=key: k not in l)
        else:
            reqs.append(lambda l, k=key: k in l)
    return lambda obj: all(r((obj.get("metadata") or {}).get("labels") or {}) for r in reqs)


def _dotted(obj: dict, path: str) -> str:
    cur: Any = obj
    for p in path.split("."):
        cur = cur.get(p) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur).lower() if isinstance(cur, bool) else str(cur)


def field_matcher(selector: str) -> Callable[[dict], bool]:
    """`metadata.name=x`, `spec.nodeName==n`, `status.phase!=Running`, ANDed."""
    reqs = []
    for part in _split_outside_parens(selector or ""):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
        path, op, val = m.groups()
        reqs.append(lambda o, p=path, v=val.strip(), neg=(op == "!="): (_dotted(o, p) == v) != neg)
    return lambda obj: all(r(obj) for r in reqs)


# --- patches ----------------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> tuple[Any, str]:
    for p in parts[:-1]:
        if isinstance(doc, list):
            doc = doc[int(p)]
        elif isinstance(doc, dict) and p in doc:
            doc = doc[p]
        else:
            raise KeyError(p)
    return doc, parts[-1]


def json_patch(doc: Any, ops: list) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    for n, op in enumerate(ops):
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind == "test":
                parent, last = _resolve(doc, parts) if parts else (None, None)
                cur = doc if not parts else (parent[int(last)] if isinstance(parent, list) else parent[last])
                if cur != op.get("value"):
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                   f"test operation {n} failed at {op['path']}")
                continue
            if kind in ("move", "copy"):
                src_parent, src_last = _resolve(doc, _pointer(op["from"]))
                value = (src_parent[int(src_last)] if isinstance(src_parent, list) else src_parent[src_last])
                value = copy.deepcopy(value)
                if kind == "move":
                    if isinstance(src_parent, list):
                        del src_parent[int(src_last)]
                    else:
                        del src_parent[src_last]
                kind, op = "add", {"value": value}
            if not parts:
                if kind in ("add", "replace"):
                    doc = copy.deepcopy(op["value"])
                    continue
                raise ApiError(422, "Invalid", "cannot remove the whole document")
            parent, last = _resolve(doc, parts)
            if kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            elif kind == "replace":
                if isinstance(parent, list):
                    parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in parent:
                        raise KeyError(last)
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "add":
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(copy.deepcopy(op["value"]))
                    else:
                        parent.insert(int(last), copy.deepcopy(op["value"]))
                else:
                    parent[last] = copy.deepcopy(op["value"])
            else:
                raise ApiError(422, "Invalid", f"unknown JSON patch operation {kind!r}")
        except ApiError:
            raise
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                           f"JSON patch operation {n} ({op}) failed: {e!r}") from None
    return doc


# --- the store --------------------------------------------------------------------------------

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """Objects by resource, one resourceVersion counter, and the event log watches read."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.rv = 1   # as etcd: never "0", which a watch or list reads as "any version"
        self.types: dict[tuple[str, str], ResourceType] = {(t.group, t.plural): t for t in BUILTIN}
        self.guessed: set[tuple[str, str]] = set()
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
        self.events: list[Event] = []

    # resource types ---------------------------------------------------------------------------
    def register(self, group: str, version: str, plural: str, kind: str, namespaced: bool = True,
                 guessed: bool = False) -> ResourceType:
        """Serve a resource with this kind and scope (a CRD created through the API does the same).
        Unregistered custom resources are served anyway: scope guessed from the first URL, kind
        from the plural."""
        with self.lock:
            if not guessed:
                self.guessed.discard((group, plural))
            rt = ResourceType(group, version, plural, kind, namespaced)
            self.types[(group, plural)] = rt
            return rt

    def resource(self, group: str, version: str, plural: str, namespaced_hint: Optional[bool]) -> ResourceType:
        """The type of /{group}/{version}/{plural}; custom groups are served on first use."""
        with self.lock:
            rt = self.types.get((group, plural))
            if (rt is not None and (group, plural) in self.guessed and namespaced_hint and not rt.namespaced
                    and not self.objects.get((group, plural))):
                rt = None   # first seen cluster-wide (a list across namespaces), now used in a namespace
            if rt is not None:
                return rt if rt.version == version else ResourceType(group, version, plural, rt.kind, rt.namespaced)
            if group == "":
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            self.guessed.add((group, plural))
            return self.register(group, version, plural, kind_from_plural(plural), bool(namespaced_hint),
                                 guessed=True)

    def _learn_crd(self, crd: dict) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        versions = [v.get("name") for v in spec.get("versions") or [] if v.get("name")] or ["v1"]
        if spec.get("group") and names.get("plural"):
            self.register(spec["group"], versions[0], names["plural"], names.get("kind") or kind_from_plural(names["plural"]),
                          spec.get("scope", "Namespaced") == "Namespaced")

    # helpers ----------------------------------------------------------------------------------
    def _bucket(self, rt: ResourceType) -> dict[tuple[str, str], dict]:
        return self.objects.setdefault((rt.group, rt.plural), {})

    @staticmethod
    def _scope(rt: ResourceType, namespace: Optional[str]) -> str:
        return (namespace or "") if rt.namespaced else ""

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, rt: ResourceType, etype: str, obj: dict) -> None:
        self.events.append(Event(self.rv, etype, (rt.group, rt.plural), copy.deepcopy(obj)))
        if len(self.events) > HISTORY:
            del self.events[: len(self.events) - HISTORY]
        self.changed.notify_all()

    @staticmethod
    def _not_found(rt: ResourceType, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found',
                        {"name": name, "group": rt.group, "kind": rt.plural})

    @staticmethod
    def _conflict(rt: ResourceType, name: str, why: str) -> ApiError:
        return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
                        {"name": name, "group": rt.group, "kind": rt.plural})

    def _present(self, rt: ResourceType, obj: dict) -> dict:
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rt.api_version, rt.kind
        return out

    # verbs ------------------------------------------------------------------------------------
    def get(self, rt: ResourceType, namespace: Optional[str], name: str) -> dict:
        with self.lock:
            obj = self._bucket(rt).get((self._scope(rt, namespace), name))
            if obj is None:
                raise self._not_found(rt, name)
            return self._present(rt, obj)

    def list(self, rt: ResourceType, namespace: Optional[str] = None, label_selector: str = "",
             field_selector: str = "", limit: int = 0, cont: str = "") -> dict:
        match_l, match_f = label_matcher(label_selector), field_matcher(field_selector)
        with self.lock:
            keys = sorted(k for k in self._bucket(rt) if not (rt.namespaced and namespace) or k[0] == namespace)
            if cont:
                try:
                    after = tuple(json.loads(base64.urlsafe_b64decode(cont.encode())))
                except ValueError:
                    raise ApiError(400, "BadRequest", "invalid continue token") from None
                keys = [k for k in keys if k > after]
            items = [self._present(rt, self._bucket(rt)[k]) for k in keys]
            items = [o for o in items if match_l(o) and match_f(o)]
            meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
            if limit and len(items) > limit:
                last = items[limit - 1]["metadata"]
                key = [last.get("namespace", "") if rt.namespaced else "", last["name"]]
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(key).encode()).decode()
                meta["remainingItemCount"] = len(items) - limit
                items = items[:limit]
            return {"apiVersion": rt.api_version, "kind": rt.kind + "List", "metadata": meta, "items": items}

    def create(self, rt: ResourceType, namespace: Optional[str], body: dict, uid: str = "") -> dict:
        """`uid` forces metadata.uid (tests that match a runtime's K8S_POD_UID); else a new one."""
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if meta.get("resourceVersion"):
            raise ApiError(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", f"{rt.kind} is invalid: metadata.name: Required value: "
                               "name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if rt.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match "
                               "the namespace sent on the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        name = meta["name"]
        with self.lock:
            bucket = self._bucket(rt)
            key = (self._scope(rt, meta.get("namespace")), name)
            if key in bucket:
                raise ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists',
                               {"name": name, "group": rt.group, "kind": rt.plural})
            meta["uid"] = uid or str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta["resourceVersion"] = str(self._bump())
            meta.pop("deletionTimestamp", None)
            obj["apiVersion"], obj["kind"] = rt.api_version, body.get("kind") or rt.kind
            if body.get("kind") and body["kind"] != rt.kind:
                self.register(rt.group, rt.version, rt.plural, body["kind"], rt.namespaced)
            bucket[key] = obj
            self._emit(rt, "ADDED", obj)
            if rt.plural == "customresourcedefinitions":
                self._learn_crd(obj)
            return self._present(rt, obj)

    def _store_update(self, rt: ResourceType, key: tuple, old: dict, new: dict, by_server: bool = False) -> dict:
        """Write `new` over `old`: identity kept, resourceVersion bumped, generation on spec change.
        Clients cannot change uid, creationTimestamp, deletionTimestamp or name; the server can."""
        meta = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "deletionTimestamp", "name"):
            if by_server and k in meta:
                continue
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
            else:
                meta.pop(k, None)
        if rt.namespaced:
            meta["namespace"] = old["metadata"]["namespace"]
        gen = old["metadata"].get("generation", 1)
        strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status", "apiVersion", "kind")}
        meta["generation"] = gen + 1 if strip(old) != strip(new) else gen
        new["apiVersion"], new["kind"] = old.get("apiVersion", rt.api_version), old.get("kind", rt.kind)
        if new == old:   # a no-op write keeps the resourceVersion, as the real server does
            return self._present(rt, old)
        meta["resourceVersion"] = str(self._bump())
        bucket = self._bucket(rt)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del bucket[key]
            self._emit(rt, "DELETED", new)
        else:
            bucket[key] = new
            self._emit(rt, "MODIFIED", new)
        return self._present(rt, new)

    def replace(self, rt: ResourceType, namespace: Optional[str], name: str, body: dict,
                subresource: str = "") -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object with metadata")
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({meta['name']}) does not match "
                           f"the name on the URL ({name})")
        with self.lock:
            key = (self._scope(rt, namespace), name)
            old = self._bucket(rt).get(key)
            if old is None:
                raise self._not_found(rt, name)
            sent_rv = meta.get("resourceVersion")
            if not sent_rv and rt.custom:
                raise ApiError(422, "Invalid", f'{rt.kind}.{rt.group} "{name}" is invalid: metadata.resourceVersion: '
                               "Invalid value: 0x0: must be specified for an update",
                               {"name": name, "group": rt.group, "kind": rt.kind})
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(rt, name, "the object has been modified; please apply your changes "
                                               "to the latest version and try again")
            if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
                raise self._conflict(rt, name, f"Precondition failed: UID in precondition: {meta['uid']}, "
                                               f"UID in object meta: {old['metadata']['uid']}")
            if subresource == "status":
                new = copy.deepcopy(old)
                new["status"] = copy.deepcopy(body.get("status"))
            else:
                new = copy.deepcopy(body)
                new.setdefault("metadata", {})
                if "status" in old and "status" not in new:
                    new["status"] = copy.deepcopy(old["status"])
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self._store_update(rt, key, old, new)

    def patch(self, rt: ResourceType, namespace: Optional[str], name: str, patch_type: str, patch: Any,
              subresource: str = "") -> dict:
        with self.lock:
            key = (self._scope(rt, namespace), name)
            old = self._bucket(rt).get(key)
            if old is None:
                raise self._not_found(rt, name)
            if patch_type == "json":
                new = json_patch(old, patch)
            elif patch_type == "merge":
                if not isinstance(patch, dict):
                    raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
                new = merge_patch(old, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"the patch type {patch_type!r} is not supported")
            if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
                raise ApiError(422, "Invalid", "the patched object has no metadata")
            current = old["metadata"]["resourceVersion"]
            if new["metadata"].get("resourceVersion", current) != current:
                raise self._conflict(rt, name, "the object has been modified; please apply your changes "
                                               "to the latest version and try again")
            if new["metadata"].get("uid", old["metadata"]["uid"]) != old["metadata"]["uid"]:
                raise self._conflict(rt, name, f"Precondition failed: UID in precondition: {new['metadata']['uid']}, "
                                               f"UID in object meta: {old['metadata']['uid']}")
            if new["metadata"].get("name", name) != name:
                raise ApiError(422, "Invalid", f"metadata.name: Invalid value: a patch may not change the name")
            if subresource == "status":
                only = copy.deepcopy(old)
                only["status"] = new.get("status")
                new = only
            new["metadata"]["resourceVersion"] = current
            return self._store_update(rt, key, old, new)

    def delete(self, rt: ResourceType, namespace: Optional[str], name: str,
               preconditions: Optional[dict] = None) -> dict:
        with self.lock:
            key = (self._scope(rt, namespace), name)
            bucket = self._bucket(rt)
            old = bucket.get(key)
            if old is None:
                raise self._not_found(rt, name)
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise self._conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                               f"UID in object meta: {old['metadata']['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise self._conflict(rt, name, "Precondition failed: ResourceVersion in precondition: "
                                               f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                               f"{old['metadata']['resourceVersion']}")
            if old["metadata"].get("finalizers"):
                new = copy.deepcopy(old)
                new["metadata"].setdefault("deletionTimestamp", _now())
                return self._store_update(rt, key, old, new, by_server=True)
            del bucket[key]
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._bump())
            self._emit(rt, "DELETED", gone)
            return self._present(rt, gone)

    def delete_collection(self, rt: ResourceType, namespace: Optional[str], label_selector: str = "",
                          field_selector: str = "") -> dict:
        with self.lock:
            listed = self.list(rt, namespace, label_selector, field_selector)
            for o in listed["items"]:
                self.delete(rt, o["metadata"].get("namespace"), o["metadata"]["name"])
            return listed

    # watch ------------------------------------------------------------------------------------
    def watch(self, rt: ResourceType, namespace: Optional[str], resource_version: str, label_selector: str,
              field_selector: str, alive: Callable[[], bool], deadline: float) -> Iterable[tuple[str, dict]]:
        """Events for `rt` after `resource_version` (all current objects as ADDED when it is ""/"0"),
        until `deadline` (time.monotonic) or until `alive()` turns false."""
        match_l, match_f = label_matcher(label_selector), field_matcher(field_selector)

        def wanted(resource: tuple, obj: dict) -> bool:
            if resource != (rt.group, rt.plural):
                return False
            if rt.namespaced and namespace and obj["metadata"].get("namespace") != namespace:
                return False
            return match_l(obj) and match_f(obj)

        expired = ""
        with self.lock:
            if resource_version in ("", "0", None):
                initial = self.list(rt, namespace, label_selector, field_selector)["items"]
                last = self.rv
            else:
                try:
                    last = int(resource_version)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resourceVersion {resource_version!r}") from None
                oldest = self.events[0].rv if self.events else self.rv + 1
                if last < oldest - 1 and last < self.rv:
                    expired = f"too old resource version: {last} ({oldest - 1})"
                initial = []
        if expired:
            yield "ERROR", ApiError(410, "Expired", expired).status()
            return
        for o in initial:
            yield "ADDED", o
        while alive() and time.monotonic() < deadline:
            with self.lock:
                start = bisect.bisect_right(self.events, last, key=lambda e: e.rv)
                batch = self.events[start:]
                if not batch:
                    self.changed.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                    continue
                last = batch[-1].rv
            for e in batch:
                if wanted(e.resource, e.obj):
                    yield e.type, self._present(rt, e.obj)
