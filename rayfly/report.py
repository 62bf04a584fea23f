"""How a distribution is shown: the :class:`Report` (totals, JSON, tables, plots, text).

The per-node and per-file records it shows are in :mod:`rayfly.protocol`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayfly.protocol import NodeResult


@dataclass
class Report:
    """The outcome of one ``distribute`` call across every chosen node.

    ``warnings``: what the user should know although nothing failed (an origin that gives no
    validator, so nothing cached can be trusted for it). ``started_at``: when the distribution
    began (Unix time; each node's ``seconds`` count from it), to line the report up with other
    clocks (logs, link counters).
    """

    source: str
    dest: str
    nodes: list[NodeResult]
    source_bytes: int
    makespan_s: float
    task_ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    started_at: float = 0.0

    @property
    def origin_bytes(self) -> int:
        """Bytes the nodes read from the origin."""
        return sum(n.bytes_from_origin for n in self.nodes)

    @property
    def nodes_ok(self) -> int:
        """Nodes that hold a verified copy at their destination."""
        return sum(1 for n in self.nodes if n.ok)

    @property
    def nodes_failed(self) -> int:
        """Nodes that do not."""
        return len(self.nodes) - self.nodes_ok

    @property
    def ok(self) -> bool:
        """True when every chosen node succeeded."""
        return bool(self.nodes) and self.nodes_failed == 0

    def totals(self) -> dict[str, Any]:
        """The report's totals."""
        return {
            "origin_bytes": self.origin_bytes,
            "source_bytes": self.source_bytes,
            "makespan_s": round(self.makespan_s, 3),
            "nodes_ok": self.nodes_ok,
            "nodes_failed": self.nodes_failed,
        }

    def to_dict(self, files: bool = True) -> dict[str, Any]:
        """The report as plain data (what ``--json`` prints)."""
        nodes = []
        for n in self.nodes:
            row = n.row()
            row["parents"] = n.parents
            if files:
                row["files"] = [asdict(f) for f in n.files]
            nodes.append(row)
        return {
            "source": self.source,
            "dest": self.dest,
            "task_ids": self.task_ids,
            "warnings": self.warnings,
            "started_at": round(self.started_at, 3),
            "nodes": nodes,
            "totals": self.totals(),
        }

    def to_json(self) -> str:
        """The report as one JSON document."""
        return json.dumps(self.to_dict(), indent=2)

    def to_arrow(self) -> Any:
        """One row per node as a ``pyarrow.Table``."""
        import pyarrow as pa

        return pa.Table.from_pylist([n.row() for n in self.nodes])

    def to_pandas(self) -> Any:
        """One row per node as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            from rayfly.errors import MissingDependency

            raise MissingDependency(
                "Report.to_pandas() needs pandas: pip install pandas; "
                "Report.to_arrow() gives the same table without it"
            ) from None
        return self.to_arrow().to_pandas()

    def timeline_table(self) -> Any:
        """Every piece each node fetched (time, bytes, from the origin or which parent, seconds)
        as a pyarrow table."""
        from rayfly.plot import timeline_table

        return timeline_table(self)

    def write_timeline(self, path: str | Path) -> Path:
        """Write :meth:`timeline_table` to ``path``: ``*.csv`` or ``*.parquet``, atomically."""
        from rayfly.plot import write_timeline

        return write_timeline(self, path)

    def plot(self, ax: Any = None) -> Any:
        """Draw each node's bytes over time, origin vs peers; returns the matplotlib Axes.

        Needs matplotlib; without it raises :class:`~rayfly.errors.MissingDependency` saying
        what to install.
        """
        from rayfly.plot import plot_timeline

        return plot_timeline(self, ax)

    def __str__(self) -> str:
        t = self.totals()
        ratio = t["origin_bytes"] / t["source_bytes"] if t["source_bytes"] else 0.0
        lines = [
            f"{t['nodes_ok']}/{len(self.nodes)} nodes ok in {t['makespan_s']:.2f}s; "
            f"origin served {t['origin_bytes']} bytes ({ratio:.2f}x the source)"
        ]
        for n in self.nodes:
            state = "ok " if n.ok else "FAILED"
            lines.append(
                f"  {state} {n.node_id[:12]} {n.node_ip:<15} {n.path}  "
                f"{n.bytes}B {n.seconds:.2f}s origin={n.bytes_from_origin} "
                f"peers={n.bytes_from_peers}" + (f"  error: {n.error}" if n.error else "")
            )
        return "\n".join(lines)
