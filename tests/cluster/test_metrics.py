"""rayfly metrics via ray.util.metrics, read back from Ray's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import urllib.error
import urllib.request

import pytest
import ray

import rayfly
from rayfly import metrics
from rayfly.demo_origin import make_file

MiB = 1 << 20
pytestmark = pytest.mark.cluster


def wait_for(name, want, tags=None, timeout=60.0):
    """Poll the endpoints until metric ``name`` reaches ``want``; return the last value."""
    deadline = time.monotonic() + timeout
    value = metrics.scrape(name, tags)
    while value < want and time.monotonic() < deadline:
        time.sleep(0.5)
        value = metrics.scrape(name, tags)
    return value


def settled(name, quiet_s=3.0, timeout=60.0):
    """Metric ``name`` once it stopped changing for ``quiet_s`` (earlier tests' counts flushed:
    Ray exports a process's metrics about once per second, conftest's report interval)."""
    deadline = time.monotonic() + timeout
    value, since = metrics.scrape(name), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.5)
        now = metrics.scrape(name)
        if now != value:
            value, since = now, time.monotonic()
    return value


def test_transfer_counters_read_back_from_prometheus(ray_cluster, origin, origin_root, tmp_path):
    size = 8 * MiB
    make_file(origin_root / "metered.bin", size, seed=11)
    before = {
        n: settled(n) for n in (metrics.ORIGIN_BYTES, metrics.PEER_BYTES, metrics.PIECES_SERVED)
    }
    report = rayfly.distribute(
        origin.url + "metered.bin", str(tmp_path / "{node_id}.bin"), piece_size=MiB
    )
    assert report.ok, str(report)
    peer_bytes = sum(n.bytes_from_peers for n in report.nodes)
    # each byte once from the origin, unless a piece had to be read again on a busy machine
    assert report.origin_bytes >= size and peer_bytes >= 3 * size - report.origin_bytes

    got_origin = wait_for(metrics.ORIGIN_BYTES, before[metrics.ORIGIN_BYTES] + report.origin_bytes)
    got_peers = wait_for(metrics.PEER_BYTES, before[metrics.PEER_BYTES] + peer_bytes)
    pieces_from_peers = peer_bytes // MiB
    got_served = wait_for(metrics.PIECES_SERVED, before[metrics.PIECES_SERVED] + pieces_from_peers)
    assert got_origin - before[metrics.ORIGIN_BYTES] == report.origin_bytes
    assert got_peers - before[metrics.PEER_BYTES] == peer_bytes
    assert got_served - before[metrics.PIECES_SERVED] >= pieces_from_peers
    for node in report.nodes:
        cached = wait_for(metrics.CACHE_BYTES, size, {"node_id": node.node_id})
        assert cached >= size, node.node_id
    time.sleep(3)  # a gauge stays exported, not only right after it was set
    for node in report.nodes:
        assert metrics.scrape(metrics.CACHE_BYTES, {"node_id": node.node_id}) >= size


def test_mirror_requests_by_status(ray_cluster):
    from aiohttp import web

    async def ok(_request):
        return web.Response(text="ok")

    node = "metrics-test-node"
    loop = asyncio.new_event_loop()
    app = web.Application(middlewares=[metrics.mirror_middleware(node)])
    app.router.add_get("/v2/", ok)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        for path, code in (("/v2/", 200), ("/v2/", 200), ("/v2/missing", 404)):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    assert r.status == code
            except urllib.error.HTTPError as exc:
                assert exc.code == code
        assert wait_for(metrics.MIRROR_REQUESTS, 2, {"node_id": node, "status": "200"}) == 2
        assert wait_for(metrics.MIRROR_REQUESTS, 1, {"node_id": node, "status": "404"}) == 1
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.mark.parametrize(
    ("reason", "dead", "want"),
    [
        ("parent died: actor gone", False, "parent_died"),
        ("x", True, "parent_died"),
        ("timed out", False, "timeout"),
        ("PieceCorrupt: digest mismatch", False, "corrupt"),
        ("RayTaskError: PieceUnavailable", False, "unavailable"),
        ("something else", False, "other"),
    ],
)
def test_failure_reasons_fold_into_few_labels(reason, dead, want):
    assert metrics.failure_reason(reason, dead) == want


def test_prometheus_text_parsing():
    text = (
        "# HELP ray_rayfly_peer_bytes_total x\n"
        'ray_rayfly_peer_bytes_total{Component="core_worker",node_id="a,b"} 42.0\n'
        'ray_rayfly_peer_bytes_total_other{node_id="a"} 1.0\n'
        "ray_rayfly_cache_bytes 7\n"
    )
    assert metrics.parse_prometheus(text, "ray_rayfly_peer_bytes_total") == [
        ({"Component": "core_worker", "node_id": "a,b"}, 42.0)
    ]
    assert metrics.parse_prometheus(text, "ray_rayfly_cache_bytes") == [({}, 7.0)]


def test_a_corrupt_piece_is_refetched_and_counted_by_reason(
    ray_cluster, origin, origin_root, tmp_path
):
    """V's cached copy rots on disk. V checks what it serves, refuses the bad piece and evicts
    its copy; W gets the piece from the origin instead, W's file is right, and the failure shows
    on the endpoint as rayfly_piece_failures{reason="corrupt"}."""
    from rayfly.actors import placement
    from tests.conftest import cache_file, sha256_file

    v, w = (n.node_id for n in placement.alive_nodes()[2:4])
    src = make_file(origin_root / "rot.bin", 8 * MiB, seed=13)
    first = rayfly.distribute(origin.url + "rot.bin", str(tmp_path / "v.bin"), nodes=[v])
    assert first.ok, str(first)
    data = cache_file(v, first.task_ids[0])
    os.chmod(data, 0o644)  # the cache file is read-only: damage it anyway
    with open(data, "r+b") as fh:
        fh.write(b"\xff" * 64)
    tags = {"node_id": w, "reason": "corrupt"}
    settled(metrics.PIECE_FAILURES)  # earlier tests' failures have reached the endpoint
    before = metrics.scrape(metrics.PIECE_FAILURES, tags)
    second = rayfly.distribute(origin.url + "rot.bin", str(tmp_path / "w.bin"), nodes=[w])
    assert second.ok, str(second)
    assert sha256_file(tmp_path / "w.bin") == sha256_file(src)
    assert second.nodes[0].bytes_from_origin >= MiB, str(second)  # the rotten piece, again
    assert wait_for(metrics.PIECE_FAILURES, before + 1, tags) >= before + 1
    peer = placement.get_or_create_peer(next(n for n in placement.alive_nodes() if n.node_id == v))
    assert not ray.get(peer.has_task.remote(first.task_ids[0]))  # V evicted the rotten copy
