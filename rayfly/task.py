"""Task ids, URL normalisation, and the piece layout of a task.

A *task* is one version of one object at the origin (one file, one blob). Its id is a hash of the
normalised URL (signature query parameters dropped), the byte range, a user tag and the object's
version (its validators, see :mod:`rayfly.version`), so the same object behind two signed URLs is
one task, as in Dragonfly, and a changed object is a new task. OCI blobs use their digest instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rayfly.errors import InvalidInput
from rayfly.version import Version

MIN_PIECE = 4 << 20
SLOW_LINK_MIN_PIECE = 1 << 20
MAX_PIECE = 16 << 20
TARGET_PIECES = 64


@dataclass(frozen=True)
class PieceLimits:
    """What the transfers measured so far allow a new task's pieces (powers of two; from
    :func:`rayfly.scheduling.piece_limits`).

    ``cap``: the largest piece that moves within 2 s when every parent serves all its slots
    (pieces share a parent's uplink; Ray asks again for an object whose pull has not finished
    after 10 s). ``fits``: the largest piece that moves within 4 s at the rate transfers had
    while their parents served all their slots, and at least twice ``cap``: pieces are cut
    below the CPU floor (4 MiB) only down to it."""

    cap: int
    fits: int


# Query parameters that sign a URL rather than name an object.
SIGNATURE_PARAMS = re.compile(
    r"^(x-amz-.*|x-goog-.*|signature|expires|awsaccesskeyid|sig|se|sp|sv|sr|st|skoid|sktid|"
    r"skt|ske|sks|skv|policy|key-pair-id|token)$",
    re.IGNORECASE,
)
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class SourceSpec:
    """What to fetch: an fsspec URL, its storage options, and how to name the task."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    tag: str = ""
    task_id: str | None = None
    expected_sha256: str | None = None
    version: Version = field(default_factory=Version)
    source_node: str | None = None

    def resolved_task_id(self) -> str:
        """The explicit task id if one was given, else the hash of URL, tag, version and
        source node."""
        if self.task_id is not None:
            return validate_task_id(self.task_id)
        return task_id_for(self.url, self.tag, version=self.version.key, node=self.source_node)


@dataclass(frozen=True)
class PackMember:
    """One small file inside a pack task (:mod:`rayfly.pack`): its URL and version, where its
    bytes lie in the pack (``offset``, ``size``; a member never crosses a piece boundary), and
    the id of its task when fetched alone."""

    url: str
    size: int
    offset: int
    version: Version = field(default_factory=Version)
    task_id: str = ""


@dataclass(frozen=True)
class TaskInfo:
    """A task as the scheduler fixed it: where it comes from and how it is cut into pieces.

    ``version``: the validators origin reads are conditional on (empty: unconditional).
    ``ranges``: False when the origin ignores ``Range``: one peer streams the whole object.
    """

    task_id: str
    url: str
    length: int
    piece_size: int
    storage_options: dict[str, Any] = field(default_factory=dict)
    expected_sha256: str | None = None
    version: Version = field(default_factory=Version)
    ranges: bool = True
    source_node: str | None = None  # a node-local file: only this node reads the origin
    members: tuple[PackMember, ...] = ()  # a pack of small files: each read from its own URL

    @property
    def n_pieces(self) -> int:
        """How many pieces the task has (at least one, even for an empty file)."""
        return piece_count(self.length, self.piece_size)

    def piece_range(self, index: int) -> tuple[int, int]:
        """``(start, end)`` byte offsets of piece ``index``, end exclusive."""
        return piece_bounds(self.length, self.piece_size, index)


def info_for(
    spec: SourceSpec,
    size: int,
    ranges: bool,
    piece_size: int | None,
    limits: PieceLimits | None = None,
) -> TaskInfo:
    """The task of ``spec``, an object of ``size`` bytes (``piece_size`` None: the default,
    within ``limits``)."""
    return TaskInfo(
        spec.resolved_task_id(),
        spec.url,
        size,
        piece_size or default_piece_size(size, limits),
        spec.storage_options,
        spec.expected_sha256,
        spec.version,
        ranges,
        spec.source_node,
    )


