"""Scheduler scale in simulation: drive rayfly's real scheduler state machine with no Ray.

``python bench/simulate_scheduler.py --peers 100,1000,10000 --size-gib 10``

:class:`rayfly.scheduler_core.SchedulerCore` (which calls the pure functions of
``rayfly.scheduling``) is driven exactly as the ``Scheduler`` actor's ``exchange`` drives it:
``report`` the finished pieces, ``expire_leases``, ``plan`` up to ``want`` more.  Peers, links and
time are simulated by a discrete-event loop: a piece takes ``piece_size / rate`` where the rate
is the link rate shared by the parent's uploads in flight and the receiver's downloads in flight
(the origin's rate shared by its reads).  A peer whose answer is short long-polls (beside its
pieces in flight, as a peer does; ``--no-ask-beside``: only with nothing in flight, as before
cb0a9ee): it is woken by a report (as many waiters as the scheduler wakes,
:func:`rayfly.scheduling.wake_count`) or after ``long_poll_s``.

Only the CPU time spent inside the scheduler's methods is measured (``time.thread_time``, so
that other work on a shared machine does not count): the figures are the scheduler's own cost,
as decisions (assignments) per second of scheduler CPU, exchange calls per second, and the cost
per call against the number of peers.  Each simulation is bounded by ``--max-cpu`` seconds of
CPU (and four times that of wall-clock time); a bounded run reports what it reached.  Memory is
the traced size of the scheduler's state when every peer holds every piece (its largest).
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import io
import json
import pstats
import random
import sys
import time
import tracemalloc
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayfly.config import SchedulerConfig
from rayfly.protocol import Done
from rayfly.scheduler_core import SchedulerCore
from rayfly.scheduling import wake_count
from rayfly.task import TaskInfo, default_piece_size

RPC_LATENCY_S = 0.0005


@dataclass
class SimConfig:
    """One simulation's shape."""

    peers: int = 1000
    size: int = 10 << 30
    piece_size: int | None = None
    rate_gbit: float = 10.0
    origin_rate_gbit: float = 10.0
    concurrency: int = 8
    upload_slots: int = 8
    origin_parallelism: int = 8
    long_poll_s: float = 0.5
    wake_limit: int | None = None
    wake_per_piece: int = SchedulerConfig.wake_per_piece
    max_cpu_s: float = 120.0
    seed: int = 0
    slow_peers: int = 0
    slow_factor: float = 1.0
    ask_beside: bool = True
    shared_links: bool = False
    tail_split: int = 1


@dataclass
class PeerSim:
    """A simulated peer: pieces in flight, finished pieces not yet reported, whether waiting."""

    peer_id: str
    inflight: int = 0
    have: int = 0
    done: list[Done] = field(default_factory=list)
    waiting: bool = False
    wait_seq: int = 0
    finished_at: float | None = None


@dataclass
class Stats:
    """What the scheduler spent and handed out."""

    calls: int = 0
    empty_calls: int = 0
    assignments: int = 0
    origin_assignments: int = 0
    sched_s: float = 0.0
    max_call_s: float = 0.0


@dataclass
class Transfer:
    """A piece in flight under :class:`SharedLinks`."""

    peer_id: str
    piece: int
    parent: str | None
    size: int
    started: float
    remaining: float
    rate: float = 0.0
    since: float = 0.0
    version: int = 0


