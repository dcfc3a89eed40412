"""Every node path of the multiplex config is absolute, and a logFile is not a directory: code 7
naming the field, before anything is touched (a relative path would follow the runtime's working
directory)."""
from __future__ import annotations

import pytest

from multiplex.cni import errors
from multiplex.cni.errors import CNIError
from multiplex.meta.config import MultiplexConfig

BASE = {"cniVersion": "1.1.0", "name": "multiplex", "type": "multiplex", "clusterNetwork": "podnet"}
PATH_FIELDS = ["binDir", "confDir", "stateDir", "logFile", "nadDir", "podDir", "kubeconfig",
               "readinessindicatorfile"]


def refused(**over) -> CNIError:
    with pytest.raises(CNIError) as e:
        MultiplexConfig.from_dict(dict(BASE, **over))
    assert e.value.code == errors.INVALID_CONFIG, e.value
    return e.value


@pytest.mark.parametrize("key", PATH_FIELDS)
@pytest.mark.parametrize("value", ["relative", "./relative", "../up", "sub/dir"])
def test_a_relative_node_path_is_code_7_naming_the_field(key, value):
    assert f"field: $.{key}" in refused(**{key: value}).details


@pytest.mark.parametrize("key", PATH_FIELDS)
def test_an_absolute_node_path_is_accepted(key, tmp_path):
    conf = MultiplexConfig.from_dict(dict(BASE, **{key: str(tmp_path / "x")}))
    assert conf.raw[key] == str(tmp_path / "x")


@pytest.mark.parametrize("key", ["logFile", "readinessindicatorfile"])
def test_an_empty_optional_file_means_none(key):
    MultiplexConfig.from_dict(dict(BASE, **{key: ""}))


def test_a_log_file_that_is_a_directory_is_code_7(tmp_path):
    e = refused(logFile=str(tmp_path))
    assert "field: logFile" in e.details and str(tmp_path) in e.msg


@pytest.mark.parametrize("cn", ["./net.d/10-pod.conf", "../10-pod.conf", "net.d/a/10-pod.conf", ".", ".."])
def test_a_cluster_network_written_as_a_relative_path_is_code_7(cn):
    assert "field: clusterNetwork" in refused(clusterNetwork=cn).details


@pytest.mark.parametrize("cn", ["podnet", "kube-system/podnet", "/etc/cni/net.d/10-pod.conf", "/etc/cni/net.d"])
def test_a_cluster_network_name_or_absolute_path_is_accepted(cn):
    assert MultiplexConfig.from_dict(dict(BASE, clusterNetwork=cn)).cluster_network == cn


def test_del_and_gc_skip_the_checks_so_teardown_works_with_the_runtimes_config():
    conf = MultiplexConfig.from_dict(dict(BASE, binDir="bin", logFile="x.log"), validate=False)
    assert conf.bin_dir == "bin"


@pytest.mark.parametrize("over", [{"readinessTimeout": "soon"}, {"pluginTimeout": -1}, {"logFile": 7},
                                  {"logFile": "relative.log"}, {"maxAttachments": True}, {"logLevel": []}])
def test_teardown_falls_back_to_the_default_for_a_wrong_tuning_field(over):
    conf = MultiplexConfig.from_dict(dict(BASE, **over), validate=False)
    default = MultiplexConfig.from_dict(BASE, validate=False)
    key = next(iter(over))
    attr = {"readinessTimeout": "readiness_timeout", "pluginTimeout": "plugin_timeout", "logFile": "log_file",
            "maxAttachments": "max_attachments", "logLevel": "log_level"}[key]
    assert getattr(conf, attr) == getattr(default, attr)


@pytest.mark.parametrize("key, value", [("confDir", 5), ("binDir", ["x"]), ("delegates", "podnet"),
                                        ("delegates", ["podnet"]), ("clusterNetwork", 7),
                                        ("systemNamespaces", "kube-system"), ("namespaceIsolation", "no")])
def test_teardown_refuses_a_wrong_typed_field_that_says_where_things_are(key, value):
    with pytest.raises(CNIError) as e:
        MultiplexConfig.from_dict(dict(BASE, **{key: value}), validate=False)
    assert e.value.code == errors.INVALID_CONFIG and f"field: {key}" in e.value.details


@pytest.mark.parametrize("value", ["/", "/var/log/"])
def test_a_log_file_ending_in_a_slash_is_refused_by_the_schema(value):
    assert "field: $.logFile" in refused(logFile=value).details
