"""One timed broadcast, run inside the testbed's host 0: ``python -m bench.broadcast.driver``.

Methods (each writes the file to ``{dest_dir}/{node_id}/{name}`` on every node):

* ``plain``: a task pinned to every node downloads the file from the origin itself;
* ``ray``: the driver downloads the file once, ``ray.put``s it, and a task pinned to every node
  ``ray.get``s it (as its argument) and writes it: Ray's own broadcast;
* ``rayfly``: ``rayfly distribute URL --dest ... --json``;
* ``chain``: the floor. Host 0 downloads the file, and every host forwards each chunk over a
  plain TCP connection to the next host while it writes and hashes (sha256) it: a pipelined
  chain, the least work and the fewest bytes any broadcast that reads the origin once and
  verifies can do (every link carries S once each way, no control traffic, no object store).
  What it takes over S/B is what this machine's kernel and links cost.

Times are seconds from the driver's ``t0`` (taken after ``ray.init`` and a warm-up task on
every node, so worker start-up is not measured for any method).  Prints one JSON document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60
CHAIN_PORT = 47123
CHAIN_CONNECT_S = 60.0


def pinned(node_id: str) -> NodeAffinitySchedulingStrategy:
    """A hard affinity to one node."""
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@ray.remote(num_cpus=1, max_retries=0)
def warm_up() -> str:
    """Start (and so cache) a worker on the node; return its node id."""
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=1, max_retries=0)
def download(url: str, path: str, verify: bool = False) -> tuple[float, int]:
    """Stream ``url`` into ``path`` (computing its sha256 on the way with ``verify``, as a user
    who checks what arrived would); return (wall-clock end, bytes)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nbytes = 0
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp, open(path, "wb") as out:
        while chunk := resp.read(CHUNK):
            out.write(chunk)
            if verify:
                digest.update(chunk)
            nbytes += len(chunk)
    return time.time(), nbytes


@ray.remote(num_cpus=1, max_retries=0)
def write_array(data: np.ndarray, path: str) -> tuple[float, int]:
    """Write an array that arrived through the object store; return (wall-clock end, bytes)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(memoryview(data))
    return time.time(), int(data.nbytes)


def _connect(ip: str, port: int) -> socket.socket:
    """Connect to the previous host of the chain, retrying until it listens (bounded)."""
    deadline = time.monotonic() + CHAIN_CONNECT_S
    while True:
        try:
            return socket.create_connection((ip, port), timeout=HTTP_TIMEOUT_S)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@ray.remote(num_cpus=1, max_retries=0)
def chain_link(
    upstream: str, listen_ip: str | None, path: str, size: int
) -> tuple[float, int, str]:
    """One host of the chain: read ``size`` bytes from ``upstream`` (the origin's URL, or
    ``ip`` of the previous host), send each chunk on to the next host (when ``listen_ip``),
    write it and hash it; return (wall-clock end, bytes, sha256)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    server = None
    if listen_ip:
        server = socket.create_server((listen_ip, CHAIN_PORT))
        server.settimeout(CHAIN_CONNECT_S)
    if upstream.startswith("http"):
        source: Any = urllib.request.urlopen(upstream, timeout=HTTP_TIMEOUT_S)
        read = source.read
    else:
        source = _connect(upstream, CHAIN_PORT)
        read = source.recv
    down = server.accept()[0] if server else None
    digest, nbytes = hashlib.sha256(), 0
    with source, open(path, "wb") as out:
        while nbytes < size and (chunk := read(CHUNK)):
            if down is not None:
                down.sendall(chunk)
            out.write(chunk)
            digest.update(chunk)
            nbytes += len(chunk)
    for sock in (down, server):
        if sock is not None:
            sock.close()
    return time.time(), nbytes, digest.hexdigest()


def run_chain(url: str, nodes: list[dict], dest: Path, name: str) -> list[dict]:
    """Method ``chain``: per-node end times relative to the start of this call."""
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as resp:
        size = int(resp.headers["Content-Length"])
    t0 = time.time()
    refs = []
    for i, node in enumerate(nodes):
        upstream = url if i == 0 else nodes[i - 1]["NodeManagerAddress"]
        listen = node["NodeManagerAddress"] if i + 1 < len(nodes) else None
        path = str(dest / node["NodeID"] / name)
        options = {"scheduling_strategy": pinned(node["NodeID"])}
        refs.append(chain_link.options(**options).remote(upstream, listen, path, size))
    results = ray.get(refs, timeout=3600)
    return [
        host_row(node, dest / node["NodeID"] / name, end - t0, nbytes, sha256=digest)
        for node, (end, nbytes, digest) in zip(nodes, results, strict=True)
    ]


