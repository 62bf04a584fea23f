"""`rayfly status` and `rayfly cache ls|rm|gc` against the session's local cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

import rayfly
from rayfly import status
from rayfly.actors import placement
from rayfly.demo_origin import make_file
from tests.conftest import CLUSTER_NODES, cache_file, free_port
from tests.support.cli import rayfly_cli

MiB = 1 << 20
pytestmark = pytest.mark.cluster


def cli(*args, timeout=120):
    return rayfly_cli(*args, timeout=timeout)


@pytest.fixture
def distributed(ray_cluster, origin, origin_root, tmp_path):
    make_file(origin_root / "status.bin", 3 * MiB, seed=21)
    report = rayfly.distribute(origin.url + "status.bin", str(tmp_path / "{node_id}.bin"))
    assert report.ok, str(report)
    return report


def test_status_shows_tasks_peers_and_caches(ray_cluster, distributed):
    tid = distributed.task_ids[0]
    data = status.cluster_status()
    task = next(t for t in data["tasks"] if t["task_id"] == tid)
    assert task["state"] == "done" and task["length"] == 3 * MiB
    assert task["nodes_done"] == CLUSTER_NODES
    asks = task["asks"]  # every node was handed every piece; each ask not given has a reason
    assert asks["given"] >= task["pieces"] * CLUSTER_NODES, asks
    assert asks["asked"] == sum(asks[k] for k in ("given", "busy", "origin", "none")), asks
    assert len(data["peers"]) == CLUSTER_NODES
    for peer in data["peers"]:
        assert peer["cache_used"] >= 3 * MiB and peer["cache_quota"] > 0
        assert peer["downloads_inflight"] == 0 and peer["uploads"] == 0
    text = status.format_status(data)
    assert tid[:16] in text and f"peers ({CLUSTER_NODES})" in text
    assert f"pieces asked={asks['asked']} given={asks['given']} " in text
    # each node's cache identity: its own store, named by the id kept in its directory
    cache_ids = {p["cache_id"] for p in data["peers"]}
    assert len(cache_ids) == CLUSTER_NODES and not any(p["cache_shared"] for p in data["peers"])
    for peer in data["peers"]:
        assert f"{peer['node_id'][:12]} " in text and f"cache {peer['cache_id'][:12]} " in text
        root = Path(peer["cache_dir"]).parent
        assert (root / "cache-id").read_text().strip() == peer["cache_id"]
    listed = cli("cache", "ls", "--address", ray_cluster.address)
    assert listed.returncode == 0, listed.stderr
    for peer in data["peers"]:
        assert f"{peer['node_id'][:12]}  {peer['cache_id'][:12]}  {tid}" in listed.stdout

    out = cli("status", "--json", "--address", ray_cluster.address)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert tid in {t["task_id"] for t in shown["tasks"]}
    assert {p["node_id"] for p in shown["peers"]} == {n.node_id for n in distributed.nodes}


def test_cache_ls_rm_gc(ray_cluster, distributed):
    tid = distributed.task_ids[0]
    rows = [r for r in status.cache_ls() if r["task_id"] == tid]
    assert len(rows) == CLUSTER_NODES and all(r["complete"] for r in rows)
    victim = distributed.nodes[0].node_id
    data_file = cache_file(victim, tid)
    assert data_file.exists()

    assert status.cache_rm(tid[:12], victim[:12]) == [victim]
    assert not data_file.exists()
    assert Path(distributed.nodes[0].path).exists()  # the destination stays
    left = {r["node_id"] for r in status.cache_ls() if r["task_id"] == tid}
    assert left == {n.node_id for n in distributed.nodes[1:]}
    scheduler = placement.get_scheduler()
    assert victim not in ray.get(scheduler.progress.remote([tid]))  # no peer is sent there

    other = distributed.nodes[1].node_id
    out = cli("cache", "gc", "--keep", "0", "--node", other, "--address", ray_cluster.address)
    assert out.returncode == 0, out.stderr
    assert tid in out.stdout
    assert not [r for r in status.cache_ls(other) if r.get("complete")]
    assert other not in ray.get(scheduler.progress.remote([tid]))

    out = cli("cache", "ls", "--json", "--address", ray_cluster.address)
    assert out.returncode == 0, out.stderr
    assert {r["node_id"] for r in json.loads(out.stdout) if r["task_id"] == tid} == {
        n.node_id for n in distributed.nodes[2:]
    }


def test_cache_rm_of_unknown_task_is_a_clear_error(ray_cluster):
    out = cli("cache", "rm", "feedfacefeedface", "--address", ray_cluster.address)
    assert out.returncode == 2
    assert "'feedfacefeedface' is in no chosen node's cache" in out.stderr


def test_status_without_a_cluster_says_so():
    address = f"127.0.0.1:{free_port()}"
    out = cli("status", "--address", address, timeout=60)
    assert out.returncode == 2
    assert f"no Ray cluster answers at {address}" in out.stderr
    assert "ray start --head" in out.stderr
