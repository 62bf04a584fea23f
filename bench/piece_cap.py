"""The piece size a fresh cluster gives a large task, after its warm-up and after each of a few
small tasks: the scheduler's cap (``PieceLimits``) follows the transfers it measured so far.

    python -m bench.piece_cap --nodes 4 --clusters 3 --tasks 3 --local-reads off

Each cluster is new (``bench.core.setup``: one 1 MiB warm-up transfer, as every bench here
starts with); prints the limits and the piece size a 4 GiB task would get, one line per step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import ray

from bench.core import rayfly_once, settle, setup
from rayfly.actors import placement
from rayfly.config import parse_size
from rayfly.task import default_piece_size


def one_cluster(nodes: int, tasks: int, size: int, large: int) -> None:
    """Start a cluster, print the cap after its warm-up and after each ``size``-byte task."""
    work = Path(tempfile.mkdtemp(prefix="rayfly-cap-"))
    origin, cluster = setup(nodes, work, size)
    try:
        scheduler = placement.get_scheduler()
        for step in range(tasks + 1):
            if step:
                dest = work / "dest"
                report = rayfly_once(origin.url + "payload.bin", str(dest / "{node_id}" / "p"))[1]
                settle(dest, report)
            limits = ray.get(scheduler.piece_limits.remote())
            piece = default_piece_size(large, limits) >> 20
            what = "after the warm-up" if not step else f"after task {step}"
            print(f"{what}: {limits} -> a {large >> 30} GiB task gets {piece} MiB pieces")
    finally:
        ray.shutdown()
        cluster.shutdown()
        origin.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--size", type=parse_size, default=parse_size("64MiB"))
    parser.add_argument("--large", type=parse_size, default=parse_size("4GiB"))
    parser.add_argument("--local-reads", choices=["on", "off"], default="off")
    args = parser.parse_args()
    os.environ["RAYFLY_LOCAL_READS"] = args.local_reads
    for n in range(args.clusters):
        print(f"cluster {n + 1}:", flush=True)
        one_cluster(args.nodes, args.tasks, args.size, args.large)


if __name__ == "__main__":
    main()
