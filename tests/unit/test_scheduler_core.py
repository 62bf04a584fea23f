"""The scheduler's state machine without Ray: leases, reports, failures, dead peers."""

import asyncio

from bench.scheduler_tasks import fetched
from rayfly.config import SchedulerConfig
from rayfly.protocol import SHARE_HOST, SHARE_REMOTE, Cached, Done, Failed
from rayfly.scheduler_core import SchedulerCore
from rayfly.task import MAX_PIECE, Cut, PieceLimits, TaskInfo, default_piece_size

MiB = 1 << 20


def core(clock=None, parallelism=8, pieces=8):
    now = clock or [0.0]
    c = SchedulerCore(
        SchedulerConfig(origin_parallelism=parallelism, lease_timeout_s=10), clock=lambda: now[0]
    )
    c.add_task(TaskInfo("t", "http://o/x", pieces * MiB, MiB), "rarest-first")
    return c, now


def test_every_piece_leaves_the_origin_once_across_peers():
    c, _ = core()
    for p in ("a", "b", "c"):
        c.join("t", p, f"h-{p}", 4)
    origin_pieces = []
    for p in ("a", "b", "c"):
        origin_pieces += [x.piece for x in c.plan("t", p, 8).assignments if x.parent is None]
    assert sorted(origin_pieces) == list(range(8))
    assert len(set(origin_pieces)) == 8


def test_origin_reads_spread_over_peers():
    c, _ = core(parallelism=8)
    for p in ("a", "b", "c", "d"):
        c.join("t", p, p, 4)
    counts = [len(c.plan("t", p, 8).assignments) for p in ("a", "b", "c", "d")]
    assert counts == [2, 2, 2, 2]


def land(c, peer, batch):
    c.report("t", peer, [Done(x.piece, f"d{x.piece}", x.parent, MiB, 0.1) for x in batch], [])


def reads(c, peer):
    """How many origin reads ``peer`` is handed when it asks for 8 pieces."""
    return sum(x.parent is None for x in c.plan("t", peer, 8).assignments)


def test_the_first_peer_to_join_reads_only_its_share_of_the_nodes_expected():
    c, now = core(parallelism=8, pieces=32)
    c.expect("t", 4)
    c.join("t", "a", "ha", 8)
    while len(c.tasks["t"].readers) < 7:  # until the ramp lets 8 reads be in flight
        land(c, "a", c.plan("t", "a", 8).assignments)
    assert reads(c, "a") == 2  # not all 8 first pieces through a's uplink
    for p in ("b", "c", "d"):
        c.join("t", p, p, 8)
        assert reads(c, p) == 2
    for p in ("a", "b", "c", "d"):
        c.finish("t", p, "stopped")
    c.expect("t", 4)  # the same task again, to four nodes: its first peer reads its share again
    c.join("t", "a", "ha", 8)
    assert reads(c, "a") == 2
    for p in ("b", "c", "d"):
        c.join("t", p, p, 8)
    c.peer_lost("b")  # a node that died will not finish; c and d stop: a alone reads on
    for p in ("c", "d"):
        c.finish("t", p, "stopped")
    now[0] += 2  # the count of peers fetching is taken again
    assert reads(c, "a") == 6
    c, _ = core(parallelism=8)
    c.join("t", "a", "ha", 8)  # nobody said how many will fetch: one node, the whole budget
    assert reads(c, "a") == 8


def test_origin_reads_ramp_up_as_pieces_land_when_several_nodes_fetch():
    c, _ = core(parallelism=8)
    c.expect("t", 4)
    for p in ("a", "b", "c", "d"):
        c.join("t", p, f"h-{p}", 8)
    first = c.plan("t", "a", 8).assignments
    assert [x.parent for x in first] == [None]  # one read, at the origin's full rate
    assert c.plan("t", "b", 8).assignments == []
    c.report("t", "a", [Done(first[0].piece, "d", None, MiB, 0.1)], [])
    batches = [c.plan("t", p, 8).assignments for p in ("b", "c", "d")]
    assert sum(x.parent is None for b in batches for x in b) == 2  # one more than have landed
    assert sum(x.parent == "a" for b in batches for x in b) == 3  # the first piece spreads
    c, _ = core(parallelism=8)
    c.expect("t", 1)  # one node: nobody to pass pieces to, every read at once
    c.join("t", "a", "ha", 8)
    assert len(c.plan("t", "a", 8).assignments) == 8


