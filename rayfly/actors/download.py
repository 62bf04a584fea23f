"""One node's downloads: every task a peer fetches, piece by piece, into its piece store.

A task goes: *joining* (tell the scheduler what the cache holds) -> *fetching* (ask the
scheduler for batches, fetch each piece from its parent or the origin, verify its digest, write
it, report) -> *hashing* (the whole-file sha256 is computed in order as pieces land, so it
finishes with the last piece) -> *complete* (recorded in the piece store) or *failed*
(discarded). Downloads are single-flight per task: every request for the task awaits the same
download.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    RayTaskError,
)

from rayfly import metrics, source
from rayfly.actors.links import Links, ParentGone
from rayfly.actors.piece_reads import KeptPiece, PieceReader, Read, put_piece
from rayfly.actors.retry import first_line
from rayfly.config import PeerConfig
from rayfly.errors import (
    DigestMismatch,
    IntegrityError,
    OriginUnreachable,
    PieceCorrupt,
    RangeIgnored,
    RayflyError,
    SourceError,
)
from rayfly.piecemem import BUFFERS, PINS, HashWindow, HotPieces
from rayfly.protocol import SHARE_HOST, SHARE_REMOTE, Batch, Done, Failed, PieceTime
from rayfly.ratelimit import TokenBucket, take_all
from rayfly.storage import PieceStore
from rayfly.task import TaskInfo

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class TaskOutcome:
    """How a task download went on this node."""

    sha256: str
    length: int
    seconds: float = 0.0
    bytes_from_origin: int = 0
    bytes_from_peers: int = 0
    cached: bool = False
    timeline: list[PieceTime] = field(default_factory=list)


HASH_WINDOW_MAX = 64 << 20
# while pieces are in flight and none finishes, the peer reports this often (renewing its
# leases): well under the scheduler's lease timeout (60 s by default)
HEARTBEAT_S = 5.0


def hash_window_bytes(piece_size: int) -> int:
    """How many bytes of pieces that arrived ahead of the in-order hash a task keeps in memory:
    16 pieces, at most :data:`HASH_WINDOW_MAX` (and always one piece)."""
    return max(piece_size, min(HASH_WINDOW_MAX, 16 * piece_size))


class _Fatal(Exception):
    """A piece error that fails the whole task (the origin refused, the disk failed)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _Asking:
    """What a node's fetch loop has asked the scheduler for a task: at most one long-poll for
    more pieces, running beside its pieces in flight, with the download slots it holds until
    it is answered; and, until the node has joined the task, the pieces its cache holds (the
    join declares them and brings the first batch)."""

    def __init__(self, have: dict[int, str]) -> None:
        self._fut: asyncio.Future[Batch] | None = None
        self._slots = 0
        self._joining: dict[int, str] | None = have

    def to_join(self) -> dict[int, str] | None:
        """The pieces the cache holds, for the node's join, the first time; None after."""
        have, self._joining = self._joining, None
        return have

    @property
    def pending(self) -> bool:
        """Whether a long-poll is out."""
        return self._fut is not None

    def ask(self, call: Awaitable[Batch], slots: int) -> None:
        """Send ``call`` (an exchange that waits) for ``slots`` slots, already taken."""
        self._fut, self._slots = asyncio.ensure_future(call), slots

    def futures(self) -> list[asyncio.Future[Batch]]:
        """The long-poll to wait on beside the pieces, if one is out."""
        return [] if self._fut is None else [self._fut]

    def answer(self, finished: set[Any], slots: asyncio.Semaphore) -> tuple[Batch, int] | None:
        """The long-poll's batch and the slots it was for, if it is among ``finished`` (it is
        taken out of it); its slots go back if it failed."""
        fut, held = self._fut, self._slots
        if fut is None or fut not in finished:
            return None
        finished.discard(fut)
        self._fut, self._slots = None, 0
        try:
            return fut.result(), held
        except BaseException:
            self.give_back(slots, held)
            raise

    def cancel(self, slots: asyncio.Semaphore) -> None:
        """Stop waiting for an answer (the task ended) and give its slots back."""
        if self._fut is not None:
            self._fut.cancel()
            self.give_back(slots, self._slots)
            self._fut, self._slots = None, 0

    @staticmethod
    def give_back(slots: asyncio.Semaphore, n: int) -> None:
        """Release ``n`` slots."""
        for _ in range(n):
            slots.release()


