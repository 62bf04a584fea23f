"""Which cache entries to evict, and why: TTL, quota, disk watermarks. Pure functions.

A node's cache is cleaned in three ways, in this order:

1. **TTL**: a complete entry not used for ``ttl_s`` seconds goes.
2. **Quota**: least-recently-used complete entries go until the cache's entries (plus the room a
   new task needs) fit in ``quota`` bytes.
3. **Watermarks**: when the cache's filesystem is more than ``high`` full, least-recently-used
   complete entries go until it is at most ``low`` full. Only bytes an eviction really frees
   count: an entry whose data file is also a published destination (a hard link) frees nothing,
   so it is kept, and when only such entries are left the plan stops and says so.

Entries in use (downloading, or pinned by the caller) are never candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayfly.errors import InvalidInput


@dataclass(frozen=True)
class GcPolicy:
    """The limits a node's cache keeps to (see the module docstring)."""

    quota: int
    ttl_s: float | None = 7 * 86400.0
    high: float = 0.80
    low: float = 0.60

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high <= 1:
            raise InvalidInput(
                f"cache watermarks must satisfy 0 < low <= high <= 100%, got low "
                f"{self.low:.0%} and high {self.high:.0%}"
            )
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise InvalidInput(f"cache TTL must be positive, got {self.ttl_s}s")


@dataclass(frozen=True)
class Candidate:
    """What the policy needs of one complete cache entry."""

    task_id: str
    length: int
    last_used: float
    frees: int


@dataclass(frozen=True)
class Disk:
    """The cache's filesystem: its size and how much of it is used."""

    total: int
    used: int

    @property
    def free(self) -> int:
        """Bytes still usable."""
        return self.total - self.used


@dataclass(frozen=True)
class Eviction:
    """One entry to evict, why, and how many bytes of disk that frees."""

    task_id: str
    reason: str
    frees: int


@dataclass
class GcPlan:
    """The evictions to make, and a note when the disk stays above its watermark."""

    evictions: list[Eviction]
    note: str | None = None

    @property
    def task_ids(self) -> list[str]:
        """The evicted task ids, in order."""
        return [e.task_id for e in self.evictions]


def may_evict(
    policy: GcPolicy,
    oldest_use: float | None,
    now: float,
    cache_bytes: int,
    disk: Disk | None = None,
    need: int = 0,
) -> bool:
    """Whether :func:`plan_gc` could evict anything with room for ``need`` more bytes: an entry
    is past its TTL (``oldest_use``: the least recent use of a complete entry, None when there
    is none), the quota cannot hold ``need`` more, or the disk would go above its high
    watermark. When False the plan is empty whatever the entries' bytes on disk, so a store
    making room for a new task need not look at each entry's file."""
    if oldest_use is None:
        return False
    if policy.ttl_s is not None and now - oldest_use > policy.ttl_s:
        return True
    if cache_bytes + need > policy.quota:
        return True
    return disk is not None and disk.used + need > policy.high * disk.total


def plan_gc(
    candidates: list[Candidate],
    policy: GcPolicy,
    now: float,
    cache_bytes: int,
    disk: Disk | None = None,
    need: int = 0,
) -> GcPlan:
    """The evictions that bring the cache within ``policy``, with room for ``need`` more bytes.

    ``cache_bytes`` counts every entry the store holds (complete or not); ``disk`` is the
    filesystem's state now (None: no watermark check).
    """
    plan = GcPlan([])
    lru = sorted(candidates, key=lambda c: c.last_used)
    left = []
    for c in lru:
        if policy.ttl_s is not None and now - c.last_used > policy.ttl_s:
            days = (now - c.last_used) / 86400
            plan.evictions.append(Eviction(c.task_id, f"unused for {days:.1f} days (TTL)", c.frees))
            cache_bytes -= c.length
        else:
            left.append(c)
    while left and cache_bytes + need > policy.quota:
        c = left.pop(0)
        plan.evictions.append(Eviction(c.task_id, "over the cache quota", c.frees))
        cache_bytes -= c.length
    if disk is not None:
        plan.note = _watermark(plan, left, policy, disk, need)
    return plan


def _watermark(
    plan: GcPlan, left: list[Candidate], policy: GcPolicy, disk: Disk, need: int
) -> str | None:
    used = disk.used + need - sum(e.frees for e in plan.evictions)
    if used <= policy.high * disk.total:
        return None
    target = policy.low * disk.total
    for c in list(left):
        if used <= target:
            return None
        if c.frees <= 0:
            continue  # its data is also a published file: evicting it frees nothing
        left.remove(c)
        plan.evictions.append(Eviction(c.task_id, f"disk above {policy.high:.0%}", c.frees))
        used -= c.frees
    if used <= target:
        return None
    held = sum(c.length for c in left)
    return (
        f"the cache's disk stays {used / disk.total:.0%} full (watermark {policy.low:.0%}): "
        f"the rest of the cache ({held} bytes) is held by published files, and other data "
        "fills the disk"
    )
