"""The broadcast benchmark: ``python -m bench.broadcast`` (as root, from the repository root).

For every N in ``--hosts``: make a testbed of N hosts (links shaped to B), put a file of S bytes
at the origin, then ``--runs`` times run every method (order rotated each run), recording per
host completion times, the origin's bytes served and the machine's CPU use.  Every method-run is
appended to the JSON at ``--out`` as soon as it ends; a summary (medians) and the plot are made
at the end (``python -m bench.broadcast.report`` remakes them from the JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.broadcast.report import dumps, summarize, write_outputs
from bench.files import sha256_of
from bench.procstat import stat_fields
from bench.testbed.netns import REPO_ROOT, Testbed, TestbedConfig

METHODS = ("rayfly", "plain", "ray", "chain")


PREALLOCATE = {
    "RAY_preallocate_plasma_memory": "1",
    # the raylet gives its object store 10 x 1 s to come up; populating 1.3 GB while other
    # hosts do the same on 2 cores took 11 s and the raylet died (``Check failed:
    # buffer_pool_store_client_->Connect``), three starts in a row
    "RAY_raylet_client_num_connect_attempts": "60",
}
"""Ray's settings for ``--preallocate-object-store``."""


def _netns_inode(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def _runqueue_wait_ns(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def eth0_bytes(pid: int) -> tuple[int, int] | None:
    """(rx, tx) bytes of eth0 in the network namespace of process ``pid``, if it has one."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, sep, rest = line.partition(":")
        if sep and name.strip() == "eth0":
            fields = rest.split()
            return int(fields[0]), int(fields[8])
    return None


def link_use(
    series: list[tuple[float, int, int]], start: float, end: float, rate_bps: float
) -> dict[str, float]:
    """A link's received and sent bytes per second over ``[start, end]`` as shares of its rate,
    and when (seconds after ``start``) it had received and sent 99 % of what it did then."""
    # the samples inside, and the last before and the first after: a short run has few inside
    before = [s for s in series if s[0] <= start][-1:]
    after = [s for s in series if s[0] >= end][:1]
    inside = before + [s for s in series if start < s[0] < end] + after
    if len(inside) < 2:
        return {}
    (t0, rx0, tx0), (t1, rx1, tx1) = inside[0], inside[-1]
    span = max(1e-9, t1 - t0)

    def done_at(col: int, first: int, last: int) -> float:
        goal = first + 0.99 * (last - first)
        return max(0.0, next(s[0] for s in inside if s[col] >= goal) - start)

    return {
        "rx_share": (rx1 - rx0) / span / rate_bps,
        "tx_share": (tx1 - tx0) / span / rate_bps,
        "rx_done_s": done_at(1, rx0, rx1),
        "tx_done_s": done_at(2, tx0, tx1),
    }


def rate_series(
    series: list[tuple[float, int, int]], start: float, end: float, rate_bps: float, col: int
) -> list[list[float]]:
    """[seconds after ``start``, share of the link's rate] per sampling interval inside
    ``[start, end]``, for column ``col`` of ``series`` (1: received, 2: sent): when a link
    idled, not only how much."""
    inside = [s for s in series if start <= s[0] <= end]
    return [
        [round(b[0] - start, 2), round((b[col] - a[col]) / max(1e-9, b[0] - a[0]) / rate_bps, 3)]
        for a, b in itertools.pairwise(inside)
    ]


class Ticks(NamedTuple):
    """One process's counters: CPU ticks, its network namespace (inode), command name, the
    nanoseconds it has spent runnable but waiting for a CPU (/proc/PID/schedstat), and its
    minor and major page faults."""

    user: int = 0
    system: int = 0
    ns: int = 0
    comm: str = ""
    wait_ns: int = 0
    minflt: int = 0
    majflt: int = 0


def process_ticks() -> dict[int, Ticks]:
    """Every process's :class:`Ticks`, by pid."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm, fields = stat_fields(pid)
        except OSError:
            continue
        ns = _netns_inode(pid)
        out[int(pid)] = Ticks(
            int(fields[11]),
            int(fields[12]),
            ns,
            comm,
            _runqueue_wait_ns(pid),
            int(fields[7]),
            int(fields[9]),
        )
    return out


class CpuSampler:
    """Samples CPU use every ``interval`` seconds: the machine's busy fraction (/proc/stat), and
    the cores used by processes inside the testbed's namespaces (``mine``, by netns inode)
    against all others (other users of the machine, kernel threads)."""

    def __init__(self, mine: set[int], interval: float = 0.5) -> None:
        """Ready to start; call as a context manager."""
        self.interval = interval
        self.mine = mine
        self.samples: list[dict[str, float]] = []
        self.by_process: dict[str, list[float]] = {}
        self.faults: dict[str, list[int]] = {}  # command -> [minor, major] page faults
        self.links: dict[int, list[tuple[float, int, int]]] = {}  # netns -> (t, rx, tx) of eth0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._hz = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _read() -> tuple[int, int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle, iowait = fields[3], fields[4]
        return sum(fields[:8]), idle + iowait, iowait

    def _loop(self) -> None:
        prev, prev_procs, prev_t = self._read(), process_ticks(), time.monotonic()
        while not self._stop.wait(self.interval):
            cur, procs, now = self._read(), process_ticks(), time.monotonic()
            total = max(1, cur[0] - prev[0])
            split = {"mine": 0, "other": 0}
            wait_ns = 0
            self._sample_links(procs)
            for pid, (user, system, ns, comm, wait, minflt, majflt) in procs.items():
                before = prev_procs.get(pid, Ticks())
                if ns in self.mine:
                    wait_ns += max(0, wait - before.wait_ns)
                du, ds = max(0, user - before.user), max(0, system - before.system)
                split["mine" if ns in self.mine else "other"] += du + ds
                key = comm if ns in self.mine else "(outside the testbed)"
                acc = self.by_process.setdefault(key, [0.0, 0.0])
                acc[0] += du / self._hz
                acc[1] += ds / self._hz
                faults = self.faults.setdefault(key, [0, 0])
                faults[0] += max(0, minflt - before.minflt)
                faults[1] += max(0, majflt - before.majflt)
            span = (now - prev_t) * self._hz
            self.samples.append({
                "t": time.time(),
                "busy": 1 - (cur[1] - prev[1]) / total,
                "iowait": (cur[2] - prev[2]) / total,
                "mine_cores": split["mine"] / span,
                "other_cores": split["other"] / span,
                "mine_runqueue_wait": wait_ns / 1e9 / (now - prev_t),
            })  # fmt: skip
            prev, prev_procs, prev_t = cur, procs, now

    def _sample_links(self, procs: dict[int, Ticks]) -> None:
        """eth0's byte counters of every testbed namespace, read through one of its processes
        (``/proc/PID/net/dev`` shows the process's namespace: no subprocess per sample)."""
        now = time.time()
        seen: set[int] = set()
        for pid, ticks in procs.items():
            ns = ticks.ns
            if ns not in self.mine or ns in seen:
                continue
            counters = eth0_bytes(pid)
            if counters is not None:
                seen.add(ns)
                self.links.setdefault(ns, []).append((now, *counters))

    def __enter__(self) -> CpuSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
        """Means (and busy p90) over the samples inside ``[start, end]``."""
        keep = [s for s in self.samples if start <= s["t"] - self.interval and s["t"] <= end]
        if not keep:
            return {}
        out = {k: statistics.fmean(s[k] for s in keep) for k in keep[0] if k != "t"}
        out = {f"{k}_mean": v for k, v in out.items()}
        out["busy_p90"] = float(np.percentile([s["busy"] for s in keep], 90))
        out["samples"] = len(keep)
        return out


def wait_for_quiet(mine: set[int], args: argparse.Namespace) -> dict[str, float]:
    """Wait (at most ``--quiet-wait`` s) until processes outside the testbed use less than
    ``--quiet-cores`` cores over 3 s: other users of this shared machine skew the figures."""
    deadline = time.monotonic() + args.quiet_wait
    while True:
        with CpuSampler(mine) as cpu:
            time.sleep(3)
        other = cpu.summary().get("other_cores_mean", 0.0)
        if other < args.quiet_cores or time.monotonic() > deadline:
            return {"other_cores_before": other, "quiet": other < args.quiet_cores}
        time.sleep(2)


def make_payload(path: Path, size: int, seed: int = 4) -> str:
    """Write ``size`` random bytes to ``path``; return their sha256."""
    rng = np.random.default_rng(seed)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = rng.bytes(min(left, 64 << 20))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def run_method(tb: Testbed, method: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One timed method-run inside host 0; returns the driver's JSON plus CPU and wire bytes."""
    cfg = tb.config
    dest = cfg.root / "dest" / method
    shutil.rmtree(dest, ignore_errors=True)
    argv = [
        sys.executable,
        "-m",
        "bench.broadcast.driver",
        "--method",
        method,
        "--origin",
        cfg.origin_url,
        "--name",
        name,
        "--dest-dir",
        str(dest),
    ]
    for extra in args.rayfly_arg:
        argv.append(f"--rayfly-arg={extra}")  # a value that starts with "--" stays a value
    wire0 = tb.iface_bytes(cfg.origin_ns)
    hosts0 = [tb.iface_bytes(cfg.host_ns(i)) for i in range(cfg.hosts)]
    segs0 = [tb.tcp_segments(cfg.host_ns(i)) for i in range(cfg.hosts)]
    inode = {ns: os.stat(f"/var/run/netns/{ns}").st_ino for ns in cfg.namespaces()}
    mine = set(inode.values())
    quiet = wait_for_quiet(mine, args)
    with CpuSampler(mine) as cpu:
        proc = tb.run_in(cfg.host_ns(0), argv, timeout=args.run_timeout, check=False)
    wire1 = tb.iface_bytes(cfg.origin_ns)
    hosts1 = [tb.iface_bytes(cfg.host_ns(i)) for i in range(cfg.hosts)]
    if proc.returncode != 0:
        return {"method": method, "error": (proc.stderr or proc.stdout)[-4000:], "hosts": []}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["cpu"] = cpu.summary(out.get("t_start", 0.0), out.get("t_end", float("inf")))
    out["cpu_whole_driver"] = cpu.summary()
    out["cpu"].update(quiet)
    top = sorted(cpu.by_process.items(), key=lambda kv: -sum(kv[1]))[:12]
    out["cpu_seconds_by_process"] = {k: {"user": u, "system": sy} for k, (u, sy) in top}
    out["page_faults_by_process"] = {
        k: {"minor": minor, "major": major} for k, (minor, major) in sorted(cpu.faults.items())
    }
    start, end = out.get("t_start", 0.0), out.get("t_end", float("inf"))
    rate = cfg.rate_mbit * 1e6 / 8
    origin_rate = (cfg.origin_rate_mbit or cfg.rate_mbit) * 1e6 / 8
    out["links"] = {
        "origin": link_use(cpu.links.get(inode[cfg.origin_ns], []), start, end, origin_rate),
        "hosts": [
            link_use(cpu.links.get(inode[cfg.host_ns(i)], []), start, end, rate)
            for i in range(cfg.hosts)
        ],
    }
    out["links"]["series"] = {
        "origin_tx": rate_series(
            cpu.links.get(inode[cfg.origin_ns], []), start, end, origin_rate, 2
        ),
        "hosts_rx": [
            rate_series(cpu.links.get(inode[cfg.host_ns(i)], []), start, end, rate, 1)
            for i in range(cfg.hosts)
        ],
    }
    out["origin_wire_tx_bytes"] = wire1["tx"] - wire0["tx"]
    out["host_wire_tx_bytes"] = [b["tx"] - a["tx"] for a, b in zip(hosts0, hosts1, strict=True)]
    segs1 = [tb.tcp_segments(cfg.host_ns(i)) for i in range(cfg.hosts)]
    out["host_tcp_segments"] = [
        {k: b[k] - a[k] for k in a} for a, b in zip(segs0, segs1, strict=True)
    ]
    return out


def retrans_line(result: dict[str, Any]) -> str:
    """The share of the hosts' TCP segments that were retransmissions, for the log."""
    segs = result.get("host_tcp_segments") or []
    sent = sum(s["out"] for s in segs)
    return f"retrans={sum(s['retrans'] for s in segs) / sent:.1%} " if sent else ""


def links_line(links: dict[str, Any]) -> str:
    """The origin's link done at, and the hosts' download links' mean use, for the log."""
    hosts = [h["rx_share"] for h in links.get("hosts", []) if h]
    origin = links.get("origin") or {}
    if not hosts or not origin:
        return ""
    return (
        f"origin_done={origin['tx_done_s']:.1f}s "
        f"host_rx={statistics.fmean(hosts):.0%} (min {min(hosts):.0%})"
    )


def parents_line(result: dict[str, Any]) -> str:
    """The parents' speed as the hosts saw it (``by_parent``, from rayfly's ``--timeline``):
    the range over parents of the median of their children's piece p50, and the slowest; and the
    hosts' mean pieces in flight (``inflight_mean``); and the scheduler's answers to the
    peers' asks for pieces (``rayfly status``: given, and why not)."""
    seen: dict[str, list[float]] = {}
    for host in result.get("hosts", []):
        for parent, got in (host.get("by_parent") or {}).items():
            if parent != "origin":
                seen.setdefault(parent, []).append(got["p50_s"])
    if not seen:
        return ""
    medians = {p: statistics.median(v) for p, v in seen.items()}
    slowest = max(medians, key=lambda p: medians[p])
    busy = [h["inflight_mean"] for h in result["hosts"] if h.get("inflight_mean") is not None]
    inflight = f"inflight={min(busy):.1f}-{max(busy):.1f} " if busy else ""
    asks = (result.get("extra") or {}).get("asks") or {}
    short = (
        f"asks given={asks['given']}/{asks['asked']} (busy {asks['busy']}, "
        f"origin {asks['origin']}, none {asks['none']}) "
        if asks
        else ""
    )
    return (
        f"parents_p50={min(medians.values()):.2f}-{medians[slowest]:.2f}s (slowest {slowest}) "
        + inflight
        + short
    )


def verify(result: dict[str, Any], sha: str, size: int, dest: Path) -> None:
    """Check every host's copy against the payload's sha256, then delete the copies."""
    for host in result["hosts"]:
        path = Path(host.get("path") or "")
        host["verified"] = path.is_file() and path.stat().st_size == size and sha256_of(path) == sha
    shutil.rmtree(dest, ignore_errors=True)


def machine_info() -> dict[str, Any]:
    """What this ran on."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def limited_hosts(n: int, rate: str | None) -> dict[int, dict[str, str]]:
    """``RAYFLY_UPLOAD_RATE`` for the second half of the hosts (host 0 runs the driver and
    stays unlimited), so the others have to take over their uploads."""
    if not rate:
        return {}
    return {i: {"RAYFLY_UPLOAD_RATE": rate} for i in range(n - n // 2, n)}


def bench_hosts(
    n: int, runs: int, args: argparse.Namespace, doc: dict[str, Any], out: Path
) -> None:
    """All runs for one N on a fresh testbed."""
    size = args.size_mib << 20
    cfg = TestbedConfig(
        hosts=n,
        prefix=args.prefix,
        subnet=args.subnet,
        rate_mbit=args.rate_mbit,
        origin_rate_mbit=args.origin_rate_mbit,
        latency_ms=args.latency_ms,
        tcp_cc=args.tcp_cc,
        mtu=args.mtu,
        nice=args.nice,
        object_store_bytes=max(1 << 30, 2 * size + (256 << 20)),
        extra_env={
            "RAYFLY_CACHE_DIR": f"/tmp/{args.prefix}-tb/cache",
            "RAYFLY_CACHE_QUOTA": str(2 * size + (64 << 20)),
            **(PREALLOCATE if args.preallocate_object_store else {}),
        },
        host_env=limited_hosts(n, args.upload_limit),
    )
    with Testbed(cfg) as tb:
        sha = make_payload(cfg.root / "origin" / "payload.bin", size)
        (cfg.root / "origin" / "warm.bin").write_bytes(os.urandom(1 << 20))
        mine = {os.stat(f"/var/run/netns/{ns}").st_ino for ns in cfg.namespaces()}
        with CpuSampler(mine) as idle:
            time.sleep(5)
        doc.setdefault("testbed_idle_cpu", {})[str(n)] = idle.summary()
        doc.setdefault("testbed_tcp_cc", {})[str(n)] = tb.tcp_cc()
        if "rayfly" in args.methods:
            run_method(tb, "rayfly", "warm.bin", args)  # creates the scheduler and peers
        for run in range(runs):
            order = (
                args.methods[run % len(args.methods) :] + args.methods[: run % len(args.methods)]
            )
            for method in order:
                name = f"payload-{run}-{method}.bin"
                os.link(cfg.root / "origin" / "payload.bin", cfg.root / "origin" / name)
                t = time.time()
                result = run_method(tb, method, name, args)
                result.update(
                    n=n,
                    run=run,
                    size=size,
                    rate_mbit=args.rate_mbit,
                    origin_rate_mbit=args.origin_rate_mbit or args.rate_mbit,
                    upload_limit=args.upload_limit,
                    started=t,
                    driver_wall_s=time.time() - t,
                )
                verify(result, sha, size, cfg.root / "dest" / method)
                doc["runs"].append(result)
                out.write_text(dumps(doc))
                secs = [h["seconds"] for h in result["hosts"]]
                print(
                    f"N={n} run={run} {method:7s} makespan={max(secs, default=float('nan')):.2f}s "
                    f"origin={result.get('origin', {}).get('bytes_served', 0) / size:.2f}xS "
                    f"cpu={result.get('cpu', {}).get('busy_mean', float('nan')):.2f} "
                    f"{links_line(result.get('links', {}))} {retrans_line(result)}"
                    f"{parents_line(result)}"
                    f"ok={all(h.get('verified') for h in result['hosts'])}"
                    f"{' ERROR ' + result['error'][-300:] if 'error' in result else ''}",
                    flush=True,
                )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.broadcast", description=__doc__)
    parser.add_argument("--hosts", default="2,4,8", help="comma-separated N values")
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--origin-rate-mbit", type=float)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument(
        "--tcp-cc",
        default=None,
        help="TCP congestion control of every namespace (default: the machine's, inherited)",
    )
    parser.add_argument(
        "--preallocate-object-store",
        action="store_true",
        help="RAY_preallocate_plasma_memory=1 on every host: each object store's memory is "
        "touched at ray start, not during the first runs (on 2 cores, N hosts' first touch "
        "of their object stores slows the first large distribution)",
    )
    parser.add_argument("--append", action="store_true", help="add to the runs already in --out")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--nice", type=int, default=0, help="niceness of the testbed's processes")
    parser.add_argument("--runs", default="3", help="runs per N: one number, or one per N")
    parser.add_argument("--quiet-cores", type=float, default=0.4)
    parser.add_argument("--quiet-wait", type=float, default=120.0)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--rayfly-arg",
        action="append",
        default=[],
        help="extra argument for rayfly distribute, repeatable",
    )
    parser.add_argument(
        "--upload-limit",
        default=None,
        metavar="RATE",
        help="RAYFLY_UPLOAD_RATE (e.g. 2MiB) on the second half of the hosts",
    )
    parser.add_argument("--prefix", default="rfy")
    parser.add_argument("--subnet", default="10.213.0")
    parser.add_argument("--run-timeout", type=float, default=1800.0)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench/results/broadcast.json"))
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "command": " ".join(["python -m bench.broadcast", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "args": vars(args),
        "runs": [],
    }
    hosts = [int(x) for x in args.hosts.split(",")]
    runs = [int(x) for x in args.runs.split(",")]
    runs = runs * len(hosts) if len(runs) == 1 else runs
    if len(runs) != len(hosts):
        parser.error("--runs takes one number or one per --hosts value")
    if args.append and out.exists():
        previous = json.loads(out.read_text())
        doc["runs"] = previous["runs"]
        doc["testbed_idle_cpu"] = previous.get("testbed_idle_cpu", {})
        doc["command"] = previous["command"] + " ; " + doc["command"]
    for n, r in zip(hosts, runs, strict=True):
        bench_hosts(n, r, args, doc, out)
    doc["summary"] = summarize(doc)
    out.write_text(dumps(doc))
    write_outputs(doc, out, Path(args.plot) if args.plot else out.with_suffix(".png"))


if __name__ == "__main__":
    main()
