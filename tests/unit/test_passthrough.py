"""A blob passed through from the upstream, against a real aiohttp server on loopback: pieces in
order, a range that starts later, and every way the upstream's bytes can be wrong."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from rayfly.actors.links import ParentGone
from rayfly.proxy.blobs import BlobSource
from rayfly.proxy.oci import BlobDigestMismatch, UpstreamError, digest_of
from rayfly.proxy.passthrough import PassThrough, from_peers, from_upstream, upstream_pieces
from rayfly.task import Cut

BLOB = os.urandom(10_000)
PIECE = 4096


@contextlib.asynccontextmanager
async def loopback(handler: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """The URL of ``/blob`` on a loopback server answering with ``handler``."""
    app = web.Application()
    app.router.add_get("/blob", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/blob"
    finally:
        await runner.cleanup()


def serve(body: bytes, status: int = 200) -> Callable[[Any], Awaitable[Any]]:
    """Run ``check(handle_factory)`` against a loopback server answering ``body``."""

    async def run(check: Callable[..., Awaitable[Any]]) -> Any:
        seen: list[dict[str, str]] = []

        async def blob(request: web.Request) -> web.Response:
            seen.append(dict(request.headers))
            return web.Response(body=body, status=status)

        async with loopback(blob) as url, aiohttp.ClientSession() as session:
            src = BlobSource(url, {"Authorization": "Bearer t"}, len(BLOB))

            async def opened() -> PassThrough:
                return await from_upstream(session, src, digest_of(BLOB), Cut(len(BLOB), PIECE))

            return await check(opened), seen

    return run


async def whole(handle: PassThrough) -> bytes:
    """Every piece of ``handle`` in order, checked, then closed."""
    try:
        parts = [bytes(await handle.piece(i)) for i in range(handle.cut.n_pieces)]
        await handle.verify()
        return b"".join(parts)
    finally:
        handle.close()


async def _all(opened: Callable[[], Awaitable[PassThrough]]) -> bytes:
    handle = await opened()
    got = await whole(handle)
    assert handle.bytes_from_upstream == len(BLOB) and handle.bytes_from_peers == 0
    return got


def test_pieces_arrive_in_order_with_the_blobs_bytes_and_the_auth_header() -> None:
    got, seen = asyncio.run(serve(BLOB)(_all))
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(BLOB).hexdigest()
    assert seen[0]["Authorization"] == "Bearer t" and "Range" not in seen[0]


def test_a_range_that_starts_later_still_reads_and_checks_the_whole_blob() -> None:
    async def later(opened: Callable[[], Awaitable[PassThrough]]) -> tuple[bytes, int]:
        handle = await opened()
        try:
            second = bytes(await handle.piece(1))
            await handle.verify()  # the client wanted piece 1 only: the rest is read and hashed
            return second, handle.bytes_from_upstream
        finally:
            handle.close()

    (second, read), _ = asyncio.run(serve(BLOB)(later))
    assert second == BLOB[PIECE : 2 * PIECE] and read == len(BLOB)


@pytest.mark.parametrize(
    "body",
    [BLOB[:-1] + bytes([BLOB[-1] ^ 1]), BLOB + b"x"],
    ids=["one-bit-flipped", "one-byte-more"],
)
def test_wrong_bytes_fail_the_check_before_the_last_piece_counts(body: bytes) -> None:
    with pytest.raises(BlobDigestMismatch, match=r"do not match it|sent more than the 10000"):
        asyncio.run(serve(body)(_all))


def test_a_short_body_names_how_many_bytes_came() -> None:
    with pytest.raises(UpstreamError, match=f"upstream sent 9999 of {len(BLOB)} bytes"):
        asyncio.run(serve(BLOB[:-1])(_all))


def test_an_upstream_error_status_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="upstream answered 404"):
        asyncio.run(serve(b"{}", status=404)(_all))


def test_a_piece_already_passed_cannot_be_asked_again() -> None:
    async def back(opened: Callable[[], Awaitable[PassThrough]]) -> None:
        handle = await opened()
        try:
            await handle.piece(1)
            await handle.piece(0)
        finally:
            handle.close()

    with pytest.raises(UpstreamError, match="piece 0 was already passed through"):
        asyncio.run(serve(BLOB)(back))


class _Peer:
    """A stand-in for a peer actor handle: ``read_piece.remote`` gives a piece, fails, or
    (``hangs``) never answers, as a node cut off from this one."""

    def __init__(self, fails: bool, hangs: bool = False) -> None:
        self.fails, self.hangs, self.asked = fails, hangs, []
        self.read_piece = self

    async def remote(self, task_id: str, index: int) -> Any:
        self.asked.append(index)
        if self.fails:
            raise ParentGone("gone")
        if self.hangs:
            await asyncio.sleep(3600)
        start, end = Cut(len(BLOB), PIECE).bounds(index)
        return np.frombuffer(BLOB[start:end], dtype=np.uint8)


class _Links:
    def __init__(self, peers: dict[str, _Peer]) -> None:
        self.peers, self.forgotten = peers, []

    def peer(self, peer_id: str) -> _Peer:
        return self.peers[peer_id]

    def forget(self, peer_id: str) -> None:
        self.forgotten.append(peer_id)


def test_pieces_from_peers_spread_over_holders_and_a_failing_holder_is_passed_over() -> None:
    """Ray actors stand in here (the e2e test runs real ones): the pass-through from peers
    asks each piece's holders in turn, skips one that fails, and checks the whole blob."""
    links = _Links({"a": _Peer(fails=False), "b": _Peer(fails=True)})
    cut = Cut(len(BLOB), PIECE)
    holders = [["a", "b"]] * cut.n_pieces

    handle = from_peers(digest_of(BLOB), cut, holders, links)  # type: ignore[arg-type]
    assert asyncio.run(whole(handle)) == BLOB and handle.bytes_from_peers == len(BLOB)
    assert sorted(links.peers["a"].asked) == list(range(cut.n_pieces))
    assert links.peers["b"].asked == [1] and links.forgotten == ["b"]  # b's turn: piece 1


