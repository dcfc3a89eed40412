"""Authorize hook `nad-namespaces`: a NAD writer says which namespaces may use their NAD.

Two annotations on the NetworkAttachmentDefinition (either or both; a namespace that is in the
list OR matches the selector may use it):

- `multiplex.dev/allowed-namespaces`: namespace names, comma separated (`team-a, team-b`) or a
  JSON list (`["team-a", "team-b"]`);
- `multiplex.dev/allowed-namespace-selector`: a label selector on namespaces in Kubernetes' string
  form (`team=red, env in (prod,staging), !quarantined`); every namespace also carries
  `kubernetes.io/metadata.name`, so a selector can name one by it.

Without either annotation the NAD is as usable as before (the admin's rules decide alone).

**Narrow, never widen.** The annotation is the NAD writer's word, and a NAD writer is trusted
with their own namespace's networks only (README "Security model"). Whether a pod of namespace B
may use a NAD of namespace A at all is the admin's rule - `namespaceIsolation` and
`globalNamespaces` - and it runs first (`namespace_isolation`, before the NAD is even read). This
hook runs only for what that rule already allows, and can only take away: listing B on a NAD of A
gives B nothing unless A is in `globalNamespaces` (or isolation is off), where the admin already
opened A's NADs to everyone and the writer narrows that down to B. The list is exact: the NAD's
own namespace may use it only when listed or selected (a writer may offer a network to tenants
without using it themselves).

A malformed annotation fails closed: code 7 naming the annotation and the NAD, nothing attached.
Namespace labels are read only when a selector is set (policy/namespaces.py).
"""
from __future__ import annotations

import json
import re
from typing import Any

from ..cni.errors import CNIError, INVALID_CONFIG
from .hooks import AttachmentAsk, refuse
from .namespaces import namespace_labels
from .selector import SelectorError, parse as parse_selector

HOOK = "nad-namespaces"
ALLOWED_NAMESPACES = "multiplex.dev/allowed-namespaces"
ALLOWED_SELECTOR = "multiplex.dev/allowed-namespace-selector"

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: bound on the list annotation (names), as the pod annotation is bounded: no call parses megabytes
MAX_NAMES = 1024


def check(conf: Any, ask: AttachmentAsk) -> None:
    """Refuse (106) when the NAD's annotations name namespaces and the pod's is not among them."""
    ann = ask.nad_annotations()
    listed_raw, selector_raw = ann.get(ALLOWED_NAMESPACES), ann.get(ALLOWED_SELECTOR)
    if listed_raw is None and selector_raw is None:
        return
    listed = parse_names(listed_raw, ask) if listed_raw is not None else None
    selector = None
    if selector_raw is not None:
        if not isinstance(selector_raw, str):
            raise _bad(ask, ALLOWED_SELECTOR, "not a string")
        try:
            selector = parse_selector(selector_raw)
        except SelectorError as e:
            raise _bad(ask, ALLOWED_SELECTOR, str(e)) from None
    ns = ask.pod_namespace
    if listed is not None and ns in listed:
        return
    if selector is not None and selector.matches(namespace_labels(ask.source, ns)):
        return
    said = []
    if listed is not None:
        said.append(f"{ALLOWED_NAMESPACES}: {', '.join(listed)}")
    if selector is not None:
        said.append(f"{ALLOWED_SELECTOR}: {selector.text.strip()}")
    raise refuse(HOOK, ask, f"namespace {ns!r} is not among the namespaces the NetworkAttachmentDefinition allows "
                 f"({'; or '.join(said)})",
                 f"field: metadata.annotations of NetworkAttachmentDefinition {ask.network}; allowed: namespaces "
                 "its writer lists or selects (and that namespaceIsolation/globalNamespaces allow)")


def parse_names(value: Any, ask: AttachmentAsk) -> list[str]:
    """The list annotation as namespace names: comma separated, or a JSON list of strings."""
    if not isinstance(value, str):
        raise _bad(ask, ALLOWED_NAMESPACES, "not a string")
    text = value.strip()
    if text.startswith("["):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise _bad(ask, ALLOWED_NAMESPACES, f"starts like a JSON list but is not JSON: {e}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _bad(ask, ALLOWED_NAMESPACES, "a JSON value that is not a list of strings")
        names = [n.strip() for n in names]
    else:
        names = [n.strip() for n in text.split(",")]
    if not names or names == [""]:
        raise _bad(ask, ALLOWED_NAMESPACES, "empty: name the namespaces, or remove the annotation to allow "
                   "every namespace the admin's rules allow")
    if len(names) > MAX_NAMES:
        raise _bad(ask, ALLOWED_NAMESPACES, f"{len(names)} names; at most {MAX_NAMES}")
    for n in names:
        if not _NAMESPACE.fullmatch(n):
            raise _bad(ask, ALLOWED_NAMESPACES, f"{n!r} is not a namespace name (a DNS label: at most 63 "
                       "lower-case letters, digits and '-')")
    return names


def _bad(ask: AttachmentAsk, key: str, why: str) -> CNIError:
    return CNIError(INVALID_CONFIG,
                    f"NetworkAttachmentDefinition {ask.network}: annotation {key} is invalid: {why}",
                    f"field: metadata.annotations[\"{key}\"] of NetworkAttachmentDefinition {ask.network}; "
                    "allowed: " + ("namespace names, comma separated or a JSON list" if key == ALLOWED_NAMESPACES
                                   else "a label selector (key=value, key!=value, key in (a,b), key notin (a,b), "
                                        "key, !key; comma separated)")
                    + f"; hook: {HOOK}")