@dataclass
class NodeLimits:
    """The node's rate limits (token buckets shared by every task), and each call's own."""

    download: TokenBucket
    upload: TokenBucket
    origin: TokenBucket
    per_task: dict[str, TokenBucket] = field(default_factory=dict)


class Downloads:
    """Every download of one node's peer, with the per-piece readiness it serves from.

    ``hot`` holds the pieces this node received from parents (and served) as
    :class:`KeptPiece`, so that the peer serves them onwards without a disk read."""

    def __init__(
        self,
        node_id: str,
        config: PeerConfig,
        store: PieceStore,
        links: Links,
        limits: NodeLimits,
        hot: HotPieces[KeptPiece],
        join: Callable[[TaskInfo, dict[int, str], int, bool], Awaitable[Batch]],
        evicted: Callable[[], Awaitable[None]],
        local_ip: str | None = None,
    ):
        self.node_id = node_id
        self.config = config
        self.store = store
        self.links = links
        self.limits = limits
        self._join = join
        self._evicted = evicted
        self.jobs: dict[str, asyncio.Task[TaskOutcome]] = {}
        self._stored: dict[str, asyncio.Future[TaskOutcome]] = {}
        self.hot = hot
        self.pieces_kept_from_origin = 0
        self._ready: dict[str, list[asyncio.Event]] = {}
        self._disk_pool = ThreadPoolExecutor(8, thread_name_prefix="rayfly-disk")
        self.reader = PieceReader(config, links, local_ip, self.disk_io)

    async def disk_io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking disk and hashing work on the disk pool."""
        return await asyncio.get_running_loop().run_in_executor(self._disk_pool, fn, *args)

    def events(self, task: TaskInfo) -> list[asyncio.Event]:
        """One event per piece of ``task``, set when the piece is verified here."""
        if task.task_id not in self._ready:
            self._ready[task.task_id] = [asyncio.Event() for _ in range(task.n_pieces)]
        return self._ready[task.task_id]

    def tracked(self, task_id: str) -> bool:
        """Whether this node downloads (or downloaded) ``task_id`` since the peer started."""
        return task_id in self._ready

    def failure(self, task_id: str) -> BaseException | None:
        """Why the last download of ``task_id`` failed, if it did (kept until it starts anew)."""
        job = self.jobs.get(task_id)
        if job is None or not job.done() or job.cancelled():
            return None
        return job.exception()

    async def wait_verified(self, task_id: str, index: int) -> None:
        """Wait until piece ``index`` of a tracked task is here (raises if its download fails)."""
        waiter = asyncio.ensure_future(self._ready[task_id][index].wait())
        download = self.jobs.get(task_id)
        if download is not None:
            await asyncio.wait([waiter, download], return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                waiter.cancel()
                download.result()
        await waiter

    def forget(self, task_id: str) -> None:
        """Drop a finished download's record and its pieces' readiness (its cache entry left:
        fetched again, the task starts with no piece ready)."""
        self.jobs.pop(task_id, None)
        self._stored.pop(task_id, None)
        self._ready.pop(task_id, None)

    def start(
        self, task: TaskInfo, slots: asyncio.Semaphore, limit: TokenBucket | None = None
    ) -> asyncio.Task[TaskOutcome]:
        """The download of ``task``: the running one, the finished one if its entry is still
        complete, or a new one."""
        running = self.jobs.get(task.task_id)
        if running is not None and not running.done():
            return running
        if not self._cut_as(task):  # kept pieces and readiness are of the other cut
            self.forget(task.task_id)
            self.hot.drop_task(task.task_id)
        elif (
            running is not None
            and not running.cancelled()
            and running.exception() is None
            and self.store.has(task.task_id)
        ):
            return running
        self.events(task)  # wait_piece may be called as soon as prepare() returns
        if limit is not None and limit.rate:
            self.limits.per_task[task.task_id] = limit
        else:
            self.limits.per_task.pop(task.task_id, None)
        self._stored[task.task_id] = asyncio.get_running_loop().create_future()
        job = asyncio.ensure_future(self._download(task, slots))
        self.jobs[task.task_id] = job
        return job

    async def wait_stored(self, task_id: str) -> TaskOutcome:
        """The outcome of a started download as soon as its bytes are verified and its cache
        entry complete, before the scheduler is told (one call sooner than the download's
        end); raises what the download raised if it failed before that."""
        job = self.jobs[task_id]
        stored = self._stored.get(task_id)
        if stored is not None and not job.done():
            await asyncio.wait([stored, job], return_when=asyncio.FIRST_COMPLETED)
            if stored.done():
                return stored.result()
        return await asyncio.shield(job)

    def _cut_as(self, task: TaskInfo) -> bool:
        """Whether this node's cache entry of ``task``, if any, is cut into the task's pieces."""
        entry = self.store.entry(task.task_id)
        return entry is None or entry.cut == task.cut

    async def _recut(self, task: TaskInfo) -> None:
        """Cut a complete cached copy of ``task`` into the task's pieces (the same object was
        registered again with another piece size: piece ``i`` of the old cut is other bytes,
        so it may not be announced or served as is); a copy whose length differs, or whose
        bytes no longer match their sha256, is dropped, and the task fetched anew."""
        entry = self.store.entry(task.task_id)
        if entry is None or entry.cut == task.cut:
            return
        if entry.complete and entry.length == task.length:
            was = entry.n_pieces
            try:
                await self.disk_io(self.store.recut, task.task_id, task.cut)
                log.info(
                    "task %s: cached copy re-cut, %d pieces to %d", task.task_id, was, task.n_pieces
                )
                return
            except (OSError, RayflyError) as exc:
                log.warning("task %s: cached copy not re-cut: %s", task.task_id, exc)
        log.warning("task %s: the cached copy is not this task's cut; fetching it", task.task_id)
        self.store.discard(task.task_id)

    async def _download(self, task: TaskInfo, slots: asyncio.Semaphore) -> TaskOutcome:
        tid = task.task_id
        await self._recut(task)
        entry = self.store.entry(tid)
        if entry is not None and entry.complete:
            for event in self.events(task):
                event.set()
            await self._join(task, entry.digests, 0, False)
            return TaskOutcome(entry.sha256 or "", entry.length, cached=True)
        out = TaskOutcome("", task.length)
        t0 = time.time()
        try:
            await self._ask_seed(task)
            entry = await self.disk_io(self.store.begin, tid, task.cut, task.url)
            await self._evicted()
            events = self.events(task)
            for i in entry.have:
                events[i].set()
            window = HashWindow(hash_window_bytes(task.piece_size))
            hasher = asyncio.ensure_future(self._hash(task, window))
            hasher.add_done_callback(lambda _: window.clear())  # a failed hash holds no piece
            try:
                await self._fetch_all(task, slots, out, window, dict(entry.digests))
                out.sha256 = await hasher
            finally:
                hasher.cancel()
                window.clear()
            if task.expected_sha256 and out.sha256 != task.expected_sha256.lower():
                raise DigestMismatch(
                    f"sha256 of {source.redact_url(task.url)} is {out.sha256}, "
                    f"expected {task.expected_sha256}"
                )
            await self.disk_io(self.store.complete, tid, out.sha256)
        except BaseException as exc:
            fatal = isinstance(exc, IntegrityError | SourceError)
            with contextlib.suppress(Exception):
                await self.links.ask("finish", tid, self.node_id, str(exc), fatal)
            self.store.discard(tid)
            self.hot.drop_task(tid)
            self._ready.pop(tid, None)
            raise
        out.seconds = time.time() - t0
        if (stored := self._stored.get(tid)) is not None and not stored.done():
            stored.set_result(out)
        await self._tell_finished(tid)
        return out

    async def _tell_finished(self, task_id: str) -> None:
        """Tell the scheduler this node holds every piece of ``task_id``. The entry is complete
        and verified already, and stays if the scheduler cannot be told: its pieces were
        reported as they landed, and the node announces its cache to a restarted scheduler."""
        try:
            await self.links.ask("finish", task_id, self.node_id, None)
        except Exception as exc:
            log.warning(
                "task %s: complete on node %s; the scheduler was not told: %s",
                task_id,
                self.node_id,
                first_line(exc),
            )

    async def _ask_seed(self, task: TaskInfo) -> None:
        """A node-local file is read on its source node only: make sure that node's peer fetches
        it too, into its cache (a no-op there when under way or done), so it serves the pieces."""
        if task.source_node is None or task.source_node == self.node_id:
            return
        for attempt in range(2):  # a cached handle may name an actor since replaced
            try:
                await self.links.peer(task.source_node).prepare.remote(task)
                return
            except (RayActorError, ParentGone) as exc:
                self.links.forget(task.source_node)
                if attempt:
                    raise RayflyError(
                        f"{source.redact_url(task.url)} is on node {task.source_node} only, "
                        f"and no peer answers there: {exc}"
                    ) from None

    async def _hash(self, task: TaskInfo, window: HashWindow) -> str:
        """The task's sha256, in piece order as pieces land: from the bytes the window kept
        when they arrived, else read back from the store, the next piece's read overlapping
        this one's hashing (two buffers from the pool, aligned for the store's direct reads)."""
        h = hashlib.sha256()
        events = self.events(task)
        size = min(task.piece_size, task.length)
        bufs: list[np.ndarray | None] = [None, None]

        async def load(i: int) -> Any:
            await events[i].wait()
            data = window.take(i)
            if data is None:
                buf = bufs[i % 2]
                if buf is None:
                    buf = bufs[i % 2] = BUFFERS.take(size)
                data = await self.disk_io(self.store.read_piece, task.task_id, i, buf)
            return data

        nxt = asyncio.ensure_future(load(0))
        try:
            for i in range(len(events)):
                data = await nxt
                if i + 1 < len(events):
                    nxt = asyncio.ensure_future(load(i + 1))
                await self.disk_io(h.update, data)
                BUFFERS.give(data)
        except BaseException:
            nxt.cancel()  # its buffer may still be in a read: left to the garbage collector
            raise
        for buf in bufs:
            if buf is not None:
                BUFFERS.give(buf)
        return h.hexdigest()

    async def _fetch_all(
        self,
        task: TaskInfo,
        slots: asyncio.Semaphore,
        out: TaskOutcome,
        window: HashWindow,
        have: dict[int, str],
    ) -> None:
        """The fetch loop: join (with the pieces the cache ``have``; the first batch comes in
        the answer), ask for batches, run them with bounded concurrency, report.

        A short batch may leave its free slots asked for in a long-poll beside the pieces in
        flight (``asking``, see :meth:`_start`), answered as soon as a parent's slot frees."""
        entry = self.store.entry(task.task_id)
        assert entry is not None
        inflight: dict[asyncio.Future[Done | Failed], int] = {}
        done: list[Done] = []
        failed: list[Failed] = []
        asking = _Asking(have)
        try:
            while len(entry.have) < entry.n_pieces:
                want = await self._take_slots(slots, len(inflight) + asking.pending)
                if want or done or failed:
                    wait = not inflight and not asking.pending
                    try:
                        batch = await self._ask(task, asking, done, failed, want, wait)
                    except BaseException:  # the task failed: the slots taken go back
                        asking.give_back(slots, want)
                        raise
                    done, failed = [], []
                    self._start(task, batch, want, slots, inflight, asking, (out, window))
                waiting = [*inflight, *asking.futures()]
                if waiting:
                    finished, _ = await asyncio.wait(
                        waiting, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not finished:  # slow reads: tell the scheduler this peer is still at it
                        await self._exchange(task, [], [], 0, False)
                    if (answered := asking.answer(finished, slots)) is not None:
                        self._start(task, *answered, slots, inflight, asking, (out, window))
                    self._settle(finished, inflight, slots, done, failed)
            await self._last_report(task, asking, inflight, slots, (done, failed))
        except _Fatal as exc:
            raise exc.error from None
        finally:
            asking.cancel(slots)
            for fut in inflight:
                fut.cancel()
                slots.release()

    def _start(
        self,
        task: TaskInfo,
        batch: Batch,
        asked: int,
        slots: asyncio.Semaphore,
        inflight: dict[asyncio.Future[Done | Failed], int],
        asking: _Asking,
        into: tuple[TaskOutcome, HashWindow],
    ) -> None:
        """Start fetching the pieces of ``batch`` (an answer for ``asked`` slots); the slots it
        left free go on being asked for beside the pieces in flight when they are at least as
        many as those (one piece landing would not free a useful share of them), else back to
        ``slots``: a long-poll beside every short answer costs the scheduler half again as many
        calls (bench/simulate_scheduler.py, 1,000 peers) for slots the next landing refills."""
        for a in batch.assignments:
            inflight[asyncio.ensure_future(self._piece(task, a, *into))] = a.piece
        short = asked - len(batch.assignments)
        if short and inflight and short >= len(inflight) and not asking.pending:
            asking.ask(self._exchange(task, [], [], short, True), short)
        else:
            _Asking.give_back(slots, short)

    async def _last_report(
        self,
        task: TaskInfo,
        asking: _Asking,
        inflight: dict[asyncio.Future[Done | Failed], int],
        slots: asyncio.Semaphore,
        report: tuple[list[Done], list[Failed]],
    ) -> None:
        """Every piece is stored: wait for the last pieces' coroutines (they may not have
        returned yet, and their Done must reach the scheduler), then report them; a node whose
        cache held every piece joins (declaring them) instead of asking for any."""
        done, failed = report
        if inflight:
            finished, _ = await asyncio.wait(inflight)
            self._settle(finished, inflight, slots, done, failed)
        if (have := asking.to_join()) is not None:
            await self._join(task, have, 0, False)
        if done or failed:
            await self._exchange(task, done, failed, 0, False)

    async def _ask(
        self,
        task: TaskInfo,
        asking: _Asking,
        done: list[Done],
        failed: list[Failed],
        want: int,
        wait: bool,
    ) -> Batch:
        """The next batch: the answer to the node's join, with the pieces its cache holds
        (:meth:`_Asking.to_join`), the first time; then an :meth:`_exchange`'s."""
        if (have := asking.to_join()) is not None:
            return self._answer(await self._join(task, have, want, wait))
        return await self._exchange(task, done, failed, want, wait)

    async def _exchange(
        self, task: TaskInfo, done: list[Done], failed: list[Failed], want: int, wait: bool
    ) -> Batch:
        """Report pieces and ask for ``want`` more; rejoin (with what the cache holds) when the
        scheduler no longer knows this peer, e.g. after it restarted."""
        batch = self._answer(
            await self.links.ask("exchange", task.task_id, self.node_id, done, failed, want, wait)
        )
        if batch.rejoin:
            entry = self.store.entry(task.task_id)
            await self._join(task, dict(entry.digests) if entry else {}, 0, False)
        return batch

    @staticmethod
    def _answer(batch: Batch) -> Batch:
        """``batch``, unless it says the task failed (raised as a :class:`SourceError`)."""
        if batch.error:
            raise SourceError(batch.error)
        return batch

    def _settle(
        self,
        finished: set[asyncio.Future[Done | Failed]],
        inflight: dict[asyncio.Future[Done | Failed], int],
        slots: asyncio.Semaphore,
        done: list[Done],
        failed: list[Failed],
    ) -> None:
        """Move finished piece futures out of ``inflight`` into the next report."""
        for fut in finished:
            inflight.pop(fut)
            slots.release()
            result = fut.result()
            metrics.piece_result(self.node_id, result)
            if isinstance(result, Failed):
                log.warning(
                    "piece %d from %s failed: %s",
                    result.piece,
                    result.parent or "the origin",
                    result.reason,
                )
            (done if isinstance(result, Done) else failed).append(result)

    @staticmethod
    async def _take_slots(slots: asyncio.Semaphore, inflight: int) -> int:
        want = 0
        if inflight == 0:
            await slots.acquire()
            want = 1
        while not slots.locked():
            await slots.acquire()
            want += 1
        return want

    async def _piece(
        self, task: TaskInfo, a: Any, out: TaskOutcome, window: HashWindow
    ) -> Done | Failed:
        """Fetch, verify and store one piece once the hash window admits it (while the hash is
        behind, a piece past the window waits: :meth:`HashWindow.admit`); a failure becomes a
        :class:`Failed` report."""
        if a.stream:
            return await self._stream(task, out, window)
        landed = self.events(task)
        await window.admit(
            a.piece, task.piece_size, lambda i: i < len(landed) and landed[i].is_set()
        )
        try:
            return await self._fetch_piece(task, a, out, window)
        finally:
            window.fetched(a.piece)

    async def _fetch_piece(
        self, task: TaskInfo, a: Any, out: TaskOutcome, window: HashWindow
    ) -> Done | Failed:
        """:meth:`_piece`, admitted: its seconds (reported, and rates are made of them) start
        here, not while it waited for the hash."""
        start, end = task.piece_range(a.piece)
        t0 = time.time()
        await self._take_rate(task, a.parent is None, end - start)
        try:
            got = await self.reader.read(task, a)
            if got.ref is not None:  # a view of this node's copy in its object store
                PINS.track(got.data, end - start)
            digest = await self.disk_io(
                self.store.write_piece, task.task_id, a.piece, got.data, a.digest, got.digest
            )
            await self._keep(task, a, got, end - start)
            if not window.offer(a.piece, got.data, end - start):
                BUFFERS.give(got.data)  # written, and the hash reads it back later
            del got
        except OriginUnreachable as exc:
            return Failed(a.piece, None, str(exc))
        except RangeIgnored as exc:
            return Failed(a.piece, None, str(exc), range_ignored=True)
        except (asyncio.TimeoutError, GetTimeoutError):
            return Failed(a.piece, a.parent, "timed out")
        except OwnerDiedError as exc:  # its parent's actor was replaced twice while asked
            reason = f"parent's piece lost: {first_line(exc)}"
            return Failed(a.piece, a.parent, reason, parent_lacks=True)
        except (ActorUnavailableError, ObjectLostError) as exc:  # its node may have died
            reason = f"parent unreachable: {first_line(exc)}"
            return Failed(a.piece, a.parent, reason, parent_unreachable=True)
        except (RayActorError, ParentGone) as exc:
            self.links.forget(a.parent)
            return Failed(a.piece, a.parent, f"parent died: {first_line(exc)}", parent_dead=True)
        except (RayTaskError, PieceCorrupt) as exc:
            return Failed(a.piece, a.parent, f"{type(exc).__name__}: {exc}", parent_lacks=True)
        except (SourceError, OSError) as exc:
            raise _Fatal(exc) from exc
        landed = time.time()
        seconds = landed - t0
        self.events(task)[a.piece].set()
        nbytes = end - start
        if a.parent is None:
            out.bytes_from_origin += nbytes
        else:
            out.bytes_from_peers += nbytes
        out.timeline.append(PieceTime(landed, nbytes, a.parent or "", seconds))
        return Done(a.piece, digest, a.parent, nbytes, seconds)

    async def _keep(self, task: TaskInfo, a: Any, got: Read, nbytes: int) -> None:
        """Keep a verified piece referenced to serve it: one received from a parent as it is
        (with the bytes pulled here, which keep this node's copy in its store), one read from
        the origin that others will ask for as one copy (no disk read later),
        unless only peers on this host will, and they read this node's files (local reads)."""
        if got.ref is not None:
            self.hot.put(task.task_id, a.piece, KeptPiece(got.ref, got.data), nbytes, received=True)
        elif a.share == SHARE_REMOTE or (a.share == SHARE_HOST and self.reader.local_ip is None):
            ref = await self.disk_io(put_piece, got.data)
            self.hot.put(task.task_id, a.piece, KeptPiece(ref), nbytes)
            self.pieces_kept_from_origin += 1

    async def _take_rate(self, task: TaskInfo, from_origin: bool, nbytes: int) -> None:
        """Wait until the node's and the call's rate limits allow ``nbytes`` more."""
        buckets = [self.limits.download, self.limits.per_task.get(task.task_id)]
        if from_origin:
            buckets.append(self.limits.origin)
        await take_all([b for b in buckets if b is not None], nbytes)

    async def _stream(self, task: TaskInfo, out: TaskOutcome, window: HashWindow) -> Done | Failed:
        """Read an origin that ignores ``Range`` in one stream (this peer is the task's one
        streamer): store, signal and report each piece as it arrives, so that the other peers
        fetch it from here at once; pieces held already are skipped. Returns the last report."""
        entry = self.store.entry(task.task_id)
        assert entry is not None
        last: Done | None = None
        t0 = time.time()
        try:
            async for index, data in source.stream_pieces(
                task.url, task.storage_options, task.version, task.cut
            ):
                out.bytes_from_origin += len(data)
                await self._take_rate(task, True, len(data))  # slows the stream down
                if index not in entry.have:
                    digest = await self.disk_io(
                        self.store.write_piece, task.task_id, index, data, None
                    )
                    window.offer(index, data, len(data))
                    self.events(task)[index].set()
                    landed = time.time()
                    out.timeline.append(PieceTime(landed, len(data), "", landed - t0))
                    if last is not None:  # the last one is reported by the fetch loop
                        metrics.piece_result(self.node_id, last)
                        await self.links.scheduler().exchange.remote(
                            task.task_id, self.node_id, [last], [], 0, False
                        )
                    last = Done(index, digest, None, len(data), landed - t0)
                t0 = time.time()
        except OriginUnreachable as exc:
            missing = min(set(range(task.n_pieces)) - entry.have, default=0)
            return Failed(missing, None, str(exc))
        except (SourceError, OSError) as exc:
            raise _Fatal(exc) from exc
        return last or Failed(0, None, "the origin's stream brought no missing piece")