def test_done_pieces_are_served_by_their_holder_with_digest():
    c, _ = core()
    c.join("t", "a", "ha", 4)
    c.join("t", "b", "hb", 4)
    first = c.plan("t", "a", 8).assignments
    land(c, "a", first)  # read from the origin
    batch = c.plan("t", "b", 8).assignments
    from_a = [x for x in batch if x.parent == "a"]
    assert len(from_a) == 4  # a's four upload slots
    assert all(x.digest == f"d{x.piece}" for x in from_a)


def test_status_counts_the_pieces_asked_given_and_why_not():
    c, _ = core(parallelism=2)
    c.join("t", "a", "ha", 2)
    c.join("t", "b", "hb", 2)
    c.plan("t", "a", 4)  # its share of the origin budget (1 of 2), the rest wait for it
    assert c.status()[0]["asks"] == {"asked": 4, "given": 1, "busy": 0, "origin": 3, "none": 0}
    c, _ = core()
    c.join("t", "a", "ha", 2, have={i: "d" for i in range(8)})
    c.join("t", "b", "hb", 8)
    c.plan("t", "b", 4)  # a's 2 upload slots, then a is busy
    c.plan("t", "b", 8)  # a is busy for 6, and the other 2 are on their way already
    c.plan("t", "b", 0)
    asks = c.status()[0]["asks"]
    assert asks == {"asked": 12, "given": 2, "busy": 8, "origin": 0, "none": 2}, asks


def test_a_long_poll_counts_the_answer_it_gets_once():
    async def scenario():
        c = SchedulerCore(SchedulerConfig(long_poll_s=30.0))
        c.add_task(TaskInfo("t", "http://o/x", 8 * MiB, MiB))
        c.join("t", "a", "ha", 1, have={i: "d" for i in range(8)})
        c.join("t", "b", "hb", 8)
        c.join("t", "c", "hc", 8)
        (x,) = (await c.exchange("t", "c", [], [], 1, False)).assignments  # a's only slot
        waiting = asyncio.ensure_future(c.exchange("t", "b", [], [], 1, True))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # a is busy: b waits
        await c.exchange("t", "c", [Done(x.piece, "d", "a", MiB, 0.1)], [], 0, False)
        got = (await asyncio.wait_for(waiting, 5)).assignments
        assert [a.parent for a in got] == ["a"]
        return c.status()[0]["asks"]

    asks = asyncio.run(scenario())  # c's ask, and b's answer after the wait (not the empty one)
    assert asks == {"asked": 2, "given": 2, "busy": 0, "origin": 0, "none": 0}, asks


def test_expired_lease_is_handed_out_again():
    c, now = core(parallelism=1)
    c.join("t", "a", "ha", 4)
    c.join("t", "b", "hb", 4)
    (lease,) = c.plan("t", "a", 1).assignments
    assert c.plan("t", "b", 8).assignments == []
    now[0] += 11
    c.expire_leases()
    assert lease.piece not in c.tasks["t"].origin_inflight
    (again,) = c.plan("t", "b", 1).assignments
    assert again.parent is None


def test_a_peer_that_reports_keeps_its_leases_past_the_timeout():
    """A slow origin piece (a pack of small files, a throttled origin) outlives the lease; the
    peer's reports, heartbeats included, renew it, so the piece is not read twice."""
    c, now = core(parallelism=1)
    c.join("t", "a", "ha", 4)
    c.join("t", "b", "hb", 4)
    (lease,) = c.plan("t", "a", 1).assignments
    for _ in range(3):  # 24 s of a 10 s lease, a heartbeat every 8 s
        now[0] += 8
        c.report("t", "a", [], [])
        c.expire_leases()
    assert lease.piece in c.tasks["t"].origin_inflight
    assert c.plan("t", "b", 8).assignments == []  # nothing handed out twice
    now[0] += 11  # the peer went quiet: its lease runs out
    c.expire_leases()
    assert c.plan("t", "b", 1).assignments[0].piece == lease.piece


