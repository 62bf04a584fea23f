"""What the origin-version check costs per ``distribute`` call: requests at the origin (by
method) and wall time, for a small file on a 2-node local cluster.

Run it once per tree to compare (the origin wrapper below works with any rayfly version):

    for tree in /work/main /work/wt-versions; do
        (cd "$tree" && PYTHONPATH="$tree" python bench/version_cost.py --calls 5)
    done

Call 1 fetches the file (cold); calls 2.. publish to a new destination each (cache hits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path


def counting(server: object) -> Counter[str]:
    """Count every request the origin answers, by method (HEAD, GET)."""
    seen: Counter[str] = Counter()
    base = server._httpd.RequestHandlerClass  # type: ignore[attr-defined]

    class Counted(base):  # type: ignore[misc, valid-type]
        def log_request(self, code: object = "-", size: object = "-") -> None:
            seen[self.command] += 1

    server._httpd.RequestHandlerClass = Counted  # type: ignore[attr-defined]
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rayfly-version-cost-"))
    os.environ["RAYFLY_CACHE_DIR"] = str(work / "cache")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    import rayfly
    from rayfly.cluster import start_local_cluster
    from rayfly.config import NAMESPACE
    from rayfly.demo_origin import OriginServer, make_file

    make_file(work / "origin" / "small.bin", args.size, seed=7)
    origin = OriginServer(work / "origin").start()
    seen = counting(origin)
    cluster = start_local_cluster(2, object_store_memory=200 << 20)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    rows = []
    for i in range(args.calls):
        before = Counter(seen)
        t0 = time.perf_counter()
        report = rayfly.distribute(origin.url + "small.bin", str(work / f"out{i}" / "{node_id}"))
        seconds = time.perf_counter() - t0
        assert report.ok, str(report)
        rows.append({"seconds": round(seconds, 3), **(seen - before)})
    warm = rows[1:]
    print(
        json.dumps(
            {
                "rayfly": str(Path(rayfly.__file__).parent.parent),
                "calls": rows,
                "cold_requests": {k: v for k, v in rows[0].items() if k != "seconds"},
                "warm_requests_median": {
                    m: statistics.median(r.get(m, 0) for r in warm) for m in ("HEAD", "GET")
                },
                "warm_seconds_median": round(statistics.median(r["seconds"] for r in warm), 3),
            },
            indent=1,
        )
    )
    ray.shutdown()
    cluster.shutdown()
    origin.stop()


if __name__ == "__main__":
    main()