def host_row(node: dict, path: Path, seconds: float, nbytes: int, **extra: Any) -> dict:
    """One host's record of a method-run."""
    return {
        "node_id": node["NodeID"],
        "node_ip": node["NodeManagerAddress"],
        "path": str(path),
        "seconds": seconds,
        "bytes": nbytes,
        **extra,
    }


def fetch_into_array(url: str) -> np.ndarray:
    """Download ``url`` into one preallocated uint8 array (the driver's single origin read)."""
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as resp:
        size = int(resp.headers["Content-Length"])
        arr = np.empty(size, dtype=np.uint8)
        view, pos = memoryview(arr), 0
        while pos < size and (n := resp.readinto(view[pos : pos + CHUNK])):
            pos += n
    if pos != size:
        raise OSError(f"short read: {pos} of {size} bytes")
    return arr


def run_tasks(method: str, url: str, nodes: list[dict], dest: Path, name: str) -> list[dict]:
    """Methods ``plain``, ``plain_sha256`` (plain, hashing what arrives) and ``ray``; per-node
    end times relative to the start of this call."""
    t0 = time.time()
    refs = []
    extra: dict[str, float] = {}
    if method == "ray":
        data = ray.put(fetch_into_array(url))
        extra["driver_fetch_s"] = time.time() - t0
    for node in nodes:
        path = str(dest / node["NodeID"] / name)
        options = {"scheduling_strategy": pinned(node["NodeID"])}
        if method in ("plain", "plain_sha256"):
            refs.append(download.options(**options).remote(url, path, method == "plain_sha256"))
        else:
            refs.append(write_array.options(**options).remote(data, path))
    results = ray.get(refs, timeout=3600)
    return [
        host_row(node, dest / node["NodeID"] / name, end - t0, nbytes, **extra)
        for node, (end, nbytes) in zip(nodes, results, strict=True)
    ]


def run_rayfly(url: str, dest: Path, name: str, extra_args: list[str]) -> tuple[list[dict], Any]:
    """Method ``rayfly`` through its CLI; per-node seconds as the report gives them, and per
    node where its pieces came from (``by_parent``, from the report) and how many it had in
    flight (``inflight_mean``, from ``--timeline``)."""
    exe = shutil.which("rayfly") or str(Path(sys.executable).with_name("rayfly"))
    dest.mkdir(parents=True, exist_ok=True)
    timeline = dest / f"{name}.timeline.csv"
    cmd = [exe, "distribute", url, "--dest", str(dest / "{node_id}" / name), "--json"]
    cmd += ["--timeline", str(timeline)]
    if not Path(exe).exists():
        cmd = [sys.executable, "-m", "rayfly.cli", *cmd[1:]]
    t0 = time.time()
    proc = subprocess.run([*cmd, *extra_args], capture_output=True, text=True, timeout=3600)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"rayfly failed ({proc.returncode}): {proc.stderr[-4000:]}")
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    ips = {n["node_id"]: n.get("node_ip") or n["node_id"][:12] for n in report["nodes"]}
    pieces: dict[str, list[dict[str, Any]]] = {}
    for row in read_timeline(timeline):
        pieces.setdefault(row["node_id"], []).append(row)
    hosts = [
        {
            "node_id": n["node_id"],
            "node_ip": n.get("node_ip"),
            "path": n.get("path"),
            "seconds": n["seconds"],
            "tail_s": n.get("tail_s"),
            "piece_p50_s": n.get("piece_p50_s"),
            "piece_p90_s": n.get("piece_p90_s"),
            "bytes": n.get("bytes"),
            "ok": n.get("ok", True),
            "bytes_from_origin": n.get("bytes_from_origin"),
            "bytes_from_peers": n.get("bytes_from_peers"),
            "error": n.get("error"),
            "by_parent": by_parent(n.get("parents") or {}, ips),
            "inflight_mean": inflight_mean(pieces.get(n["node_id"], [])),
        }
        for n in report["nodes"]
    ]
    task = _task_status(cmd, report.get("task_ids", []))
    return hosts, {
        "cli_wall_s": wall,
        "totals": report.get("totals", {}),
        "started_at": report.get("started_at"),
        "piece_size": task.get("piece_size"),
        "asks": task.get("asks"),
    }


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """The rows ``rayfly distribute --timeline`` wrote (an empty parent is the origin)."""
    import pyarrow.csv

    nulls = pyarrow.csv.ConvertOptions(strings_can_be_null=True)
    return pyarrow.csv.read_csv(path, convert_options=nulls).to_pylist()


