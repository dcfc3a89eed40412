"""`multiplex validate`: check config files with ADD's own checks, before an admin installs them.

Understands a plugin config, a conflist, a multiplex config (alone or as a plugin of a conflist)
and a NetworkAttachmentDefinition (JSON or YAML; several documents per file allowed).

One code path, not a second validator: every check here is one ADD runs, called the way ADD
calls it, so a file validate calls ok is one ADD accepts, refused with the same code, message
and JSON path (tests/unit/test_validate_parity.py holds the two together):
- a multiplex config: `MultiplexConfig.from_dict` (schema, inline names, node paths), then its
  inline networks (an inline clusterNetwork, the delegates) as ADD names and checks them;
- a NAD: `selection.nad_netconf` (spec shape, JSON, and the trust rules of policy/trust.py, since
  a NAD's config is its namespace's writer's), then its config as ADD checks a NAD network, under
  the NAD's identity (`namespace/name:$...` in the details);
- any other config (the admin's, named by clusterNetwork or a delegate): as ADD checks an inline
  network (`name:$...`).
A network's checks are `orchestrator.check_attachments`: the conflist's shape, every built-in
plugin's `validate` (schema and its own rules: VLAN range, subnets, ranges inside subnets, MTU)
and the built-in IPAM's. Exec'd plugins get what ADD gives them: a `type` that is a name.

What only the node can answer (a clusterNetwork or defaultNetworks name, the state directory, a
NAD with an empty spec.config naming a file in confDir) is left to ADD. A NAD's config without
cniVersion is checked as the current version, as a node's multiplex config of that version
would fill it in.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from ..cni.errors import CNIError


def multiplex_entries(doc: dict) -> list[dict]:
    """The multiplex configs in `doc` as the runtime hands them to multiplex: the document itself
    (`type: multiplex`), or each `multiplex` plugin of a conflist with the list's name and
    cniVersion injected (libcni's buildOneConfig)."""
    from ..policy.trust import MULTIPLEX_TYPE

    if doc.get("type") == MULTIPLEX_TYPE:
        return [doc]
    plugins = doc.get("plugins")
    if not isinstance(plugins, list):
        return []
    return [dict(p, name=doc.get("name"), cniVersion=doc.get("cniVersion")) for p in plugins
            if isinstance(p, dict) and p.get("type") == MULTIPLEX_TYPE]


#: The environment of the ADD a multiplex config is checked as (only its config matters here).
ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "validate", "CNI_NETNS": "/var/run/netns/validate",
           "CNI_IFNAME": "eth0"}


def check_multiplex_config(stdin: bytes) -> list[CNIError]:
    """A multiplex config as the runtime hands it to multiplex on stdin: read as ADD reads it
    (Request.from_env: the stdin limits, JSON, cniVersion/name/type; the version check), loaded
    as ADD loads it (Context.load), then its inline networks as ADD checks them. The first
    refusal, as ADD stops at it."""
    from ..cni import version as cniversion
    from ..cni.request import Request
    from ..meta.config import MultiplexConfig
    from ..meta.orchestrator import check_attachments
    from ..meta.selection import config_attachments

    try:
        req = Request.from_env(ADD_ENV, stdin)
        cniversion.check_supported(req.cni_version)
        conf = MultiplexConfig.from_dict(req.config)
        from ..policy.external import configured_hooks

        configured_hooks(conf)   # what ADD checks of authorizeHooks beyond the schema (unique names)
        check_attachments(config_attachments(conf, None, "eth0", resolve=False), conf.cni_version)
    except CNIError as e:
        return [e]
    except RecursionError:
        from ..cni.skel import _too_deep

        return [_too_deep()]
    return []


