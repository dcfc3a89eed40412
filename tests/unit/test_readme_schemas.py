"""The README's field tables agree with the JSON Schemas in schemas/, which are the one source.

Why the schemas: they ship in the wheel, every config is validated against them before anything is
touched, the property suite generates its inputs from them, and `multiplex validate` quotes their
descriptions. A README table is a rendering of one schema object for people; this test fails as
soon as the two disagree, naming the field, the schema file and the README section.

For every table with the columns `field | type | default | meaning` (see TABLES; a table of that
shape that TABLES does not name fails too, so a new table cannot go unchecked):

- **existence**, both ways: every README field is a property of the schema object (a dotted name
  such as `runtimeConfig.mac` is resolved through nested `properties`), and every property of the
  object is in the table (as a row, or as the parent of a dotted row, in which case all of that
  parent's properties must be rows).
- **type**: the README's words (`string`, `integer`, `number`, `bool`/`boolean`, `object`,
  `list`/`array`, `X or Y`, `list of strings`, `array of range sets`, ...; a parenthesis is a
  remark) against the schema's `type`, `const`, `enum`, `oneOf`/`anyOf` (through `$ref`). An empty
  type cell means the schema gives no type either (a field accepted here and refused later).
- **default**:
  - `required` <-> the field is in its object's `required`;
  - a literal default (one backticked value: `32`, `"l2"`, `[]`, `default`; JSON, else a string)
    <-> the schema's `default` keyword, which must also be valid for the field (jsonschema ignores
    `default` when validating, so it is documentation only, and this test is what keeps it true);
  - a default that is not one literal ("first of `delegates`", "the bridge's MTU", "IPAM's")
    <-> the schema's `x-default-text` keyword, which holds the README's words verbatim. A
    structured keyword rather than `$comment`: `$comment` already carries notes for maintainers,
    and a keyword of its own can be compared exactly. Unknown keywords are allowed by JSON Schema
    and ignored by the validators and by hypothesis-jsonschema;
  - `none`, `—` or an empty cell <-> neither `default` nor `x-default-text`.

A failure lists every disagreement of the table: "README says X, schema says Y: field Z of W".
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
HEADER = ["field", "type", "default", "meaning"]

#: README heading -> (schema file, path to the object inside it)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "## The multiplex config": ("multiplex.json", ()),
    "## multiplex-bridge config": ("bridge.json", ()),
    "## multiplex-ipvlan config": ("ipvlan.json", ()),
    "## multiplex-vxlan-overlay config": ("vxlan-overlay.json", ()),
    "## multiplex-bgp-routed config": ("bgp-routed.json", ()),
    "## multiplex-ipam config (`ipam`)": ("ipam.json", ()),
    "### Range object": ("ipam.json", ("$defs", "range")),
    "### Route object": ("ipam.json", ("properties", "routes", "items")),
    "### DNS object": ("ipam.json", ("properties", "dns")),
    "## The pod annotation": ("annotation.json", ("$defs", "selection")),
}

#: Defaults the README documents whose schema keyword is still to be added by the owner of that
#: schema file (another change in flight): schema file -> field -> the keyword it needs. Tolerated
#: only while missing; once the schema has it, the entry must go (the test says so).
AWAITING_OWNER: dict[str, dict[str, dict[str, Any]]] = {}

NO_DEFAULT = {"none", "—", "-", ""}
_TYPES_OF_PYTHON = {str: "string", bool: "boolean", int: "integer", float: "number",
                    dict: "object", list: "array", type(None): "null"}


# --- the README side ----------------------------------------------------------------------------

def readme_tables() -> dict[str, list[list[str]]]:
    """Heading -> rows of the first `field | type | default | meaning` table under it (before the
    next heading of any level)."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.strip()
        elif (line.startswith("|") and cells(line) == HEADER and heading not in tables
              and lines[i + 1].startswith("|---")):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(cells(row))
            tables[heading] = rows
    return tables


