"""A blob streamed to one response and kept nowhere: what the mirror serves when its node
cannot keep the blob (no room for it in the node's cache, a cache it cannot write).

The pieces come from the nodes that hold the whole blob, if the scheduler knows of such nodes
(the registry is not asked again), else from one GET of the blob upstream. The runtime need
not fall back to the registry itself (containerd with ``--no-fallback``, CRI-O or podman with
no location fallback): the mirror still answers with the right bytes. The blob is read whole,
from its first byte, whatever range the client asked for, so that its sha256 is checked before
the response's last bytes are sent, as for any other blob.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from ray.exceptions import OwnerDiedError, RayActorError, RayTaskError

from rayfly.actors.links import Links, ParentGone
from rayfly.actors.piece_reads import unbox
from rayfly.proxy.blobs import BlobSource, SourceFactory
from rayfly.proxy.neterrors import upstream_failure
from rayfly.proxy.oci import BlobDigestMismatch, Digest, UpstreamError
from rayfly.task import Cut

# No overall deadline: a large layer from a slow registry may take longer than any; a read that
# stalls this long fails.
READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
READ_AHEAD = 2
log = logging.getLogger(__name__)

ReadPiece = Callable[[int], Awaitable[tuple[Any, bool]]]
"""Piece ``i`` of a blob, and whether it came from a peer (else from the upstream)."""


class PassThrough:
    """A blob as in-order pieces of ``cut`` from ``read`` (called once per piece, in order),
    each hashed as it arrives; :meth:`verify` reads what the client did not ask for and checks
    the digest. Counts the bytes read from peers and from the upstream."""

    def __init__(
        self, digest: Digest, cut: Cut, read: ReadPiece, close: Callable[[], None]
    ) -> None:
        self._digest, self._read, self._close = digest, read, close
        self.length, self.cut = cut.length, cut
        self._sha = hashlib.sha256()
        self._next = 0
        self.bytes_from_peers = self.bytes_from_upstream = 0

    async def _read_next(self) -> memoryview:
        index = self._next
        start, end = self.cut.bounds(index)
        got, from_peer = await self._read(index)
        data = memoryview(got).cast("B")
        if len(data) != end - start:
            msg = f"piece {index} of blob {self._digest} has {len(data)} bytes, not {end - start}"
            raise UpstreamError(msg)
        await asyncio.to_thread(self._sha.update, data)  # off the event loop: 4 MiB is ~3 ms
        self._next += 1
        if from_peer:
            self.bytes_from_peers += len(data)
        else:
            self.bytes_from_upstream += len(data)
        return data

    async def piece(self, index: int) -> memoryview:
        """Piece ``index``; pieces before it (a range that starts later) are read and hashed."""
        if index < self._next:
            raise UpstreamError(f"blob {self._digest}: piece {index} was already passed through")
        data = memoryview(b"")
        while self._next <= index:
            data = await self._read_next()
        return data

    async def verify(self) -> None:
        """Read the rest of the blob; BlobDigestMismatch unless it is the digest's bytes."""
        while self._next < self.cut.n_pieces:
            await self._read_next()
        if self._sha.hexdigest() != self._digest.hex:
            raise BlobDigestMismatch(f"bytes passed through for {self._digest} do not match it")

    def close(self) -> None:
        """Release the source (an upstream body not read to the end is not reused)."""
        self._close()


async def from_upstream(
    session: aiohttp.ClientSession, src: BlobSource, digest: Digest, cut: Cut
) -> PassThrough:
    """The blob from one GET of the whole of it at ``src`` (its auth headers, no range)."""
    with upstream_failure(f"blob {digest}: upstream unreachable"):
        response = await session.get(src.url, headers=src.headers, timeout=READ_TIMEOUT)
    if response.status != 200:
        response.release()
        raise UpstreamError(f"blob {digest}: upstream answered {response.status}")

    async def read(index: int) -> tuple[bytes, bool]:
        start, end = cut.bounds(index)
        try:
            with upstream_failure(f"blob {digest}: upstream read failed"):
                data = await response.content.readexactly(end - start)
        except asyncio.IncompleteReadError as exc:
            got = start + len(exc.partial)
            raise UpstreamError(
                f"blob {digest}: upstream sent {got} of {cut.length} bytes"
            ) from None
        if index == cut.n_pieces - 1 and await response.content.read(1):
            raise BlobDigestMismatch(f"upstream sent more than the {cut.length} bytes of {digest}")
        return data, False

    return PassThrough(digest, cut, read, response.close)


