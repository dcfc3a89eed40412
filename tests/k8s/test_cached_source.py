"""CachedSource: the node daemon's Source for one CNI call. A cache hit reads nothing from the API
(counted by the test API server), a miss is exactly one GET with KubeSource's answers (107 naming
a missing NAD, None for a missing pod), and network-status stays one PATCH with the UID
precondition. Through the meta plugin, in-process: an ADD whose pod and NADs are cached makes
no API read: its requests are the status PATCH and the pod's Events."""
from __future__ import annotations

import io
import json
import time

import pytest

from multiplex.cni.errors import CNIError
from multiplex.k8s.cached import CachedSource
from multiplex.k8s.client import KubeClient
from multiplex.k8s.errors import Conflict
from multiplex.k8s.objects import KubeObjects

NODE = "n1"
NETWORKS = "k8s.v1.cni.cncf.io/networks"
STATUS = "k8s.v1.cni.cncf.io/network-status"


def synced_objects(kubeconfig: str, kinds=("pods", "nads")) -> KubeObjects:
    client = KubeClient(kubeconfig, timeout=5, retries=1, backoff=0.05)
    objects = KubeObjects(client, NODE, backoff=0.05, max_backoff=0.3)
    for kind in kinds:
        inf = objects.informer(kind)
        assert inf.wait_synced(10), f"{kind} informer never synced"
        end = time.monotonic() + 10
        while not inf.stats["watches"] and time.monotonic() < end:   # its watch open, so counts after are the call's
            time.sleep(0.01)
    return objects


@pytest.fixture
def cached(apiserver):
    """(objects, a fresh CachedSource) over synced pod and NAD informers; stopped at teardown."""
    store = apiserver.store
    store.add_nad("blue", "default", {"cniVersion": "1.1.0", "name": "blue", "type": "multiplex-bridge"})
    store.add_pod("web", annotations={NETWORKS: "blue"}, node_name=NODE)
    objects = synced_objects(apiserver.kubeconfig)
    yield objects, (lambda: CachedSource(objects, objects.client))
    objects.stop()


def api_reads(apiserver) -> int:
    return apiserver.count("get") + apiserver.count("list")


def test_cache_hit_reads_nothing_from_the_api(apiserver, cached):
    _, source = cached
    apiserver.reset_counts()
    src = source()
    pod = src.get_pod("default", "web")
    nad = src.get_nad("default", "blue")
    assert pod["metadata"]["annotations"][NETWORKS] == "blue"
    assert json.loads(nad["spec"]["config"])["type"] == "multiplex-bridge"
    assert api_reads(apiserver) == 0 and apiserver.counts() == {}
    assert (src.hits, src.misses) == (2, 0)


def test_a_miss_is_exactly_one_get(apiserver, cached):
    objects, source = cached
    objects.informer("pods").stop()            # the cache lags: what is created now is not in it
    objects.informer("nads").stop()
    apiserver.store.add_pod("just-born", annotations={NETWORKS: "green"}, node_name=NODE)
    apiserver.store.add_nad("green", "default", {"cniVersion": "1.1.0", "name": "green", "type": "x"})
    apiserver.reset_counts()
    src = source()
    for _ in range(2):   # asked twice in one call: still one GET each
        assert src.get_pod("default", "just-born")["metadata"]["annotations"][NETWORKS] == "green"
        assert src.get_nad("default", "green")["metadata"]["name"] == "green"
    assert apiserver.count("get", "pods") == 1
    assert apiserver.count("get", "network-attachment-definitions") == 1
    assert apiserver.count("list") == 0 and src.misses == 2


def test_a_missing_nad_is_107_naming_it_after_one_get(apiserver, cached):
    _, source = cached
    apiserver.reset_counts()
    src = source()
    for _ in range(2):
        with pytest.raises(CNIError) as err:
            src.get_nad("default", "nosuch")
        assert err.value.code == 107
        assert "default/nosuch" in err.value.msg and "name: nosuch" in err.value.details
    assert apiserver.count("get", "network-attachment-definitions") == 1


class RecordingLog:
    """A logger that keeps its warnings (the call's logger, as the daemon passes it)."""

    def __init__(self):
        self.records: list[tuple[str, dict]] = []

    def warning(self, msg, **fields):
        self.records.append((msg, fields))

    def debug(self, msg, **fields):
        pass

    info = debug


def test_a_missing_pod_is_none_with_the_warning_after_one_get(apiserver, cached):
    objects, _ = cached
    apiserver.reset_counts()
    log = RecordingLog()
    src = CachedSource(objects, objects.client, log=log)
    records = log.records
    assert src.get_pod("default", "ghost") is None
    assert src.get_pod("default", "ghost") is None
    assert apiserver.count("get", "pods") == 1
    assert records and "pod not found" in records[0][0] and records[0][1]["pod"] == "default/ghost"


def test_network_status_is_one_patch_with_the_cached_uid_as_precondition(apiserver, cached):
    _, source = cached
    store = apiserver.store
    apiserver.reset_counts()
    src = source()
    assert src.get_pod("default", "web") is not None
    src.set_network_status("default", "web", '[{"name": "podnet"}]')
    assert store.get_pod("web")["metadata"]["annotations"][STATUS] == '[{"name": "podnet"}]'
    assert apiserver.counts() == {"patch": 1}
    # the pod recreated under the same name after the read: the PATCH must not touch the new one
    store.delete_pod("web")
    store.add_pod("web", node_name=NODE)
    with pytest.raises(Conflict):
        src.set_network_status("default", "web", "[]")
    assert STATUS not in store.get_pod("web")["metadata"]["annotations"]


