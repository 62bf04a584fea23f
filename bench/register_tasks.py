"""What registering a task costs the scheduler once it keeps its bound of tasks
(``scheduler_core.MAX_KEPT_TASKS``), as on a long-lived cluster: the scheduler's state machine
alone (no Ray), each task fetched and finished by one node before the next is registered.

    python bench/register_tasks.py --tasks 10000    # PYTHONPATH selects the code measured

Prints the tasks kept at the end and the mean milliseconds of a registration past the bound.
"""

from __future__ import annotations

import argparse
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


def fetched(core: SchedulerCore, task_id: str) -> None:
    """One node joins the task, reads its one piece from the origin and finishes."""
    core.join(task_id, "node", "host", 4)
    (a,) = core.plan(task_id, "node", 1).assignments
    core.report(task_id, "node", [Done(a.piece, "digest", None, MiB, 0.1)], [])
    core.finish(task_id, "node", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    core = SchedulerCore(SchedulerConfig(), kv=MemoryStore())
    past: list[float] = []
    for i in range(args.tasks):
        task_id = f"task{i:08d}"
        t0 = time.perf_counter()
        core.add_task(TaskInfo(task_id, "http://origin/x", MiB, MiB), "rarest-first")
        if i >= MAX_KEPT_TASKS:
            past.append(time.perf_counter() - t0)
        fetched(core, task_id)
    mean_ms = 1000 * sum(past) / max(1, len(past))
    print(f"tasks kept: {len(core.tasks)}; a registration past the bound: {mean_ms:.3f} ms mean")


if __name__ == "__main__":
    main()
