"""`multiplex validate`: check config files before an admin installs them.

Understands a plugin config, a conflist, a multiplex config and a NetworkAttachmentDefinition
(JSON or YAML; several documents per file allowed). Each plugin of ours is checked against its
schema (schemas/<name>.json, where <name> is the type without the `multiplex-` prefix); the
`ipam` section of any plugin whose IPAM is `multiplex-ipam` is checked against schemas/ipam.json.
Plugins of other projects get the generic checks (a `type` that is a name, a known cniVersion).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional, Sequence

from ..util import schema
from ..cni.errors import CNIError


def schema_for_type(type_name: str) -> Optional[str]:
    if type_name == "multiplex":
        return "multiplex"
    if type_name.startswith("multiplex-"):
        name = type_name[len("multiplex-"):]
        try:
            schema.schema_path(name)
            return name
        except FileNotFoundError:
            return None
    return None


def check_plugin(conf: dict, where: str) -> list[str]:
    from ..cni.registry import check_type_name

    problems: list[str] = []
    t = conf.get("type")
    try:
        check_type_name(t, f"{where}.type")
    except CNIError as e:
        return [f"{e.details}: {e.msg}"]
    name = schema_for_type(t)
    if name:
        problems += schema.errors(name, conf, where)
    elif t.startswith("multiplex-"):
        problems.append(f"{where}.type: unknown multiplex plugin {t!r}")
    ipam = conf.get("ipam")
    if isinstance(ipam, dict) and ipam.get("type") == "multiplex-ipam" and name != "multiplex":
        problems += schema.errors("ipam", ipam, f"{where}.ipam")
    if not problems:  # the schema holds: now the plugins' own checks (ranges inside subnets, ...)
        from ..cni.registry import builtin

        for type_name in (t, ipam.get("type") if isinstance(ipam, dict) else None):
            plugin = builtin(type_name) if isinstance(type_name, str) else None
            if plugin is None or type_name == "multiplex":
                continue
            try:
                plugin.validate(conf, where)
            except CNIError as e:
                problems.append(f"{e.details}: {e.msg}")
    return problems


def check_netconf(conf: Any, where: str = "$") -> list[str]:
    if not isinstance(conf, dict):
        return [f"{where}: not a JSON object"]
    from ..cni.conflist import parse_network

    try:
        parse_network(conf, where=where)
    except CNIError as e:
        return [f"{e.details or where}: {e.msg}"]
    if "plugins" in conf:
        problems = []
        for i, p in enumerate(conf["plugins"]):
            problems += check_plugin(dict(p, cniVersion=conf.get("cniVersion"), name=conf.get("name", "")),
                                     f"{where}.plugins[{i}]")
        return problems
    return check_plugin(conf, where)


def check_document(doc: Any, where: str = "$") -> list[str]:
    if isinstance(doc, dict) and doc.get("kind") == "NetworkAttachmentDefinition":
        raw = (doc.get("spec") or {}).get("config", "")
        if not raw.strip():
            return []  # refers to a config file of the same name on the node
        try:
            conf = json.loads(raw)
        except ValueError as e:
            return [f"{where}.spec.config: not JSON: {e}"]
        conf.setdefault("name", (doc.get("metadata") or {}).get("name", ""))
        return check_netconf(conf, f"{where}.spec.config")
    return check_netconf(doc, where)


def validate_file(path: str) -> list[str]:
    from ..meta.sources import load_document

    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            return [f"not YAML: {e}"]
    else:
        try:
            docs = [load_document(path)]
        except CNIError as e:
            return [e.msg]
    problems: list[str] = []
    for i, doc in enumerate(docs):
        problems += check_document(doc, "$" if len(docs) == 1 else f"$[{i}]")
    return problems


def report_files(paths: Sequence[str], echo: Callable[[str], None]) -> int:
    """Validate each file and `echo` its verdict (then its problems, indented); the exit code:
    1 when any file is invalid."""
    bad = 0
    for path in paths:
        problems = validate_file(path)
        if problems:
            bad += 1
            echo(f"{path}: invalid")
            for p in problems:
                echo(f"  {p}")
        else:
            echo(f"{path}: ok")
    return 1 if bad else 0
