"""The in-memory piece windows: the in-order hash window and the hot pieces a peer serves."""

import asyncio

import numpy as np

from rayfly.actors.download import HASH_WINDOW_MAX, hash_window_bytes
from rayfly.piecemem import (
    PAGE,
    SERVE_MEMORY_MAX,
    BufferPool,
    HashWindow,
    HotPieces,
    Pins,
    serve_memory,
)


def test_hash_window_keeps_pieces_ahead_until_their_turn():
    w = HashWindow(limit=10)
    assert w.offer(1, b"b", 4) and w.offer(2, b"c", 4)
    assert not w.offer(3, b"d", 4)  # over the limit: read back from the store at its turn
    assert w.take(0) is None  # never offered: the caller reads it back
    assert w.take(1) == b"b" and w.take(2) == b"c" and w.take(3) is None
    assert w.held == 0


def test_hash_window_always_keeps_the_next_piece_and_nothing_behind():
    w = HashWindow(limit=4)
    assert w.offer(1, b"x", 4)
    assert w.offer(0, b"y", 4)  # the next piece in order: the hash takes it at once
    assert w.take(0) == b"y" and w.take(1) == b"x"
    assert not w.offer(1, b"late", 4)  # the hash is past it


async def _pending(fut: asyncio.Future[None]) -> bool:
    await asyncio.sleep(0.05)
    return not fut.done()


def test_hash_window_admits_what_fits_at_once_however_far_behind_the_hash():
    async def run() -> None:
        w = HashWindow(limit=3 * 10)
        for i in range(3):  # the next piece and two ahead of it
            await asyncio.wait_for(w.admit(i, 10, lambda _: True), 1)
        assert w.past(3, 10) and not w.past(2, 10)

    asyncio.run(run())


def test_hash_window_holds_a_piece_past_it_until_the_hash_catches_up():
    async def run() -> None:
        w = HashWindow(limit=2 * 10)
        landed = {0, 1, 2}  # the hash has three pieces to get through
        gate = asyncio.ensure_future(w.admit(4, 10, landed.__contains__))
        assert await _pending(gate)
        w.take(0)
        w.take(1)
        assert await _pending(gate)  # 2 is here, and 4 is still past the window
        w.take(2)
        await asyncio.wait_for(gate, 1)  # 3 and 4 fit

    asyncio.run(run())


def test_hash_window_holds_a_piece_past_it_only_while_the_next_one_is_coming():
    async def run() -> None:
        w = HashWindow(limit=10)
        await w.admit(0, 10, lambda _: False)  # admitted: on its way
        gate = asyncio.ensure_future(w.admit(5, 10, lambda _: False))
        assert await _pending(gate)
        w.fetched(0)  # failed: nothing this peer fetches will move the hash, so 5 goes
        await asyncio.wait_for(gate, 1)

    asyncio.run(run())


def test_hash_window_clear_opens_the_gate():
    async def run() -> None:
        w = HashWindow(limit=10)
        gate = asyncio.ensure_future(w.admit(5, 10, lambda _: True))
        assert await _pending(gate)
        w.clear()  # the hash ended (done, or failed): nothing waits for it
        await asyncio.wait_for(gate, 1)
        assert not w.past(100, 10)

    asyncio.run(run())


def test_hash_window_clear_drops_everything():
    w = HashWindow(limit=100)
    w.offer(3, b"z", 10)
    w.clear()
    assert w.held == 0 and w.take(3) is None


def test_hash_window_size_follows_the_piece_size_within_bounds():
    assert hash_window_bytes(4 << 20) == 64 << 20
    assert hash_window_bytes(16 << 20) == HASH_WINDOW_MAX
    assert hash_window_bytes(512 << 20) == 512 << 20  # always one piece


def test_hot_pieces_evict_least_recently_used_to_stay_within_bytes():
    hot: HotPieces[str] = HotPieces(limit=10)
    hot.put("t", 0, "a", 4)
    hot.put("t", 1, "b", 4)
    assert hot.get("t", 0) == "a"  # 0 is now the most recently used
    hot.put("t", 2, "c", 4)
    assert hot.get("t", 1) is None and hot.get("t", 0) == "a" and hot.get("t", 2) == "c"
    assert hot.held == 8


def test_hot_pieces_skip_what_cannot_fit_and_forget_a_task():
    hot: HotPieces[str] = HotPieces(limit=5)
    hot.put("t", 0, "big", 6)
    assert hot.get("t", 0) is None and hot.held == 0
    hot.put("t", 1, "x", 2)
    hot.put("u", 1, "y", 2)
    hot.put("t", 1, "x2", 3)  # replacing a piece counts its new size only
    assert hot.held == 5
    hot.drop_task("t")
    assert hot.get("t", 1) is None and hot.get("u", 1) == "y" and hot.held == 2 and len(hot) == 1


