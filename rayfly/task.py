"""Task ids, URL normalisation, and the piece layout of a task.

A *task* is one version of one object at the origin (one file, one blob). Its id is a hash of the
normalised URL (signature query parameters dropped), the byte range, a user tag and the object's
version (its validators, see :mod:`rayfly.version`), so the same object behind two signed URLs is
one task, as in Dragonfly, and a changed object is a new task. OCI blobs use their digest instead.
"""

from __future__ import annotations

import functools
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
    tail_split: int = 1  # see Cut

    @functools.cached_property
    def cut(self) -> Cut:
        """How the task is cut into pieces (made once: the task is immutable)."""
        return Cut(self.length, self.piece_size, self.tail_split)

    @property
    def n_pieces(self) -> int:
        """How many pieces the task has (at least one, even for an empty file)."""
        return self.cut.n_pieces

    def piece_range(self, index: int) -> tuple[int, int]:
        """``(start, end)`` byte offsets of piece ``index``, end exclusive."""
        return self.cut.bounds(index)


def info_for(
    spec: SourceSpec,
    size: int,
    ranges: bool,
    piece_size: int | None,
    limits: PieceLimits | None = None,
    floor: int = MIN_PIECE,
) -> TaskInfo:
    """The task of ``spec``, an object of ``size`` bytes (``piece_size`` None: the default,
    within ``limits`` and above ``floor`` (:func:`default_piece_size`), its last pieces split
    (:class:`Cut`); a piece size given is kept for every piece)."""
    return TaskInfo(
        spec.resolved_task_id(),
        spec.url,
        size,
        piece_size or default_piece_size(size, limits, floor),
        spec.storage_options,
        spec.expected_sha256,
        spec.version,
        ranges,
        spec.source_node,
        tail_split=1 if piece_size else TAIL_SPLIT,
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


def default_piece_size(
    length: int, limits: PieceLimits | None = None, floor: int = MIN_PIECE
) -> int:
    """The next power of two of ``length / 64``, clamped to ``floor``..16 MiB, and to
    ``limits.cap`` when the links are slow (:class:`PieceLimits`).

    Dragonfly aims at ~500 pieces (``length / 500``); a rayfly piece costs more to move (an
    actor call and an object in Ray's object store, ~10 ms of CPU per piece across peer and
    raylet on this machine), so pieces are larger: 1 GiB is 64 pieces of 16 MiB, which took 4
    nodes 16 s and 3.9 CPU-s per peer against 22 s and 5.7 CPU-s with 4 MiB pieces
    (docs/BENCHMARKS.md). 16 MiB at most keeps a peer's memory bounded: 8 pieces in flight and
    the hash window (:data:`rayfly.actors.download.HASH_WINDOW_MAX`) stay under 512 MiB.

    The floor (4 MiB: :data:`MIN_PIECE`) is for CPU (the ~10 ms per piece above); a caller
    whose pieces each cost more asks for a higher one (the registry mirror: a call and a read
    of its own per piece, :data:`rayfly.proxy.p2p.BLOB_PIECE_FLOOR`). It yields on slower
    links, down to ``limits.fits`` (a piece moves within 4 s at the rate transfers had while
    their parent served all its slots), never below 1 MiB (:data:`SLOW_LINK_MIN_PIECE`): 2 MiB
    at 50 Mbit/s per node on the testbed. The floor follows transfers measured at full load,
    not the cap's extrapolation from every transfer: on a testbed whose 2 cores were saturated
    that estimate read the uplinks at a sixth of what the transfers got and cut the pieces to
    1 MiB, which doubled the per-piece work that held the transfers back (docs/BENCHMARKS.md,
    twelfth pass)."""
    target = max(1, -(-length // TARGET_PIECES))
    size = 1 << (target - 1).bit_length()
    if limits is None:
        return min(MAX_PIECE, max(floor, size))
    floor = max(SLOW_LINK_MIN_PIECE, min(floor, limits.fits))
    return min(MAX_PIECE, max(floor, min(size, limits.cap)))


TAIL_PIECES = 2
TAIL_SPLIT = 2


@dataclass(frozen=True)
class Cut:
    """How a ``length``-byte task is cut into pieces: ``piece_size`` bytes each (the last one
    shorter), except that with ``tail_split`` above 1 the last :data:`TAIL_PIECES` pieces' worth
    of a task of at least twice as many pieces is cut into pieces ``tail_split`` times smaller.

    The last pieces read from the origin are the last to spread, and every node waits for them:
    smaller ones are passed on sooner. In simulation (bench/simulate_scheduler.py, links
    shared, 8 slots), 512 MiB in 4 MiB pieces with the last 8 MiB in 2 MiB pieces (2 pieces
    more) took 1.085 S/B at 8 nodes against 1.113, and 1.129 against 1.155 at 16; the last
    16 MiB in 1 MiB pieces gained as much for 12 pieces more, which cost 4 local nodes 10 %
    more CPU (docs/BENCHMARKS.md, fifteenth pass)."""

    length: int
    piece_size: int
    tail_split: int = 1

    def __post_init__(self) -> None:
        if self.piece_size <= 0:
            raise InvalidInput(f"piece size must be positive, got {self.piece_size}")
        if self.tail_split < 1:
            raise InvalidInput(f"tail split must be at least 1, got {self.tail_split}")
        if -(-self.length // self.piece_size) < 2 * TAIL_PIECES:  # too few pieces for a tail:
            object.__setattr__(self, "tail_split", 1)  # equal cuts compare equal

    @functools.cached_property
    def _head(self) -> int:
        """How many pieces of ``piece_size`` there are (all of them without a tail)."""
        n = max(1, -(-self.length // self.piece_size))
        return n - TAIL_PIECES if self.tail_split > 1 else n

    @functools.cached_property
    def _small(self) -> int:
        return max(1, self.piece_size // self.tail_split)

    @functools.cached_property
    def n_pieces(self) -> int:
        """Number of pieces (at least one, even for an empty task)."""
        rest = self.length - self._head * self.piece_size
        return self._head + max(0, -(-rest // self._small))

    def bounds(self, index: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of piece ``index``."""
        if not 0 <= index < self.n_pieces:
            raise IndexError(f"piece {index} out of range for a {self.length}-byte task")
        head = self._head
        if index < head:
            start = index * self.piece_size
            return start, min(self.length, start + self.piece_size)
        start = head * self.piece_size + (index - head) * self._small
        return start, min(self.length, start + self._small)

    def index_of(self, offset: int) -> int:
        """The piece holding byte ``offset`` (0 for an empty task)."""
        edge = self._head * self.piece_size
        if offset < edge:
            return offset // self.piece_size
        return self._head + (offset - edge) // self._small
