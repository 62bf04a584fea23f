"""Local reads: a node reads a piece held by a parent on the same host straight from that parent's
piece store when it sees the store (``RAYFLY_LOCAL_READS``, on by default; the session cluster
turns it off so that its nodes move pieces through the object store, as separate hosts do).

Every piece read that way is checked against its digest; a copy that does not match, or a store
out of sight (another mount namespace), sends the node back to the parent's actor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

import rayfly
from rayfly.actors import placement
from rayfly.config import SchedulerConfig, from_env
from rayfly.demo_origin import make_file
from tests.conftest import sha256_file
from tests.support.raynode import RayNode, node_with_tmpfs_cache, start_node

MiB = 1 << 20
PIECES = 8
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def reader(ray_cluster, session_dir: Path) -> Iterator[RayNode]:
    """A worker node with local reads on (the scheduler is made first, elsewhere)."""
    ray.get(placement.get_scheduler(from_env(SchedulerConfig)).ping.remote())
    node = start_node(
        ray_cluster.address, session_dir / "local-reads", env={"RAYFLY_LOCAL_READS": "on"}
    )
    yield node
    node.retire()


def info(node_id: str) -> dict:
    return ray.get(placement.existing_peers()[node_id].info.remote())


def counter(node_id: str, key: str) -> int:
    """A peer's counter; 0 where the node has no peer yet (peers start on first use)."""
    return info(node_id)[key] if node_id in placement.existing_peers() else 0


def seed_then_read(url: str, seed: str, reader: RayNode, tmp_path: Path, origin):
    """Put the file on ``seed`` only, then distribute it to ``reader``; its report, and the
    reader's local reads and the pieces the seed's actor served during it."""
    first = rayfly.distribute(url, str(tmp_path / "seed.bin"), nodes=seed, piece_size=MiB)
    assert first.ok, str(first)
    origin.reset()
    local, served = "pieces_read_from_local_stores", "pieces_served"
    before = counter(reader.node_id, local), counter(seed, served)
    report = rayfly.distribute(
        url, str(tmp_path / "read.bin"), nodes=reader.node_id, piece_size=MiB
    )
    after = counter(reader.node_id, local), counter(seed, served)
    return report, after[0] - before[0], after[1] - before[1]


def session_node(reader: RayNode) -> str:
    return next(n.node_id for n in placement.alive_nodes() if n.node_id != reader.node_id)


def test_pieces_of_a_parent_on_this_host_are_read_from_its_store(
    reader, origin, origin_root, tmp_path
):
    src = make_file(origin_root / "local.bin", PIECES * MiB, seed=91)
    seed = session_node(reader)
    report, local, served = seed_then_read(origin.url + "local.bin", seed, reader, tmp_path, origin)
    assert report.ok, str(report)
    assert sha256_file(tmp_path / "read.bin") == sha256_file(src)
    assert origin.served("/local.bin") == 0
    assert local == PIECES
    assert served == 0  # the seed's actor was not asked for a piece
    assert info(reader.node_id)["local_reads"] is True


def test_a_corrupt_piece_in_the_parents_store_is_caught_and_the_parent_drops_it(
    reader, origin, origin_root, tmp_path
):
    src = make_file(origin_root / "rotten.bin", PIECES * MiB, seed=92)
    seed = session_node(reader)
    url = origin.url + "rotten.bin"
    first = rayfly.distribute(url, str(tmp_path / "seed.bin"), nodes=seed, piece_size=MiB)
    assert first.ok, str(first)
    view = ray.get(placement.existing_peers()[seed].store_view.remote())
    data = Path(view["root"]) / "tasks" / first.task_ids[0] / "data"
    os.chmod(data, 0o644)
    with open(data, "r+b") as fh:  # one byte of piece 3 rots on the seed's disk
        fh.seek(3 * MiB + 100)
        byte = fh.read(1)
        fh.seek(3 * MiB + 100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    origin.reset()
    report = rayfly.distribute(url, str(tmp_path / "read.bin"), nodes=reader.node_id)
    assert report.ok, str(report)
    assert sha256_file(tmp_path / "read.bin") == sha256_file(src)
    entries = ray.get(placement.existing_peers()[seed].cache_entries.remote())
    assert first.task_ids[0] not in {e["task_id"] for e in entries}  # it dropped its rotten copy
    assert origin.served("/rotten.bin") >= MiB  # the rotten piece came from the origin


def test_a_parent_whose_store_is_out_of_sight_serves_through_its_actor(
    reader, ray_cluster, origin, origin_root, tmp_path
):
    """A parent on this host whose store is on a tmpfs in its own mount namespace (another
    host's disk, as far as the reader can see)."""
    cache = tmp_path / "hidden-cache"
    with node_with_tmpfs_cache(ray_cluster.address, tmp_path / "logs", cache) as hidden:
        src = make_file(origin_root / "hidden.bin", PIECES * MiB, seed=93)
        url = origin.url + "hidden.bin"
        report, local, served = seed_then_read(url, hidden.node_id, reader, tmp_path, origin)
    assert report.ok, str(report)
    assert sha256_file(tmp_path / "read.bin") == sha256_file(src)
    assert (local, served) == (0, PIECES)
    assert origin.served("/hidden.bin") == 0  # every piece came from the hidden parent
