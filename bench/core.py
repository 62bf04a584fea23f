"""Issue 2's figures on this machine: one node vs a plain fsspec download, peer memory, and
4 local nodes against every node downloading itself and against Ray's own broadcast.

    python -m bench.core single --size 1GiB --runs 6   # also against a download hashed as it lands
    python -m bench.core memory --size 4GiB
    python -m bench.core memory --size 4GiB --nodes 4 --local-reads off   # as between hosts
    python -m bench.core cluster --nodes 4 --size 1GiB --runs 3
    python -m bench.core soak --size 64MiB --runs 60 --local-reads off   # memory over many tasks
    python -m bench.core cluster --size 256MiB --methods rayfly,ray_pieces --piece-size 1MiB

Each prints a JSON document (and appends it to bench/results/core.jsonl). The origin is
rayfly's HTTP origin on loopback, which counts the bytes it sends. The ``ray_pieces`` methods
are the floor under rayfly's per-piece CPU (:mod:`bench.ray_pieces`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import ray

import rayfly
from bench import ray_pieces
from bench.files import sha256_of
from bench.procstat import own_memory, resident, stat_fields
from rayfly.actors import placement
from rayfly.cluster import start_local_cluster
from rayfly.config import NAMESPACE, parse_size
from rayfly.demo_origin import OriginServer, make_file

RESULTS = Path(__file__).parent / "results" / "core.jsonl"


PLAIN = (
    "import fsspec, sys; fs, p = fsspec.core.url_to_fs(sys.argv[1]); fs.get_file(p, sys.argv[2])"
)


# the same download verified as a careful user would, in the fewest copies the standard library
# allows: the body read in 4 MiB chunks, written, and hashed as it arrives on a thread of its own
# (hashlib lets go of the GIL), so the hash overlaps the download: a floor under any tool that
# checks what it downloaded (fsspec's streaming file was tried first: 2-4x slower than get_file)
PLAIN_VERIFIED = """
import hashlib, queue, sys, threading, urllib.request
q, h = queue.Queue(16), hashlib.sha256()
def hasher():
    while (b := q.get()) is not None:
        h.update(b)
