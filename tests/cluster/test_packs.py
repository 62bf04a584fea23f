"""Prefixes of many small files: packed into shared tasks, one origin GET per object, each file
published atomically with its own sha256, and a bad member failing alone."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import rayfly
from rayfly.cli import main
from rayfly.demo_s3 import CountingS3Server
from tests.conftest import CLUSTER_NODES

KiB, MiB = 1 << 10, 1 << 20
BUCKET = "packs"
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def s3() -> Iterator[CountingS3Server]:
    """A counting S3 origin on loopback (its own, so counts are this module's only)."""
    server = CountingS3Server().start()
    yield server
    server.stop()


@pytest.fixture
def fs(s3: CountingS3Server):
    import s3fs

    s3.reset()
    s3.before_get = None
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    fs.mkdirs(BUCKET, exist_ok=True)
    return fs


def put_dataset(fs, prefix: str, sizes: dict[str, int]) -> dict[str, str]:
    """Objects of random bytes under ``prefix``; the sha256 of each by relative path."""
    blobs = {rel: os.urandom(n) for rel, n in sizes.items()}
    fs.pipe({f"{BUCKET}/{prefix}/{rel}": data for rel, data in blobs.items()})
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in blobs.items()}


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (temporary files included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_small_files_travel_in_packs_one_get_per_object(ray_cluster, s3, fs, tmp_path):
    sizes = {f"d{i % 3}/f{i:03d}.bin": 1 + 997 * i % (40 * KiB) for i in range(60)}
    sizes["big.bin"] = 3 * MiB
    sizes["empty"] = 0
    want = put_dataset(fs, "mix", sizes)
    s3.reset()
    url, dest = f"s3://{BUCKET}/mix/", str(tmp_path / "{node_id}")
    report = rayfly.distribute(url, dest, storage_options=s3.options(), tag="packs")
    assert report.ok, str(report)
    assert any(t.startswith("pack-") for t in report.task_ids)
    assert len(report.task_ids) == 2  # one pack, and the large file alone
    for key in (f"{BUCKET}/mix/{rel}" for rel in sizes if sizes[rel]):
        assert s3.gets[key] == 1, key
    assert report.source_bytes == sum(sizes.values())
    assert len(report.nodes) == CLUSTER_NODES
    for node in report.nodes:
        assert tree(Path(node.path)) == want  # every file, right bytes, no temporary file left
        assert sorted(f.relpath for f in node.files) == sorted(sizes)
        assert {f.relpath: f.sha256 for f in node.files} == want
        assert all(f.ok and Path(f.path).is_file() for f in node.files)
    s3.reset()
    dest = str(tmp_path / "again" / "{node_id}")
    again = rayfly.distribute(url, dest, storage_options=s3.options(), tag="packs")
    assert again.ok, str(again)
    assert s3.object_gets() == 0  # served from the caches
    assert all(f.cached for n in again.nodes for f in n.files)
    for node in again.nodes:
        assert tree(Path(node.path)) == want


@pytest.mark.parametrize("change", ["delete", "overwrite"])
def test_a_bad_member_fails_that_file_only(ray_cluster, s3, fs, tmp_path, change):
    prefix = f"bad-{change}"
    sizes = {f"f{i:02d}": 2 * KiB + i for i in range(20)}
    want = put_dataset(fs, prefix, sizes)
    bad = f"{prefix}/f07"
    done: list[str] = []
    lock = threading.Lock()

    def change_once(key: str) -> None:  # after the listing, before any object is served
        with lock:  # the other reads (in flight at once) wait for the change
            if not done:
                done.append(key)
                if change == "delete":
                    s3.delete_in_backend(BUCKET, bad)
                else:
                    s3.put_in_backend(BUCKET, [(bad, b"new content")])

    s3.before_get = change_once
    opts = [f"--storage-option={k}={v}" for k, v in s3.options().items() if k != "client_kwargs"]
    url, dest = f"s3://{BUCKET}/{prefix}/", str(tmp_path / "{node_id}")
    args = ["distribute", url, "--dest", dest, "--json", *opts]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    s3.before_get = None
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output[result.output.index("{") :])
    assert len(doc["nodes"]) == CLUSTER_NODES
    message = "not found at the origin" if change == "delete" else "changed at the origin"
    for node in doc["nodes"]:
        rows = {f["relpath"]: f for f in node["files"]}
        assert sorted(rows) == sorted(sizes), node
        assert not rows["f07"]["ok"] and message in rows["f07"]["error"], rows["f07"]
        assert f"s3://{BUCKET}/{prefix}/f07" in rows["f07"]["error"]
        good = {rel: sha for rel, sha in want.items() if rel != "f07"}
        assert {rel: r["sha256"] for rel, r in rows.items() if rel != "f07"} == good
        on_disk = tree(Path(node["path"]))
        assert on_disk == good, node  # the others published, nothing half-written
