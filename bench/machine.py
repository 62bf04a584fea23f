"""Facts about the machine a benchmark runs on that change its figures between runs.

Some VMs hand memory the guest frees back to the host (virtio-balloon free page reporting):
the next use of such memory faults on the host, and on this project's VMs every pull after
the first of a run took about twice as long, in every mode (docs/BENCHMARKS.md, twenty-second
pass). A benchmark prints these facts so that such a run can be told from a quiet one.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

BALLOON = Path("/sys/bus/virtio/drivers/virtio_balloon")
FREE_PAGE_REPORTING_BIT = 5  # VIRTIO_BALLOON_F_REPORTING


def free_page_reporting(balloon: Path = BALLOON) -> bool | None:
    """Whether a virtio balloon device reports freed pages to the host (None: no balloon)."""
    for features in sorted(balloon.glob("virtio*/features")):
        bits = features.read_text().strip()
        return len(bits) > FREE_PAGE_REPORTING_BIT and bits[FREE_PAGE_REPORTING_BIT] == "1"
    return None


def write_sync_cost(rounds: int = 8, mib: int = 100) -> list[float]:
    """System CPU seconds of each of ``rounds`` writes of ``mib`` MiB with ``fdatasync``, the
    file removed after each (its page cache freed). On a VM whose freed memory goes back to the
    host, the later rounds cost several times the first ones."""
    block = b"\0" * (1 << 20)
    costs = []
    with tempfile.TemporaryDirectory(prefix="rayfly-machine-") as work:
        path = Path(work) / "probe"
        for _ in range(rounds):
            before = os.times().system
            with path.open("wb") as out:
                for _ in range(mib):
                    out.write(block)
                out.flush()
                os.fdatasync(out.fileno())
            costs.append(os.times().system - before)
            path.unlink()
    return costs


def describe() -> dict[str, object]:
    """The facts, for a benchmark's output and its JSON."""
    costs = write_sync_cost()
    half = len(costs) // 2
    return {
        "free_page_reporting": free_page_reporting(),
        "write_sync_sys_s": [round(c, 3) for c in costs],
        "write_sync_later_to_first": round(
            statistics.median(costs[half:]) / max(statistics.median(costs[:half]), 1e-3), 2
        ),
    }


def summary(facts: dict[str, object]) -> str:
    """One line for a benchmark's report."""
    reporting = {True: "on", False: "off", None: "no balloon"}[facts["free_page_reporting"]]
    costs = facts["write_sync_sys_s"]
    return (
        f"machine: free page reporting {reporting}; write+fdatasync of 100 MiB, sys CPU-s of "
        f"each round {costs} (later half / first half: {facts['write_sync_later_to_first']}x)"
    )


if __name__ == "__main__":
    print(summary(describe()))