def test_dead_parent_is_forgotten_and_its_pieces_come_from_origin_again():
    c, _ = core()
    c.join("t", "a", "ha", 4, have={i: "d" for i in range(8)})
    c.join("t", "b", "hb", 4)
    batch = c.plan("t", "b", 1).assignments
    assert batch[0].parent == "a"
    c.report("t", "b", [], [Failed(batch[0].piece, "a", "died", parent_dead=True)])
    assert "a" not in c.peers
    again = c.plan("t", "b", 8).assignments
    assert batch[0].piece in [x.piece for x in again if x.parent is None]


def test_origin_failing_repeatedly_fails_the_task():
    c, _ = core(parallelism=1)
    c.join("t", "a", "ha", 4)
    for _ in range(3):
        (x,) = c.plan("t", "a", 1).assignments
        c.report("t", "a", [], [Failed(x.piece, None, "503")])
    batch = c.plan("t", "a", 1)
    assert batch.error and "503" in batch.error


def test_progress_counts_bytes_per_peer():
    c, _ = core()
    c.join("t", "a", "ha", 4, have={0: "d", 1: "d"})
    assert c.progress(["t", "unknown"]) == {"a": 2 * MiB}
    assert c.status()[0]["state"] == "running"


def test_timeouts_keep_the_holder_but_a_missing_piece_drops_it():
    c, _ = core()
    c.join("t", "a", "ha", 4, have={0: "d"})
    c.join("t", "b", "hb", 4)
    c.report("t", "b", [], [Failed(0, "a", "timed out")])
    assert c.tasks["t"].holders[0] == {"a"}
    c.report("t", "b", [], [Failed(0, "a", "PieceUnavailable", parent_lacks=True)])
    assert c.tasks["t"].holders[0] == set()


def test_report_about_a_replaced_parent_keeps_the_new_actor():
    """A child's stale handle to a killed actor must not wipe the node's new actor."""
    c, _ = core()
    c.join("t", "a", "ha", 4, have={i: "d" for i in range(8)}, incarnation="a1")
    c.join("t", "b", "hb", 4, incarnation="b1")
    (lease,) = c.plan("t", "b", 1).assignments
    assert lease.parent == "a"
    c.join("t", "a", "ha", 4, have={0: "d"}, incarnation="a2")  # restarted: holds piece 0 only
    assert c.tasks["t"].have["a"] == {0}
    c.report("t", "b", [], [Failed(lease.piece, "a", "died", parent_dead=True)])
    assert c.peers["a"].incarnation == "a2"
    assert c.knows("t", "a") and c.tasks["t"].holders[0] == {"a"}
    c.peer_lost("a", incarnation="a1")  # a client's late word about the old actor
    assert c.knows("t", "a")
    c.peer_lost("a", incarnation="a2")
    assert not c.knows("t", "a")


def test_a_forgotten_peer_is_told_to_join_again():
    c, _ = core()
    c.join("t", "a", "ha", 4, incarnation="a1")
    c.peer_lost("a")
    batch = c.plan("t", "a", 4)
    assert batch.rejoin and batch.assignments == [] and batch.error is None
    c.join("t", "a", "ha", 4, incarnation="a1")
    assert len(c.plan("t", "a", 4).assignments) == 4


def test_a_verified_piece_wakes_a_bounded_number_of_long_pollers():
    import asyncio

    async def run():
        c, _ = core()
        c.config = SchedulerConfig(wake_per_piece=3)
        for p in "abcdefghij":
            c.join("t", p, p, 4)
        waits = [asyncio.ensure_future(c.wait_change(5.0)) for _ in range(10)]
        await asyncio.sleep(0)
        (x, *_) = c.plan("t", "a", 1).assignments
        c.report("t", "a", [Done(x.piece, "d", None, MiB, 0.1)], [])
        await asyncio.sleep(0.05)
        woken = sum(w.done() for w in waits)
        c.finish("t", "a", "gone")  # a rare event wakes everyone
        await asyncio.sleep(0.05)
        return woken, sum(w.done() for w in waits)

    assert asyncio.run(run()) == (3, 10)


