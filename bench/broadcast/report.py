"""Summary, plot and Markdown table of a broadcast benchmark JSON.

``python -m bench.broadcast.report bench/results/broadcast.json`` remakes the summary, the PNG
beside it, and prints the Markdown table that docs/BENCHMARKS.md carries.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

METHOD_LABEL = {
    "rayfly": "rayfly",
    "plain": "every host from origin",
    "ray": "Ray broadcast",
    "chain": "TCP chain (floor)",
}


_NUMBER = r"-?[0-9][0-9.eE+-]*"
_NUMBERS = re.compile(rf"\[\s*({_NUMBER}(?:,\s*{_NUMBER})*)\s*\]")
_ROWS = re.compile(r"\[\s*(\[[^\[\]\n]*\](?:,\s*\[[^\[\]\n]*\])*)\s*\]")


def dumps(doc: dict[str, Any]) -> str:
    """``doc`` as JSON, a key per line but every list of numbers (and list of such lists) on
    one line: the per-interval link series would otherwise take lines per number."""
    text = json.dumps(doc, indent=1)
    text = _NUMBERS.sub(lambda m: "[" + re.sub(r",\s*", ",", m.group(1)) + "]", text)
    return _ROWS.sub(lambda m: "[" + re.sub(r"\],\s*\[", "],[", m.group(1)) + "]", text)


def ideal_seconds(size: int, rate_mbit: float) -> float:
    """S / B: one link's time for the file."""
    return size / (rate_mbit * 1e6 / 8)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Medians per (N, method) over successful runs, and ratios against rayfly in the same run."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for run in doc["runs"]:
        groups[(run["n"], run["method"])].append(run)
    by_run = {(r["n"], r["run"], r["method"]): r for r in doc["runs"] if _ok(r)}
    rows = []
    for (n, method), runs in sorted(groups.items()):
        good = [r for r in runs if _ok(r)]
        size, rate = runs[0]["size"], runs[0]["rate_mbit"]
        makespans = [max(h["seconds"] for h in r["hosts"]) for r in good]
        p50s = [statistics.median(h["seconds"] for h in r["hosts"]) for r in good]
        ratios = {}
        for other in ("plain", "ray", "chain"):
            pairs = [
                (by_run[(n, r["run"], other)], r)
                for r in good
                if (n, r["run"], other) in by_run and method == "rayfly"
            ]
            if pairs:
                ratios[f"{other}_over_rayfly"] = _median(
                    [_makespan(o) / _makespan(r) for o, r in pairs]
                )
        rows.append(
            {
                "n": n,
                "method": method,
                "runs": len(runs),
                "ok_runs": len(good),
                "size": size,
                "rate_mbit": rate,
                "ideal_s": ideal_seconds(size, rate),
                "makespan_s": _median(makespans),
                "makespans_s": makespans,
                "p50_s": _median(p50s),
                "makespan_over_ideal": _median(makespans) / ideal_seconds(size, rate),
                "origin_bytes_over_s": _median([r["origin"]["bytes_served"] / size for r in good]),
                "origin_wire_over_s": _median(
                    [r.get("origin_wire_tx_bytes", 0) / size for r in good]
                ),
                "cpu_busy_mean": _median(
                    [r.get("cpu", {}).get("busy_mean", float("nan")) for r in good]
                ),
                "cpu_testbed_cores": _median(
                    [r.get("cpu", {}).get("mine_cores_mean", float("nan")) for r in good]
                ),
                "cpu_testbed_wait": _median(
                    [r.get("cpu", {}).get("mine_runqueue_wait_mean", float("nan")) for r in good]
                ),
                "cpu_other_cores": _median(
                    [r.get("cpu", {}).get("other_cores_mean", float("nan")) for r in good]
                ),
                "cpu_busy_p90": _median(
                    [r.get("cpu", {}).get("busy_p90", float("nan")) for r in good]
                ),
                **ratios,
            }
        )
    return rows


def _ok(run: dict[str, Any]) -> bool:
    hosts = run.get("hosts") or []
    return "error" not in run and bool(hosts) and all(h.get("verified") for h in hosts)


def _makespan(run: dict[str, Any]) -> float:
    return max(h["seconds"] for h in run["hosts"])


