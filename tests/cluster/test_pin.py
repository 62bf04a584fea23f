"""`rayfly distribute --pin`: a node that joins the running cluster later gets the content."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import ray

from rayfly import pin, status
from rayfly.actors import placement
from rayfly.demo_origin import make_file
from tests.conftest import CLUSTER_NODES, sha256_file
from tests.support.cli import rayfly_cli

MiB = 1 << 20
pytestmark = pytest.mark.cluster


def cli(*args, timeout=180):
    env = {**os.environ, "RAY_ADDRESS": "", "RAYFLY_PIN_INTERVAL_S": "1"}
    return rayfly_cli(*args, env=env, timeout=timeout)


def wait_file(path: Path, want: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and sha256_file(path) == want:
            return True
        time.sleep(0.5)
    return False


def test_late_joining_node_gets_pinned_file(
    ray_cluster, origin, origin_root, tmp_path, monkeypatch
):
    src = make_file(origin_root / "pinned.bin", 5 * MiB, seed=31)
    want = sha256_file(src)
    dest = str(tmp_path / "{node_id}" / "pinned.bin")
    address = ray_cluster.address
    out = cli(
        "distribute", origin.url + "pinned.bin", "--dest", dest, "--pin", "--address", address
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "pinned as" in out.stderr
    assert len(list(tmp_path.iterdir())) == CLUSTER_NODES
    pins = [p for p in pin.list_pins() if p["source"].endswith("pinned.bin")]
    assert len(pins) == 1 and len(pins[0]["nodes_done"]) == CLUSTER_NODES
    pin_id = pins[0]["pin_id"]

    before = {n.node_id for n in placement.alive_nodes()}
    with monkeypatch.context() as env:  # the newcomer's raylet: a cache directory of its own
        env.setenv("RAYFLY_CACHE_DIR", str(tmp_path.parent / f"{tmp_path.name}-newcomer-cache"))
        node = ray_cluster.add_node(num_cpus=1, object_store_memory=200 * MiB)
    try:
        ray_cluster.wait_for_nodes()
        (new_id,) = {n.node_id for n in placement.alive_nodes()} - before
        assert wait_file(tmp_path / new_id / "pinned.bin", want, timeout=90), pin.list_pins()
        assert origin.bytes_served == src.stat().st_size  # the newcomer read from peers
        shown = next(p for p in status.cluster_status()["pins"] if p["pin_id"] == pin_id)
        assert new_id in shown["nodes_done"]

        out = cli("unpin", pin_id, "--address", address)
        assert out.returncode == 0, out.stderr
        assert pin_id in out.stdout
        assert not [p for p in pin.list_pins() if p["pin_id"] == pin_id]
    finally:
        ray_cluster.remove_node(node)
        placement.get_scheduler().peer_lost.remote(node.node_id)
        deadline = time.monotonic() + 60
        while len(placement.alive_nodes()) > CLUSTER_NODES and time.monotonic() < deadline:
            time.sleep(0.5)
    assert len(placement.alive_nodes()) == CLUSTER_NODES
    ray.get(placement.get_scheduler().ping.remote())


def test_unpin_of_unknown_pin_is_a_clear_error(ray_cluster):
    out = cli("unpin", "nosuchpin123", "--address", ray_cluster.address)
    assert out.returncode == 2
    assert "no pin matches 'nosuchpin123'" in out.stderr


def test_pin_refuses_a_subset_of_nodes(ray_cluster, origin, tmp_path):
    out = cli(
        "distribute",
        origin.url + "x.bin",
        "--dest",
        str(tmp_path / "x"),
        "--pin",
        "--nodes",
        "2",
        "--address",
        ray_cluster.address,
    )
    assert out.returncode == 2
    assert "--pin keeps content on every node" in out.stderr
