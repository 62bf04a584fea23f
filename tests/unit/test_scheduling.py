import random

import pytest

from rayfly.errors import InvalidInput
from rayfly.protocol import Assignment
from rayfly.scheduling import (
    PeerLoad,
    TaskView,
    choose_parent,
    origin_share,
    piece_policy,
    plan_batch,
    rarest_first,
    shortfall,
    upload_slots,
    wake_count,
)


def view(n, holders=None, origin_inflight=(), parallelism=8):
    holders = holders or {}
    digests = {i: f"d{i}" for i in holders}
    return TaskView(n, holders, set(origin_inflight), parallelism, digests)


def test_rarest_first_orders_by_holder_count():
    v = view(4, {0: {"a", "b"}, 1: {"a"}, 2: set(), 3: {"a", "b", "c"}})
    assert rarest_first([0, 1, 2, 3], v, salt=0) == [2, 1, 0, 3]


def test_a_piece_on_its_way_to_a_peer_counts_as_a_copy():
    v = TaskView(4, {0: {"a"}, 1: {"a"}, 2: {"a", "b"}}, set(), 8, {}, fetching={0: 2, 1: 0})
    assert rarest_first([0, 1, 2, 3], v, salt=0) == [3, 1, 2, 0]


def test_ties_come_in_file_order_so_the_hash_keeps_up_from_memory():
    v = view(8, {5: {"a"}, 6: {"a"}})
    assert rarest_first([7, 6, 5, 4, 3], v, salt=4) == [3, 4, 7, 5, 6]


def test_peers_asking_together_still_read_different_pieces_from_the_origin():
    v = view(8, parallelism=4)
    loads = {p: PeerLoad(p, p, 0, 4) for p in ("a", "b")}
    first = plan_batch(v, "a", "a", set(), set(), loads, want=2, origin_quota=2)
    v = view(8, origin_inflight={a.piece for a in first}, parallelism=4)
    second = plan_batch(v, "b", "b", set(), set(), loads, want=2, origin_quota=2)
    assert [a.piece for a in first] == [0, 1] and [a.piece for a in second] == [2, 3]


def test_unheld_pieces_come_from_origin_once():
    v = view(4, origin_inflight={0})
    batch = plan_batch(v, "p1", "h1", set(), set(), {"p1": PeerLoad("p1", "h1", 0, 4)}, want=8)
    assert sorted(a.piece for a in batch) == [1, 2, 3]
    assert all(a.parent is None for a in batch)


def test_origin_parallelism_and_quota_are_respected():
    v = view(10, origin_inflight={0, 1}, parallelism=4)
    batch = plan_batch(v, "p", "h", set(), set(), {}, want=10)
    assert len(batch) == 2
    assert len(plan_batch(v, "p", "h", set(), set(), {}, want=10, origin_quota=1)) == 1
    assert origin_share(8, 4) == 2 and origin_share(8, 3) == 3 and origin_share(1, 10) == 1


def test_held_pieces_come_from_a_parent_with_digest():
    loads = {"a": PeerLoad("a", "h1", 0, 2), "me": PeerLoad("me", "h2", 0, 2)}
    v = view(2, {0: {"a"}, 1: {"a"}})
    batch = plan_batch(v, "me", "h2", set(), set(), loads, want=4)
    assert batch == [Assignment(0, "a", "d0"), Assignment(1, "a", "d1")]


def test_a_batch_never_oversubscribes_a_parent():
    loads = {"a": PeerLoad("a", "h1", 1, 2)}
    v = view(5, {i: {"a"} for i in range(5)})
    batch = plan_batch(v, "me", "h2", set(), set(), loads, want=5)
    assert len(batch) == 1


def test_pieces_held_or_in_flight_are_not_handed_out_again():
    loads = {"a": PeerLoad("a", "h", 0, 8)}
    v = view(4, {i: {"a"} for i in range(4)})
    batch = plan_batch(v, "me", "h", {0}, {1}, loads, want=8)
    assert sorted(a.piece for a in batch) == [2, 3]


def test_parent_choice_prefers_same_host_then_least_loaded():
    rng = random.Random(0)
    far_idle = PeerLoad("far", "h9", 0, 4)
    near_busy = PeerLoad("near", "h1", 3, 4)
    assert choose_parent([far_idle, near_busy], "h1", rng).peer_id == "near"
    a, b = PeerLoad("a", "h2", 3, 4), PeerLoad("b", "h3", 1, 4)
    assert choose_parent([a, b], "h1", rng).peer_id == "b"
    fast, slow = PeerLoad("f", "h2", 1, 4, 100.0), PeerLoad("s", "h3", 1, 4, 1.0)
    assert choose_parent([slow, fast], "h1", rng).peer_id == "f"
    assert choose_parent([PeerLoad("x", "h", 4, 4)], "h1", rng) is None


