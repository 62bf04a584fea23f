"""Where a piece's bytes come from: the origin, the store of a parent on this host (read from
its file), or a parent's actor (through Ray's object store)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorUnavailableError, OwnerDiedError, RayActorError, RayTaskError

from rayfly.actors.links import Links, ParentGone
from rayfly.config import PeerConfig
from rayfly.errors import RayflyError
from rayfly.piecemem import BUFFERS
from rayfly.source_pack import read_task_range
from rayfly.storage import PieceStore
from rayfly.task import TaskInfo

log = logging.getLogger(__name__)


def put_piece(data: Any) -> ray.ObjectRef:
    """Put a piece's bytes into this node's object store as a uint8 array (no copy to make
    it one). Ray stores an array out of band: copied once into the store, and every ``get``
    of it, on any node, is a read-only view of that node's copy. ``bytes`` or a
    ``memoryview`` would be packed inline by msgpack instead: one more copy on the put, and
    two on every get (the object, then the bytes unpacked from it) into fresh process memory,
    which the kernel must fault in and zero — a piece kept to serve onwards would then be a
    private copy, not a view that keeps this node's copy in its store."""
    array = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    ref: ray.ObjectRef = ray.put(array)
    return ref


def put_from_store(
    store: PieceStore, task_id: str, index: int, flip: bool = False
) -> ray.ObjectRef:
    """A piece read from ``store``'s disk, verified, put into the object store
    (:func:`put_piece`). The read lands in a pooled buffer, given back once the put has copied
    it: a new array per serve would be memory the kernel must fault in and zero each time.
    ``flip``: the test-only fault of ``RAYFLY_TEST_CORRUPT_SERVED``, a byte flipped after the
    check."""
    buf = BUFFERS.take(store.piece_length(task_id, index))
    try:
        data = store.read_piece(task_id, index, buf, True)
        if flip:
            data[len(data) // 2] ^= 0xFF
        return put_piece(data)
    finally:
        BUFFERS.give(buf)


async def unbox(box: Any) -> tuple[Any, Any]:
    """A parent's answer (``box``, the call's return object): the reference of the piece's
    object and its bytes pulled here. The parent answers with the bytes (the return object is
    the piece's) or with ``[reference]`` to an object it made before (see ``Peer.read_piece``)."""
    value = await box
    if isinstance(value, list):
        return value[0], await value[0]
    return box, value


@dataclass
class Read:
    """A piece's bytes; ``ref``: their object reference when a parent's actor handed them
    over (kept to serve them onwards); ``digest``: set when they were checked against it."""

    data: Any
    ref: Any = None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class KeptPiece:
    """A piece a peer keeps to serve again: its object reference, and for one received from a
    parent the bytes pulled here (``pinned``: a view of this node's copy in the object store,
    which keeps that copy there while the view lives). A reference alone does not: a copy
    Ray evicted would be pulled back from another node at each serve."""

    ref: Any
    pinned: Any = None


class PieceReader:
    """Reads the bytes of one assignment for a node's downloads.

    ``local_ip``: this node's IP, to read pieces of same-host parents whose store this process
    sees straight from their files (None: never); ``disk_io`` runs blocking reads off the loop.
    """

    def __init__(
        self,
        config: PeerConfig,
        links: Links,
        local_ip: str | None,
        disk_io: Callable[..., Awaitable[Any]],
    ):
        self.config = config
        self.links = links
        self.local_ip = local_ip
        self.disk_io = disk_io
        self.origin_pool = ThreadPoolExecutor(64, thread_name_prefix="rayfly-origin")
        self.pieces_read_local = 0

    async def _from_parent(self, task: TaskInfo, parent: str, index: int) -> tuple[Any, Any]:
        """Piece ``index`` from ``parent``'s peer: its object reference and the bytes, pulled
        into this node's object store (the reference is kept to serve the piece onwards).

        A cached handle may point at an actor that died and was replaced on the same node: on an
        actor error the handle is looked up again once, so only a parent that is really gone is
        reported dead. Every object a parent hands out by reference is one its actor owns, so
        a reference whose owner died comes from a parent actor replaced since it answered: the
        parent (its new actor) is asked once more.
        """
        for attempt in range(2):
            box = self.links.peer(parent).read_piece.remote(task.task_id, index)
            try:
                return await asyncio.wait_for(unbox(box), self.config.piece_timeout_s)
            except ActorUnavailableError:
                raise
            except RayActorError:
                self.links.forget(parent)
                if attempt:
                    raise
            except OwnerDiedError:
                self.links.forget(parent)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def read(self, task: TaskInfo, a: Any) -> Read:
        """The bytes of assignment ``a``."""
        start, end = task.piece_range(a.piece)
        if a.parent is None:
            return Read(await read_task_range(task, start, end, self.origin_pool))
        data = await self._read_local(task, a) if self.local_ip and a.digest else None
        if data is not None:
            return Read(data, digest=a.digest)
        ref, data = await self._from_parent(task, a.parent, a.piece)
        return Read(data, ref=ref)

    async def _read_local(self, task: TaskInfo, a: Any) -> np.ndarray | None:
        """Piece ``a.piece`` read straight from the file of a parent on this host whose piece
        store this process sees, checked against its digest; None when that cannot be done
        (another host, a store out of sight, a file gone or not matching): the caller then
        asks the parent, which checks its own copy and drops it if it is corrupt."""
        try:
            where = self.links.store_of(a.parent, self.local_ip or "")
            root = await asyncio.wait_for(where, self.config.piece_timeout_s)
        except (RayActorError, RayTaskError, ParentGone, asyncio.TimeoutError):
            return None  # the parent's actor path reports what is wrong with it
        if root is None:
            return None
        start, end = task.piece_range(a.piece)
        buf = BUFFERS.take(end - start)
        try:
            data = await self.disk_io(
                PieceStore.read_range_at, root, task.task_id, start, end, a.digest, buf
            )
        except (OSError, RayflyError) as exc:
            log.info("piece %d: not read from %s's store (%s)", a.piece, a.parent, exc)
            BUFFERS.give(buf)
            return None
        self.pieces_read_local += 1
        return data