def test_a_restarted_core_reloads_its_tasks_and_announcements_rebuild_holders():
    from rayfly.durable import TASKS, MemoryStore

    kv = MemoryStore()
    first = SchedulerCore(SchedulerConfig(), kv=kv)
    info = TaskInfo("t", "http://o/x", 8 * MiB, MiB)
    first.add_task(info, "sequential")
    first.join("t", "a", "ha", 4, have={i: f"d{i}" for i in range(8)}, incarnation="a1")
    now = [0.0]
    restarted = SchedulerCore(SchedulerConfig(), kv=kv, clock=lambda: now[0])
    assert restarted.tasks["t"].info == info and restarted.tasks["t"].order == "sequential"
    assert restarted.peers == {} and restarted.tasks["t"].holders == {}
    have = {
        "t": Cached(Cut(8 * MiB, MiB), {i: f"d{i}" for i in range(8)}),
        "never-registered": Cached(Cut(1, MiB), {0: "x"}),
    }
    assert restarted.announce("a", "ha", 4, "a1", have) == ["t"]
    assert "never-registered" not in restarted.tasks
    assert restarted.status()[0]["nodes_done"] == 1
    restarted.join("t", "b", "hb", 4)
    batch = restarted.plan("t", "b", 4).assignments
    assert [(x.parent, x.digest) for x in batch] == [("a", f"d{x.piece}") for x in batch]
    assert len(batch) == 4 and list(kv.keys(TASKS)) == [TASKS + "t"]


def test_a_copy_cut_into_other_pieces_is_not_taken_as_holding_the_task():
    """The same object registered again with 2 MiB pieces, announced by a node that cached it
    in 1 MiB pieces: its piece 2 is bytes 2-3 MiB, the task's is 4-5 MiB (same length)."""
    core = SchedulerCore(SchedulerConfig())
    core.add_task(TaskInfo("t", "http://o/x", 5 * MiB, 2 * MiB), "sequential")
    old_cut = Cached(Cut(5 * MiB, MiB), {i: f"d{i}" for i in range(5)})
    assert core.announce("a", "ha", 4, "a1", {"t": old_cut}) == []
    assert core.tasks["t"].holders == {} and core.status()[0]["nodes_done"] == 0
    core.add_task(TaskInfo("u", "http://o/y", 16 * MiB, 2 * MiB, tail_split=4), "sequential")
    uniform = Cached(Cut(16 * MiB, 2 * MiB), {i: f"u{i}" for i in range(8)})
    assert core.announce("a", "ha", 4, "a1", {"u": uniform}) == []  # its tail is not split
    same_cut = Cached(Cut(5 * MiB, 2 * MiB), {i: f"e{i}" for i in range(3)})
    assert core.announce("a", "ha", 4, "a1", {"t": same_cut}) == ["t"]
    assert core.tasks["t"].digests == {0: "e0", 1: "e1", 2: "e2"}


def test_pieces_past_the_end_of_a_task_are_not_recorded():
    core = SchedulerCore(SchedulerConfig())
    core.add_task(TaskInfo("t", "http://o/x", 5 * MiB, 2 * MiB), "sequential")
    core.join("t", "a", "ha", 4, have={0: "d0", 3: "d3", 4: "d4", -1: "x"}, incarnation="a1")
    assert core.tasks["t"].holders == {0: {"a"}} and core.progress(["t"]) == {"a": 2 * MiB}


def test_a_restarted_core_reads_nothing_from_the_origin_while_peers_rejoin():
    from rayfly.durable import MemoryStore
    from rayfly.scheduler_core import RESTORE_GRACE_S

    kv = MemoryStore()
    SchedulerCore(SchedulerConfig(), kv=kv).add_task(TaskInfo("t", "u", 8 * MiB, MiB), "sequential")
    now = [0.0]
    restarted = SchedulerCore(SchedulerConfig(), kv=kv, clock=lambda: now[0])
    restarted.join("t", "b", "hb", 4)
    assert restarted.plan("t", "b", 4).assignments == []  # a peer may hold them, undeclared
    restarted.join("t", "a", "ha", 4, have={0: "d0"})
    assert [(x.piece, x.parent) for x in restarted.plan("t", "b", 4).assignments] == [(0, "a")]
    now[0] += RESTORE_GRACE_S
    assert {x.parent for x in restarted.plan("t", "b", 4).assignments} == {None}


