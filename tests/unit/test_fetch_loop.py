"""A peer's fetch loop against the scheduler's own state machine (no Ray): the slots a short
batch left free are asked for beside the pieces in flight, so a parent's freed slot is used at
once instead of when one of the peer's own pieces lands; and the reads wait for a hash that
falls behind rather than outrun it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayfly.actors import download
from rayfly.actors.download import Downloads, NodeLimits, TaskOutcome
from rayfly.config import PeerConfig, SchedulerConfig
from rayfly.piecemem import HashWindow, HotPieces
from rayfly.protocol import Assignment, Batch, Done
from rayfly.ratelimit import TokenBucket
from rayfly.scheduler_core import SchedulerCore
from rayfly.storage import GcPolicy, PieceStore
from rayfly.task import TaskInfo

MiB = 1 << 20
PIECES = 4


class CoreLinks:
    """The scheduler actor's methods, answered by a :class:`SchedulerCore` in this process."""

    def __init__(self, core: SchedulerCore):
        self.core = core
        self.calls: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}  # a call of one of these waits for its event
        self.errors: dict[str, Exception] = {}  # and a call of one of these raises

    async def ask(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        if method in self.gates:
            await self.gates[method].wait()
        if method in self.errors:
            raise self.errors[method]
        answer = getattr(self.core, method)(*args)
        return await answer if inspect.isawaitable(answer) else answer


class Fetches:
    """Stands in for the piece transfers: each piece is held until the test lets it land."""

    def __init__(self, store: PieceStore):
        self.store = store
        self.started: list[Assignment] = []
        self.release: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(PIECES)}
        self.changed = asyncio.Event()

    async def piece(self, task: TaskInfo, a: Assignment, *_: Any) -> Done:
        self.started.append(a)
        self.changed.set()
        await self.release[a.piece].wait()
        digest = self.store.write_piece(task.task_id, a.piece, bytes(task.piece_size))
        return Done(a.piece, digest, a.parent, task.piece_size, 0.1)

    async def until(self, n: int) -> None:
        """Wait (at most 5 s) until ``n`` pieces have been started."""
        async with asyncio.timeout(5):
            while len(self.started) < n:
                self.changed.clear()
                await self.changed.wait()


def joins_as_me(core: SchedulerCore, slots: int, calls: list[str] | None = None) -> Any:
    """The peer's ``_join`` for node "me" with ``slots`` upload slots, answered by ``core`` as
    the scheduler actor's ``join`` does (the first batch in the same call); each call is
    appended to ``calls``."""

    async def join(t: TaskInfo, have: dict[int, str], want: int, wait: bool) -> Batch:
        if calls is not None:
            calls.append("join")
        core.join(t.task_id, "me", "host-me", slots, have)
        return await core.exchange(t.task_id, "me", [], [], want, wait) if want else Batch([])

    return join


@contextlib.contextmanager
def node_downloads(
    core: SchedulerCore, root: Path, join: Any = None, evicted: Any = None
) -> Iterator[Downloads]:
    """One node's :class:`Downloads` over a piece store in ``root``, the scheduler's state
    machine ``core`` answering its calls, no rate limit; its thread pools shut down after."""
    store = PieceStore(root, 1 << 30, policy=GcPolicy(1 << 30, high=1.0, low=1.0))
    limits = NodeLimits(TokenBucket(None), TokenBucket(None), TokenBucket(None))
    join = join or joins_as_me(core, 2)
    downloads = Downloads(
        "me", PeerConfig(), store, CoreLinks(core), limits, HotPieces(0), join, evicted
    )
    yield downloads
    downloads._disk_pool.shutdown()
    downloads.reader.origin_pool.shutdown()


@pytest.fixture
def setup(tmp_path, monkeypatch):
    core = SchedulerCore(SchedulerConfig(long_poll_s=30.0))
    task = TaskInfo("t", "http://origin/x", PIECES * MiB, MiB)
    core.add_task(task)
    with node_downloads(core, tmp_path) as downloads:
        downloads.store.begin("t", task.cut, task.url)
        fetches = Fetches(downloads.store)
        monkeypatch.setattr(downloads, "_piece", fetches.piece)
        monkeypatch.setattr(download, "HEARTBEAT_S", 60.0)  # no report but the ones under test
        yield core, task, downloads, fetches


def test_a_slot_left_free_is_filled_when_a_parent_frees_one(setup):
    asyncio.run(_a_slot_left_free_is_filled_when_a_parent_frees_one(*setup))


