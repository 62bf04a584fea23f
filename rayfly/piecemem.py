"""Pieces kept in memory, bounded by bytes: what a peer holds on to so that bytes it just
received are not read back from disk (pure: no Ray, no files).

- :class:`HashWindow`: pieces that arrived ahead of the task's in-order sha256, kept until the
  hash reaches them; a piece that does not fit is read back from the store at its turn, and
  while the hash is what holds the window back, the pieces past it wait to be fetched.
- :class:`HotPieces`: a least-recently-used map of pieces a peer can serve again without a disk
  read or a new copy (for the peer: Ray object references of received and served pieces);
  :func:`serve_memory`, how many bytes of them by default.
- :class:`Pins`: the bytes of the node's object store that received pieces' views pin.
- :class:`BufferPool`: piece buffers handed back once their bytes are written and hashed, so
  that the next read lands in memory already mapped instead of fresh pages the kernel must
  fault in and zero (an eighth of a peer's CPU before).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import mmap
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

V = TypeVar("V")


class HashWindow:
    """Pieces of one task waiting for the in-order hash, at most ``limit`` bytes of them; and
    the gate that keeps the pieces past them from being fetched while the hash is behind."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.next = 0
        self._pieces: dict[int, Any] = {}
        self._fetching: set[int] = set()
        self._open = False
        self._moved = asyncio.Event()

    def offer(self, index: int, data: Any, nbytes: int) -> bool:
        """Keep ``data`` (piece ``index``) for the hash if it is still ahead and fits; the next
        piece in order is always kept (the hash takes it at once)."""
        if index < self.next or index in self._pieces:
            return False
        if index != self.next and self.held + nbytes > self.limit:
            return False
        self._pieces[index] = (data, nbytes)
        self.held += nbytes
        return True

    def take(self, index: int) -> Any | None:
        """The bytes of piece ``index`` if kept (None: read them from the store); the hash has
        moved past it."""
        self.next = index + 1
        self._moved.set()
        kept = self._pieces.pop(index, None)
        if kept is None:
            return None
        self.held -= kept[1]
        return kept[0]

    def clear(self) -> None:
        """Drop every kept piece, and open the gate for good (the hash ended)."""
        self._pieces.clear()
        self.held = 0
        self._open = True
        self._moved.set()

    def past(self, index: int, piece_size: int) -> bool:
        """Whether piece ``index``, were it to land now, would be past what the window keeps."""
        return not self._open and (index - self.next + 1) * piece_size > self.limit

    async def admit(self, index: int, piece_size: int, landed: Callable[[int], bool]) -> None:
        """Wait while piece ``index`` would land past the window and the piece the hash takes
        next is here or on its way (``landed``, or admitted and not yet :meth:`fetched`): the
        hash, not the pieces, holds the window back then, and reading ``index`` now would cost
        a read back from the store later and CPU the hash is short of now. The wait always
        ends: that next piece lands (the hash moves on) or fails (the gate opens)."""
        while self.past(index, piece_size) and (self.next in self._fetching or landed(self.next)):
            self._moved.clear()
            await self._moved.wait()
        self._fetching.add(index)

    def fetched(self, index: int) -> None:
        """Piece ``index``, admitted, has landed or failed."""
        self._fetching.discard(index)
        self._moved.set()


@dataclass(slots=True)
class _Kept(Generic[V]):
    value: V
    nbytes: int
    received: bool
    handed: bool


