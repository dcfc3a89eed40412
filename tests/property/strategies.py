"""Hypothesis strategies for multiplex's inputs: configs derived from the project's JSON schemas
(hypothesis-jsonschema), their mutations, pod annotations, CNI_ARGS, CNI environments, NADs.

Mutations are what an adversarial or careless writer produces: a field of the wrong type, an
unknown key, a value nested thousands deep, a huge string. `mutated(base)` never adds keys that
name node paths (stateDir, dataDir, logFile, ...), so a generated config never points a plugin at
a directory outside the test's tmp dir.
"""
from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from multiplex.util import schema

#: examples run per property; the conftest prints the total in the run's last line.
EXAMPLES: Counter = Counter()

#: Keys that point at the node's file system or identity: mutations never add them.
PATH_KEYS = frozenset({"stateDir", "logFile", "nadDir", "podDir", "confDir", "binDir", "kubeconfig",
                       "readinessindicatorfile", "dataDir", "nodeName"})
#: the depth at which Python's json module (and anything recursive) gives up: a config nested this
#: deep must be refused with a CNI error, never with a RecursionError.
DEEP = 5000
HUGE = 1 << 20


def count(name: str) -> None:
    EXAMPLES[name] += 1


def schema_strategy(name: str) -> st.SearchStrategy:
    """Values valid under schemas/<name>.json."""
    return from_schema(dict(schema.load(name)))


json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

#: placeholders replaced when the document is serialized: by [[[...]]] nested DEEP times, and by a
#: string of HUGE characters (so a failing example prints small)
DEEP_MARK = "\u0000deep\u0000"
HUGE_MARK = "\u0000huge:{char}:{size}\u0000"


def wrong_type_for(value: Any) -> st.SearchStrategy:
    """A JSON value of another type than `value`."""
    kinds = {
        str: st.integers() | st.booleans() | st.lists(st.text(max_size=4), max_size=2) | st.none(),
        bool: st.text(max_size=6) | st.integers(2, 9) | st.none(),
        int: st.text(max_size=6) | st.floats(allow_nan=False).filter(lambda f: f != int(f) if f == f and abs(f) < 1e18 else True) | st.booleans(),
        float: st.text(max_size=6) | st.booleans(),
        list: st.text(max_size=6) | st.integers() | st.dictionaries(st.text(max_size=4), json_scalars, max_size=2),
        dict: st.text(max_size=6) | st.integers() | st.lists(json_scalars, max_size=2),
    }
    for t, strategy in kinds.items():
        if type(value) is t:
            return strategy
    return st.text(max_size=6) | st.integers() | st.lists(json_scalars, max_size=2)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indexes) into a JSON document, the root excluded."""
    out: list[tuple] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: tuple, value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


@st.composite
def mutated(draw, base: dict, protect: tuple = ("type",)) -> dict:
    """`base` with one to three mutations: wrong type, unknown key, deep nesting, huge string,
    a key removed. Paths in `protect` (top-level keys) keep their value, so e.g. the config stays
    one of the plugin under test."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if not (len(p) == 1 and p[0] in protect) and DEEP_MARK not in p]
        containers = ([()] if isinstance(doc, dict) else []) + [p for p in paths if isinstance(_get(doc, p), dict)]
        how = draw(st.sampled_from(["wrong-type", "extra-key", "deep", "huge", "drop"]))
        if how == "extra-key" and containers:
            where = draw(st.sampled_from(containers))
            key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in PATH_KEYS and k != DEEP_MARK))
            _get(doc, where)[key] = draw(json_values)
            continue
        if not paths or how == "extra-key":
            continue
        path = draw(st.sampled_from(paths))
        old = _get(doc, path)
        if how == "wrong-type":
            _set(doc, path, draw(wrong_type_for(old)))
        elif how == "deep":
            _set(doc, path, DEEP_MARK)
        elif how == "huge":
            _set(doc, path, HUGE_MARK.format(char=draw(st.sampled_from(["a", "/", "é", "0"])),
                                             size=draw(st.sampled_from([4096, HUGE]))))
        elif how == "drop" and isinstance(_get(doc, path[:-1]), dict):
            del _get(doc, path[:-1])[path[-1]]
    return doc


def has_deep(doc: Any) -> bool:
    """True when `doc` holds the deep-nesting placeholder."""
    return json.dumps(DEEP_MARK) in json.dumps(doc)


def dumps(doc: Any) -> bytes:
    """A document as the runtime's stdin; a DEEP_MARK value becomes [[[...]]] nested DEEP times."""
    text = json.dumps(materialize(doc))
    deep = "[" * DEEP + "]" * DEEP
    return text.replace(json.dumps(DEEP_MARK), deep).encode("utf-8", "surrogatepass")


def materialize(doc: Any) -> Any:
    """`doc` with every huge-string placeholder replaced by its string (deep ones stay)."""
    if isinstance(doc, str) and doc.startswith("\u0000huge:"):
        _, char, size = doc.strip("\u0000").split(":")
        return char * int(size)
    if isinstance(doc, dict):
        return {materialize(k): materialize(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [materialize(v) for v in doc]
    return doc


def loads_lenient(data: bytes) -> Any:
    """What a parser would see for `data` (the deep part may not load: None then)."""
    try:
        return json.loads(data.decode("utf-8", "surrogatepass"))
    except (RecursionError, ValueError):
        return None


def schema_errors(name: str, doc: Any) -> bool:
    """True when `doc` violates schemas/<name>.json (a RecursionError counts as invalid)."""
    try:
        return bool(schema.errors(name, doc))
    except RecursionError:
        return True


# ---- pod annotations, CNI_ARGS, environments -------------------------------------------------
dns_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")
ifname_like = st.text(st.characters(codec="utf-8"), min_size=0, max_size=18)
annotation_item_text = st.builds(
    lambda ns, name, ifn: (f"{ns}/" if ns else "") + name + (f"@{ifn}" if ifn is not None else ""),
    st.none() | dns_label | st.text(max_size=6), dns_label | st.text(max_size=10), st.none() | ifname_like)
annotation_text = (st.lists(annotation_item_text, max_size=5).map(", ".join)
                   | st.text(max_size=60)
                   | st.text(alphabet=",/@ []{}\"a-z0:", max_size=40))

cni_args_text = (st.text(max_size=60)
                 | st.lists(st.tuples(st.text(max_size=10), st.sampled_from(["=", "", "=="]), st.text(max_size=10))
                            .map("".join), max_size=5).map(";".join))

COMMANDS = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]
env_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
