"""What operators of a shared cluster set: rate limits (per call and per node, read on the node),
a cache that cleans itself (TTL, periodic GC, dry runs), shown in `rayfly status`."""

from __future__ import annotations

import time

import pytest
import ray
from click.testing import CliRunner

import rayfly
from rayfly import status
from rayfly.actors import placement
from rayfly.cli import main
from rayfly.demo_origin import make_file
from tests.conftest import sha256_file
from tests.support.raynode import start_node

MiB = 1 << 20
pytestmark = pytest.mark.cluster


def test_limit_rate_paces_every_node(ray_cluster, origin, origin_root, tmp_path):
    src = make_file(origin_root / "paced.bin", 8 * MiB, seed=41)
    nodes = [n.node_id for n in placement.alive_nodes()[:2]]
    report = rayfly.distribute(
        origin.url + "paced.bin",
        str(tmp_path / "{node_id}.bin"),
        nodes=",".join(nodes),
        limit_rate="2MiB",
    )
    assert report.ok, report
    assert all(sha256_file(tmp_path / f"{n}.bin") == sha256_file(src) for n in nodes)
    assert report.makespan_s >= 0.8 * 8 / 2  # 8 MiB at 2 MiB/s per node: 4 s at least


def test_bad_rate_is_a_clear_error(ray_cluster, tmp_path):
    args = ["distribute", "/etc/hostname", "--dest", str(tmp_path / "x"), "--limit-rate", "fast"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 2 and "invalid rate 'fast'" in out.output
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def limited_node(ray_cluster, tmp_path):
    env = {
        "RAYFLY_DOWNLOAD_RATE": "2MiB",
        "RAYFLY_CACHE_TTL": "4s",
        "RAYFLY_GC_INTERVAL": "1s",
    }
    node = start_node(ray_cluster.address, tmp_path / "logs", env=env)
    yield node
    node.kill()
    node.wait_dead()


def test_node_settings_are_read_on_the_node(limited_node, origin, origin_root, tmp_path):
    """The node's own environment sets its download rate and cache TTL (the client's does not):
    the transfer is paced, `rayfly status` shows the values in force, and the unused entry is
    collected by the periodic GC and forgotten by the scheduler."""
    src = make_file(origin_root / "node-limited.bin", 6 * MiB, seed=42)
    nid = limited_node.node_id
    report = rayfly.distribute(
        origin.url + "node-limited.bin", str(tmp_path / "out.bin"), nodes=nid
    )
    assert report.ok, report
    assert sha256_file(tmp_path / "out.bin") == sha256_file(src)
    assert report.makespan_s >= 0.8 * 6 / 2
    text = status.format_status(status.cluster_status())
    line = next(ln for i, ln in enumerate(text.splitlines()) if nid[:12] in ln and "cache" in ln)
    limits = text.splitlines()[text.splitlines().index(line) + 1]
    assert (
        "download 2.0MiB/s" in limits
        and "upload unlimited" in limits
        and "ttl 4s" in limits
        and "gc every 1s" in limits
    )
    tid = report.task_ids[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(r["task_id"] == tid for r in status.cache_ls(nid)):
        time.sleep(1)
    assert not any(r["task_id"] == tid for r in status.cache_ls(nid)), "TTL did not evict it"
    scheduler = placement.get_scheduler()
    assert nid not in ray.get(scheduler.progress.remote([tid]))
    assert (tmp_path / "out.bin").exists()  # the published copy stays


def test_cache_gc_dry_run_says_why(ray_cluster, origin, origin_root, tmp_path):
    make_file(origin_root / "dry.bin", 2 * MiB, seed=43)
    node = placement.alive_nodes()[0].node_id
    report = rayfly.distribute(origin.url + "dry.bin", str(tmp_path / "d.bin"), nodes=node)
    tid = report.task_ids[0]
    args = [
        "cache",
        "gc",
        "--dry-run",
        "--keep",
        "0",
        "--node",
        node,
        "--address",
        ray_cluster.address,
    ]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert (
        "would evict" in out.output and tid in out.output and "over the cache quota" in out.output
    )
    assert any(r["task_id"] == tid for r in status.cache_ls(node))


@pytest.fixture
def slow_uploader(ray_cluster, tmp_path):
    node = start_node(ray_cluster.address, tmp_path / "logs", env={"RAYFLY_UPLOAD_RATE": "2MiB"})
    yield node
    node.kill()
    node.wait_dead()


def test_eviction_while_serving(slow_uploader, origin, origin_root, tmp_path):
    """A parent whose entry is evicted while it serves it: the children finish from elsewhere
    (the origin, each other), every byte verified; a limited node still serves what it holds."""
    import threading

    src = make_file(origin_root / "evicted.bin", 16 * MiB, seed=44)
    url = origin.url + "evicted.bin"
    seed = slow_uploader.node_id
    first = rayfly.distribute(url, str(tmp_path / "seed.bin"), nodes=seed, piece_size=MiB)
    assert first.ok, first
    tid = first.task_ids[0]
    others = [n.node_id for n in placement.alive_nodes() if n.node_id != seed][:2]
    origin.reset()
    result: dict[str, object] = {}

    def run() -> None:
        result["report"] = rayfly.distribute(
            url, str(tmp_path / "{node_id}.bin"), nodes=",".join(others), piece_size=MiB
        )

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    scheduler = placement.get_scheduler()
    while time.monotonic() < deadline:  # until the children are fetching from the seed
        if any(ray.get(scheduler.progress.remote([tid])).get(n, 0) for n in others):
            break
        time.sleep(0.2)
    assert status.cache_rm(tid, seed[:12]) == [seed]
    worker.join(120)
    report = result["report"]
    assert report.ok, report
    for n in others:
        assert sha256_file(tmp_path / f"{n}.bin") == sha256_file(src)
    assert origin.served("/evicted.bin") <= 16 * MiB  # what the seed did not serve, once
    seed_peer = placement.existing_peers()[seed]
    assert ray.get(seed_peer.info.remote())["pieces_served"] > 0  # it did serve, limited


@pytest.fixture
def h100_node(ray_cluster, tmp_path):
    env = {"RAYFLY_ORIGIN_RATE": "1MiB"}
    node = start_node(
        ray_cluster.address, tmp_path / "logs", env=env, labels={"accelerator-type": "H100"}
    )
    yield node
    node.kill()
    node.wait_dead()


def test_label_selector_and_origin_rate(h100_node, origin, origin_root, tmp_path):
    """`--nodes label:accelerator-type=H100` picks the labelled node only, and that node's own
    RAYFLY_ORIGIN_RATE caps what it reads from the origin (here: every byte)."""
    src = make_file(origin_root / "h100.bin", 4 * MiB, seed=45)
    args = ["distribute", origin.url + "h100.bin", "--dest", str(tmp_path / "{node_id}.bin")]
    t0 = time.monotonic()
    out = CliRunner().invoke(main, [*args, "--nodes", "label:accelerator-type=H100", "--json"])
    seconds = time.monotonic() - t0
    assert out.exit_code == 0, out.output
    assert sorted(p.stem for p in tmp_path.glob("*.bin")) == [h100_node.node_id]
    assert sha256_file(tmp_path / f"{h100_node.node_id}.bin") == sha256_file(src)
    assert origin.served("/h100.bin") == 4 * MiB
    assert seconds >= 0.8 * 4 / 1  # 4 MiB from the origin at 1 MiB/s
