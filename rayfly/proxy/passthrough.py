"""A blob streamed from the upstream to one response and kept nowhere: what the mirror serves
when its node cannot keep the blob (no room for it in the node's cache).

The runtime need not fall back to the registry itself (containerd with ``--no-fallback``,
CRI-O or podman with no location fallback): the mirror still answers with the right bytes. The
blob is read whole, from its first byte, whatever range the client asked for, so that its
sha256 is checked before the response's last bytes are sent, as for any other blob.
"""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp

from rayfly.proxy.blobs import BlobSource
from rayfly.proxy.oci import BlobDigestMismatch, Digest, UpstreamError
from rayfly.task import Cut

# No overall deadline: a large layer from a slow registry may take longer than any; a read that
# stalls this long fails.
READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)


class PassThrough:
    """The upstream's body of one blob as in-order pieces of ``cut``, each hashed as it is read;
    :meth:`verify` reads what the client did not ask for and checks the digest."""

    def __init__(self, response: aiohttp.ClientResponse, digest: Digest, cut: Cut) -> None:
        self._response, self._digest = response, digest
        self.length, self.cut = cut.length, cut
        self._sha = hashlib.sha256()
        self._next = 0
        self.bytes_read = 0

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, src: BlobSource, digest: Digest, cut: Cut
    ) -> PassThrough:
        """A GET of the whole blob at ``src`` (its auth headers, no range)."""
        try:
            response = await session.get(src.url, headers=src.headers, timeout=READ_TIMEOUT)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            msg = f"blob {digest}: upstream unreachable: {type(exc).__name__}"
            raise UpstreamError(msg) from None
        if response.status != 200:
            response.release()
            raise UpstreamError(f"blob {digest}: upstream answered {response.status}")
        return cls(response, digest, cut)

    async def _read_next(self) -> bytes:
        start, end = self.cut.bounds(self._next)
        try:
            data = await self._response.content.readexactly(end - start)
        except asyncio.IncompleteReadError as exc:
            got = start + len(exc.partial)
            msg = f"blob {self._digest}: upstream sent {got} of {self.length} bytes"
            raise UpstreamError(msg) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            msg = f"blob {self._digest}: upstream read failed: {type(exc).__name__}"
            raise UpstreamError(msg) from None
        await asyncio.to_thread(self._sha.update, data)  # off the event loop: 4 MiB is ~3 ms
        self._next += 1
        self.bytes_read += len(data)
        return data

    async def piece(self, index: int) -> memoryview:
        """Piece ``index``; pieces before it (a range that starts later) are read and hashed."""
        if index < self._next:
            raise UpstreamError(f"blob {self._digest}: piece {index} was already passed through")
        data = b""
        while self._next <= index:
            data = await self._read_next()
        return memoryview(data)

    async def verify(self) -> None:
        """Read the rest of the blob; BlobDigestMismatch unless it is the digest's bytes."""
        while self._next < self.cut.n_pieces:
            await self._read_next()
        extra = await self._response.content.read(1)
        if extra or self._sha.hexdigest() != self._digest.hex:
            raise BlobDigestMismatch(f"upstream bytes for {self._digest} do not match the digest")

    def close(self) -> None:
        """Drop the upstream connection (a body not read to the end is not reused)."""
        self._response.close()
