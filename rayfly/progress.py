"""Live progress for notebooks and scripts: a ``tqdm.auto`` bar as a ``distribute`` callback.

``rayfly.distribute(src, dest, progress=ProgressBar())`` shows a bar of bytes across all nodes
(a widget in Jupyter, text elsewhere). Without tqdm it prints one line per 10 % instead.
"""

from __future__ import annotations

import sys
from typing import Any


class ProgressBar:
    """A ``progress(bytes_done, bytes_total, nodes_done, nodes_total)`` callback on tqdm."""

    def __init__(self, desc: str = "rayfly", stream: Any = None) -> None:
        self.desc = desc
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._printed = -1
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        self._tqdm = tqdm

    def __call__(self, done: int, total: int, nodes_done: int, nodes: int) -> None:
        if self._tqdm is None:
            self._print(done, total, nodes_done, nodes)
            return
        if self._bar is None:
            self._bar = self._tqdm(
                total=total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024
            )
        self._bar.total = total
        self._bar.n = done
        self._bar.set_postfix_str(f"nodes {nodes_done}/{nodes}", refresh=False)
        self._bar.refresh()

    def _print(self, done: int, total: int, nodes_done: int, nodes: int) -> None:
        tenth = int(10 * done / total) if total else 10
        if tenth > self._printed:
            self._printed = tenth
            print(
                f"{self.desc}: {10 * tenth}% of {total} bytes, nodes {nodes_done}/{nodes}",
                file=self.stream,
            )

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
