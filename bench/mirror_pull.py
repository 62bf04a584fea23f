"""Benchmark of the registry mirror: ``ctr images pull`` direct vs cold mirror vs warm mirror,
and 20 concurrent clients pulling one blob through one node's mirror.

Everything on loopback: Debian's docker-registry (upstream), a counting front before it (to
read the bytes that reach upstream), a local Ray cluster with a mirror on every node, and one
containerd per mode. Each run pushes a fresh image (new random layers), so "cold" is truly
cold; the modes of a run pull the same-sized image side by side, in an order rotated from run
to run (:data:`ORDERS`), each after a ``sync``, and every containerd is emptied after a run:

- direct: from the registry;
- cold: through node 0's mirror, no node holds a blob;
- peer: the cold image again, through node N-1's mirror: every blob is cached on another node
  (node 0) only, so it travels peer to peer before it is served;
- warm: a second image preheated to every node, through node N-1's mirror (its own cache).

    python bench/mirror_pull.py --runs 5 --nodes 2 --layer-mib 64

Prints Markdown tables and, with ``--json FILE``, writes the raw figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray
import requests

from bench import machine
from bench.core import actor_pids, cpu_seconds, peer_pid
from bench.procstat import machine_busy_s
from rayfly.actors import placement
from rayfly.cluster import start_local_cluster
from rayfly.config import NAMESPACE
from rayfly.proxy.actor import start_mirrors, stop_mirrors
from rayfly.proxy.preheat import preheat
from rayfly.proxy.server import MirrorSettings
from rayfly.proxy.upstream import Upstream
from tests.support.containerd import Containerd
from tests.support.registry import (
    CountingFront,
    LoopThread,
    RegistryProcess,
    build_image,
    push_image,
)

MiB = 1 << 20
MODES = ("direct", "cold", "peer", "warm")


def timed_pull(ctd: Containerd, ref: str) -> float:
    t0 = time.perf_counter()
    out = ctd.pull(ref)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"ctr pull {ref} failed: {out.stderr[-2000:]}")
    return elapsed


ORDERS = (
    ("direct", "cold", "peer", "warm"),
    ("cold", "peer", "warm", "direct"),
    ("warm", "direct", "cold", "peer"),
)
"""The modes' order in run ``i``: ``ORDERS[i % len(ORDERS)]`` (peer always right after cold, whose
node-0 copy it pulls), so that no mode always pulls first or last in a run."""


def pull_modes(
    args,
    work: Path,
    front: CountingFront,
    registry: RegistryProcess,
    mirrors: list[str],
    upstreams: dict[str, Upstream],
) -> list[dict]:
    """``--runs`` runs of the four modes, each pulling an image of its own; per run the
    seconds and the upstream blob bytes of each mode. Before each pull the disk is synced
    (the writes of the pull before are not charged to it) and after each run every
    containerd's images and content are removed (a store that fills slows its later pulls)."""
    ctds = {m: Containerd(work / f"ctd-{m}") for m in MODES}
    # direct: the registry itself; cold: node 0's mirror; peer/warm: node N-1's mirror.
    direct_dir = ctds["direct"].hosts_dir / front.host
    direct_dir.mkdir(parents=True, exist_ok=True)
    (direct_dir / "hosts.toml").write_text(f'server = "{front.url}"\n')
    ctds["cold"].use_mirror(front.host, mirrors[0], front.url)
    ctds["peer"].use_mirror(front.host, mirrors[-1], front.url)
    ctds["warm"].use_mirror(front.host, mirrors[-1], front.url)
    pids = rayfly_pids()
    rows = []
    try:
        for run in range(args.runs):
            row = one_run(args, run, front, registry, ctds, upstreams, pids)
            rows.append(row)
            for ctd in ctds.values():
                ctd.remove_all()
            times = " ".join(f"{m} {row[m + '_s']:.2f}s" for m in row["order"])
            print(f"run {run}: {times} (preheat {row['preheat_s']:.2f}s)", flush=True)
    finally:
        for ctd in ctds.values():
            ctd.stop()
    return rows


