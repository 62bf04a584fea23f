"""What writing a file costs on this machine: through the page cache (the first time, when the
kernel has to find fresh pages, and again right after, when it reuses the pages it just
freed), with ``fsync``, and with ``O_DIRECT``; and what the first touch of fresh anonymous
memory costs (``touch``: one byte written per page of a new mapping, twice in a row). Wall and
CPU seconds of this process.

    python -m bench.write_cost --size 1GiB --dir /tmp --runs 2

The piece store writes aligned pieces with ``O_DIRECT`` (``RAYFLY_DIRECT_IO``) because of what
this prints here (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from rayfly.config import parse_size

CHUNK = 16 << 20  # one piece of a 1 GiB task
MODES = ("buffered", "buffered_again", "direct", "fsync", "touch", "touch_again")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_once(path: Path, size: int, mode: str, buf: mmap.mmap) -> dict[str, float]:
    """Write ``size`` bytes to ``path`` in :data:`CHUNK` pieces; ``mode``: buffered, fsync
    (buffered, then fsync inside the timing) or direct. The file is removed afterwards."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if mode == "direct" else 0)
    fd = os.open(path, flags, 0o644)
    try:
        t0, c0 = time.perf_counter(), _cpu()
        for off in range(0, size, CHUNK):
            os.pwrite(fd, buf, off)
        if mode == "fsync":
            os.fsync(fd)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    finally:
        os.close(fd)
        os.unlink(path)
        os.sync()
    return {"seconds": seconds, "cpu_s": cpu}


def touch_once(size: int) -> dict[str, float]:
    """Map ``size`` bytes of anonymous memory, write one byte per page, unmap: what a process
    pays for memory the kernel has to find (and, on a VM, the host has to back) afresh."""
    mem = mmap.mmap(-1, size)
    try:
        t0, c0 = time.perf_counter(), _cpu()
        np.frombuffer(mem, np.uint8)[:: mmap.PAGESIZE] = 1
        return {"seconds": time.perf_counter() - t0, "cpu_s": _cpu() - c0}
    finally:
        mem.close()


def main() -> None:
    """Command-line entry point: prints one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    size = args.size // CHUNK * CHUNK
    buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(CHUNK))
    path = Path(args.dir) / f"rayfly-write-cost-{os.getpid()}"
    rows = []
    for run in range(args.runs):
        for mode in MODES:
            kind = mode.removesuffix("_again")
            got = touch_once(size) if kind == "touch" else write_once(path, size, kind, buf)
            per_gib = got["cpu_s"] / (size / 2**30)
            rows.append({"run": run, "mode": mode, **got, "cpu_s_per_gib": per_gib})
        time.sleep(5)  # idle, as between two distributions
    doc = {"bench": "write_cost", "size": size, "dir": args.dir, "rows": rows}
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