def test_a_piece_made_here_is_handed_out_as_it_is_once_and_a_relayed_one_never():
    hot: HotPieces[str] = HotPieces(limit=10)
    hot.put("t", 0, "mine", 1)
    hot.put("t", 1, "relayed", 1, received=True)
    hot.put("t", 2, "served", 1, handed=True)
    assert [hot.hand_out("t", 0), hot.hand_out("t", 0)] == [True, False]
    assert not hot.hand_out("t", 1) and not hot.hand_out("t", 2) and not hot.hand_out("t", 9)
    hot.put("t", 0, "mine again", 1)  # a new object: one location again
    assert hot.hand_out("t", 0)


def test_hot_pieces_off_holds_nothing():
    hot: HotPieces[str] = HotPieces(limit=0)
    hot.put("t", 0, "a", 1)
    assert len(hot) == 0


def test_buffer_pool_reuses_only_its_own_buffers_within_its_limit():
    pool = BufferPool(keep=2048)
    a = pool.take(1024)
    a[:] = 7
    pool.give(memoryview(a))  # handed back as the memoryview a read returned
    b = pool.take(1024)
    assert b is a  # the same memory, not fresh pages
    foreign = np.zeros(1024, dtype=np.uint8)
    pool.give(foreign)  # not made here: ignored
    assert pool.take(1024) is not foreign
    c, d, e = pool.take(1024), pool.take(1024), pool.take(1024)
    for buf in (c, d, e):
        pool.give(buf)
    assert pool.free_bytes == 2048  # the third did not fit
    assert pool.take(512) is not c  # another size: a new buffer


def test_buffer_pool_keeps_its_working_set_while_busy_and_trims_it_once_idle():
    now = [0.0]
    pool = BufferPool(keep=2048, busy_keep=4096, idle_s=5.0, clock=lambda: now[0])
    bufs = [pool.take(1024) for _ in range(5)]
    for buf in bufs:
        pool.give(buf)
    assert pool.free_bytes == 4096  # four kept while busy; the fifth did not fit
    again = [pool.take(1024) for _ in range(4)]
    assert {id(b) for b in again} <= {id(b) for b in bufs}  # no fresh pages
    for buf in again:
        pool.give(buf)
    now[0] = 4.9
    assert pool.trim() == 0  # a buffer was taken less than idle_s ago
    now[0] = 5.0
    assert pool.trim() == 2048 and pool.free_bytes == 2048
    assert pool.trim() == 0


def test_buffer_pool_drops_buffers_of_another_size_to_keep_the_one_given():
    pool = BufferPool(keep=0, busy_keep=3072)
    small = [pool.take(512) for _ in range(4)]
    large = pool.take(2048)
    for buf in small:
        pool.give(buf)
    assert pool.free_bytes == 2048
    pool.give(large)  # room is made from the other size
    assert pool.free_bytes == 3072
    assert pool.take(2048) is large
    assert pool.free_bytes == 1024  # two of the small ones are left


def test_pool_buffers_start_on_a_page_for_direct_writes():
    pool = BufferPool(keep=0)
    for n in (1, 4096, 5000, 1 << 20):
        buf = pool.take(n)
        assert len(buf) == n and buf.ctypes.data % PAGE == 0
        buf[:] = 1  # all of it is writable memory of its own
    assert len(pool.take(0)) == 0


def test_serve_memory_is_a_quarter_of_the_store_at_most_128_mib():
    """Kept pieces take a quarter of the node's object store, capped so that a peer's own
    memory plus the pieces it keeps stays under 512 MiB; a node's setting wins, 0 included."""
    assert serve_memory(None, 256 << 20) == 64 << 20
    assert serve_memory(None, 1 << 30) == 128 << 20
    assert serve_memory(None, 64 << 30) == SERVE_MEMORY_MAX == 128 << 20
    assert serve_memory(1 << 30, 256 << 20) == 1 << 30
    assert serve_memory(0, 64 << 30) == 0


def test_pins_count_an_object_until_it_is_garbage():
    pins = Pins()
    a, b = np.zeros(10, np.uint8), np.zeros(20, np.uint8)
    pins.track(a, 10)
    pins.track(b, 20)
    assert pins.bytes == 30
    del a
    assert pins.bytes == 20
    pins.track(b"a private copy", 14)  # takes no weak reference: not a view of the store
    assert pins.bytes == 20
    del b
    assert pins.bytes == 0


def test_hot_pieces_count_the_bytes_made_here_apart():
    """``made`` is the part of ``held`` this node made (received pieces are counted by their
    views instead), through puts, evictions and drops."""
    hot: HotPieces[str] = HotPieces(limit=10)
    hot.put("t", 0, "made", 4)
    hot.put("t", 1, "received", 4, received=True)
    assert (hot.held, hot.made) == (8, 4)
    hot.put("u", 0, "made", 4)  # over the limit: the oldest (made here) goes
    assert (hot.held, hot.made) == (8, 4)
    hot.drop("u", 0)
    assert (hot.held, hot.made) == (4, 0)
    hot.put("t", 2, "made", 2)
    hot.drop_task("t")
    assert (hot.held, hot.made) == (0, 0)
