"""The result cache: atomic writes, idempotent delete, corrupt files reported not crashed on."""
from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest

from multiplex.util import log
from multiplex.cni import cache as cachemod
from multiplex.cni import errors
from multiplex.cni.cache import CorruptEntry, ResultCache
from multiplex.cni.errors import CNIError

RECORD = {"complete": True, "attachments": [{"network": "default/net-a", "ifname": "net1",
                                              "result": {"cniVersion": "1.1.0", "ips": [{"address": "198.18.0.2/24"}]}}]}


@pytest.fixture
def cache(state_dir):
    return ResultCache(str(state_dir / "cache"))


@pytest.fixture
def logfile(tmp_path, monkeypatch):
    path = tmp_path / "multiplex.log"
    monkeypatch.setattr(log, "_logger", log.Logger(str(path), "info"))
    return path


def logged(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_save_load_delete(cache):
    assert cache.load("c1", "eth0") is None
    cache.save("c1", "eth0", RECORD)
    assert cache.load("c1", "eth0") == RECORD
    assert cache.load("c1", "net1") is None
    cache.delete("c1", "eth0")
    assert cache.load("c1", "eth0") is None
    assert os.listdir(cache.dir) == []


def test_delete_is_idempotent(cache):
    cache.delete("never-added", "eth0")
    cache.save("c1", "eth0", RECORD)
    cache.delete("c1", "eth0")
    cache.delete("c1", "eth0")
    assert cache.load("c1", "eth0") is None


def test_save_replaces(cache):
    cache.save("c1", "eth0", {"n": 1})
    cache.save("c1", "eth0", {"n": 2})
    assert cache.load("c1", "eth0") == {"n": 2}
    assert len(os.listdir(cache.dir)) == 1


def test_files_are_private(cache):
    cache.save("c1", "eth0", RECORD)
    (name,) = os.listdir(cache.dir)
    assert stat.S_IMODE(os.stat(os.path.join(cache.dir, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cache.dir).st_mode) == 0o700


def test_ids_that_look_alike_do_not_collide(cache):
    cache.save("a-b", "c", {"who": 1})
    cache.save("a", "b-c", {"who": 2})
    assert cache.load("a-b", "c") == {"who": 1} and cache.load("a", "b-c") == {"who": 2}


def test_entries_and_stale(cache):
    cache.save("c2", "eth0", {"n": 2})
    cache.save("c1", "eth0", {"n": 1})
    cache.save("c1", "net1", {"n": 3})
    assert sorted(cache.entries()) == [("c1", "eth0", {"n": 1}), ("c1", "net1", {"n": 3}), ("c2", "eth0", {"n": 2})]
    stale = list(cache.stale([("c1", "eth0"), {"containerID": "c2", "ifname": "eth0"}]))
    assert stale == [("c1", "net1", {"n": 3})]


def test_write_is_synced_file_then_directory(cache, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    cache.save("c1", "eth0", RECORD)
    assert os.path.basename(synced[0]).startswith(cachemod.TMP_PREFIX)  # the data, before the rename
    assert synced[-1] == cache.dir  # the rename itself


def test_failed_write_keeps_the_old_record_and_leaves_no_temp_file(cache, monkeypatch):
    cache.save("c1", "eth0", {"n": 1})

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CNIError) as e:
        cache.save("c1", "eth0", {"n": 2})
    assert e.value.code == errors.IO_FAILURE
    assert "No space left" in e.value.msg and "c1:eth0" in e.value.details
    monkeypatch.undo()
    assert cache.load("c1", "eth0") == {"n": 1}
    assert os.listdir(cache.dir) == ["c1:eth0.json"]


def _rewrite(directory: str, rounds: int) -> None:
    c = ResultCache(directory)
    for n in range(rounds):
        c.save("c1", "eth0", {"n": n, "payload": "x" * (1000 + 37 * n)})


def test_readers_never_see_half_a_record(cache):
    """A writer process rewrites the entry while we read it: every read is a whole record."""
    cache.save("c1", "eth0", {"n": -1, "payload": "x" * 963})
    writer = multiprocessing.get_context("fork").Process(target=_rewrite, args=(cache.dir, 300))
    writer.start()
    try:
        seen = set()
        while writer.is_alive() or not seen:
            rec = cache.load("c1", "eth0")
            assert rec is not None
            assert len(rec["payload"]) == 1000 + 37 * rec["n"]
            seen.add(rec["n"])
    finally:
        writer.join(60)
        if writer.is_alive():
            writer.kill()
    assert writer.exitcode == 0
    assert cache.load("c1", "eth0")["n"] == 299
    assert os.listdir(cache.dir) == ["c1:eth0.json"]


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"kind": "other", "record": {}}', b"[1]",
                                     b'{"kind": "multiplex-cache/v1", "containerID": "c1", "ifname": "eth0"}'])
