"""Small-file datasets (issue 9): N objects of K bytes under an S3 prefix to every node of a
local cluster, rayfly against every node running ``s3fs get`` itself, side by side.

    python -m bench.smallfiles --files 1000 --size 32KiB --nodes 4 --runs 3

The objects are made straight in moto's in-memory backend (``--upload backend``, ~10,000
objects/s) unless ``--upload http`` asks for PUTs through s3fs (~40-400 objects/s here).

The origin is moto's S3 server on loopback behind a request counter (:mod:`rayfly.demo_s3`),
so each run also reports the GETs per object that reached it. Methods alternate their order
per run; each rayfly run is a new task set (a fresh tag) and its cache entries are removed
after it. Prints one JSON document and appends it to ``bench/results/smallfiles.jsonl``. With
``--warm-up N``, N untimed runs of each method come first (a new cluster's first run also
starts its actors and workers); they are kept with negative run numbers, out of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
import s3fs
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import rayfly
from rayfly.actors import placement
from rayfly.cluster import start_local_cluster
from rayfly.config import NAMESPACE, parse_size
from rayfly.demo_s3 import CountingS3Server

RESULTS = Path(__file__).parent / "results" / "smallfiles.jsonl"
BUCKET = "bench"
UPLOAD_BATCH = 2000


def pinned(node_id: str) -> NodeAffinitySchedulingStrategy:
    """A hard affinity to one node."""
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@ray.remote(num_cpus=1, max_retries=0)
def s3fs_get(prefix: str, options: dict[str, Any], dest: str) -> int:
    """What a user does without rayfly: ``s3fs get -r`` of the prefix on this node."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.get(prefix, dest, recursive=True)
    return sum(len(files) for _, _, files in os.walk(dest))


@ray.remote(num_cpus=1, max_retries=0)
def warm_up() -> str:
    """Start (and so cache) a worker on a node; its node id."""
    return ray.get_runtime_context().get_node_id()


def object_key(prefix: str, i: int) -> str:
    """The key of object ``i``: 100 directories, so the dataset is a tree to list."""
    return f"{prefix}/d{i % 100:02d}/f{i:06d}"


def upload(server: CountingS3Server, prefix: str, files: int, size: int, how: str) -> float:
    """Put ``files`` objects of ``size`` bytes under ``prefix``; seconds it took. ``how``:
    "backend" creates them straight in moto's in-memory backend (this process's server),
    "http" PUTs them through s3fs in batches."""
    t0 = time.perf_counter()
    if how == "backend":
        objects = ((object_key(prefix, i), os.urandom(size)) for i in range(files))
        server.put_in_backend(BUCKET, objects)
        return time.perf_counter() - t0
    fs = s3fs.S3FileSystem(**server.options())
    fs.mkdir(BUCKET)
    for first in range(0, files, UPLOAD_BATCH):
        batch = range(first, min(files, first + UPLOAD_BATCH))
        fs.pipe({f"{BUCKET}/{object_key(prefix, i)}": os.urandom(size) for i in batch})
    return time.perf_counter() - t0


def plain(prefix: str, options: dict[str, Any], nodes: list[str], dest: Path) -> float:
    """Every node gets the prefix itself, in parallel; seconds."""
    url = f"{BUCKET}/{prefix}/"
    t0 = time.perf_counter()
    refs = [
        s3fs_get.options(scheduling_strategy=pinned(n)).remote(url, options, str(dest / n))
        for n in nodes
    ]
    ray.get(refs)
    return time.perf_counter() - t0


def with_rayfly(prefix: str, options: dict[str, Any], dest: Path) -> tuple[float, Any]:
    """``rayfly.distribute`` of the prefix to every node (a new task set); seconds, report."""
    t0 = time.perf_counter()
    report = rayfly.distribute(
        f"s3://{BUCKET}/{prefix}/",
        f"{dest}/{{node_id}}/",
        storage_options=options,
        tag=uuid.uuid4().hex,
    )
    seconds = time.perf_counter() - t0
    if not report.ok:
        raise RuntimeError(str(report)[:2000])
    return seconds, report


