"""Node-local sources: a file that only one node can see reaches every node, read there once.

A worker in a private mount namespace plays another host: a tmpfs mounted afterwards on the
driver's side is invisible to it, and a tmpfs mounted inside its namespace is invisible to all
the others.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayfly.actors import placement
from rayfly.cli import main
from rayfly.config import SchedulerConfig, from_env
from rayfly.demo_origin import make_file
from tests.conftest import sha256_file
from tests.support.raynode import RayNode, mount_tmpfs, start_node

MiB = 1 << 20
pytestmark = pytest.mark.cluster


def run(*args: str):
    return CliRunner().invoke(main, ["distribute", *args], catch_exceptions=False)


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


@ray.remote(num_cpus=0)
def exists_there(path: str) -> bool:
    return os.path.exists(path)


def sees(node_id: str, path: Path) -> bool:
    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return ray.get(exists_there.options(scheduling_strategy=strategy).remote(str(path)))


@pytest.fixture(scope="module")
def hidden(ray_cluster, session_dir: Path) -> Iterator[RayNode]:
    """A worker node in its own mount namespace, removed (and seen dead) at teardown.

    The scheduler (a detached actor placed on any node) is made first, so that it does not
    land on this node and die with it."""
    ray.get(placement.get_scheduler(from_env(SchedulerConfig)).ping.remote())
    for attempt in range(3):  # `ray start` gives up after 30 s on a loaded machine
        try:
            node = start_node(ray_cluster.address, session_dir / "nodes", private_mounts=True)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    yield node
    node.retire()


@pytest.fixture
def driver_tmpfs(hidden: RayNode, tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted on the driver's side after the hidden node started: it cannot see it."""
    where = tmp_path / "driver-only"
    mount_tmpfs(where)
    yield where
    subprocess.run(["umount", str(where)], check=True)


def here() -> str:
    return ray.get_runtime_context().get_node_id()


def nodes_of(result) -> dict[str, dict]:
    assert result.exit_code == 0, result.output
    return {n["node_id"]: n for n in json.loads(result.output)["nodes"]}


def test_driver_local_file_reaches_a_node_that_cannot_see_it(hidden, driver_tmpfs, tmp_path):
    src = make_file(driver_tmpfs / "data.bin", 24 * MiB, seed=81)
    assert not sees(hidden.node_id, src) and sees(here(), src)
    out = tmp_path / "out"
    # the driver's node is no destination: it reads the file and seeds it, nobody else may
    result = run(
        str(src), "--dest", str(out / "{node_id}" / "data.bin"), "--nodes", hidden.node_id, "--json"
    )
    nodes = nodes_of(result)
    want = sha256_file(src)
    assert list(nodes) == [hidden.node_id] and nodes[hidden.node_id]["sha256"] == want
    assert sha256_file(out / hidden.node_id / "data.bin") == want
    assert nodes[hidden.node_id]["bytes_from_origin"] == 0
    assert nodes[hidden.node_id]["bytes_from_peers"] == src.stat().st_size
    (task_id,) = json.loads(result.output)["task_ids"]
    seed = placement.existing_peers()[here()]
    seeded = ray.get(seed.wait_complete.remote(task_id))  # read there, once, and only there
    assert seeded["sha256"] == want and seeded["bytes_from_origin"] == src.stat().st_size
    assert tree(out) == [out / hidden.node_id, out / hidden.node_id / "data.bin"]


def test_driver_local_directory_keeps_relative_paths(hidden, driver_tmpfs, tmp_path):
    root = driver_tmpfs / "ckpt"
    files = {
        "model.bin": make_file(root / "model.bin", 9 * MiB, seed=82),
        "sub/opt state.bin": make_file(root / "sub" / "opt state.bin", 5 * MiB, seed=83),
    }
    out = tmp_path / "out"
    result = run(
        f"file://{root}/", "--dest", str(out / "{node_id}"), "--nodes", hidden.node_id, "--json"
    )
    nodes = nodes_of(result)
    assert nodes[hidden.node_id]["bytes_from_peers"] == 14 * MiB
    for rel, src in files.items():
        assert sha256_file(out / hidden.node_id / rel) == sha256_file(src)