def _few_kept(monkeypatch, kept: int, slack: int = 0):
    from rayfly import scheduler_core as scheduler

    monkeypatch.setattr(scheduler, "MAX_KEPT_TASKS", kept)
    monkeypatch.setattr(scheduler, "PRUNE_SLACK", slack)


def test_kept_tasks_are_bounded(monkeypatch):
    from rayfly.durable import TASKS, MemoryStore

    _few_kept(monkeypatch, 3)
    kv = MemoryStore()
    c = SchedulerCore(SchedulerConfig(), kv=kv)
    for i in range(5):
        c.add_task(TaskInfo(f"t{i}", "http://o/x", MiB, MiB), "rarest-first")
        fetched(c, f"t{i}", "a")
    assert len(c.tasks) == 3 and len(kv.keys(TASKS)) == 3
    assert set(c.tasks) == {"t2", "t3", "t4"}  # the oldest went
    assert set(SchedulerCore(SchedulerConfig(), kv=kv).tasks) == set(c.tasks)


def test_a_listing_larger_than_the_kept_tasks_stays_until_its_nodes_fetched_it(monkeypatch):
    """A client registers a dataset's tasks in one call and its nodes join them one by one:
    none of them may be dropped before it was fetched (joining a dropped task fails)."""
    _few_kept(monkeypatch, 3)
    c = SchedulerCore(SchedulerConfig())
    for i in range(6):
        c.add_task(TaskInfo(f"t{i}", "http://o/x", MiB, MiB), "rarest-first")
    c.expect("t0", 2)  # two nodes will fetch t0
    for i in range(6):
        fetched(c, f"t{i}", "a")
    c.add_task(TaskInfo("t6", "http://o/x", MiB, MiB), "rarest-first")
    assert "t0" in c.tasks  # fetched by one of the two nodes expected: still needed
    fetched(c, "t0", "b")
    c.join("t6", "a", "a", 4)  # t6 is being fetched: leased, and its member not finished
    c.plan("t6", "a", 1)
    c.add_task(TaskInfo("t7", "http://o/x", MiB, MiB), "rarest-first")
    assert set(c.tasks) == {"t5", "t6", "t7"}


def test_a_task_nobody_joined_goes_after_the_grace(monkeypatch):
    from rayfly import scheduler_core as scheduler

    _few_kept(monkeypatch, 1)
    c = SchedulerCore(SchedulerConfig())
    c.add_task(TaskInfo("old", "http://o/x", MiB, MiB), "rarest-first")
    c.tasks["old"].created -= scheduler.PENDING_GRACE_S + 1
    c.add_task(TaskInfo("new", "http://o/x", MiB, MiB), "rarest-first")
    assert set(c.tasks) == {"new"}


def test_registering_past_the_bound_does_not_sort_every_task_each_time(monkeypatch):
    """Past the bound, a registration scans the tasks only every ``PRUNE_SLACK`` tasks more."""
    _few_kept(monkeypatch, 10, slack=5)
    c = SchedulerCore(SchedulerConfig())
    scans = []
    real = SchedulerCore._settled_ids
    monkeypatch.setattr(SchedulerCore, "_settled_ids", lambda self: scans.append(1) or real(self))
    for i in range(40):  # never fetched, within the grace: none can go
        c.add_task(TaskInfo(f"t{i}", "http://o/x", MiB, MiB), "rarest-first")
    assert len(c.tasks) == 40
    assert len(scans) == 5  # at 16, 21, 26, 31 and 36 tasks, not at each of the last 25


