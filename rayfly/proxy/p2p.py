"""The mirror's blob backend in a Ray cluster: blobs travel through the P2P core.

A blob is one task whose id is its digest (``sha256-<hex>``), whatever the repository or
registry name, with ``expected_sha256`` set: the node's peer checks the whole blob before it
counts as complete. The scheduler registers the upstream blob URL once per cluster; the node's
peer fetches pieces from other peers or, for pieces nobody holds, from the upstream.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray.exceptions import RayTaskError

from rayfly.errors import RayflyError
from rayfly.proxy.blobs import BlobHandle, SourceFactory
from rayfly.proxy.oci import BlobDigestMismatch, Digest, UpstreamError
from rayfly.task import SourceSpec, TaskInfo, default_piece_size

_PREPARE_GRACE_S = 10.0


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

    async def piece(self, index: int) -> memoryview:
        tid = self._digest.task_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PREPARE_GRACE_S
        while True:
            try:
                array = await self._owner.peer.wait_piece.remote(tid, index)
                break
            except RayTaskError as exc:
                cause = _unwrap(exc)
                # The peer records a task a moment after prepare() returns: retry briefly.
                if "not prepared" not in str(cause) or loop.time() > deadline:
                    raise cause from None
                await asyncio.sleep(0.02)
        want = min(self.piece_size, self.length - index * self.piece_size)
        if len(array) != want:
            raise UpstreamError(f"piece {index} of {self._digest} has {len(array)} bytes")
        return memoryview(array).cast("B")

    async def verify(self) -> None:
        try:
            result = await self._owner.peer.wait_complete.remote(self._digest.task_id)
        except RayTaskError as exc:
            raise _unwrap(exc) from None
        if result.get("sha256") != self._digest.hex:
            raise BlobDigestMismatch(f"bytes on this node do not match {self._digest}")
        self._owner.count(self._digest, result)


class P2PBlobs:
    """BlobBackend over a node's Peer actor and the cluster's Scheduler actor."""

    def __init__(self, peer: Any, scheduler: Any) -> None:
        self.peer, self.scheduler = peer, scheduler
        self._opening: dict[str, asyncio.Future[TaskInfo]] = {}
        self._counted: set[str] = set()
        self._counters = {"bytes_from_upstream": 0, "bytes_from_peers": 0, "blobs_fetched": 0}

    async def cached_length(self, digest: Digest) -> int | None:
        """The blob's length if complete and verified in this node's cache."""
        if not await self.peer.has_task.remote(digest.task_id):
            return None
        try:
            result = await self.peer.wait_complete.remote(digest.task_id)
        except RayTaskError:
            return None
        return int(result["bytes"])

    async def open(self, digest: Digest, source: SourceFactory) -> BlobHandle:
        """The cached blob, or a P2P download started on this node (``source`` awaited once)."""
        length = await self.cached_length(digest)
        if length is not None:
            return _P2PHandle(self, digest, length, default_piece_size(length))
        info = await self._register(digest, source)
        await self.peer.prepare.remote(info)
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
                info = await self.scheduler.register.remote(blob_spec(src.url, src.headers, digest))
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
