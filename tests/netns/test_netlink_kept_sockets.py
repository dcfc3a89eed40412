"""Node-netns netlink sockets kept per thread in a warm process (netlink.handle.keep_node_sockets),
and links created with an echo instead of a look-up. In-process, as root: every thread here works
inside a test netns (netns.entered), so "the node" is always a namespace the test made."""
from __future__ import annotations

import gc
import os
import socket
import threading

import pytest

from multiplex import netlink
from multiplex.cni.errors import CNIError
from multiplex.netlink import handle, rtlink
from tests.cnitool import links

pytestmark = pytest.mark.root


#: netlink sockets per Handle: pyroute2's and the look-up socket (rtlink)
PER_HANDLE = 2


def path(ns: str) -> str:
    return f"/var/run/netns/{ns}"


def netlink_fds() -> int:
    """How many netlink sockets this process holds, in any namespace (what a pool must bound)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            n += s.family == socket.AF_NETLINK
        finally:
            s.close()
    return n


def in_thread(fn, *args):
    """Run fn on a thread of its own; its exception is raised here."""
    out: dict = {}

    def body():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def keeping():
    """Kept node sockets on for the test; off (this thread's closed) and collected at its end."""
    handle.keep_node_sockets(True)
    yield
    handle.keep_node_sockets(False)
    gc.collect()


def test_a_thread_reuses_one_node_socket_across_calls(netns_factory, keeping):
    ns = netns_factory("kp")
    base = netlink_fds()

    def calls():
        with netlink.netns.entered(path(ns)):
            counts = []
            for k in range(20):
                with netlink.open_node() as node:
                    node.add_link(f"mpxk{k}", "bridge")
                    assert node.link(f"mpxk{k}") is not None
                counts.append(netlink_fds())
            handle.keep_node_sockets(False)  # this thread's kept socket closes now
            counts.append(netlink_fds())
            return counts

    counts = in_thread(calls)
    assert counts[:20] == [base + PER_HANDLE] * 20  # one socket for twenty calls, kept between them
    assert counts[20] == base
    assert {f"mpxk{k}" for k in range(20)} <= links(ns)


def test_concurrent_threads_never_share_a_socket(netns_factory, keeping):
    ns = netns_factory("kp")
    barrier = threading.Barrier(4)
    seen: list = []
    errors: list = []

    def worker(k: int):
        try:
            with netlink.netns.entered(path(ns)):
                for round_ in range(3):
                    with netlink.open_node() as node:
                        barrier.wait(10)  # all four hold a node handle at once
                        seen.append(netlink_fds())
                        name = f"mpxc{k}{round_}"
                        node.add_link(name, "bridge")
                        for _ in range(20):
                            assert node.link(name).name == name
                        node.delete_link(name)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    base = netlink_fds()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert min(seen) >= base + 4 * PER_HANDLE  # four handles open at once: four socket pairs
    gc.collect()
    assert netlink_fds() == base  # the threads ended: their kept sockets went with them
    assert links(ns) == {"lo"}


def test_a_nested_node_handle_gets_its_own_socket(netns_factory, keeping):
    ns = netns_factory("kp")

    def nested():
        with netlink.netns.entered(path(ns)):
            with netlink.open_node() as outer:
                outer.add_link("mpxouter", "bridge")
                with netlink.open_node() as inner:
                    inner.add_link("mpxinner", "bridge")
                    both = netlink_fds()
                    assert outer.link("mpxinner") is not None and inner.link("mpxouter") is not None
                assert outer.link("mpxouter") is not None  # the outer one still answers
            kept = netlink_fds()
            handle.keep_node_sockets(False)
            return both, kept, netlink_fds()

    both, kept, none = in_thread(nested)
    assert both == none + 2 * PER_HANDLE and kept == none + PER_HANDLE  # one of the two is kept, the other closed


def test_a_socket_is_kept_after_a_kernel_refusal_and_dropped_after_anything_else(netns_factory, keeping):
    ns = netns_factory("kp")

    def run():
        with netlink.netns.entered(path(ns)):
            base = netlink_fds()
            with pytest.raises(CNIError) as e:
                with netlink.open_node() as node:
                    node.add_address(netlink.Link(index=99999, name="mpxnone"),
                                      __import__("ipaddress").ip_interface("198.18.9.1/24"))
            assert e.value.code == 105 and "mpxnone" in e.value.msg
            after_refusal = netlink_fds()
            with pytest.raises(RuntimeError):
                with netlink.open_node() as node:
                    node.link("lo")
                    raise RuntimeError("cut short")
            after_error = netlink_fds()
            with netlink.open_node() as node:  # a fresh socket, working
                assert node.link("lo").index == 1
            handle.keep_node_sockets(False)
            return base, after_refusal, after_error

    base, after_refusal, after_error = in_thread(run)
    assert after_refusal == base + PER_HANDLE and after_error == base


def test_kept_sockets_follow_the_namespace_the_thread_is_in(netns_factory, keeping):
    a, b = netns_factory("kp"), netns_factory("kp")

    def run():
        out = []
        for ns in (a, b, a):
            with netlink.netns.entered(path(ns)), netlink.open_node() as node:
                node.add_link(f"mpxn{len(out)}", "bridge")
                out.append({l.name for l in node.links()})
        handle.keep_node_sockets(False)
        return out

    seen = in_thread(run)
    assert seen[0] == {"lo", "mpxn0"} and seen[1] == {"lo", "mpxn1"} and seen[2] == {"lo", "mpxn0", "mpxn2"}
    assert links(a) == {"lo", "mpxn0", "mpxn2"} and links(b) == {"lo", "mpxn1"}


def test_pod_handles_and_one_shot_handles_are_never_kept(netns_factory):
    node_ns, pod_ns = netns_factory("kp"), netns_factory("kp")
    base = netlink_fds()
    with netlink.netns.entered(path(node_ns)), netlink.open_node() as node:  # keeping is off
        node.link("lo")
    assert netlink_fds() == base
    handle.keep_node_sockets(True)
    try:
        with netlink.open_netns(path(pod_ns)) as pod:
            pod.link("lo")
        assert netlink_fds() == base
    finally:
        handle.keep_node_sockets(False)


def test_created_links_are_what_a_look_up_reads_with_or_without_the_echo(netns_factory, monkeypatch):
    node_ns, pod_ns = netns_factory("kp"), netns_factory("kp")
    with netlink.open_netns(path(node_ns)) as n, netlink.open_netns(path(pod_ns)) as p:
        br, created = n.ensure_bridge("mpxt-kpbr", mtu=1400)
        now = n.link("mpxt-kpbr")
        assert created and (br.index, br.mac, br.kind) == (now.index, now.mac, "bridge")
        assert (br.kind, br.mtu, br.up) == ("bridge", 1400, True)
        host, peer = netlink.make_veth_pair(n, p, "mpxt-kph1", "net1", mtu=1400, alias="c/net1/kp", master=br)
        now = n.link("mpxt-kph1")
        assert (host.index, host.mac, host.mtu, host.kind, host.master, host.alias, host.up) == \
            (now.index, now.mac, 1400, "veth", br.index, "c/net1/kp", True)
        # a kernel that does not echo (before 6.3) answers with an ACK: the link is looked up
        monkeypatch.setattr(netlink.Handle, "_echoed", lambda self, fn, *a, **kw: fn(*a, **kw))
        host2, _ = netlink.make_veth_pair(n, p, "mpxt-kph2", "net2", master=br)
        now2 = n.link("mpxt-kph2")
        assert (host2.index, host2.mac, host2.master, host2.up) == (now2.index, now2.mac, br.index, True)
        with pytest.raises(CNIError) as e:
            n.create_link("mpxt-kph2", "bridge")
        assert e.value.code == 105 and "mpxt-kph2 already exists" in e.value.msg
        br2, created2 = n.ensure_bridge("mpxt-kpbr2")
        assert created2 and br2.kind == "bridge" and br2.index == n.link("mpxt-kpbr2").index
    assert {"net1", "net2"} <= links(pod_ns)


def test_look_ups_read_what_pyroute2_reads(netns_factory):
    """Handle.link (rtlink, stdlib) against pyroute2's own decoding of the same links."""
    node_ns, pod_ns = netns_factory("kp"), netns_factory("kp")
    with netlink.open_netns(path(node_ns)) as n, netlink.open_netns(path(pod_ns)) as p:
        br, _ = n.ensure_bridge("mpxt-kpbr3", mtu=1450)
        n.set_alias(br, "a network's name ✓")
        netlink.make_veth_pair(n, p, "mpxt-kph3", "net3", mtu=1450, mac="02:00:00:00:03:03",
                               alias="c/net3/kp", master=br)
        for h, name in ((n, "mpxt-kpbr3"), (n, "mpxt-kph3"), (p, "net3"), (p, "lo")):
            mine = h.link(name)
            theirs = h._link(h._ipr.link("get", ifname=name)[0])
            # operstate follows the carrier, which the kernel settles on its own time: compared apart
            assert mine.operstate in rtlink.OPERSTATES and theirs.operstate in rtlink.OPERSTATES
            mine.operstate = theirs.operstate = ""
            assert mine == theirs, name
            at = h.link_at(mine.index)
            at.operstate = ""
            assert at == theirs
        assert n.link("mpxt-nothere") is None and n.link_at(99999) is None
        with pytest.raises(CNIError) as e:
            n.require_link("mpxt-nothere", "bridge")
        assert e.value.code == 105 and "mpxt-nothere not found" in e.value.msg and "bridge" in e.value.details
        with pytest.raises(CNIError) as e:  # a name the kernel refuses outright (too long)
            n.link("x" * 40)
        assert e.value.code == 105 and "look up link" in e.value.msg


def test_stdlib_requests_do_what_ip_shows(netns_factory):
    """set_link, rename, add_address and delete_link (rtlink, stdlib) as `ip` reads the result,
    side by side with what pyroute2 made for the same request; kernel refusals keep their errors."""
    import ipaddress

    from tests.cnitool import ip_json

    ns = netns_factory("kp")
    with netlink.open_netns(path(ns)) as n:
        br, _ = n.ensure_bridge("mpxt-kpbr4")
        a = n.create_link("mpxt-kpa", "veth", peer={"ifname": "mpxt-kpa2"})
        n.set_link(a, mtu=1280, address="02:00:00:00:0a:0a", ifalias="alias a", master=br.index, state="up")
        shown = ip_json(ns, "link", "show", "dev", "mpxt-kpa")[0]
        assert (shown["mtu"], shown["address"], shown["ifalias"], shown["master"]) == \
            (1280, "02:00:00:00:0a:0a", "alias a", "mpxt-kpbr4") and "UP" in shown["flags"]
        n.set_link(a, state="down")
        assert "UP" not in ip_json(ns, "link", "show", "dev", "mpxt-kpa")[0]["flags"]
        n.rename(a, "mpxt-kpb")
        assert a.name == "mpxt-kpb" and n.link("mpxt-kpb").index == a.index
        with pytest.raises(CNIError) as e:
            n.rename(a, "mpxt-kpbr4")
        assert e.value.code == 105 and "an interface named mpxt-kpbr4 already exists" in e.value.msg
        # addresses: ours beside one pyroute2 adds, read back the same way
        c = n.create_link("mpxt-kpc", "bridge")
        n._ipr.addr("add", index=c.index, address="198.18.44.1", prefixlen=24)
        n._ipr.addr("add", index=c.index, address="fd00:44::1", prefixlen=64, flags=0x02)
        assert n.add_address(a, ipaddress.ip_interface("198.18.45.1/24"))
        assert n.add_address(a, ipaddress.ip_interface("fd00:45::1/64"))
        assert not n.add_address(a, ipaddress.ip_interface("198.18.45.1/24"), exist_ok=True)
        with pytest.raises(CNIError) as e:
            n.add_address(a, ipaddress.ip_interface("198.18.45.1/24"))
        assert e.value.code == 105 and "198.18.45.1/24" in e.value.msg and "mpxt-kpb" in e.value.details

        def shape(dev):
            return sorted((x["family"], x["prefixlen"], x.get("broadcast"), x.get("nodad", False), x["scope"])
                          for x in ip_json(ns, "addr", "show", "dev", dev)[0]["addr_info"] if x["scope"] == "global")
        assert shape("mpxt-kpb") == shape("mpxt-kpc")
        assert {f"{x['local']}/{x['prefixlen']}" for x in ip_json(ns, "addr", "show", "dev", "mpxt-kpb")[0]["addr_info"]
                if x["scope"] == "global"} == {"198.18.45.1/24", "fd00:45::1/64"}
        with pytest.raises(CNIError) as e:  # a link that is gone
            n.add_address(netlink.Link(index=99999, name="mpxt-gone"), ipaddress.ip_interface("198.18.46.1/24"))
        assert e.value.code == 105 and "cannot add address" in e.value.msg
        # deletes by name: idempotent; with a batch, into its link group, then deleted together
        assert n.delete_link("mpxt-kpc") and not n.delete_link("mpxt-kpc")
    batch = netlink.DeleteBatch()
    with netlink.netns.entered(path(ns)):
        with netlink.open_node(batch=batch) as node:
            assert node.delete_link("mpxt-kpb") and not node.delete_link("mpxt-nothere")
            assert [l.get("ifname") for l in ip_json(ns, "link", "show", "group", str(batch.group)) if l] == ["mpxt-kpb"]
            assert "mpxt-kpb" in links(ns)
        batch.run()
    assert links(ns) == {"lo", "mpxt-kpbr4"}