async def _a_slot_left_free_is_filled_when_a_parent_frees_one(core, task, downloads, fetches):
    core.join("t", "a", "host-a", 2, have={i: "d" for i in range(PIECES)})  # the only holder
    core.join("t", "c", "host-c", 1)
    (theirs,) = core.plan("t", "c", 1).assignments  # c takes one of a's two upload slots
    window = HashWindow(PIECES * MiB)
    out = TaskOutcome("", task.length)
    loop = asyncio.ensure_future(downloads._fetch_all(task, asyncio.Semaphore(2), out, window, {}))
    await fetches.until(1)  # a's other slot; the second piece was asked for and not given
    await asyncio.sleep(0.2)
    assert len(fetches.started) == 1 and core.peers["a"].uploads == 2
    # c's piece lands: a's slot is handed to the waiting ask while "me"'s piece is in flight
    await core.exchange("t", "c", [Done(theirs.piece, "d", "a", MiB, 0.1)], [], 0, False)
    await fetches.until(2)
    assert not fetches.release[fetches.started[0].piece].is_set()
    assert all(a.parent == "a" for a in fetches.started)
    for i in range(PIECES):  # the rest land as they are handed out
        fetches.release[i].set()
    async with asyncio.timeout(10):
        await loop
    assert len(downloads.store.entry("t").have) == PIECES
    assert sorted(a.piece for a in fetches.started) == list(range(PIECES))
    assert core.tasks["t"].have["me"] == set(range(PIECES))  # every Done was reported
    assert core.peers["a"].uploads == 0


def test_a_node_joins_and_gets_its_first_pieces_in_one_call(setup):
    asyncio.run(_a_node_joins_and_gets_its_first_pieces_in_one_call(*setup))


async def _a_node_joins_and_gets_its_first_pieces_in_one_call(core, task, downloads, fetches):
    """The first pieces start on the answer to the node's join: no ``exchange`` before them
    (one round trip per task and node less); the rest of the download reports as before."""
    calls: list[str] = []
    downloads._join = joins_as_me(core, 2, calls)
    core.join("t", "a", "host-a", 8, have={i: "d" for i in range(PIECES)})
    window = HashWindow(PIECES * MiB)
    out = TaskOutcome("", task.length)
    loop = asyncio.ensure_future(downloads._fetch_all(task, asyncio.Semaphore(2), out, window, {}))
    await fetches.until(2)
    assert calls == ["join"] and downloads.links.calls == []
    assert {a.parent for a in fetches.started} == {"a"}
    for i in range(PIECES):
        fetches.release[i].set()
    async with asyncio.timeout(10):
        await loop
    assert calls == ["join"] and set(downloads.links.calls) == {"exchange"}
    assert core.tasks["t"].have["me"] == set(range(PIECES))


def test_a_node_that_holds_every_piece_joins_without_asking(setup):
    asyncio.run(_a_node_that_holds_every_piece_joins_without_asking(*setup))


async def _a_node_that_holds_every_piece_joins_without_asking(core, task, downloads, fetches):
    """A cache entry with every piece (resumed after a restart, say) still joins, declaring
    its pieces, and asks for none."""
    for i in range(PIECES):
        downloads.store.write_piece("t", i, bytes(task.piece_size))
    held = dict(downloads.store.entry("t").digests)
    out = TaskOutcome("", task.length)
    window = HashWindow(PIECES * MiB)
    async with asyncio.timeout(10):
        await downloads._fetch_all(task, asyncio.Semaphore(2), out, window, held)
    assert fetches.started == [] and downloads.links.calls == []
    assert core.tasks["t"].have["me"] == set(range(PIECES))


SHA256 = hashlib.sha256
PIECE = 64 * 1024


