"""Pieces served as object references: from memory while hot, from disk once evicted, and a copy
corrupted in transit caught by the receiver's digest (a test-only fault hook on the parent)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import rayfly
from rayfly import status
from rayfly.actors import placement
from rayfly.demo_origin import make_file
from tests.conftest import sha256_file
from tests.support.raynode import start_node

MiB = 1 << 20
pytestmark = pytest.mark.cluster


@pytest.fixture
def node_with(ray_cluster, tmp_path, request):
    """A worker node started with the environment the test is parametrized with."""
    node = start_node(ray_cluster.address, tmp_path / "logs", env=request.param)
    yield node
    node.kill()
    node.wait_dead()


def _seed_then_fetch(seed: str, origin, url: str, tmp_path, others: int):
    """Put the file on ``seed`` only, then distribute it to ``others`` other nodes; the second
    report and the nodes it went to."""
    first = rayfly.distribute(url, str(tmp_path / "seed.bin"), nodes=seed, piece_size=MiB)
    assert first.ok, first
    chosen = [n.node_id for n in placement.alive_nodes() if n.node_id != seed][:others]
    origin.reset()
    report = rayfly.distribute(
        url, str(tmp_path / "{node_id}.bin"), nodes=",".join(chosen), piece_size=MiB
    )
    return report, chosen


def _served(node_id: str) -> dict:
    return ray.get(placement.existing_peers()[node_id].info.remote())


@pytest.mark.parametrize("node_with", [{"RAYFLY_SERVE_MEMORY": "1MiB"}], indirect=True)
def test_a_parent_serves_pieces_evicted_from_memory_from_disk(
    node_with, origin, origin_root, tmp_path
):
    """The seed keeps one piece in memory: asked for every piece twice, it serves the pieces
    evicted from memory from its disk, verified; nothing comes from the origin."""
    src = make_file(origin_root / "served.bin", 8 * MiB, seed=61)
    url, seed = origin.url + "served.bin", node_with.node_id
    report, chosen = _seed_then_fetch(seed, origin, url, tmp_path, 1)
    assert report.ok, str(report)
    before = _served(seed)
    assert status.cache_rm(report.task_ids[0], chosen[0][:12]) == chosen
    again = rayfly.distribute(
        url, str(tmp_path / "again" / "{node_id}.bin"), nodes=chosen[0], piece_size=MiB
    )
    assert again.ok, str(again)
    after = _served(seed)
    for dest in (tmp_path / f"{chosen[0]}.bin", tmp_path / "again" / f"{chosen[0]}.bin"):
        assert sha256_file(dest) == sha256_file(src)
    assert origin.served("/served.bin") == 0
    assert again.nodes[0].bytes_from_peers == 8 * MiB
    assert after["pieces_served"] - before["pieces_served"] == 8
    assert after["pieces_served_from_memory"] - before["pieces_served_from_memory"] <= 1
    assert after["serve_memory"]["held"] <= MiB


def test_pieces_read_from_the_origin_are_served_from_memory(
    ray_cluster, origin, origin_root, tmp_path
):
    """Two nodes split the origin reads and swap what they read: a piece read from the origin
    is kept in the object store for the other node (no read back from disk, no second copy)."""
    src = make_file(origin_root / "swapped.bin", 8 * MiB, seed=67)
    nodes = [n.node_id for n in placement.alive_nodes()][:2]
    peers = placement.existing_peers()
    keys = ("pieces_served", "pieces_served_from_memory", "pieces_kept_from_origin")
    before = {n: _served(n) if n in peers else dict.fromkeys(keys, 0) for n in nodes}
    origin.reset()
    report = rayfly.distribute(
        origin.url + "swapped.bin", str(tmp_path / "{node_id}.bin"), nodes=nodes, piece_size=MiB
    )
    assert report.ok, str(report)
    assert origin.served("/swapped.bin") == 8 * MiB
    for n in nodes:
        assert sha256_file(tmp_path / f"{n}.bin") == sha256_file(src)
    delta = {n: {k: _served(n)[k] - before[n][k] for k in keys} for n in nodes}
    assert sum(d["pieces_served"] for d in delta.values()) > 0, delta
    for d in delta.values():
        assert d["pieces_served_from_memory"] == d["pieces_served"], delta
        assert d["pieces_kept_from_origin"] >= d["pieces_served"], delta
    for n in nodes:  # at rest, what a peer keeps of its store is what it keeps to serve
        kept = _served(n)["serve_memory"]
        assert kept["referenced"] == kept["held"] > 0, kept


def test_pieces_travel_as_views_of_the_object_store(ray_cluster, origin, origin_root, tmp_path):
    """Every piece a peer serves (one it read from the origin, one it received and serves a
    copy of) is a uint8 array in the object store, so that a ``get`` of it is a read-only view
    of the getter's copy, made without a copy (Ray's out-of-band buffers). On the code before,
    a piece read from the origin was put as a memoryview, which Ray packs inline (msgpack):
    every get of it, and of every copy served onwards, was ``bytes`` unpacked into process
    memory by two more copies, and the piece a child kept to serve was not a view of its
    store but a private copy."""
    src = make_file(origin_root / "views.bin", 8 * MiB, seed=73)
    nodes = [n.node_id for n in placement.alive_nodes()][:2]
    report = rayfly.distribute(
        origin.url + src.name, str(tmp_path / "{node_id}.bin"), nodes=nodes, piece_size=MiB
    )
    assert report.ok, str(report)
    assert sum(n.bytes_from_peers for n in report.nodes) > 0, str(report)
    for n in nodes:
        peer = placement.existing_peers()[n]
        pieces = [_served_bytes(peer, report.task_ids[0], i) for i in range(8)]
        kinds = {(type(p).__name__, getattr(p, "dtype", None)) for p in pieces}
        assert kinds == {("ndarray", np.dtype(np.uint8))}, (n, kinds)
        assert not any(p.flags.writeable for p in pieces)
        assert b"".join(pieces) == src.read_bytes()


@pytest.mark.parametrize("node_with", [{"RAYFLY_TEST_CORRUPT_SERVED": "1"}], indirect=True)
def test_a_piece_corrupted_in_transit_is_caught_by_the_receiver(
    node_with, origin, origin_root, tmp_path
):
    """Every piece the seed serves has a byte flipped after its own check: the child's digest
    check refuses each one, the pieces come from the origin instead, and the file is right."""
    src = make_file(origin_root / "corrupt.bin", 8 * MiB, seed=62)
    url = origin.url + "corrupt.bin"
    report, chosen = _seed_then_fetch(node_with.node_id, origin, url, tmp_path, 1)
    assert report.ok, str(report)
    assert sha256_file(tmp_path / f"{chosen[0]}.bin") == sha256_file(src)
    assert report.nodes[0].bytes_from_peers == 0
    assert origin.served("/corrupt.bin") == 8 * MiB
    assert _served(node_with.node_id)["pieces_served"] > 0  # it did serve, and was refused
    # the child kept none of the refused copies to serve onwards: a third node gets every
    # piece from it (or the seed, refused again), none from the origin
    third = next(
        n.node_id for n in placement.alive_nodes() if n.node_id not in {node_with.node_id, *chosen}
    )
    origin.reset()
    again = rayfly.distribute(url, str(tmp_path / "{node_id}.bin"), nodes=third, piece_size=MiB)
    assert again.ok, str(again)
    assert sha256_file(tmp_path / f"{third}.bin") == sha256_file(src)
    assert origin.served("/corrupt.bin") == 0


def test_a_piece_served_from_memory_is_pulled_from_its_parent_only(
    ray_cluster, origin, origin_root, tmp_path
):
    """Ray pulls an object from a random node among those holding a copy: a parent that handed
    every child the same reference would have its pieces sent by earlier children (or by a node
    that evicted its copy, after Ray's 10 s retry). Each serve is an object of its own that only
    the parent's node holds (on the code before, both asks got the one reference the child had
    already pulled, held on two nodes)."""
    make_file(origin_root / "located.bin", 4 * MiB, seed=68)
    url = origin.url + "located.bin"
    seed = placement.alive_nodes()[0].node_id
    report, _ = _seed_then_fetch(seed, origin, url, tmp_path, 1)
    assert report.ok and report.nodes[0].bytes_from_peers == 4 * MiB, str(report)
    peer = placement.existing_peers()[seed]
    task_id = report.task_ids[0]
    answers = _answers_in_place(peer, task_id, [0, 0])
    where = ray.experimental.get_object_locations(answers)
    for ref in answers:
        assert where[ref]["node_ids"] == [seed], where
    piece = ray.get(answers[0]).tobytes()
    assert piece == (origin_root / "located.bin").read_bytes()[: len(piece)]
    assert _served(seed)["pieces_served_from_memory"] >= 2


def _served_bytes(peer: Any, task_id: str, index: int) -> np.ndarray:
    """Piece ``index`` as ``peer`` serves it: the bytes it answers with, or those of the object
    it answers with a reference to."""
    value = ray.get(peer.read_piece.remote(task_id, index))
    return ray.get(value[0]) if isinstance(value, list) else value


def _answers_in_place(peer: Any, task_id: str, indexes: list[int]) -> list[ray.ObjectRef]:
    """``peer``'s answers for ``indexes`` (the calls' return objects: for a piece it serves from
    memory, the piece's bytes; a ``[reference]`` answer is a small value Ray returns inline, not
    an object in the parent's store), waited for without pulling them here."""
    answers = [peer.read_piece.remote(task_id, i) for i in indexes]
    ready, _ = ray.wait(answers, num_returns=len(answers), timeout=60, fetch_local=False)
    assert len(ready) == len(answers)
    return answers


