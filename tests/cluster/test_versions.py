"""The origin's version is part of the task: never stale bytes, never a file mixing versions,
and origins that ignore Range are read once, as one stream."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

import rayfly
from rayfly import pin
from rayfly.actors import placement
from rayfly.config import NAMESPACE, PEER_PREFIX
from rayfly.demo_origin import make_file
from tests.conftest import CLUSTER_NODES, free_port, sha256_file
from tests.support.cli import rayfly_cli

MiB = 1 << 20
pytestmark = pytest.mark.cluster
CHANGED = "changed at the origin during the distribution; run it again to get the new version"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``rayfly ...`` in a subprocess."""
    return rayfly_cli(*args, timeout=300)


def copies(report: rayfly.Report) -> set[str]:
    """The sha256 of every node's published file (every node must have one)."""
    assert report.ok, str(report)
    assert len(report.nodes) == CLUSTER_NODES
    return {sha256_file(n.path) for n in report.nodes}


def replace_file(path: Path, size: int, seed: int) -> str:
    """Replace ``path`` atomically with new content, as a deploy would; its sha256."""
    make_file(path.with_name(path.name + ".new"), size, seed=seed)
    os.replace(path.with_name(path.name + ".new"), path)
    return sha256_file(path)


def cached_anywhere(task_id: str) -> list[str]:
    """Nodes whose piece store has an entry for ``task_id``."""
    nodes = []
    for node in placement.alive_nodes():
        peer = ray.get_actor(PEER_PREFIX + node.node_id, namespace=NAMESPACE)
        if any(e["task_id"] == task_id for e in ray.get(peer.cache_entries.remote())):
            nodes.append(node.node_id)
    return nodes


@pytest.mark.parametrize(("new_size", "seed"), [(8 * MiB, 42), (5 * MiB, 43)])
def test_a_replaced_file_is_distributed_anew(
    ray_cluster, origin, origin_root, tmp_path, new_size, seed
):
    src = make_file(origin_root / f"model-{seed}.bin", 8 * MiB, seed=seed - 10)
    url = origin.url + src.name
    first = rayfly.distribute(url, str(tmp_path / "a" / "{node_id}"))
    assert copies(first) == {sha256_file(src)}
    now = replace_file(src, new_size, seed)
    second = rayfly.distribute(url, str(tmp_path / "b" / "{node_id}"))
    assert copies(second) == {now}  # the origin's current bytes, not the cached ones
    assert second.task_ids != first.task_ids
    assert second.source_bytes == new_size
    assert origin.served("/" + src.name) == 8 * MiB + new_size
    assert not second.warnings