def validate_task_id(task_id: str) -> str:
    """Return ``task_id`` if it is safe to use as a file name, else raise :class:`InvalidInput`."""
    if not _TASK_ID.match(task_id) or ".." in task_id:
        raise InvalidInput(f"invalid task id {task_id!r}: use letters, digits, '.', '_' or '-'")
    return task_id


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop signature query parameters and fragments, sort the query."""
    parts = urlsplit(url)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not SIGNATURE_PARAMS.match(k)
    ]
    netloc = parts.netloc.lower()
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, urlencode(sorted(query)), ""))


def task_id_for(
    url: str,
    tag: str = "",
    byte_range: tuple[int, int] | None = None,
    *,
    version: str = "",
    node: str | None = None,
) -> str:
    """Hash of the normalised URL, the range, the tag and the object's version key: the same
    version of the same object is the same task, a changed object a new one.

    ``node`` is the node a node-local file is on: ``/data/x`` on node A is not ``/data/x`` on B.
    """
    rng = "" if byte_range is None else f"{byte_range[0]}-{byte_range[1]}"
    parts = (normalize_url(url), rng, tag) + ((version,) if version else ())
    key = "\n".join(parts)
    if node is not None:
        key += f"\nnode={node}"
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def default_piece_size(length: int, limits: PieceLimits | None = None) -> int:
    """The next power of two of ``length / 64``, clamped to 4..16 MiB, and to ``limits.cap``
    when the links are slow (:class:`PieceLimits`).

    Dragonfly aims at ~500 pieces (``length / 500``); a rayfly piece costs more to move (an
    actor call and an object in Ray's object store, ~10 ms of CPU per piece across peer and
    raylet on this machine), so pieces are larger: 1 GiB is 64 pieces of 16 MiB, which took 4
    nodes 16 s and 3.9 CPU-s per peer against 22 s and 5.7 CPU-s with 4 MiB pieces
    (docs/BENCHMARKS.md). 16 MiB at most keeps a peer's memory bounded: 8 pieces in flight and
    the hash window (:data:`rayfly.actors.download.HASH_WINDOW_MAX`) stay under 512 MiB.

    The 4 MiB floor is for CPU (the ~10 ms per piece above) and yields on slower links, down
    to ``limits.fits`` (a piece moves within 4 s at the rate transfers had while their parent
    served all its slots), never below 1 MiB (:data:`SLOW_LINK_MIN_PIECE`): 2 MiB at 50 Mbit/s
    per node on the testbed. The floor follows transfers measured at full load, not the cap's
    extrapolation from every transfer: on a testbed whose 2 cores were saturated that estimate
    read the uplinks at a sixth of what the transfers got and cut the pieces to 1 MiB, which
    doubled the per-piece work that held the transfers back (docs/BENCHMARKS.md, twelfth
    pass)."""
    target = max(1, -(-length // TARGET_PIECES))
    size = 1 << (target - 1).bit_length()
    if limits is None:
        return min(MAX_PIECE, max(MIN_PIECE, size))
    floor = max(SLOW_LINK_MIN_PIECE, min(MIN_PIECE, limits.fits))
    return min(MAX_PIECE, max(floor, min(size, limits.cap)))


def piece_count(length: int, piece_size: int) -> int:
    """Number of pieces of a ``length``-byte object cut into ``piece_size`` pieces (min. 1)."""
    if piece_size <= 0:
        raise InvalidInput(f"piece size must be positive, got {piece_size}")
    return max(1, -(-length // piece_size))


def piece_bounds(length: int, piece_size: int, index: int) -> tuple[int, int]:
    """Byte range ``[start, end)`` of piece ``index``."""
    if not 0 <= index < piece_count(length, piece_size):
        raise IndexError(f"piece {index} out of range for a {length}-byte task")
    start = index * piece_size
    return start, min(length, start + piece_size)