def upstream_pieces(
    session: aiohttp.ClientSession, source: SourceFactory, digest: Digest, cut: Cut
) -> ReadPiece:
    """Single pieces of the blob by ranged GETs upstream (``source()`` awaited once): what a
    pass-through from peers reads when no holder of a piece answers (a node that just died)."""
    found: list[asyncio.Future[BlobSource]] = []  # one HEAD for every piece read this way

    async def read(index: int) -> tuple[bytes, bool]:
        if not found:
            found.append(asyncio.ensure_future(source()))
        src = await asyncio.shield(found[0])
        start, end = cut.bounds(index)
        headers = {**src.headers, "Range": f"bytes={start}-{end - 1}"}
        try:
            with upstream_failure(f"blob {digest}: upstream read failed"):
                async with session.get(src.url, headers=headers, timeout=READ_TIMEOUT) as resp:
                    whole = resp.status == 200 and start == 0 and end == cut.length
                    if resp.status != 206 and not whole:
                        msg = f"blob {digest}: upstream answered {resp.status} to a range"
                        raise UpstreamError(msg)
                    return await resp.content.readexactly(end - start), False
        except asyncio.IncompleteReadError:
            raise UpstreamError(f"blob {digest}: upstream sent part of piece {index}") from None

    return read


class _FromPeers:
    """Pieces read from the peers that hold them, ``READ_AHEAD`` pieces ahead; a piece whose
    holder fails, or does not answer within ``timeout_s`` (a node cut off, not yet known
    dead), is asked of its next holder."""

    def __init__(
        self,
        task_id: str,
        holders: list[list[str]],
        links: Links,
        timeout_s: float,
        fallback: ReadPiece | None,
    ) -> None:
        self._task_id, self._holders, self._links = task_id, holders, links
        self._timeout_s, self._fallback = timeout_s, fallback
        self._pending: dict[int, asyncio.Task[tuple[Any, bool]]] = {}

    async def _one(self, index: int) -> tuple[Any, bool]:
        holders = self._holders[index]
        turn = index % len(holders)  # spread the pieces over the holders
        last: BaseException | None = None
        for peer_id in holders[turn:] + holders[:turn]:
            try:
                peer = await asyncio.to_thread(self._links.peer, peer_id)
                box = peer.read_piece.remote(self._task_id, index)
                _, data = await asyncio.wait_for(unbox(box), self._timeout_s)
                return data, True
            except (ParentGone, RayActorError, RayTaskError, OwnerDiedError, TimeoutError) as exc:
                self._links.forget(peer_id)
                last = exc
        if self._fallback is not None:
            what = "piece %d of %s: no holder answered (%s), read upstream"
            log.warning(what, index, self._task_id, last)
            return await self._fallback(index)
        raise UpstreamError(f"no node could serve piece {index} of {self._task_id}: {last}")

    async def read(self, index: int) -> tuple[Any, bool]:
        for ahead in range(index, min(len(self._holders), index + 1 + READ_AHEAD)):
            if ahead not in self._pending:
                self._pending[ahead] = asyncio.ensure_future(self._one(ahead))
        return await self._pending.pop(index)

    def close(self) -> None:
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()


def from_peers(
    digest: Digest,
    cut: Cut,
    holders: list[list[str]],
    links: Links,
    timeout_s: float = 60.0,
    fallback: ReadPiece | None = None,
) -> PassThrough:
    """The blob from the peers that hold it: ``holders[i]`` lists the nodes holding piece i;
    a holder gets ``timeout_s`` to answer for a piece (the peers' ``piece_timeout_s``). A piece
    no holder serves is read with ``fallback`` (:func:`upstream_pieces`), if given."""
    peers = _FromPeers(digest.task_id, holders, links, timeout_s, fallback)
    return PassThrough(digest, cut, peers.read, peers.close)
