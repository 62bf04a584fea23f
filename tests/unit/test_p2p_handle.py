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

from rayfly.errors import RayflyError
from rayfly.proxy.oci import Digest
from rayfly.proxy.p2p import P2PBlobs, _P2PHandle
from rayfly.task import Cut, TaskInfo

PIECE = 1 << 16


class _Method:
    def __init__(self, peer: _Peer, name: str) -> None:
        self._peer, self._name = peer, name

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        self._peer.calls.append(self._name)
        if getattr(self._peer, "dead", False):
            return asyncio.ensure_future(_died())
        return asyncio.ensure_future(getattr(self._peer, "_" + self._name)(*args))


async def _died() -> Any:
    raise RayActorError()


class _Peer:
    """Holds a blob whose download completes when :attr:`stored` is set; ``prepare`` is
    answered once :attr:`answer_prepare` is set, and until it is answered the blob's pieces are
    "not prepared" (as on a peer that started a piece request before the task's prepare)."""

    def __init__(self, data: bytes, fail_first_completion: Exception | None = None) -> None:
        self.data, self.calls = data, []
        self.stored = asyncio.Event()
        self.answer_prepare = asyncio.Event()
        self.answer_prepare.set()
        self.refuse: Exception | None = None
        self.prepared = False
        self._fail = fail_first_completion
        self.prepare = _Method(self, "prepare")
        self.wait_piece = _Method(self, "wait_piece")
        self.wait_complete = _Method(self, "wait_complete")

    async def _prepare(self, task: TaskInfo, concurrency: int | None) -> None:
        await self.answer_prepare.wait()
        if self.refuse is not None:
            raise RayTaskError("prepare", "", self.refuse)
        self.prepared = True

    async def _wait_piece(self, task_id: str, index: int, from_file: bool) -> list[Any]:
        if not self.prepared:
            raise RayTaskError("wait_piece", "", RayflyError(f"task {task_id} is not prepared"))
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


def _digest(peer: _Peer) -> Digest:
    return Digest("sha256", hashlib.sha256(peer.data).hexdigest())


async def _no_upstream() -> Any:
    raise AssertionError("the upstream is not asked")


def _opened(peer: _Peer, n: int) -> tuple[P2PBlobs, list[_P2PHandle], Digest]:
    peer.prepared = True
    blobs, digest = P2PBlobs(peer, scheduler=None), _digest(peer)
    cut = Cut(len(peer.data), PIECE)
    return blobs, [_P2PHandle(blobs, digest, cut, _no_upstream) for _ in range(n)], digest


def test_the_completion_is_asked_once_per_blob_when_it_opens() -> None:
    """Two responses of one blob: one ``wait_complete`` to the peer, sent when the first opens
    (before any piece), answered once the blob is stored; both verify against it."""

    async def run() -> None:
        peer = _Peer(os.urandom(3 * PIECE + 5))
        blobs, handles, _ = _opened(peer, 2)
        await asyncio.sleep(0)
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


class _Scheduler:
    """Answers ``held`` with the blob's task: other nodes hold it, the upstream is not asked."""

    def __init__(self, task: TaskInfo) -> None:
        self.task, self.calls = task, []
        self.held = _Method(self, "held")

    async def _held(self, task_id: str) -> TaskInfo:
        return self.task


def _backend(peer: _Peer, get_peer: Any = None) -> tuple[P2PBlobs, Digest]:
    digest = _digest(peer)
    url = "https://registry.invalid/v2/a/blobs/" + str(digest)
    task = TaskInfo(digest.task_id, url, len(peer.data), PIECE, expected_sha256=digest.hex)
    return P2PBlobs(peer, _Scheduler(task), get_peer=get_peer), digest


def test_open_sends_prepare_without_waiting_and_the_first_piece_waits_for_its_answer() -> None:
    """``open`` returns with the task's ``prepare`` still unanswered (one round trip less per
    blob). A piece request the peer starts first is refused as "not prepared" and sent again
    as soon as ``prepare`` is answered: once, not polled. The blob's completion is asked only
    after that answer (the peer would refuse it before)."""

    async def run() -> None:
        peer = _Peer(os.urandom(2 * PIECE + 3))
        peer.answer_prepare.clear()
        blobs, digest = _backend(peer)
        async with asyncio.timeout(5):
            handle = await blobs.open(digest, _no_upstream)
        first = asyncio.ensure_future(handle.piece(0))
        await asyncio.sleep(0.1)
        assert not first.done()
        assert peer.calls == ["prepare", "wait_piece"]  # refused, and not asked again yet
        peer.answer_prepare.set()
        async with asyncio.timeout(5):
            assert bytes(await first) == peer.data[:PIECE]
            for index in (1, 2):
                got = await handle.piece(index)
                assert bytes(got) == peer.data[index * PIECE : (index + 1) * PIECE]
            peer.stored.set()
            await handle.verify()
        assert peer.calls[:4] == ["prepare", "wait_piece", "wait_complete", "wait_piece"]
        assert peer.calls.count("wait_complete") == 1
        handle.close()

    asyncio.run(run())


def test_a_task_the_peer_refuses_fails_the_first_piece_with_the_reason() -> None:
    """A ``prepare`` the peer refused: the first piece raises the peer's reason at once, not
    "not prepared" after the grace period."""

    async def run() -> None:
        peer = _Peer(os.urandom(PIECE))
        peer.refuse = RayflyError("task refused: its cut is not this node's")
        blobs, digest = _backend(peer)
        handle = await blobs.open(digest, _no_upstream)
        with pytest.raises(RayflyError, match="task refused"):
            async with asyncio.timeout(2):
                await handle.piece(0)
        handle.close()

    asyncio.run(run())


def test_a_peer_that_died_before_the_first_piece_is_replaced_and_sent_the_task() -> None:
    """The node's peer died with ``open``'s ``prepare`` out: the first piece request finds it,
    the mirror looks the peer up again, sends the new one the task, and the response goes on
    from it; its completion is asked of the new peer too."""

    async def run() -> None:
        data = os.urandom(PIECE + 9)
        dead, successor = _Peer(data), _Peer(data)
        dead.dead = True
        blobs, digest = _backend(dead, get_peer=lambda: successor)
        async with asyncio.timeout(5):
            handle = await blobs.open(digest, _no_upstream)
            assert bytes(await handle.piece(0)) == data[:PIECE]
            assert bytes(await handle.piece(1)) == data[PIECE:]
            successor.stored.set()
            await handle.verify()
        assert dead.calls == ["prepare", "wait_piece", "wait_complete"]
        assert successor.calls[:2] == ["prepare", "wait_piece"]
        assert "wait_complete" in successor.calls
        handle.close()

    asyncio.run(run())