def check_nad(doc: dict) -> list[CNIError]:
    """A NetworkAttachmentDefinition as ADD reads it (trust rules included) and checks its network."""
    from ..cni import version as cniversion
    from ..meta.orchestrator import check_attachments
    from ..meta.selection import Attachment, identity_name, nad_netconf

    spec = doc.get("spec")
    config = spec.get("config") if isinstance(spec, dict) else None
    if spec is None or (isinstance(spec, dict) and (config is None or isinstance(config, str) and not config.strip())):
        return []  # names the config file of the same name in the node's confDir: the node's to answer
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name", ""))
    try:
        netconf = nad_netconf(doc, conf_dir="")
        att = Attachment(network=f"{ns}/{name}", ifname="net1", netconf=netconf, namespace=ns,
                         config_name=identity_name(ns, name))
        check_attachments([att], cniversion.CURRENT)
    except CNIError as e:
        return [e]
    return []


def check_network(doc: Any) -> list[CNIError]:
    """A plugin config or conflist of the admin's, as ADD checks an inline network."""
    from ..meta.orchestrator import check_attachments
    from ..meta.selection import Attachment, netconf_name

    try:
        if not isinstance(doc, dict):
            from ..cni.conflist import parse

            parse(doc)  # refuses it, as ADD would, naming what it is
        check_attachments([Attachment(network=netconf_name(doc), ifname="eth0", netconf=doc, cluster=True)])
    except CNIError as e:
        return [e]
    return []


def check_document(doc: Any) -> list[CNIError]:
    """Every refusal ADD would give for one parsed document (empty: ADD accepts it)."""
    if isinstance(doc, dict) and doc.get("kind") == "NetworkAttachmentDefinition":
        return check_nad(doc)
    if isinstance(doc, dict):
        entries = multiplex_entries(doc)
        if entries:
            if "plugins" in doc:  # the conflist itself must be one the runtime loads
                from ..cni.conflist import parse

                try:
                    parse(doc)
                except CNIError as e:
                    return [e]
            problems: list[CNIError] = []
            for entry in entries:
                problems += check_multiplex_config(json.dumps(entry).encode())
            return problems
    return check_network(doc)


def check_json(data: bytes) -> list[CNIError]:
    """A JSON file. A plugin config (one `type`: the multiplex config, or a config of the admin's
    in confDir) is what a runtime hands a plugin on stdin, so it is first read as ADD reads
    stdin (Request.from_env: size, depth, JSON, NaN, cniVersion/name/type, the name's alphabet);
    text that is not a JSON object gets ADD's refusal of such stdin. Then the document's checks."""
    from ..cni.request import JSON_DEPTH_MAX, STDIN_MAX, Request, json_depth_exceeds, no_json_constant

    try:
        if len(data) > STDIN_MAX or json_depth_exceeds(data, JSON_DEPTH_MAX):
            raise ValueError("over the stdin limits")
        doc = json.loads(data, parse_constant=no_json_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        return check_multiplex_config(data)  # ADD's refusal of such stdin
    if doc.get("kind") == "NetworkAttachmentDefinition" or "plugins" in doc:
        return check_document(doc)
    if doc.get("type") == "multiplex":
        return check_multiplex_config(data)
    try:
        Request.from_env(ADD_ENV, data)
    except CNIError as e:
        return [e]
    return check_document(doc)


def check_file(path: str) -> list[CNIError]:
    """Every refusal ADD would give for the documents of `path` (JSON, or YAML with several)."""
    from ..cni.errors import DECODE_FAILURE, IO_FAILURE

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return [CNIError(IO_FAILURE, f"cannot read {path}: {e.strerror}", f"file: {path}")]
    if not path.endswith((".yaml", ".yml")):
        return check_json(data)
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(data) if d is not None]
    except yaml.YAMLError as e:
        return [CNIError(DECODE_FAILURE, f"cannot parse {path}: {e}", f"file: {path}")]
    problems: list[CNIError] = []
    for doc in docs:
        problems += check_document(doc)
    return problems


def describe(e: CNIError) -> str:
    """One problem as the admin reads it: the code, ADD's message, and ADD's details (the field)."""
    return f"code {e.code}: {e.msg}" + (f" [{e.details}]" if e.details else "")


def validate_file(path: str) -> list[str]:
    """The problems of `path`, one line each (empty: ADD accepts it)."""
    return [describe(e) for e in check_file(path)]


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
