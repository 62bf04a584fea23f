"""Where the mirror gets blob bytes: a small interface and its in-process implementation.

:class:`BlobBackend` is what :mod:`rayfly.proxy.server` needs: "is this blob complete on this
node?" and "open it, fetching from the upstream if needed". :class:`LocalBlobs` implements it in
one process (one download per digest, no Ray): the reference implementation and the test
double of :class:`rayfly.proxy.p2p.P2PBlobs`, which moves the bytes through the P2P core.

A :class:`BlobHandle` gives pieces in order as they arrive and a ``verify()`` that waits for the
whole blob and raises :class:`~rayfly.proxy.oci.BlobDigestMismatch` if its sha256 is wrong. The
server sends the last bytes of any response only after ``verify()`` returned, so no client ever
receives a complete blob whose digest is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from rayfly.proxy.neterrors import upstream_failure
from rayfly.proxy.oci import BlobDigestMismatch, Digest, UpstreamError
from rayfly.task import Cut

PIECE_SIZE = 4 << 20


@dataclass(frozen=True)
class BlobSource:
    """Where to fetch a blob from: its upstream URL, the auth headers to use, its length,
    and whether the upstream serves byte ranges of it."""

    url: str
    headers: dict[str, str] = field(repr=False)
    length: int
    ranges: bool = True


SourceFactory = Callable[[], Awaitable[BlobSource]]


@dataclass(frozen=True)
class FileSpan:
    """A piece's bytes in a file on this node, verified there: ``length`` bytes at ``offset`` of
    ``path``. The server has the kernel send them (``sendfile``) instead of reading them into
    memory and writing them out again."""

    path: Path
    offset: int
    length: int


Piece = memoryview | FileSpan
"""What :meth:`BlobHandle.piece` gives: the bytes, or where they are on this node."""


class BlobHandle(Protocol):
    """An open blob: in-order pieces, then a whole-blob check."""

    length: int
    cut: Cut

    async def piece(self, index: int) -> Piece:
        """Piece ``index`` once it is on this node (checked per piece)."""
        ...

    async def verify(self) -> None:
        """Wait for the whole blob; raise BlobDigestMismatch if it is not the digest's bytes."""
        ...

    def close(self) -> None:
        """Release what the handle holds (file descriptors, pending piece requests)."""
        ...


class BlobBackend(Protocol):
    """The node's blob store as the mirror sees it."""

    async def cached_length(self, digest: Digest) -> int | None:
        """The blob's length if it is complete and verified on this node, else None."""
        ...

    async def open(self, digest: Digest, source: SourceFactory) -> BlobHandle:
        """Open the blob; ``source()`` is awaited only when the bytes must come from upstream."""
        ...

    async def local_path(self, digest: Digest) -> Path | None:
        """A file holding the complete, verified blob on this node, to send as is; else None."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters: ``bytes_from_upstream``, ``bytes_from_peers``, ``blobs_fetched``."""
        ...


class _Download:
    """One blob being written to ``<dir>/<task_id>.part``; readers wait on ``progress``."""

    def __init__(self, final: Path, length: int) -> None:
        self.final, self.length = final, length
        self.part = final.with_name(final.name + ".part")
        self.received = 0
        self.sha = hashlib.sha256()
        self.error: BaseException | None = None
        self.done = False
        self.progress = asyncio.Condition()
        self.fd: int | None = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    async def wait_for(self, end: int) -> None:
        async with self.progress:
            await self.progress.wait_for(lambda: self.done or self.received >= end)
        if self.error is not None:
            raise self.error

    def read(self, start: int, end: int) -> memoryview:
        if self.fd is not None:
            return memoryview(os.pread(self.fd, end - start, start))
        return _read_file(self.final, start, end)

    async def advance(self, n: int) -> None:
        async with self.progress:
            self.received += n
            self.progress.notify_all()

    async def finish(self, error: BaseException | None) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        async with self.progress:
            self.error, self.done = error, True
            self.progress.notify_all()


def _read_file(path: Path, start: int, end: int) -> memoryview:
    with open(path, "rb") as handle:
        handle.seek(start)
        return memoryview(handle.read(end - start))


