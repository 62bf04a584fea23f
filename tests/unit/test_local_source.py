"""Node-local sources without Ray: which node a source is on, who may read it, its task key."""

import os

import pytest

from rayfly.api import locate
from rayfly.config import SchedulerConfig
from rayfly.errors import InvalidInput, NodeNotFound
from rayfly.nodes import NodeInfo, match_node
from rayfly.protocol import Done
from rayfly.scheduler_core import SchedulerCore
from rayfly.scheduling import origin_quota
from rayfly.task import SourceSpec, TaskInfo, task_id_for

MiB = 1 << 20
NODES = [
    NodeInfo("aa11" + "0" * 52, "10.0.0.1", "head"),
    NodeInfo("ab22" + "0" * 52, "10.0.0.2", "worker-1"),
    NodeInfo("cc33" + "0" * 52, "10.0.0.2", "worker-2"),
]


@pytest.mark.parametrize(
    ("spec", "want"), [("aa", 0), ("ab22", 1), ("10.0.0.1", 0), ("worker-2", 2), (" cc ", 2)]
)
def test_a_node_is_named_by_id_prefix_ip_or_hostname(spec, want):
    assert match_node(spec, NODES) == NODES[want]


def test_an_ambiguous_name_lists_its_matches():
    with pytest.raises(NodeNotFound, match=r"'10\.0\.0\.2' matches 2 nodes: ab22.*worker-1.*cc33"):
        match_node("10.0.0.2", NODES)
    with pytest.raises(NodeNotFound, match="matches 2 nodes"):
        match_node("a", NODES)


def test_an_unknown_name_lists_the_alive_nodes():
    with pytest.raises(NodeNotFound, match=r"'deadbeef' is not an alive node.*aa11.*head.*cc33"):
        match_node("deadbeef", NODES)
    with pytest.raises(NodeNotFound, match="is not an alive node"):
        match_node("", NODES)


def test_a_local_path_is_on_this_node_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = NODES[1].node_id
    for given in ("data.bin", "./sub/../data.bin", f"file://{tmp_path}/data.bin"):
        origin = locate(given, None, NODES, here)
        assert origin.node == NODES[1]
        assert origin.url == f"file://{tmp_path}/data.bin"


def test_source_node_names_another_node_which_needs_an_absolute_path():
    here = NODES[0].node_id
    assert locate("/ckpt/x", "worker-2", NODES, here).node == NODES[2]
    assert locate("/ckpt/x", "worker-2", NODES, here).url == "file:///ckpt/x"
    with pytest.raises(InvalidInput, match="must be absolute"):
        locate("ckpt/x", "worker-2", NODES, here)
    with pytest.raises(NodeNotFound, match="alive nodes"):
        locate("/ckpt/x", "nosuchnode", NODES, here)


def test_a_client_outside_the_cluster_must_name_the_node():
    with pytest.raises(InvalidInput, match="--source-node"):
        locate("/ckpt/x", None, NODES, None)
    assert locate("/ckpt/x", "aa", NODES, None).node == NODES[0]
    with pytest.raises(InvalidInput, match="must be absolute"):
        locate("x", "aa", NODES, None)


def test_any_keeps_a_shared_filesystem_readable_by_every_node(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    origin = locate("x.bin", "any", NODES, NODES[0].node_id)
    assert origin.node is None and origin.url == f"file://{os.getcwd()}/x.bin"


def test_remote_urls_are_on_no_node():
    assert locate("s3://b/k", None, NODES, None).node is None
    assert locate("http://o/x", "any", NODES, None).node is None
    with pytest.raises(InvalidInput, match="local path"):
        locate("http://o/x", "aa", NODES, NODES[0].node_id)


def test_the_same_path_on_two_nodes_is_two_tasks():
    a = task_id_for("file:///data/x", node="A")
    assert a != task_id_for("file:///data/x", node="B")
    assert a != task_id_for("file:///data/x")
    assert task_id_for("http://o/x") == task_id_for("http://o/x", node=None)
    assert SourceSpec("file:///data/x", source_node="A").resolved_task_id() == a


def test_only_the_source_node_may_read_the_origin():
    assert origin_quota(8, 4, None, "b") == 2
    assert origin_quota(8, 4, "a", "a") == 8
    assert origin_quota(8, 4, "a", "b") == 0


def local_core(n_pieces=4):
    c = SchedulerCore(SchedulerConfig(origin_parallelism=8, lease_timeout_s=10), clock=lambda: 0.0)
    info = TaskInfo("t", "file:///data/x", n_pieces * MiB, MiB, source_node="src")
    c.add_task(info, "rarest-first")
    return c


def test_other_peers_get_pieces_only_from_peers():
    c = local_core()
    c.join("t", "other", "h1", 4)
    assert c.plan("t", "other", 8).assignments == []
    c.join("t", "src", "h2", 4)
    reads = c.plan("t", "src", 8).assignments
    assert sorted(a.piece for a in reads) == [0, 1, 2, 3]
    assert all(a.parent is None for a in reads)
    c.report("t", "src", [Done(0, "d0", None, MiB, 0.1)], [])
    got = c.plan("t", "other", 8).assignments
    assert [(a.piece, a.parent, a.digest) for a in got] == [(0, "src", "d0")]


def test_losing_the_source_node_early_fails_the_task_for_everyone():
    c = local_core(2)
    c.join("t", "src", "h2", 4)
    c.join("t", "other", "h1", 4)
    c.plan("t", "src", 8)
    c.report("t", "src", [Done(0, "d0", None, MiB, 0.1)], [])
    c.peer_lost("src")
    batch = c.plan("t", "other", 8)
    assert batch.error and "only on node src" in batch.error


def test_losing_the_source_node_after_every_piece_left_it_is_harmless():
    c = local_core(2)
    c.join("t", "src", "h2", 4)
    c.join("t", "other", "h1", 4)
    c.join("t", "third", "h3", 4)
    c.plan("t", "src", 8)
    c.report("t", "src", [Done(0, "d0", None, MiB, 0.1), Done(1, "d1", None, MiB, 0.1)], [])
    c.plan("t", "other", 8)
    c.report("t", "other", [Done(0, "d0", "src", MiB, 0.1), Done(1, "d1", "src", MiB, 0.1)], [])
    c.finish("t", "src", "evicted from the cache")
    batch = c.plan("t", "third", 8)
    assert batch.error is None
    assert sorted((a.piece, a.parent) for a in batch.assignments) == [(0, "other"), (1, "other")]
