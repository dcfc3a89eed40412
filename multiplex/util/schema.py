"""JSON Schema validation of every config object, before anything on the node is touched.

Schemas live in schemas/ (shipped as the multiplex.schemas package). An error names the field by
its JSON path and says what is allowed, as a CNI error with code 7.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

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
    """Raise CNIError 7 naming the first bad field and what is allowed."""
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
