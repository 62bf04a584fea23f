"""Scheduling policy as pure functions: which pieces a peer fetches next, and from whom.

Nothing here touches Ray or the network: the Scheduler actor keeps the state and calls
:func:`plan_batch`; tests and the scale simulation call it directly.

Rules:
- Pieces are ordered rarest first: fewest copies, counting the copies on their way (leased to
  a peer) as well as those held; ties in index order: pieces then arrive close to file order,
  so a peer hashes them (sha256, in order) from memory as they land instead of reading them
  back from disk. Counting the copies on their way spreads children that ask in turn over
  different pieces (the super-seeding idea): a piece's first holder sends it to one child, the
  others take other pieces, and the children pass them on to each other. Counting holders
  alone sent every child that asked before the first copy landed to the same one-holder
  piece, all through one uplink.
- A piece nobody holds is read from the origin by exactly one peer at a time, within the task's
  origin parallelism (ramped up as the first pieces land when several nodes fetch:
  :func:`origin_ramp`); a piece someone is already reading from the origin is waited for.
- A node-local file (a task with a source node) is read from the origin by that node's peer only.
- A parent is chosen among the piece's holders with a free upload slot: the same host first,
  then a parent without an upload limit, then the lowest load, then the peer that read the
  piece from the origin (it keeps the piece in memory to serve), then the best recent
  throughput. A node with an upload limit offers as many slots as serve a piece in about
  :data:`SERVE_TARGET_S` (:func:`upload_slots`), and reads no piece from the origin while a
  peer without a limit fetches the task (its pieces would be rare, and slow to spread).
- An origin that ignores ``Range`` is read by one peer at a time, in one sequential stream
  (:func:`takes_stream`); the others get its pieces from peers as they arrive.
- A piece read from the origin is marked with who will ask its reader for it
  (:func:`who_will_ask`), so that the reader keeps it in memory to serve when that is cheaper
  than reading it back from disk.
- A new task's default pieces are no larger than what moves between peers in
  :data:`PIECE_TARGET_S` at the measured rate, nor (below 4 MiB) smaller than moves in twice
  that at the rate transfers had while their parent served all its slots (:func:`piece_limits`).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import (
    Callable,
    Collection,
    Container,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
    Set,
)
from dataclasses import dataclass, field
from typing import Protocol

from rayfly.errors import InvalidInput
from rayfly.protocol import SHARE_HOST, SHARE_REMOTE, Assignment
from rayfly.task import PieceLimits

MAX_CANDIDATES = 32
SCAN_LIMIT = 4 * MAX_CANDIDATES
SERVE_TARGET_S = 2.0
PIECE_TARGET_S = 2.0
SKIP_BUSY = "busy"
SKIP_ORIGIN = "origin"


class Load(Protocol):
    """What the policy needs to know of a possible parent (the scheduler's own peer records
    satisfy it, so no copy is made per lookup)."""

    @property
    def peer_id(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def uploads(self) -> int: ...

    @property
    def slots(self) -> int: ...

    @property
    def throughput(self) -> float: ...

    @property
    def upload_rate(self) -> float | None: ...


@dataclass(frozen=True)
class PeerLoad:
    """A possible parent as a value: tests, and the loads a batch adds to a parent."""

    peer_id: str
    host: str
    uploads: int
    slots: int
    throughput: float = 0.0
    upload_rate: float | None = None


@dataclass(frozen=True)
class TaskView:
    """A read-only view of one task's state, as the scheduler holds it."""

    n_pieces: int
    holders: Mapping[int, Set[str]]
    origin_inflight: Set[int]
    origin_parallelism: int
    digests: Mapping[int, str]
    readers: Mapping[int, str] = field(default_factory=dict)
    fetching: Mapping[int, int] = field(default_factory=dict)  # per piece, peers leasing it


def rarest_first(missing: Sequence[int], view: TaskView, salt: int) -> list[int]:
    """Missing pieces ordered by copies held or on their way, ties in index order (``salt``
    is unused: the signature is every policy's)."""
    fetching = view.fetching
    return sorted(missing, key=lambda i: (len(view.holders.get(i, ())) + fetching.get(i, 0), i))