def test_an_unreachable_parent_is_passed_over_until_heard_from_or_the_time_is_up():
    from rayfly.scheduler_core import SUSPECT_S

    c, now = core()
    c.join("t", "a", "ha", 4, have={i: "d" for i in range(8)})
    c.join("t", "b", "hb", 4)
    (lease,) = c.plan("t", "b", 1).assignments
    assert lease.parent == "a"
    c.report("t", "b", [], [Failed(lease.piece, "a", "unreachable", parent_unreachable=True)])
    assert "a" in c.peers and c.tasks["t"].holders[lease.piece] == {"a"}
    assert {x.parent for x in c.plan("t", "b", 4).assignments} == {None}  # the origin
    now[0] += SUSPECT_S + 1
    assert [x.parent for x in c.plan("t", "b", 1).assignments] == ["a"]
    c.suspect("a")
    assert [x.parent for x in c.plan("t", "b", 1).assignments] == [None]
    c.plan("t", "a", 1)  # a asks the scheduler itself: it is reachable
    assert [x.parent for x in c.plan("t", "b", 1).assignments] == ["a"]


def test_the_configured_piece_policy_orders_tasks_registered_without_one():
    c = SchedulerCore(SchedulerConfig(policy="sequential", origin_parallelism=8))
    state = c.add_task(TaskInfo("s", "http://o/x", 8 * MiB, MiB))
    assert state.order == "sequential"
    c.join("s", "a", "h-a", 8)
    assert [x.piece for x in c.plan("s", "a", 4).assignments] == [0, 1, 2, 3]
    assert c.add_task(TaskInfo("r", "http://o/y", MiB, MiB), "rarest-first").order == (
        "rarest-first"
    )
    default = SchedulerCore(SchedulerConfig())
    assert default.add_task(TaskInfo("d", "http://o/z", MiB, MiB)).order == "rarest-first"


def test_an_unknown_piece_policy_is_a_clear_error_naming_it():
    import pytest

    from rayfly.config import from_env
    from rayfly.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"unknown piece policy 'fastest'.*rarest-first"):
        SchedulerConfig(policy="fastest")
    with pytest.raises(InvalidInput, match=r"RAYFLY_POLICY='fastest'.*sequential"):
        from_env(SchedulerConfig, {"RAYFLY_POLICY": "fastest"})
    assert from_env(SchedulerConfig, {"RAYFLY_POLICY": "sequential"}).policy == "sequential"


def test_a_node_with_an_upload_limit_reads_no_origin_piece_while_an_unlimited_peer_fetches():
    c, _ = core(parallelism=8)
    c.join("t", "slow", "slow", 1, upload_rate=2 * MiB)
    c.join("t", "fast", "fast", 4)
    assert c.plan("t", "slow", 8).assignments == []
    fast = c.plan("t", "fast", 8).assignments
    assert fast and all(a.parent is None for a in fast)
    c.report("t", "fast", [Done(a.piece, f"d{a.piece}", None, MiB, 0.1) for a in fast], [])
    slow = c.plan("t", "slow", 8).assignments
    assert slow and all(a.parent == "fast" for a in slow)


def test_a_node_with_an_upload_limit_alone_reads_the_origin():
    c, _ = core(parallelism=8)
    c.join("t", "slow", "slow", 1, upload_rate=2 * MiB)
    assert [a.parent for a in c.plan("t", "slow", 8).assignments] == [None] * 8


def test_held_names_a_task_only_while_live_peers_hold_every_piece():
    c, now = core()
    assert c.held("t") is None and c.held("unknown") is None
    c.join("t", "a", "ha", 4, {i: f"d{i}" for i in range(4)})
    c.join("t", "b", "hb", 4, {i: f"d{i}" for i in range(4, 8)})
    assert c.held("t") == c.tasks["t"].info  # every piece somewhere, on two peers
    c.join("t", "z", "hz", 4, {0: "d0"})
    assert c.holders("t") == [["a", "z"]] + [["a"]] * 3 + [["b"]] * 4  # who, piece by piece
    c.suspect("b")
    assert c.held("t") is None  # pieces 4-7 only on a peer nobody reaches now
    assert c.holders("t") is None
    now[0] += 21
    assert c.held("t") is not None
    c.peer_lost("a")
    assert c.held("t") is None
    c.join("t", "c", "hc", 4, {i: f"d{i}" for i in range(8)})
    c.finish("t", "c", "sha256 mismatch", fatal=True)
    assert c.held("t") is None  # a failed task is never handed out as held