def test_file_only_on_one_worker_named_with_source_node(hidden, tmp_path):
    staged = make_file(tmp_path / "staged.bin", 12 * MiB, seed=84)
    where = tmp_path / "worker-only"
    mount_tmpfs(where, hidden.proc.pid)
    subprocess.run(
        ["nsenter", "-t", str(hidden.proc.pid), "-m", "cp", str(staged), str(where / "ckpt.bin")],
        check=True,
    )
    src = where / "ckpt.bin"
    assert sees(hidden.node_id, src) and not src.exists()
    other = next(n.node_id for n in placement.alive_nodes() if n.node_id != hidden.node_id)
    out = tmp_path / "out"
    result = run(
        str(src),
        "--dest",
        str(out / "{node_id}.bin"),
        "--source-node",
        hidden.node_id[:10],
        "--nodes",
        f"{other},{hidden.node_id}",
        "--json",
    )
    nodes = nodes_of(result)
    size = staged.stat().st_size
    assert nodes[hidden.node_id]["bytes_from_origin"] == size
    assert nodes[other]["bytes_from_origin"] == 0 and nodes[other]["bytes_from_peers"] == size
    for node_id in (other, hidden.node_id):
        assert sha256_file(out / f"{node_id}.bin") == sha256_file(staged)


def test_a_path_that_exists_nowhere_names_the_node_looked_on(hidden, driver_tmpfs, tmp_path):
    missing = run(str(tmp_path / "nope.bin"), "--dest", str(tmp_path / "o" / "{node_id}"))
    assert missing.exit_code == 2
    assert "not found" in missing.output and here() in missing.output
    src = make_file(driver_tmpfs / "only-here.bin", MiB, seed=85)
    elsewhere = run(
        str(src), "--dest", str(tmp_path / "o" / "{node_id}"), "--source-node", hidden.node_id[:12]
    )
    assert elsewhere.exit_code == 2
    assert f"looked on node {hidden.node_id}" in elsewhere.output
    assert tree(tmp_path / "o") == []


def test_source_node_naming_no_live_node(ray_cluster, tmp_path):
    src = make_file(tmp_path / "x.bin", MiB, seed=86)
    result = run(str(src), "--dest", str(tmp_path / "o" / "{node_id}"), "--source-node", "zz9")
    assert result.exit_code == 2
    assert "'zz9' is not an alive node" in result.output and here()[:12] in result.output
    assert tree(tmp_path / "o") == []


def test_an_empty_directory_is_refused(ray_cluster, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(str(tmp_path / "empty"), "--dest", str(tmp_path / "o" / "{node_id}"))
    assert result.exit_code == 2 and "empty directory" in result.output
    assert tree(tmp_path / "o") == []


def test_source_node_is_refused_for_remote_urls(ray_cluster, origin, tmp_path):
    result = run(origin.url + "x.bin", "--dest", str(tmp_path / "o"), "--source-node", here())
    assert result.exit_code == 2 and "local path" in result.output
    assert not (tmp_path / "o").exists()


def test_http_names_are_decoded(ray_cluster, origin, origin_root, tmp_path):
    src = make_file(origin_root / "my file.bin", 2 * MiB, seed=87)
    make_file(origin_root / "a" / "b.bin", MiB, seed=88)
    out = tmp_path / "out"
    result = run(origin.url + "my%20file.bin", "--dest", str(out) + "/{node_id}/")
    assert result.exit_code == 0, result.output
    for node in placement.alive_nodes():
        assert sha256_file(out / node.node_id / "my file.bin") == sha256_file(src)
    unsafe = run(origin.url + "a%2Fb.bin", "--dest", str(tmp_path / "u") + "/")
    assert unsafe.exit_code == 2 and "not a safe file name" in unsafe.output
    assert not (tmp_path / "u").exists()


def test_a_local_file_is_the_first_thing_a_fresh_cluster_does(tmp_path):
    """`rayfly distribute ./data.bin` on a fresh embedded cluster (no earlier import helps)."""
    src = make_file(tmp_path / "data.bin", 6 * MiB, seed=89)
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "RAY_ADDRESS": "",
        "RAYFLY_CACHE_DIR": str(tmp_path / "cache"),
    }
    (tmp_path / "home").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayfly.cli",
            "distribute",
            "./data.bin",
            "--dest",
            "out/{node_id}/data.bin",
            "--local-nodes",
            "2",
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    copies = sorted((tmp_path / "out").glob("*/data.bin"))
    assert len(copies) == 2
    assert all(sha256_file(c) == sha256_file(src) for c in copies)
    report = json.loads(proc.stdout)
    assert sum(n["bytes_from_origin"] for n in report["nodes"]) == src.stat().st_size