def sequential(missing: Sequence[int], view: TaskView, salt: int) -> list[int]:
    """Missing pieces in index order: for consumers that stream the task front to back."""
    return sorted(missing)


POLICIES: dict[str, Callable[[Sequence[int], TaskView, int], list[int]]] = {
    "rarest-first": rarest_first,
    "sequential": sequential,
}


def piece_policy(name: str) -> Callable[[Sequence[int], TaskView, int], list[int]]:
    """The piece-order function called ``name``; an unknown name fails here, at construction."""
    try:
        return POLICIES[name]
    except KeyError:
        raise InvalidInput(
            f"unknown piece policy {name!r}; choose one of {', '.join(sorted(POLICIES))}"
        ) from None


def peer_salt(peer_id: str) -> int:
    """A stable per-peer number used to rotate tie-breaks."""
    return zlib.crc32(peer_id.encode())


def choose_parent(
    candidates: Sequence[Load], host: str, rng: random.Random, reader: str | None = None
) -> Load | None:
    """The best holder with a free upload slot, or None when every holder is busy.

    Score: same host first, then no upload limit, then the smallest share of slots in use,
    then ``reader`` (the peer that read the piece from the origin), then the best recent
    throughput; at most :data:`MAX_CANDIDATES` holders (a random sample) are considered.
    """
    free = [c for c in candidates if c.uploads < c.slots]
    if len(free) > MAX_CANDIDATES:
        free = rng.sample(free, MAX_CANDIDATES)
    if not free:
        return None
    return min(
        free,
        key=lambda c: (
            c.host != host,
            c.upload_rate is not None,
            c.uploads / c.slots,
            c.peer_id != reader,
            -c.throughput,
            rng.random(),
        ),
    )


