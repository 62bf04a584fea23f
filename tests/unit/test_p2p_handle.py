"""The P2P backend's handle over a stand-in for the node's peer actor (its methods' ``.remote``
give awaitables, as actor handles give references): when it asks the peer for what."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
from typing import Any

import numpy as np
import pytest
from ray.exceptions import RayActorError, RayTaskError

from rayfly.proxy.oci import Digest
from rayfly.proxy.p2p import P2PBlobs, _P2PHandle
from rayfly.task import Cut

PIECE = 1 << 16


class _Method:
    def __init__(self, peer: _Peer, name: str) -> None:
        self._peer, self._name = peer, name

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        self._peer.calls.append(self._name)
        return asyncio.ensure_future(getattr(self._peer, "_" + self._name)(*args))


class _Peer:
    """Holds a blob whose download completes when :attr:`stored` is set."""

    def __init__(self, data: bytes, fail_first_completion: Exception | None = None) -> None:
        self.data, self.calls = data, []
        self.stored = asyncio.Event()
        self._fail = fail_first_completion
        self.wait_piece = _Method(self, "wait_piece")
        self.wait_complete = _Method(self, "wait_complete")

    async def _wait_piece(self, task_id: str, index: int, from_file: bool) -> list[Any]:
        piece = np.frombuffer(self.data[index * PIECE : (index + 1) * PIECE], dtype=np.uint8)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(piece)
        return [done]

    async def _wait_complete(self, task_id: str) -> dict[str, Any]:
        await self.stored.wait()
        if self._fail is not None:
            error, self._fail = self._fail, None
            raise error
        digest = hashlib.sha256(self.data).hexdigest()
        return {"sha256": digest, "bytes": len(self.data), "bytes_from_peers": len(self.data)}


def _opened(peer: _Peer, n: int) -> tuple[P2PBlobs, list[_P2PHandle], Digest]:
    blobs = P2PBlobs(peer, scheduler=None)
    digest = Digest("sha256", hashlib.sha256(peer.data).hexdigest())

    async def source() -> Any:
        raise AssertionError("the upstream is not asked")

    cut = Cut(len(peer.data), PIECE)
    return blobs, [_P2PHandle(blobs, digest, cut, source) for _ in range(n)], digest


def test_the_completion_is_asked_once_per_blob_when_it_opens() -> None:
    """Two responses of one blob: one ``wait_complete`` to the peer, sent when the first opens
    (before any piece), answered once the blob is stored; both verify against it."""

    async def run() -> None:
        peer = _Peer(os.urandom(3 * PIECE + 5))
        blobs, handles, _ = _opened(peer, 2)
        assert peer.calls == ["wait_complete"]
        for index in range(4):
            got = await handles[0].piece(index)
            assert bytes(got) == peer.data[index * PIECE : (index + 1) * PIECE]
        verifying = [asyncio.ensure_future(h.verify()) for h in handles]
        await asyncio.sleep(0.05)
        assert not any(v.done() for v in verifying)  # not stored yet
        peer.stored.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*verifying)
        assert peer.calls.count("wait_complete") == 1
        assert blobs.stats()["bytes_from_peers"] == len(peer.data)

    asyncio.run(run())


@pytest.mark.parametrize(
    "failure",
    [
        RayActorError(),  # the peer died with the request out: its successor is asked
        # the shared request waited for a download that failed, and that a later one replaced
        # (the blob opened again meanwhile): the download there is now is asked about
        RayTaskError("wait_complete", "", ValueError("an earlier download failed")),
    ],
    ids=["peer-died", "earlier-download-failed"],
)
def test_a_failed_completion_request_is_asked_again(failure: Exception) -> None:
    """``verify`` asks again when the shared completion request failed, and passes on the
    second answer."""

    async def run() -> None:
        peer = _Peer(os.urandom(PIECE), fail_first_completion=failure)
        _, (handle,), _ = _opened(peer, 1)
        peer.stored.set()
        async with asyncio.timeout(5):
            await handle.verify()
        assert peer.calls == ["wait_complete", "wait_complete"]

    asyncio.run(run())


def test_a_completion_nobody_awaits_is_still_read(caplog) -> None:
    """A response that never verifies (its client left; the blob passed through) leaves no
    failed completion unread: nothing reports it as an error nobody retrieved."""

    async def run() -> None:
        peer = _Peer(os.urandom(PIECE), fail_first_completion=RuntimeError("download failed"))
        _, (handle,), _ = _opened(peer, 1)
        peer.stored.set()
        await asyncio.sleep(0.05)
        handle.close()

    asyncio.run(run())
    gc.collect()
    assert "never retrieved" not in caplog.text
