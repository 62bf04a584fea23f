"""The scheduler's state machine without Ray: Dragonfly's supernode logic, one per cluster.

It registers each task once (size and version as the client's listing found them), fixes the
piece layout, keeps which peer holds which piece and hands out work in batches. It never
touches piece bytes. The actor (:class:`rayfly.actors.scheduler.Scheduler`) runs its methods
one at a time on its event loop (they only yield at ``await``), so the state has a single writer.

Per task, a piece goes through: *missing* -> *leased* (a peer fetches it, from the origin or a
parent, until it reports or its lease expires) -> *held* by that peer. A task is *failed* when the
origin refuses it (not found, denied) or a piece failed from the origin too often.

A peer is *live* (joined), *suspect* (a child could not reach it: not chosen as a parent for
:data:`SUSPECT_S`, or until it is heard from again) or *lost* (its node died, its actor was
replaced: everything it held is forgotten). Registered tasks are kept in a key-value store
(:mod:`rayfly.durable`): a restarted scheduler reloads them and rebuilds who holds what from the
peers' rejoins and announcements.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rayfly import durable, source
from rayfly.config import SchedulerConfig
from rayfly.errors import TaskNotFound
from rayfly.protocol import Assignment, Batch, Cached, Done, Failed
from rayfly.scheduling import (
    TaskView,
    origin_quota,
    origin_ramp,
    piece_limits,
    plan_batch,
    shortfall,
    takes_stream,
    wake_count,
    who_will_ask,
)
from rayfly.task import PieceLimits, TaskInfo

log = logging.getLogger(__name__)

MAX_ORIGIN_FAILURES = 3
RATE_SAMPLE_MIN = 1 << 20
"""Transfers smaller than this say little about the links (their time is mostly latency): they
do not count towards a parent's measured upload rate (:meth:`SchedulerCore.piece_limits`)."""
EXPIRY_PERIOD_S = 1.0
ACTIVE_PERIOD_S = 1.0
WAITERS_PRUNE_AT = 4096
SUSPECT_S = 20.0
MAX_KEPT_TASKS = 4096
# past MAX_KEPT_TASKS, the tasks are scanned for some to drop once per PRUNE_SLACK more
PRUNE_SLACK = 512
# a task nobody joined may be dropped this long after it was registered (a client registers
# a listing's tasks at once; its nodes join them one by one, possibly hours later)
PENDING_GRACE_S = 24 * 3600.0
RESTORE_GRACE_S = 3.0


@dataclass
class Lease:
    """A piece handed to a peer, from ``parent`` (None: the origin), valid until ``deadline``.

    ``incarnation`` is the parent actor's id when the lease was made: a report that this parent
    died only counts while the same actor still stands for its node.
    """

    parent: str | None
    deadline: float
    incarnation: str = ""


@dataclass
class TaskState:
    """The scheduler's record of one task.

    ``stream``: the origin ignores ``Range``; ``streamer`` is the one peer reading it front to
    back, until ``stream_deadline`` (renewed by each of its reports). ``expected``: the most
    nodes a client said would fetch; ``awaited``: of those, how many have not finished yet.
    ``asks``: pieces asked for and given over every plan, and why the rest were not
    (:func:`rayfly.scheduling.shortfall`).
    """

    info: TaskInfo
    order: str = "rarest-first"
    holders: dict[int, set[str]] = field(default_factory=dict)
    have: dict[str, set[int]] = field(default_factory=dict)
    leases: dict[str, dict[int, Lease]] = field(default_factory=dict)
    origin_inflight: set[int] = field(default_factory=set)
    origin_failures: dict[int, int] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)
    readers: dict[int, str] = field(default_factory=dict)
    fetching: Counter[int] = field(default_factory=Counter)
    expected: int = 1
    awaited: int = 0
    finished: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None
    created: float = 0.0
    active: int = 0
    active_at: float = -math.inf
    stream: bool = False
    streamer: str | None = None
    stream_deadline: float = 0.0
    asks: Counter[str] = field(default_factory=Counter)


@dataclass
class PeerState:
    """The scheduler's record of one peer: where it is, which actor it is, how busy it is."""

    peer_id: str
    host: str
    slots: int
    incarnation: str = ""
    uploads: int = 0
    throughput: float = 0.0
    uplink: float = 0.0
    full_load_rate: float = 0.0
    suspect_until: float = -math.inf
    upload_rate: float | None = None


def _moving(average: float, sample: float) -> float:
    """A measured rate's moving average: the first sample, then 30 % of each new one."""
    return 0.7 * average + 0.3 * sample if average else sample


