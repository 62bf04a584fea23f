"""The mirror sends pieces verified in a file on the node from that file (``sendfile``).

A real aiohttp server on loopback with a backend whose handles give the first piece in memory
(as a piece kept hot is) and the others as :class:`FileSpan` s of one file, as the P2P backend
does for pieces its peer verified in the node's store. No upstream is ever asked anything: the
backend holds the blob.
"""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayfly.proxy.blobs import BlobHandle, FileSpan, Piece, SourceFactory
from rayfly.proxy.oci import Digest
from rayfly.proxy.server import Mirror
from rayfly.task import Cut
from tests.support.mirror import start_local_mirror
from tests.support.registry import LoopThread, sha256_digest

PIECE = 1 << 20
LENGTH = 5 * PIECE + 12345  # six pieces, the last one short


class _SpanHandle:
    def __init__(self, path: Path, length: int, verified: list[int]) -> None:
        self._path, self.length, self.cut = path, length, Cut(length, PIECE)
        self._verified = verified

    async def piece(self, index: int) -> Piece:
        start, end = self.cut.bounds(index)
        if index == 0:
            with open(self._path, "rb") as f:
                return memoryview(f.read(end - start))
        return FileSpan(self._path, start, end - start)

    async def verify(self) -> None:
        self._verified.append(1)  # each verify() of the P2P backend is a call to the peer

    def close(self) -> None:
        return None


class _SpanBlobs:
    """Every blob is the one file, of ``length`` bytes (the file may be shorter)."""

    def __init__(self, path: Path, length: int) -> None:
        self.path, self.length = path, length
        self.verified: list[int] = []

    async def cached_length(self, digest: Digest) -> int | None:
        return self.length

    async def open(self, digest: Digest, source: SourceFactory) -> BlobHandle:
        return _SpanHandle(self.path, self.length, self.verified)

    async def local_path(self, digest: Digest) -> Path | None:
        return None  # never the whole-file response: every GET streams the handle's pieces

    def stats(self) -> dict[str, int]:
        return {}


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Mirror, int, bytes, Path]]:
    data = os.urandom(LENGTH)
    path = tmp_path / "blob"
    path.write_bytes(data)
    loop = LoopThread()
    # an upstream the route can name; nothing ever connects to it (the backend holds the blob)
    up = "127.0.0.1:9"
    blobs = _SpanBlobs(path, LENGTH)
    running = start_local_mirror(loop, tmp_path, {up: f"http://{up}"}, up, blobs=lambda _: blobs)
    yield running.mirror, running.port, data, path
    running.stop()
    loop.stop()


def _get(port: int, digest: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/v2/library/blob/blobs/{digest}", headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_a_blob_streams_from_memory_then_from_its_file(served):
    mirror, port, data, _ = served
    status, headers, body = _get(port, sha256_digest(data))
    assert status == 200
    assert int(headers["Content-Length"]) == LENGTH
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert mirror.stats.bytes_served == LENGTH and mirror.stats.errors == 0


def test_the_connection_serves_the_next_request_after_file_spans(served):
    """The kernel's bytes bypass aiohttp's writer: the response must still end where its
    Content-Length says, and the kept-alive connection answer the next request."""
    _, port, data, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for span in ("bytes=0-", f"bytes={PIECE}-{2 * PIECE + 5}"):
            conn.request(
                "GET", f"/v2/library/blob/blobs/{sha256_digest(data)}", headers={"Range": span}
            )
            resp = conn.getresponse()
            first, _, last = span.removeprefix("bytes=").partition("-")
            assert resp.read() == data[int(first) : int(last) + 1 if last else None]
            assert resp.getheader("Connection", "keep-alive").lower() != "close"
    finally:
        conn.close()


@pytest.mark.parametrize(
    "first,last",
    [
        (PIECE - 10, 3 * PIECE + 10),  # from the piece in memory into three spans
        (2 * PIECE + 7, 2 * PIECE + 99),  # inside one span
        (4 * PIECE - 1, LENGTH - 1),  # across the short last piece
    ],
)
def test_ranges_across_memory_and_file_spans(served, first, last):
    mirror, port, data, _ = served
    status, headers, body = _get(port, sha256_digest(data), {"Range": f"bytes={first}-{last}"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {first}-{last}/{LENGTH}"
    assert body == data[first : last + 1]
    assert mirror.blobs.verified == [1]  # the blob is checked once per response, one piece or many


def test_a_file_shorter_than_its_pieces_aborts_the_response(served):
    mirror, port, data, path = served
    os.truncate(path, 3 * PIECE + 100)  # pieces 3 to 5 are no longer all there
    with pytest.raises(http.client.IncompleteRead) as got:
        _get(port, sha256_digest(data))
    assert bytes(got.value.partial) == data[: 3 * PIECE + 100]
    assert mirror.stats.errors == 1 and mirror.stats.bytes_served == 0
