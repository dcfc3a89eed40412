"""JSON Schema validation of every config object, before anything on the node is touched.

Schemas live in schemas/ (shipped as the multiplex.schemas package). An error names the field by
its JSON path and says what is allowed, as a CNI error with code 7.

In a warm process (the node daemon) one config is validated again and again: every ADD of a pod
checks the multiplex config, the annotation, and each delegate's config and IPAM block, often more
than once per call. Two things make that cheap:

- **Validators compiled once** (`_validator`, one per schema name), and `warm()` compiles them all
  and walks jsonschema's error paths at start-up, so no call pays an import or a class compile.
- **Passed configs remembered** (`_Passed`): a bounded LRU of (schema name, canonical JSON text)
  that validated. Safe because a schema check is a pure function of its input: the schemas are
  read once per process (`load` is cached), our `pattern` keyword and the format checkers look at
  the instance alone, `$ref` resolves to our own files, never the network. So the same schema and
  the same JSON text give the same verdict every time. Only passes are remembered (an error is
  recomputed, so its message names the caller's `prefix`); the key is the text itself, not a hash,
  so two configs never share an entry; an instance whose text does not read back as the same value
  (non-string keys, tuples, NaN) or is too big is not remembered. Memory is bounded by entries and
  by total text (`MEMO_ENTRIES`, `MEMO_BYTES`).
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any, Optional

from ..cni.errors import CNIError, INVALID_CONFIG

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the multiplex package
_DIRS = (os.path.join(_HERE, "schemas"), os.path.join(os.path.dirname(_HERE), "schemas"))


def schema_path(name: str) -> str:
    fname = name if name.endswith(".json") else name + ".json"
    for d in _DIRS:
        p = os.path.join(d, fname)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"schema {fname} not found in {', '.join(_DIRS)}")


#: how many passed configs are remembered, and how much text they may hold together
MEMO_ENTRIES = 1024
MEMO_BYTES = 4 * 1024 * 1024
#: a config longer than this (canonical JSON characters) is validated every time
MEMO_MAX_TEXT = 64 * 1024


class _Passed:
    """The LRU of (schema name, canonical JSON text) that passed validation (see the module doc).
    Thread-safe: the daemon's workers validate at the same time."""

    def __init__(self, entries: int = MEMO_ENTRIES, max_bytes: int = MEMO_BYTES):
        self.entries = entries
        self.max_bytes = max_bytes
        self._seen: "OrderedDict[tuple[str, str], None]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: lookups answered from memory (hits) and validations run (misses), for tests and profiles
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(name: str, instance: Any) -> Optional[tuple[str, str]]:
        """(name, canonical text), or None when the instance cannot be remembered safely: its text
        must read back as an equal value (JSON turns int keys into strings and tuples into lists,
        which a schema may judge differently), and be at most MEMO_MAX_TEXT long."""
        try:
            text = json.dumps(instance, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
            if len(text) > MEMO_MAX_TEXT or json.loads(text) != instance:
                return None
        except (TypeError, ValueError, RecursionError):
            return None
        return (name, text)

    def passed(self, key: tuple[str, str]) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                self.hits += 1
                return True
            self.misses += 1
            return False

    def remember(self, key: tuple[str, str]) -> None:
        size = len(key[1])
        with self._lock:
            if key in self._seen:
                return
            self._seen[key] = None
            self._bytes += size
            while self._seen and (len(self._seen) > self.entries or self._bytes > self.max_bytes):
                old, _ = self._seen.popitem(last=False)
                self._bytes -= len(old[1])

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._seen)


passed = _Passed()


def names() -> list[str]:
    """Every schema shipped (the file names without .json)."""
    found: set[str] = set()
    for d in _DIRS:
        if os.path.isdir(d):
            found.update(f[:-5] for f in os.listdir(d) if f.endswith(".json"))
    return sorted(found)