class _Reachable(Mapping[str, PeerState]):
    """The peers that may be chosen as parents now: every known peer but the suspects."""

    def __init__(self, peers: dict[str, PeerState], now: float):
        self.peers, self.now = peers, now

    def __getitem__(self, peer_id: str) -> PeerState:
        p = self.peers[peer_id]
        if p.suspect_until > self.now:
            raise KeyError(peer_id)
        return p

    def __iter__(self) -> Iterator[str]:
        return iter(self.peers)

    def __len__(self) -> int:
        return len(self.peers)


def settled(t: TaskState, now: float) -> bool:
    """Whether no distribution needs task ``t`` any more: no piece of it is leased, every node
    that joined it finished, and no node a client said would fetch it is still to come; or,
    when that is never said to end (a client that left), :data:`PENDING_GRACE_S` after it
    was registered with no lease out and nobody fetching."""
    if any(t.leases.values()) or not all(p in t.finished for p in t.have):
        return False
    return (bool(t.have) and t.awaited == 0) or now - t.created >= PENDING_GRACE_S


class SchedulerCore:
    """The scheduler's state machine, usable without Ray (the actor wraps it)."""

    def __init__(
        self,
        config: SchedulerConfig,
        clock: Callable[[], float] = time.monotonic,
        kv: durable.KeyValue | None = None,
    ):
        self.config = config
        self.clock = clock
        self.tasks: dict[str, TaskState] = {}
        self.peers: dict[str, PeerState] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._prune_at = 0  # the number of tasks at which the next scan for some to drop runs
        self._rng = random.Random()
        self._expired_at = -math.inf
        self.kv: durable.KeyValue = kv if kv is not None else durable.MemoryStore()
        self._quiet_until = -math.inf
        self._restore()

    def _restore(self) -> None:
        """Reload the tasks registered before a restart. Who holds what comes from the peers'
        rejoins and announcements: for :data:`RESTORE_GRACE_S` no origin read is handed out,
        so that a piece some peer holds but has not declared yet is not read again."""
        for task_id, (info, order, created) in durable.load_all(self.kv, durable.TASKS).items():
            self.tasks[task_id] = TaskState(
                info, order=order, created=created, stream=not info.ranges
            )
        if self.tasks:
            self._quiet_until = self.clock() + RESTORE_GRACE_S

    def _notify(self, wake: int | None = None) -> None:
        """Wake ``wake`` long-polling peers, the longest waiting first (None: all of them)."""
        woken = 0
        while self._waiters and (wake is None or woken < wake):
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                woken += 1

    async def wait_change(self, timeout: float) -> None:
        """Long-poll: return when a change wakes this waiter, or after ``timeout``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(fut, timeout)
        if len(self._waiters) > WAITERS_PRUNE_AT:
            self._waiters = deque(f for f in self._waiters if not f.done())

    def _task(self, task_id: str) -> TaskState:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise TaskNotFound(f"unknown task {task_id}") from None

    def add_task(self, info: TaskInfo, order: str | None = None) -> TaskState:
        """Record a new task (replacing a failed one of the same id) and keep it in the store,
        so that a restarted scheduler knows it; the oldest idle tasks beyond
        :data:`MAX_KEPT_TASKS` are dropped. ``order``: its piece policy (None: the configured
        :attr:`SchedulerConfig.policy`)."""
        order = order or self.config.policy
        state = TaskState(info, order=order, created=time.time(), stream=not info.ranges)
        self.tasks[info.task_id] = state
        durable.save(self.kv, durable.TASKS, info.task_id, (info, order, state.created))
        self._prune()
        return state

    def _prune(self) -> None:
        """Past :data:`MAX_KEPT_TASKS` (and :data:`PRUNE_SLACK` more since the last scan),
        drop the oldest tasks that no distribution needs any more (:func:`settled`) down to
        the bound; when none is settled (a large listing being fetched) the cache grows."""
        if len(self.tasks) <= max(MAX_KEPT_TASKS, self._prune_at):
            return
        excess = len(self.tasks) - MAX_KEPT_TASKS
        settled_ids = self._settled_ids()
        for tid in sorted(settled_ids, key=lambda tid: self.tasks[tid].created)[:excess]:
            del self.tasks[tid]
            durable.drop(self.kv, durable.TASKS, tid)
        self._prune_at = len(self.tasks) + PRUNE_SLACK

    def _settled_ids(self) -> list[str]:
        now = time.time()
        return [tid for tid, t in self.tasks.items() if settled(t, now)]

    def announce(
        self,
        peer_id: str,
        host: str,
        slots: int,
        incarnation: str,
        have: dict[str, Cached],
        upload_rate: float | None = None,
    ) -> list[str]:
        """A peer tells what complete tasks it holds (after a restart of either side); returns
        the task ids this scheduler knows, now recorded as held there. A copy cut into other
        pieces than the task's is left out: the peer re-cuts it when it is asked to fetch the
        task (:meth:`rayfly.storage.PieceStore.recut`)."""
        known = [tid for tid, held in have.items() if self._takes(tid, held)]
        for tid in known:
            self.join(tid, peer_id, host, slots, have[tid].digests, incarnation, upload_rate)
            if len(self.tasks[tid].have[peer_id]) == self.tasks[tid].info.n_pieces:
                self.tasks[tid].finished[peer_id] = None
        return known

    def _takes(self, task_id: str, held: Cached) -> bool:
        """Whether an announced copy is of a known task, cut as the task is."""
        t = self.tasks.get(task_id)
        if t is None or t.error:
            return False
        return held.cut == t.info.cut

    def suspect(self, peer_id: str) -> None:
        """A child could not reach ``peer_id``: choose other parents (or the origin) for a while."""
        if peer_id in self.peers:
            self.peers[peer_id].suspect_until = self.clock() + SUSPECT_S

    def join(
        self,
        task_id: str,
        peer_id: str,
        host: str,
        slots: int,
        have: dict[int, str] | None = None,
        incarnation: str = "",
        upload_rate: float | None = None,
    ) -> None:
        """A peer joins a task, possibly holding pieces already (from its cache), with the
        upload slots it offers and its node's upload limit (None: none).

        A new ``incarnation`` for a known peer id is a restarted actor on the same node: what the
        old actor held or was fetching is forgotten first.
        """
        t = self._task(task_id)
        known = self.peers.get(peer_id)
        if known is not None and known.incarnation != incarnation:
            self.peer_lost(peer_id)
        self.peers.setdefault(peer_id, PeerState(peer_id, host, slots, incarnation))
        me = self.peers[peer_id]
        me.host, me.slots, me.upload_rate = host, slots, upload_rate
        t.have.setdefault(peer_id, set())
        t.leases.setdefault(peer_id, {})
        t.finished.pop(peer_id, None)
        held = {i: d for i, d in (have or {}).items() if 0 <= i < t.info.n_pieces}
        if len(held) < len(have or {}):
            log.warning("task %s: %s claims pieces it cannot have; ignored", task_id, peer_id)
        for piece, digest in held.items():
            self._hold(t, peer_id, piece, digest)
        self._notify(wake_count(len(held), 0, self.config.wake_per_piece))

    def _hold(self, t: TaskState, peer_id: str, piece: int, digest: str) -> None:
        t.have.setdefault(peer_id, set()).add(piece)
        t.holders.setdefault(piece, set()).add(peer_id)
        t.digests.setdefault(piece, digest)

    def _release(self, t: TaskState, peer_id: str, piece: int) -> Lease | None:
        lease = t.leases.get(peer_id, {}).pop(piece, None)
        if lease is None:
            return None
        t.fetching[piece] -= 1
        if lease.parent is None:
            t.origin_inflight.discard(piece)
        elif lease.parent in self.peers:
            self.peers[lease.parent].uploads = max(0, self.peers[lease.parent].uploads - 1)
        return lease

    def report(self, task_id: str, peer_id: str, done: list[Done], failed: list[Failed]) -> None:
        """Apply a peer's batch of finished and failed pieces."""
        t = self._task(task_id)
        self._renew(t, peer_id)
        known = self.knows(task_id, peer_id)  # a forgotten peer declares its pieces on rejoin
        for d in done:
            self._release(t, peer_id, d.piece)
            if d.parent in self.peers and d.seconds > 0:
                p = self.peers[d.parent]
                rate = d.nbytes / d.seconds
                p.throughput = _moving(p.throughput, rate)
                if d.nbytes >= RATE_SAMPLE_MIN:  # smaller: the latency, not the links
                    # it served this transfer and p.uploads others
                    p.uplink = _moving(p.uplink, rate * (p.uploads + 1))
                    if p.uploads + 1 >= p.slots:  # every slot busy: what a transfer gets
                        p.full_load_rate = _moving(p.full_load_rate, rate)
            if known:
                self._hold(t, peer_id, d.piece, d.digest)
                if d.parent is None:
                    t.readers[d.piece] = peer_id
        for f in failed:
            lease = self._release(t, peer_id, f.piece)
            if f.range_ignored:
                t.stream = True
            elif f.parent is None:
                if t.streamer == peer_id:
                    t.streamer = None
                n = t.origin_failures[f.piece] = t.origin_failures.get(f.piece, 0) + 1
                if n >= MAX_ORIGIN_FAILURES:
                    t.error = f"piece {f.piece} failed from the origin {n} times: {f.reason}"
            elif f.parent_dead and lease is not None and lease.parent == f.parent:
                self.peer_lost(f.parent, lease.incarnation)
            elif f.parent_lacks:
                t.holders.get(f.piece, set()).discard(f.parent)
                t.have.get(f.parent, set()).discard(f.piece)
            elif f.parent_unreachable:
                self.suspect(f.parent)
        if done or failed:
            self._notify(wake_count(len(done), len(failed), self.config.wake_per_piece))

    def _renew(self, t: TaskState, peer_id: str) -> None:
        """A peer that reports (pieces, or a heartbeat while its reads go on) is alive and
        working: its leases on the task start over, so that a slow origin piece is not handed
        out again and read twice. A peer that stops reporting loses them at the deadline."""
        deadline = self.clock() + self.config.lease_timeout_s
        for lease in t.leases.get(peer_id, {}).values():
            lease.deadline = deadline
        if t.streamer == peer_id:
            t.stream_deadline = deadline

    def expire_leases(self) -> None:
        """Release every lease past its deadline, so its piece is handed out again.

        Leases last tens of seconds, so the scan runs at most every :data:`EXPIRY_PERIOD_S`.
        """
        now = self.clock()
        if now - self._expired_at < EXPIRY_PERIOD_S:
            return
        self._expired_at = now
        for t in self.tasks.values():
            for peer_id, leases in t.leases.items():
                for piece in [p for p, lease in leases.items() if lease.deadline < now]:
                    self._release(t, peer_id, piece)
            if t.streamer is not None and t.stream_deadline < now:
                t.streamer = None

    def knows(self, task_id: str, peer_id: str) -> bool:
        """True when ``peer_id`` is a live member of the task (it joined and was not lost)."""
        t = self.tasks.get(task_id)
        return t is not None and peer_id in self.peers and peer_id in t.have

    def piece_limits(self) -> PieceLimits | None:
        """The piece sizes a new task may have, from the transfers measured so far
        (:func:`rayfly.scheduling.piece_limits`); None before any."""
        peers = self.peers.values()
        return piece_limits((p.uplink, p.slots, p.full_load_rate) for p in peers)

    def expect(self, task_id: str, members: int) -> None:
        """``members`` nodes are about to fetch the task: until that many have joined, the
        pieces a peer reads from the origin will be asked of it (``Assignment.share``)."""
        t = self.tasks.get(task_id)
        if t is not None:
            t.expected = max(t.expected, members)
            t.awaited = max(t.awaited, members)

    def held(self, task_id: str) -> TaskInfo | None:
        """The task if it has not failed and every piece has a holder that is not a suspect:
        a new member then needs nothing from the origin, so nothing about it (its URL, its
        credentials) has to be asked of the origin first."""
        t, live = self._unfailed(task_id)
        if t is None or not all(t.holders.get(i, set()) & live for i in range(t.info.n_pieces)):
            return None
        return t.info

    def holders(self, task_id: str) -> list[list[str]] | None:
        """Per piece, the peers holding it that are not suspects (sorted), if every piece has
        one and the task has not failed; else None."""
        t, live = self._unfailed(task_id)
        if t is None:
            return None
        per_piece = [sorted(t.holders.get(i, set()) & live) for i in range(t.info.n_pieces)]
        return per_piece if all(per_piece) else None

    def _unfailed(self, task_id: str) -> tuple[TaskState | None, set[str]]:
        """The task unless unknown or failed, and the peers that are not suspects now."""
        t = self.tasks.get(task_id)
        if t is None or t.error:
            return None, set()
        now = self.clock()
        return t, {p for p, s in self.peers.items() if s.suspect_until <= now}

    async def exchange(
        self,
        task_id: str,
        peer_id: str,
        done: list[Done],
        failed: list[Failed],
        want: int,
        wait: bool,
    ) -> Batch:
        """Apply a peer's report of finished/failed pieces and hand it up to ``want`` more.

        With ``wait`` and nothing to hand out, wait (up to the long-poll time) for a change;
        the task's ``asks`` count the answer the peer gets, not the empty one before the wait.
        """
        self.report(task_id, peer_id, done, failed)
        self.expire_leases()
        if want <= 0:
            return Batch([], rejoin=not self.knows(task_id, peer_id))
        first: Counter[str] = Counter()
        batch = self.plan(task_id, peer_id, want, first)
        if wait and not batch.assignments and not batch.error and not batch.rejoin:
            await self.wait_change(self.config.long_poll_s)
            return self.plan(task_id, peer_id, want)
        if (t := self.tasks.get(task_id)) is not None:
            t.asks.update(first)
        return batch

    def plan(
        self, task_id: str, peer_id: str, want: int, asks: Counter[str] | None = None
    ) -> Batch:
        """Hand ``peer_id`` up to ``want`` new pieces, leasing them; count what was asked,
        given and why not into ``asks`` (default: the task's)."""
        t = self._task(task_id)
        if t.error:
            return Batch([], t.error)
        if not self.knows(task_id, peer_id):
            return Batch([], rejoin=True)
        if t.stream and (streamed := self._plan_stream(t, peer_id)) is not None:
            return streamed
        me = self.peers[peer_id]
        me.suspect_until = -math.inf  # it is asking, so it is reachable
        leases = t.leases.setdefault(peer_id, {})
        quota = self._origin_quota(t, me, leases)
        skipped: dict[str, int] = {}
        batch = plan_batch(
            self._view(t),
            peer_id,
            me.host,
            t.have.get(peer_id, set()),
            set(leases),
            _Reachable(self.peers, self.clock()),
            want,
            t.order,
            self._rng,
            max(0, quota),
            skipped,
        )
        counts = {"asked": want, "given": len(batch), **shortfall(want, len(batch), skipped)}
        (t.asks if asks is None else asks).update(counts)
        deadline = self.clock() + self.config.lease_timeout_s
        t.fetching.update(a.piece for a in batch)
        for a in batch:
            if a.parent is None:
                leases[a.piece] = Lease(None, deadline)
                t.origin_inflight.add(a.piece)
            else:
                parent = self.peers[a.parent]
                leases[a.piece] = Lease(a.parent, deadline, parent.incarnation)
                parent.uploads += 1
        if any(a.parent is None for a in batch):
            share = who_will_ask(peer_id, self.peers, t.have, t.finished, t.expected)
            batch = [dataclasses.replace(a, share=share) if a.parent is None else a for a in batch]
        return Batch(batch)

    def _view(self, t: TaskState) -> TaskView:
        return TaskView(
            t.info.n_pieces,
            t.holders,
            t.origin_inflight,
            origin_ramp(self.config.origin_parallelism, len(t.readers), t.awaited),
            t.digests,
            t.readers,
            t.fetching,
        )

    def _plan_stream(self, t: TaskState, peer_id: str) -> Batch | None:
        """For an origin that ignores ``Range``: the stream for ``peer_id`` if it takes it over,
        nothing more for the streamer, None for the others (they get held pieces only)."""
        now = self.clock()
        unheld = any(not t.holders.get(i) for i in range(t.info.n_pieces))
        if takes_stream(t.streamer, t.stream_deadline < now, peer_id, unheld):
            t.streamer = peer_id
            t.stream_deadline = now + self.config.lease_timeout_s
            return Batch([Assignment(0, None, stream=True)])
        return Batch([]) if t.streamer == peer_id else None

    def _active(self, t: TaskState) -> int:
        """Peers still fetching ``t``, counted at most every :data:`ACTIVE_PERIOD_S` (it only
        splits the origin budget, and counting is O(peers))."""
        now = self.clock()
        if now - t.active_at >= ACTIVE_PERIOD_S:
            n = t.info.n_pieces
            t.active = sum(1 for p, h in t.have.items() if len(h) < n and p not in t.finished)
            t.active_at = now
        return t.active

    def _origin_quota(self, t: TaskState, me: PeerState, leases: dict[int, Lease]) -> int:
        """How many more origin reads ``me`` may start for ``t`` (see :func:`origin_quota`)."""
        if t.stream or self.clock() < self._quiet_until:
            return 0  # the origin is read by the streamer only / a restarted scheduler waits
        mine = sum(1 for lease in leases.values() if lease.parent is None)
        defer = me.upload_rate is not None and self._unlimited_fetching(t, me.peer_id)
        # split over the nodes awaited as well as those fetching: the first to join must not
        # take the whole budget and read every first piece itself, through one uplink
        peers = max(self._active(t), t.awaited)
        parallelism = self.config.origin_parallelism
        quota = origin_quota(parallelism, peers, t.info.source_node, me.peer_id, defer)
        return quota - mine

    def _unlimited_fetching(self, t: TaskState, peer_id: str) -> bool:
        """Whether a peer other than ``peer_id`` without an upload limit still fetches ``t``."""
        n = t.info.n_pieces
        return any(
            p != peer_id
            and len(h) < n
            and p not in t.finished
            and p in self.peers
            and self.peers[p].upload_rate is None
            for p, h in t.have.items()
        )

    def finish(self, task_id: str, peer_id: str, error: str | None, fatal: bool = False) -> None:
        """A peer is done with a task (``error`` None: every piece verified).

        A peer that failed drops what it held; a ``fatal`` error (the whole file's digest is
        wrong, the origin refused the object) fails the task for everyone.
        """
        t = self._task(task_id)
        t.finished[peer_id] = error
        t.awaited = max(0, t.awaited - 1)
        if t.streamer == peer_id:
            t.streamer = None
        for piece in list(t.leases.get(peer_id, {})):
            self._release(t, peer_id, piece)
        # no lease table for a member that is done: the expiry scan (every second) walks the
        # tables of every kept task, and thousands of tasks times every node that fetched them
        # took it 0.19 s per scan at 200 nodes
        t.leases.pop(peer_id, None)
        if error:
            for piece in t.have.pop(peer_id, set()):
                t.holders.get(piece, set()).discard(peer_id)
            self._check_source(t, peer_id, f"failed ({error})")
        if fatal:
            t.error = error
        if error:  # its pieces may have to come from elsewhere; a fatal error reaches everyone
            self._notify()

    def peer_lost(self, peer_id: str, incarnation: str | None = None) -> None:
        """Forget a dead peer: its pieces, its leases, its uploads.

        With ``incarnation``, only if that actor still stands for the peer id (a report about an
        actor that was since replaced by a new one on the same node changes nothing).
        """
        known = self.peers.get(peer_id)
        if incarnation is not None and known is not None and known.incarnation != incarnation:
            return
        for t in self.tasks.values():
            if peer_id in t.have and peer_id not in t.finished:
                t.awaited = max(0, t.awaited - 1)  # it will not finish
            for piece in t.have.pop(peer_id, set()):
                t.holders.get(piece, set()).discard(peer_id)
            for piece in list(t.leases.get(peer_id, {})):
                self._release(t, peer_id, piece)
            t.leases.pop(peer_id, None)
            if t.streamer == peer_id:
                t.streamer = None
            self._check_source(t, peer_id, "is gone")
        self.peers.pop(peer_id, None)
        self._notify()

    @staticmethod
    def _check_source(t: TaskState, peer_id: str, what: str) -> None:
        """Fail a node-local task whose source node ``peer_id`` dropped out while some piece is
        held nowhere else: only that node can read the origin, so the others would wait forever."""
        if t.info.source_node != peer_id or t.error:
            return
        if any(not t.holders.get(i) for i in range(t.info.n_pieces)):
            t.error = (
                f"{source.redact_url(t.info.url)} is only on node {peer_id}, whose peer {what} "
                "before every piece left it"
            )

    def progress(self, task_ids: list[str]) -> dict[str, int]:
        """Bytes each peer holds across ``task_ids``."""
        out: dict[str, int] = {}
        for tid in task_ids:
            t = self.tasks.get(tid)
            if t is None:
                continue
            for peer_id, have in t.have.items():
                nbytes = sum(b - a for a, b in map(t.info.piece_range, have))
                out[peer_id] = out.get(peer_id, 0) + nbytes
        return out

    def status(self) -> list[dict[str, Any]]:
        """One summary row per task."""
        rows = []
        for tid, t in self.tasks.items():
            complete = sum(1 for h in t.have.values() if len(h) == t.info.n_pieces)
            rows.append(
                {
                    "task_id": tid,
                    "url": source.redact_url(t.info.url),
                    "length": t.info.length,
                    "piece_size": t.info.piece_size,
                    "pieces": t.info.n_pieces,
                    "peers": len(t.have),
                    "nodes_done": complete,
                    "state": "failed"
                    if t.error
                    else ("done" if complete and complete == len(t.have) else "running"),
                    "error": t.error,
                    "asks": dict(t.asks),
                }
            )
        return rows
