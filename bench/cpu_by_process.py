"""CPU seconds by process role over the life of a command, sampled every few seconds.

    python -m bench.cpu_by_process --every 5 --out cpu.jsonl -- python -m bench.smallfiles ...

Roles: an actor's worker by its class (Ray titles it ``ray::<Class>``), ``ray::IDLE`` and other
Ray workers, ``raylet``, ``gcs_server``, the command itself (``driver``: the benchmark's own
process, with any server it runs in a thread, such as moto's S3), and ``other`` (the rest of
the machine). Each sample is one JSON line of the CPU seconds each role used since the last;
the end prints the totals and the share of each role by window of the run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.procstat import machine_busy_s


def role(proc: psutil.Process, driver: int) -> str:
    """The role of ``proc`` (see the module's docstring)."""
    if proc.pid == driver:
        return "driver"
    try:
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "other"
    head = argv[0] if argv else ""
    if head.startswith("ray::"):
        return head.split()[0].split(".")[0]
    name = Path(head).name
    return name if name in ("raylet", "gcs_server") else "other"


def cpu_by_pid(driver: int) -> dict[int, tuple[str, float]]:
    """Every process's role and CPU seconds so far."""
    out = {}
    for proc in psutil.process_iter():
        try:
            times = proc.cpu_times()
            out[proc.pid] = (role(proc, driver), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def sample(before: dict[int, tuple[str, float]], now: dict[int, tuple[str, float]]) -> Counter:
    """CPU seconds each role used between two snapshots (a process that ended in between
    counts up to the first snapshot only)."""
    used: Counter = Counter()
    for pid, (name, cpu) in now.items():
        start = before[pid][1] if pid in before else 0.0  # a process started since
        used[name] += max(0.0, cpu - start)
    return used


def report(samples: list[dict], windows: int = 6) -> str:
    """Totals and shares by window, as a Markdown table."""
    roles = Counter()
    for s in samples:
        roles.update(s["cpu"])
    names = [n for n, _ in roles.most_common()]
    end = samples[-1]["t"] if samples else 0.0
    edges = [end * i / windows for i in range(windows + 1)]
    spans = " | ".join(f"{a:.0f}-{b:.0f} s" for a, b in itertools.pairwise(edges))
    head = "| role | CPU-s | " + spans
    lines = [head + " |", "| --- | ---: |" + " ---: |" * windows]
    for name in names:
        cells = []
        for a, b in itertools.pairwise(edges):
            part = [s for s in samples if a < s["t"] <= b]
            span = sum(s["dt"] for s in part) or 1.0
            cells.append(f"{sum(s['cpu'].get(name, 0.0) for s in part) / span:.2f}")
        lines.append(f"| {name} | {roles[name]:.1f} | " + " | ".join(cells) + " |")
    lines.append("(window cells: cores busy on average)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--out", required=True, help="JSON lines, one per sample")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    t0 = time.monotonic()
    child = subprocess.Popen(command)
    before, busy, last = cpu_by_pid(child.pid), machine_busy_s(), t0
    samples = []
    with Path(args.out).open("w") as out:
        while True:
            done = child.poll() is not None
            if not done:
                time.sleep(args.every)
            now, now_busy, t = cpu_by_pid(child.pid), machine_busy_s(), time.monotonic()
            used = sample(before, now)
            row = {"t": round(t - t0, 2), "dt": round(t - last, 2), "cpu": dict(used)}
            row["machine_busy"] = round(now_busy - busy, 2)
            out.write(json.dumps(row) + "\n")
            out.flush()
            samples.append(row)
            before, busy, last = now, now_busy, t
            if done:
                break
    print(report(samples))
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
