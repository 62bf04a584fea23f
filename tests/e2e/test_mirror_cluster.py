"""The mirror on every node of the session's 4-node Ray cluster: blobs travel P2P.

Upstream is the real docker-registry behind the counting front; clients are real containerd
instances (``ctr images pull --hosts-dir``) and plain HTTP clients.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import ray
import requests

from rayfly.actors import placement
from rayfly.proxy.actor import mirror_status, start_mirrors, stop_mirrors
from rayfly.proxy.p2p import BLOB_PIECE_FLOOR
from rayfly.proxy.preheat import preheat
from rayfly.proxy.server import MirrorSettings
from rayfly.proxy.upstream import Upstream
from rayfly.task import default_piece_size
from tests.conftest import CLUSTER_NODES
from tests.support.mirror import concurrent_sha256s
from tests.support.registry import build_image, push_image

MiB = 1 << 20
pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


@pytest.fixture(scope="module")
def mirrors(ray_cluster, front_server):
    settings = MirrorSettings(
        {front_server.host: Upstream(front_server.host, front_server.url, insecure=True)},
        default_upstream=front_server.host,
    )
    endpoints = start_mirrors(settings, port=0)
    yield {e["node_id"]: e["url"] for e in endpoints}
    stop_mirrors()


def fresh_image(registry, name, seed, sizes):
    image = build_image(name, "v1", sizes, seed=seed)
    push_image(registry.url, image)
    return image


def blob_url(base, image, digest):
    return f"{base}/v2/{image.name}/blobs/{digest}"


def assert_once(front, image):
    for digest in image.blob_digests:
        assert front.state.bytes_by_digest[digest] == len(image.blobs[digest]), digest


def test_one_mirror_per_node_and_status(mirrors):
    assert len(mirrors) == CLUSTER_NODES
    assert len(set(mirrors.values())) == CLUSTER_NODES
    status = mirror_status()
    assert len(status) == CLUSTER_NODES
    assert all(s["healthy"] for s in status)
    for url in mirrors.values():
        assert requests.get(url + "/v2/", timeout=10).status_code == 200


def test_two_containerds_on_two_nodes_fetch_each_blob_once(
    mirrors, front, test_image, containerd_factory
):
    urls = list(mirrors.values())
    ref = f"{front.host}/{test_image.name}:v1"
    for name, url in (("node-a", urls[0]), ("node-b", urls[1])):
        ctd = containerd_factory(name)
        ctd.remove_all()
        ctd.use_mirror(front.host, url, front.url)
        out = ctd.pull(ref)
        assert out.returncode == 0, out.stderr + out.stdout
        assert set(test_image.blob_digests) <= ctd.content_digests()
    assert_once(front, test_image)
    assert front.state.blob_bytes == test_image.total_blob_bytes
    served = {s["node_id"]: s for s in mirror_status()}
    node_ids = list(mirrors)
    assert served[node_ids[1]]["bytes_from_peers"] > 0, "the second node got its bytes P2P"


def test_preheat_then_pulls_touch_no_upstream_blob(mirrors, front, registry, containerd_factory):
    image = fresh_image(registry, "rayfly/preheat", 11, [24 * MiB + 3, 2 * MiB, 5000])
    report = preheat(
        f"{front.host}/{image.name}:v1",
        upstreams={front.host: Upstream(front.host, front.url, insecure=True)},
    )
    assert report.ok, str(report)
    assert len(report.nodes) == CLUSTER_NODES
    assert report.source_bytes == image.total_blob_bytes
    assert_once(front, image)
    front.state.reset()
    for url in mirrors.values():
        for digest in image.blob_digests:
            body = requests.get(blob_url(url, image, digest), timeout=60).content
            assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    ctd = containerd_factory("node-c")
    ctd.use_mirror(front.host, list(mirrors.values())[2], front.url)
    out = ctd.pull(f"{front.host}/{image.name}:v1")
    assert out.returncode == 0, out.stderr + out.stdout
    assert sum(front.state.blob_gets.values()) == 0
    assert front.state.blob_bytes == 0


def test_preheat_index_chosen_platform(mirrors, front, multi_image):
    report = preheat(
        f"{front.host}/rayfly/multi:v1",
        platform="linux/arm64",
        nodes=2,
        upstreams={front.host: Upstream(front.host, front.url, insecure=True)},
    )
    assert report.ok and len(report.nodes) == 2
    arm, amd = multi_image["linux/arm64"], multi_image["linux/amd64"]
    assert report.source_bytes == arm.total_blob_bytes
    assert all(front.state.bytes_by_digest[d] == 0 for d in amd.layer_digests)


def test_twenty_clients_one_blob_upstream_once(mirrors, front, registry):
    image = fresh_image(registry, "rayfly/twenty", 21, [32 * MiB + 9])
    digest = image.layer_digests[0]
    url = blob_url(list(mirrors.values())[3], image, digest)
    assert concurrent_sha256s(url) == {digest.split(":")[1]}
    assert front.state.bytes_by_digest[digest] == len(image.blobs[digest])


def test_corrupt_upstream_in_p2p_nothing_cached(mirrors, front, registry):
    image = fresh_image(registry, "rayfly/corrupt", 31, [9 * MiB + 1])
    digest = image.layer_digests[0]
    front.state.corrupt.add(digest)
    url = blob_url(next(iter(mirrors.values())), image, digest)
    received = 0
    resp = requests.get(url, stream=True, timeout=60)
    try:
        for chunk in resp.iter_content(1 << 20):
            received += len(chunk)
    except requests.exceptions.RequestException:
        pass
    assert resp.status_code != 200 or received < len(image.blobs[digest])
    node = placement.alive_nodes()[0]
    peer = placement.get_or_create_peer(node)
    assert not ray.get(peer.has_task.remote(digest.replace(":", "-")))
    front.state.corrupt.clear()
    # A client retries; the first retry may still meet the failed download being wound up
    # on the peer (it is then cut short again, never served whole).
    for _ in range(5):
        try:
            body = requests.get(url, timeout=60).content
        except requests.exceptions.RequestException:
            time.sleep(0.5)
            continue
        if "sha256:" + hashlib.sha256(body).hexdigest() == digest:
            break
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest


def test_cold_blob_asks_upstream_one_head_and_reads_it_once(mirrors, front, registry):
    """A cold blob through a node's mirror: the mirror's HEAD is the only one upstream sees
    (the scheduler registers the blob from that HEAD's answer instead of asking again), and
    the bytes streamed to the client while pieces arrive are the whole blob."""
    image = fresh_image(registry, "rayfly/onehead", 51, [9 * MiB + 7])
    digest = image.layer_digests[0]
    resp = requests.get(blob_url(next(iter(mirrors.values())), image, digest), timeout=60)
    assert resp.status_code == 200
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == digest
    assert front.state.blob_heads[digest] == 1
    assert front.state.bytes_by_digest[digest] == len(image.blobs[digest])


def test_a_blob_another_node_holds_is_served_without_asking_upstream(mirrors, front, registry):
    """Once one node's mirror has a blob, another node's mirror serves HEAD and GET of it from
    the cluster with no request upstream at all (no HEAD, no token): faster, and a registry
    that is down does not stop what the cluster already holds."""
    image = fresh_image(registry, "rayfly/heldelsewhere", 71, [7 * MiB + 11])
    digest = image.layer_digests[0]
    bases = list(mirrors.values())
    first = requests.get(blob_url(bases[0], image, digest), timeout=60)
    assert "sha256:" + hashlib.sha256(first.content).hexdigest() == digest
    seen = front.state.requests
    head = requests.head(blob_url(bases[2], image, digest), timeout=60)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(first.content))
    resp = requests.get(blob_url(bases[2], image, digest), timeout=60)
    assert resp.status_code == 200
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == digest
    assert front.state.requests == seen  # nothing upstream for the second node
    assert front.state.blob_heads[digest] == 1
    assert front.state.bytes_by_digest[digest] == len(image.blobs[digest])


def test_a_blob_is_cut_into_pieces_no_smaller_than_the_blob_floor(mirrors, front, registry):
    """A blob of 24 MiB (and its tar headers) is cut into 8 MiB pieces, where a file of its
    size gets 4 MiB ones: each piece the mirror streams costs it a call and a read, so blobs
    get fewer, larger pieces."""
    image = fresh_image(registry, "rayfly/blobfloor", 77, [24 * MiB])
    digest = image.layer_digests[0]
    resp = requests.get(blob_url(list(mirrors.values())[1], image, digest), timeout=60)
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == digest
    scheduler = placement.get_scheduler()
    info = ray.get(scheduler.held.remote(digest.replace(":", "-")))
    assert info is not None and info.piece_size == BLOB_PIECE_FLOOR == 8 * MiB
    assert default_piece_size(info.length) == 4 * MiB


def test_registry_without_ranges_is_read_as_one_stream(mirrors, front, registry):
    """The HEAD announces no ``Accept-Ranges`` and GETs answer whole: the blob, registered
    from that HEAD, is read once front to back, not in ranged pieces that come back whole."""
    image = fresh_image(registry, "rayfly/noranges", 61, [13 * MiB + 3])
    digest = image.layer_digests[0]
    front.state.ignore_ranges = True
    resp = requests.get(blob_url(list(mirrors.values())[1], image, digest), timeout=60)
    assert resp.status_code == 200
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == digest
    assert front.state.blob_gets[digest] == 1
    assert front.state.bytes_by_digest[digest] == len(image.blobs[digest])


def test_mirror_heals_after_its_peer_dies(mirrors, front, registry):
    """The node's peer actor dies: the mirror on that node looks it up again (a new one is
    created) instead of failing every later request; the blob is still right and P2P."""
    from rayfly.config import NAMESPACE, PEER_PREFIX

    image = fresh_image(registry, "rayfly/heal", 41, [6 * MiB + 5])
    digest = image.layer_digests[0]
    node_ids = list(mirrors)
    first = requests.get(blob_url(mirrors[node_ids[0]], image, digest), timeout=60)
    assert "sha256:" + hashlib.sha256(first.content).hexdigest() == digest
    victim = node_ids[1]
    ray.kill(ray.get_actor(PEER_PREFIX + victim, namespace=NAMESPACE), no_restart=True)
    body = requests.get(blob_url(mirrors[victim], image, digest), timeout=60).content
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert front.state.bytes_by_digest[digest] == len(image.blobs[digest])  # once, from peers
    peer = ray.get_actor(PEER_PREFIX + victim, namespace=NAMESPACE)
    assert ray.get(peer.has_task.remote(digest.replace(":", "-")))


def test_range_and_head_from_p2p_cache(mirrors, front, test_image):
    digest = test_image.layer_digests[0]
    data = test_image.blobs[digest]
    url = blob_url(list(mirrors.values())[3], test_image, digest)
    lo, hi = 8 * MiB - 100, 16 * MiB + 50  # spans three pieces (8 MiB: BLOB_PIECE_FLOOR)
    resp = requests.get(url, headers={"Range": f"bytes={lo}-{hi}"}, timeout=60)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {lo}-{hi}/{len(data)}"
    assert resp.content == data[lo : hi + 1]
    tail = requests.get(url, headers={"Range": "bytes=-1000"}, timeout=60)
    assert tail.status_code == 206 and tail.content == data[-1000:]
    head = requests.head(url, timeout=60)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest


def test_range_of_a_blob_still_arriving_is_read_from_the_store_file(mirrors, front, registry):
    """A node's mirror streams a blob its peer is still fetching from another node: pieces the
    peer verified in its store's data file are read from that file, cut to the range asked
    for, across piece boundaries, and nothing of it is asked upstream again."""
    image = fresh_image(registry, "rayfly/rangearriving", 73, [21 * MiB + 7])
    digest = image.layer_digests[0]
    data = image.blobs[digest]
    bases = list(mirrors.values())
    requests.get(blob_url(bases[0], image, digest), timeout=60).raise_for_status()
    lo, hi = 3 * MiB + 5, 17 * MiB + 17  # starts in piece 0, ends in piece 2 (8 MiB pieces)
    resp = requests.get(
        blob_url(bases[1], image, digest), headers={"Range": f"bytes={lo}-{hi}"}, timeout=60
    )
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {lo}-{hi}/{len(data)}"
    assert resp.content == data[lo : hi + 1]
    whole = requests.get(blob_url(bases[3], image, digest), timeout=60)
    assert "sha256:" + hashlib.sha256(whole.content).hexdigest() == digest
    assert front.state.bytes_by_digest[digest] == len(data)


def test_ranges_across_the_split_tail_of_a_blob(mirrors, front, registry):
    """A blob of default pieces has its last 2 pieces' worth cut in halves
    (:class:`rayfly.task.Cut`): 33 MiB + 7 is 3 pieces of 8 MiB, then 4 MiB, 4 MiB and
    1 MiB + 7. Ranges that cross from the 8 MiB pieces into the smaller ones, or from one of
    those into the next, are cut right, on a mirror whose peer fetches the blob from another
    node and on one that reads its cache."""
    image = fresh_image(registry, "rayfly/splittail", 75, [33 * MiB + 7])
    digest = image.layer_digests[0]
    data = image.blobs[digest]
    bases = list(mirrors.values())
    whole = requests.get(blob_url(bases[0], image, digest), timeout=60)
    assert "sha256:" + hashlib.sha256(whole.content).hexdigest() == digest
    for base in (bases[2], bases[0]):
        for lo, hi in [(23 * MiB + 3, 25 * MiB + 100), (28 * MiB - 1, 28 * MiB), (32 * MiB, -1)]:
            hi = len(data) - 1 if hi < 0 else hi
            resp = requests.get(
                blob_url(base, image, digest), headers={"Range": f"bytes={lo}-{hi}"}, timeout=60
            )
            assert resp.status_code == 206 and resp.content == data[lo : hi + 1], (base, lo, hi)
    assert front.state.bytes_by_digest[digest] == len(data)


def test_cli_status_and_idempotent_start(mirrors, front_server):
    from click.testing import CliRunner

    from rayfly.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["mirror", "status", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert {r["url"] for r in rows} == set(mirrors.values())
    assert all(r["healthy"] for r in rows)
    args = [
        "mirror",
        "start",
        "--port",
        "0",
        "--json",
        "--insecure",
        front_server.host,
        "--upstream",
        f"{front_server.host}={front_server.url}",
    ]
    out = runner.invoke(main, args)
    assert out.exit_code == 0, out.output
    assert {e["url"] for e in json.loads(out.output)} == set(mirrors.values())


def test_token_protected_upstream_pull_and_preheat(mirrors, front, registry, containerd_factory):
    """Like Docker Hub: every request needs a Bearer token, even anonymous ones."""
    image = fresh_image(registry, "rayfly/tokened", 41, [5 * MiB + 3, 7000])
    front.state.require_token = True
    ctd = containerd_factory("node-d")
    ctd.use_mirror(front.host, list(mirrors.values())[1], front.url)
    out = ctd.pull(f"{front.host}/{image.name}:v1")
    assert out.returncode == 0, out.stderr + out.stdout
    assert_once(front, image)
    assert front.state.tokens, "the mirror ran the token flow"
    other = fresh_image(registry, "rayfly/tokened2", 42, [3 * MiB + 1])
    from click.testing import CliRunner

    from rayfly.cli import main

    result = CliRunner().invoke(
        main,
        [
            "mirror",
            "preheat",
            f"{front.host}/{other.name}:v1",
            "--insecure",
            front.host,
            "--upstream",
            f"{front.host}={front.url}",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["totals"]["nodes_ok"] == CLUSTER_NODES
    assert_once(front, other)
    shown = CliRunner().invoke(main, ["status", "--json"]).output
    shown += CliRunner().invoke(main, ["mirror", "status", "--json"]).output
    assert all(token not in shown for token in front.state.tokens), "a token was shown"


def test_mirror_requests_counted_by_status(mirrors):
    from rayfly import metrics

    node_id, url = sorted(mirrors.items())[0]

    def counts():
        return [
            metrics.scrape(metrics.MIRROR_REQUESTS, {"node_id": node_id, "status": s})
            for s in ("200", "403")
        ]

    before = counts()
    for _ in range(3):
        assert requests.get(url + "/v2/", timeout=10).status_code == 200
    denied = requests.get(url + "/v2/x/manifests/v1?ns=unconfigured.invalid", timeout=10)
    assert denied.status_code == 403
    deadline = time.monotonic() + 60
    after = counts()
    while (after[0] - before[0] < 3 or after[1] - before[1] < 1) and time.monotonic() < deadline:
        time.sleep(0.5)
        after = counts()
    assert after[0] - before[0] >= 3  # health probes of `mirror status` count too
    assert after[1] - before[1] == 1
