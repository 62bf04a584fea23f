"""What a new task's ``PieceStore.begin`` costs on a node whose cache holds N complete entries
(within its quota and below its disk watermark, as a long-lived node's cache mostly is).

Every task a node fetches begins with ``begin``: it makes room, then creates the task's data
file. Run from a checkout (``PYTHONPATH`` selects the code measured):

    python bench/store_begin.py --entries 100 1000 10000 --begins 200

Prints one Markdown row per N: the seconds it took to fill the cache with its N entries (one
``begin``, write and ``complete`` each, as a node fetching a dataset of N files does), then the
median and 90th percentile of a further ``begin`` in milliseconds (each begun task is
discarded again, so the cache keeps N entries).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayfly.eviction import GcPolicy
from rayfly.storage import PieceStore
from rayfly.task import Cut

QUOTA = 1 << 40


def cached_store(root: Path, entries: int) -> PieceStore:
    """A store of ``entries`` complete one-piece entries of 4 KiB."""
    store = PieceStore(root, QUOTA, policy=GcPolicy(QUOTA, high=1.0, low=1.0))
    for i in range(entries):
        tid = f"cached{i:06d}"
        store.begin(tid, Cut(4096, 4096))
        store.write_piece(tid, 0, b"c" * 4096)
        store.complete(tid, "00" * 32)
    return store


def begin_ms(store: PieceStore, begins: int) -> list[float]:
    """Milliseconds of each of ``begins`` begins of new tasks (each discarded after)."""
    out = []
    for i in range(begins):
        tid = f"new{i:06d}"
        t0 = time.perf_counter()
        store.begin(tid, Cut(1 << 20, 1 << 20))
        out.append((time.perf_counter() - t0) * 1000)
        store.discard(tid)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--begins", type=int, default=200)
    args = parser.parse_args()
    print("| complete entries | fill s | begin ms, median | begin ms, p90 |")
    print("| ---: | ---: | ---: | ---: |")
    for n in args.entries:
        with tempfile.TemporaryDirectory(prefix="rayfly-begin-") as tmp:
            t0 = time.perf_counter()
            store = cached_store(Path(tmp), n)
            fill_s = time.perf_counter() - t0
            ms = sorted(begin_ms(store, args.begins))
            p90 = ms[int(0.9 * (len(ms) - 1))]
            print(f"| {n} | {fill_s:.2f} | {statistics.median(ms):.3f} | {p90:.3f} |", flush=True)


if __name__ == "__main__":
    main()