def one_run(
    args,
    run: int,
    front: CountingFront,
    registry: RegistryProcess,
    ctds: dict[str, Containerd],
    upstreams: dict[str, Upstream],
    pids: list[int],
) -> dict:
    """One run: a fresh image for direct, cold and peer, another preheated to every node for
    warm, each mode pulled in this run's order; with each pull's seconds, the CPU seconds
    the whole machine and rayfly's processes (``pids``) used during it."""
    sizes = [args.layer_mib * MiB, 6 * MiB, MiB, 20_000]
    image = build_image(f"bench/pull{run}", "v1", sizes, seed=1000 + run)
    warm_image = build_image(f"bench/warm{run}", "v1", sizes, seed=2000 + run)
    push_image(registry.url, image)
    push_image(registry.url, warm_image)
    t0 = time.perf_counter()
    report = preheat(f"{front.host}/{warm_image.name}:v1", upstreams=upstreams)
    order = ORDERS[run % len(ORDERS)]
    row: dict = {"run": run, "image_bytes": image.total_blob_bytes, "order": order}
    row["preheat_s"] = time.perf_counter() - t0
    assert report.ok, str(report)
    for mode in order:
        name = warm_image.name if mode == "warm" else image.name
        os.sync()
        front.state.reset()
        busy0, cpu0 = machine_busy_s(), sum(map(cpu_seconds, pids))
        row[f"{mode}_s"] = timed_pull(ctds[mode], f"{front.host}/{name}:v1")
        row[f"{mode}_busy_cpu_s"] = machine_busy_s() - busy0
        row[f"{mode}_rayfly_cpu_s"] = sum(map(cpu_seconds, pids)) - cpu0
        key = {"direct": "direct_upstream_bytes", "cold": "cold_upstream_bytes"}.get(
            mode, f"{mode}_upstream_blob_bytes"
        )
        row[key] = front.state.blob_bytes
    row["loadavg"] = os.getloadavg()[0]
    return row


def timed_get(url: str) -> tuple[float, float, str]:
    """Seconds to the whole body and to its first chunk, and the body's sha256."""
    t0 = time.perf_counter()
    first, sha = None, hashlib.sha256()
    with requests.get(url, stream=True, timeout=600) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(1 << 20):
            first = time.perf_counter() - t0 if first is None else first
            sha.update(chunk)
    return time.perf_counter() - t0, first or 0.0, sha.hexdigest()


def blob_gets(args, registry: RegistryProcess, front: CountingFront, mirrors: list[str]) -> list:
    """One fresh blob per run, GET in the order of the pull modes: direct, cold (node 0),
    peer (node N-1, cached on node 0 only), local (node N-1 again, now in its own cache), with
    the CPU seconds rayfly's processes (:func:`rayfly_pids`) used during each."""
    pids = rayfly_pids()
    rows = []
    for run in range(args.runs):
        image = build_image(f"bench/blob{run}", "v1", [args.layer_mib * MiB], seed=4000 + run)
        push_image(registry.url, image)
        digest = image.layer_digests[0]
        row: dict = {"run": run, "blob_bytes": len(image.blobs[digest])}
        bases = {"direct": front.url, "cold": mirrors[0], "peer": mirrors[-1], "local": mirrors[-1]}
        for mode, base in bases.items():
            cpu0 = sum(map(cpu_seconds, pids))
            total, first, sha = timed_get(f"{base}/v2/{image.name}/blobs/{digest}")
            row[f"{mode}_rayfly_cpu_s"] = sum(map(cpu_seconds, pids)) - cpu0
            assert "sha256:" + sha == digest, f"{mode}: wrong bytes"
            row[f"{mode}_s"], row[f"{mode}_first_s"] = total, first
        rows.append(row)
        print(f"run {run}: " + " ".join(f"{m} {row[m + '_s']:.2f}s" for m in bases), flush=True)
    return rows


def rayfly_pids() -> list[int]:
    """The processes of every node's peer and mirror actors and of the scheduler."""
    peers = [peer_pid(p) for p in placement.existing_peers().values()]
    return peers + actor_pids("Proxy", "Scheduler")