class HotPieces(Generic[V]):
    """Up to ``limit`` bytes of values keyed by ``(task_id, piece)``, least recently used out;
    each remembers whether it was received from a peer or made here, and whether it was handed
    out, so that an object made here is handed out as it is once (:meth:`hand_out`)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.made = 0  # of ``held``: the bytes of values made here, not received
        self._items: OrderedDict[tuple[str, int], _Kept[V]] = OrderedDict()

    def get(self, task_id: str, index: int) -> V | None:
        """The value of a piece, marked as just used; None if not held."""
        item = self._items.get((task_id, index))
        if item is None:
            return None
        self._items.move_to_end((task_id, index))
        return item.value

    def hand_out(self, task_id: str, index: int) -> bool:
        """True the first time a value made here (not received from a peer) is asked to be
        handed out as it is: an object only this node holds yet. Every later call, and any
        call for a value received from a peer, says False (hand out a copy)."""
        item = self._items.get((task_id, index))
        if item is None or item.received or item.handed:
            return False
        item.handed = True
        return True

    def put(
        self,
        task_id: str,
        index: int,
        value: V,
        nbytes: int,
        received: bool = False,
        handed: bool = False,
    ) -> None:
        """Hold ``value`` (``received`` from a peer, or made here; ``handed``: already handed
        out); the least recently used values go until the total fits."""
        if nbytes > self.limit:
            return
        self.drop(task_id, index)
        self._items[(task_id, index)] = _Kept(value, nbytes, received, handed)
        self._count(nbytes, received)
        while self.held > self.limit:
            _, gone = self._items.popitem(last=False)
            self._count(-gone.nbytes, gone.received)

    def _count(self, nbytes: int, received: bool) -> None:
        self.held += nbytes
        if not received:
            self.made += nbytes

    def drop(self, task_id: str, index: int) -> None:
        """Forget one piece."""
        item = self._items.pop((task_id, index), None)
        if item is not None:
            self._count(-item.nbytes, item.received)

    def drop_task(self, task_id: str) -> None:
        """Forget every piece of ``task_id`` (it left the cache)."""
        for key in [k for k in self._items if k[0] == task_id]:
            gone = self._items.pop(key)
            self._count(-gone.nbytes, gone.received)

    def __len__(self) -> int:
        return len(self._items)


class Pins:
    """Bytes of objects that are alive in this process, each counted until it is garbage: for
    a peer, the views of pieces received from other nodes, each of which keeps that piece's
    copy in this node's object store (in flight, in the hash window, kept to serve).
    Thread-safe: the last reference to a view may go on any thread."""

    def __init__(self) -> None:
        self.bytes = 0
        self._lock = threading.Lock()

    def track(self, obj: Any, nbytes: int) -> None:
        """Count ``nbytes`` until ``obj`` is garbage. An object that takes no weak references
        (``bytes``: a private copy, not a view of the store) is not counted."""
        try:
            weakref.finalize(obj, self._add, -nbytes)
        except TypeError:
            return
        self._add(nbytes)

    def _add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes


PINS = Pins()
"""The views of received pieces this process holds (see :class:`Pins`)."""


SERVE_MEMORY_MAX = 128 << 20
"""The default cap of a peer's kept pieces. With 256 MiB a peer's own memory plus the pieces it
kept referenced reached 507-530 MiB moving 4 GiB to 4 nodes (pieces between them as between
hosts); with 128 MiB 378-403 MiB, at the same time and CPU (docs/BENCHMARKS.md, eighteenth
pass)."""


def serve_memory(setting: int | None, store_bytes: int) -> int:
    """Bytes of pieces a peer keeps referenced to serve them again: ``setting``
    (``RAYFLY_SERVE_MEMORY``) if given, else a quarter of the node's object store of
    ``store_bytes``, at most :data:`SERVE_MEMORY_MAX`, so that they never crowd it out."""
    if setting is not None:
        return setting
    return min(SERVE_MEMORY_MAX, store_bytes // 4)


PAGE = 4096


class BufferPool:
    """Uninitialised byte buffers for piece reads, reused: :meth:`take` one, :meth:`give` it
    back when nothing uses its bytes any more.

    Free buffers are kept up to ``busy_keep`` bytes (default ``keep``), so that a download's
    whole working set (reads in flight, the hash window, its read-back) is reused: kept to
    64 MiB, a third of a 1 GiB download's reads landed in fresh buffers, whose pages the kernel
    had to fault in and zero again (docs/BENCHMARKS.md, nineteenth pass). A buffer of another
    size is dropped first to make room. Once no buffer was taken for ``idle_s`` seconds,
    :meth:`trim` drops free buffers down to ``keep`` bytes.

    Each buffer is an anonymous memory map of its own, advised to use huge pages as numpy's
    large arrays are: it starts on a page (:data:`PAGE`), so that the store can write it with
    ``O_DIRECT``, and its pages go back to the kernel as soon as it is dropped (a buffer from
    the heap may stay in the allocator's arenas).

    Only buffers this pool made are taken back (anything else given is ignored), so a caller
    may hand back whatever a read returned. Thread-safe.
    """

    def __init__(
        self,
        keep: int,
        busy_keep: int | None = None,
        idle_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.keep = keep
        self.busy_keep = keep if busy_keep is None else max(keep, busy_keep)
        self.idle_s = idle_s
        self.free_bytes = 0
        self._clock = clock
        self._last_take = -math.inf
        self._free: dict[int, list[np.ndarray]] = {}
        self._made: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A buffer of exactly ``nbytes`` (contents undefined)."""
        with self._lock:
            self._last_take = self._clock()
            free = self._free.get(nbytes)
            if free:
                self.free_bytes -= nbytes
                return free.pop()
        if not nbytes:
            return np.empty(0, dtype=np.uint8)
        mapped = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux; EINVAL where the kernel has no huge pages
            with contextlib.suppress(OSError):
                mapped.madvise(mmap.MADV_HUGEPAGE)
        buf = np.frombuffer(mapped, dtype=np.uint8)
        with self._lock:
            self._made[id(buf)] = buf
        return buf

    def give(self, data: Any) -> None:
        """Take back the buffer behind ``data`` (an array or memoryview of it) if this pool made
        it and there is room; the caller must hold no other reference to its bytes."""
        buf = data.obj if isinstance(data, memoryview) else data
        with self._lock:
            if self._made.get(id(buf)) is not buf:
                return
            others = [n for n in self._free if n != buf.nbytes]
            self._drop_free(self.busy_keep - buf.nbytes, others)
            if self.free_bytes + buf.nbytes <= self.busy_keep:
                self._free.setdefault(buf.nbytes, []).append(buf)
                self.free_bytes += buf.nbytes

    def trim(self) -> int:
        """Drop free buffers down to ``keep`` bytes if none was taken for ``idle_s`` seconds;
        the bytes dropped."""
        with self._lock:
            if self._clock() - self._last_take < self.idle_s:
                return 0
            before = self.free_bytes
            self._drop_free(self.keep, list(self._free))
            return before - self.free_bytes

    def _drop_free(self, limit: int, sizes: list[int]) -> None:
        """Drop free buffers of ``sizes`` until at most ``limit`` bytes are free (the lock
        held)."""
        for size in sizes:
            free = self._free[size]
            while free and self.free_bytes > limit:
                free.pop()
                self.free_bytes -= size
            if not free:
                del self._free[size]


BUFFERS = BufferPool(64 << 20, busy_keep=256 << 20, idle_s=60.0)
"""Free piece buffers kept for the next reads of this process (origin reads, local reads): up
to 256 MiB while reads go on (14 of 16 MiB are in use at once in a one-node download: 8 reads
in flight, the hash window's 4 pieces, its 2 read-back buffers), 64 MiB once idle for a
minute (a new working set costs its first faults again: on these VMs 1 to 1.5 CPU-s for
14 buffers of 16 MiB in huge pages)."""
