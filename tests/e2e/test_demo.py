"""The README's first command, `rayfly demo`, end to end in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import sha256_file


def test_demo_distributes_to_every_simulated_node(tmp_path):
    env = {**os.environ, "RAYFLY_CACHE_DIR": str(tmp_path / "cache"), "RAY_ADDRESS": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayfly.cli",
            "demo",
            "--local-nodes",
            "2",
            "--size",
            "8MiB",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert report["totals"]["nodes_ok"] == 2
    assert report["origin_server_bytes"] == 8 << 20
    source = sha256_file(tmp_path / "w" / "origin" / "sample.bin")
    copies = list((tmp_path / "w" / "nodes").glob("*/sample.bin"))
    assert len(copies) == 2 and {sha256_file(p) for p in copies} == {source}
