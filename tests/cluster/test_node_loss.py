"""Nodes die, the scheduler restarts: the survivors finish with the right bytes.

A node is killed the way a host fails: SIGKILL of its raylet's process group, which takes its
peer actor, its object store and everything on it (``tests/support/raynode.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import rayfly
from rayfly.actors import placement
from rayfly.config import NAMESPACE, PEER_PREFIX
from rayfly.demo_origin import make_file
from tests.conftest import CLUSTER_NODES, sha256_file
from tests.support.raynode import RayNode, start_node

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster


@pytest.fixture
def extra_node(ray_cluster: Any, session_dir: Path) -> Iterator[RayNode]:
    """A worker node joined for this test; killed and seen dead afterwards, so later tests on
    the session cluster (``--nodes all``) do not see it."""
    node = start_node(ray_cluster.address, session_dir / "extra-nodes")
    yield node
    node.kill()
    node.wait_dead()


def held_by(node_id: str, name: str) -> int:
    """Bytes of the task whose URL ends in ``name`` that the scheduler knows ``node_id`` holds."""
    scheduler = placement.get_scheduler()
    rows = ray.get(scheduler.status.remote())
    tids = [r["task_id"] for r in rows if r["url"].endswith(name)]
    return ray.get(scheduler.progress.remote(tids)).get(node_id, 0) if tids else 0


def wait_held(node_id: str, name: str, nbytes: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while held_by(node_id, name) < nbytes:
        assert time.monotonic() < deadline, f"{node_id} did not hold {nbytes} bytes of {name}"
        time.sleep(0.05)


def in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("kill_at", [0.1, 0.6])
def test_killed_worker_raylet_fails_only_its_node_and_json_stays_one_document(
    ray_cluster, origin, origin_root, tmp_path, extra_node, kill_at
):
    size = 64 * MiB
    src = make_file(origin_root / f"nodeloss-{kill_at}.bin", size, seed=80)
    origin.rate = 1.5 * MiB  # per response (2.7 s a piece): the kill lands mid-transfer
    cmd = [
        sys.executable, "-m", "rayfly.cli", "distribute", origin.url + src.name,
        "--dest", str(tmp_path / "{node_id}.bin"), "--address", ray_cluster.address,
        "--piece-size", "4MiB", "--concurrency", "4", "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        wait_held(extra_node.node_id, src.name, int(kill_at * size))
        extra_node.kill()
        t_kill = time.monotonic()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert time.monotonic() - t_kill < 60, "the survivors took too long after the node died"
    report = json.loads(out)  # the whole of stdout is one JSON document
    assert proc.returncode == 1, err[-2000:]
    rows = {n["node_id"]: n for n in report["nodes"]}
    assert len(rows) == CLUSTER_NODES + 1
    dead = rows.pop(extra_node.node_id)
    assert dead["ok"] is False and dead["error"] == f"node {extra_node.node_id} died", dead
    assert all(n["ok"] for n in rows.values()), rows
    assert {sha256_file(n["path"]) for n in rows.values()} == {sha256_file(src)}


def test_killed_scheduler_restarts_and_the_distribution_completes(
    ray_cluster, origin, origin_root, tmp_path
):
    size, piece = 64 * MiB, 4 * MiB
    src = make_file(origin_root / "sched-kill.bin", size, seed=81)
    origin.rate = 12 * MiB
    scheduler = placement.get_scheduler()
    assert actor_node(scheduler) == placement.head_node_id()
    t, out = in_thread(
        lambda: rayfly.distribute(
            origin.url + src.name, str(tmp_path / "{node_id}.bin"), piece_size=piece, concurrency=4
        )
    )
    deadline = time.monotonic() + 60
    while max(ray.get(scheduler.progress.remote(_tids(src.name))).values(), default=0) < 3 * piece:
        assert time.monotonic() < deadline, "no peer held pieces in time"
        time.sleep(0.05)
    ray.kill(scheduler, no_restart=False)
    t.join(180)
    report = out["r"]
    assert report.ok, str(report)
    assert {sha256_file(n.path) for n in report.nodes} == {sha256_file(src)}
    # at most the origin reads in flight when it died are repeated (8 by default)
    assert size <= origin.bytes_served <= size + 8 * piece, origin.log
    assert src.name in {r["url"].rsplit("/", 1)[-1] for r in ray.get(scheduler.status.remote())}


def actor_node(handle: Any) -> str:
    """The node an actor runs on, from the GCS actor table."""
    ray.get(handle.__ray_ready__.remote(), timeout=60)
    return ray._private.state.actors(handle._actor_id.hex())["Address"]["NodeID"]


def restart(handle: Any, timeout: float = 60) -> None:
    """Kill an actor the way a crash does (Ray restarts it) and wait until it is back."""
    before = ray._private.state.actors(handle._actor_id.hex())["NumRestarts"]
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + timeout
    while True:
        row = ray._private.state.actors(handle._actor_id.hex())
        if row["NumRestarts"] > before and row["State"] == "ALIVE":
            return
        assert time.monotonic() < deadline, f"actor not restarted: {row['State']}"
        time.sleep(0.2)


def wait_restarted(call: Any, timeout: float = 60) -> Any:
    """``call()``, retried while the actor it calls restarts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ray.exceptions.RayActorError:
            assert time.monotonic() < deadline, "the actor did not come back"
            time.sleep(0.5)