def test_a_piece_no_holder_can_serve_is_an_upstream_error() -> None:
    links = _Links({"b": _Peer(fails=True)})
    cut = Cut(len(BLOB), PIECE)
    handle = from_peers(digest_of(BLOB), cut, [["b"]] * cut.n_pieces, links)  # type: ignore[arg-type]
    with pytest.raises(UpstreamError, match="no node could serve piece 0"):
        asyncio.run(handle.piece(0))
    handle.close()


def test_a_holder_that_does_not_answer_is_passed_over_after_the_timeout() -> None:
    links = _Links({"a": _Peer(fails=False), "b": _Peer(fails=False, hangs=True)})
    cut = Cut(len(BLOB), PIECE)
    holders = [["b", "a"]] * cut.n_pieces  # b first for piece 0

    handle = from_peers(digest_of(BLOB), cut, holders, links, timeout_s=0.2)  # type: ignore[arg-type]
    assert asyncio.run(asyncio.wait_for(whole(handle), 10)) == BLOB
    assert "b" in links.forgotten and 0 in links.peers["b"].asked


def test_a_piece_no_holder_serves_is_read_upstream_by_range() -> None:
    """The only holder died (the scheduler does not know yet): each piece is read upstream
    with a ranged GET, and the blob still checks out."""
    links = _Links({"b": _Peer(fails=True)})
    cut = Cut(len(BLOB), PIECE)
    ranges: list[str] = []
    heads: list[int] = []

    async def ranged(request: web.Request) -> web.Response:
        ranges.append(request.headers["Range"])
        first, last = map(int, request.headers["Range"].removeprefix("bytes=").split("-"))
        return web.Response(body=BLOB[first : last + 1], status=206)

    async def run() -> tuple[bytes, int, int]:
        async with loopback(ranged) as url, aiohttp.ClientSession() as session:
            src = BlobSource(url, {}, len(BLOB))

            async def source() -> BlobSource:
                heads.append(1)
                await asyncio.sleep(0.01)  # a HEAD takes a while: read-ahead pieces wait for it
                return src

            fallback = upstream_pieces(session, source, digest_of(BLOB), cut)
            holders = [["b"]] * cut.n_pieces
            handle = from_peers(digest_of(BLOB), cut, holders, links, 5, fallback)  # type: ignore[arg-type]
            return await whole(handle), handle.bytes_from_upstream, handle.bytes_from_peers

    got, upstream, peers = asyncio.run(run())
    assert got == BLOB and upstream == len(BLOB) and peers == 0 and len(heads) == 1
    assert sorted(ranges) == sorted(f"bytes={a}-{b - 1}" for a, b in map(cut.bounds, range(3)))
