"""The Peer actor: one per node. It fetches pieces, verifies and stores them, and serves them.

A task on a peer goes: *joining* (tell the scheduler what the cache holds) -> *fetching* (ask the
scheduler for batches, fetch each piece from its parent or the origin, verify its digest, write it,
report) -> *hashing* (the whole-file sha256 is computed in order as pieces land, so it finishes
with the last piece) -> *complete* (recorded in the piece store) or *failed* (discarded).
Downloads are single-flight per task: every request for the task awaits the same download.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
)

from rayfly import dest as dest_paths
from rayfly import identity, metrics, source
from rayfly.actors.retry import call_async, first_line
from rayfly.config import (
    NAMESPACE,
    PEER_PREFIX,
    SCHEDULER_NAME,
    NodeConfig,
    PeerConfig,
    from_env,
    node_cache_dir,
)
from rayfly.errors import (
    DigestMismatch,
    IntegrityError,
    OriginUnreachable,
    PieceCorrupt,
    RangeIgnored,
    RayflyError,
    SourceError,
)
from rayfly.eviction import GcPolicy
from rayfly.protocol import (
    Batch,
    Done,
    Failed,
    FetchItem,
    FetchRequest,
    FileResult,
    NodeResult,
    summarize_node,
)
from rayfly.ratelimit import TokenBucket, take_all
from rayfly.storage import PieceStore
from rayfly.task import TaskInfo, piece_bounds

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
    timeline: list[tuple[float, int, bool]] = field(default_factory=list)


class _Fatal(Exception):
    """A piece error that fails the whole task (the origin refused, the disk failed)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _ParentGone(Exception):
    """The parent's actor no longer exists."""


def _alive_node_ids() -> set[str]:
    """Ray node ids of the cluster's live nodes (their stores of the old layout are kept)."""
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


