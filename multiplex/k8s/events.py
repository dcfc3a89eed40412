"""Kubernetes Events on the pod, so that `kubectl describe pod` shows what multiplex did.

- ADD succeeded: one `AddedInterface` event (type Normal) per attachment, worded as Multus words
  it ("Add %s %v from %s" in Go): `Add net1 [198.18.1.5/24 fd00:1::5/64] from default/blue`.
- ADD failed: one `AddInterfaceFailed` event (type Warning) naming the network (the NAD, as
  `namespace/name`) whose attachment failed, when it got that far, and the CNI error:
  `Add net2 from default/storage failed: [code 7] invalid multiplex-bridge config: ...`.

Best effort, never the ADD's business: events are created after the answer is decided (the
network-status written, or the undo of a failed ADD done), with one request each, a short
timeout (EVENT_TIMEOUT, connect and read) and no retry; any failure (the API down, events
forbidden, a bad answer) is logged at debug and dropped. The ADD's answer is the same with or
without them.

Only with a Kubernetes source: events go through the source's `client` (a KubeClient; KubeSource
and the daemon's cached source have one). Local files (the lab) have no event stream.

RBAC: the node's service account needs `create` on `events` in the core API group:
`{apiGroups: [""], resources: ["events"], verbs: ["create"]}`.
"""
from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Optional

from ..util import log as _log

REASON_ADDED = "AddedInterface"
REASON_FAILED = "AddInterfaceFailed"
NORMAL, WARNING = "Normal", "Warning"
COMPONENT = "multiplex"
#: seconds for the connection and for the answer of one event's create (no retry)
EVENT_TIMEOUT = 1.0
#: an event's message is capped (the API refuses messages over 1 KiB for events.k8s.io)
MESSAGE_MAX = 1024


@dataclass(frozen=True)
class PodRef:
    """The pod an event is about: its namespace, name and (when known) UID."""
    namespace: str
    name: str
    uid: str = ""


@dataclass(frozen=True)
class Event:
    reason: str
    type: str
    message: str


def added_interface(ifname: str, ips: Iterable[str], network: str) -> Event:
    """`Add eth0 [198.18.0.5/24] from default/podnet`, as Multus words it."""
    return Event(REASON_ADDED, NORMAL, f"Add {ifname} [{' '.join(ips)}] from {network}")


def add_failed(network: str, ifname: str, error: BaseException) -> Event:
    """A Warning naming the network (NAD) whose attachment failed, and the error."""
    code = getattr(error, "code", None)
    msg = getattr(error, "msg", None) or str(error) or type(error).__name__
    what = f"[code {code}] {msg}" if code is not None else msg
    where = f"Add {ifname} from {network}" if network else "Add networks"
    return Event(REASON_FAILED, WARNING, f"{where} failed: {what}")


def client_of(source: Any) -> Optional[Any]:
    """The Kubernetes client of a source, or None (local files: no events)."""
    client = getattr(source, "client", None)
    return client if client is not None and hasattr(client, "create_object") else None


def record(source: Any, pod: PodRef, events: list[Event], log: Optional[_log.Logger] = None) -> int:
    """Create `events` on `pod`, best effort; returns how many the API took. Never raises."""
    log = log or _log.get()
    client = client_of(source)
    if client is None or not pod.name or not events:
        return 0
    try:
        quick = _quick(client)
    except Exception as e:  # noqa: BLE001 - best effort by contract
        log.debug("events: no client for them", error=str(e))
        return 0
    made = 0
    try:
        for ev in events:
            try:
                quick.create_object("", "v1", "events", event_object(pod, ev), namespace=pod.namespace)
                made += 1
            except Exception as e:  # noqa: BLE001 - the API down, events forbidden, a bad answer
                log.debug("event not recorded", reason=ev.reason, pod=f"{pod.namespace}/{pod.name}", error=str(e))
                break  # the next one would fail the same way: do not pay the timeout again
    finally:
        if quick._api is not None and quick._api is not getattr(client, "_api", None):
            quick.close()
    return made


def _quick(client: Any) -> Any:
    """The client with a short timeout and no retries, sharing its connection (an event is not
    worth a retry, and must not hold the ADD for the client's usual 10 s x 3)."""
    quick = copy.copy(client)
    quick.retries = 0
    quick.timeout = min(float(getattr(client, "timeout", EVENT_TIMEOUT)), EVENT_TIMEOUT)
    quick.stats = Counter()   # the ADD's API figures stay its own
    return quick


def event_object(pod: PodRef, ev: Event) -> dict:
    """A core/v1 Event about the pod (what client-go's recorder creates)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name}
    if pod.uid:
        involved["uid"] = pod.uid
    host = os.uname().nodename
    message = ev.message if len(ev.message) <= MESSAGE_MAX else ev.message[:MESSAGE_MAX - 3] + "..."
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
            "involvedObject": involved, "reason": ev.reason, "message": message, "type": ev.type,
            "source": {"component": COMPONENT, "host": host}, "reportingComponent": COMPONENT,
            "reportingInstance": host, "firstTimestamp": now, "lastTimestamp": now, "count": 1}