def cells(line: str) -> list[str]:
    """A table row's cells; `\\|` is a literal bar, not a separator."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def field_names(cell: str) -> list[str]:
    """The backticked names of a field cell; a parenthesis is a remark (other spellings that are
    not config fields, such as CNI_ARGS `MAC`)."""
    return re.findall(r"`([^`]+)`", re.sub(r"\([^()]*\)", "", cell))


def readme_types(cell: str) -> tuple[set[str], Optional[str]]:
    """The JSON types a README type cell names, and the item type of a list when it says one."""
    words = re.sub(r"\([^()]*\)", "", cell).replace("≥ 0", "").strip().lower()
    if not words:
        return set(), None
    types, items = set(), None
    for alt in (a.strip() for a in words.split(" or ")):
        if alt.startswith(("list", "array")):
            types.add("array")
            of = alt.partition(" of ")[2]
            if of:
                items = ("string" if of.endswith("strings") else "array" if of.endswith("sets")
                         else "object" if of.endswith(("objects", "configs")) else f"?{of}")
        elif alt in ("bool", "boolean"):
            types.add("boolean")
        elif alt.split()[0] in ("string", "integer", "number"):
            types.add(alt.split()[0])
        elif alt.endswith("object"):
            types.add("object")
        else:
            types.add(f"?{alt}")
    return types, items


def literal(cell: str) -> tuple[bool, Any]:
    """(True, value) when the cell is one backticked literal: JSON if it parses, else a string."""
    m = re.fullmatch(r"`([^`]*)`", cell)
    if not m:
        return False, None
    try:
        return True, json.loads(m.group(1))
    except ValueError:
        return True, m.group(1)


# --- the schema side ----------------------------------------------------------------------------

def load_schema(fname: str) -> dict:
    with open(os.path.join(ROOT, "schemas", fname), encoding="utf-8") as f:
        return json.load(f)


def deref(root: dict, node: dict) -> dict:
    """The node a local `$ref` points at (the node itself without one)."""
    while "$ref" in node and node["$ref"].startswith("#/"):
        target: Any = root
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def at(root: dict, path: tuple[str, ...]) -> dict:
    node: Any = root
    for part in path:
        node = deref(root, node)[part]
    return deref(root, node)


def schema_types(root: dict, node: dict) -> set[str]:
    """Every JSON type the schema node admits by name (empty: it says no type)."""
    node = deref(root, node)
    if "type" in node:
        return set([node["type"]] if isinstance(node["type"], str) else node["type"])
    if "const" in node:
        return {_TYPES_OF_PYTHON[type(node["const"])]}
    if "enum" in node:
        return {_TYPES_OF_PYTHON[type(v)] for v in node["enum"]}
    out: set[str] = set()
    for alt in node.get("oneOf", []) + node.get("anyOf", []):
        out |= schema_types(root, alt)
    return out


def resolve(root: dict, obj: dict, dotted: str) -> tuple[Optional[dict], bool]:
    """The property schema of `a.b.c` inside obj, and whether its own object requires it."""
    props = obj.get("properties", {})
    if dotted in props:  # a name with dots of its own: `cni.dev/valid-attachments`
        return deref(root, props[dotted]), dotted in obj.get("required", [])
    head, dot, rest = dotted.partition(".")
    if not dot or head not in props:
        return None, False
    return resolve(root, deref(root, props[head]), rest)


def default_is_valid(root: dict, node: dict) -> bool:
    import jsonschema

    sub = dict(node, **{"$defs": root.get("$defs", {})})
    return jsonschema.validators.validator_for(root)(sub).is_valid(node["default"])


# --- the comparison -----------------------------------------------------------------------------

def disagreements(heading: str, rows: list[list[str]]) -> list[str]:
    fname, path = TABLES[heading]
    root = load_schema(fname)
    obj = at(root, path)
    where = f"schemas/{fname}{''.join('/' + p for p in path)} (README {heading!r})"
    out: list[str] = []
    documented: set[str] = set()
    for row in rows:
        if len(row) != 4:
            out.append(f"README row {row!r} has {len(row)} cells, not 4: {where}")
            continue
        names, type_cell, default_cell, _ = row
        for name in field_names(names):
            documented.add(name)
            node, required = resolve(root, obj, name)
            if node is None:
                out.append(f"README says `{name}` exists, schema has no such property: field {name} of {where}")
                continue
            out += compare_type(root, node, type_cell, f"field {name} of {where}")
            awaited = AWAITING_OWNER.get(fname, {}).get(name) if not path else None
            if awaited is not None and any(k in node for k in awaited):
                out.append(f"schema now has {json.dumps(awaited)}: remove field {name} of {fname} from AWAITING_OWNER")
            elif awaited is not None:
                node = dict(node, **awaited)
            out += compare_default(root, node, required, default_cell, f"field {name} of {where}")
    out += missing_rows(root, obj, documented, where)
    return out


def compare_type(root: dict, node: dict, cell: str, what: str) -> list[str]:
    want, items = readme_types(cell)
    have = schema_types(root, node)
    if want != have:
        return [f"README says type {cell!r} ({', '.join(sorted(want)) or 'no type'}), schema says "
                f"{', '.join(sorted(have)) or 'no type'}: {what}"]
    if items is not None:
        item_types = schema_types(root, node.get("items", {}))
        if item_types != {items}:
            return [f"README says type {cell!r} (items {items}), schema says items "
                    f"{', '.join(sorted(item_types)) or 'of no type'}: {what}"]
    return []


def compare_default(root: dict, node: dict, required: bool, cell: str, what: str) -> list[str]:
    out = []
    if (cell == "required") != required:
        out.append(f"README says default {cell!r}, schema says {'required' if required else 'optional'}: {what}")
    if cell == "required":
        return out
    is_literal, value = literal(cell)
    if "x-default-text" in node:
        if cell != node["x-default-text"]:
            out.append(f"README says default {cell!r}, schema says x-default-text "
                       f"{node['x-default-text']!r}: {what}")
    elif "default" in node:
        if not is_literal or json.dumps(value) != json.dumps(node["default"]):
            out.append(f"README says default {cell!r}, schema says default "
                       f"{json.dumps(node['default'])}: {what}")
    elif cell not in NO_DEFAULT:
        out.append(f"README says default {cell!r}, schema says none (add \"default\" for a literal, "
                   f"\"x-default-text\" for words): {what}")
    if "default" in node and not default_is_valid(root, node):
        out.append(f"schema's default {json.dumps(node['default'])} is invalid under its own schema: {what}")
    return out


def missing_rows(root: dict, obj: dict, documented: set[str], where: str) -> list[str]:
    """Properties of the object (and of every parent of a dotted row) with no row."""
    out = []
    parents = {n.rsplit(".", 1)[0] for n in documented if "." in n}
    for prefix, node in [("", obj)] + [(p + ".", resolve(root, obj, p)[0] or {}) for p in sorted(parents)]:
        for prop in node.get("properties", {}):
            name = prefix + prop
            if name not in documented and not any(d.startswith(name + ".") for d in documented):
                out.append(f"README says nothing of `{name}`, schema has it: field {name} of {where}")
    return out


# --- the tests ----------------------------------------------------------------------------------

def test_every_field_table_is_checked_against_a_schema():
    unchecked = sorted(set(readme_tables()) - set(TABLES))
    missing = sorted(set(TABLES) - set(readme_tables()))
    assert not unchecked, f"README field tables with no schema in TABLES: {unchecked}"
    assert not missing, f"TABLES names README sections without a field table: {missing}"


@pytest.mark.parametrize("heading", list(TABLES))
def test_readme_table_agrees_with_its_schema(heading):
    problems = disagreements(heading, readme_tables()[heading])
    assert not problems, "\n".join([f"{len(problems)} disagreement(s):"] + problems)


def test_a_disagreement_names_both_sides_the_field_and_the_schema():
    rows = [["`maxAttachments`", "string", "`31`", "..."], ["`nosuch`", "string", "none", "..."],
            ["`name`", "string", "`x`", "..."]]
    problems = "\n".join(disagreements("## The multiplex config", rows))
    assert "README says type 'string' (string), schema says integer: field maxAttachments of schemas/multiplex.json" in problems
    assert "README says default '`31`', schema says default 32: field maxAttachments" in problems
    assert "README says `nosuch` exists, schema has no such property" in problems
    assert "README says default '`x`', schema says required: field name" in problems
    assert "README says nothing of `clusterNetwork`, schema has it" in problems