@ray.remote(num_cpus=0)
def _fill_object_store(nbytes: int, chunk: int) -> int:
    """Put ``nbytes`` of new objects into this node's store, all held at once (more than the
    store holds: Ray evicts every copy nothing pins, then spills); how many were put."""
    held = [ray.put(np.zeros(chunk, dtype=np.uint8)) for _ in range(nbytes // chunk)]
    return len(held)


def test_a_relay_keeps_its_copies_of_the_pieces_it_serves_from_memory(
    ray_cluster, origin, origin_root, tmp_path
):
    """A peer keeps the pieces it received pinned in its own object store (within its serve
    memory), not by reference only: when the store fills and Ray evicts what nothing pins, the
    relay's copies stay, so serving them onwards never pulls them back from another node (Ray
    picks that node at random; one that evicted its copy too costs a 10 s retry). On the code
    before, the relay held references only and the fill evicted its copies."""
    src = make_file(origin_root / "pinned-relay.bin", 8 * MiB, seed=69)
    url = origin.url + src.name
    seed, relay = (n.node_id for n in placement.alive_nodes()[:2])
    first = rayfly.distribute(url, str(tmp_path / "seed.bin"), nodes=seed, piece_size=MiB)
    assert first.ok, str(first)
    relayed = rayfly.distribute(url, str(tmp_path / "relay.bin"), nodes=relay, piece_size=MiB)
    assert relayed.ok and relayed.nodes[0].bytes_from_peers == 8 * MiB, str(relayed)
    peer = placement.existing_peers()[relay]
    task_id = relayed.task_ids[0]
    kept = [ray.get(peer.wait_piece.remote(task_id, i))[0] for i in range(8)]
    assert relay in ray.experimental.get_object_locations(kept)[kept[0]]["node_ids"]
    on_relay = NodeAffinitySchedulingStrategy(node_id=relay, soft=False)
    fill = _fill_object_store.options(scheduling_strategy=on_relay)
    assert ray.get(fill.remote(480 * MiB, 8 * MiB), timeout=120) == 60
    where = ray.experimental.get_object_locations(kept)
    assert all(relay in where[ref]["node_ids"] for ref in kept), where
    before = _served(relay)
    copies = _answers_in_place(peer, task_id, list(range(8)))
    where = ray.experimental.get_object_locations(copies)
    assert all(where[ref]["node_ids"] == [relay] for ref in copies), where
    assert b"".join(ray.get(copies)) == src.read_bytes()
    after = _served(relay)
    assert after["pieces_served_from_memory"] - before["pieces_served_from_memory"] == 8