def test_corrupt_entry_is_reported_not_crashed_on(cache, logfile, content):
    cache.save("c2", "eth0", {"n": 2})
    with open(os.path.join(cache.dir, "c1:eth0.json"), "wb") as f:
        f.write(content)
    assert cache.load("c1", "eth0") is None
    assert list(cache.entries()) == [("c2", "eth0", {"n": 2})]
    problems = [r for r in logged(logfile) if r["msg"] == "corrupt cache entry"]
    assert problems and problems[0]["file"].endswith("c1:eth0.json")
    # DEL and GC tell a corrupt entry from a missing one
    found = cache.load("c1", "eth0", with_corrupt=True)
    assert isinstance(found, CorruptEntry) and not found
    assert (found.container_id, found.ifname, found.path) == ("c1", "eth0", os.path.join(cache.dir, "c1:eth0.json"))
    assert cache.load("c9", "eth0", with_corrupt=True) is None
    assert [(c.container_id, c.ifname) for c in cache.corrupt_entries()] == [("c1", "eth0")]
    cache.delete("c1", "eth0")  # and it can be removed
    assert os.listdir(cache.dir) == ["c2:eth0.json"]


def test_entry_under_the_wrong_name_is_reported(cache, logfile):
    cache.save("c2", "eth0", {"n": 2})
    os.rename(os.path.join(cache.dir, "c2:eth0.json"), os.path.join(cache.dir, "c1:eth0.json"))
    assert cache.load("c1", "eth0") is None
    assert any("c2/eth0" in r.get("problem", "") for r in logged(logfile))


def test_leftover_temp_files_are_skipped_and_swept_when_old(cache):
    cache.save("c1", "eth0", {"n": 1})
    old = os.path.join(cache.dir, cachemod.TMP_PREFIX + "old.json")
    fresh = os.path.join(cache.dir, cachemod.TMP_PREFIX + "fresh.json")
    for p in (old, fresh):
        with open(p, "w") as f:
            f.write("{half")
    os.utime(old, (1, 1))
    assert list(cache.entries()) == [("c1", "eth0", {"n": 1})]
    assert not os.path.exists(old) and os.path.exists(fresh)  # a writer may still own the fresh one


@pytest.mark.parametrize("cid, ifname, field", [("../etc", "eth0", "CNI_CONTAINERID"), ("", "eth0", "CNI_CONTAINERID"),
                                                 ("c1", "a/b", "CNI_IFNAME"), ("c1", "..", "CNI_IFNAME"),
                                                 ("c1", "", "CNI_IFNAME"), ("c1", "a:b", "CNI_IFNAME")])
def test_keys_that_could_escape_the_directory_are_refused(cache, cid, ifname, field):
    for op in (lambda: cache.save(cid, ifname, {}), lambda: cache.load(cid, ifname),
               lambda: cache.delete(cid, ifname)):
        with pytest.raises(CNIError) as e:
            op()
        assert e.value.code == errors.INVALID_ENVIRONMENT and f"field: {field}" in e.value.details


def test_default_directory_is_under_the_state_root(state_dir, monkeypatch):
    monkeypatch.setenv("MULTIPLEX_STATE_DIR", str(state_dir))
    assert ResultCache().dir == str(state_dir / "cache")


def test_a_state_dir_that_is_a_regular_file_is_code_5_naming_the_path(tmp_path):
    state = tmp_path / "state"
    state.write_text("not a directory")
    with pytest.raises(CNIError) as e:
        ResultCache(str(state / "cache"))
    assert e.value.code == errors.IO_FAILURE
    assert str(state / "cache") in e.value.msg and "stateDir" in e.value.details


def test_a_write_that_fails_is_code_5_naming_the_file_and_leaves_no_temporary(cache, monkeypatch):
    import errno

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CNIError) as e:
        cache.save("c1", "eth0", {"n": 1})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert e.value.code == errors.IO_FAILURE
    assert "c1:eth0.json" in e.value.msg and "No space left" in e.value.msg
    assert os.listdir(cache.dir) == []
