"""A process's ``/proc/PID/stat`` (Linux), split safely: its command name may hold spaces and
parentheses, so the line is cut at its last ``)``."""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int | str) -> tuple[str, list[str]]:
    """``pid``'s command name and the fields of its stat line after the name (the line's
    field 3 is index 0 here: ``[7]`` minor faults, ``[9]`` major faults, ``[11]`` / ``[12]``
    user / system clock ticks). OSError if the process is gone."""
    head, tail = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
    return head.split("(", 1)[1], tail.split()