def _num(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


def markdown(doc: dict[str, Any]) -> str:
    """The results table for docs/BENCHMARKS.md."""
    lines = [
        "| N | method | S | B | runs ok | makespan (median) | p50 | makespan/(S/B) "
        "| origin bytes/S | vs rayfly | CPU busy mean / p90 | cores: testbed / others "
        "| testbed run-queue wait (s/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["summary"]:
        vs = ""
        if row["method"] == "rayfly" and "plain_over_rayfly" in row:
            vs = f"plain {row['plain_over_rayfly']:.2f}x"
            if "ray_over_rayfly" in row:
                vs += f", Ray {row['ray_over_rayfly']:.2f}x"
        if row["method"] == "rayfly" and "chain_over_rayfly" in row:
            vs += (", " if vs else "") + f"{1 / row['chain_over_rayfly']:.2f}x the chain"
        lines.append(
            f"| {row['n']} | {METHOD_LABEL[row['method']]} | {row['size'] >> 20} MiB "
            f"| {row['rate_mbit']:g} Mbit/s | {row['ok_runs']}/{row['runs']} "
            f"| {row['makespan_s']:.1f} s | {row['p50_s']:.1f} s "
            f"| {row['makespan_over_ideal']:.2f} | {row['origin_bytes_over_s']:.2f} | {vs} "
            f"| {row['cpu_busy_mean']:.0%} / {row['cpu_busy_p90']:.0%} "
            f"| {row.get('cpu_testbed_cores', float('nan')):.2f} / "
            f"{row.get('cpu_other_cores', float('nan')):.2f} "
            f"| {_num(row.get('cpu_testbed_wait', float('nan')))} |"
        )
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Left: per-host completion CDF per method at the largest N; right: makespan against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in doc["runs"] if _ok(r)]
    if not runs:
        return
    big = max(r["n"] for r in runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in METHOD_LABEL:
        times = sorted(
            h["seconds"]
            for r in runs
            if r["n"] == big and r["method"] == method
            for h in r["hosts"]
        )
        if times:
            frac = [(i + 1) / len(times) for i in range(len(times))]
            left.step(times, frac, where="post", label=METHOD_LABEL[method])
    ideal = ideal_seconds(runs[0]["size"], runs[0]["rate_mbit"])
    left.axvline(ideal, color="grey", linestyle=":", label="S/B")
    left.set(
        xlabel="seconds to complete (per host, all runs)",
        ylabel="fraction of hosts",
        title=f"N={big}, S={runs[0]['size'] >> 20} MiB, B={runs[0]['rate_mbit']:g} Mbit/s",
    )
    left.set_ylim(0, 1.05)
    left.set_xlim(left=0)
    left.legend(loc="lower right")
    for method in METHOD_LABEL:
        rows = [s for s in doc["summary"] if s["method"] == method and s["ok_runs"]]
        if rows:
            right.plot(
                [s["n"] for s in rows],
                [s["makespan_s"] for s in rows],
                marker="o",
                label=METHOD_LABEL[method],
            )
    right.axhline(ideal, color="grey", linestyle=":", label="S/B")
    right.set(xlabel="hosts N", ylabel="makespan, median (s)", title="makespan against N")
    right.set_ylim(bottom=0)
    right.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _link_mean(series: list[list[list[float]]], start: float, end: float) -> float:
    """The hosts' mean link use (share of B) over samples taken in ``[start, end)``."""
    values = [v for host in series for t, v in host if start <= t < end]
    return statistics.fmean(values) if values else float("nan")


def phases(run: dict[str, Any]) -> dict[str, Any]:
    """Where one rayfly run lost link time: the hosts' download links over the first 4 s (the
    start, before pieces spread) and from 6 s to the origin's last byte (the main phase), the
    busiest host's share of B over the first 1.6 s (one node reading every first piece shows
    here), and the MiB each host read from the origin."""
    hosts_rx = run["links"]["series"]["hosts_rx"]
    done = run["links"]["origin"]["tx_done_s"]
    first = [statistics.fmean([v for t, v in h if t < 1.6] or [0.0]) for h in hosts_rx]
    return {
        "run": run["run"],
        "piece_mib": (run.get("extra") or {}).get("piece_size", 0) / (1 << 20),
        "makespan_s": _makespan(run),
        "origin_done_s": done,
        "links_start": _link_mean(hosts_rx, 0.0, 4.0),
        "links_main": _link_mean(hosts_rx, 6.0, done),
        "first_busiest": max(first),
        "reads_mib": [round(h["bytes_from_origin"] / (1 << 20)) for h in run["hosts"]],
    }


def phases_table(doc: dict[str, Any]) -> str:
    """:func:`phases` of every successful rayfly run, as a Markdown table."""
    lines = [
        "| run | piece | makespan | origin done | links, first 4 s | links, 6 s to origin done "
        "| busiest host, first 1.6 s | MiB read from the origin per host |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in doc["runs"]:
        if run["method"] != "rayfly" or not _ok(run) or "series" not in run.get("links", {}):
            continue
        p = phases(run)
        lines.append(
            f"| {p['run']} | {p['piece_mib']:g} MiB | {p['makespan_s']:.2f} s "
            f"| {p['origin_done_s']:.1f} s | {p['links_start']:.2f} | {p['links_main']:.2f} "
            f"| {p['first_busiest']:.2f} | {min(p['reads_mib'])}-{max(p['reads_mib'])} |"
        )
    return "\n".join(lines)


CPU_COLUMNS = {
    "peers": ("ray::Peer",),
    "raylets": ("raylet",),
    "scheduler": ("ray::Scheduler",),
    "chain": ("ray::chain_link",),
    "origin, drivers": ("python3.11", "rayfly"),
    "outside the testbed": ("(outside the testbed)",),
}


def cpu_budget(run: dict[str, Any]) -> dict[str, float]:
    """Where one run's CPU went: each of :data:`CPU_COLUMNS`' share of the CPU seconds the
    testbed's processes and the rest of the machine spent over the whole driver run (setup and
    checks included; ``rest``: Ray's GCS, dashboard, idle workers); ``cores``: the cores busy
    on average while the file moved (testbed and the rest), and ``per_gib``: the CPU seconds
    that makes per GiB the hosts received."""
    spent = {k: v["user"] + v["system"] for k, v in run["cpu_seconds_by_process"].items()}
    whole = sum(spent.values())
    out = {col: sum(spent.pop(c, 0.0) for c in comms) / whole for col, comms in CPU_COLUMNS.items()}
    out["rest"] = sum(spent.values()) / whole
    cores = run["cpu"]["mine_cores_mean"] + run["cpu"]["other_cores_mean"]
    delivered_gib = run["n"] * run["size"] / (1 << 30)
    return {**out, "cores": cores, "per_gib": cores * _makespan(run) / delivered_gib}


def cpu_table(doc: dict[str, Any], cores: float = 2.0) -> str:
    """Medians of :func:`cpu_budget` per (N, method) over successful runs, as a Markdown table;
    ``carries``: the rate per host that ``cores`` fully busy would deliver at that CPU cost
    per byte (on this machine the makespan cannot be shorter than S over it)."""
    groups: dict[tuple[int, str], list[dict[str, float]]] = defaultdict(list)
    for run in doc["runs"]:
        if _ok(run) and "cpu_seconds_by_process" in run and "cpu" in run:
            groups[(run["n"], run["method"])].append(cpu_budget(run))
    shares = [*CPU_COLUMNS, "rest"]
    lines = [
        "| N | method | " + " | ".join(shares) + " | cores busy while it moved "
        f"| CPU-s per GiB received | {cores:g} cores carry (Mbit/s per host) |",
        "|" + "---|" * (len(shares) + 5),
    ]
    for (n, method), budgets in sorted(groups.items()):
        med = {k: _median([b[k] for b in budgets]) for k in (*shares, "cores", "per_gib")}
        carries = cores / med["per_gib"] * (1 << 30) * 8 / 1e6 / n
        cells = " | ".join(f"{med[k]:.0%}" for k in shares)
        lines.append(
            f"| {n} | {METHOD_LABEL[method]} | {cells} | {med['cores']:.2f} "
            f"| {med['per_gib']:.1f} | {carries:.0f} |"
        )
    return "\n".join(lines)


def write_outputs(doc: dict[str, Any], json_path: Path, png_path: Path) -> None:
    """Summary into the JSON, the PNG, and the Markdown table on stdout."""
    doc["summary"] = summarize(doc)
    json_path.write_text(dumps(doc))
    plot(doc, png_path)
    print(markdown(doc))


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json")
    parser.add_argument("--plot", default=None)
    parser.add_argument(
        "--phases", action="store_true", help="print where each rayfly run lost link time, only"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="print each method's CPU seconds by process, only"
    )
    args = parser.parse_args()
    path = Path(args.json)
    doc = json.loads(path.read_text())
    if args.phases:
        print(phases_table(doc))
        return
    if args.cpu:
        print(cpu_table(doc))
        return
    write_outputs(doc, path, Path(args.plot) if args.plot else path.with_suffix(".png"))


if __name__ == "__main__":
    main()
