"""Smoke run of the network testbed and the broadcast benchmark (bench/testbed, bench/broadcast).

N=3 emulated hosts in network namespaces, links shaped to 200 Mbit/s, a 4 MiB file, one run of
each method.  Needs root and permission to make network namespaces; skipped, with that reason,
only where ``ip netns add`` is refused.  Uses its own prefix and subnet (``rfs``, 10.213.1.0/24)
so that it never collides with a benchmark testbed (``rfy``) running on the same machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bench.broadcast import report
from tests.support.cli import run as run_command

REPO = Path(__file__).resolve().parents[2]
PREFIX, SUBNET = "rfs", "10.213.1"


def _netns_refused() -> str | None:
    if os.geteuid() != 0:
        return "the network testbed needs root (ip netns, tc)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    probe = f"{PREFIX}-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make network namespaces here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


REFUSED = _netns_refused()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REFUSED is not None, reason=REFUSED or "")]
WORKDIR = Path(f"/tmp/{PREFIX}-tb")  # the testbed's own (logs, Ray's files, caches), by prefix


@pytest.fixture(autouse=True, scope="module")
def _own_workdir():
    """The testbed keeps its work directory after teardown (for its logs); these tests remove
    theirs, before (a run killed midway) and after."""
    shutil.rmtree(WORKDIR, ignore_errors=True)
    yield
    shutil.rmtree(WORKDIR, ignore_errors=True)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return run_command(argv, env, timeout)


def _leftovers() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"{PREFIX}-")]


@pytest.mark.timeout(300)
def test_link_is_shaped_to_the_chosen_rate():
    proc = _run(
        [sys.executable, "-m", "bench.testbed", "check", "--hosts", "1", "--prefix", PREFIX,
         "--subnet", SUBNET, "--rate-mbit", "80", "--mib", "8"],
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.6 * 80 <= result["mbit_s"] <= 1.1 * 80, result
    assert _leftovers() == []


@pytest.mark.timeout(600)
def test_broadcast_end_to_end_on_three_hosts(tmp_path):
    out = tmp_path / "smoke.json"
    proc = _run(
        [sys.executable, "-m", "bench.broadcast", "--hosts", "3", "--size-mib", "4",
         "--rate-mbit", "200", "--runs", "1", "--prefix", PREFIX, "--subnet", SUBNET,
         "--out", str(out), "--run-timeout", "240", "--quiet-wait", "0"],
        timeout=560,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert _leftovers() == [], "the testbed was not torn down"
    assert (tmp_path / "smoke.png").is_file()
    by_method = {r["method"]: r for r in doc["runs"]}
    assert set(by_method) == {"rayfly", "plain", "ray", "chain"}
    size = 4 << 20
    for method, run in by_method.items():
        assert "error" not in run, (method, run.get("error"))
        assert len(run["hosts"]) == 3, method
        assert all(h["verified"] for h in run["hosts"]), method
    assert by_method["plain"]["origin"]["bytes_served"] == 3 * size
    assert by_method["ray"]["origin"]["bytes_served"] == size
    assert by_method["rayfly"]["origin"]["bytes_served"] == size
    assert by_method["chain"]["origin"]["bytes_served"] == size  # host 0 only; then host to host
    links = by_method["chain"]["links"]
    assert links["origin"]["tx_done_s"] > 0 and len(links["hosts"]) == 3
    assert all(0 < h["rx_share"] <= 1.2 for h in links["hosts"]), links
    # The scheduler's piece size (as rayfly status says): 4 MiB, or 1-2 MiB when the warm-up's
    # transfers measured a slow link (task.default_piece_size); the timeline agrees with it.
    piece = by_method["rayfly"]["extra"]["piece_size"]
    assert piece in (1 << 20, 2 << 20, 4 << 20), piece
    asks = by_method["rayfly"]["extra"]["asks"]  # every host was handed every piece
    assert asks["given"] >= 3 * (size // piece), asks
    assert asks["asked"] == sum(asks[k] for k in ("given", "busy", "origin", "none")), asks
    ips = {h["node_ip"] for h in by_method["rayfly"]["hosts"]}
    for h in by_method["rayfly"]["hosts"]:  # where each host's pieces came from (--timeline)
        got = h["by_parent"]
        assert sum(s["mib"] for s in got.values()) == 4.0 and set(got) <= {"origin"} | ips, h
        assert sum(s["pieces"] for s in got.values()) == size // piece, h
        assert h["node_ip"] not in got, h
        assert 0 < h["inflight_mean"] <= 8, h  # at most --concurrency at once
    # where the run lost link time (--phases; a run this short may end before a link sample)
    phases = report.phases(by_method["rayfly"])
    assert sum(phases["reads_mib"]) == 4, phases  # the origin read once, over the hosts
    assert phases["makespan_s"] == max(h["seconds"] for h in by_method["rayfly"]["hosts"])
    faults = by_method["rayfly"]["page_faults_by_process"]
    assert faults["ray::Peer"]["minor"] > 0, faults  # the peers' own, counted in the namespaces
