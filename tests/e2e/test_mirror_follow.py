"""Mirrors that follow the cluster: after `rayfly mirror start`, a node that joins gets a mirror
(a containerd pulls through it, each blob from the upstream once) and a mirror that died comes
back, until `rayfly mirror stop`."""

from __future__ import annotations

import time
from typing import Any

import pytest
import ray
from click.testing import CliRunner

from rayfly.actors import placement
from rayfly.cli import main
from rayfly.config import NAMESPACE
from rayfly.proxy.actor import mirror_status, proxy_name
from rayfly.proxy.keeper import get_keeper
from tests.support.raynode import node_with_tmpfs_cache, start_node
from tests.support.registry import build_image, push_image

MiB = 1 << 20
pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def healthy(node_id: str) -> dict | None:
    return next((r for r in mirror_status() if r["node_id"] == node_id and r["healthy"]), None)


def wait_for(what, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.5)
    return None


@pytest.fixture
def pull_through(front, registry, containerd_factory):
    """``pull(node_id, name, sizes, fallback=True)``: push a new image ``rayfly/<name>`` of
    layers of ``sizes`` and pull it with a containerd of its own through the mirror on
    ``node_id`` (once that mirror is up), the registry as its fallback unless ``fallback`` is
    False; asserts the pull got every blob, returns the image."""

    def pull(node_id: str, name: str, sizes: list[int], fallback: bool = True) -> Any:
        row = wait_for(lambda: healthy(node_id))
        assert row is not None, "no mirror on the joining node within 30 s"
        image = build_image(f"rayfly/{name}", "v1", sizes, seed=len(name))
        push_image(registry.url, image)
        ctd = containerd_factory(name)
        ctd.remove_all()
        ctd.use_mirror(front.host, row["url"], front.url, fallback)
        out = ctd.pull(f"{front.host}/{image.name}:v1")
        assert out.returncode == 0, out.stderr + out.stdout
        assert set(image.blob_digests) <= ctd.content_digests()
        return image

    return pull


@pytest.fixture
def kept(ray_cluster, front_server, monkeypatch):
    monkeypatch.setenv("RAYFLY_MIRROR_INTERVAL_S", "1")
    host = front_server.host
    args = ["mirror", "start", "--upstream", f"{host}={front_server.url}", "--insecure", host]
    out = CliRunner().invoke(main, [*args, "--default-upstream", host, "--port", "0"])
    assert out.exit_code == 0, out.output
    yield
    out = CliRunner().invoke(main, ["mirror", "stop"])
    assert out.exit_code == 0, out.output
    assert get_keeper() is None


def test_joining_node_gets_a_mirror_and_serves_a_pull(
    kept, ray_cluster, front, pull_through, tmp_path
):
    node = start_node(
        ray_cluster.address, tmp_path / "logs", env={"RAYFLY_CACHE_DIR": str(tmp_path / "c")}
    )
    try:
        image = pull_through(node.node_id, "follow", [3 * MiB, 70_000])
        for digest in image.blob_digests:
            assert front.state.bytes_by_digest[digest] == len(image.blobs[digest]), digest
    finally:
        node.kill()
        node.wait_dead()


def test_a_mirror_that_died_comes_back(kept, ray_cluster):
    victim = mirror_status()[0]["node_id"]
    ray.kill(ray.get_actor(proxy_name(victim), namespace=NAMESPACE))
    assert wait_for(lambda: healthy(victim)) is not None, "the mirror did not come back in 30 s"


def test_a_node_whose_cache_has_no_room_passes_the_layer_through(
    kept, ray_cluster, front, pull_through, tmp_path
):
    """A node whose cache disk is smaller than a layer: its mirror cannot keep the layer, so it
    passes it through from the registry, checked against its digest. containerd, told not to
    fall back to the registry, pulls the image with the right bytes, the layer crossing the
    registry's link once."""
    cache = tmp_path / "small-cache"
    with node_with_tmpfs_cache(ray_cluster.address, tmp_path / "logs", cache, "4m") as node:
        image = pull_through(node.node_id, "no-room", [8 * MiB, 60_000], fallback=False)
        status = healthy(node.node_id)
        shown = CliRunner().invoke(main, ["mirror", "status"]).output
    line = next((x for x in shown.splitlines() if x.startswith(node.node_id[:12])), "")
    assert "passed through 1 blob(s): the node's cache could not keep them" in line, shown
    big = image.layer_digests[0]
    assert front.state.blob_gets[big] == 1, front.state.blob_gets
    assert front.state.bytes_by_digest[big] == len(image.blobs[big]), front.state.bytes_by_digest
    assert status is not None, "the node's mirror did not answer its status"
    assert status["blobs_passed_through"] == 1 and status["errors"] == 0, status
    assert status["bytes_from_upstream"] >= len(image.blobs[big]), status


def test_a_node_without_room_passes_through_a_layer_from_the_nodes_that_hold_it(
    kept, ray_cluster, front, pull_through, tmp_path
):
    """The image was pulled through another node first: the node without room passes the
    layer through from that node's peer, and the registry sends it once in all."""
    holder = mirror_status()[0]["node_id"]
    sizes = [8 * MiB, 50_000]
    image = pull_through(holder, "held-elsewhere", sizes)
    cache = tmp_path / "small-cache"
    with node_with_tmpfs_cache(ray_cluster.address, tmp_path / "logs", cache, "4m") as node:
        pull_through(node.node_id, "held-elsewhere", sizes, fallback=False)
        status = healthy(node.node_id)
    big = image.layer_digests[0]
    # once in all: the first pull's pieces (ranged GETs); the second pull asked nothing of it
    assert front.state.bytes_by_digest[big] == len(image.blobs[big]), front.state.bytes_by_digest
    assert status is not None, "the node's mirror did not answer its status"
    assert status["blobs_passed_through"] == 1 and status["errors"] == 0, status
    assert status["bytes_from_upstream"] == 0, status
    assert status["bytes_from_peers"] >= len(image.blobs[big]), status


def test_a_pull_while_the_scheduler_restarts_waits_for_it(
    kept, ray_cluster, front, registry, containerd_factory
):
    """The scheduler is killed (Ray restarts it) just before a pull with no fallback: the
    mirror's calls to it are retried while it restarts, as the peers' are, and the pull gets
    every blob (before: the mirror answered the first blob with an error, the pull failed)."""
    row = wait_for(lambda: mirror_status())
    assert row, "no mirror"
    image = build_image("rayfly/restart", "v1", [3 * MiB, 20_000], seed=77)
    push_image(registry.url, image)
    ctd = containerd_factory("restart")
    ctd.remove_all()
    ctd.use_mirror(front.host, row[0]["url"], front.url, fallback=False)
    ray.kill(placement.get_scheduler(), no_restart=False)
    out = ctd.pull(f"{front.host}/{image.name}:v1")
    assert out.returncode == 0, out.stderr + out.stdout
    assert set(image.blob_digests) <= ctd.content_digests()
