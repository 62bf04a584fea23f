"""What the parts of rayfly say to each other, without Ray.

A client asks a peer for a :class:`FetchRequest` (of :class:`FetchItem`); the scheduler hands a
peer :class:`Assignment` in a :class:`Batch`; a peer reports :class:`Done` and :class:`Failed`
pieces; a peer answers a request with one :class:`NodeResult` (of :class:`FileResult`).
This module imports nothing from rayfly but :mod:`rayfly.task`, so every layer may use it.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rayfly.task import Cut, TaskInfo


@dataclass(frozen=True)
class FetchItem:
    """One task of a request, and where it lands relative to the destination; for a pack
    (``task.members``), where each member lands (``relpaths``, in the members' order)."""

    task: TaskInfo
    relpath: str | None = None
    relpaths: tuple[str, ...] = ()


def single_file(items: list[FetchItem]) -> bool:
    """True when ``items`` are one file put at the destination itself (not a prefix, not a
    pack)."""
    return len(items) == 1 and items[0].relpath is None and not items[0].task.members


@dataclass(frozen=True)
class FetchRequest:
    """What a client asks of a peer: these tasks, published under ``dest`` (a template)."""

    items: list[FetchItem]
    dest: str | None
    concurrency: int = 8
    files_in_parallel: int = 4
    limit_rate: float | None = None


SHARE_HOST = "host"
SHARE_REMOTE = "remote"


@dataclass(frozen=True)
class Assignment:
    """Fetch ``piece`` from ``parent`` (a peer id), or from the origin when ``parent`` is None.

    ``stream``: read the whole object from the origin in one sequential stream (it ignores
    ``Range``), storing and reporting each piece as it arrives. ``share``: for a piece from the
    origin, who else of the task will ask this peer for it (:data:`SHARE_REMOTE`: peers on
    other hosts; :data:`SHARE_HOST`: only peers on this host, which may read its file instead;
    ``""``: nobody): a peer keeps a piece others will ask for in its object store, instead of
    reading it back from disk to serve it.
    """

    piece: int
    parent: str | None
    digest: str | None = None
    stream: bool = False
    share: str = ""


@dataclass(frozen=True)
class Done:
    """A peer's report of a verified piece."""

    piece: int
    digest: str
    parent: str | None
    nbytes: int
    seconds: float


@dataclass(frozen=True)
class Failed:
    """A peer's report of a piece it could not get.

    ``parent_dead``: the parent's actor is gone, forget everything it held. ``parent_lacks``: the
    parent answered that it does not hold the piece (or sent corrupt bytes), forget that piece
    there. ``parent_unreachable``: the parent could not be reached (its node may have died and
    not been declared dead yet): it is not chosen as a parent for a while. None (a timeout): the
    parent keeps its pieces. ``range_ignored``: the origin answered a ranged read with the whole
    object: the task switches to one sequential stream.
    """

    piece: int
    parent: str | None
    reason: str
    parent_dead: bool = False
    parent_lacks: bool = False
    range_ignored: bool = False
    parent_unreachable: bool = False


@dataclass(frozen=True)
class Cached:
    """A task complete in a peer's cache, as the peer announces it: how the copy is cut into
    pieces and each piece's digest. The same object registered again may be cut otherwise
    (another piece size): the scheduler takes the announcement only when the cut is the
    task's, since piece ``i`` of another cut is other bytes."""

    cut: Cut
    digests: dict[int, str]


@dataclass(frozen=True)
class Batch:
    """The scheduler's answer to a peer: new assignments, or the task's failure.

    ``rejoin``: the scheduler does not know this peer in this task (it was taken for dead, or the
    scheduler restarted); the peer joins again with what it holds and asks again.
    """

    assignments: list[Assignment]
    error: str | None = None
    rejoin: bool = False


class PieceTime(NamedTuple):
    """One fetched piece in a node's timeline."""

    time: float
    """Unix time it landed (verified and stored)."""
    nbytes: int
    parent: str
    """The node id of the peer it came from; ``""`` when it came from the origin."""
    seconds: float
    """How long it took from when the node began it (asked its parent or the origin)."""

    @property
    def from_origin(self) -> bool:
        """Whether the piece was read from the origin."""
        return not self.parent


NODE_COLUMNS = (
    "node_id",
    "node_ip",
    "hostname",
    "path",
    "bytes",
    "sha256",
    "seconds",
    "tail_s",
    "piece_p50_s",
    "piece_p90_s",
    "bytes_from_origin",
    "bytes_from_peers",
    "ok",
    "error",
)


@dataclass
class FileResult:
    """One file on one node."""

    relpath: str
    path: str
    bytes: int
    sha256: str | None
    seconds: float
    bytes_from_origin: int
    bytes_from_peers: int
    ok: bool
    error: str | None = None
    cached: bool = False


@dataclass
class NodeResult:
    """Everything one node did for one distribution.

    ``timeline`` holds a :class:`PieceTime` for every piece the node fetched: when it landed
    (verified and stored), its size, the node it came from (``""``: the origin) and how long it
    took from when the node began it (asked its parent or the origin); ``piece_p50_s`` and
    ``piece_p90_s`` are the median and 90th percentile of those seconds; ``tail_s`` is how long
    the node took after its last piece landed (the whole file's sha256 where it could not be
    computed as pieces arrived, and the publish). ``parents``: per source of its pieces (a
    parent's node id, or ``"origin"``), how many pieces and bytes came from it and the median
    and 90th percentile of their seconds (:func:`by_parent`).
    For a prefix, ``sha256`` is the digest of the node's ``sha256sum``-style listing
    (``"<sha256>  <relpath>\\n"`` per file, sorted by path), so equal trees have equal digests.
    """

    node_id: str
    node_ip: str
    hostname: str
    path: str
    bytes: int = 0
    sha256: str | None = None
    seconds: float = 0.0
    tail_s: float = 0.0
    piece_p50_s: float = 0.0
    piece_p90_s: float = 0.0
    bytes_from_origin: int = 0
    bytes_from_peers: int = 0
    ok: bool = False
    error: str | None = None
    files: list[FileResult] = field(default_factory=list)
    timeline: list[PieceTime] = field(default_factory=list)
    parents: dict[str, dict[str, Any]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The node as one flat row of :data:`NODE_COLUMNS`."""
        return {c: getattr(self, c) for c in NODE_COLUMNS}


def tree_digest(files: list[FileResult]) -> str:
    """sha256 of the sorted ``"<sha256>  <relpath>"`` lines of ``files``."""
    lines = sorted(f"{f.sha256}  {f.relpath}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank; 0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def by_parent(timeline: list[PieceTime]) -> dict[str, dict[str, Any]]:
    """Per source of a node's pieces (a parent's node id, or ``"origin"``): ``pieces``,
    ``bytes``, and the median and 90th percentile of their seconds (``p50_s``, ``p90_s``)."""
    groups: dict[str, list[PieceTime]] = {}
    for entry in timeline:
        groups.setdefault(entry.parent or "origin", []).append(entry)
    out = {}
    for source, got in sorted(groups.items()):
        seconds = [e.seconds for e in got]
        out[source] = {
            "pieces": len(got),
            "bytes": sum(e.nbytes for e in got),
            "p50_s": round(quantile(seconds, 0.5), 3),
            "p90_s": round(quantile(seconds, 0.9), 3),
        }
    return out


def summarize_node(node: NodeResult, single: bool) -> NodeResult:
    """Fill a node's totals from its files, and its pieces' time quantiles and sources from
    its timeline."""
    seconds = [entry.seconds for entry in node.timeline]
    node.piece_p50_s, node.piece_p90_s = quantile(seconds, 0.5), quantile(seconds, 0.9)
    node.parents = by_parent(node.timeline)
    node.bytes = sum(f.bytes for f in node.files if f.ok)
    node.bytes_from_origin = sum(f.bytes_from_origin for f in node.files)
    node.bytes_from_peers = sum(f.bytes_from_peers for f in node.files)
    node.ok = bool(node.files) and all(f.ok for f in node.files) and node.error is None
    errors = [
        f"{f.relpath}: {f.error}" if not single else str(f.error) for f in node.files if not f.ok
    ]
    if errors and node.error is None:
        node.error = "; ".join(errors[:3]) + (
            f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        )
    if node.ok:
        node.sha256 = node.files[0].sha256 if single else tree_digest(node.files)
    return node


def flag_disagreements(nodes: list[NodeResult], single: bool) -> int:
    """Fail every copy of a file whose sha256 differs between nodes (``single``: as for
    :func:`summarize_node`); returns how many copies were failed.

    Every node of one distribution fetches the same task of each file, so its verified copies
    must be identical. Copies that differ mean that some node holds other bytes than the origin
    sent, and nothing here tells which: none of them is reported as a good copy."""
    counts: dict[str, Counter[str]] = {}
    for f in (f for node in nodes for f in node.files if f.ok and f.sha256):
        counts.setdefault(f.relpath, Counter())[f.sha256] += 1
    split = {path: found for path, found in counts.items() if len(found) > 1}
    failed = 0
    for node in nodes:
        hit = [f for f in node.files if f.ok and f.relpath in split]
        for f in hit:
            shown = ", ".join(
                f"{d[:12]} on {n} node{'s' * (n > 1)}" for d, n in split[f.relpath].most_common()
            )
            f.ok = False
            f.error = (
                f"the nodes' copies differ (sha256 {shown}): some node holds other bytes than "
                "the origin's; fetch again with --sha256 to pin the content"
            )
        if hit:
            node.ok, node.error, node.sha256 = False, None, None
            summarize_node(node, single)
        failed += len(hit)
    return failed