def test_an_object_changed_mid_transfer_fails_everywhere_and_leaves_nothing(
    ray_cluster, origin, origin_root, tmp_path
):
    src = make_file(origin_root / "swapped.bin", 16 * MiB, seed=44)
    origin.rate = 8 * MiB  # pieces take a while: reads are in flight when the file changes
    origin.swap_after("/swapped.bin", 3, os.urandom(16 * MiB))
    dest = tmp_path / "{node_id}" / "swapped.bin"
    args = ["--dest", str(dest), "--piece-size", "1MiB", "--address", ray_cluster.address]
    out = cli("distribute", origin.url + "swapped.bin", *args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.count(CHANGED) == CLUSTER_NODES, out.stdout
    assert f"0/{CLUSTER_NODES} nodes ok" in out.stdout
    assert not list(tmp_path.rglob("*")), "something was published"
    (task_id,) = {
        r["task_id"]
        for r in ray.get(placement.get_scheduler().status.remote())
        if r["url"].endswith("swapped.bin") and r["state"] == "failed"
    }
    assert cached_anywhere(task_id) == []
    origin.rate = None
    again = rayfly.distribute(origin.url + "swapped.bin", str(tmp_path / "{node_id}.bin"))
    assert copies(again) == {sha256_file(src)}  # the new version, whole


def test_an_overwritten_s3_object_is_distributed_anew(ray_cluster, s3_options, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdirs("rayfly-versions", exist_ok=True)
    fs.pipe("rayfly-versions/w.bin", b"1" * (3 * MiB))
    url = "s3://rayfly-versions/w.bin"
    first = rayfly.distribute(url, str(tmp_path / "a" / "{node_id}"), storage_options=s3_options)
    assert {Path(n.path).read_bytes() for n in first.nodes if n.ok} == {b"1" * (3 * MiB)}
    fs.pipe("rayfly-versions/w.bin", b"2" * (3 * MiB))  # same size, new ETag
    second = rayfly.distribute(url, str(tmp_path / "b" / "{node_id}"), storage_options=s3_options)
    assert second.ok, str(second)
    now = fs.cat("rayfly-versions/w.bin")
    assert {Path(n.path).read_bytes() for n in second.nodes} == {now}
    assert second.origin_bytes == 3 * MiB and second.task_ids != first.task_ids


def test_in_a_prefix_only_the_changed_file_is_fetched_again(ray_cluster, s3_options, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdirs("rayfly-versions", exist_ok=True)
    fs.pipe("rayfly-versions/ds/a.bin", b"a" * MiB)
    fs.pipe("rayfly-versions/ds/b.bin", b"b" * (2 * MiB))
    url = "s3://rayfly-versions/ds/"
    first = rayfly.distribute(url, str(tmp_path / "1" / "{node_id}"), storage_options=s3_options)
    assert first.ok and first.origin_bytes == 3 * MiB, str(first)
    fs.pipe("rayfly-versions/ds/b.bin", b"B" * (2 * MiB))
    second = rayfly.distribute(url, str(tmp_path / "2" / "{node_id}"), storage_options=s3_options)
    assert second.ok, str(second)
    assert second.origin_bytes == 2 * MiB  # a.bin unchanged: from the caches
    for node in second.nodes:
        assert (Path(node.path) / "a.bin").read_bytes() == fs.cat("rayfly-versions/ds/a.bin")
        assert (Path(node.path) / "b.bin").read_bytes() == fs.cat("rayfly-versions/ds/b.bin")


def test_no_validator_means_no_cache_reuse_unless_pinned(
    ray_cluster, origin, origin_root, tmp_path
):
    src = make_file(origin_root / "bare.bin", 2 * MiB, seed=45)
    origin.validators = False
    url = origin.url + "bare.bin"
    first = rayfly.distribute(url, str(tmp_path / "a" / "{node_id}"))
    assert copies(first) == {sha256_file(src)}
    assert any("gives no validator" in w for w in first.warnings)
    dest = str(tmp_path / "b" / "{node_id}")
    out = cli("distribute", url, "--dest", dest, "--address", ray_cluster.address)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rayfly: warning: the origin gives no validator" in out.stderr
    assert origin.served("/bare.bin") == 4 * MiB  # fetched again: nothing proves the cache current
    want = sha256_file(src)
    pinned = [rayfly.distribute(url, str(tmp_path / s / "{node_id}"), sha256=want) for s in "cd"]
    assert pinned[1].ok and pinned[1].origin_bytes == 0  # the content is pinned: reused


@pytest.fixture
def plain_http_server(tmp_path):
    """``python -m http.server`` on loopback: ignores Range, sends no Accept-Ranges."""
    root = tmp_path / "plain"
    root.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "plain.log", "w"),  # noqa: SIM115  (closed with the process)
    )
    deadline = time.monotonic() + 30
    while b"Serving" not in (tmp_path / "plain.log").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/", root, tmp_path / "plain.log"
    proc.terminate()
    proc.wait(10)


def test_an_origin_that_ignores_range_is_read_once_as_a_stream(
    ray_cluster, plain_http_server, tmp_path
):
    base, root, log = plain_http_server
    src = make_file(root / "norange.bin", 40 * MiB, seed=46)
    report = rayfly.distribute(
        base + "norange.bin", str(tmp_path / "{node_id}"), piece_size=4 * MiB
    )
    assert copies(report) == {sha256_file(src)}
    gets = re.findall(r'"GET /norange\.bin HTTP/1\.1" (\d+)', log.read_text())
    assert gets == ["200"], log.read_text()  # one GET, whole body: the origin sent it once
    assert report.origin_bytes == 40 * MiB
    assert sum(n.bytes_from_peers for n in report.nodes) == (CLUSTER_NODES - 1) * 40 * MiB


def test_a_pin_delivers_the_version_it_was_pinned_at(
    ray_cluster, origin, origin_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("RAYFLY_PIN_INTERVAL_S", "1")
    src = make_file(origin_root / "pinv.bin", 4 * MiB, seed=47)
    pinned_sha = sha256_file(src)
    dest = str(tmp_path / "{node_id}" / "pinv.bin")
    report = rayfly.distribute(origin.url + "pinv.bin", dest)
    assert copies(report) == {pinned_sha}
    row = pin.pin(origin.url + "pinv.bin", dest, [n.node_id for n in report.nodes])
    replace_file(src, 4 * MiB, seed=48)  # the origin moves on after the pin
    before = {n.node_id for n in placement.alive_nodes()}
    node = ray_cluster.add_node(num_cpus=1, object_store_memory=200 * MiB)
    try:
        ray_cluster.wait_for_nodes()
        (new_id,) = {n.node_id for n in placement.alive_nodes()} - before
        landed = tmp_path / new_id / "pinv.bin"
        deadline = time.monotonic() + 90
        while not landed.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert sha256_file(landed) == pinned_sha, pin.list_pins()
    finally:
        pin.unpin(row["pin_id"])
        ray_cluster.remove_node(node)
        placement.get_scheduler().peer_lost.remote(node.node_id)
        deadline = time.monotonic() + 60
        while len(placement.alive_nodes()) > CLUSTER_NODES and time.monotonic() < deadline:
            time.sleep(0.5)
