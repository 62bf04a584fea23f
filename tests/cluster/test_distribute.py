"""Distribution on a local 4-node Ray cluster from real origins (HTTP on loopback, S3 via moto)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import ray

import rayfly
from rayfly.actors import placement
from rayfly.config import NAMESPACE, PEER_PREFIX
from rayfly.demo_origin import make_file
from rayfly.task import TAIL_SPLIT
from tests.conftest import CLUSTER_NODES, sha256_file

MiB = 1 << 20
pytestmark = pytest.mark.cluster


def node_files(root: Path, name: str) -> dict[str, Path]:
    return {d.name: d / name for d in root.iterdir() if (d / name).exists()}


def test_large_file_reaches_every_node_once_from_origin(ray_cluster, origin, origin_root, tmp_path):
    src = make_file(origin_root / "big.bin", 256 * MiB, seed=1)
    want = sha256_file(src)
    report = rayfly.distribute(origin.url + "big.bin", str(tmp_path / "{node_id}" / "big.bin"))
    assert report.ok, str(report)
    assert origin.bytes_served == src.stat().st_size  # 1.00x, not 4x
    assert report.origin_bytes == src.stat().st_size
    copies = node_files(tmp_path, "big.bin")
    assert len(copies) == CLUSTER_NODES
    assert {sha256_file(p) for p in copies.values()} == {want}
    assert {n.sha256 for n in report.nodes} == {want}
    assert sum(n.bytes_from_peers for n in report.nodes) >= 2 * src.stat().st_size
    assert report.to_arrow().num_rows == CLUSTER_NODES
    sizes = {e.nbytes for n in report.nodes for e in n.timeline}
    assert sizes == {max(sizes), max(sizes) // TAIL_SPLIT}  # the last pieces cut smaller
    for n in report.nodes:  # every piece's time, from asking for it to holding it verified
        assert sum(e.nbytes for e in n.timeline) == n.bytes_from_origin + n.bytes_from_peers
        assert all(0 < entry.seconds <= n.seconds for entry in n.timeline), n.node_id
        assert 0 < n.piece_p50_s <= n.piece_p90_s <= n.seconds, n


def test_an_origin_piece_slower_than_the_lease_is_read_once(
    ray_cluster, origin, origin_root, tmp_path
):
    """The reading peer's heartbeats renew its lease (20 s in this session): the piece is not
    handed to another node and read from the origin a second time (it was: 2 GETs, 2.00x)."""
    src = make_file(origin_root / "slow.bin", 4 * MiB, seed=5)
    origin.rate = 140 * 1024  # the piece's last byte leaves after ~22 s
    try:
        url = origin.url + "slow.bin"
        report = rayfly.distribute(url, str(tmp_path / "{node_id}.bin"), piece_size=4 * MiB)
    finally:
        origin.rate = None
    assert report.ok, str(report)
    assert {sha256_file(p) for p in tmp_path.glob("*.bin")} == {sha256_file(src)}
    assert origin.gets_arrived["/slow.bin"] == 1
    deadline = time.monotonic() + 30  # the origin counts a body after its last pacing sleep:
    while origin.served("/slow.bin") < 4 * MiB and time.monotonic() < deadline:
        time.sleep(0.5)  # let it land here, not in the next test's counters
    assert origin.served("/slow.bin") == 4 * MiB


def test_later_request_is_served_from_caches(ray_cluster, origin, origin_root, tmp_path):
    make_file(origin_root / "again.bin", 6 * MiB, seed=2)
    url = origin.url + "again.bin"
    first = rayfly.distribute(url, str(tmp_path / "a" / "{node_id}"))
    second = rayfly.distribute(url + "?X-Amz-Signature=other", str(tmp_path / "b" / "{node_id}"))
    assert first.ok and second.ok
    assert first.task_ids == second.task_ids
    assert origin.served("/again.bin") == 6 * MiB, origin.log
    assert second.origin_bytes == 0


def test_concurrent_requests_share_one_task(ray_cluster, origin, origin_root, tmp_path):
    src = make_file(origin_root / "twice.bin", 48 * MiB, seed=3)
    reports: list[rayfly.Report] = []

    def run(sub: str) -> None:
        reports.append(
            rayfly.distribute(
                origin.url + "twice.bin", str(tmp_path / sub / "{node_id}.bin"), piece_size=4 * MiB
            )
        )

    threads = [threading.Thread(target=run, args=(s,)) for s in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(reports) == 2 and all(r.ok for r in reports)
    assert reports[0].task_ids == reports[1].task_ids
    assert origin.bytes_served == src.stat().st_size
    for sub in ("x", "y"):
        assert {sha256_file(p) for p in (tmp_path / sub).iterdir()} == {sha256_file(src)}


def test_s3_prefix_with_several_files(ray_cluster, s3_options, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdir("rayfly-data")
    payload = {"part-0.parquet": 3 * MiB + 7, "part-1.parquet": 5 * MiB, "sub/part-2.parquet": 1}
    for name, size in payload.items():
        fs.pipe(f"rayfly-data/ds/{name}", bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    report = rayfly.distribute(
        "s3://rayfly-data/ds/", str(tmp_path / "{node_id}"), storage_options=s3_options
    )
    assert report.ok, str(report)
    assert report.source_bytes == sum(payload.values())
    assert report.origin_bytes == sum(payload.values())
    for node in report.nodes:
        root = Path(node.path)
        for name in payload:
            assert (root / name).read_bytes() == fs.cat(f"rayfly-data/ds/{name}")
    assert len({n.sha256 for n in report.nodes}) == 1


def test_killed_parent_does_not_fail_the_others(ray_cluster, origin, origin_root, tmp_path):
    src = make_file(origin_root / "kill.bin", 64 * MiB, seed=4)
    origin.rate = 24 * MiB  # each origin read is slow enough to kill mid-way
    holder: dict[str, rayfly.Report] = {}
    url = origin.url + "kill.bin"
    t = threading.Thread(
        target=lambda: holder.setdefault(
            "r",
            rayfly.distribute(
                url, str(tmp_path / "{node_id}.bin"), piece_size=4 * MiB, concurrency=4
            ),
        )
    )
    t.start()
    scheduler = placement.get_scheduler()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        tids = [
            r["task_id"]
            for r in ray.get(scheduler.status.remote())
            if r["url"].endswith("kill.bin")
        ]
        held = ray.get(scheduler.progress.remote(tids)) if tids else {}
        if held and max(held.values()) >= 8 * MiB:
            victim = max(held, key=held.get)
        time.sleep(0.05)
    assert victim is not None, "no peer held pieces in time"
    ray.kill(ray.get_actor(PEER_PREFIX + victim, namespace=NAMESPACE), no_restart=True)
    t.join(300)
    report = holder["r"]
    others = [n for n in report.nodes if n.node_id != victim]
    assert len(others) == CLUSTER_NODES - 1
    assert all(n.ok for n in others), str(report)
    assert {sha256_file(n.path) for n in others} == {sha256_file(src)}
    dead = next(n for n in report.nodes if n.node_id == victim)
    assert not dead.ok and dead.error


def test_a_replaced_peer_serves_its_node_again(ray_cluster, origin, origin_root, tmp_path):
    """W holds a handle to V's actor; V's actor is killed and a new one takes its node. W must
    fetch from the new actor, not take the whole node for dead and go back to the origin."""
    v, w = (n.node_id for n in placement.alive_nodes()[:2])
    make_file(origin_root / "before.bin", 8 * MiB, seed=5)
    for node in (v, w):  # W gets every piece of before.bin from V: W now caches V's handle
        r = rayfly.distribute(
            origin.url + "before.bin", str(tmp_path / "1-{node_id}"), nodes=[node]
        )
        assert r.ok, str(r)
    assert origin.served("/before.bin") == 8 * MiB, origin.log
    ray.kill(ray.get_actor(PEER_PREFIX + v, namespace=NAMESPACE), no_restart=True)
    src = make_file(origin_root / "after.bin", 8 * MiB, seed=6)
    for node in (v, w):
        r = rayfly.distribute(origin.url + "after.bin", str(tmp_path / "2-{node_id}"), nodes=[node])
        assert r.ok, str(r)
    assert r.nodes[0].bytes_from_peers == 8 * MiB, str(r)
    assert origin.served("/after.bin") == 8 * MiB, origin.log
    assert sha256_file(tmp_path / f"2-{w}") == sha256_file(src)


def test_the_timeline_file_names_where_each_piece_came_from(
    ray_cluster, origin, origin_root, tmp_path
):
    """``--timeline`` writes every piece every node fetched with the node it came from: each
    node's rows add up to its bytes from the origin and from peers, and every parent is another
    node of the run."""
    import json

    import pyarrow.csv
    from click.testing import CliRunner

    from rayfly.cli import main

    make_file(origin_root / "timeline.bin", 6 * MiB, seed=31)
    out = tmp_path / "pieces.csv"
    args = [origin.url + "timeline.bin", "--dest", str(tmp_path / "d" / "{node_id}.bin")]
    args += ["--piece-size", "1MiB", "--json", "--timeline", str(out)]
    before = time.time()
    result = CliRunner().invoke(main, ["distribute", *args], catch_exceptions=False)
    after = time.time()
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert len(nodes) == CLUSTER_NODES
    # the report's start lines it up with other clocks: within the call, the makespan after it
    assert before <= doc["started_at"] <= doc["started_at"] + doc["totals"]["makespan_s"] <= after
    nulls = pyarrow.csv.ConvertOptions(strings_can_be_null=True)
    rows = pyarrow.csv.read_csv(out, convert_options=nulls).to_pylist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "pieces.csv"]
    for node_id, n in nodes.items():
        mine = [r for r in rows if r["node_id"] == node_id]
        assert sum(r["nbytes"] for r in mine if r["from_origin"]) == n["bytes_from_origin"]
        assert sum(r["nbytes"] for r in mine if not r["from_origin"]) == n["bytes_from_peers"]
        assert all((r["parent"] is None) == r["from_origin"] for r in mine), mine
        assert {r["parent"] for r in mine if r["parent"]} <= set(nodes) - {node_id}
        by_source = {}  # --json sums the same rows up per parent
        for r in mine:
            by_source[r["parent"] or "origin"] = by_source.get(r["parent"] or "origin", 0) + 1
        assert {k: v["pieces"] for k, v in n["parents"].items()} == by_source
        assert sum(v["bytes"] for v in n["parents"].values()) == 6 * MiB
    assert sum(n["bytes_from_peers"] for n in nodes.values()) >= 6 * MiB  # peers did serve
