"""The mirror's blob backend in a Ray cluster: blobs travel through the P2P core.

A blob is one task whose id is its digest (``sha256-<hex>``), whatever the repository or
registry name, with ``expected_sha256`` set: the node's peer checks the whole blob before it
counts as complete. The scheduler registers the upstream blob URL once per cluster; the node's
peer fetches pieces from other peers or, for pieces nobody holds, from the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from ray.exceptions import ActorUnavailableError, OwnerDiedError, RayActorError, RayTaskError

from rayfly.actors.links import Links
from rayfly.actors.retry import unwrap
from rayfly.errors import RayflyError, StorageError
from rayfly.proxy.blobs import BlobHandle, BlobSource, FileSpan, Piece, SourceFactory
from rayfly.proxy.oci import BlobDigestMismatch, Digest, UpstreamError
from rayfly.proxy.passthrough import PassThrough, from_peers, from_upstream, upstream_pieces
from rayfly.source import SourceFile, Version
from rayfly.storage import PieceStore, TaskEntry
from rayfly.task import Cut, SourceSpec, TaskInfo

log = logging.getLogger(__name__)
_PREPARE_GRACE_S = 10.0
READ_AHEAD = 2
# A blob's pieces are at least 8 MiB on fast links (files': 4 MiB): a piece the mirror
# streams costs a call to the node's peer and a read of its own besides the peer's work.
# 8 MiB against 4 MiB, seven invocations each, alternating (docs/BENCHMARKS.md, twentieth
# pass): an image pull through a cold mirror 1.20x the registry's time against 1.30x, with the
# blob on another node 1.09x against 1.17x.
BLOB_PIECE_FLOOR = 8 << 20


def blob_spec(url: str, headers: dict[str, str], digest: Digest) -> SourceSpec:
    """The P2P source of a blob: upstream URL, auth headers for fsspec, digest as task id."""
    options: dict[str, Any] = {"headers": dict(headers)} if headers else {}
    return SourceSpec(url, options, task_id=digest.task_id, expected_sha256=digest.hex)


def blob_listing(src: BlobSource) -> SourceFile:
    """The upstream blob as the mirror's HEAD found it: the scheduler registers it without
    asking the upstream again (no version: the blob is named, and checked, by its digest)."""
    return SourceFile(src.url, "", src.length, Version(), src.ranges)


async def _answer_of(ref: Any) -> Any:
    """What ``ref`` holds, awaited."""
    return await ref


def _read_later(answer: Awaitable[Any]) -> asyncio.Future[Any]:
    """``answer`` as a future that is read even when nobody awaits it, so that a failed call
    is not reported again as an error nobody retrieved."""
    future = asyncio.ensure_future(answer)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


class _SharedPieces:
    """Piece requests of one blob, shared by every response streaming it from this proxy.

    Twenty clients of one blob cost the peer one ``wait_piece`` per piece, not twenty. A piece's
    reference is dropped once every open response has moved past it, so a large blob is never
    pinned whole in the object store. The blob's ``wait_complete`` is asked once, when the
    first response opens it: its answer is there when a response's last piece needs it.
    """

    def __init__(self, owner: P2PBlobs, task_id: str) -> None:
        self._owner, self._task_id = owner, task_id
        self._refs: dict[int, Any] = {}
        self._positions: dict[int, int] = {}
        self._complete: asyncio.Future[Any] | None = None
        self._task: TaskInfo | None = None
        self._prepared: asyncio.Future[Any] | None = None

    def prepare(self, task: TaskInfo | None = None) -> None:
        """Have the node's peer start fetching ``task`` (None: the one sent last, to a peer
        that replaced the one it went to), without waiting for the answer. A piece request
        the peer starts before it (an async actor may start one caller's calls out of order)
        fails as "not prepared" and is sent again once it is answered (:meth:`prepared`)."""
        self._task = task or self._task
        if self._task is not None:
            ref = self._owner.peer.prepare.remote(self._task, self._owner.concurrency)
            self._prepared = _read_later(_answer_of(ref))

    async def prepared(self) -> bool:
        """Wait for the peer's answer to the last ``prepare``: True if it had not come yet.
        Raises why the peer refused the task; a peer that died is left to the next piece
        request to find."""
        pending = self._prepared is not None and not self._prepared.done()
        if self._prepared is not None:
            try:
                await asyncio.shield(self._prepared)
            except RayTaskError as exc:
                raise unwrap(exc) from None
            except (RayActorError, OwnerDiedError):
                pass
        return pending

    def ref(self, index: int) -> Any:
        """The (one) request for piece ``index``."""
        if index not in self._refs:
            from_file = self._owner.store_root is not None
            peer = self._owner.peer
            self._refs[index] = peer.wait_piece.remote(self._task_id, index, from_file)
        return self._refs[index]

    def completion(self) -> asyncio.Future[Any]:
        """The (one) request for the blob's verified completion on this node. Its answer is
        taken even when no response awaits it (a blob passed through, a client gone), so that
        a failed download is not reported again as an error nobody read."""
        if self._complete is None:
            self._complete = _read_later(self._ask_complete())
        return self._complete

    async def _ask_complete(self) -> Any:
        # sent once the task's prepare is answered: the peer refuses one that comes before it
        await self.prepared()
        return await self._owner.peer.wait_complete.remote(self._task_id)

    def forget_completion(self) -> None:
        """Drop a completion request whose peer died (the next one goes to its successor)."""
        self._complete = None

    def forget(self, index: int, ref: Any) -> None:
        """Drop a failed request so that the next reader asks again."""
        if self._refs.get(index) is ref:
            del self._refs[index]

    def advance(self, reader: int, index: int) -> None:
        """``reader`` now needs pieces from ``index`` on; drop what nobody needs any more."""
        self._positions[reader] = index
        self._prune()

    def leave(self, reader: int) -> bool:
        """``reader`` is done; True when no reader is left."""
        self._positions.pop(reader, None)
        self._prune()
        return not self._positions

    def _prune(self) -> None:
        low = min(self._positions.values(), default=1 << 62)
        for index in [i for i in self._refs if i < low]:
            del self._refs[index]


class _P2PHandle:
    """Pieces of one blob from the node's peer, in order; ``verify`` waits for the whole.

    If the node cannot keep the blob (no room in its cache: the peer fails the task before it
    reads any of it; a cache it cannot write), the handle passes the blob through instead, from
    the nodes that hold it or else the upstream, when it sent nothing yet: the client gets the
    blob from this mirror either way (:meth:`P2PBlobs.pass_through`).
    """

    def __init__(self, owner: P2PBlobs, digest: Digest, cut: Cut, source: SourceFactory) -> None:
        self._owner, self._digest, self._source = owner, digest, source
        self.length, self.cut = cut.length, cut
        self._n = cut.n_pieces
        self._shared = owner.shared(digest.task_id)
        self._shared.advance(id(self), 0)
        self._shared.completion()  # asked now, answered by the time the last piece needs it
        self._sent = False
        self._passing: PassThrough | None = None

    async def _get(self, index: int) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PREPARE_GRACE_S
        healed = False
        while True:
            ref = self._shared.ref(index)
            try:
                box = await ref  # [the piece's reference]: pulled into this node's store once
                if not box:  # verified in the node's store and not in memory: sent from its file
                    start, end = self.cut.bounds(index)
                    return self._owner.stored_span(self._digest, start, end - start)
                return await box[0]
            except (RayActorError, OwnerDiedError):
                # the node's peer (the owner of every reference it hands out) died; a new one
                # must download the blob again: it is sent the task if this response sent no
                # byte yet, else the response fails
                self._shared.forget(index, ref)
                await self._owner.reconnect()
                if self._sent or healed:
                    raise
                healed = True
                self._shared.prepare()
            except RayTaskError as exc:
                self._shared.forget(index, ref)
                cause = unwrap(exc)
                if "not prepared" not in str(cause) or loop.time() > deadline:
                    raise cause from None
                if not await self._shared.prepared():  # answered before: retry briefly
                    await asyncio.sleep(0.005)

    async def piece(self, index: int) -> Piece:
        """Piece ``index``; the next READ_AHEAD pieces are requested while it is sent."""
        if self._passing is not None:
            return await self._passing.piece(index)
        self._shared.advance(id(self), index)
        try:
            array = await self._get(index)
        except StorageError as exc:  # no room (CacheFull), a read-only disk...
            if self._sent:
                raise
            self._owner.release(self._digest.task_id, id(self))
            owner = self._owner
            self._passing = await owner.pass_through(self._digest, self.cut, self._source, exc)
            return await self._passing.piece(index)
        self._sent = True
        for ahead in range(index + 1, min(self._n, index + 1 + READ_AHEAD)):
            self._shared.ref(ahead)
        if isinstance(array, FileSpan):
            return array
        start, end = self.cut.bounds(index)
        if len(array) != end - start:
            raise UpstreamError(f"piece {index} of {self._digest} has {len(array)} bytes")
        return memoryview(array).cast("B")

    def close(self) -> None:
        if self._passing is None:
            self._owner.release(self._digest.task_id, id(self))
            return
        self._owner.passed(self._passing)
        self._passing.close()

    async def verify(self) -> None:
        if self._passing is not None:
            return await self._passing.verify()
        try:
            try:
                result = await self._shared.completion()
            except (RayActorError, OwnerDiedError, RayTaskError):
                # the peer died (its successor is asked), or the download the shared request
                # waited for failed: this response's may be a later one, so ask about it
                self._shared.forget_completion()
                result = await self._owner.call("wait_complete", self._digest.task_id)
        except RayTaskError as exc:
            raise unwrap(exc) from None
        if result.get("sha256") != self._digest.hex:
            raise BlobDigestMismatch(f"bytes on this node do not match {self._digest}")
        self._owner.count(self._digest, result)


class _FileHandle:
    """A blob complete and verified in the node's piece store, read from its data file.

    The proxy runs on the same node as the peer, so the store's documented layout
    is readable here (:meth:`PieceStore.read_entry`); the file is opened once, so
    an eviction during the response does not cut it short.
    """

    def __init__(self, fd: int, cut: Cut) -> None:
        self._fd, self.length, self.cut = fd, cut.length, cut

    async def piece(self, index: int) -> memoryview:
        start, end = self.cut.bounds(index)
        return memoryview(await asyncio.to_thread(os.pread, self._fd, end - start, start))

    async def verify(self) -> None:
        return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _stored(root: Path | None, digest: Digest) -> TaskEntry | None:
    """The piece store's complete entry for ``digest``, if its sha256 matches."""
    entry = PieceStore.read_entry(root, digest.task_id) if root is not None else None
    return entry if entry is not None and entry.sha256 == digest.hex else None


class P2PBlobs:
    """BlobBackend over a node's Peer actor and the cluster's Scheduler actor."""

    def __init__(
        self,
        peer: Any,
        scheduler: Any,
        store_root: str | Path | None = None,
        concurrency: int | None = None,
        get_peer: Callable[[], Any] | None = None,
        session: aiohttp.ClientSession | None = None,
        piece_timeout_s: float = 60.0,
    ) -> None:
        self.peer = peer
        self._session, self._piece_timeout_s = session, piece_timeout_s
        self._links = Links(scheduler)  # scheduler calls retried while it restarts
        self._get_peer = get_peer
        self.concurrency = concurrency
        self.store_root = Path(store_root) if store_root else None
        self._opening: dict[str, asyncio.Future[TaskInfo]] = {}
        self._counted: set[str] = set()
        self._shared: dict[str, _SharedPieces] = {}
        self._counters = {
            "bytes_from_upstream": 0,
            "bytes_from_peers": 0,
            "blobs_fetched": 0,
            "blobs_passed_through": 0,
        }

    async def reconnect(self) -> None:
        """Look the node's peer up again (created anew if it died): with ``get_peer`` the
        mirror heals itself after its peer actor dies, instead of failing every request."""
        if self._get_peer is not None:
            self.peer = await asyncio.to_thread(self._get_peer)

    async def call(self, method: str, *args: Any) -> Any:
        """``method`` of the node's peer; on a dead peer, reconnect and try once more."""
        try:
            return await getattr(self.peer, method).remote(*args)
        except ActorUnavailableError:
            raise
        except RayActorError:
            if self._get_peer is None:
                raise
            await self.reconnect()
            return await getattr(self.peer, method).remote(*args)

    def _open_local(self, digest: Digest) -> _FileHandle | None:
        entry = _stored(self.store_root, digest)
        if entry is None or self.store_root is None:
            return None
        try:
            fd = os.open(PieceStore.data_path_at(self.store_root, digest.task_id), os.O_RDONLY)
        except OSError:
            return None
        return _FileHandle(fd, entry.cut)

    def stored_span(self, digest: Digest, start: int, size: int) -> FileSpan:
        """Where bytes of the blob are in the node's piece store (pieces the peer verified
        there while the blob downloads): the server sends them from its data file."""
        assert self.store_root is not None
        return FileSpan(PieceStore.data_path_at(self.store_root, digest.task_id), start, size)

    async def local_path(self, digest: Digest) -> Path | None:
        """The piece store's data file of the blob, if complete and verified on this node."""
        if self.store_root is None or _stored(self.store_root, digest) is None:
            return None
        path = PieceStore.data_path_at(self.store_root, digest.task_id)
        return path if path.is_file() else None

    async def held(self, digest: Digest) -> TaskInfo | None:
        """The blob's task if other nodes hold every piece of it (the upstream need not be
        asked anything to fetch it), else None."""
        return await self._links.ask("held", digest.task_id)

    async def cached_length(self, digest: Digest) -> int | None:
        """The blob's length if complete and verified in this node's cache, or held whole by
        other nodes of the cluster."""
        entry = _stored(self.store_root, digest)
        if entry is not None:
            return entry.length
        if not await self.call("has_task", digest.task_id):
            held = await self.held(digest)
            return held.length if held is not None else None
        try:
            result = await self.call("wait_complete", digest.task_id)
        except RayTaskError:
            return None
        return int(result["bytes"])

    async def open(self, digest: Digest, source: SourceFactory) -> BlobHandle:
        """The cached blob, or a P2P download started on this node (``source`` awaited once)."""
        local = self._open_local(digest)
        if local is not None:
            return local
        info = await self._register(digest, source)
        self.shared(digest.task_id).prepare(info)  # answered by the time its pieces are
        return _P2PHandle(self, digest, info.cut, source)

    async def pass_through(
        self, digest: Digest, cut: Cut, source: SourceFactory, why: StorageError
    ) -> PassThrough:
        """The blob for one response, kept nowhere (this node cannot keep it): from the nodes
        that hold it if there are such (a piece none of them serves: from the upstream), else
        from the upstream. ``why`` is re-raised when the mirror has no HTTP session and the
        upstream would be needed."""
        holders = await self._links.ask("holders", digest.task_id)
        where = "other nodes" if holders else "the upstream"
        if holders is None and self._session is None:
            raise why
        log.warning("blob %s passes through from %s, kept nowhere: %s", digest, where, why)
        self._counters["blobs_passed_through"] += 1
        session = self._session
        if holders:
            upstream = upstream_pieces(session, source, digest, cut) if session else None
            return from_peers(digest, cut, holders, self._links, self._piece_timeout_s, upstream)
        assert session is not None
        return await from_upstream(session, await source(), digest, cut)

    def passed(self, handle: PassThrough) -> None:
        """Count the bytes a passed-through response read."""
        self._counters["bytes_from_peers"] += handle.bytes_from_peers
        self._counters["bytes_from_upstream"] += handle.bytes_from_upstream

    async def _register(self, digest: Digest, source: SourceFactory) -> TaskInfo:
        key = digest.task_id
        if key in self._opening:
            return await asyncio.shield(self._opening[key])
        future: asyncio.Future[TaskInfo] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            info = await self.held(digest)  # cached elsewhere: no request upstream at all
            if info is None:
                info = await self._register_upstream(digest, await source())
            future.set_result(info)
            return info
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else RayflyError("cancelled"))
            future.exception()
            raise
        finally:
            del self._opening[key]

    async def _register_upstream(self, digest: Digest, src: BlobSource) -> TaskInfo:
        try:
            spec = blob_spec(src.url, src.headers, digest)
            # A client streams the blob front to back: fetch pieces in index order.
            listed = blob_listing(src)
            info = await self._links.ask(
                "register", spec, None, "sequential", listed, BLOB_PIECE_FLOOR
            )
        except RayTaskError as exc:
            raise unwrap(exc) from None
        if info.length != src.length:
            raise UpstreamError(f"{digest}: upstream length changed ({info.length})")
        return info

    def shared(self, task_id: str) -> _SharedPieces:
        """The piece requests of ``task_id`` shared by this proxy's open responses."""
        if task_id not in self._shared:
            self._shared[task_id] = _SharedPieces(self, task_id)
        return self._shared[task_id]

    def release(self, task_id: str, reader: int) -> None:
        """A response is done with ``task_id``; forget the shared requests with the last one."""
        shared = self._shared.get(task_id)
        if shared is not None and shared.leave(reader):
            del self._shared[task_id]

    def count(self, digest: Digest, result: dict[str, Any]) -> None:
        """Add one completed download's byte figures to the counters (once per blob)."""
        if digest.task_id in self._counted:
            return
        self._counted.add(digest.task_id)
        self._counters["bytes_from_upstream"] += int(result.get("bytes_from_origin", 0))
        self._counters["bytes_from_peers"] += int(result.get("bytes_from_peers", 0))
        if result.get("bytes_from_origin") or result.get("bytes_from_peers"):
            self._counters["blobs_fetched"] += 1

    def stats(self) -> dict[str, int]:
        """Counters since the proxy started."""
        return dict(self._counters)
