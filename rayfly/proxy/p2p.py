"""The mirror's blob backend in a Ray cluster: blobs travel through the P2P core.

A blob is one task whose id is its digest (``sha256-<hex>``), whatever the repository or
registry name, with ``expected_sha256`` set: the node's peer checks the whole blob before it
counts as complete. The scheduler registers the upstream blob URL once per cluster; the node's
peer fetches pieces from other peers or, for pieces nobody holds, from the upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from ray.exceptions import RayTaskError

from rayfly.errors import RayflyError
from rayfly.proxy.blobs import BlobHandle, SourceFactory
from rayfly.proxy.oci import BlobDigestMismatch, Digest, UpstreamError
from rayfly.task import SourceSpec, TaskInfo, default_piece_size

_PREPARE_GRACE_S = 10.0
READ_AHEAD = 2


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return exc


def blob_spec(url: str, headers: dict[str, str], digest: Digest) -> SourceSpec:
    """The P2P source of a blob: upstream URL, auth headers for fsspec, digest as task id."""
    options: dict[str, Any] = {"headers": dict(headers)} if headers else {}
    return SourceSpec(url, options, task_id=digest.task_id, expected_sha256=digest.hex)


class _P2PHandle:
    """Pieces of one blob from the node's peer, in order; ``verify`` waits for the whole."""

    def __init__(self, owner: P2PBlobs, digest: Digest, length: int, piece_size: int) -> None:
        self._owner, self._digest = owner, digest
        self.length, self.piece_size = length, piece_size
        self._n = max(1, -(-length // piece_size))
        self._ahead: dict[int, Any] = {}
        self._started = False

    async def _first_call(self, index: int) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PREPARE_GRACE_S
        while True:
            try:
                return await self._owner.peer.wait_piece.remote(self._digest.task_id, index)
            except RayTaskError as exc:
                cause = _unwrap(exc)
                # The peer records a task a moment after prepare() returns: retry briefly.
                if "not prepared" not in str(cause) or loop.time() > deadline:
                    raise cause from None
                await asyncio.sleep(0.005)

    async def piece(self, index: int) -> memoryview:
        """Piece ``index``; the next READ_AHEAD pieces are requested while it is sent."""
        if not self._started:
            array = await self._first_call(index)
            self._started = True
        else:
            ref = self._ahead.pop(index, None)
            if ref is None:
                ref = self._owner.peer.wait_piece.remote(self._digest.task_id, index)
            try:
                array = await ref
            except RayTaskError as exc:
                raise _unwrap(exc) from None
        for ahead in range(index + 1, min(self._n, index + 1 + READ_AHEAD)):
            if ahead not in self._ahead:
                self._ahead[ahead] = self._owner.peer.wait_piece.remote(self._digest.task_id, ahead)
        want = min(self.piece_size, self.length - index * self.piece_size)
        if len(array) != want:
            raise UpstreamError(f"piece {index} of {self._digest} has {len(array)} bytes")
        return memoryview(array).cast("B")

    def close(self) -> None:
        self._ahead.clear()

    async def verify(self) -> None:
        try:
            result = await self._owner.peer.wait_complete.remote(self._digest.task_id)
        except RayTaskError as exc:
            raise _unwrap(exc) from None
        if result.get("sha256") != self._digest.hex:
            raise BlobDigestMismatch(f"bytes on this node do not match {self._digest}")
        self._owner.count(self._digest, result)


class _FileHandle:
    """A blob complete and verified in the node's piece store, read from its data file.

    The proxy runs on the same node as the peer, so the store's documented layout
    (``<root>/tasks/<task_id>/{data,meta.json}``) is readable here; the file is opened once, so
    an eviction during the response does not cut it short.
    """

    def __init__(self, fd: int, length: int, piece_size: int) -> None:
        self._fd, self.length, self.piece_size = fd, length, piece_size

    async def piece(self, index: int) -> memoryview:
        start = index * self.piece_size
        size = min(self.piece_size, self.length - start)
        return memoryview(await asyncio.to_thread(os.pread, self._fd, size, start))

    async def verify(self) -> None:
        return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_meta(root: Path, digest: Digest) -> dict[str, Any] | None:
    """The store's record of a complete task for ``digest``, if its sha256 matches."""
    try:
        meta = json.loads((root / "tasks" / digest.task_id / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not meta.get("complete") or meta.get("sha256") != digest.hex:
        return None
    return meta


class P2PBlobs:
    """BlobBackend over a node's Peer actor and the cluster's Scheduler actor."""

    def __init__(
        self,
        peer: Any,
        scheduler: Any,
        store_root: str | Path | None = None,
        concurrency: int | None = None,
    ) -> None:
        self.peer, self.scheduler = peer, scheduler
        self.concurrency = concurrency
        self._root = Path(store_root) if store_root else None
        self._opening: dict[str, asyncio.Future[TaskInfo]] = {}
        self._counted: set[str] = set()
        self._counters = {"bytes_from_upstream": 0, "bytes_from_peers": 0, "blobs_fetched": 0}

    def _open_local(self, digest: Digest) -> _FileHandle | None:
        meta = _read_meta(self._root, digest) if self._root else None
        if meta is None or self._root is None:
            return None
        try:
            fd = os.open(self._root / "tasks" / digest.task_id / "data", os.O_RDONLY)
        except OSError:
            return None
        return _FileHandle(fd, int(meta["length"]), int(meta["piece_size"]))

    async def cached_length(self, digest: Digest) -> int | None:
        """The blob's length if complete and verified in this node's cache."""
        meta = _read_meta(self._root, digest) if self._root else None
        if meta is not None:
            return int(meta["length"])
        if not await self.peer.has_task.remote(digest.task_id):
            return None
        try:
            result = await self.peer.wait_complete.remote(digest.task_id)
        except RayTaskError:
            return None
        return int(result["bytes"])

    async def open(self, digest: Digest, source: SourceFactory) -> BlobHandle:
        """The cached blob, or a P2P download started on this node (``source`` awaited once)."""
        local = self._open_local(digest)
        if local is not None:
            return local
        length = await self.cached_length(digest)
        if length is not None:
            return _P2PHandle(self, digest, length, default_piece_size(length))
        info = await self._register(digest, source)
        await self.peer.prepare.remote(info, self.concurrency)
        return _P2PHandle(self, digest, info.length, info.piece_size)

    async def _register(self, digest: Digest, source: SourceFactory) -> TaskInfo:
        key = digest.task_id
        if key in self._opening:
            return await asyncio.shield(self._opening[key])
        future: asyncio.Future[TaskInfo] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            src = await source()
            try:
                spec = blob_spec(src.url, src.headers, digest)
                # A client streams the blob front to back: fetch pieces in index order.
                info = await self.scheduler.register.remote(spec, None, "sequential")
            except RayTaskError as exc:
                raise _unwrap(exc) from None
            if info.length != src.length:
                raise UpstreamError(f"{digest}: upstream length changed ({info.length})")
            future.set_result(info)
            return info
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else RayflyError("cancelled"))
            future.exception()
            raise
        finally:
            del self._opening[key]

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
