"""A process's ``/proc/PID/stat`` (Linux), split safely: its command name may hold spaces and
parentheses, so the line is cut at its last ``)``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def stat_fields(pid: int | str) -> tuple[str, list[str]]:
    """``pid``'s command name and the fields of its stat line after the name (the line's
    field 3 is index 0 here: ``[7]`` minor faults, ``[9]`` major faults, ``[11]`` / ``[12]``
    user / system clock ticks). OSError if the process is gone."""
    head, tail = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
    return head.split("(", 1)[1], tail.split()


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot, summed over its cores
    (``/proc/stat``: every state but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def resident(pid: int | str) -> dict[str, int]:
    """``pid``'s resident memory by kind, in bytes (``/proc/PID/status``): ``anon`` its own
    (heap, buffers), ``file`` mapped files (libraries), ``shmem`` shared memory it has touched
    (Ray's object store: those pages belong to the node's store, counted once there).
    OSError if the process is gone."""
    kinds = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, *rest = line.split()
        if name in kinds:
            out[kinds[name]] = int(rest[0]) * 1024  # kB
    return out


def own_memory(mem: Mapping[str, int]) -> int:
    """A process's own resident bytes from its :func:`resident` memory: ``anon`` + ``file``,
    without the shared object-store pages it touched."""
    return mem["anon"] + mem["file"]
