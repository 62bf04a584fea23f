"""The Peer actor: one per node. It holds the node's piece store, serves pieces to other
peers, fetches tasks (:mod:`rayfly.actors.download`) and publishes them at destinations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import ray

from rayfly import dest as dest_paths
from rayfly import identity, metrics, piecemem, source
from rayfly.actors.download import Downloads, NodeLimits
from rayfly.actors.links import Links
from rayfly.actors.packs import fetch_pack
from rayfly.actors.piece_reads import KeptPiece, put_from_store, put_piece
from rayfly.actors.retry import unwrap
from rayfly.config import NodeConfig, PeerConfig, from_env, node_cache_dir
from rayfly.errors import PieceCorrupt, RayflyError, SourceError, TaskNotFound
from rayfly.eviction import GcPolicy
from rayfly.piecemem import HotPieces, serve_memory
from rayfly.protocol import (
    Batch,
    Cached,
    FetchItem,
    FetchRequest,
    FileResult,
    NodeResult,
    single_file,
    summarize_node,
)
from rayfly.ratelimit import TokenBucket
from rayfly.scheduling import upload_slots
from rayfly.storage import PieceStore
from rayfly.task import TaskInfo

log = logging.getLogger(__name__)


def _alive_node_ids() -> set[str]:
    """Ray node ids of the cluster's live nodes (their stores of the old layout are kept)."""
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _serve_memory(node: NodeConfig, node_id: str) -> int:
    """Bytes of pieces kept referenced for serving (:func:`piecemem.serve_memory` of the
    node's setting and its object store's size)."""
    mine = [n for n in ray.nodes() if n["NodeID"] == node_id]
    store = mine[0]["Resources"].get("object_store_memory", 0) if mine else 0
    return serve_memory(node.serve_memory, int(store))