t = threading.Thread(target=hasher)
t.start()
with urllib.request.urlopen(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    while b := src.read(1 << 22):
        dst.write(b)
        q.put(b)
q.put(None)
t.join()
assert h.hexdigest() == sys.argv[3], h.hexdigest()
"""


def plain_fsspec(url: str, dest: Path, want_sha256: str | None = None) -> tuple[float, float]:
    """Download ``url`` to ``dest`` with fsspec in a fresh process, as a user would without
    rayfly; (seconds, CPU seconds of that process, its interpreter start included). With
    ``want_sha256``, the download of :data:`PLAIN_VERIFIED` instead: hashed as it arrives and
    checked."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    argv = ["-c", PLAIN, url, str(dest)]
    if want_sha256:
        argv = ["-c", PLAIN_VERIFIED, url, str(dest), want_sha256]
    subprocess.run([sys.executable, *argv], check=True, timeout=600)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def minor_faults(pid: int) -> int:
    """Minor page faults a process has taken so far (``/proc/PID/stat``): each is a page it
    touched for the first time, fresh process memory the kernel had to zero among them."""
    return int(stat_fields(pid)[1][7])


def raylet_pids(gcs_address: str) -> list[int]:
    """The raylets of the cluster at ``gcs_address`` (other clusters on the machine excluded)."""
    flag = f"--gcs-address={gcs_address}"
    return [
        p.pid
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "raylet" and flag in (p.info["cmdline"] or [])
    ]


HASH = (
    "import hashlib, sys\n"
    "h = hashlib.sha256()\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    while b := f.read(1 << 22): h.update(b)\n"
)


def sha256_cpu(path: Path) -> float:
    """CPU seconds of a fresh process computing the sha256 of ``path`` (what a user verifying
    a plain download spends on top of it)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", HASH, str(path)], check=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def settle(dest: Path, report: rayfly.Report | None = None) -> None:
    """Leave nothing of a run behind, as each method would on a fresh machine: remove its files
    (and rayfly's cache entries), and write back dirty pages so the next run does not pay for
    this one's writeback (page-cache writes cost 2-5 CPU-s/GiB on these VMs)."""
    shutil.rmtree(dest, ignore_errors=True)
    if report is not None:
        peers = placement.existing_peers().values()
        ray.get([p.cache_remove.remote(t) for p in peers for t in report.task_ids])
    os.sync()


def rayfly_once(url: str, dest: str, **kwargs: Any) -> tuple[float, rayfly.Report]:
    """One distribution as a new task (a fresh tag); seconds from call to return."""
    t0 = time.perf_counter()
    report = rayfly.distribute(url, dest, tag=uuid.uuid4().hex, **kwargs)
    if not report.ok:
        raise RuntimeError(str(report))
    return time.perf_counter() - t0, report


class PeerMemory:
    """Samples a peer's memory every 20 ms in a thread, keeping peaks: its resident set (as
    ``ps`` shows it), its own memory (resident minus the object-store pages it has touched),
    the object-store bytes it keeps to serve again (``kept``), every object-store byte it
    keeps referenced (``referenced``: also pieces in flight and in the hash window), and the
    sum of own and referenced at one instant: the peer's memory (issue 9's row)."""

    def __init__(self, pid: int, peer: Any):
        self.pid, self.peer = pid, peer
        self.peak = dict.fromkeys(
            ("rss", "own", "store_mapped", "kept", "referenced", "own_plus_referenced"), 0
        )
        self.baseline = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[str, int]:
        mem = resident(self.pid)
        kept = ray.get(self.peer.info.remote(), timeout=10)["serve_memory"]
        own = own_memory(mem)
        sample = {
            "rss": own + mem["shmem"],
            "own": own,
            "store_mapped": mem["shmem"],
            "kept": kept["held"],
            "referenced": kept["referenced"],
            "own_plus_referenced": own + kept["referenced"],
        }
        for key, value in sample.items():
            self.peak[key] = max(self.peak[key], value)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> PeerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def peer_pid(peer: Any) -> int:
    """The process id of a peer actor (its ``info()``)."""
    return int(ray.get(peer.info.remote())["pid"])


def setup(nodes: int, work: Path, size: int) -> tuple[OriginServer, Any]:
    """A local cluster of ``nodes`` nodes, an origin serving a ``size``-byte file, warm peers."""
    os.environ["RAYFLY_CACHE_DIR"] = str(work / "cache")
    os.environ.setdefault("RAYFLY_CACHE_QUOTA", str(3 * size + (1 << 30)))
    cluster = start_local_cluster(nodes, object_store_memory=1 << 30)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    make_file(work / "origin" / "payload.bin", size)
    make_file(work / "origin" / "warm.bin", 1 << 20, seed=9)
    origin = OriginServer(work / "origin").start()
    rayfly_once(origin.url + "warm.bin", str(work / "warm" / "{node_id}"))
    origin.reset()
    return origin, cluster


def single(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """rayfly on one node vs plain fsspec, alternating, medians."""
    origin, _ = setup(1, work, args.size)
    url = origin.url + "payload.bin"
    peer = next(iter(placement.existing_peers().values()))
    pid = peer_pid(peer)
    raylets = raylet_pids(ray.get_runtime_context().gcs_address)
    want = sha256_of(work / "origin" / "payload.bin")
    methods = ("fsspec", "rayfly", "verified")
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in (*methods, "raylet", "sha256")}
    tail: list[float] = []  # seconds from rayfly's last piece landing to its call returning
    ratios, verified_ratios = [], []
    for i in range(args.runs):
        for method in methods[i % 3 :] + methods[: i % 3]:  # each method first in turn
            dest = work / "dest" / method
            dest.mkdir(parents=True, exist_ok=True)
            report = None
            if method == "fsspec":
                seconds, used = plain_fsspec(url, dest / "payload.bin")
                cpu["sha256"].append(sha256_cpu(dest / "payload.bin"))
            elif method == "verified":
                seconds, used = plain_fsspec(url, dest / "payload.bin", want)
            else:
                c0, r0 = cpu_seconds(pid), sum(map(cpu_seconds, raylets))
                seconds, report = rayfly_once(url, str(dest / "payload.bin"))
                tail.append(time.time() - max(e[0] for e in report.nodes[0].timeline))
                used = cpu_seconds(pid) - c0
                cpu["raylet"].append(sum(map(cpu_seconds, raylets)) - r0)
            times[method].append(seconds)
            cpu[method].append(used)
            settle(dest, report)
        ratios.append(times["rayfly"][-1] / times["fsspec"][-1])
        verified_ratios.append(times["rayfly"][-1] / times["verified"][-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    gib = args.size / 2**30
    return {
        "bench": "single",
        "size": args.size,
        "runs": times,
        "rayfly_tail_s": tail,
        "cpu_s": cpu,
        "median_s": med,
        "median_of_run_ratios": statistics.median(ratios),
        "ratio_rayfly_over_fsspec": med["rayfly"] / med["fsspec"],
        "median_of_run_ratios_to_verified": statistics.median(verified_ratios),
        "median_cpu_s": cpu_med,
        "cpu_s_per_gib": {k: v / gib for k, v in cpu_med.items()},
        "peer_cpu_over_plain_plus_sha256": cpu_med["rayfly"]
        / (cpu_med["fsspec"] + cpu_med["sha256"]),
        "load_avg_1m": os.getloadavg()[0],
        "mb_per_s": {k: args.size / v / 1e6 for k, v in med.items()},
        "pieces_written_direct": ray.get(peer.info.remote())["pieces_written_direct"],
    }


def memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Peak memory of every peer while ``args.nodes`` nodes move an ``args.size``
    file (see :class:`PeerMemory`); with more than one node, pieces travel between peers as
    between hosts when local reads are off."""
    origin, _ = setup(args.nodes, work, args.size)
    peers = list(placement.existing_peers().values())
    samplers = [PeerMemory(peer_pid(p), p) for p in peers]
    cpu0 = sum(cpu_seconds(s.pid) for s in samplers)
    with contextlib.ExitStack() as stack:
        for sampler in samplers:
            stack.enter_context(sampler)
        where = str(work / "dest" / "{node_id}" / "p.bin")
        seconds, _ = rayfly_once(origin.url + "payload.bin", where, piece_size=args.piece_size)
    cpu = sum(cpu_seconds(s.pid) for s in samplers) - cpu0
    mib = 2**20

    def served(key: str) -> int:
        return sum(ray.get(p.info.remote())[key] for p in peers)

    return {
        "bench": "memory",
        "size": args.size,
        "nodes": args.nodes,
        "local_reads": args.local_reads,
        "piece_size": next(
            e["piece_size"]
            for e in ray.get(peers[0].cache_entries.remote())
            if e["length"] == args.size
        ),
        "seconds": seconds,
        "peers_cpu_s": cpu,
        "load_avg_1m": os.getloadavg()[0],
        "peer_rss_baseline_mib": max(s.baseline["rss"] for s in samplers) / mib,
        "peer_rss_peak_mib": max(s.peak["rss"] for s in samplers) / mib,
        "peers_peak_mib": [{k: v / mib for k, v in s.peak.items()} for s in samplers],
        "peer_own_plus_referenced_peak_mib": max(s.peak["own_plus_referenced"] for s in samplers)
        / mib,
        "origin_bytes": origin.bytes_served,
        "serve_memory_limit_mib": ray.get(peers[0].info.remote())["serve_memory"]["limit"] / mib,
        "pieces_served": served("pieces_served"),
        "pieces_served_from_memory": served("pieces_served_from_memory"),
    }


def actor_pids(*classes: str) -> list[int]:
    """The processes of the actors of ``classes`` on this machine (Ray titles an actor's
    worker ``ray::<class>``)."""
    titles = tuple(f"ray::{c}" for c in classes)
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith(titles)
    ]


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Own memory (resident less object-store pages) of every peer and of the scheduler over
    ``args.runs`` distributions, each a new task removed from every cache after it, as on a
    long-lived cluster: a leak shows as growth from the first sample to the last."""
    origin, _ = setup(args.nodes, work, args.size)
    peers = list(placement.existing_peers().values())
    scheduler = actor_pids("Scheduler")
    if len(scheduler) != 1:
        raise RuntimeError(f"expected one scheduler process, found {scheduler}")
    pids = [peer_pid(p) for p in peers] + scheduler
    samples = []
    for i in range(args.runs):
        where = str(work / "dest" / "{node_id}" / "p.bin")
        report = rayfly_once(origin.url + "payload.bin", where, piece_size=args.piece_size)[1]
        settle(work / "dest", report)
        if i % 10 == 0 or i == args.runs - 1:
            own = [own_memory(resident(pid)) / 2**20 for pid in pids]
            samples.append(
                {"tasks": i + 1, "peers_own_mib": own[:-1], "scheduler_own_mib": own[-1]}
            )
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
    return {
        "bench": "soak",
        "size": args.size,
        "nodes": args.nodes,
        "local_reads": args.local_reads,
        "samples": samples,
        "load_avg_1m": os.getloadavg()[0],
    }


def cluster(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """rayfly vs every node downloading vs Ray's broadcast, alternating order, medians."""
    from bench.broadcast.driver import run_tasks

    origin, _ = setup(args.nodes, work, args.size)
    url = origin.url + "payload.bin"
    nodes = sorted((n for n in ray.nodes() if n["Alive"]), key=lambda n: n["NodeID"])
    peers = [peer_pid(p) for p in placement.existing_peers().values()]
    raylets = raylet_pids(ray.get_runtime_context().gcs_address)
    methods = args.methods.split(",")
    floors = [m for m in methods if m.startswith("ray_pieces")]
    holders = ray_pieces.holders(nodes) if floors else []
    holder_pids = ray.get([h.pid.remote() for h in holders])
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for i in range(args.runs):
        for method in methods[i % len(methods) :] + methods[: i % len(methods)]:
            dest = work / "dest" / method
            origin.reset()
            report = None
            procs = (holder_pids if method in floors else peers, raylets)
            c0 = [sum(map(cpu_seconds, pids)) for pids in procs]
            f0 = [sum(map(minor_faults, pids)) for pids in procs]
            t0 = time.perf_counter()
            if method == "rayfly":
                where = str(dest / "{node_id}" / "payload.bin")
                report = rayfly_once(url, where, piece_size=args.piece_size)[1]
            elif method in floors:
                piece = args.piece_size or ray_pieces.PIECE
                by_value = method == "ray_pieces_value"
                ray_pieces.run(holders, url, piece, call_per_piece=method != "ray_pieces_nocall",
                               by_value=by_value)  # fmt: skip
            else:
                run_tasks(method, url, nodes, dest, "payload.bin")
            c1 = [sum(map(cpu_seconds, pids)) for pids in procs]
            f1 = [sum(map(minor_faults, pids)) for pids in procs]
            runs[method].append(
                {
                    "makespan_s": time.perf_counter() - t0,
                    "origin_bytes": origin.bytes_served,
                    "peers_cpu_s": c1[0] - c0[0],
                    "raylets_cpu_s": c1[1] - c0[1],
                    "peers_minor_faults": f1[0] - f0[0],
                    "raylets_minor_faults": f1[1] - f0[1],
                }
            )
            settle(dest, report)
    summary = {
        m: {
            "makespan_s": statistics.median(r["makespan_s"] for r in v),
            "origin_bytes_over_size": statistics.median(r["origin_bytes"] for r in v) / args.size,
        }
        for m, v in runs.items()
    }
    return {
        "bench": "cluster",
        "local_reads": os.environ.get("RAYFLY_LOCAL_READS", "on"),
        "pieces_written_direct": sum(
            ray.get(p.info.remote())["pieces_written_direct"]
            for p in placement.existing_peers().values()
        ),
        "nodes": args.nodes,
        "size": args.size,
        "piece_size": args.piece_size,
        "runs": runs,
        "median": summary,
        "load_avg_1m": os.getloadavg()[0],
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=["single", "memory", "cluster", "soak"])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--nodes", type=int, default=None, help="cluster: default 4; memory: 1; soak: 2"
    )
    parser.add_argument(
        "--methods",
        default="rayfly,plain,plain_sha256,ray",
        help="cluster: comma-separated, of rayfly, plain, plain_sha256 (plain, hashing), ray, "
        "ray_pieces (Ray's calls per piece alone: bench/ray_pieces.py), ray_pieces_nocall "
        "(the same without the empty call per piece), ray_pieces_value (the parent answers "
        "with the bytes)",
    )
    parser.add_argument(
        "--local-reads",
        choices=["on", "off"],
        default="on",
        help="cluster: RAYFLY_LOCAL_READS of the simulated nodes (they share this host)",
    )
    parser.add_argument(
        "--direct-io",
        choices=["on", "off"],
        default="on",
        help="RAYFLY_DIRECT_IO of the nodes: aligned pieces written past the page cache",
    )
    parser.add_argument(
        "--piece-size",
        type=parse_size,
        default=None,
        help="cluster, memory, soak: rayfly's piece size (default: the scheduler's choice)",
    )
    args = parser.parse_args()
    if args.nodes is None:
        args.nodes = {"memory": 1, "soak": 2}.get(args.which, 4)
    os.environ["RAYFLY_LOCAL_READS"] = args.local_reads
    os.environ["RAYFLY_DIRECT_IO"] = args.direct_io
    work = Path(tempfile.mkdtemp(prefix="rayfly-bench-"))
    try:
        benches = {"single": single, "memory": memory, "cluster": cluster, "soak": soak}
        doc = benches[args.which](args, work)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    doc["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["direct_io"] = args.direct_io
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(doc) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
