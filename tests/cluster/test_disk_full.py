"""A node whose cache disk is too small for a task: it fails alone, before it fetches a byte.

The node is a host of its own as far as its disk goes: a raylet in a private mount namespace
whose cache directory is a small tmpfs that only it sees (``tests/support/raynode.py``).
"""

from __future__ import annotations

import pytest
import ray

import rayfly
from rayfly.actors import placement
from rayfly.demo_origin import make_file
from rayfly.errors import CacheFull
from tests.conftest import CLUSTER_NODES, sha256_file
from tests.support.raynode import node_with_tmpfs_cache

MiB = 1 << 20
pytestmark = pytest.mark.cluster


def test_a_node_without_room_fails_alone_before_it_takes_origin_reads(
    ray_cluster, origin, origin_root, tmp_path
):
    """40 MiB to every node, one of which caches on a 16 MiB disk (its quota would allow the
    task: only the disk does not). That node's report names its cache and what it needs, it
    publishes nothing and keeps no entry; the others get the file, and the origin serves it
    once: the small node took no origin read that another node had to repeat."""
    cache = tmp_path / "small-cache"
    with node_with_tmpfs_cache(ray_cluster.address, tmp_path / "logs", cache, "16m") as small:
        src = make_file(origin_root / "too-big.bin", 40 * MiB, seed=97)
        report = rayfly.distribute(
            origin.url + src.name, str(tmp_path / "{node_id}.bin"), piece_size=4 * MiB
        )
        by_node = {n.node_id: n for n in report.nodes}
        failed = by_node.pop(small.node_id)
        assert not failed.ok and failed.error is not None
        assert "no room for task" in failed.error and str(cache) in failed.error, failed.error
        assert f"needs {40 * MiB} bytes" in failed.error, failed.error
        assert not (tmp_path / f"{small.node_id}.bin").exists()
        peer = placement.existing_peers()[small.node_id]
        entries = ray.get(peer.cache_entries.remote())
        assert report.task_ids[0] not in {e["task_id"] for e in entries}
        # asked for a piece afterwards (a node's mirror does), the peer says why, not "not
        # prepared": the mirror passes such a blob through from the upstream
        with pytest.raises(CacheFull, match="no room for task"):
            ray.get(peer.wait_piece.remote(report.task_ids[0], 0))
    assert len(by_node) == CLUSTER_NODES and all(n.ok for n in by_node.values()), str(report)
    want = sha256_file(src)
    for node_id in by_node:
        assert sha256_file(tmp_path / f"{node_id}.bin") == want
        info = ray.get(placement.existing_peers()[node_id].info.remote())
        assert info["tasks_begun_unreserved"] == 0  # this disk has fallocate: every task reserved
    assert origin.served("/too-big.bin") == 40 * MiB, origin.log