class SharedLinks:
    """Links shared at every moment (``--shared-links``): a transfer's rate is the smaller of its
    parent's uplink (the origin's for an origin read) and its receiver's downlink, each split
    evenly over the transfers using it, and it is shared again whenever a transfer starts or
    ends (the default model keeps the rate a transfer started with, which flatters the first
    of several transfers through one uplink). Cost per start or end: every transfer in flight,
    so for clusters of tens of peers, not thousands."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.active: dict[int, Transfer] = {}
        self.ups: Counter[str | None] = Counter()
        self.downs: Counter[str] = Counter()
        self.next_key = 0

    def start(self, peer_id: str, piece: int, parent: str | None, size: int) -> None:
        """A transfer begins now; every rate is shared again."""
        self.next_key += 1
        now = self.sim.now
        self.active[self.next_key] = Transfer(peer_id, piece, parent, size, now, float(size))
        self.ups[parent] += 1
        self.downs[peer_id] += 1
        self._reshare()

    def finish(self, key: int, version: int) -> Transfer | None:
        """The transfer ``key`` if this event is its current end (None: a stale event)."""
        t = self.active.get(key)
        if t is None or t.version != version:
            return None
        del self.active[key]
        self.ups[t.parent] -= 1
        self.downs[t.peer_id] -= 1
        self._reshare()
        return t

    def _reshare(self) -> None:
        now, sim = self.sim.now, self.sim
        origin = sim.cfg.origin_rate_gbit * 1e9 / 8
        for key, t in self.active.items():
            t.remaining = max(0.0, t.remaining - t.rate * (now - t.since))
            up = origin if t.parent is None else sim._link(t.parent)
            t.rate = min(up / self.ups[t.parent], sim._link(t.peer_id) / self.downs[t.peer_id])
            t.since, t.version = now, t.version + 1
            sim._push(now + t.remaining / t.rate, "transfer", t.peer_id, (key, t.version))


class Simulation:
    """A discrete-event simulation of one task spreading over ``config.peers`` peers."""

    def __init__(self, config: SimConfig) -> None:
        """Build the scheduler core and the task; the scheduler hears how many will fetch, and
        every peer joins at time 0."""
        self.cfg = config
        self.now = 0.0
        self.rng = random.Random(config.seed)
        piece = config.piece_size or default_piece_size(config.size)
        self.task = TaskInfo(
            "sim", "sim://origin/file", config.size, piece, tail_split=config.tail_split
        )
        sched_cfg = SchedulerConfig(
            origin_parallelism=config.origin_parallelism,
            lease_timeout_s=1e9,
            long_poll_s=config.long_poll_s,
            wake_per_piece=config.wake_per_piece,
        )
        self.core = SchedulerCore(sched_cfg, clock=lambda: self.now)
        self.core.add_task(self.task, "rarest-first")
        self.core.expect(self.task.task_id, config.peers)  # as the client says before fetching
        self.peers = {f"p{i:05d}": PeerSim(f"p{i:05d}") for i in range(config.peers)}
        self.events: list[tuple[float, int, str, str, Any]] = []
        self.queue: deque[str] = deque()  # long-polling peers, in the order they started
        self.seq = 0
        self.stats = Stats()
        self.links = SharedLinks(self) if config.shared_links else None
        for pid in self.peers:
            self._timed(self.core.join, self.task.task_id, pid, pid, config.upload_slots, None)
            self._push(self.rng.uniform(0, 0.05), "exchange", pid, None)

    def _push(self, at: float, kind: str, peer_id: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, peer_id, data))

    def _timed(self, fn: Any, *args: Any) -> Any:
        t = time.thread_time()
        out = fn(*args)
        dt = time.thread_time() - t
        self.stats.sched_s += dt
        self.stats.max_call_s = max(self.stats.max_call_s, dt)
        return out

    def _slow(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is one of the first ``slow_peers``."""
        return int(peer_id[1:]) < self.cfg.slow_peers

    def _link(self, peer_id: str) -> float:
        """A peer's link (bytes/s each way): a slow peer's is ``slow_factor`` slower."""
        link = self.cfg.rate_gbit * 1e9 / 8
        return link / self.cfg.slow_factor if self._slow(peer_id) else link

    def _rate(self, parent: str | None, receiver: PeerSim) -> float:
        """Bytes/s for a new transfer, from the sharing of both ends at its start."""
        if parent is None:
            sharing = max(1, len(self.core.tasks["sim"].origin_inflight))
            up = self.cfg.origin_rate_gbit * 1e9 / 8 / sharing
        else:
            up = self._link(parent) / max(1, self.core.peers[parent].uploads)
        return min(up, self._link(receiver.peer_id) / max(1, receiver.inflight))

    def exchange(self, peer: PeerSim) -> None:
        """The actor's ``exchange``: report, expire leases, plan; schedule the transfers."""
        peer.waiting = False
        if peer.finished_at is not None:
            return
        done, peer.done = peer.done, []
        want = self.cfg.concurrency - peer.inflight
        tid = self.task.task_id

        def call() -> Any:
            self.core.report(tid, peer.peer_id, done, [])
            self.core.expire_leases()
            return self.core.plan(tid, peer.peer_id, want)

        batch = self._timed(call)
        self.stats.calls += 1
        self.stats.assignments += len(batch.assignments)
        self.stats.empty_calls += not batch.assignments
        for a in batch.assignments:
            peer.inflight += 1
            self.stats.origin_assignments += a.parent is None
            size = self.task.piece_range(a.piece)[1] - self.task.piece_range(a.piece)[0]
            if self.links is not None:
                self.links.start(peer.peer_id, a.piece, a.parent, size)
                continue
            secs = size / self._rate(a.parent, peer)
            self._push(self.now + secs, "piece", peer.peer_id, (a.piece, a.parent, size, secs))
        # a short answer long-polls: beside the pieces in flight when it left at least as many
        # slots free as are busy (``ask_beside``, as a peer does), or only with nothing in
        # flight (the peer before cb0a9ee)
        free = want - len(batch.assignments)
        beside = self.cfg.ask_beside and free >= peer.inflight
        if free > 0 and (beside or peer.inflight == 0):
            peer.waiting = True
            peer.wait_seq += 1
            self.queue.append(peer.peer_id)
            self._push(self.now + self.cfg.long_poll_s, "poll", peer.peer_id, peer.wait_seq)
        if done:
            self._wake_waiters(len(done))

    def _wake_waiters(self, done: int) -> None:
        """A report of ``done`` pieces wakes as many long-polling peers as the scheduler does
        (:func:`rayfly.scheduling.wake_count`), longest waiting first as the scheduler does, or
        ``wake_limit`` of them (a what-if; 0 wakes every waiter, as the scheduler did before it
        bounded its wakeups)."""
        if self.cfg.wake_limit == 0:
            limit = len(self.queue)
        elif self.cfg.wake_limit is not None:
            limit = self.cfg.wake_limit
        else:
            limit = wake_count(done, 0, self.cfg.wake_per_piece)
        woken = 0
        while self.queue and woken < limit:
            p = self.peers[self.queue.popleft()]
            if p.waiting:  # entries of peers that asked again meanwhile are stale
                p.waiting = False
                woken += 1
                self._push(self.now + RPC_LATENCY_S, "exchange", p.peer_id, None)

    def piece_done(self, peer: PeerSim, data: tuple[int, str | None, int, float]) -> None:
        """A transfer ended: report it (with the next exchange), finish when complete."""
        piece, parent, size, secs = data
        peer.inflight -= 1
        peer.have += 1
        peer.done.append(Done(piece, f"d{piece}", parent, size, secs))
        if peer.have == self.task.n_pieces:
            peer.finished_at = self.now
            self._timed(self.core.report, self.task.task_id, peer.peer_id, peer.done, [])
            self._timed(self.core.finish, self.task.task_id, peer.peer_id, None)
            self._wake_waiters(len(peer.done))
            peer.done = []
        else:
            self._push(self.now + RPC_LATENCY_S, "exchange", peer.peer_id, None)

    def run(self) -> dict[str, Any]:
        """Run until every peer finishes or ``max_cpu_s`` passes; return the figures."""
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        bounded = False
        left = self.cfg.peers
        while self.events and left:
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            if cpu > self.cfg.max_cpu_s or wall > 4 * self.cfg.max_cpu_s:
                bounded = True
                break
            kind, peer = self.step()
            if kind == "piece":
                left -= (
                    peer.finished_at is not None
                    and peer.have == self.task.n_pieces
                    and (peer.finished_at == self.now)
                )
        return self.figures(bounded, time.thread_time() - cpu0)

    def step(self) -> tuple[str, PeerSim]:
        """Take the next event and handle it (a landed piece, an exchange, a long-poll's time
        up unless it was answered since); return its kind and peer."""
        self.now, _, kind, pid, data = heapq.heappop(self.events)
        peer = self.peers[pid]
        if kind == "transfer":
            assert self.links is not None
            t = self.links.finish(*data)
            if t is None:
                return "stale", peer
            kind = "piece"
            self.piece_done(peer, (t.piece, t.parent, t.size, self.now - t.started))
        elif kind == "piece":
            self.piece_done(peer, data)
        elif kind == "exchange" or (kind == "poll" and peer.waiting and data == peer.wait_seq):
            self.exchange(peer)
        return kind, peer

    def figures(self, bounded: bool, cpu: float) -> dict[str, Any]:
        """Decisions per second, calls per second and what the run reached."""
        s = self.stats
        finished = [p.finished_at for p in self.peers.values() if p.finished_at is not None]
        fast = sorted(
            p.finished_at
            for p in self.peers.values()
            if p.finished_at is not None and not self._slow(p.peer_id)
        )
        reads = Counter(self.core.tasks["sim"].readers.values())
        total = self.cfg.peers * self.task.n_pieces
        return {
            "config": asdict(self.cfg),
            "piece_size": self.task.piece_size,
            "n_pieces": self.task.n_pieces,
            "bounded": bounded,
            "sim_cpu_s": cpu,
            "sim_time_s": self.now,
            "ideal_s": self.cfg.size / (self.cfg.rate_gbit * 1e9 / 8),
            "peers_finished": len(finished),
            "makespan_sim_s": max(finished) if len(finished) == self.cfg.peers else None,
            "fast_peers_p50_s": fast[len(fast) // 2] if fast else None,
            "fast_peers_max_s": fast[-1] if fast else None,
            "origin_reads_max_share": max(reads.values(), default=0) / self.task.n_pieces,
            "pieces_assigned": s.assignments,
            "pieces_total": total,
            "origin_reads": s.origin_assignments,
            "calls": s.calls,
            "empty_calls": s.empty_calls,
            "sched_cpu_s": s.sched_s,
            "decisions_per_s": s.assignments / s.sched_s if s.sched_s else None,
            "calls_per_s": s.calls / s.sched_s if s.sched_s else None,
            "mean_call_ms": 1e3 * s.sched_s / max(1, s.calls),
            "max_call_ms": 1e3 * s.max_call_s,
        }


def state_memory(peers: int, size: int, piece_size: int | None, slots: int) -> dict[str, float]:
    """Traced bytes of the scheduler's state when every peer holds every piece (its peak)."""
    piece = piece_size or default_piece_size(size)
    task = TaskInfo("mem", "sim://origin/file", size, piece)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    core = SchedulerCore(SchedulerConfig())
    core.add_task(task, "rarest-first")
    for i in range(peers):
        pid = f"p{i:05d}"
        core.join("mem", pid, pid, slots, None)
        core.report("mem", pid, [Done(j, f"d{j:08x}", None, piece, 1.0)
                                 for j in range(task.n_pieces)], [])  # fmt: skip
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del core
    return {"peers": peers, "n_pieces": task.n_pieces, "state_bytes": used,
            "bytes_per_peer_piece": used / (peers * task.n_pieces)}  # fmt: skip


def profile_calls(config: SimConfig, calls: int) -> str:
    """cProfile of the scheduler's part of ``calls`` exchanges (top functions by own time)."""
    sim = Simulation(config)
    prof = cProfile.Profile()
    original = sim._timed

    def profiled(fn: Any, *args: Any) -> Any:
        prof.enable()
        try:
            return original(fn, *args)
        finally:
            prof.disable()

    sim._timed = profiled  # type: ignore[method-assign]
    while sim.events and sim.stats.calls < calls:
        sim.step()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", default="100,1000,10000")
    parser.add_argument("--size-gib", type=float, default=10.0)
    parser.add_argument("--piece-size-mib", type=int, default=None)
    parser.add_argument("--rate-gbit", type=float, default=10.0)
    parser.add_argument("--max-cpu", type=float, default=120.0)
    parser.add_argument(
        "--wake-limit",
        type=int,
        default=None,
        help="what-if: wake this many long-polling peers per report (0: all of them)",
    )
    parser.add_argument(
        "--slots", type=int, default=8, help="download slots and upload slots per peer"
    )
    parser.add_argument("--origin-parallelism", type=int, default=8)
    parser.add_argument(
        "--shared-links",
        action="store_true",
        help="share each link's rate again whenever a transfer starts or ends (tens of peers)",
    )
    parser.add_argument(
        "--tail-split",
        type=int,
        default=1,
        help="cut the task's last pieces this many times smaller (rayfly.task.Cut; a task of "
        "default piece size has rayfly.task.TAIL_SPLIT)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="runs per size, seeds 0..n-1")
    parser.add_argument("--slow-peers", type=int, default=0, help="peers with a slower link")
    parser.add_argument("--slow-factor", type=float, default=1.0, help="how much slower")
    parser.add_argument(
        "--no-ask-beside",
        dest="ask_beside",
        action="store_false",
        help="what-if: peers long-poll only with nothing in flight (the loop before cb0a9ee)",
    )
    parser.add_argument("--profile-calls", type=int, default=300)
    parser.add_argument("--out", default="bench/results/scheduler_sim.json")
    args = parser.parse_args()
    size = int(args.size_gib * (1 << 30))
    piece = args.piece_size_mib << 20 if args.piece_size_mib else None
    doc: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "runs": [], "memory": []}
    for n in [int(x) for x in args.peers.split(",")]:
        for seed in range(args.seeds):
            cfg = SimConfig(peers=n, size=size, piece_size=piece, rate_gbit=args.rate_gbit,
                            origin_rate_gbit=args.rate_gbit, max_cpu_s=args.max_cpu,
                            wake_limit=args.wake_limit, slow_peers=args.slow_peers,
                            concurrency=args.slots, upload_slots=args.slots,
                            origin_parallelism=args.origin_parallelism,
                            shared_links=args.shared_links, tail_split=args.tail_split,
                            seed=seed, slow_factor=args.slow_factor,
                            ask_beside=args.ask_beside)  # fmt: skip
            result = Simulation(cfg).run()
            doc["runs"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "config"}), flush=True)
        doc["memory"].append(state_memory(n, size, piece, cfg.upload_slots))
        print(json.dumps(doc["memory"][-1]), flush=True)
    big = SimConfig(peers=max(int(x) for x in args.peers.split(",")), size=size, piece_size=piece)
    doc["profile"] = profile_calls(big, args.profile_calls)
    print(doc["profile"])
    Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