def _tids(name: str) -> list[str]:
    rows = ray.get(placement.get_scheduler().status.remote())
    return [r["task_id"] for r in rows if r["url"].endswith(name)]


def test_pieces_only_the_dead_node_held_come_from_the_origin_once_more(
    ray_cluster, origin, origin_root, tmp_path, extra_node, monkeypatch
):
    size, piece = 96 * MiB, 1 * MiB
    src = make_file(origin_root / "only-copy.bin", size, seed=82)
    monkeypatch.setenv("RAYFLY_UPLOAD_SLOTS", "1")  # the extra node's peer serves one at a time
    first = rayfly.distribute(
        origin.url + src.name, str(tmp_path / "x"), nodes=[extra_node.node_id], piece_size=piece
    )
    assert first.ok and origin.bytes_served == size, str(first)
    survivors = [n.node_id for n in placement.alive_nodes() if n.node_id != extra_node.node_id]
    t, out = in_thread(
        lambda: rayfly.distribute(
            origin.url + src.name,
            str(tmp_path / "{node_id}.bin"),
            nodes=survivors,
            piece_size=piece,
            concurrency=1,
        )
    )
    wait_held(survivors[0], src.name, piece)
    extra_node.kill()
    t.join(180)
    report = out["r"]
    assert report.ok, str(report)
    assert {sha256_file(n.path) for n in report.nodes} == {sha256_file(src)}
    reads = Counter(start for path, start, _, _ in origin.log if path == "/" + src.name)
    assert max(reads.values()) <= 2, reads  # each piece at most once more
    assert max(reads.values()) == 2, "the node died after the survivors had everything"
    assert origin.bytes_served <= 2 * size