class SlowSha256:
    """hashlib's sha256, slowed down (a hash short of CPU): 20 ms per update; the update
    numbered ``fail_at`` (if any) raises, as a read back from a failing disk would."""

    fail_at: int | None = None

    def __init__(self) -> None:
        self.h = SHA256()
        self.updates = 0

    def update(self, data: Any) -> None:
        time.sleep(0.02)
        self.updates += 1
        if self.updates == self.fail_at:
            raise OSError("disk read failed")
        self.h.update(data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


@pytest.fixture
def from_origin(tmp_path, monkeypatch):
    """A node's download of a 48-piece local file (the hash keeps 16 pieces ahead of it) with
    a slow sha256, the scheduler's state machine in this process, and the pieces the hash
    read back from the store."""
    payload = os.urandom(48 * PIECE)
    (tmp_path / "origin.bin").write_bytes(payload)
    task = TaskInfo("t", str(tmp_path / "origin.bin"), len(payload), PIECE)
    core = SchedulerCore(SchedulerConfig())
    core.add_task(task)
    read_back: list[int] = []
    monkeypatch.setattr(download.hashlib, "sha256", SlowSha256)

    async def evicted() -> None:
        pass

    with node_downloads(core, tmp_path / "cache", joins_as_me(core, 4), evicted) as downloads:
        read_piece = downloads.store.read_piece
        monkeypatch.setattr(
            downloads.store, "read_piece", lambda *a: read_back.append(a[1]) or read_piece(*a)
        )

        async def run() -> TaskOutcome:
            async with asyncio.timeout(30):
                return await downloads._download(task, asyncio.Semaphore(8))

        yield payload, run, read_back


def test_reads_wait_for_a_hash_that_falls_behind(from_origin):
    """A hash slower than the reads holds back the pieces past its window until it reaches
    them: none is read back from the store for it, and the file's sha256 is right."""
    payload, run, read_back = from_origin
    out = asyncio.run(run())
    assert out.sha256 == SHA256(payload).hexdigest()
    assert out.bytes_from_origin == len(payload)
    assert read_back == []


def test_a_hash_that_fails_fails_the_download_and_holds_no_read(from_origin, monkeypatch):
    """The hash fails with reads waiting for it: they go on, and the download fails with the
    hash's error (it does not wait for a hash that will never move)."""
    _, run, _ = from_origin
    monkeypatch.setattr(SlowSha256, "fail_at", 3)
    with pytest.raises(OSError, match="disk read failed"):
        asyncio.run(run())


@pytest.fixture
def plain_download(tmp_path):
    """A node's download of a 4-piece local file, the scheduler's state machine answering its
    calls in this process: (payload, downloads, task)."""
    payload = os.urandom(4 * PIECE)
    (tmp_path / "origin.bin").write_bytes(payload)
    task = TaskInfo("t", str(tmp_path / "origin.bin"), len(payload), PIECE)
    core = SchedulerCore(SchedulerConfig())
    core.add_task(task)

    async def evicted() -> None:
        pass

    with node_downloads(core, tmp_path / "cache", joins_as_me(core, 4), evicted) as downloads:
        yield payload, downloads, task


def test_a_download_is_answered_stored_before_the_scheduler_is_told(plain_download):
    """``wait_stored`` (the mirror's ``wait_complete``) answers once the bytes are verified and
    the entry complete, while the node's ``finish`` call is still out."""
    payload, downloads, task = plain_download

    async def run() -> None:
        downloads.links.gates["finish"] = told = asyncio.Event()
        job = downloads.start(task, asyncio.Semaphore(4))
        async with asyncio.timeout(10):
            out = await downloads.wait_stored("t")
        assert out.sha256 == SHA256(payload).hexdigest()
        assert downloads.store.has("t") and not job.done()
        assert downloads.links.calls[-1] == "finish"
        told.set()
        async with asyncio.timeout(10):
            assert (await job).sha256 == out.sha256

    asyncio.run(run())


def test_a_scheduler_not_told_keeps_the_verified_entry(plain_download, caplog):
    """A ``finish`` that fails (the scheduler gone for good) leaves the complete, verified
    entry in the cache and the download a success; the failure is logged."""
    payload, downloads, task = plain_download
    downloads.links.errors["finish"] = RuntimeError("scheduler gone")

    async def run() -> TaskOutcome:
        async with asyncio.timeout(10):
            return await downloads.start(task, asyncio.Semaphore(4))

    out = asyncio.run(run())
    assert out.sha256 == SHA256(payload).hexdigest()
    assert downloads.store.has("t")
    assert downloads.store.read_entry(downloads.store.root, "t").sha256 == out.sha256
    assert "the scheduler was not told: RuntimeError: scheduler gone" in caplog.text


def test_a_download_that_fails_before_it_is_stored_raises_from_wait_stored(plain_download):
    """The origin file disappears: ``wait_stored`` raises the download's error, and no entry
    is left."""
    _, downloads, task = plain_download
    os.remove(task.url)

    async def run() -> None:
        downloads.start(task, asyncio.Semaphore(4))
        async with asyncio.timeout(10):
            await downloads.wait_stored("t")

    with pytest.raises(Exception, match=r"origin\.bin"):
        asyncio.run(run())
    assert not downloads.store.has("t")