def warm() -> None:
    """Compile every schema's validator and walk the error paths once (jsonschema's lazy imports,
    its attrs classes, `ast` for missing keys), so that no call in a warm process imports or
    compiles anything. For the node daemon's start-up; a one-shot call never needs it."""
    import ast  # noqa: F401  (used by _missing_key on an error path)
    import re  # noqa: F401

    import jsonschema  # noqa: F401
    import jsonschema.exceptions  # noqa: F401

    for name in names():
        _validator(name)
        for sample in ({}, {"cniVersion": 1, "type": "", "name": None}):
            errors(name, sample)
            try:
                _validate(name, sample, "$")
            except Exception:
                pass


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    with open(schema_path(name), encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema
    from referencing import Registry, Resource

    schema = load(name)
    cls = jsonschema.validators.extend(jsonschema.validators.validator_for(schema), {"pattern": _pattern})

    def retrieve(uri: str):
        # "$ref": "ipam.json" resolves to our own schema files, never to the network
        return Resource.from_contents(load(uri.rsplit("/", 1)[-1]))

    return cls(schema, registry=Registry(retrieve=retrieve), format_checker=cls.FORMAT_CHECKER)


def _pattern(validator, pattern: str, instance: Any, schema: dict):
    """JSON Schema's `pattern` with ECMA-262 anchors: `$` is the end of the string. Python's `$`
    also matches before a trailing newline, so "br0\\n" would pass "^[^/:\\s]+$"."""
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=None)
def _compiled(pattern: str):
    import re

    return re.compile(ecma_anchors(pattern))


def ecma_anchors(pattern: str) -> str:
    """`pattern` with every `$` that is an anchor (not escaped, not in a character class) made
    `\\Z`, the end of the string and nothing else."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":  # "[]...]": a leading ']' is a literal
                out.append("[]")
                i += 2
                continue
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


def errors(name: str, instance: Any, prefix: str = "$") -> list[str]:
    """Every violation as 'path: message', most relevant first."""
    import jsonschema

    v = _validator(name)
    out = []
    try:
        found = sorted(v.iter_errors(instance), key=jsonschema.exceptions.relevance)
    except RecursionError:
        return [f"{prefix}: {_too_deep(name, prefix).msg}"]
    for err in found:
        out.append(f"{_field(err, prefix)}: {_describe(err)}")
    return out


def _too_deep(name: str, prefix: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"invalid {load(name).get('title', name)} config: it nests too deeply to check",
                    f"field: {prefix}; allowed: a config nested at most a few dozen levels")


def validate(name: str, instance: Any, prefix: str = "$") -> None:
    """Raise CNIError 7 naming the first bad field and what is allowed. A config that passed
    before (same schema, same JSON text) passes again without being walked (see `_Passed`)."""
    key = passed.key(name, instance)
    if key is not None and passed.passed(key):
        return
    _validate(name, instance, prefix)
    if key is not None:
        passed.remember(key)


def _validate(name: str, instance: Any, prefix: str) -> None:
    import jsonschema

    v = _validator(name)
    try:
        err = jsonschema.exceptions.best_match(v.iter_errors(instance))
    except RecursionError:  # jsonschema recurses per level: a clear code 7, never a traceback
        raise _too_deep(name, prefix) from None
    if err is None:
        return
    raise CNIError(INVALID_CONFIG, f"invalid {load(name).get('title', name)} config: {_describe(err)}",
                   f"field: {_field(err, prefix)}; allowed: {_allowed(err)}")


def _field(err, prefix: str) -> str:
    """The JSON path of the bad field; for an unknown or a missing key, the path of that key."""
    import re

    path = prefix + err.json_path[1:]
    key = None
    if err.validator == "additionalProperties" and isinstance(err.instance, dict) and isinstance(err.schema, dict):
        known = err.schema.get("properties", {})
        patterns = err.schema.get("patternProperties", {})
        key = next((k for k in err.instance if k not in known and not any(re.search(p, k) for p in patterns)), None)
    elif err.validator == "required":
        key = _missing_key(err)
    if key is None:
        return path
    return path + (f".{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"[{key!r}]")


def _missing_key(err):
    """The key a `required` error is about (jsonschema reports one error per missing key)."""
    import ast

    suffix = " is a required property"
    if err.message.endswith(suffix):
        try:
            key = ast.literal_eval(err.message[: -len(suffix)])
            if isinstance(key, str):
                return key
        except (ValueError, SyntaxError):
            pass
    return None


def _describe(err) -> str:
    return err.message if len(err.message) < 300 else err.message[:300] + "..."


def _allowed(err) -> str:
    s = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "additionalProperties" and s.get("properties"):
        return "known fields: " + ", ".join(s["properties"])
    if err.validator == "required":
        missing = _missing_key(err)
        prop = s.get("properties", {}).get(missing, {}) if missing else {}
        if isinstance(prop, dict) and prop.get("description"):
            return f"{missing} is required: {prop['description']}"
    if "description" in s:
        return s["description"]
    v = err.validator_value
    return f"{err.validator} {json.dumps(v)[:200]}" if v is not None else str(err.validator)
