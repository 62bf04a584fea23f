"""The floor under rayfly's per-piece CPU: the Ray calls its design makes per piece, and nothing
else (issue 9).

For every piece a node receives, rayfly's design needs at least: one actor call to the parent,
which makes a new object holding the piece for this child (one location: see
``Peer._serve_bytes``); and the child's ``get`` of it, a pull between the two nodes' object
stores. :func:`run` moves a file that way with no disk, no digest and no scheduler: node 0's
holder reads the file from the origin into memory, and every other node's holder asks it for
each piece, ``concurrency`` at a time, copying each into one of ``concurrency`` reused buffers
(as a write from a peer's buffer pool would). The parent ``ray.put`` s the copy and answers
``[reference]``, or with ``by_value`` answers with the bytes (the call's return object is the
copy). With ``call_per_piece`` each receiver also makes one empty call per piece to node 0's
holder, the floor of a scheduler exchange per piece.

``python -m bench.core cluster --methods rayfly,ray_pieces --piece-size 1MiB`` runs it beside
rayfly on the same cluster (methods ``ray_pieces``, ``ray_pieces_nocall``, ``ray_pieces_value``);
the CPU of these holders is reported as ``peers_cpu_s``. The slope of CPU against the number of
pieces (the same bytes cut into 4, 2 and 1 MiB pieces) is the per-piece cost; the bytes' own
cost cancels out.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bench.broadcast.driver import fetch_into_array

PIECE = 4 << 20


@ray.remote(num_cpus=0)
class Holder:
    """One node's end: the source of every piece (node 0) or a receiver."""

    def __init__(self) -> None:
        self.data: np.ndarray | None = None

    def pid(self) -> int:
        """This actor's process id (for its CPU time)."""
        return os.getpid()

    def load(self, url: str) -> int:
        """Read the whole file at ``url`` into memory (node 0)."""
        self.data = fetch_into_array(url)
        return int(self.data.nbytes)

    def piece(self, start: int, end: int) -> list[ray.ObjectRef]:
        """A new object holding bytes ``start:end``, for one child (``[reference]``): the put
        is the one copy, as a peer's ``put_piece`` of a piece it keeps."""
        assert self.data is not None
        return [ray.put(self.data[start:end])]

    def piece_value(self, start: int, end: int) -> np.ndarray:
        """Bytes ``start:end`` as the call's return value: an object the caller owns, made in
        this node's store (the same one copy as :meth:`piece`'s put), with no reference
        handed over."""
        assert self.data is not None
        return self.data[start:end]

    def noop(self) -> None:
        """An empty call (a scheduler exchange's floor)."""

    async def receive(
        self, parent: Any, size: int, piece_size: int, concurrency: int, peer: Any, by_value: bool
    ) -> float:
        """Get every piece from ``parent``, ``concurrency`` at a time, each copied into one of
        ``concurrency`` reused buffers (as a peer writes from its pool); the time it ended."""
        free = [np.empty(piece_size, np.uint8) for _ in range(concurrency)]
        gate = asyncio.Semaphore(concurrency)

        async def one(start: int) -> None:
            end = min(size, start + piece_size)
            async with gate:
                if by_value:
                    data = await parent.piece_value.remote(start, end)
                else:
                    data = await (await parent.piece.remote(start, end))[0]
                buf = free.pop()
                buf[: end - start] = data
                del data
                free.append(buf)
                if peer is not None:
                    await peer.noop.remote()

        await asyncio.gather(*(one(s) for s in range(0, size, piece_size)))
        return time.time()


def holders(nodes: list[dict]) -> list[Any]:
    """A holder pinned to each node (reuse them across runs: their start is not a piece's)."""
    return [
        Holder.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote()
        for n in nodes
    ]


def run(
    actors: list[Any],
    url: str,
    piece_size: int,
    concurrency: int = 8,
    call_per_piece: bool = True,
    by_value: bool = False,
) -> float:
    """Move the file at ``url`` from the first holder to the others; seconds, load included."""
    t0 = time.time()
    size = ray.get(actors[0].load.remote(url))
    peer = actors[0] if call_per_piece else None
    ends = ray.get(
        [
            a.receive.remote(actors[0], size, piece_size, concurrency, peer, by_value)
            for a in actors[1:]
        ]
    )
    return max(ends) - t0
