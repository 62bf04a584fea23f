"""The cache's GC policy (pure): TTL, quota, disk watermarks counting only bytes really freed."""

from __future__ import annotations

import random

import pytest

from rayfly.errors import InvalidInput
from rayfly.eviction import Candidate, Disk, GcPolicy, may_evict, plan_gc

DAY = 86400.0
NOW = 100 * DAY


def cand(tid: str, age_days: float, length: int = 100, frees: int | None = None) -> Candidate:
    return Candidate(tid, length, NOW - age_days * DAY, length if frees is None else frees)


def test_ttl_evicts_entries_unused_for_longer():
    plan = plan_gc([cand("old", 8), cand("new", 1)], GcPolicy(10_000, ttl_s=7 * DAY), NOW, 200)
    assert plan.task_ids == ["old"]
    assert "unused for 8.0 days (TTL)" in plan.evictions[0].reason


def test_quota_evicts_least_recently_used_first_with_room_for_a_new_task():
    entries = [cand("a", 3), cand("b", 2), cand("c", 1)]
    plan = plan_gc(entries, GcPolicy(300, ttl_s=None), NOW, 300, need=150)
    assert plan.task_ids == ["a", "b"]
    assert all(e.reason == "over the cache quota" for e in plan.evictions)


def test_watermark_counts_only_bytes_really_freed():
    """A published entry (its data file hard-linked at a destination) frees nothing: skipped."""
    entries = [cand("published", 5, frees=0), cand("a", 4), cand("b", 3), cand("c", 2)]
    disk = Disk(total=1000, used=850)  # above 80 %
    plan = plan_gc(entries, GcPolicy(10_000, ttl_s=None), NOW, 400, disk)
    assert plan.task_ids == ["a", "b", "c"]  # 850 - 300 = 550 <= 600
    assert plan.note is None
    assert all("disk above 80%" in e.reason for e in plan.evictions)


def test_watermark_stops_and_says_so_when_the_rest_is_published():
    entries = [cand("pub1", 5, length=300, frees=0), cand("a", 4)]
    plan = plan_gc(entries, GcPolicy(10_000, ttl_s=None), NOW, 400, Disk(1000, 900))
    assert plan.task_ids == ["a"]
    assert plan.note is not None and "held by published files" in plan.note
    assert "(300 bytes)" in plan.note


def test_below_the_high_watermark_nothing_goes():
    plan = plan_gc([cand("a", 4)], GcPolicy(10_000, ttl_s=None), NOW, 100, Disk(1000, 790))
    assert plan.task_ids == [] and plan.note is None


def test_nothing_to_evict_is_known_without_the_entries_bytes_on_disk():
    """Where ``may_evict`` says no, the plan is empty whatever each entry's file frees: the
    store then skips the stat of every entry (seeded random caches, policies and disks)."""
    rng = random.Random(9)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        entries = [
            Candidate(
                f"t{i}", rng.randint(1, 300), NOW - rng.uniform(0, 10) * DAY, rng.randint(0, 300)
            )
            for i in range(rng.randint(0, 6))
        ]
        policy = GcPolicy(
            rng.randint(100, 2000), ttl_s=rng.choice([None, 7 * DAY]), high=0.8, low=0.6
        )
        cache = sum(c.length for c in entries) + rng.randint(0, 300)  # plus tasks in progress
        disk = rng.choice([None, Disk(1000, rng.randint(0, 1000))])
        need = rng.randint(0, 400)
        oldest = min((c.last_used for c in entries), default=None)
        answer = may_evict(policy, oldest, NOW, cache, disk, need)
        seen[answer] += 1
        if not answer:
            assert plan_gc(entries, policy, NOW, cache, disk, need).evictions == []
    assert min(seen.values()) > 300  # both answers were exercised


@pytest.mark.parametrize(
    ("oldest_days", "cache", "disk", "need", "why"),
    [
        (8, 100, None, 0, "TTL"),
        (1, 900, None, 200, "quota"),
        (1, 100, Disk(1000, 700), 150, "watermark"),
    ],
)
def test_each_reason_to_evict_is_seen(oldest_days, cache, disk, need, why):
    policy = GcPolicy(1000, ttl_s=7 * DAY)
    assert may_evict(policy, NOW - oldest_days * DAY, NOW, cache, disk, need), why
    assert not may_evict(policy, None, NOW, cache, disk, need)  # no complete entry to evict


@pytest.mark.parametrize(("low", "high"), [(0.9, 0.8), (0.0, 0.5), (0.5, 1.5)])
def test_bad_watermarks(low, high):
    with pytest.raises(InvalidInput, match="watermarks"):
        GcPolicy(1, low=low, high=high)
