"""Bad input through the `rayfly distribute` command: a clear error, a non-zero exit, nothing
half-written at the destination."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rayfly.actors.placement import alive_nodes
from rayfly.cli import main
from rayfly.demo_origin import make_file
from tests.conftest import CLUSTER_NODES, sha256_file

MiB = 1 << 20
pytestmark = pytest.mark.cluster


def run(*args: str):
    return CliRunner().invoke(main, ["distribute", *args], catch_exceptions=False)


def tree(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


def test_missing_object_names_the_url(ray_cluster, origin, tmp_path):
    result = run(origin.url + "nope.bin", "--dest", str(tmp_path / "out" / "{node_id}"))
    assert result.exit_code == 2
    assert "not found" in result.output and origin.url + "nope.bin" in result.output
    assert tree(tmp_path / "out") == []


def test_missing_s3_key(ray_cluster, s3_options, tmp_path):
    opts = [
        f"--storage-option=endpoint_url={s3_options['endpoint_url']}",
        "--storage-option=key=testing",
        "--storage-option=secret=testing",
    ]
    result = run("s3://no-such-bucket/x.bin", "--dest", str(tmp_path / "o"), *opts)
    assert result.exit_code == 2 and "s3://no-such-bucket/x.bin" in result.output
    assert not (tmp_path / "o").exists()


def test_unreachable_origin(ray_cluster, tmp_path):
    result = run("http://127.0.0.1:1/file.bin", "--dest", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "cannot read http://127.0.0.1:1/file.bin" in result.output
    assert not (tmp_path / "o").exists()


def test_sha256_mismatch_publishes_nothing(ray_cluster, origin, origin_root, tmp_path):
    make_file(origin_root / "mismatch.bin", 5 * MiB, seed=11)
    result = run(
        origin.url + "mismatch.bin",
        "--dest",
        str(tmp_path / "{node_id}.bin"),
        "--sha256",
        "0" * 64,
        "--json",
    )
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["totals"]["nodes_failed"] == CLUSTER_NODES
    assert all("expected " + "0" * 64 in n["error"] for n in report["nodes"])
    assert tree(tmp_path) == []


def test_right_sha256_passes(ray_cluster, origin, origin_root, tmp_path):
    src = make_file(origin_root / "good.bin", 3 * MiB, seed=12)
    result = run(
        origin.url + "good.bin",
        "--dest",
        str(tmp_path / "{node_id}.bin"),
        "--sha256",
        sha256_file(src).upper(),
    )
    assert result.exit_code == 0, result.output
    assert len(tree(tmp_path)) == CLUSTER_NODES


def test_unwritable_destination_on_one_node(ray_cluster, origin, origin_root, tmp_path):
    src = make_file(origin_root / "onebad.bin", 4 * MiB, seed=13)
    bad = alive_nodes()[0].node_id
    (tmp_path / bad).write_text("a file where the node's directory should be")
    result = run(
        origin.url + "onebad.bin", "--dest", str(tmp_path / "{node_id}" / "f.bin"), "--json"
    )
    assert result.exit_code == 1
    nodes = {n["node_id"]: n for n in json.loads(result.output)["nodes"]}
    assert not nodes[bad]["ok"] and str(tmp_path / bad) in nodes[bad]["error"]
    good = [n for nid, n in nodes.items() if nid != bad]
    assert len(good) == CLUSTER_NODES - 1 and all(n["ok"] for n in good)
    assert {sha256_file(n["path"]) for n in good} == {sha256_file(src)}
    assert (tmp_path / bad).read_text().startswith("a file")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("endpoint_url", "expected key=value"),
        ("endpont_url=http://127.0.0.1:9", "endpont_url"),
    ],
)
def test_invalid_storage_option(ray_cluster, tmp_path, option, message):
    result = run("s3://bucket/key", "--dest", str(tmp_path / "o"), "--storage-option", option)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o").exists()


def test_unknown_node_id(ray_cluster, origin, origin_root, tmp_path):
    make_file(origin_root / "nodes.bin", 1024, seed=14)
    result = run(origin.url + "nodes.bin", "--dest", str(tmp_path / "o"), "--nodes", "deadbeef")
    assert result.exit_code == 2
    assert "'deadbeef' is not an alive node" in result.output
    assert not (tmp_path / "o").exists()


def test_subset_of_nodes(ray_cluster, origin, origin_root, tmp_path):
    make_file(origin_root / "subset.bin", 2 * MiB, seed=15)
    target = alive_nodes()[1].node_id
    result = run(
        origin.url + "subset.bin",
        "--dest",
        str(tmp_path / "{node_id}"),
        "--nodes",
        target[:10],
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [target]


def test_bad_template_and_sizes(ray_cluster, tmp_path):
    assert "unknown placeholder" in run("/etc/hostname", "--dest", "/tmp/{nodeid}").output
    assert run("/etc/hostname", "--dest", "/tmp/x", "--piece-size", "huge").exit_code == 2


def test_node_selectors_share_and_head(ray_cluster, origin, origin_root, tmp_path):
    """--nodes 50% --exclude-head: half of the workers, rounded up; the head gets nothing."""
    src = make_file(origin_root / "selected.bin", 1 * MiB, seed=14)
    dest = str(tmp_path / "{node_id}.bin")
    result = run(origin.url + "selected.bin", "--dest", dest, "--nodes", "50%", "--exclude-head")
    assert result.exit_code == 0, result.output
    head = next(n.node_id for n in alive_nodes() if n.is_head)
    workers = [n.node_id for n in alive_nodes() if not n.is_head]
    written = sorted(p.stem for p in tmp_path.glob("*.bin"))
    assert len(written) == -(-len(workers) // 2) and head not in written
    assert all(sha256_file(tmp_path / f"{n}.bin") == sha256_file(src) for n in written)


@pytest.mark.parametrize(
    ("selectors", "message"),
    [
        (["--nodes", "150%"], "at most 100%"),
        (["--nodes", "label:accelerator-type=H100"], "matches no alive node"),
        (["--nodes", "resource:GPU"], "matches no alive node"),
        (["--nodes", "2", "--nodes", "50%"], "one count or share"),
    ],
)
def test_bad_node_selectors(ray_cluster, tmp_path, selectors, message):
    result = run("/etc/hostname", "--dest", str(tmp_path / "x"), *selectors)
    assert result.exit_code == 2 and message in result.output
    assert tree(tmp_path) == []
