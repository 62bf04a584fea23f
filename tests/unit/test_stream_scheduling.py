"""Origins that ignore Range: one peer streams, the others fetch from it (no Ray)."""

from rayfly.config import SchedulerConfig
from rayfly.protocol import Done, Failed
from rayfly.scheduler_core import SchedulerCore
from rayfly.scheduling import takes_stream
from rayfly.task import TaskInfo

MiB = 1 << 20


def core(ranges=False):
    now = [0.0]
    c = SchedulerCore(SchedulerConfig(lease_timeout_s=10), clock=lambda: now[0])
    c.add_task(TaskInfo("t", "http://o/x", 8 * MiB, MiB, ranges=ranges), "rarest-first")
    for p in ("a", "b", "c"):
        c.join("t", p, p, 4)
    return c, now


def test_takes_stream_policy():
    assert takes_stream(None, False, "a", unheld=True)
    assert not takes_stream(None, False, "a", unheld=False)
    assert not takes_stream("b", False, "a", unheld=True)
    assert takes_stream("b", True, "a", unheld=True)  # the streamer stopped reporting
    assert not takes_stream("a", True, "a", unheld=True)  # never a second stream


def test_one_peer_streams_the_others_fetch_from_it_as_pieces_arrive():
    c, _ = core()
    (s,) = c.plan("t", "a", 8).assignments
    assert s.stream and s.parent is None
    assert c.plan("t", "a", 8).assignments == []
    assert c.plan("t", "b", 8).assignments == []  # nothing held yet, and no origin reads
    c.report("t", "a", [Done(0, "d0", None, MiB, 0.1), Done(1, "d1", None, MiB, 0.1)], [])
    got = c.plan("t", "b", 8).assignments
    assert sorted(x.piece for x in got) == [0, 1]
    assert all(x.parent == "a" and not x.stream for x in got)


def test_once_every_piece_is_held_nobody_streams_again():
    c, _ = core()
    assert c.plan("t", "a", 1).assignments[0].stream
    c.report("t", "a", [Done(i, f"d{i}", None, MiB, 0.1) for i in range(8)], [])
    c.finish("t", "a", None)
    got = c.plan("t", "b", 8).assignments
    assert len(got) == 4 and all(x.parent == "a" for x in got)  # a's four upload slots


def test_a_dead_or_failed_streamer_hands_the_stream_to_another_peer():
    c, now = core()
    assert c.plan("t", "a", 1).assignments[0].stream
    c.peer_lost("a")
    assert c.plan("t", "b", 1).assignments[0].stream
    c.report("t", "b", [], [Failed(0, None, "connection reset")])
    assert c.plan("t", "c", 1).assignments[0].stream
    now[0] += 11  # c stops reporting: its lease lapses
    c.expire_leases()
    assert c.plan("t", "b", 1).assignments[0].stream


def test_a_ranged_read_answered_with_the_whole_object_switches_to_streaming():
    c, _ = core(ranges=True)
    first = c.plan("t", "a", 2).assignments
    assert all(x.parent is None and not x.stream for x in first)
    c.report("t", "a", [], [Failed(first[0].piece, None, "ignores Range", range_ignored=True)])
    assert c.tasks["t"].origin_failures == {}
    (s,) = c.plan("t", "b", 4).assignments
    assert s.stream