def _succeeded(job: asyncio.Task[Any] | None) -> bool:
    """True for a download that finished well (a pack's may have failed, its files fetched
    one by one instead)."""
    return job is not None and job.done() and not job.cancelled() and job.exception() is None


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
        self.store = PieceStore(
            self.cache.store_dir, config.cache_quota, policy=policy, direct_io=node.direct_io
        )
        limits = NodeLimits(
            TokenBucket(node.download_rate),
            TokenBucket(node.upload_rate),
            TokenBucket(node.origin_rate),
        )
        self._upload_limit = limits.upload
        self.links = Links()
        self.hot: HotPieces[KeptPiece] = HotPieces(_serve_memory(node, node_id))
        self.downloads = Downloads(
            node_id,
            config,
            self.store,
            self.links,
            limits,
            self.hot,
            self._join,
            self._report_evictions,
            self.node_ip if node.local_reads else None,
        )
        # test-only fault hook: serve every piece with one byte flipped (see tests/cluster)
        self._corrupt_served = os.environ.get("RAYFLY_TEST_CORRUPT_SERVED") == "1"
        self._gc_loop = asyncio.ensure_future(self._collect_garbage())
        self._trim_loop = asyncio.ensure_future(self._trim_buffers())
        self.uploads = 0
        self.pieces_served = 0
        self.pieces_served_hot = 0
        self._incarnation = ray.get_runtime_context().get_actor_id() or ""
        ray.get_runtime_context().current_actor.announce.remote()

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
            "downloads": len(self.downloads.jobs),
            "downloads_inflight": sum(not d.done() for d in self.downloads.jobs.values()),
            "uploads": self.uploads,
            "pieces_served": self.pieces_served,
            "pieces_served_from_memory": self.pieces_served_hot,
            "pieces_kept_from_origin": self.downloads.pieces_kept_from_origin,
            "pieces_read_from_local_stores": self.downloads.reader.pieces_read_local,
            "local_reads": self.node.local_reads,
            "direct_io": self.store.direct_io,
            "pieces_written_direct": self.store.direct_writes,
            "tasks_begun_unreserved": self.store.unreserved_files,
            "serve_memory": {
                "limit": self.hot.limit,
                "held": self.hot.held,
                # bytes of the node's object store this peer keeps: pieces it made and kept,
                # and the views of received pieces (kept, in flight, in the hash window); PINS
                # is read through its module: Ray pickles this class, and PINS holds a lock
                "referenced": self.hot.made + piecemem.PINS.bytes,
            },
        }

    def store_view(self) -> dict[str, Any]:
        """Where this peer's piece store is, so that a peer on the same host that sees the same
        store reads pieces from its files directly (:func:`links.visible_store`)."""
        dev, ino = self.store.identity()
        return {"node_ip": self.node_ip, "root": str(self.store.root), "dev": dev, "ino": ino}

    def incarnation(self) -> str:
        """This actor's id: a restarted peer on the same node is a different incarnation."""
        return self._incarnation

    async def _join(self, task: TaskInfo, have: dict[int, str], want: int, wait: bool) -> Batch:
        """Join ``task`` with the pieces ``have`` holds; with ``want``, its first batch too."""
        rate = self.node.upload_rate
        slots = upload_slots(self.config.upload_slots, rate, task.piece_size)
        args = (task.task_id, self.node_id, self.node_ip, slots, have, self._incarnation, rate)
        try:
            return await self.links.ask("join", *args, want, wait)
        except ray.exceptions.RayTaskError as exc:
            if not isinstance(unwrap(exc), TaskNotFound):
                raise
            # The scheduler does not know the task (it restarted without it, or dropped it
            # after a day that nobody joined it): this peer has the task as it was registered.
            log.info("task %s: unknown to the scheduler; registering it again", task.task_id)
            (registered,) = await self.links.ask("register_tasks", [task])
            if registered.cut != task.cut:  # registered anew meanwhile, cut otherwise
                raise RayflyError(
                    f"task {task.task_id} was registered again with {registered.piece_size}-byte "
                    f"pieces while node {self.node_id} fetched it in {task.piece_size}-byte "
                    "ones; fetch it again"
                ) from None
            return await self.links.ask("join", *args, want, wait)

    async def announce(self, task_ids: list[str] | None = None) -> list[str]:
        """Tell the scheduler which complete tasks this node holds (those of ``task_ids``, or
        all): called when the peer starts and by a restarted scheduler. Returns the task ids
        the scheduler knows."""
        wanted = None if task_ids is None else set(task_ids)
        have = {
            e.task_id: Cached(e.cut, dict(e.digests))
            for e in self.store.entries()
            if e.complete and (wanted is None or e.task_id in wanted)
        }
        try:
            self.links.scheduler()
        except ValueError:
            return []  # no scheduler yet: it learns of this cache when asked for a task
        if not have:
            return []
        rate = self.node.upload_rate
        args = (self.node_id, self.node_ip, self.config.upload_slots, self._incarnation, have, rate)
        known: list[str] = await self.links.ask("announce", *args)
        return known

    # --- serving ------------------------------------------------------------------------------
    async def read_piece(self, task_id: str, index: int) -> np.ndarray | list[ray.ObjectRef]:
        """A verified piece for another peer; raises PieceUnavailable if not held.

        A piece this node received from a parent or served lately is answered with its bytes
        from memory (no disk read): Ray copies them into this call's return object, made in
        this node's store and owned by the caller, so that it is pulled from here and from no
        other node (:meth:`_serve_bytes` says why that matters). An object made here (a piece
        read from the origin, kept hot) is handed out as ``[its reference]`` the first time, with
        no copy (only this node holds it yet); a piece read from disk is checked against its
        digest, put into the object store, kept hot for the next child and handed out as
        ``[its reference]``: an object this actor owns, pullable for as long as it lives."""
        self.uploads += 1
        try:
            nbytes = self.store.piece_length(task_id, index)  # PieceUnavailable if not held
            if self._upload_limit.rate:
                await self._upload_limit.take(nbytes)
            kept = None if self._corrupt_served else self.hot.get(task_id, index)
            if kept is None:
                out = [await self.downloads.disk_io(self._put_piece, task_id, index)]
            else:
                handed = self.hot.hand_out(task_id, index)
                out = [kept.ref] if handed else await self._serve_bytes(kept)
                self.pieces_served_hot += 1
            self.pieces_served += 1
            metrics.piece_served(self.node_id)
            return out
        except PieceCorrupt:
            await self._evict_corrupt(task_id)
            raise
        finally:
            self.uploads -= 1

    @staticmethod
    async def _serve_bytes(kept: KeptPiece) -> np.ndarray:
        """The bytes of a piece kept hot, a read-only view of this node's copy in its store.

        Ray pulls an object from a node chosen at random among those holding a copy: one
        reference handed to every child is sent by whichever earlier child got it first, not by
        the parent the scheduler chose and counted, and a pull sent to a node that has evicted
        its copy waits for Ray's retry (10 s). A new object per child (one memory copy of the
        piece) has one location, this node. The bytes come from this node's store either way: a
        piece received from a parent from the view that keeps its copy here (even once the node
        it came from died), one made here from its primary copy."""
        data: np.ndarray = kept.pinned if kept.pinned is not None else await kept.ref
        return data

    async def _serve_copy(self, kept: KeptPiece) -> ray.ObjectRef:
        """A new object holding the bytes of a piece kept hot, that this actor owns (for the
        node's mirror: see :meth:`_serve_bytes`)."""
        copy: ray.ObjectRef = await self.downloads.disk_io(put_piece, await self._serve_bytes(kept))
        return copy

    def _put_piece(self, task_id: str, index: int) -> ray.ObjectRef:
        """Read a piece from disk, verified, into the object store (kept hot)."""
        ref = put_from_store(self.store, task_id, index, self._corrupt_served)
        if not self._corrupt_served:
            nbytes = self.store.piece_length(task_id, index)
            self.hot.put(task_id, index, KeptPiece(ref), nbytes, handed=True)
        return ref

    async def _evict_corrupt(self, task_id: str) -> None:
        """A complete cached task whose bytes changed on disk: drop it here and tell the
        scheduler, so that no other peer is sent here for it (it is fetched anew if asked)."""
        log.warning("task %s: the cached copy on node %s is corrupt", task_id, self.node_id)
        if not self.has_task(task_id):
            return  # still downloading: the download's own checks decide
        self.store.discard(task_id)
        await self._removed([task_id], "cached copy corrupt")

    async def wait_piece(
        self, task_id: str, index: int, from_file: bool = False
    ) -> list[ray.ObjectRef]:
        """Wait until piece ``index`` of a prepared task is verified here; ``[its reference]``
        for the node's mirror, an object this actor owns (so it stays pullable whatever became
        of the node the piece came from): the one made here when kept hot, a copy of the bytes
        pinned here when the piece came from another node, else the piece read from disk into
        the object store once. With ``from_file`` (a caller on this node that reads the store's
        data file itself) ``[]`` instead of any copy."""
        if self.downloads.tracked(task_id):
            await self.downloads.wait_verified(task_id, index)
        elif not self.store.has(task_id):
            # a download that failed before this call (no room for it, say) says why
            raise self.downloads.failure(task_id) or RayflyError(
                f"task {task_id} is not prepared on node {self.node_id}"
            )
        kept = self.hot.get(task_id, index)
        if kept is not None and kept.pinned is None:
            return [kept.ref]
        if from_file:
            return []
        if kept is not None:
            return [await self._serve_copy(kept)]
        return [await self.downloads.disk_io(self._put_piece, task_id, index)]

    def has_task(self, task_id: str) -> bool:
        """True when the task is complete and verified in this node's cache."""
        return self.store.has(task_id)

    # --- fetching -----------------------------------------------------------------------------
    def prepare(self, task: TaskInfo, concurrency: int | None = None) -> None:
        """Start fetching ``task`` into the cache in the background (no-op if under way/done)."""
        self.downloads.start(task, asyncio.Semaphore(concurrency or self.config.concurrency))

    async def wait_complete(self, task_id: str) -> dict[str, Any]:
        """Wait for a prepared task to be complete and verified in this node's cache (not for
        the scheduler to be told); return its sha256 and byte counts (raises on failure)."""
        if task_id not in self.downloads.jobs:
            entry = self.store.entry(task_id)
            if entry is None or not entry.complete:
                raise RayflyError(f"task {task_id} is not prepared on node {self.node_id}")
            return {
                "sha256": entry.sha256,
                "bytes": entry.length,
                "bytes_from_origin": 0,
                "bytes_from_peers": 0,
            }
        out = await self.downloads.wait_stored(task_id)
        return {
            "sha256": out.sha256,
            "bytes": out.length,
            "bytes_from_origin": out.bytes_from_origin,
            "bytes_from_peers": out.bytes_from_peers,
        }

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

        target = rendered if request.dest else None

        async def one(item: FetchItem) -> FileResult:
            async with gate:
                return await self._fetch_one(item, target, slots, limit)

        async def files(item: FetchItem) -> list[FileResult]:
            if item.task.members:  # not gated: its pieces share ``slots``, its fallback the gate
                return await fetch_pack(self, item, target, slots, limit, one)
            return [await one(item)]

        done = await asyncio.gather(*(files(i) for i in request.items))
        node.files = [f for fs in done for f in fs]
        for item, fs in zip(request.items, done, strict=True):
            job = self.downloads.jobs.get(item.task.task_id)
            if fs[0].ok and not fs[0].cached and _succeeded(job):
                node.timeline.extend(job.result().timeline)
        end = time.time()
        node.seconds = end - t0
        if node.timeline:
            node.tail_s = max(0.0, end - max(entry.time for entry in node.timeline))
        metrics.cache_bytes(self.node_id, self.store.used_bytes())
        return summarize_node(node, single=single_file(request.items))

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
            job = self.downloads.start(task, slots, limit)
            earlier = job.done()
            out = await asyncio.shield(job)
            result.sha256, result.cached = out.sha256, out.cached or earlier
            if not result.cached:
                result.bytes_from_origin = out.bytes_from_origin
                result.bytes_from_peers = out.bytes_from_peers
            if rendered is not None:
                target = dest_paths.target_path(rendered, item.relpath, task.url)
                result.path = str(target)
                await self.downloads.disk_io(self.store.publish, task.task_id, target)
            result.ok = True
        except RayflyError as exc:
            result.error = str(exc)
        except Exception as exc:
            result.error = source.redact_text(f"{type(exc).__name__}: {exc}")
        result.seconds = time.time() - t0
        return result

    async def list_source(self, url: str, options: dict[str, Any]) -> list[source.SourceFile]:
        """Every file at a node-local ``url`` as this node sees it (one file, or every file
        under a directory): a local path is listed and stat'ed on its own node only."""
        try:
            return await asyncio.to_thread(source.list_files, url, options)
        except SourceError as exc:
            raise type(exc)(f"{exc} (looked on node {self.node_id}, {self.hostname})") from None

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
        running = self.downloads.jobs.get(task_id)
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
        plan = await self.downloads.disk_io(self.store.gc, keep_bytes, dry_run)
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

    @staticmethod
    async def _trim_buffers() -> None:
        """Give the piece buffers an idle peer keeps beyond the pool's ``keep`` back to the
        kernel (:meth:`rayfly.piecemem.BufferPool.trim`). The pool is read through its module:
        Ray pickles this class, and a global holding a lock does not pickle."""
        while True:
            await asyncio.sleep(piecemem.BUFFERS.idle_s)
            piecemem.BUFFERS.trim()

    async def _removed(self, task_ids: list[str], why: str) -> None:
        """``task_ids`` left the store: drop their finished downloads, update the cache gauge,
        and tell the scheduler this node no longer holds them (best effort: a scheduler that
        does not know a task has nothing to forget)."""
        for task_id in task_ids:
            self.downloads.forget(task_id)
            self.hot.drop_task(task_id)
        metrics.cache_bytes(self.node_id, self.store.used_bytes())
        for task_id in task_ids:
            with contextlib.suppress(Exception):
                await self.links.scheduler().finish.remote(task_id, self.node_id, why)
