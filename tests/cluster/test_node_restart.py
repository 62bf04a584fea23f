"""A node restarts (raylet SIGKILLed, started again: a new Ray node id): its cache is still its
cache, because the store is keyed by the id kept in the node's own cache directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

import rayfly
from rayfly.actors import placement
from rayfly.demo_origin import make_file
from tests.conftest import sha256_file
from tests.support.raynode import RayNode, start_node

MiB = 1 << 20
pytestmark = pytest.mark.cluster
OLD_LAYOUT = "ab" * 28  # a store named by a Ray node id, as before cache ids


@pytest.fixture
def extra_nodes(ray_cluster, tmp_path) -> Iterator[list[RayNode]]:
    """Extra worker nodes a test starts; killed, and seen dead, at the end (later tests use
    every alive node)."""
    nodes: list[RayNode] = []
    yield nodes
    for node in nodes:
        if node.proc.poll() is None:
            node.kill()
    for node in nodes:
        if node.node_id:
            node.wait_dead()


def start(ray_cluster, log_dir: Path, env: dict[str, str], started: list[RayNode]) -> RayNode:
    """A worker node with ``env``; once more if `ray start` gave up (a loaded machine can miss
    its 30 s for a raylet to register)."""
    for attempt in (1, 2):
        try:
            node = start_node(ray_cluster.address, log_dir, env=env)
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        started.append(node)
        return node
    raise AssertionError("unreachable")


def peer_info(node_id: str) -> dict:
    node = next(n for n in placement.alive_nodes() if n.node_id == node_id)
    return ray.get(placement.get_or_create_peer(node).info.remote())


def test_a_restarted_node_serves_the_task_from_its_cache(
    ray_cluster, extra_nodes, origin, origin_root, tmp_path
):
    cache_dir = tmp_path / "node-cache"  # the node's own RAYFLY_CACHE_DIR (its raylet's env)
    env = {"RAYFLY_CACHE_DIR": str(cache_dir)}
    src = make_file(origin_root / "restart.bin", 6 * MiB, seed=51)
    url = origin.url + "restart.bin"

    node = start(ray_cluster, tmp_path / "logs", env, extra_nodes)
    first = rayfly.distribute(url, str(tmp_path / "1-{node_id}.bin"), nodes=[node.node_id])
    assert first.ok, str(first)
    assert origin.served("/restart.bin") == 6 * MiB, origin.log
    before = peer_info(node.node_id)
    assert Path(before["cache_dir"]) == cache_dir / before["cache_id"]

    node.kill()  # the host goes down: raylet, object store, peer
    node.wait_dead()
    stale = cache_dir / OLD_LAYOUT / "tasks" / first.task_ids[0]
    stale.mkdir(parents=True)  # a store of the previous layout, owned by no one
    origin.reset()

    again = start(ray_cluster, tmp_path / "logs", env, extra_nodes)
    assert again.node_id != node.node_id
    second = rayfly.distribute(url, str(tmp_path / "2-{node_id}.bin"), nodes=[again.node_id])
    assert second.ok, str(second)
    (result,) = second.nodes
    assert result.node_id == again.node_id
    assert result.files[0].cached, str(second)
    assert result.bytes_from_origin == 0 and result.bytes_from_peers == 0, str(second)
    assert origin.served("/restart.bin") == 0, origin.log
    assert sha256_file(tmp_path / f"2-{again.node_id}.bin") == sha256_file(src)

    after = peer_info(again.node_id)
    assert after["cache_id"] == before["cache_id"] and not after["cache_shared"]
    assert not (cache_dir / OLD_LAYOUT).exists()  # collected when the peer started