def blob_table(blobs: list[dict], args: dict) -> str:
    lines = [
        f"GET of one {args['layer_mib']} MiB blob (Python client, sha256 while reading), "
        f"{len(blobs)} runs:",
        "",
        "| path | median s | median ratio to direct | median s to first byte "
        "| median CPU-s of the peers, mirrors and scheduler |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("direct", "cold", "peer", "local"):
        lines.append(
            f"| {mode} | {med(blobs, mode + '_s'):.2f} | "
            f"{ratio_median(blobs, mode + '_s', 'direct_s'):.2f}x | "
            f"{med(blobs, mode + '_first_s'):.3f} | {_cpu(blobs, mode)} |"
        )
    per_run = "; ".join(
        " / ".join(f"{r[m + '_s']:.2f}" for m in ("direct", "cold", "peer", "local")) for r in blobs
    )
    return "\n".join([*lines, "", f"Per run (s): {per_run} (direct / cold / peer / local)."])


def concurrent_clients(
    args, front: CountingFront, registry: RegistryProcess, mirrors: list[str]
) -> list[dict]:
    pids = rayfly_pids()
    rows = []
    for run in range(args.runs):
        image = build_image(f"bench/many{run}", "v1", [args.layer_mib * MiB], seed=3000 + run)
        push_image(registry.url, image)
        digest = image.layer_digests[0]
        size = len(image.blobs[digest])
        out = {"run": run, "blob_bytes": size, "clients": args.clients}
        for mode, base in (("mirror", mirrors[0]), ("direct", front.url)):
            url = f"{base}/v2/{image.name}/blobs/{digest}"
            front.state.reset()
            barrier = threading.Barrier(args.clients)

            def one(_: int, url: str = url, barrier: threading.Barrier = barrier) -> str:
                barrier.wait()
                return hashlib.sha256(requests.get(url, timeout=600).content).hexdigest()

            t0, cpu0 = time.perf_counter(), sum(map(cpu_seconds, pids))
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                got = set(pool.map(one, range(args.clients)))
            out[f"{mode}_s"] = time.perf_counter() - t0
            out[f"{mode}_rayfly_cpu_s"] = sum(map(cpu_seconds, pids)) - cpu0
            assert got == {digest.split(":")[1]}, f"{mode}: wrong bytes"
            out[f"{mode}_upstream_ratio"] = front.state.bytes_by_digest[digest] / size
        rows.append(out)
        print(
            f"run {run}: mirror {out['mirror_s']:.2f}s "
            f"({out['mirror_upstream_ratio']:.2f}x upstream), direct {out['direct_s']:.2f}s "
            f"({out['direct_upstream_ratio']:.2f}x)",
            flush=True,
        )
    return rows


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def ratio_median(rows: list[dict], key: str, base: str) -> float:
    return statistics.median(r[key] / r[base] for r in rows)


def report(pulls: list[dict], many: list[dict], args: dict, blobs: list[dict] = ()) -> str:
    parts = [pull_table(pulls, args)] if pulls else []
    parts += [concurrent_table(many, args)] if many else []
    parts += [blob_table(list(blobs), args)] if blobs else []
    return "\n\n".join(parts)


_MODE_ROWS = (
    ("direct", "direct from the registry", "direct_upstream_bytes"),
    ("cold", "through a cold mirror", "cold_upstream_bytes"),
    ("peer", "through a mirror, blob cached on another node", "peer_upstream_blob_bytes"),
    ("warm", "through a warm (preheated) mirror", "warm_upstream_blob_bytes"),
)


def pull_table(pulls: list[dict], args: dict) -> str:
    image = pulls[0]["image_bytes"]
    modes = [m for m in _MODE_ROWS if f"{m[0]}_s" in pulls[0]]  # older JSONs have no "peer"
    lines = [
        f"`ctr images pull` of a {image / MiB:.1f} MiB image (4 uncompressed layers, largest "
        f"{args['layer_mib']} MiB), native snapshotter, {args['nodes']}-node local Ray, "
        f"{len(pulls)} runs, upstream "
        + (
            f"capped at {args['upstream_mbps']:g} MB/s"
            if args.get("upstream_mbps")
            else "at loopback speed"
        )
        + "; the modes of a run pull side by side (same load):",
        "",
        "| mode | median s | median of per-run ratios to direct | upstream blob bytes / image "
        "| median CPU-s: machine (rayfly) | machine busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    cores = os.cpu_count() or 1
    for mode, label, up in modes:
        lines.append(
            f"| {label} | {med(pulls, mode + '_s'):.2f} | "
            f"{ratio_median(pulls, mode + '_s', 'direct_s'):.2f}x | {med(pulls, up) / image:.2f} "
            f"| {_busy(pulls, mode, cores)} |"
        )
    per_run = "; ".join(" / ".join(f"{r[m + '_s']:.2f}" for m, _, _ in modes) for r in pulls)
    lines += [
        "",
        f"Per run (s): {per_run} ({' / '.join(m for m, _, _ in modes)}).",
        f"Preheat of the image to all {args['nodes']} nodes: median "
        f"{med(pulls, 'preheat_s'):.2f} s.",
    ]
    if "loadavg" in pulls[0]:
        loads = ", ".join(f"{r['loadavg']:.1f}" for r in pulls)
        lines.append(f"Load average (1 min) at the end of each run: {loads}.")
    return "\n".join(lines)


def _busy(rows: list[dict], mode: str, cores: int) -> str:
    """The median CPU-s the machine and rayfly used in ``mode`` and the median share of the
    machine's cores busy during a pull; "n/a" in older result files."""
    if f"{mode}_busy_cpu_s" not in rows[0]:
        return "n/a | n/a"
    share = statistics.median(r[f"{mode}_busy_cpu_s"] / (cores * r[f"{mode}_s"]) for r in rows)
    return f"{med(rows, mode + '_busy_cpu_s'):.2f} ({_cpu(rows, mode)}) | {share:.0%}"


def _cpu(rows: list[dict], mode: str) -> str:
    """The median CPU-s rayfly's processes used in ``mode``; "n/a" in older result files."""
    key = f"{mode}_rayfly_cpu_s"
    return f"{med(rows, key):.2f}" if key in rows[0] else "n/a"


def concurrent_table(many: list[dict], args: dict) -> str:
    lines = [
        f"{args['clients']} concurrent clients GET one {args['layer_mib']} MiB blob, "
        f"{len(many)} runs:",
        "",
        "| path | median s | upstream bytes / blob "
        "| median CPU-s of the peers, mirrors and scheduler |",
        "| --- | ---: | ---: | ---: |",
        f"| through one node's mirror | {med(many, 'mirror_s'):.2f} | "
        f"{med(many, 'mirror_upstream_ratio'):.2f}x | {_cpu(many, 'mirror')} |",
        f"| each client direct from the registry | {med(many, 'direct_s'):.2f} | "
        f"{med(many, 'direct_upstream_ratio'):.2f}x | {_cpu(many, 'direct')} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--layer-mib", type=int, default=64)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--json", default=None, help="Write the raw figures here.")
    parser.add_argument("--only", choices=("pull", "concurrent", "blob"), default=None)
    parser.add_argument("--from-json", default=None, help="Only print the tables of a --json.")
    parser.add_argument(
        "--upstream-mbps",
        type=float,
        default=0.0,
        help="Cap the registry's bodies at this many MB/s in total, as a registry reached over "
        "a WAN link would be (0: loopback speed).",
    )
    args = parser.parse_args()
    if args.nodes < 2 and args.only != "concurrent":  # pull and blob have a peer mode
        parser.error("--nodes must be at least 2: the peer mode pulls through another node")
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        print(report(doc["pulls"], doc["concurrent"], doc["args"], doc.get("blobs", [])))
        return
    facts = machine.describe()  # on a quiet machine, before the cluster starts
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="rayfly-mirror-bench-"))
    os.environ["RAYFLY_CACHE_DIR"] = str(work / "cache")
    loop = LoopThread()
    (work / "registry").mkdir()
    registry = RegistryProcess(work / "registry")
    front = CountingFront(registry.url, loop)
    front.state.rate = args.upstream_mbps * 1e6
    cluster = start_local_cluster(args.nodes, object_store_memory=400 << 20)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        upstreams = {front.host: Upstream(front.host, front.url, insecure=True)}
        endpoints = start_mirrors(MirrorSettings(upstreams, front.host), port=0)
        mirrors = [e["url"] for e in endpoints]
        only = args.only
        pulls = []
        if only in (None, "pull"):
            pulls = pull_modes(args, work, front, registry, mirrors, upstreams)
        many = (
            concurrent_clients(args, front, registry, mirrors)
            if only in (None, "concurrent")
            else []
        )
        blobs = blob_gets(args, registry, front, mirrors) if only == "blob" else []
        text = report(pulls, many, vars(args), blobs)
        print("\n" + text)
        print(f"\nload average (1, 5, 15 min): start {load_start}, end {os.getloadavg()}")
        print(machine.summary(facts))
        if args.json:
            doc = {
                "machine": facts,
                "pulls": pulls,
                "concurrent": many,
                "blobs": blobs,
                "args": vars(args),
                "loadavg_start": load_start,
                "loadavg_end": os.getloadavg(),
            }
            Path(args.json).write_text(json.dumps(doc, indent=2))
    finally:
        stop_mirrors()
        ray.shutdown()
        cluster.shutdown()
        front.stop()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)  # the registry and caches: GiBs per run
        loop.stop()


if __name__ == "__main__":
    main()