class _LocalHandle:
    def __init__(self, download: _Download) -> None:
        self._d = download
        self.length = download.length
        self.cut = Cut(download.length, PIECE_SIZE)

    async def piece(self, index: int) -> memoryview:
        start, end = self.cut.bounds(index)
        await self._d.wait_for(end)
        return self._d.read(start, end)

    async def verify(self) -> None:
        await self._d.wait_for(self.length + 1)

    def close(self) -> None:
        return None


class LocalBlobs:
    """An in-process blob store in ``cache_dir``: one upstream download per digest.

    Blobs are fetched with ``session``, hashed while written, and renamed to their final name
    only if the sha256 matches; a mismatch deletes the partial file and fails every reader.
    """

    def __init__(self, cache_dir: str | Path, session: aiohttp.ClientSession) -> None:
        self._dir = Path(cache_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._session = session
        self._active: dict[str, _Download] = {}
        self._starting: dict[str, asyncio.Future[_Download]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters = {"bytes_from_upstream": 0, "bytes_from_peers": 0, "blobs_fetched": 0}

    def _path(self, digest: Digest) -> Path:
        return self._dir / digest.task_id

    async def cached_length(self, digest: Digest) -> int | None:
        """Length of the complete blob file, or None."""
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None

    async def local_path(self, digest: Digest) -> Path | None:
        """The complete blob file, if there."""
        path = self._path(digest)
        return path if path.is_file() else None

    async def open(self, digest: Digest, source: SourceFactory) -> BlobHandle:
        """A handle on the cached file, the running download, or a new download."""
        key = digest.task_id
        if key in self._active:
            return _LocalHandle(self._active[key])
        length = await self.cached_length(digest)
        if length is not None:
            return _CompleteHandle(self._path(digest), length)
        starting = self._starting.get(key)
        if starting is not None:
            return _LocalHandle(await asyncio.shield(starting))
        return _LocalHandle(await self._start(digest, source))

    async def _start(self, digest: Digest, source: SourceFactory) -> _Download:
        key = digest.task_id
        future: asyncio.Future[_Download] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        try:
            src = await source()
            download = _Download(self._path(digest), src.length)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._starting[key]
        self._active[key] = download
        future.set_result(download)
        task = asyncio.create_task(self._fetch(digest, src, download))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return download

    async def _fetch(self, digest: Digest, src: BlobSource, d: _Download) -> None:
        error: BaseException | None = None
        try:
            await self._copy(src, d)
            if d.received != d.length or d.sha.hexdigest() != digest.hex:
                raise BlobDigestMismatch(f"upstream bytes for {digest} do not match the digest")
            os.replace(d.part, d.final)
            self._counters["blobs_fetched"] += 1
        except Exception as exc:
            error = exc
        except BaseException:
            error = UpstreamError("blob download cancelled")
            raise
        finally:
            if error is not None:
                with contextlib.suppress(FileNotFoundError):
                    d.part.unlink()
            self._active.pop(digest.task_id, None)
            await d.finish(error)

    async def _copy(self, src: BlobSource, d: _Download) -> None:
        with upstream_failure("blob download failed"):
            async with self._session.get(src.url, headers=src.headers) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"upstream answered {resp.status} for a blob")
                async for chunk in resp.content.iter_chunked(1 << 20):
                    if d.received + len(chunk) > d.length:
                        raise BlobDigestMismatch("upstream sent more bytes than the blob's length")
                    assert d.fd is not None
                    os.pwrite(d.fd, chunk, d.received)
                    d.sha.update(chunk)
                    self._counters["bytes_from_upstream"] += len(chunk)
                    await d.advance(len(chunk))

    def stats(self) -> dict[str, int]:
        """Counters since start."""
        return dict(self._counters)


class _CompleteHandle:
    """A verified blob file on disk."""

    def __init__(self, path: Path, length: int) -> None:
        self._path, self.length, self.cut = path, length, Cut(length, PIECE_SIZE)

    async def piece(self, index: int) -> Piece:
        start, end = self.cut.bounds(index)
        return FileSpan(self._path, start, end - start)

    async def verify(self) -> None:
        return None

    def close(self) -> None:
        return None