def test_origin_pieces_are_kept_to_share_only_while_another_peer_fetches():
    c, _ = core(parallelism=8)
    c.join("t", "a", "ha", 4)
    alone = c.plan("t", "a", 2).assignments
    assert alone and all(x.parent is None and x.share == "" for x in alone)
    c.join("t", "b", "hb", 4)
    shared = c.plan("t", "a", 2).assignments
    assert shared and all(x.parent is None and x.share == SHARE_REMOTE for x in shared)
    c.finish("t", "b", None)
    assert not any(x.share for x in c.plan("t", "a", 2).assignments)


def test_origin_pieces_are_kept_to_share_when_more_members_are_expected():
    c, _ = core(parallelism=8)
    c.expect("t", 3)
    c.join("t", "a", "ha", 4)
    first = c.plan("t", "a", 2).assignments  # the others have not joined yet
    assert first and all(x.parent is None and x.share == SHARE_REMOTE for x in first)


def test_origin_pieces_only_peers_of_the_same_host_will_ask_for_say_so():
    c, _ = core(parallelism=8)
    c.join("t", "a", "h1", 4)
    c.join("t", "b", "h1", 4)  # a second Ray node on the same machine
    batch = c.plan("t", "a", 2).assignments
    assert batch and all(x.share == SHARE_HOST for x in batch)
    c.join("t", "c", "h2", 4)
    assert all(x.share == SHARE_REMOTE for x in c.plan("t", "a", 2).assignments)


def test_piece_limits_follow_the_measured_transfer_rates():
    c, _ = core()
    assert c.piece_limits() is None  # nothing measured yet: the default layout
    c.join("t", "a", "ha", 8, {i: "d" for i in range(8)})
    c.join("t", "b", "hb", 8)
    leases = c.plan("t", "b", 8).assignments
    assert len(leases) == 8 and all(x.parent == "a" for x in leases)  # a serves all 8 slots
    # one of them, 1 MiB in 0.7 s while a served 7 others: a's uplink moves 12 MB/s (100 Mbit/s)
    c.report("t", "b", [Done(leases[0].piece, "d", "a", MiB, 0.7)], [])
    # 8 at once: 1.5 MB/s each, 3 MB in 2 s (a power of two); 6 MB in 4 s as it went
    assert c.piece_limits() == PieceLimits(cap=2 * MiB, fits=4 * MiB)
    c.report("t", "b", [Done(leases[1].piece, "d", "a", 4096, 0.5)], [])  # a small file's
    assert c.piece_limits() == PieceLimits(cap=2 * MiB, fits=4 * MiB)  # latency: not counted
    c.report("t", "b", [Done(leases[2].piece, "d", "a", MiB, 0.01)], [])  # 105 MB/s, 5 others
    assert c.piece_limits().cap >= MAX_PIECE  # fast links: the defaults stand


def test_transfers_slowed_by_a_busy_cpu_keep_the_cpu_floor():
    """A busy parent's transfers move 3 MB/s (4 MiB in 1.4 s while it serves 7 others); later
    ones, each alone on it, take 1 s per MiB: the CPU, not the link (alone, a transfer would
    have the link to itself). The every-slot estimate reads those as an uplink of 1-2 MB/s
    shared by 8 slots, but the pieces stay 4 MiB rather than fall to 1 MiB (four times the
    per-piece work, on the CPU that held the transfers back)."""
    c, _ = core(pieces=32)
    c.join("t", "a", "ha", 8, {i: "d" for i in range(32)})
    c.join("t", "b", "hb", 8)
    leases = c.plan("t", "b", 8).assignments
    assert len(leases) == 8 and all(x.parent == "a" for x in leases)
    c.report("t", "b", [Done(leases[0].piece, "d", "a", 4 * MiB, 1.4)], [])  # every slot busy
    c.report("t", "b", [Done(x.piece, "d", "a", 4096, 0.01) for x in leases[1:]], [])
    for _ in range(8):
        (alone,) = c.plan("t", "b", 1).assignments
        c.report("t", "b", [Done(alone.piece, "d", "a", MiB, 1.0)], [])
    measured = c.piece_limits()
    assert measured.cap <= 512 << 10  # what the old floor followed: 1 MiB pieces
    assert measured.fits == 8 * MiB  # 3 MB/s x 4 s, as the loaded transfers went
    assert default_piece_size(512 * MiB, measured) == 4 * MiB