@ray.remote(num_cpus=0)
class Peer:
    """A node's peer: piece store, downloader and piece server."""

    def __init__(self, node_id: str, config: PeerConfig):
        self.node_id = node_id
        self.node_ip = ray.util.get_node_ip_address()
        self.hostname = socket.gethostname()
        self.config = config
        self.cache = identity.open_node_cache(node_cache_dir(), self._owner(), _alive_node_ids())
        self.node = from_env(NodeConfig)  # this node's own environment, not the client's
        node = self.node
        policy = GcPolicy(
            config.cache_quota, node.cache_ttl, node.cache_high_watermark, node.cache_low_watermark
        )
        self.store = PieceStore(self.cache.store_dir, config.cache_quota, policy=policy)
        self._download_limit = TokenBucket(node.download_rate)
        self._upload_limit = TokenBucket(node.upload_rate)
        self._origin_limit = TokenBucket(node.origin_rate)
        self._call_limits: dict[str, TokenBucket] = {}
        self._gc_loop = asyncio.ensure_future(self._collect_garbage())
        self._downloads: dict[str, asyncio.Task[TaskOutcome]] = {}
        self._ready: dict[str, list[asyncio.Event]] = {}
        self._handles: dict[str, Any] = {}
        self._scheduler: Any = None
        self._origin_pool = ThreadPoolExecutor(64, thread_name_prefix="rayfly-origin")
        self._disk_pool = ThreadPoolExecutor(8, thread_name_prefix="rayfly-disk")
        self.uploads = 0
        self.pieces_served = 0
        self._incarnation = ray.get_runtime_context().get_actor_id() or ""
        ray.get_runtime_context().current_actor.announce.remote()

    async def _disk_io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking disk and hashing work on the disk pool."""
        return await asyncio.get_running_loop().run_in_executor(self._disk_pool, fn, *args)

    # --- identity and helpers -----------------------------------------------------------------
    def _owner(self) -> dict[str, object]:
        return {"node_id": self.node_id, "hostname": self.hostname, "pid": os.getpid()}

    def info(self) -> dict[str, Any]:
        """Who and where this peer is, and how full its cache is."""
        return {
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "hostname": self.hostname,
            "pid": os.getpid(),
            "cache_id": self.cache.cache_id,
            "cache_shared": self.cache.shared,
            "cache_dir": str(self.store.root),
            "cache_used": self.store.used_bytes(),
            "cache_quota": self.store.quota,
            "limits": {
                "download_rate": self.node.download_rate,
                "upload_rate": self.node.upload_rate,
                "origin_rate": self.node.origin_rate,
            },
            "gc": {
                "ttl_s": self.store.policy.ttl_s,
                "high_watermark": self.store.policy.high,
                "low_watermark": self.store.policy.low,
                "interval_s": self.node.gc_interval,
            },
            "downloads": len(self._downloads),
            "downloads_inflight": sum(not d.done() for d in self._downloads.values()),
            "uploads": self.uploads,
            "pieces_served": self.pieces_served,
        }

    def incarnation(self) -> str:
        """This actor's id: a restarted peer on the same node is a different incarnation."""
        return self._incarnation

    async def _join(self, task: TaskInfo, have: dict[int, str]) -> None:
        await self._ask(
            "join",
            task.task_id,
            self.node_id,
            self.node_ip,
            self.config.upload_slots,
            have,
            self._incarnation,
        )

    async def announce(self, task_ids: list[str] | None = None) -> list[str]:
        """Tell the scheduler which complete tasks this node holds (those of ``task_ids``, or
        all): called when the peer starts and by a restarted scheduler. Returns the task ids
        the scheduler knows."""
        wanted = None if task_ids is None else set(task_ids)
        have = {
            e.task_id: dict(e.digests)
            for e in self.store.entries()
            if e.complete and (wanted is None or e.task_id in wanted)
        }
        try:
            self._sched()
        except ValueError:
            return []  # no scheduler yet: it learns of this cache when asked for a task
        if not have:
            return []
        args = (self.node_id, self.node_ip, self.config.upload_slots, self._incarnation, have)
        known: list[str] = await self._ask("announce", *args)
        return known

    def _sched(self) -> Any:
        if self._scheduler is None:
            self._scheduler = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
        return self._scheduler

    async def _ask(self, method: str, *args: Any) -> Any:
        """Call the scheduler; while it restarts, retry with backoff (see :mod:`retry`),
        looking its handle up again each time."""

        def forget() -> None:
            self._scheduler = None

        return await call_async(
            lambda: getattr(self._sched(), method).remote(*args), repr(method), forget
        )

    def _parent(self, peer_id: str) -> Any:
        if peer_id not in self._handles:
            try:
                self._handles[peer_id] = ray.get_actor(PEER_PREFIX + peer_id, namespace=NAMESPACE)
            except ValueError:
                raise _ParentGone(f"no peer actor for node {peer_id}") from None
        return self._handles[peer_id]

    def _events(self, task: TaskInfo) -> list[asyncio.Event]:
        if task.task_id not in self._ready:
            self._ready[task.task_id] = [asyncio.Event() for _ in range(task.n_pieces)]
        return self._ready[task.task_id]

    # --- serving ------------------------------------------------------------------------------
    async def read_piece(self, task_id: str, index: int) -> np.ndarray:
        """A verified piece for another peer; raises PieceUnavailable if not held."""
        self.uploads += 1
        try:
            entry = self.store.entry(task_id)
            if entry is not None and self._upload_limit.rate:
                start, end = piece_bounds(entry.length, entry.piece_size, index)
                await self._upload_limit.take(end - start)
            data = await self._disk_io(self.store.read_piece, task_id, index, None, True)
            self.pieces_served += 1
            metrics.piece_served(self.node_id)
            return data
        except PieceCorrupt:
            await self._evict_corrupt(task_id)
            raise
        finally:
            self.uploads -= 1

    async def _evict_corrupt(self, task_id: str) -> None:
        """A complete cached task whose bytes changed on disk: drop it here and tell the
        scheduler, so that no other peer is sent here for it (it is fetched anew if asked)."""
        log.warning("task %s: the cached copy on node %s is corrupt", task_id, self.node_id)
        if not self.has_task(task_id):
            return  # still downloading: the download's own checks decide
        self.store.discard(task_id)
        await self._removed([task_id], "cached copy corrupt")

    async def wait_piece(self, task_id: str, index: int) -> np.ndarray:
        """Wait until piece ``index`` of a prepared task is verified here, and return it."""
        if task_id not in self._ready:
            entry = self.store.entry(task_id)
            if entry is None or not entry.complete:
                raise RayflyError(f"task {task_id} is not prepared on node {self.node_id}")
        else:
            waiter = asyncio.ensure_future(self._ready[task_id][index].wait())
            download = self._downloads.get(task_id)
            if download is not None:
                await asyncio.wait([waiter, download], return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    download.result()
            await waiter
        return await self._disk_io(self.store.read_piece, task_id, index)

    def has_task(self, task_id: str) -> bool:
        """True when the task is complete and verified in this node's cache."""
        entry = self.store.entry(task_id)
        return entry is not None and entry.complete

    # --- fetching -----------------------------------------------------------------------------
    def prepare(self, task: TaskInfo, concurrency: int | None = None) -> None:
        """Start fetching ``task`` into the cache in the background (no-op if under way/done)."""
        self._start(task, asyncio.Semaphore(concurrency or self.config.concurrency))

    async def wait_complete(self, task_id: str) -> dict[str, Any]:
        """Wait for a prepared task; return its sha256 and byte counts (raises on failure)."""
        download = self._downloads.get(task_id)
        if download is None:
            entry = self.store.entry(task_id)
            if entry is None or not entry.complete:
                raise RayflyError(f"task {task_id} is not prepared on node {self.node_id}")
            return {
                "sha256": entry.sha256,
                "bytes": entry.length,
                "bytes_from_origin": 0,
                "bytes_from_peers": 0,
            }
        out = await asyncio.shield(download)
        return {
            "sha256": out.sha256,
            "bytes": out.length,
            "bytes_from_origin": out.bytes_from_origin,
            "bytes_from_peers": out.bytes_from_peers,
        }

    def _start(
        self, task: TaskInfo, slots: asyncio.Semaphore, limit: TokenBucket | None = None
    ) -> asyncio.Task[TaskOutcome]:
        running = self._downloads.get(task.task_id)
        if running is not None and not running.done():
            return running
        if (
            running is not None
            and not running.cancelled()
            and running.exception() is None
            and self.has_task(task.task_id)
        ):
            return running
        self._events(task)  # wait_piece may be called as soon as prepare() returns
        if limit is not None and limit.rate:
            self._call_limits[task.task_id] = limit
        else:
            self._call_limits.pop(task.task_id, None)
        job = asyncio.ensure_future(self._download(task, slots))
        self._downloads[task.task_id] = job
        return job

    async def fetch(self, request: FetchRequest) -> NodeResult:
        """Fetch every task of ``request`` and publish each file at its destination."""
        t0 = time.time()
        rendered = (
            dest_paths.render(request.dest, self.node_id, self.node_ip, self.hostname)
            if request.dest
            else ""
        )
        node = NodeResult(self.node_id, self.node_ip, self.hostname, rendered)
        slots = asyncio.Semaphore(max(1, request.concurrency))
        gate = asyncio.Semaphore(max(1, request.files_in_parallel))
        limit = TokenBucket(request.limit_rate)  # this call's rate, for every task it starts

        async def one(item: FetchItem) -> FileResult:
            async with gate:
                target = rendered if request.dest else None
                return await self._fetch_one(item, target, slots, limit)

        node.files = list(await asyncio.gather(*(one(i) for i in request.items)))
        for item, f in zip(request.items, node.files, strict=True):
            job = self._downloads.get(item.task.task_id)
            if f.ok and not f.cached and job is not None and job.done():
                node.timeline.extend(job.result().timeline)
        node.seconds = time.time() - t0
        metrics.cache_bytes(self.node_id, self.store.used_bytes())
        return summarize_node(
            node, single=len(request.items) == 1 and request.items[0].relpath is None
        )

    async def _fetch_one(
        self,
        item: FetchItem,
        rendered: str | None,
        slots: asyncio.Semaphore,
        limit: TokenBucket | None = None,
    ) -> FileResult:
        task = item.task
        label = item.relpath or task.url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        result = FileResult(label, "", task.length, None, 0.0, 0, 0, False)
        t0 = time.time()
        try:
            job = self._start(task, slots, limit)
            earlier = job.done()
            out = await asyncio.shield(job)
            result.sha256, result.cached = out.sha256, out.cached or earlier
            if not result.cached:
                result.bytes_from_origin = out.bytes_from_origin
                result.bytes_from_peers = out.bytes_from_peers
            if rendered is not None:
                target = dest_paths.target_path(rendered, item.relpath, task.url)
                result.path = str(target)
                await self._disk_io(self.store.publish, task.task_id, target)
            result.ok = True
        except RayflyError as exc:
            result.error = str(exc)
        except Exception as exc:
            result.error = source.redact_text(f"{type(exc).__name__}: {exc}")
        result.seconds = time.time() - t0
        return result

    async def _download(self, task: TaskInfo, slots: asyncio.Semaphore) -> TaskOutcome:
        tid = task.task_id
        entry = self.store.entry(tid)
        if entry is not None and entry.complete:
            for event in self._events(task):
                event.set()
            await self._join(task, entry.digests)
            return TaskOutcome(entry.sha256 or "", entry.length, cached=True)
        out = TaskOutcome("", task.length)
        t0 = time.time()
        try:
            await self._ask_seed(task)
            entry = await self._disk_io(
                self.store.begin, tid, task.length, task.piece_size, task.url
            )
            await self._report_evictions()
            events = self._events(task)
            for i in entry.have:
                events[i].set()
            await self._join(task, dict(entry.digests))
            hasher = asyncio.ensure_future(self._hash(task))
            try:
                await self._fetch_all(task, slots, out)
                out.sha256 = await hasher
            finally:
                hasher.cancel()
            if task.expected_sha256 and out.sha256 != task.expected_sha256.lower():
                raise DigestMismatch(
                    f"sha256 of {source.redact_url(task.url)} is {out.sha256}, "
                    f"expected {task.expected_sha256}"
                )
            await self._disk_io(self.store.complete, tid, out.sha256)
            await self._ask("finish", tid, self.node_id, None)
        except BaseException as exc:
            fatal = isinstance(exc, IntegrityError | SourceError)
            with contextlib.suppress(Exception):
                await self._ask("finish", tid, self.node_id, str(exc), fatal)
            self.store.discard(tid)
            self._ready.pop(tid, None)
            raise
        out.seconds = time.time() - t0
        return out

    async def _ask_seed(self, task: TaskInfo) -> None:
        """A node-local file is read on its source node only: make sure that node's peer fetches
        it too, into its cache (a no-op there when under way or done), so it serves the pieces."""
        if task.source_node is None or task.source_node == self.node_id:
            return
        for attempt in range(2):  # a cached handle may name an actor since replaced
            try:
                await self._parent(task.source_node).prepare.remote(task)
                return
            except (RayActorError, _ParentGone) as exc:
                self._handles.pop(task.source_node, None)
                if attempt:
                    raise RayflyError(
                        f"{source.redact_url(task.url)} is on node {task.source_node} only, "
                        f"and no peer answers there: {exc}"
                    ) from None

    async def list_source(self, url: str, options: dict[str, Any]) -> list[source.SourceFile]:
        """Every file at a node-local ``url`` as this node sees it (one file, or every file
        under a directory): a local path is listed and stat'ed on its own node only."""
        try:
            return await asyncio.to_thread(source.list_files, url, options)
        except SourceError as exc:
            raise type(exc)(f"{exc} (looked on node {self.node_id}, {self.hostname})") from None

    async def _hash(self, task: TaskInfo) -> str:
        h = hashlib.sha256()
        buf = np.empty(min(task.piece_size, task.length), dtype=np.uint8)
        for i, event in enumerate(self._events(task)):
            await event.wait()
            await self._disk_io(self._hash_piece, h, task.task_id, i, buf)
        return h.hexdigest()

    def _hash_piece(self, h: Any, task_id: str, index: int, buf: np.ndarray) -> None:
        h.update(self.store.read_piece(task_id, index, into=buf))

    async def _fetch_all(self, task: TaskInfo, slots: asyncio.Semaphore, out: TaskOutcome) -> None:
        """The fetch loop: ask for batches, run them with bounded concurrency, report."""
        entry = self.store.entry(task.task_id)
        assert entry is not None
        inflight: dict[asyncio.Future[Done | Failed], int] = {}
        done: list[Done] = []
        failed: list[Failed] = []
        try:
            while len(entry.have) < entry.n_pieces:
                want = await self._take_slots(slots, len(inflight))
                if want or done or failed:
                    batch = await self._exchange(task, done, failed, want, not inflight)
                    done, failed = [], []
                    for _ in range(want - len(batch.assignments)):
                        slots.release()
                    for a in batch.assignments:
                        inflight[asyncio.ensure_future(self._piece(task, a, out))] = a.piece
                if inflight:
                    finished, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    self._settle(finished, inflight, slots, done, failed)
            if inflight:
                # every piece is stored, but the last ones' coroutines may not have returned
                # yet: wait for them, or their Done would never reach the scheduler
                finished, _ = await asyncio.wait(inflight)
                self._settle(finished, inflight, slots, done, failed)
            if done or failed:
                await self._exchange(task, done, failed, 0, False)
        except _Fatal as exc:
            raise exc.error from None
        finally:
            for fut in inflight:
                fut.cancel()
                slots.release()

    async def _exchange(
        self, task: TaskInfo, done: list[Done], failed: list[Failed], want: int, wait: bool
    ) -> Batch:
        """Report pieces and ask for ``want`` more; rejoin (with what the cache holds) when the
        scheduler no longer knows this peer, e.g. after it restarted."""
        batch: Batch = await self._ask(
            "exchange", task.task_id, self.node_id, done, failed, want, wait
        )
        if batch.error:
            raise SourceError(batch.error)
        if batch.rejoin:
            entry = self.store.entry(task.task_id)
            await self._join(task, dict(entry.digests) if entry else {})
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

    async def _from_parent(self, task: TaskInfo, parent: str, index: int) -> np.ndarray:
        """Piece ``index`` from ``parent``'s peer as a Ray object.

        A cached handle may point at an actor that died and was replaced on the same node: on an
        actor error the handle is looked up again once, so only a parent that is really gone is
        reported dead.
        """
        for attempt in range(2):
            ref = self._parent(parent).read_piece.remote(task.task_id, index)
            try:
                return await asyncio.wait_for(ref, self.config.piece_timeout_s)
            except ActorUnavailableError:
                raise
            except RayActorError:
                self._handles.pop(parent, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _piece(self, task: TaskInfo, a: Any, out: TaskOutcome) -> Done | Failed:
        """Fetch, verify and store one piece; a failure becomes a :class:`Failed` report."""
        if a.stream:
            return await self._stream(task, out)
        start, end = task.piece_range(a.piece)
        t0 = time.time()
        await self._take_rate(task, a.parent is None, end - start)
        try:
            if a.parent is None:
                data: Any = (
                    b""
                    if start == end
                    else await source.read_range_async(
                        task.url, task.storage_options, start, end, self._origin_pool, task.version
                    )
                )
            else:
                data = await self._from_parent(task, a.parent, a.piece)
            digest = await self._disk_io(
                self.store.write_piece, task.task_id, a.piece, data, a.digest
            )
            del data
        except OriginUnreachable as exc:
            return Failed(a.piece, None, str(exc))
        except RangeIgnored as exc:
            return Failed(a.piece, None, str(exc), range_ignored=True)
        except (asyncio.TimeoutError, GetTimeoutError):
            return Failed(a.piece, a.parent, "timed out")
        except (ActorUnavailableError, ObjectLostError) as exc:  # its node may have died
            reason = f"parent unreachable: {first_line(exc)}"
            return Failed(a.piece, a.parent, reason, parent_unreachable=True)
        except (RayActorError, _ParentGone) as exc:
            self._handles.pop(a.parent or "", None)
            return Failed(a.piece, a.parent, f"parent died: {first_line(exc)}", parent_dead=True)
        except (RayTaskError, PieceCorrupt) as exc:
            return Failed(a.piece, a.parent, f"{type(exc).__name__}: {exc}", parent_lacks=True)
        except (SourceError, OSError) as exc:
            raise _Fatal(exc) from exc
        seconds = time.time() - t0
        self._events(task)[a.piece].set()
        nbytes = end - start
        if a.parent is None:
            out.bytes_from_origin += nbytes
        else:
            out.bytes_from_peers += nbytes
        out.timeline.append((time.time(), nbytes, a.parent is None))
        return Done(a.piece, digest, a.parent, nbytes, seconds)

    async def _take_rate(self, task: TaskInfo, from_origin: bool, nbytes: int) -> None:
        """Wait until the node's and the call's rate limits allow ``nbytes`` more."""
        buckets = [self._download_limit, self._call_limits.get(task.task_id)]
        if from_origin:
            buckets.append(self._origin_limit)
        await take_all([b for b in buckets if b is not None], nbytes)

    async def _stream(self, task: TaskInfo, out: TaskOutcome) -> Done | Failed:
        """Read an origin that ignores ``Range`` in one stream (this peer is the task's one
        streamer): store, signal and report each piece as it arrives, so that the other peers
        fetch it from here at once; pieces held already are skipped. Returns the last report."""
        entry = self.store.entry(task.task_id)
        assert entry is not None
        last: Done | None = None
        t0 = time.time()
        try:
            async for index, data in source.stream_pieces(
                task.url, task.storage_options, task.version, task.length, task.piece_size
            ):
                out.bytes_from_origin += len(data)
                await self._take_rate(task, True, len(data))  # slows the stream down
                if index not in entry.have:
                    digest = await self._disk_io(
                        self.store.write_piece, task.task_id, index, data, None
                    )
                    self._events(task)[index].set()
                    out.timeline.append((time.time(), len(data), True))
                    if last is not None:  # the last one is reported by the fetch loop
                        metrics.piece_result(self.node_id, last)
                        await self._sched().exchange.remote(
                            task.task_id, self.node_id, [last], [], 0, False
                        )
                    last = Done(index, digest, None, len(data), time.time() - t0)
                t0 = time.time()
        except OriginUnreachable as exc:
            missing = min(set(range(task.n_pieces)) - entry.have, default=0)
            return Failed(missing, None, str(exc))
        except (SourceError, OSError) as exc:
            raise _Fatal(exc) from exc
        return last or Failed(0, None, "the origin's stream brought no missing piece")

    # --- cache management ---------------------------------------------------------------------
    def cache_entries(self) -> list[dict[str, Any]]:
        """The tasks in this node's cache."""
        return [
            {
                "cache_id": self.cache.cache_id,
                "task_id": e.task_id,
                "length": e.length,
                "piece_size": e.piece_size,
                "complete": e.complete,
                "sha256": e.sha256,
                "source": source.redact_url(e.source),
                "last_used": e.last_used,
            }
            for e in self.store.entries()
        ]

    async def cache_remove(self, task_id: str) -> bool:
        """Remove one task from this node's cache (refused while it downloads); the scheduler
        is told, so that no peer is sent here for its pieces any more."""
        running = self._downloads.get(task_id)
        if running is not None and not running.done():
            raise RayflyError(f"task {task_id} is downloading on node {self.node_id}")
        existed = self.store.entry(task_id) is not None
        self.store.discard(task_id)
        await self._removed([task_id] if existed else [], "removed from the cache")
        return existed

    async def cache_gc(
        self, keep_bytes: int | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """Evict what the cache's policy says must go (TTL, quota, disk watermarks; with
        ``keep_bytes`` down to that many bytes) and tell the scheduler which. With ``dry_run``
        nothing goes: the answer says what would, and why."""
        plan = await self._disk_io(self.store.gc, keep_bytes, dry_run)
        if not dry_run:
            for e in plan.evictions:
                log.info("evicted task %s from the cache: %s", e.task_id, e.reason)
            await self._removed(plan.task_ids, "evicted from the cache")
        evictions = [asdict(e) for e in plan.evictions]
        return {"evictions": evictions, "note": plan.note, "dry_run": dry_run}

    async def _report_evictions(self) -> None:
        """Tell the scheduler of evictions the store made by itself (room for a new task)."""
        evicted = self.store.take_evictions()
        for e in evicted:
            log.info("evicted task %s from the cache: %s", e.task_id, e.reason)
        if evicted:
            await self._removed([e.task_id for e in evicted], "evicted from the cache")

    async def _collect_garbage(self) -> None:
        """The periodic GC (every ``RAYFLY_GC_INTERVAL``, default 15 min; off: never)."""
        while self.node.gc_interval:
            await asyncio.sleep(self.node.gc_interval)
            try:
                await self.cache_gc()
            except Exception:
                log.exception("periodic cache GC on node %s failed", self.node_id)

    async def _removed(self, task_ids: list[str], why: str) -> None:
        """``task_ids`` left the store: drop their finished downloads, update the cache gauge,
        and tell the scheduler this node no longer holds them (best effort: a scheduler that
        does not know a task has nothing to forget)."""
        for task_id in task_ids:
            self._downloads.pop(task_id, None)
        metrics.cache_bytes(self.node_id, self.store.used_bytes())
        for task_id in task_ids:
            with contextlib.suppress(Exception):
                await self._sched().finish.remote(task_id, self.node_id, why)
