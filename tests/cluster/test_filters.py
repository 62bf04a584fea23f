"""Dataset filters on a real S3 prefix (moto's server): --include / --exclude / --max-files."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rayfly.actors import placement
from rayfly.cli import main

pytestmark = pytest.mark.cluster

FILES = {
    "config.json": b'{"layers": 2}',
    "model-00001.safetensors": b"a" * 70_000,
    "sub/model-00002.safetensors": b"b" * 50_000,
    "optimizer.pt": b"c" * 90_000,
    "README.md": b"# model",
}


@pytest.fixture(scope="module")
def prefix(ray_cluster, s3_options):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdir("rayfly-filters")
    for rel, body in FILES.items():
        fs.pipe(f"rayfly-filters/ckpt/{rel}", body)
    return "s3://rayfly-filters/ckpt/"


def run(s3_options, *args):
    opts = [f"--storage-option=endpoint_url={s3_options['endpoint_url']}"]
    opts += ["--storage-option=key=testing", "--storage-option=secret=testing"]
    opts += ["--storage-option=client_kwargs.region_name=us-west-2"]
    return CliRunner().invoke(main, ["distribute", *args, *opts], catch_exceptions=False)


def test_only_matching_files_arrive_in_their_relative_paths(prefix, s3_options, tmp_path):
    node = placement.alive_nodes()[0].node_id
    out = run(
        s3_options, prefix, "--dest", str(tmp_path / "ckpt"), "--nodes", node,
        "--include", "*.safetensors", "--include", "config.json", "--exclude", "sub/*", "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    got = sorted(str(p.relative_to(tmp_path / "ckpt")) for p in (tmp_path / "ckpt").rglob("*"))
    assert got == ["config.json", "model-00001.safetensors"]
    for rel in got:
        assert (tmp_path / "ckpt" / rel).read_bytes() == FILES[rel]
    report = json.loads(out.output)
    rows = [f["relpath"] for f in report["nodes"][0]["files"]]
    assert sorted(rows) == got and report["nodes"][0]["ok"]
    assert len(report["task_ids"]) == 1  # the two small files share one pack


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--include", ""], "--include '': give a pattern"),
        (["--max-files", "3"], "holds 5 file(s) to distribute, more than --max-files 3"),
        (["--include", "*.bin"], "none of the 5 file(s) under s3://rayfly-filters/ckpt/"),
    ],
)
def test_bad_filters_are_clear_errors(prefix, s3_options, tmp_path, args, message):
    out = run(s3_options, prefix, "--dest", str(tmp_path / "out"), *args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert not (tmp_path / "out").exists()