def by_parent(parents: dict[str, Any], ips: dict[str, str]) -> dict[str, Any]:
    """A node's ``parents`` from the report (per source: pieces, bytes, p50/p90 seconds) keyed
    by the parent's IP (or ``origin``), its bytes in MiB."""
    return {
        ips.get(source, source): {
            "pieces": got["pieces"],
            "mib": round(got["bytes"] / (1 << 20), 2),
            "p50_s": got["p50_s"],
            "p90_s": got["p90_s"],
        }
        for source, got in sorted(parents.items())
    }


def inflight_mean(mine: list[dict[str, Any]]) -> float | None:
    """How many pieces one node had in flight on average (``mine``: its timeline rows), from
    its first piece's start to its last piece's landing (the sum of the pieces' seconds over
    that span): near the concurrency, the slots were kept busy; below it, they waited."""
    if not mine:
        return None
    span = max(r["time_s"] for r in mine) - min(r["time_s"] - r["seconds"] for r in mine)
    return round(sum(r["seconds"] for r in mine) / span, 2) if span > 0 else None


def _task_status(cmd: list[str], task_ids: list[str]) -> dict[str, Any]:
    """The scheduler's row for the run's task (``rayfly status --json``): its piece size, and
    the pieces the peers asked for and were given; {} when status does not answer."""
    status = [*cmd[: cmd.index("distribute")], "status", "--json"]
    proc = subprocess.run(status, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not task_ids:
        return {}
    try:
        doc = json.loads(proc.stdout[proc.stdout.index("{") :])
        rows = [t for t in doc["tasks"] if t["task_id"] == task_ids[0]]
    except (ValueError, KeyError, TypeError):
        return {}
    return rows[0] if rows else {}


def origin_stats(base: str, reset: bool = False) -> dict:
    """The origin's byte counter (optionally reset first)."""
    req = urllib.request.Request(
        f"{base}/_rfy/{'reset' if reset else 'stats'}", method="POST" if reset else "GET"
    )
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
        return json.loads(resp.read())


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=["plain", "ray", "rayfly", "chain"], required=True)
    parser.add_argument("--origin", required=True, help="origin base URL")
    parser.add_argument("--name", required=True, help="file name at the origin")
    parser.add_argument("--dest-dir", required=True)
    parser.add_argument("--rayfly-arg", action="append", default=[])
    args = parser.parse_args()
    url, dest = f"{args.origin}/{args.name}", Path(args.dest_dir)
    ray.init(
        address=os.environ.get("RAY_ADDRESS", "auto"), logging_level="ERROR", log_to_driver=False
    )
    nodes = sorted((n for n in ray.nodes() if n["Alive"]), key=lambda n: n["NodeManagerAddress"])
    ray.get([warm_up.options(scheduling_strategy=pinned(n["NodeID"])).remote() for n in nodes])
    origin_stats(args.origin, reset=True)
    extra: Any = {}
    t_start = time.time()
    if args.method == "rayfly":
        ray.shutdown()
        hosts, extra = run_rayfly(url, dest, args.name, args.rayfly_arg)
        t_end = time.time()
        # the distribution's own start and end (the CLI starts Ray first and rayfly status
        # runs after it), so that the link counters line up with the report
        t_start = extra.get("started_at") or t_start
        t_end = t_start + extra["totals"].get("makespan_s", t_end - t_start)
    elif args.method == "chain":
        hosts = run_chain(url, nodes, dest, args.name)
        t_end = time.time()
    else:
        hosts = run_tasks(args.method, url, nodes, dest, args.name)
        t_end = time.time()
    out = {
        "method": args.method,
        "url": url,
        "hosts": hosts,
        "extra": extra,
        "t_start": t_start,
        "t_end": t_end,
        "origin": origin_stats(args.origin),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