def upload_slots(slots: int, upload_rate: float | None, piece_size: int) -> int:
    """How many pieces a node serves at once: ``slots``, or with an upload limit as many as
    the limit serves in about :data:`SERVE_TARGET_S` (at least one), so that a child is not
    handed a piece that takes a minute to arrive while other parents have room."""
    if not upload_rate:
        return slots
    return max(1, min(slots, int(upload_rate * SERVE_TARGET_S // max(1, piece_size))))


def piece_limits(parents: Iterable[tuple[float, int, float]]) -> PieceLimits | None:
    """The piece sizes the measured transfers allow a new task (:class:`PieceLimits`); None
    before any transfer was measured. ``parents``: per peer, its upload rate measured (a
    transfer's rate times the transfers it was serving at the time), its upload slots, and
    the moving average of the rates of its transfers that ended while it served all its slots
    (0 if none did).

    ``cap``: the median of uplink / slots (a transfer's rate when every parent serves all its
    slots, extrapolated from every transfer) times :data:`PIECE_TARGET_S`. ``fits``: the median
    rate measured at full load times twice that, and never less than twice the cap (the floor
    before full-load rates were measured, and still the floor while no parent was at full
    load). The extrapolation holds when the link is what slows a transfer; when the CPU is, a
    transfer beside one or two others is slow too, and the extrapolation reads it as a slow
    link shared by every slot. Ray asks again for an object whose pull has not finished after
    10 s (``object_manager_pull_timeout_ms``) and sends it twice: on slow links pieces must be
    small enough to stay well inside that."""
    measured = [(up / max(1, slots), rate) for up, slots, rate in parents if up > 0]
    if not measured:
        return None
    per_slot = sorted(slot for slot, _ in measured)
    cap = _pow2_below(per_slot[len(per_slot) // 2] * PIECE_TARGET_S)
    loaded = sorted(rate for _, rate in measured if rate > 0)
    fits = _pow2_below(loaded[len(loaded) // 2] * 2 * PIECE_TARGET_S) if loaded else 0
    return PieceLimits(cap, max(2 * cap, fits))


def _pow2_below(nbytes: float) -> int:
    """The largest power of two not above ``nbytes`` (1 at least)."""
    return 1 << max(0, int(nbytes).bit_length() - 1)


def who_will_ask(
    peer_id: str,
    peers: Mapping[str, Load],
    members: Collection[str],
    finished: Container[str],
    expected: int,
) -> str:
    """Who will ask ``peer_id`` for the pieces it reads from the origin (``Assignment.share``):
    ``SHARE_REMOTE`` when a member on another host (or one that has not joined yet: fewer than
    ``expected`` have) still fetches, ``SHARE_HOST`` when only members on its own host do,
    ``""`` when nobody does. ``peers``: every live peer (for its host)."""

    def host_of(p: str) -> str | None:
        load = peers.get(p)
        return load.host if load is not None else None

    others = [p for p in members if p != peer_id and p not in finished]
    mine = host_of(peer_id)
    if len(members) < expected or any(host_of(p) != mine for p in others):
        return SHARE_REMOTE
    return SHARE_HOST if others else ""


def shortfall(want: int, given: int, skipped: Mapping[str, int]) -> dict[str, int]:
    """Why a peer that asked for ``want`` pieces got ``given``: the missing slots attributed
    first to pieces whose holders were all busy (``busy``), then to pieces waited for from the
    origin (``origin``), the rest to there being no piece left to hand out (``none``: it holds
    or fetches every piece that anyone holds)."""
    short = max(0, want - given)
    busy = min(short, skipped.get(SKIP_BUSY, 0))
    origin = min(short - busy, skipped.get(SKIP_ORIGIN, 0))
    return {"busy": busy, "origin": origin, "none": short - busy - origin}


def wake_count(done: int, failed: int, per_piece: int) -> int:
    """How many long-polling peers a report wakes: a verified piece gives its holder
    ``per_piece`` upload slots to hand out, a failed piece one piece to hand out again.

    Waking every waiter on every change makes a 10,000-peer task answer thousands of empty
    exchanges per piece; the rest still ask again after the long-poll time.
    """
    return done * per_piece + failed


def takes_stream(streamer: str | None, lapsed: bool, peer_id: str, unheld: bool) -> bool:
    """Whether ``peer_id`` becomes the one peer streaming an origin that ignores ``Range``:
    some piece is held by no live peer (``unheld``), and nobody streams (or the streamer stopped
    reporting: ``lapsed``). A peer that streams already never gets a second stream."""
    return unheld and streamer != peer_id and (streamer is None or lapsed)


def origin_share(origin_parallelism: int, peers: int) -> int:
    """How many origin reads one peer may have in flight: the budget split over the peers
    (those fetching, or expected to), so that first reads spread over the nodes and each node
    starts uploading early."""
    return max(1, -(-origin_parallelism // max(1, peers)))


def origin_ramp(origin_parallelism: int, landed: int, nodes: int) -> int:
    """How many origin reads a task may have in flight: with several nodes, one more than the
    pieces that have landed from the origin so far, up to ``origin_parallelism``.

    Reads in flight share the origin's link, so 8 first pieces read at once land together after
    8 pieces' time and the nodes have nothing to pass on until then; ramped, the first piece
    lands after one piece's time and spreads while the next are read (TCP's slow start, for
    pieces). A single node has nobody to pass pieces to: it reads at full parallelism."""
    if nodes <= 1:
        return origin_parallelism
    return min(origin_parallelism, 1 + landed)


def origin_quota(
    origin_parallelism: int,
    peers: int,
    source_node: str | None,
    peer_id: str,
    defer: bool = False,
) -> int:
    """How many origin reads ``peer_id`` may have in flight for a task.

    Anyone may read an origin every node sees (``source_node`` None): the budget is split over
    the peers (:func:`origin_share`), except that a node with an upload limit ``defer``s to the
    peers without one while any fetches the task. A node-local file is read by its node alone,
    with the whole budget; every other peer gets its pieces from peers.
    """
    if source_node is None:
        return 0 if defer else origin_share(origin_parallelism, peers)
    return origin_parallelism if peer_id == source_node else 0


def _candidates(
    holders: Iterable[str], me: str, bumped: Mapping[str, Load], loads: Mapping[str, Load]
) -> tuple[list[Load], bool]:
    """Up to :data:`SCAN_LIMIT` holders with a free slot, and whether any live holder exists
    (a holder's load: as ``bumped`` by this batch, else as in ``loads``).

    The scan stops early, so a piece held by ten thousand peers costs a few dozen lookups.
    """
    free: list[Load] = []
    alive = False
    for p in holders:
        if p == me:
            continue
        load = bumped.get(p) or loads.get(p)
        if load is None:
            continue
        alive = True
        if load.uploads < load.slots:
            free.append(load)
            if len(free) >= SCAN_LIMIT:
                break
    return free, alive


def _missing(view: TaskView, have: Set[int], busy: Set[int], origin_budget: int) -> list[int]:
    """Pieces a peer neither holds nor fetches; without origin budget, only held ones (only
    those can be handed out)."""
    if origin_budget > 0:
        return [i for i in range(view.n_pieces) if i not in have and i not in busy]
    return [i for i, h in view.holders.items() if h and i not in have and i not in busy]


def _unheld(view: TaskView, have: Set[int], busy: Set[int], limit: int) -> int:
    """How many pieces a peer neither holds nor fetches are held by nobody, counted up to
    ``limit`` (the scan stops there)."""
    found = 0
    for i in range(view.n_pieces):
        if found >= limit:
            break
        if not view.holders.get(i) and i not in have and i not in busy:
            found += 1
    return found


def _one_more_upload(p: Load) -> PeerLoad:
    """``p``'s load with one more upload in flight."""
    return PeerLoad(p.peer_id, p.host, p.uploads + 1, p.slots, p.throughput, p.upload_rate)


def plan_batch(
    view: TaskView,
    peer_id: str,
    host: str,
    have: Set[int],
    busy: Set[int],
    loads: Mapping[str, Load],
    want: int,
    order: str = "rarest-first",
    rng: random.Random | None = None,
    origin_quota: int | None = None,
    skipped: MutableMapping[str, int] | None = None,
) -> list[Assignment]:
    """Up to ``want`` assignments for ``peer_id``, which holds ``have`` and is fetching ``busy``.

    ``loads`` describes every live peer (only holders of the pieces considered are looked up);
    a parent's load grows with each assignment made here, so one batch never oversubscribes a
    parent. ``origin_quota`` caps this peer's new origin reads (see :func:`origin_share`).
    ``skipped`` (given empty) counts the missing pieces passed over: ``SKIP_BUSY`` (every live
    holder's slots are taken), ``SKIP_ORIGIN`` (held by nobody, and read already or no origin
    budget left; those the scan left out for want of budget, only as many as a short answer
    needs to be explained: :func:`shortfall` reads no more)."""
    rng = rng or random.Random(peer_salt(peer_id))
    order_fn = piece_policy(order)
    bumped: dict[str, Load] = {}
    origin_budget = view.origin_parallelism - len(view.origin_inflight)
    origin_budget = origin_budget if origin_quota is None else min(origin_budget, origin_quota)
    out: list[Assignment] = []
    skip: MutableMapping[str, int] = skipped if skipped is not None else {}
    unlisted = origin_budget <= 0  # the pieces nobody holds are left out of the scan
    for piece in order_fn(_missing(view, have, busy, origin_budget), view, peer_salt(peer_id)):
        if len(out) >= want:
            break
        free, alive = _candidates(view.holders.get(piece, ()), peer_id, bumped, loads)
        if not alive:  # nobody alive holds it: the origin, once at a time
            if piece in view.origin_inflight or origin_budget <= 0:
                skip[SKIP_ORIGIN] = skip.get(SKIP_ORIGIN, 0) + 1
                continue
            origin_budget -= 1
            out.append(Assignment(piece, None))
            continue
        parent = choose_parent(free, host, rng, view.readers.get(piece))
        if parent is None:
            skip[SKIP_BUSY] = skip.get(SKIP_BUSY, 0) + 1
            continue
        bumped[parent.peer_id] = _one_more_upload(parent)
        out.append(Assignment(piece, parent.peer_id, view.digests.get(piece)))
    if unlisted and (unexplained := want - len(out) - sum(skip.values())) > 0:
        skip[SKIP_ORIGIN] = skip.get(SKIP_ORIGIN, 0) + _unheld(view, have, busy, unexplained)
    return out
