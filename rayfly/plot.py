"""Pictures and tables of a distribution: who got which bytes when, from the origin or from
which peer (:func:`timeline_rows`, a table, a CSV or Parquet file, a plot).

matplotlib is optional (``pip install 'rayfly[notebook]'``); without it :func:`plot_timeline`
raises :class:`~rayfly.errors.MissingDependency` that says what to install.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayfly.errors import InvalidInput, MissingDependency

if TYPE_CHECKING:
    from rayfly.report import Report

INSTALL_HINT = "pip install matplotlib (or pip install 'rayfly[notebook]')"
TIMELINE_FORMATS = (".csv", ".parquet")
TIMELINE_COLUMNS = (
    "node_id",
    "time_s",
    "nbytes",
    "from_origin",
    "parent",
    "seconds",
    "cumulative_bytes",
)


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependency(
            f"Report.plot() draws with matplotlib, which is not installed ({exc}); "
            f"to get the picture: {INSTALL_HINT}"
        ) from None
    return plt


def timeline_rows(report: Report) -> list[dict[str, Any]]:
    """Every piece every node fetched, as rows of :data:`TIMELINE_COLUMNS`.

    ``time_s`` counts from the first piece that landed anywhere; ``parent`` is the node id of
    the peer the piece came from (None: the origin); ``seconds`` is how long the piece took to
    land from when its node began it; ``cumulative_bytes`` is the node's running total.
    """
    stamps = [entry.time for n in report.nodes for entry in n.timeline]
    t0 = min(stamps) if stamps else 0.0
    rows: list[dict[str, Any]] = []
    for node in report.nodes:
        total = 0
        for entry in sorted(node.timeline):
            total += entry.nbytes
            rows.append(
                {
                    "node_id": node.node_id,
                    "time_s": round(entry.time - t0, 6),
                    "nbytes": entry.nbytes,
                    "from_origin": entry.from_origin,
                    "parent": entry.parent or None,
                    "seconds": round(entry.seconds, 6),
                    "cumulative_bytes": total,
                }
            )
    return rows


def timeline_table(report: Report) -> Any:
    """:func:`timeline_rows` as a ``pyarrow.Table`` (``.to_pandas()`` for a DataFrame)."""
    import pyarrow as pa

    rows = timeline_rows(report)
    if not rows:
        return pa.table({c: [] for c in TIMELINE_COLUMNS})
    return pa.Table.from_pylist(rows)


def check_timeline_path(path: str | Path) -> Path:
    """``path`` if a timeline can be written there: a ``.csv`` or ``.parquet`` name in an
    existing, writable directory (checked before a distribution starts, not after it)."""
    p = Path(path)
    if p.suffix.lower() not in TIMELINE_FORMATS:
        raise InvalidInput(
            f"timeline file {str(p)!r}: name it *.csv or *.parquet (the suffix picks the format)"
        )
    folder = p.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInput(
            f"timeline file {str(p)!r}: directory {str(folder)!r} does not exist or is not "
            "writable; create it or choose another path"
        )
    if p.is_dir():
        raise InvalidInput(f"timeline file {str(p)!r} is a directory; give a file name")
    return p


def write_timeline(report: Report, path: str | Path) -> Path:
    """Write :func:`timeline_table` to ``path`` (CSV or Parquet, by its suffix) atomically: a
    reader sees the old file or the whole new one, never a part."""
    import pyarrow.csv
    import pyarrow.parquet

    target = check_timeline_path(path)
    table = timeline_table(report)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        if target.suffix.lower() == ".csv":
            pyarrow.csv.write_csv(table, tmp)
        else:
            pyarrow.parquet.write_table(table, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def plot_timeline(report: Report, ax: Any = None) -> Any:
    """Draw bytes received over time per node; solid: all bytes, dashed: bytes from the origin.

    Returns the matplotlib ``Axes`` (a new figure unless ``ax`` is given).
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    rows = timeline_rows(report)
    mib = float(1 << 20)
    for i, node in enumerate(report.nodes):
        mine = [r for r in rows if r["node_id"] == node.node_id]
        color = f"C{i % 10}"
        times = [0.0] + [r["time_s"] for r in mine]
        got = [0.0] + [r["cumulative_bytes"] / mib for r in mine]
        ax.step(times, got, where="post", color=color, label=f"{node.node_id[:8]} all")
        origin = [0.0]
        for r in mine:
            origin.append(origin[-1] + (r["nbytes"] / mib if r["from_origin"] else 0.0))
        ax.step(times, origin, where="post", color=color, linestyle="--", alpha=0.7)
    ax.set_xlabel("seconds since the first piece")
    ax.set_ylabel("MiB received")
    ax.set_title(
        f"{report.source}: {report.nodes_ok}/{len(report.nodes)} nodes "
        "(solid: all bytes, dashed: from the origin)",
        fontsize="small",
    )
    if report.nodes:
        ax.legend(fontsize="x-small", loc="lower right")
    return ax