def test_a_pod_cached_under_another_uid_is_a_miss_and_one_get(apiserver, cached):
    """The pod was recreated under its name and the watch has not caught up: the runtime's UID
    names the new pod, so the cached old one is not used (else the ADD would be refused as stale)."""
    objects, source = cached
    store = apiserver.store
    old_uid = store.get_pod("web")["metadata"]["uid"]
    objects.informer("pods").stop()            # the cache keeps the old pod
    store.delete_pod("web")
    store.add_pod("web", annotations={NETWORKS: "green"}, node_name=NODE)
    new_uid = store.get_pod("web")["metadata"]["uid"]
    assert new_uid != old_uid
    apiserver.reset_counts()
    src = source()
    assert src.get_pod("default", "web", new_uid)["metadata"]["uid"] == new_uid
    assert apiserver.counts() == {"get": 1}
    src = source()
    assert src.get_pod("default", "web", old_uid)["metadata"]["uid"] == old_uid   # the cache answers
    assert apiserver.counts() == {"get": 1}


def test_network_status_without_a_read_takes_the_runtime_uid_as_precondition(apiserver, cached):
    """With the runtime's pod annotations no pod is read: the PATCH still names the pod by the
    runtime's K8S_POD_UID, so a pod recreated under the same name is never written to."""
    _, source = cached
    store = apiserver.store
    uid = store.get_pod("web")["metadata"]["uid"]
    source().set_network_status("default", "web", '[{"name": "a"}]', uid)
    assert store.get_pod("web")["metadata"]["annotations"][STATUS] == '[{"name": "a"}]'
    store.delete_pod("web")
    store.add_pod("web", node_name=NODE)
    with pytest.raises(Conflict):
        source().set_network_status("default", "web", "[]", uid)
    assert STATUS not in store.get_pod("web")["metadata"]["annotations"]


# --- through the meta plugin, in-process, as the daemon serves a call ----------------------------

class CacheServices:
    """The smallest Services (cni/context.py): the cached source for every config, no metrics."""

    def __init__(self, objects: KubeObjects):
        self.objects = objects
        self.sources: list[CachedSource] = []

    def source(self, conf):
        src = CachedSource(self.objects, self.objects.client)
        self.sources.append(src)
        return src

    def observe_plugin(self, type_name, command, seconds, code):
        pass


@pytest.mark.root
def test_in_process_add_reads_nothing_but_the_status_patch(node, netns_factory, tmp_path):
    from multiplex.cni import skel
    from multiplex.meta.orchestrator import plugin
    from multiplex.netlink.netns import entered
    from tests.cnitool import CNI_PATH, addresses, cni_env, links
    from tests.k8s.apiserver import running_apiserver
    from tests.k8s.test_multiplex_k8s import nad_config
    from tests.netns.mpxlab import Lab, bridge_conf

    with running_apiserver(str(tmp_path), netns=f"/var/run/netns/{node}") as api:
        store = api.store
        store.add_nad("podnet", "default", nad_config("podnet", bridge_conf(
            "mpx-pod", "198.18.0.0/24", isGateway=True, isDefaultGateway=True)))
        store.add_nad("blue", "default", nad_config("blue", bridge_conf("mpx-blue", "198.18.1.0/24")))
        uid = store.add_pod("web", annotations={NETWORKS: "blue"}, node_name=NODE)["metadata"]["uid"]
        lab = Lab(node=node, root=str(tmp_path), netns_factory=netns_factory)
        lab.extra = {"kubeconfig": api.kubeconfig, "nadDir": None, "podDir": None}
        conf = {k: v for k, v in lab.config().items() if v is not None}
        pod_ns = netns_factory("pod")
        env = cni_env("ADD", "cid-web", pod_ns, "eth0",
                      f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID={uid}", CNI_PATH)
        # the daemon lives in the node: its informer threads and the call both run in the node's netns
        with entered(f"/var/run/netns/{node}"):
            objects = synced_objects(api.kubeconfig)
            try:
                services = CacheServices(objects)
                api.reset_counts()
                out = io.StringIO()
                rc = skel.run(plugin, env, json.dumps(conf).encode(), out, services=services)
            finally:
                objects.stop()
        assert rc == 0, out.getvalue()
        # no read at all: the status PATCH, and one AddedInterface event per attachment
        assert api.counts() == {"patch": 1, "create": 2}, api.requests
        assert api.count("create", "events") == 2
        assert services.sources and all(s.misses == 0 for s in services.sources)
        assert links(pod_ns) == {"lo", "eth0", "net1"}
        assert addresses(pod_ns, "net1") and all(a.startswith("198.18.1.") for a in addresses(pod_ns, "net1"))
        status = json.loads(store.get_pod("web")["metadata"]["annotations"][STATUS])
        assert [(s["name"], s["interface"]) for s in status] == [("podnet", "eth0"), ("default/blue", "net1")]
        assert lab.cni("DEL", "web", pod_ns, config=conf, uid=uid).ok
        assert links(pod_ns) == {"lo"} and lab.leases() == []
