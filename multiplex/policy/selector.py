"""Kubernetes label selectors in their string form (what `kubectl -l` takes), parsed and matched.

Used by the per-NAD authorize hook (nad_namespaces.py) to say which namespaces may use a NAD by
their labels. The string form is chosen over metav1.LabelSelector's JSON because it is what fits
an annotation value and what admins already type; the grammar is Kubernetes' own:

    key=value  key==value  key!=value  key in (a,b)  key notin (a,b)  key  !key

requirements joined by commas, all of which must hold. Keys and values are checked as
Kubernetes checks label keys and values, so a selector the API would refuse is refused here too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_KEY = rf"(?:{_PREFIX}/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"

_KEY_RE = re.compile(_KEY)
_VALUE_RE = re.compile(_VALUE)
_EQUALITY = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*(\S*?)\s*")
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\((.*)\)\s*")
_NOT_EXISTS = re.compile(rf"\s*!\s*({_KEY})\s*")
_EXISTS = re.compile(rf"\s*({_KEY})\s*")


class SelectorError(ValueError):
    """A selector that does not parse; the message says which requirement and why."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str                      # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and labels[self.key] in self.values
        return not has or labels[self.key] not in self.values   # "!=", "notin": as Kubernetes


@dataclass(frozen=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def parse(text: str) -> Selector:
    """`text` as a Selector; SelectorError naming the requirement that is wrong. An empty text is
    an error here (Kubernetes would select everything): a NAD writer who wrote nothing did not
    mean "every namespace", and saying so is clearer than guessing."""
    if not isinstance(text, str) or not text.strip():
        raise SelectorError("the selector is empty")
    return Selector(text, tuple(_requirement(term) for term in _split(text)))


def _split(text: str) -> list[str]:
    """Commas outside parentheses separate requirements."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' at position {i}")
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError("unbalanced '(': a set requirement is not closed")
    terms.append(text[start:])
    return terms


def _requirement(term: str) -> Requirement:
    if not term.strip():
        raise SelectorError("an empty requirement (two commas in a row, or a trailing comma)")
    m = _SET.fullmatch(term)
    if m:
        values = tuple(v.strip() for v in m.group(3).split(","))
        for v in values:
            _check_value(v, term)
        if values == ("",):
            raise SelectorError(f"{term.strip()!r}: the set is empty")
        return Requirement(m.group(1), m.group(2), values)
    m = _EQUALITY.fullmatch(term)
    if m:
        _check_value(m.group(3), term)
        return Requirement(m.group(1), "=" if m.group(2) in ("=", "==") else "!=", (m.group(3),))
    m = _NOT_EXISTS.fullmatch(term)
    if m:
        return Requirement(m.group(1), "!")
    m = _EXISTS.fullmatch(term)
    if m:
        return Requirement(m.group(1), "exists")
    raise SelectorError(f"{term.strip()!r} is not a requirement: write key=value, key!=value, "
                        "key in (a,b), key notin (a,b), key or !key (label keys and values as Kubernetes has them)")


def _check_value(value: str, term: str) -> None:
    if not _VALUE_RE.fullmatch(value):
        raise SelectorError(f"{term.strip()!r}: {value!r} is not a label value (at most 63 letters, digits, "
                            "'-', '_', '.', starting and ending with a letter or digit)")