def test_dead_holders_are_not_parents_the_origin_is():
    v = view(1, {0: {"gone"}})
    assert plan_batch(v, "me", "h", set(), set(), {}, want=1) == [Assignment(0, None)]


def test_unknown_policy_fails_at_construction():
    with pytest.raises(InvalidInput, match="unknown piece policy"):
        piece_policy("fastest")
    assert piece_policy("sequential")([3, 1, 2], view(4), 0) == [1, 2, 3]


def test_wake_count_follows_what_a_report_frees():
    assert wake_count(0, 0, 8) == 0
    assert wake_count(2, 1, 8) == 17


def test_a_piece_held_by_thousands_scans_only_a_few():
    holders = {f"p{i}" for i in range(10_000)}
    looked: list[str] = []

    class Loads(dict):
        def get(self, key, default=None):
            looked.append(key)
            return PeerLoad(key, "h", 0, 4)

    (a,) = plan_batch(view(1, {0: holders}), "me", "h", set(), set(), Loads(), want=1)
    assert a.parent in holders
    assert len(looked) <= 128


def test_a_parent_without_upload_limit_is_preferred_over_an_idle_limited_one():
    limited = PeerLoad("slow", "h1", 0, 8, throughput=50e6, upload_rate=2e6)
    busy = PeerLoad("fast", "h2", 6, 8, throughput=10e6)
    assert choose_parent([limited, busy], "h3", random.Random(0)).peer_id == "fast"
    full = PeerLoad("fast", "h2", 8, 8)
    assert choose_parent([limited, full], "h3", random.Random(0)).peer_id == "slow"


def test_upload_slots_follow_the_upload_limit():
    assert upload_slots(8, None, 4 << 20) == 8
    assert upload_slots(8, 2 << 20, 4 << 20) == 1  # a 4 MiB piece takes 2 s at 2 MiB/s
    assert upload_slots(8, 16 << 20, 4 << 20) == 8
    assert upload_slots(8, 8 << 20, 4 << 20) == 4


def test_parent_choice_prefers_the_less_loaded_holder_then_the_piece_s_origin_reader():
    rng = random.Random(0)
    reader, relay = PeerLoad("r", "h2", 5, 8), PeerLoad("c", "h3", 0, 8)
    assert choose_parent([relay, reader], "h1", rng, reader="r").peer_id == "c"
    relay = PeerLoad("c", "h3", 5, 8)
    assert choose_parent([relay, reader], "h1", rng, reader="r").peer_id == "r"
    assert choose_parent([reader, relay], "h1", rng, reader="c").peer_id == "c"
    full = PeerLoad("r", "h2", 8, 8)
    assert choose_parent([relay, full], "h1", rng, reader="r").peer_id == "c"
    same_host = PeerLoad("s", "h1", 7, 8)
    assert choose_parent([reader, same_host], "h1", rng, reader="r").peer_id == "s"


def test_a_batch_takes_each_piece_from_its_reader():
    holders = {i: {"a", "b"} for i in range(4)}
    readers = {0: "a", 1: "b", 2: "a", 3: "b"}
    v = TaskView(4, holders, set(), 8, {}, readers)
    loads = {p: PeerLoad(p, f"h-{p}", 0, 8) for p in ("a", "b")}
    batch = plan_batch(v, "me", "h", set(), set(), loads, want=4)
    assert {a.piece: a.parent for a in batch} == readers


def test_pieces_passed_over_are_counted_with_their_reason():
    loads = {"a": PeerLoad("a", "h1", 2, 2), "b": PeerLoad("b", "h2", 1, 2)}
    # 0, 1: only at a (no free slot); 2: at b (one slot); 3: being read from the origin
    v = view(5, {0: {"a"}, 1: {"a"}, 2: {"b"}}, origin_inflight={3}, parallelism=2)
    skipped: dict[str, int] = {}
    batch = plan_batch(v, "me", "h3", set(), set(), loads, want=8, skipped=skipped)
    assert [(a.piece, a.parent) for a in batch] == [(4, None), (2, "b")]
    assert skipped == {"busy": 2, "origin": 1}
    assert shortfall(8, len(batch), skipped) == {"busy": 2, "origin": 1, "none": 3}


def test_a_shortfall_is_attributed_busy_first_and_never_exceeds_the_missing_slots():
    assert shortfall(4, 4, {"busy": 3}) == {"busy": 0, "origin": 0, "none": 0}
    assert shortfall(4, 1, {"busy": 5, "origin": 2}) == {"busy": 3, "origin": 0, "none": 0}
    assert shortfall(4, 1, {"busy": 1, "origin": 5}) == {"busy": 1, "origin": 2, "none": 0}
    assert shortfall(4, 0, {}) == {"busy": 0, "origin": 0, "none": 4}
