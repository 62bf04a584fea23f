import errno
import fcntl
import hashlib
import os
import random

import numpy as np
import pytest

from rayfly.actors.links import visible_store
from rayfly.errors import CacheFull, PieceCorrupt, PieceUnavailable, StorageError
from rayfly.eviction import GcPolicy
from rayfly.piecemem import BufferPool
from rayfly.storage import PieceStore, aligned, piece_digest
from rayfly.task import Cut


def make_store(root, quota, **kw):
    """A store with disk watermarks off: the test machine's own disk must not decide what is
    evicted (the watermarks are tested on a small tmpfs of their own)."""
    return PieceStore(root, quota, policy=GcPolicy(quota, high=1.0, low=1.0), **kw)


def fill(store, tid, data, piece):
    store.begin(tid, Cut(len(data), piece))
    for i in range(0, max(1, -(-len(data) // piece))):
        store.write_piece(tid, i, data[i * piece : (i + 1) * piece])


def test_write_verify_read_back(tmp_path):
    store = make_store(tmp_path, quota=1 << 20)
    data = os.urandom(10_000)
    store.begin("t1", Cut(len(data), 4096))
    d = store.write_piece("t1", 1, data[4096:8192], expected=piece_digest(data[4096:8192]))
    assert d == piece_digest(data[4096:8192])
    assert bytes(store.read_piece("t1", 1)) == data[4096:8192]
    with pytest.raises(PieceUnavailable):
        store.read_piece("t1", 0)


def test_corrupt_piece_is_refused_and_not_recorded(tmp_path):
    store = make_store(tmp_path, quota=1 << 20)
    store.begin("t1", Cut(8192, 4096))
    good = os.urandom(4096)
    bad = bytearray(good)
    bad[0] ^= 1
    with pytest.raises(PieceCorrupt):
        store.write_piece("t1", 0, bytes(bad), expected=piece_digest(good))
    assert 0 not in store.entry("t1").have
    with pytest.raises(PieceCorrupt, match="bytes"):
        store.write_piece("t1", 0, good[:100])


def test_complete_publish_is_atomic_and_read_only(tmp_path):
    store = make_store(tmp_path / "cache", quota=1 << 20)
    data = os.urandom(9000)
    fill(store, "t1", data, 4096)
    with pytest.raises(StorageError, match="not complete"):
        store.publish("t1", tmp_path / "out" / "f.bin")
    store.complete("t1", "ab" * 32)
    dest = tmp_path / "out" / "f.bin"
    assert store.publish("t1", dest) == "link"
    assert dest.read_bytes() == data
    assert not (os.stat(store.data_path("t1")).st_mode & 0o222)
    assert [p.name for p in dest.parent.iterdir()] == ["f.bin"]


def test_publish_failure_leaves_nothing(tmp_path):
    store = make_store(tmp_path / "cache", quota=1 << 20)
    fill(store, "t1", b"x" * 10, 4096)
    store.complete("t1", "00" * 32)
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(StorageError, match="cannot create directory"):
        store.publish("t1", blocker / "f.bin")


def test_incomplete_tasks_are_dropped_on_restart_complete_kept(tmp_path):
    store = make_store(tmp_path, quota=1 << 20)
    fill(store, "done", b"a" * 5000, 4096)
    store.complete("done", "11" * 32)
    store.begin("partial", Cut(5000, 4096))
    store.write_piece("partial", 0, b"b" * 4096)
    store.close()
    again = make_store(tmp_path, quota=1 << 20)
    assert again.entry("partial") is None
    assert not (tmp_path / "tasks" / "partial").exists()
    entry = again.entry("done")
    assert entry.complete and entry.sha256 == "11" * 32 and entry.have == {0, 1}
    assert bytes(again.read_piece("done", 1)) == b"a" * 904


def test_read_entry_reads_only_complete_tasks_without_opening_the_store(tmp_path):
    store = make_store(tmp_path, quota=1 << 20)
    data = b"a" * 5000
    fill(store, "done", data, 4096)
    store.complete("done", "11" * 32)
    store.begin("partial", Cut(5000, 4096))
    store.write_piece("partial", 0, b"b" * 4096)
    entry = PieceStore.read_entry(tmp_path, "done")
    assert entry is not None and entry.complete and entry.sha256 == "11" * 32
    assert (entry.length, entry.piece_size, entry.have) == (5000, 4096, {0, 1})
    assert PieceStore.data_path_at(tmp_path, "done").read_bytes() == data
    assert PieceStore.read_entry(tmp_path, "partial") is None
    assert PieceStore.read_entry(tmp_path, "absent") is None
    assert (tmp_path / "tasks" / "partial").exists()  # a reader removes nothing


def test_lru_eviction_and_quota(tmp_path):
    now = [0.0]
    store = make_store(tmp_path, quota=10_000, clock=lambda: now[0])
    for name in ("old", "new"):
        now[0] += 1
        fill(store, name, b"z" * 4000, 4096)
        store.complete(name, "00" * 32)
    now[0] += 1
    store.read_piece("old", 0)
    store.begin("third", Cut(4000, 4096))
    assert store.entry("new") is None and store.entry("old") is not None
    with pytest.raises(CacheFull):
        store.begin("huge", Cut(20_000, 4096))


def ttl_store(tmp_path, now, names, step=0.0):
    """A 1 MiB store whose entries live 60 s on the clock ``now[0]``, with a complete entry of
    4000 bytes per name of ``names``, made ``step`` seconds apart."""
    policy = GcPolicy(1 << 20, ttl_s=60, high=1.0, low=1.0)
    store = PieceStore(tmp_path, 1 << 20, policy=policy, clock=lambda: now[0])
    for name in names:
        fill(store, name, b"s" * 4000, 4096)
        store.complete(name, "00" * 32)
        now[0] += step
    return store


def test_an_entry_past_its_ttl_goes_when_a_task_begins(tmp_path):
    now = [0.0]
    store = ttl_store(tmp_path, now, ("stale", "fresh"), step=50)
    store.begin("next", Cut(4000, 4096))  # "stale" last used 100 s ago, "fresh" 50 s ago
    assert [e.task_id for e in store.take_evictions()] == ["stale"]
    assert store.entry("fresh") is not None


def test_a_cache_within_its_limits_begins_a_task_without_a_stat_per_entry(tmp_path, monkeypatch):
    """Making room looks at each complete entry's file only when something may have to go:
    500 cached entries cost a new task's begin no stat of theirs."""
    store = make_store(tmp_path, quota=1 << 30)
    for i in range(500):
        fill(store, f"e{i}", b"e" * 100, 4096)
        store.complete(f"e{i}", "00" * 32)
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    store.begin("new", Cut(100, 4096))
    assert not [p for p in stats if p.endswith("/data")]
    assert store.take_evictions() == []
    store.gc(keep_bytes=0, dry_run=True)  # a real plan still looks at every entry's file
    assert len([p for p in stats if p.endswith("/data")]) == 500


class CountingEntries(dict):
    """A store's entry table that counts the walks over it."""

    walks = 0

    def values(self):
        CountingEntries.walks += 1
        return super().values()


def test_a_task_begins_without_a_walk_over_the_entries(tmp_path):
    """A new task's begin in a cache within its limits neither sums the entries' lengths nor
    looks for the least recent use among them (each a walk over every entry: 1.3 ms per begin
    at 10,000 entries), and the bytes reserved stay the entries' sum."""
    store = make_store(tmp_path, quota=1 << 30)
    for i in range(300):
        fill(store, f"e{i}", b"e" * 100, 4096)
        store.complete(f"e{i}", "00" * 32)
    store._entries = CountingEntries(store._entries)
    CountingEntries.walks = 0
    for i in range(20):
        store.begin(f"new{i}", Cut(100, 4096))
    assert CountingEntries.walks == 0
    assert store.used_bytes() == 320 * 100
    assert store.take_evictions() == []


def test_the_bytes_reserved_follow_every_way_entries_come_and_go(tmp_path):
    """Begin, complete, discard, an eviction to make room, gc and a reload: the store's
    running total is the sum of its entries' lengths after each step (seeded random ops)."""
    rng = random.Random(7)
    now = [0.0]
    policy = GcPolicy(40_000, ttl_s=500, high=1.0, low=1.0)
    store = PieceStore(tmp_path, 40_000, policy=policy, clock=lambda: now[0])
    for step in range(400):
        now[0] += rng.choice((0.0, 1.0, 30.0))
        tid = f"t{rng.randrange(30)}"
        op = rng.random()
        if op < 0.5 and store.entry(tid) is None:
            try:
                fill(store, tid, b"x" * rng.randrange(1, 9000), 4096)
                store.complete(tid, "00" * 32)
            except (CacheFull, StorageError):
                pass
        elif op < 0.5:
            store.begin(tid, Cut(1, 4096))  # a use of the entry there
        elif op < 0.8:
            store.discard(tid)
        elif op < 0.9:
            store.gc(keep_bytes=rng.randrange(0, 40_000))
        else:
            store.close()
            store = PieceStore(tmp_path, 40_000, policy=policy, clock=lambda: now[0])
        assert store.used_bytes() == sum(e.length for e in store.entries()), step


def test_a_use_after_the_bound_keeps_an_entry_within_its_ttl(tmp_path):
    """The least recent use is kept as a bound below it: an entry used again (begun again,
    published) moves past the bound and is not evicted when the bound alone is past the TTL;
    one that is past it goes."""
    now = [0.0]
    store = ttl_store(tmp_path, now, ("used", "idle"))
    now[0] = 50
    store.begin("used", Cut(4000, 4096))  # a use: "used" last used at 50, "idle" at 0
    now[0] = 70
    store.begin("next", Cut(4000, 4096))
    assert [e.task_id for e in store.take_evictions()] == ["idle"]
    now[0] = 100
    store.begin("later", Cut(4000, 4096))  # "used" 50 s ago: within its TTL
    assert store.take_evictions() == [] and store.entry("used") is not None
    now[0] = 111
    store.begin("last", Cut(4000, 4096))
    assert [e.task_id for e in store.take_evictions()] == ["used"]


def test_pieces_accept_numpy_views(tmp_path):
    store = make_store(tmp_path, quota=1 << 20)
    arr = np.frombuffer(os.urandom(4096), dtype=np.uint8)
    arr.flags.writeable = False
    store.begin("t", Cut(4096, 4096))
    store.write_piece("t", 0, arr)
    assert bytes(store.read_piece("t", 0)) == arr.tobytes()


def test_a_piece_changed_on_disk_is_caught_when_read_with_verify(tmp_path):
    store = make_store(tmp_path, quota=1 << 20)
    data = os.urandom(8192)
    fill(store, "t1", data, 4096)
    store.complete("t1", "whatever")
    os.chmod(store.data_path("t1"), 0o644)  # the cache file is read-only: damage it anyway
    with open(store.data_path("t1"), "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\x00" * 16)
    assert bytes(store.read_piece("t1", 0, verify=True)) == data[:4096]
    assert bytes(store.read_piece("t1", 1)) != data[4096:]  # unchecked reads do not notice
    with pytest.raises(PieceCorrupt, match="changed on disk"):
        store.read_piece("t1", 1, verify=True)


def test_a_complete_task_is_recut_from_its_own_bytes_and_kept_so(tmp_path):
    store = make_store(tmp_path, quota=1 << 20)
    data = os.urandom(5 * 4096 + 100)
    fill(store, "t1", data, 8192)
    store.complete("t1", hashlib.sha256(data).hexdigest())
    entry = store.recut("t1", Cut(len(data), 4096))
    assert (entry.piece_size, entry.n_pieces, entry.have) == (4096, 6, set(range(6)))
    assert entry.digests == {i: piece_digest(data[i * 4096 : (i + 1) * 4096]) for i in range(6)}
    assert bytes(store.read_piece("t1", 5, verify=True)) == data[5 * 4096 :]
    store.close()
    again = make_store(tmp_path, quota=1 << 20)  # meta.json records the new cut
    kept = again.entry("t1")
    assert (kept.piece_size, kept.digests, kept.sha256) == (4096, entry.digests, entry.sha256)
    assert bytes(again.read_piece("t1", 2, verify=True)) == data[2 * 4096 : 3 * 4096]


def test_a_copy_changed_on_disk_is_not_recut(tmp_path):
    store = make_store(tmp_path, quota=1 << 20)
    data = os.urandom(4 * 4096)
    fill(store, "t1", data, 8192)
    store.complete("t1", hashlib.sha256(data).hexdigest())
    before = dict(store.entry("t1").digests)
    os.chmod(store.data_path("t1"), 0o644)  # the cache file is read-only: damage it anyway
    with open(store.data_path("t1"), "r+b") as fh:
        fh.seek(3 * 4096)
        fh.write(b"\x00" * 16)
    with pytest.raises(PieceCorrupt, match="changed on disk"):
        store.recut("t1", Cut(len(data), 4096))
    entry = store.entry("t1")
    assert (entry.piece_size, entry.digests) == (8192, before)  # new digests would bless it
    store.begin("partial", Cut(5000, 4096))
    with pytest.raises(StorageError, match="not complete"):
        store.recut("partial", Cut(5000, 1024))


def test_gc_dry_run_says_why_and_evicts_nothing(tmp_path):
    now = [1000.0]
    store = make_store(tmp_path, quota=10_000, clock=lambda: now[0])
    fill(store, "old", b"z" * 4000, 4096)
    store.complete("old", "00" * 32)
    plan = store.gc(keep_bytes=0, dry_run=True)
    assert plan.task_ids == ["old"] and plan.evictions[0].reason == "over the cache quota"
    assert store.entry("old") is not None
    assert store.gc(keep_bytes=0).task_ids == ["old"] and store.entry("old") is None


def test_quota_evictions_are_queued_for_the_owner_to_report(tmp_path):
    store = make_store(tmp_path, quota=6000)
    fill(store, "a", b"a" * 4000, 4096)
    store.complete("a", "00" * 32)
    store.begin("b", Cut(4000, 4096))
    assert [e.task_id for e in store.take_evictions()] == ["a"]
    assert store.take_evictions() == []


def test_a_published_entry_frees_nothing(tmp_path):
    store = make_store(tmp_path / "c", quota=1 << 20)
    fill(store, "p", b"p" * 8192, 4096)
    store.complete("p", "00" * 32)
    store.publish("p", tmp_path / "out" / "p.bin")
    plan = store.gc(keep_bytes=0, dry_run=True)
    assert plan.evictions[0].frees == 0  # the destination shares the inode
    store.gc(keep_bytes=0)
    assert (tmp_path / "out" / "p.bin").read_bytes() == b"p" * 8192  # untouched


def test_reads_racing_evictions_never_return_another_tasks_bytes(tmp_path):
    """An eviction closes no descriptor a reader uses: a read gets the task's own bytes or
    PieceUnavailable, never bytes of a file opened meanwhile under a reused descriptor."""
    import threading

    store = make_store(tmp_path, quota=1 << 30)
    mine = b"m" * 4096
    stop = threading.Event()
    bad: list[object] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                got = bytes(store.read_piece("mine", 0))
            except PieceUnavailable:
                continue
            except Exception as exc:  # EBADF from a closed descriptor is a failure too
                bad.append(exc)
                continue
            if got != mine:
                bad.append(got[:8])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            fill(store, "mine", mine, 4096)
            store.complete("mine", "00" * 32)
            store.discard("mine")
            fill(store, f"other{i}", b"o" * 4096, 4096)
            store.discard(f"other{i}")
    finally:
        stop.set()
        t.join()
    assert bad == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 16 MiB tmpfs (root only; skipped elsewhere): a real filesystem that fills up."""
    import shutil
    import subprocess

    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or shutil.which("umount") is None:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_watermarks_on_a_real_small_filesystem(small_tmpfs):
    """Above 80 % full, a new task evicts least-recently-used entries until 60 %; a published
    entry (hard-linked at its destination) frees nothing, so it stays and the store says so."""
    now = [1000.0]
    store = PieceStore(small_tmpfs / "cache", quota=1 << 30, clock=lambda: now[0])
    MiB = 1 << 20
    for name in ("published", "a", "b", "c"):
        now[0] += 1
        fill(store, name, os.urandom(3 * MiB), MiB)
        store.complete(name, "00" * 32)
    store.publish("published", small_tmpfs / "out" / "published.bin")
    assert store.disk().used > 0.5 * store.disk().total  # 12 of 16 MiB
    now[0] += 1
    store.begin("new", Cut(2 * MiB, MiB))  # 14 of 16 MiB: above 80 %
    evicted = [e.task_id for e in store.take_evictions()]
    assert evicted == ["a", "b"]  # "published" would free nothing; 2 are enough for 60 %
    assert store.entry("published") is not None and store.entry("c") is not None
    assert (small_tmpfs / "out" / "published.bin").stat().st_size == 3 * MiB
    plan = store.gc(dry_run=True)
    assert plan.task_ids == []  # back under the high watermark


def _no_watermarks(root):
    return PieceStore(root, 1 << 30, policy=GcPolicy(1 << 30, high=1.0, low=1.0))


def test_a_task_larger_than_the_free_disk_fails_when_it_begins_and_leaves_nothing(small_tmpfs):
    """The quota allows it, the disk does not: the store says so before a byte is fetched,
    naming the cache and the numbers, and keeps no entry or file; a task that fits still
    begins, with its blocks allocated."""
    MiB = 1 << 20
    store = _no_watermarks(small_tmpfs / "cache")
    with pytest.raises(CacheFull, match=r"no room for task big .* needs 25165824 bytes") as info:
        store.begin("big", Cut(24 * MiB, MiB))
    assert str(small_tmpfs / "cache") in str(info.value)
    assert "RAYFLY_CACHE_DIR" in str(info.value)
    assert store.entry("big") is None
    assert list((small_tmpfs / "cache" / "tasks").iterdir()) == []
    store.begin("fits", Cut(8 * MiB, MiB))
    assert os.stat(store.data_path("fits")).st_blocks * 512 >= 8 * MiB
    assert store.unreserved_files == 0


def test_a_cache_on_a_read_only_disk_fails_begin_with_a_storage_error(small_tmpfs):
    """A disk remounted read-only under the store: begin raises StorageError naming the task's
    directory (what a node's mirror passes through on), not a bare OSError."""
    import subprocess

    store = _no_watermarks(small_tmpfs / "cache")
    remount = ["mount", "-o", "remount,ro", str(small_tmpfs)]
    assert subprocess.run(remount, capture_output=True).returncode == 0
    try:
        with pytest.raises(StorageError, match=r"cannot create cache file in .*tasks/t"):
            store.begin("t", Cut(1 << 20, 1 << 20))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True)
    assert store.entry("t") is None


def test_tasks_begun_together_cannot_overcommit_the_disk(small_tmpfs):
    """Two tasks that each fit but not together: the second fails when it begins, and the
    first, its space reserved, is written whole (a sparse file would let both begin and fail
    both part-way, each after fetching a part of its pieces)."""
    MiB = 1 << 20
    store = _no_watermarks(small_tmpfs / "cache")
    store.begin("a", Cut(10 * MiB, MiB))
    with pytest.raises(CacheFull, match="no room for task b"):
        store.begin("b", Cut(10 * MiB, MiB))
    data = os.urandom(10 * MiB)
    for i in range(10):
        store.write_piece("a", i, data[i * MiB : (i + 1) * MiB])
    store.complete("a", hashlib.sha256(data).hexdigest())
    assert bytes(store.read_piece("a", 9)) == data[9 * MiB :]


def test_a_full_disk_without_fallocate_fails_the_write_with_the_cache_named(
    small_tmpfs, monkeypatch
):
    """Where the filesystem cannot reserve space (NFS, FUSE) the file stays sparse and the disk
    can fill part-way: the write fails with a message that names the cache and its free
    bytes, and nothing is left once the task is discarded."""
    import rayfly.reserve

    monkeypatch.setattr(rayfly.reserve, "_FALLOCATE", None)
    MiB = 1 << 20
    store = _no_watermarks(small_tmpfs / "cache")
    store.begin("big", Cut(24 * MiB, MiB))
    assert os.stat(store.data_path("big")).st_blocks == 0
    assert store.unreserved_files == 1  # the peer reports it (tasks_begun_unreserved)
    with pytest.raises(StorageError, match="its disk is full") as info:
        for i in range(24):
            store.write_piece("big", i, os.urandom(MiB))
    assert str(small_tmpfs / "cache") in str(info.value)
    assert i >= 10  # it failed where the 16 MiB filled, not before
    store.discard("big")
    assert list((small_tmpfs / "cache" / "tasks").iterdir()) == []


def test_reserve_allocates_the_blocks_or_extends_sparsely_where_it_cannot(tmp_path, monkeypatch):
    import rayfly.reserve

    with open(tmp_path / "a", "wb") as fh:
        assert rayfly.reserve.reserve(fh.fileno(), 3 << 20) is True
    assert os.stat(tmp_path / "a").st_size == 3 << 20
    assert os.stat(tmp_path / "a").st_blocks * 512 >= 3 << 20
    with open(tmp_path / "empty", "wb") as fh:  # nothing to reserve: not counted as unreserved
        assert rayfly.reserve.reserve(fh.fileno(), 0) is True
    store = make_store(tmp_path / "store", 1 << 30)
    store.begin("empty", Cut(0, 1 << 20))
    assert store.unreserved_files == 0  # `rayfly status` must not blame the disk for it
    monkeypatch.setattr(rayfly.reserve, "_FALLOCATE", None)
    with open(tmp_path / "b", "wb") as fh:
        assert rayfly.reserve.reserve(fh.fileno(), 3 << 20) is False
    assert os.stat(tmp_path / "b").st_size == 3 << 20
    assert os.stat(tmp_path / "b").st_blocks == 0


def test_reads_racing_completion_and_removal_never_hit_a_closed_file(tmp_path):
    """A peer serves pieces on several threads while the download completes the task (its
    read-write fd is replaced) or the task is removed. Every read gets the piece's bytes or
    PieceUnavailable: never EBADF, which a serving peer turned into "the parent lacks the
    piece" (the piece came from the origin a second time: the flaky cache test)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    store = make_store(tmp_path, quota=1 << 30)
    data = os.urandom(3 * 65536)
    errors: list[BaseException] = []

    def reader(tid: str) -> None:
        for _ in range(30):
            try:
                assert bytes(store.read_piece(tid, 1, None, True)) == data[65536:131072]
            except PieceUnavailable:
                pass
            except BaseException as exc:
                errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen every race
    try:
        with ThreadPoolExecutor(4) as pool:
            for i in range(100):
                tid = f"{i:016x}"
                fill(store, tid, data, 65536)
                readers = [pool.submit(reader, tid) for _ in range(3)]
                store.complete(tid, "sha")
                if i % 2:
                    store.discard(tid)
                for r in readers:
                    r.result()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]


def test_another_store_on_this_host_is_read_directly_only_where_it_is_seen(tmp_path):
    store = PieceStore(tmp_path / "parent", 1 << 30, policy=GcPolicy(1 << 30, high=1.0, low=1.0))
    store.begin("t" * 64, Cut(3000, 1024))
    digest = store.write_piece("t" * 64, 1, b"x" * 1024)
    dev, ino = store.identity()
    view = {"node_ip": "10.0.0.1", "root": str(store.root), "dev": dev, "ino": ino}
    root = visible_store(view, "10.0.0.1")
    assert root == store.root
    buf = np.empty(1024, dtype=np.uint8)
    got = PieceStore.read_range_at(root, "t" * 64, 1024, 2048, digest, buf)
    assert bytes(got) == b"x" * 1024
    with pytest.raises(PieceCorrupt):  # piece 0 was never written: its zeros do not match
        PieceStore.read_range_at(root, "t" * 64, 0, 1024, digest, buf)
    with pytest.raises(FileNotFoundError):
        PieceStore.read_range_at(root, "u" * 64, 0, 1024, digest, buf)
    unchecked = PieceStore.read_range_at(root, "t" * 64, 0, 1024, None, buf)  # the mirror's read
    assert bytes(unchecked) == bytes(1024)
    with pytest.raises(StorageError):  # past the end of the file: short
        PieceStore.read_range_at(root, "t" * 64, 2048, 3072 + 1024, None, np.empty(2048, np.uint8))
    assert visible_store(view, "10.0.0.2") is None  # another host, even on a shared disk
    assert visible_store({**view, "ino": ino + 1}, "10.0.0.1") is None  # another mount
    assert visible_store({**view, "root": str(tmp_path / "gone")}, "10.0.0.1") is None


def test_a_piece_checked_by_its_reader_is_not_hashed_again(tmp_path, monkeypatch):
    store = PieceStore(tmp_path / "s", 1 << 30, policy=GcPolicy(1 << 30, high=1.0, low=1.0))
    store.begin("t" * 64, Cut(2048, 1024))
    data = b"y" * 1024
    digest = piece_digest(data)
    calls = []
    monkeypatch.setattr("rayfly.storage.piece_digest", lambda v: calls.append(v) or digest)
    assert store.write_piece("t" * 64, 0, data, digest, digest) == digest
    assert calls == []  # the reader's digest stands
    with pytest.raises(PieceCorrupt):  # a reader's digest that is not the expected one
        store.write_piece("t" * 64, 1, data, digest, "0" * len(digest))
    assert store.write_piece("t" * 64, 1, data, digest) == digest and len(calls) == 1
    assert bytes(store.read_piece("t" * 64, 0)) == data


def _direct_store(root, **kw):
    return PieceStore(root, 1 << 30, policy=GcPolicy(1 << 30, high=1.0, low=1.0), **kw)


def test_aligned_pieces_are_written_past_the_page_cache_and_read_back_whole(tmp_path):
    """Aligned pieces go through O_DIRECT (a buffer off a page boundary through an aligned
    copy), the short last piece through the page cache; every byte reads back whole."""
    piece, length = 8192, 3 * 8192 + 100
    payload = os.urandom(length)
    store = _direct_store(tmp_path / "s", direct_io=True)
    store.begin("t" * 64, Cut(length, piece))
    pool = BufferPool(keep=0)
    for i in range(4):
        chunk = payload[i * piece : (i + 1) * piece]
        buf = pool.take(len(chunk))
        buf[:] = np.frombuffer(chunk, np.uint8)
        data = memoryview(buf) if i != 1 else memoryview(bytearray(b"\0" + chunk))[1:]
        assert aligned(data, i * piece) == (i in (0, 2))
        store.write_piece("t" * 64, i, data)
    assert store.direct_writes == 3
    buf = pool.take(piece)
    assert bytes(store.read_piece("t" * 64, 1, buf)) == payload[piece : 2 * piece]  # direct read
    entry = store.complete("t" * 64, hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "s" / "tasks" / ("t" * 64) / "data").read_bytes() == payload
    assert entry.complete and store.direct_writes == 3


def test_a_filesystem_that_refuses_direct_io_gets_buffered_writes(tmp_path, monkeypatch):
    """Where ``open(O_DIRECT)`` fails with EINVAL (some filesystems do), the store writes
    through the page cache and stops trying; the bytes are the same."""
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)  # the kernel's answer there, not ours
    store = _direct_store(tmp_path / "s", direct_io=True)
    store.begin("t" * 64, Cut(8192, 4096))
    pool = BufferPool(keep=0)
    for i in range(2):
        buf = pool.take(4096)
        buf[:] = i + 1
        store.write_piece("t" * 64, i, buf)
    assert store.direct_io is False and store.direct_writes == 0
    assert bytes(store.read_piece("t" * 64, 1)) == bytes([2]) * 4096


def test_a_direct_write_refused_once_is_not_tried_again(tmp_path, monkeypatch):
    """A filesystem that opens with O_DIRECT but refuses the write (EINVAL): the piece is
    written through the page cache, and no later write tries O_DIRECT again."""
    real_pwrite, direct_tries = os.pwrite, []

    def refusing_pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            direct_tries.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refusing_pwrite)  # the kernel's answer there, not ours
    store = _direct_store(tmp_path / "s", direct_io=True)
    store.begin("t" * 64, Cut(3 * 4096, 4096))
    pool = BufferPool(keep=0)
    for i in range(3):
        buf = pool.take(4096)
        buf[:] = i + 1
        store.write_piece("t" * 64, i, buf)
    assert direct_tries == [0] and store.direct_io is False and store.direct_writes == 0
    assert [bytes(store.read_piece("t" * 64, i))[0] for i in range(3)] == [1, 2, 3]
