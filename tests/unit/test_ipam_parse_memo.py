"""multiplex/ipam/config.py remembers a parse: the same IPAM block is parsed once, counted (never timed),
and what a caller gets back is the same as a fresh parse and its own to change."""
from __future__ import annotations

import ipaddress

import pytest

from multiplex.cni.errors import CNIError
from multiplex.ipam import config
from multiplex.ipam.plugin import plugin


def conf(subnet: str = "198.18.60.0/24", name: str = "blue") -> dict:
    return {"cniVersion": "1.1.0", "name": name, "type": "multiplex-bridge",
            "ipam": {"type": "multiplex-ipam", "ranges": [[{"subnet": subnet}]],
                     "routes": [{"dst": "198.18.61.0/24"}], "dns": {"nameservers": ["198.18.60.1"]}}}


@pytest.fixture
def parses(monkeypatch):
    """The number of real parses (config.parse_uncached) since the fixture started."""
    config.forget_parsed()
    count = [0]
    real = config.parse_uncached

    def counted(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(config, "parse_uncached", counted)
    yield count
    config.forget_parsed()


def test_the_same_block_is_parsed_once_and_validation_under_another_path_reuses_it(parses):
    first = config.parse(conf(), state_dir="/tmp/s")
    again = config.parse(conf(), state_dir="/tmp/s")
    plugin.validate(conf(), where="blue:$.plugins[0]")     # the meta plugin's check, another path
    assert parses[0] == 1
    assert again == first
    assert [rs.path for rs in again.range_sets] == ["$.ipam.ranges[0]"]


def test_a_changed_block_name_path_or_state_root_is_parsed_again(parses):
    config.parse(conf())
    config.parse(conf(subnet="198.18.62.0/24"))
    config.parse(conf(name="green"))
    at = config.parse(conf(), where="blue:$.plugins[0]")
    elsewhere = config.parse(conf(), state_dir="/tmp/other")
    assert parses[0] == 5
    assert at.range_sets[0].path == "blue:$.plugins[0].ipam.ranges[0]"
    assert elsewhere.state_dir == "/tmp/other"


def test_an_invalid_block_is_refused_every_time_naming_the_field_under_its_path(parses):
    bad = conf(subnet="198.18.60.0/33")
    for where in ("$", "blue:$.plugins[0]", "$"):
        with pytest.raises(CNIError) as e:
            plugin.validate(bad, where=where)
        assert e.value.code == 7 and f"{where}.ipam.ranges[0][0].subnet" in e.value.details
    assert parses[0] == 3


def test_a_caller_changing_its_config_does_not_change_the_next_callers(parses):
    mine = config.parse(conf())
    mine.routes.append(mine.routes[0])
    mine.routes[0].gw = ipaddress.ip_address("198.18.60.9")
    mine.dns.nameservers.append("198.18.60.2")
    mine.exclude.append(ipaddress.ip_network("198.18.60.128/25"))
    theirs = config.parse(conf())
    assert parses[0] == 1
    assert [(str(r.dst), r.gw) for r in theirs.routes] == [("198.18.61.0/24", None)]
    assert theirs.dns.nameservers == ["198.18.60.1"] and theirs.exclude == []


def test_at_most_parsed_max_configs_are_remembered(parses, monkeypatch):
    monkeypatch.setattr(config, "PARSED_MAX", 2)
    for n in range(3):
        config.parse(conf(subnet=f"198.18.{70 + n}.0/24"))
    config.parse(conf(subnet="198.18.72.0/24"))    # still remembered
    config.parse(conf(subnet="198.18.70.0/24"))    # the oldest: gone
    assert parses[0] == 4
