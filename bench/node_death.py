"""Issue 8's figure: how long the survivors take to finish when a node dies mid-transfer, against
the same run where it does not.

    python -m bench.node_death --nodes 4 --size 256MiB --rate 8MiB --kill-at 0.3 --runs 3

A local cluster of ``--nodes`` simulated nodes plus, per run, one extra worker node started with
``ray start`` in its own process group (``tests/support/raynode.py``). Runs alternate: *baseline*
(all nodes finish) and *kill* (the extra node's process group is SIGKILLed once the nodes hold
``--kill-at`` of all their copies). The figure is the time until the last of the
cluster's own nodes (the survivors) has the file, as each peer measures it. The origin is
rayfly's HTTP origin on loopback, each response slowed to ``--rate`` so that the run is shaped
by the network, not by this machine's CPU. Every run is a new task (a fresh tag). Prints a
JSON document (also appended to bench/results/node_death.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import ray

import rayfly
from bench.core import settle
from rayfly.actors import placement
from rayfly.cluster import start_local_cluster
from rayfly.config import NAMESPACE, parse_size
from rayfly.demo_origin import OriginServer, make_file
from tests.support.raynode import start_node

RESULTS = Path(__file__).parent / "results" / "node_death.jsonl"


def held(task_id: str) -> int:
    """Bytes of ``task_id`` the scheduler knows the nodes hold, summed (0 while it restarts)."""
    try:
        return sum(ray.get(placement.get_scheduler().progress.remote([task_id])).values())
    except ray.exceptions.RayError:
        return 0


def add_node(address: str, work: Path) -> Any:
    """An extra worker node with its peer actor started (as on a cluster already in use)."""
    extra = start_node(address, work / "logs")
    node = next(n for n in placement.alive_nodes() if n.node_id == extra.node_id)
    ray.get(placement.get_or_create_peer(node).info.remote(), timeout=120)
    return extra


def one_run(
    origin: OriginServer, size: int, work: Path, address: str, kill_at: float | None
) -> dict:
    """One distribution to every node (the cluster's and one extra); kill the extra one when
    the nodes hold ``kill_at`` of all their copies (None: never)."""
    extra = add_node(address, work)
    url = origin.url + "big.bin"
    origin.reset()
    everywhere = size * len(placement.alive_nodes())
    tag = uuid.uuid4().hex
    task_id = rayfly.api.plan(url, {}, tag, None, None, placement.get_scheduler())[0].task.task_id
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    job = threading.Thread(
        target=lambda: out.setdefault(
            "r", rayfly.distribute(url, str(work / "dest" / "{node_id}.bin"), tag=tag)
        )
    )
    job.start()
    t_kill = None
    while kill_at is not None and job.is_alive() and held(task_id) < kill_at * everywhere:
        time.sleep(0.02)
    if kill_at is not None:
        extra.kill()
        t_kill = time.perf_counter() - t0
    job.join(600)
    seconds = time.perf_counter() - t0
    report: rayfly.Report = out["r"]
    survivors = [n for n in report.nodes if n.node_id != extra.node_id]
    if not all(n.ok for n in survivors):
        raise RuntimeError(str(report))
    extra.kill()
    extra.wait_dead()
    settle(work / "dest", report)
    return {
        "killed": kill_at is not None,
        "seconds": round(seconds, 2),
        "survivors_s": round(max(n.seconds for n in survivors), 2),
        "killed_at_s": None if t_kill is None else round(t_kill, 2),
        "after_kill_s": None if t_kill is None else round(seconds - t_kill, 2),
        "origin_bytes": report.origin_bytes,
        "origin_server_bytes": origin.bytes_served,
        "dead_node_error": next((n.error for n in report.nodes if n.node_id == extra.node_id), ""),
    }


def main() -> None:
    """Parse arguments, run the alternating baseline/kill runs, print and record the medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--rate", default="8MiB", help="origin bytes/s per response")
    ap.add_argument("--kill-at", type=float, default=0.3)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("RAY_health_check_period_ms", "1000")
    os.environ.setdefault("RAY_health_check_failure_threshold", "5")
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="rayfly-node-death-"))
    os.environ["RAYFLY_CACHE_DIR"] = str(work / "cache")
    make_file(work / "origin" / "big.bin", size)
    origin = OriginServer(work / "origin", rate=parse_size(args.rate)).start()
    cluster = start_local_cluster(args.nodes, object_store_memory=400 << 20)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    runs = []
    try:
        for _ in range(args.runs):
            for kill_at in (None, args.kill_at):
                runs.append(one_run(origin, size, work, cluster.address, kill_at))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        origin.stop()
        shutil.rmtree(work, ignore_errors=True)  # the origin file and every node's cache
    base = statistics.median(r["survivors_s"] for r in runs if not r["killed"])
    kill = statistics.median(r["survivors_s"] for r in runs if r["killed"])
    doc = {
        "bench": "node_death",
        "nodes": args.nodes + 1,
        "size": size,
        "origin_rate": parse_size(args.rate),
        "kill_at": args.kill_at,
        "median_survivors_s_baseline": base,
        "median_survivors_s_with_death": kill,
        "ratio": round(kill / base, 2),
        "median_after_kill_s": statistics.median(r["after_kill_s"] for r in runs if r["killed"]),
        "runs": runs,
    }
    print(json.dumps(doc, indent=2))
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main()
