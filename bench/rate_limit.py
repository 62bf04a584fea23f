"""How close a rate-limited distribution comes to the time its limit implies (issue 10).

    python -m bench.rate_limit --nodes 2 --size 32MiB --rates 4MiB,8MiB,16MiB --runs 3

Each run distributes a fresh file (a new task: nothing cached) from rayfly's HTTP origin on
loopback to every node with ``--limit-rate R``; the figure is makespan / (size / R). A limit is
a cap: the ratio is at least 1 minus the bucket's first second, and the machine's load only
adds to it. Prints a JSON document and appends it to bench/results/rate_limit.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray

import rayfly
from rayfly.cluster import start_local_cluster
from rayfly.config import NAMESPACE, parse_size
from rayfly.demo_origin import OriginServer, make_file

RESULTS = Path(__file__).parent / "results" / "rate_limit.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--size", default="32MiB")
    parser.add_argument("--rates", default="4MiB,8MiB,16MiB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size)
    rates = [(r, parse_size(r)) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rayfly-bench-rate-"))
    os.environ["RAYFLY_CACHE_DIR"] = str(work / "cache")
    cluster = start_local_cluster(args.nodes)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    origin = OriginServer(work / "origin").start()
    rows = []
    try:
        for run in range(args.runs):
            for label, rate in rates:  # alternate the rates within each round
                name = f"f-{run}-{label}.bin"
                make_file(work / "origin" / name, size, seed=run)
                t0 = time.perf_counter()
                report = rayfly.distribute(
                    origin.url + name, str(work / "out" / "{node_id}" / name), limit_rate=rate
                )
                seconds = time.perf_counter() - t0
                assert report.ok, str(report)
                implied = size / rate
                rows.append({"rate": label, "seconds": seconds, "ratio": seconds / implied})
    finally:
        origin.stop()
    summary = {
        label: {
            "implied_s": round(size / rate, 2),
            "median_ratio": round(
                statistics.median(r["ratio"] for r in rows if r["rate"] == label), 3
            ),
            "min_ratio": round(min(r["ratio"] for r in rows if r["rate"] == label), 3),
            "max_ratio": round(max(r["ratio"] for r in rows if r["rate"] == label), 3),
        }
        for label, rate in rates
    }
    doc = {
        "bench": "rate_limit",
        "nodes": args.nodes,
        "size": size,
        "runs": rows,
        "summary": summary,
        "loadavg": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(doc) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