def test_pieces_relayed_from_a_dead_node_are_served_by_the_relay(
    ray_cluster, origin, origin_root, tmp_path, extra_node
):
    """A peer keeps the pieces it received to serve them onwards; when the node they came from
    dies their owner is gone, yet the relay holds every piece (its pinned copy in memory, or on
    disk): its children, and its node's mirror, get them from the relay (objects the relay
    owns), not from the origin again, without failing a pull."""
    size, piece = 16 * MiB, 1 * MiB
    src = make_file(origin_root / "relayed.bin", size, seed=84)
    url = origin.url + src.name
    first = rayfly.distribute(
        url, str(tmp_path / "e.bin"), nodes=[extra_node.node_id], piece_size=piece
    )
    assert first.ok and origin.bytes_served == size, str(first)
    others = [n.node_id for n in placement.alive_nodes() if n.node_id != extra_node.node_id]
    relay, child = others[:2]
    relayed = rayfly.distribute(url, str(tmp_path / "relay.bin"), nodes=[relay], piece_size=piece)
    assert relayed.ok and relayed.origin_bytes == 0, str(relayed)
    task_id = relayed.task_ids[0]
    # an answer of the dead node's peer (its piece's bytes), held on that node only
    probe = placement.existing_peers()[extra_node.node_id].read_piece.remote(task_id, 0)
    assert ray.wait([probe], timeout=60, fetch_local=False)[0] == [probe]
    extra_node.kill()
    extra_node.wait_dead()
    deadline = time.monotonic() + 60
    while True:  # until Ray reports the node's objects lost (a moment after the node's death)
        try:
            ray.get(probe, timeout=10)
        except ray.exceptions.ObjectLostError:  # OwnerDiedError is one too
            break
        except ray.exceptions.GetTimeoutError:
            pass
        assert time.monotonic() < deadline, "Ray never reported the dead node's peer gone"
        time.sleep(0.2)
    peer = placement.existing_peers()[relay]
    before = ray.get(peer.info.remote())
    # the node's mirror: every piece as an object the relay owns (on the code before, the
    # reference received from the dead node: OwnerDiedError here), or [] to read the file
    whole = src.read_bytes()
    for index in range(size // piece):
        box = ray.get(peer.wait_piece.remote(task_id, index))
        got = ray.get(box[0], timeout=60)
        assert bytes(got) == whole[index * piece : (index + 1) * piece], index
        assert ray.get(peer.wait_piece.remote(task_id, index, True)) == []
    report = rayfly.distribute(
        url, str(tmp_path / "child.bin"), nodes=[child], piece_size=piece, concurrency=1
    )
    assert report.ok, str(report)
    assert sha256_file(tmp_path / "child.bin") == sha256_file(src)
    assert origin.bytes_served == size, origin.log  # nothing read twice
    assert report.origin_bytes == 0, str(report)
    # one serve per piece: the child never had to ask again after a pull that failed
    after = ray.get(peer.info.remote())
    assert after["pieces_served"] - before["pieces_served"] == size // piece, (before, after)
    # from its own copies in memory, which the owner's death does not take (before the pinned
    # copies, the relay dropped every piece it had received from the dead node and read them
    # from disk)
    served_hot = after["pieces_served_from_memory"] - before["pieces_served_from_memory"]
    assert served_hot == size // piece, (before, after)


def test_a_restarted_scheduler_learns_what_the_nodes_hold(
    ray_cluster, origin, origin_root, tmp_path
):
    src = make_file(origin_root / "announced.bin", 8 * MiB, seed=83)
    url = origin.url + src.name
    a, b = (n.node_id for n in placement.alive_nodes()[1:3])
    assert rayfly.distribute(url, str(tmp_path / "a.bin"), nodes=[a]).ok
    scheduler = placement.get_scheduler()
    restart(scheduler)
    assert actor_node(scheduler) == placement.head_node_id()
    deadline = time.monotonic() + 30
    while wait_restarted(lambda: held_by(a, src.name)) < 8 * MiB:  # a's peer was asked
        if time.monotonic() > deadline:
            peer = ray.get_actor(PEER_PREFIX + a, namespace=NAMESPACE)
            by_hand = ray.get(peer.announce.remote())
            pytest.fail(f"not announced; by hand: {by_hand}, now {held_by(a, src.name)}")
        time.sleep(0.2)
    report = rayfly.distribute(url, str(tmp_path / "b.bin"), nodes=[b])
    assert report.ok and report.nodes[0].bytes_from_peers == 8 * MiB, str(report)
    assert origin.served("/" + src.name) == 8 * MiB, origin.log
    assert sha256_file(tmp_path / "b.bin") == sha256_file(src)


def test_a_node_registers_again_a_task_the_scheduler_forgot(
    ray_cluster, origin, origin_root, tmp_path
):
    """A task registered, then forgotten before any node joined it (the scheduler restarted
    and its store lacked the task): the node asked to fetch it registers it again from the
    task it was given, and fetches it; the origin serves it once."""
    from rayfly import durable
    from rayfly.actors.gcs_store import GcsStore
    from rayfly.task import SourceSpec

    src = make_file(origin_root / "forgotten.bin", 3 * MiB, seed=89)
    scheduler = placement.get_scheduler()
    task = ray.get(scheduler.register.remote(SourceSpec(origin.url + src.name, {})))
    durable.drop(GcsStore(), durable.TASKS, task.task_id)
    restart(scheduler)
    assert wait_restarted(lambda: _tids(src.name)) == []  # the scheduler forgot the task
    node = placement.alive_nodes()[1].node_id
    peer = ray.get_actor(PEER_PREFIX + node, namespace=NAMESPACE)
    ray.get(peer.prepare.remote(task))
    done = ray.get(peer.wait_complete.remote(task.task_id), timeout=60)
    assert done["sha256"] == sha256_file(src) and done["bytes_from_origin"] == 3 * MiB
    assert origin.served("/" + src.name) == 3 * MiB, origin.log
    assert held_by(node, src.name) == 3 * MiB  # the scheduler knows the task and its holder


def test_a_copy_cached_in_other_pieces_is_cut_anew_not_announced_as_is(
    ray_cluster, origin, origin_root, tmp_path
):
    """The scheduler forgets a task (a new Ray cluster over the same host caches, or more than
    MAX_KEPT_TASKS newer tasks) and the object is registered again with another piece size.
    5 MiB in 1 MiB pieces has a piece 2 (bytes 2-3 MiB) as long as piece 2 of a 2 MiB cut
    (bytes 4-5 MiB): a node announcing its old cut as is was taken as holding the new one, and
    the nodes that fetched piece 2 from it published other bytes, reported ok."""
    from rayfly import durable
    from rayfly.actors.gcs_store import GcsStore

    src = make_file(origin_root / "recut.bin", 5 * MiB, seed=87)
    url = origin.url + src.name
    first, second, *others = (n.node_id for n in placement.alive_nodes())
    old = rayfly.distribute(url, str(tmp_path / "old.bin"), nodes=[first], piece_size=2 * MiB)
    assert old.ok, str(old)
    durable.drop(GcsStore(), durable.TASKS, old.task_ids[0])  # the scheduler forgets it
    restart(placement.get_scheduler())
    fresh = rayfly.distribute(url, str(tmp_path / "fresh.bin"), nodes=[second], piece_size=MiB)
    assert fresh.ok and fresh.task_ids == old.task_ids, str(fresh)
    restart(placement.get_scheduler())  # every node announces what it holds
    wait_held(second, src.name, 5 * MiB)
    assert held_by(first, src.name) == 0  # its copy is cut into 2 MiB pieces
    origin.reset()
    report = rayfly.distribute(url, str(tmp_path / "{node_id}.bin"), piece_size=MiB)
    assert report.ok and report.nodes_ok == 2 + len(others), str(report)
    for node in report.nodes:
        assert sha256_file(node.path) == sha256_file(src), node.node_id
    assert origin.served("/" + src.name) == 0, origin.log
    wait_held(first, src.name, 5 * MiB)  # cut anew, it holds the task as registered now


def test_pins_survive_a_restart_of_the_pinner(ray_cluster, origin, origin_root, tmp_path):
    from rayfly import pin

    src = make_file(origin_root / "pinned-restart.bin", 2 * MiB, seed=84)
    url = origin.url + src.name
    report = rayfly.distribute(url, str(tmp_path / "{node_id}.bin"))
    assert report.ok
    row = pin.pin(url, str(tmp_path / "{node_id}.bin"), [n.node_id for n in report.nodes])
    try:
        pinner = pin.get_pinner(create=False)
        assert actor_node(pinner) == placement.head_node_id()
        restart(pinner)
        pins = wait_restarted(pin.list_pins)
        assert [p["pin_id"] for p in pins if p["pin_id"] == row["pin_id"]] == [row["pin_id"]]
    finally:
        pin.unpin(row["pin_id"])
    restart(pin.get_pinner(create=False))
    assert row["pin_id"] not in {p["pin_id"] for p in wait_restarted(pin.list_pins)}