def settle(dest: Path, report: Any = None) -> None:
    """Remove a run's files and, for rayfly, its cache entries; write dirty pages back."""
    shutil.rmtree(dest, ignore_errors=True)
    if report is not None:
        peers = placement.existing_peers().values()
        ray.get([p.cache_remove.remote(t) for p in peers for t in report.task_ids])
    os.sync()


def since(t0: float, t: float | None) -> float | None:
    """Seconds from ``t0`` to ``t`` (None if ``t`` is)."""
    return None if t is None else round(t - t0, 1)


def one_run(method: str, args: argparse.Namespace, server: CountingS3Server, work: Path) -> dict:
    """One timed run of ``method``: makespan, per-file cost, origin GETs per object."""
    dest = work / f"dest-{method}"
    server.reset()
    report = None
    t0 = time.monotonic()
    if method == "plain":
        seconds = plain(args.prefix, server.options(), args.node_ids, dest)
    else:
        seconds, report = with_rayfly(args.prefix, server.options(), dest)
    row = {
        "method": method,
        "seconds": round(seconds, 2),
        "ms_per_file": round(1000 * seconds / args.files, 3),
        "gets_per_object": round(server.object_gets() / args.files, 3),
        "heads": sum(server.heads.values()),
        "lists": server.lists,
        "last_list_s": since(t0, server.last_list),
        "first_get_s": since(t0, server.first_get),
        "load": os.getloadavg()[0],
    }
    settle(dest, report)
    return row


def summary(rows: list[dict], methods: list[str]) -> dict[str, Any]:
    """Medians per method, and rayfly's ratio to plain."""
    out: dict[str, Any] = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        out[m] = {
            k: statistics.median(r[k] for r in mine)
            for k in ("seconds", "ms_per_file", "gets_per_object")
        }
    if len(methods) == 2:
        out["ratio_rayfly_to_plain"] = round(out["rayfly"]["seconds"] / out["plain"]["seconds"], 2)
    return out


def git_head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--size", default="32KiB")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--warm-up",
        type=int,
        default=0,
        help="untimed runs of each method first, kept with negative run numbers and left out "
        "of the medians: a new cluster's first run also starts its actors and workers",
    )
    p.add_argument("--methods", default="rayfly,plain")
    p.add_argument("--label", default="")
    p.add_argument(
        "--upload",
        choices=("backend", "http"),
        default="backend",
        help="make the objects in moto's backend directly (fast) or by HTTP PUTs through s3fs",
    )
    args = p.parse_args()
    methods = args.methods.split(",")
    size = parse_size(args.size)
    args.prefix = f"ds-{args.files}x{size}"
    work = Path(tempfile.mkdtemp(prefix="rayfly-smallfiles-"))
    os.environ["RAYFLY_CACHE_DIR"] = str(work / "cache")
    # this VM's disk is ~80% used as statvfs counts it (reserved blocks): at the default
    # watermarks every new task would evict complete ones, even before they are published
    os.environ.setdefault("RAYFLY_CACHE_HIGH_WATERMARK", "99%")
    os.environ.setdefault("RAYFLY_CACHE_LOW_WATERMARK", "98%")
    server = CountingS3Server().start()
    upload_s = upload(server, args.prefix, args.files, size, args.upload)
    print(f"{args.files} objects made ({args.upload}) in {upload_s:.1f} s", flush=True)
    cluster = start_local_cluster(args.nodes, object_store_memory=400 << 20)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    args.node_ids = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    ray.get([warm_up.options(scheduling_strategy=pinned(n)).remote() for n in args.node_ids])
    rows = []
    for run in range(-args.warm_up, args.runs):
        for method in methods if run % 2 == 0 else methods[::-1]:
            rows.append({"run": run, **one_run(method, args, server, work)})
            print(json.dumps(rows[-1]), flush=True)
    doc = {
        "bench": "smallfiles",
        "label": args.label,
        "commit": git_head(),
        "files": args.files,
        "size": size,
        "nodes": args.nodes,
        "upload": args.upload,
        "upload_seconds": round(upload_s, 1),
        "runs": rows,
        "median": summary([r for r in rows if r["run"] >= 0], methods),
    }
    print(json.dumps(doc["median"], indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(doc) + "\n")
    ray.shutdown()
    cluster.shutdown()
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
