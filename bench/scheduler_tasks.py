"""What a long task list costs the scheduler, as on a long-lived cluster: its state machine
alone (no Ray).

1. Registrations: ``--tasks`` tasks, each fetched and finished by one node before the next is
   registered; the mean milliseconds of a registration once the scheduler keeps its bound of
   tasks (``scheduler_core.MAX_KEPT_TASKS``).
2. The lease-expiry scan (it runs at most once a second, on an exchange): the bound of tasks,
   each fetched and finished by ``--peers`` nodes; the milliseconds of one scan.

    python bench/scheduler_tasks.py --tasks 10000 --peers 200    # PYTHONPATH: the code measured
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayfly.config import SchedulerConfig
from rayfly.durable import MemoryStore
from rayfly.protocol import Done
from rayfly.scheduler_core import MAX_KEPT_TASKS, SchedulerCore
from rayfly.task import TaskInfo

MiB = 1 << 20


def fetched(core: SchedulerCore, task_id: str, node: str = "node") -> None:
    """``node`` joins the task, reads its one piece from the origin and finishes."""
    core.join(task_id, node, node, 4)
    (a,) = core.plan(task_id, node, 1).assignments
    core.report(task_id, node, [Done(a.piece, "digest", None, MiB, 0.1)], [])
    core.finish(task_id, node, None)


def registrations(tasks: int) -> None:
    core = SchedulerCore(SchedulerConfig(), kv=MemoryStore())
    past: list[float] = []
    for i in range(tasks):
        task_id = f"task{i:08d}"
        t0 = time.perf_counter()
        core.add_task(TaskInfo(task_id, "http://origin/x", MiB, MiB), "rarest-first")
        if i >= MAX_KEPT_TASKS:
            past.append(time.perf_counter() - t0)
        fetched(core, task_id)
    mean_ms = 1000 * sum(past) / max(1, len(past))
    print(f"tasks kept: {len(core.tasks)}; a registration past the bound: {mean_ms:.3f} ms mean")


def expiry_scan(peers: int) -> None:
    now = [0.0]
    core = SchedulerCore(SchedulerConfig(), kv=MemoryStore(), clock=lambda: now[0])
    for i in range(MAX_KEPT_TASKS):
        task_id = f"task{i:08d}"
        core.add_task(TaskInfo(task_id, "http://origin/x", MiB, MiB), "rarest-first")
        fetched(core, task_id, "node0")
        for p in range(1, peers):  # the others fetch it from node0: joined and finished
            core.join(task_id, f"node{p}", f"node{p}", 4)
            core.finish(task_id, f"node{p}", None)
    gc.collect()
    gc.freeze()  # the scan's time, not a collection of the objects made above
    scans = []
    for _ in range(5):
        now[0] += 2.0
        t0 = time.perf_counter()
        core.expire_leases()
        scans.append(time.perf_counter() - t0)
    print(f"{MAX_KEPT_TASKS} tasks x {peers} nodes: a lease-expiry scan {1000 * min(scans):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--peers", type=int, default=200)
    args = parser.parse_args()
    registrations(args.tasks)
    expiry_scan(args.peers)


if __name__ == "__main__":
    main()
