"""Config validation in a warm process: a config that passed is not walked again, an error is
always recomputed (naming the caller's field), and after `schema.warm()` no call imports anything."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from multiplex.cni.errors import CNIError, INVALID_CONFIG
from multiplex.util import schema

IPAM = {"type": "multiplex-ipam", "ranges": [[{"subnet": "198.18.0.0/24"}]]}
BRIDGE = {"cniVersion": "1.1.0", "name": "a", "type": "multiplex-bridge", "bridge": "br0", "ipam": IPAM}


@pytest.fixture
def memo(monkeypatch):
    m = schema._Passed()
    monkeypatch.setattr(schema, "passed", m)
    return m


def test_a_config_that_passed_is_remembered(memo):
    schema.validate("bridge", BRIDGE)
    schema.validate("bridge", json.loads(json.dumps(BRIDGE)))   # an equal config, another object
    assert (memo.misses, memo.hits) == (1, 1)
    schema.validate("ipam", IPAM)                # the schema is part of the key
    assert memo.misses == 2


def test_an_error_is_recomputed_and_names_each_callers_field(memo):
    bad = dict(BRIDGE, bridge="br0\n")
    for prefix in ("$.delegates[0]", "$.clusterNetwork"):
        with pytest.raises(CNIError) as e:
            schema.validate("bridge", bad, prefix=prefix)
        assert e.value.code == INVALID_CONFIG and f"field: {prefix}.bridge" in e.value.details
    assert len(memo) == 0


def test_a_config_changed_after_it_passed_is_checked_again(memo):
    conf = json.loads(json.dumps(BRIDGE))
    schema.validate("bridge", conf)
    conf["mtu"] = "big"
    with pytest.raises(CNIError) as e:
        schema.validate("bridge", conf)
    assert "field: $.mtu" in e.value.details


def test_values_json_would_confuse_are_never_remembered(memo):
    assert schema._Passed.key("bridge", {1: "x"}) is None              # int key: "1" in JSON
    assert schema._Passed.key("bridge", dict(BRIDGE, dns={"nameservers": ("a",)})) is None   # tuple
    assert schema._Passed.key("bridge", {"mtu": float("nan")}) is None
    assert schema._Passed.key("bridge", {"x": "y" * (schema.MEMO_MAX_TEXT + 1)}) is None
    deep: dict = {}
    for _ in range(5000):
        deep = {"a": deep}
    assert schema._Passed.key("bridge", deep) is None
    with pytest.raises(CNIError) as e:                                 # still a clear code 7
        schema.validate("bridge", deep)
    assert e.value.code == INVALID_CONFIG


def test_the_memory_is_bounded_by_entries_and_by_text():
    m = schema._Passed(entries=2, max_bytes=10_000)
    keys = [("s", json.dumps({"n": i})) for i in range(3)]
    for k in keys:
        m.remember(k)
    assert len(m) == 2 and not m.passed(keys[0]) and m.passed(keys[2])
    m = schema._Passed(entries=100, max_bytes=50)
    m.remember(("s", "x" * 30))
    m.remember(("s", "y" * 30))
    assert len(m) == 1 and m.passed(("s", "y" * 30))


def test_after_warm_no_validation_imports_anything():
    code = """
import json, sys
from multiplex.util import schema
schema.warm()
before = set(sys.modules)
ipam = %s
bridge = %s
multiplex = {"cniVersion": "1.1.0", "name": "n", "type": "multiplex", "clusterNetwork": bridge,
             "delegates": [bridge]}
schema.validate("multiplex", multiplex)
schema.validate("bridge", bridge)
schema.validate("ipam", ipam, prefix="$.ipam")
schema.validate("annotation", [{"name": "blue", "namespace": "ns"}])
for name, bad in (("bridge", dict(bridge, mtu="x")), ("multiplex", {"type": "multiplex"}),
                  ("annotation", [{"nope": 1}])):
    try:
        schema.validate(name, bad)
    except Exception:
        pass
print(json.dumps(sorted(set(sys.modules) - before)))
""" % (json.dumps(IPAM), json.dumps(BRIDGE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