def test_a_light_warm_up_keeps_the_every_slot_estimate():
    """Transfers that ran beside fewer than 8 on their parent say little of what eight at once
    get: with no transfer at full load, pieces follow the every-slot estimate (2 MiB at
    50 Mbit/s)."""
    c, _ = core()
    c.join("t", "a", "ha", 8, {i: "d" for i in range(8)})
    c.join("t", "b", "hb", 8)
    (lease,) = c.plan("t", "b", 1).assignments
    c.report("t", "b", [Done(lease.piece, "d", "a", MiB, 0.17)], [])  # 6 MB/s: 50 Mbit/s alone
    measured = c.piece_limits()
    assert measured == PieceLimits(cap=1 * MiB, fits=2 * MiB)
    assert default_piece_size(512 * MiB, measured) == 2 * MiB


def test_the_peer_that_read_a_piece_from_the_origin_serves_it_before_equally_loaded_holders():
    c, _ = core(parallelism=2)
    for p in ("a", "b"):
        c.join("t", p, f"h-{p}", 8)
    got = {p: c.plan("t", p, 1).assignments for p in ("a", "b")}
    for p, batch in got.items():
        land(c, p, batch)  # read from the origin
    read_by = {batch[0].piece: p for p, batch in got.items()}
    c.join("t", "c", "h-c", 8, have={i: f"d{i}" for i in read_by})  # holds both, read neither
    for p in ("a", "b", "c"):
        c.peers[p].uploads = 3
    for child in ("d", "e"):
        c.join("t", child, f"h-{child}", 8)
    batch = c.plan("t", "d", 8).assignments
    assert {x.piece: x.parent for x in batch if x.piece in read_by} == read_by
    # a less loaded holder relays instead of the busier reader
    c.peers["c"].uploads = 0
    batch = c.plan("t", "e", 8).assignments
    assert {x.piece: x.parent for x in batch if x.piece in read_by} == dict.fromkeys(read_by, "c")


def test_children_asking_in_turn_take_different_pieces_from_one_holder():
    c, _ = core(parallelism=0)
    c.join("t", "r", "h-r", 8, have={i: f"d{i}" for i in range(8)})
    for p in ("a", "b", "c"):
        c.join("t", p, f"h-{p}", 8)
    got = {p: [x.piece for x in c.plan("t", p, 2).assignments] for p in ("a", "b", "c")}
    # a piece on its way to one child counts as a copy: each child takes other pieces, which
    # the children then pass on to each other instead of all waiting on r's uplink
    assert got == {"a": [0, 1], "b": [2, 3], "c": [4, 5]}
    c.report("t", "a", [Done(i, f"d{i}", "r", MiB, 0.1) for i in (0, 1)], [])
    c.join("t", "d", "h-d", 8)
    batch = c.plan("t", "d", 4).assignments
    assert [x.piece for x in batch] == [6, 7, 0, 1]
    assert [x.parent for x in batch[2:]] == ["a", "a"]  # r serves 6 and 7, a passes 0 and 1 on


def test_a_member_that_is_done_keeps_no_lease_table_and_may_come_back():
    """The expiry scan walks every kept task's lease tables each second: a member that
    finished (or failed) has none left, its leases released, and one that joins again gets
    pieces as before."""
    c, now = core(parallelism=2)
    c.join("t", "a", "ha", 4)
    c.join("t", "b", "hb", 4)
    leased = [x.piece for x in c.plan("t", "a", 4).assignments]
    assert leased and set(c.tasks["t"].leases) == {"a", "b"}
    c.finish("t", "a", "cancelled by the client")
    assert set(c.tasks["t"].leases) == {"b"}
    assert sorted(x.piece for x in c.plan("t", "b", 8).assignments) == sorted(leased)
    now[0] += 11  # b's leases expire (lease_timeout_s=10): the scan still finds them
    c.expire_leases()
    assert not c.tasks["t"].leases["b"]
    c.join("t", "a", "ha", 4)
    assert c.plan("t", "a", 1).assignments
