"""Packs: many small files of a prefix fetched as one task (pure planning, no I/O).

A prefix of thousands of small objects as one task per file costs a few scheduler round trips
per file on every node. Files of at most ``pack_threshold`` bytes are instead laid out, in
listing order, in packs of up to ``pack_size`` bytes: one task each, cut into pieces as usual.
A member never crosses a piece boundary (the layout starts it at the next piece if it would),
so a piece read from the origin is its members read in full, once each: the origin sees one GET
per object. A pack's id is the hash of its members' URLs, versions and sizes, the layout's
piece size, the tag and the source node: the same objects are the same pack, a changed one a
new pack. Its members are published each at its own path (:mod:`rayfly.pack_publish`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from rayfly.source import SourceFile
from rayfly.task import (
    PackMember,
    SourceSpec,
    TaskInfo,
    default_piece_size,
    info_for,
    normalize_url,
    task_id_for,
)
from rayfly.version import Version

MIN_MEMBERS = 2
MEMBERS_PER_PIECE = 128
"""About how many members of average size a pack's piece holds: an origin read of a piece is
that many GETs, which must finish well within the scheduler's lease."""
MIN_PACK_PIECE = 64 << 10


@dataclass(frozen=True)
class PackPlan:
    """Which files of a listing are fetched alone, and which together (groups of indexes into
    the listing, one group per pack)."""

    singles: list[int]
    packs: list[list[int]]


def piece_size_of(pack_size: int, piece_size: int | None = None) -> int:
    """The piece size of packs: ``piece_size`` if given, else the default for a full pack."""
    return piece_size or default_piece_size(pack_size)


def piece_size_for(sizes: Sequence[int], piece_size: int | None = None) -> int:
    """The piece size of a pack of members of ``sizes``: ``piece_size`` if given, else room for
    about :data:`MEMBERS_PER_PIECE` members of their average size (a power of two between
    :data:`MIN_PACK_PIECE` and the default piece size), and never less than the largest."""
    if piece_size:
        return piece_size
    mean = sum(sizes) // max(1, len(sizes))
    target = min(_pow2(mean * MEMBERS_PER_PIECE), default_piece_size(sum(sizes)))
    return max(target, _pow2(max(sizes, default=0)), MIN_PACK_PIECE)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def plan(sizes: Sequence[int], threshold: int, pack_size: int, piece: int) -> PackPlan:
    """Group the files of ``sizes`` (in listing order): those of at most ``threshold`` bytes
    (and one ``piece``) into packs of at most ``pack_size`` bytes as :func:`layout` places
    them; a pack of fewer than :data:`MIN_MEMBERS` files is no pack."""
    small = [i for i, n in enumerate(sizes) if n <= min(threshold, piece)]
    packs: list[list[int]] = []
    current: list[int] = []
    end = 0
    for i in small:
        start = _place(end, sizes[i], piece)
        if current and start + sizes[i] > pack_size:
            packs.append(current)
            current, start = [], 0
        current.append(i)
        end = start + sizes[i]
    if current:
        packs.append(current)
    packs = [p for p in packs if len(p) >= MIN_MEMBERS]
    packed = {i for p in packs for i in p}
    return PackPlan([i for i in range(len(sizes)) if i not in packed], packs)


def layout(sizes: Sequence[int], piece_size: int) -> tuple[list[int], int]:
    """Offsets of members of ``sizes`` placed one after the other, each starting at the next
    piece when it would cross a piece boundary; and the pack's length."""
    offsets = []
    end = 0
    for n in sizes:
        if n > piece_size:
            raise ValueError(f"a {n}-byte member does not fit a {piece_size}-byte piece")
        offsets.append(_place(end, n, piece_size))
        end = offsets[-1] + n
    return offsets, end


def _place(end: int, size: int, piece_size: int) -> int:
    """Where a ``size``-byte member goes after ``end``: there, or at the next piece boundary
    if it would cross one."""
    room = piece_size - end % piece_size
    return end + room if size > room else end


def pack_task(
    files: Sequence[SourceFile], versions: Sequence[Version], spec: SourceSpec, piece: int
) -> TaskInfo:
    """The pack task of ``files`` (their task versions ``versions``, see
    :func:`rayfly.version.identity`) cut into ``piece``-byte pieces; ``spec`` gives the pack's
    URL (the prefix), options, tag and source node."""
    node = spec.source_node
    offsets, length = layout([f.size for f in files], piece)
    placed = zip(files, offsets, versions, strict=True)
    members = tuple(
        PackMember(f.url, f.size, off, v, task_id_for(f.url, spec.tag, version=v.key, node=node))
        for f, off, v in placed
    )
    spec = SourceSpec(
        spec.url,
        spec.storage_options,
        spec.tag,
        pack_id(members, piece, spec.tag, spec.source_node),
        source_node=spec.source_node,
    )
    return dataclasses.replace(info_for(spec, length, True, piece), members=members)


def pack_id(members: Sequence[PackMember], piece_size: int, tag: str, node: str | None) -> str:
    """The hash of the members' URLs, versions and sizes, the piece size, tag and node."""
    h = hashlib.sha256(f"pack\n{piece_size}\n{tag}\nnode={node}\n".encode())
    for m in members:
        h.update(f"{normalize_url(m.url)}\n{m.version.key}\n{m.size}\n".encode())
    return "pack-" + h.hexdigest()[:40]


def member_task(pack: TaskInfo, member: PackMember) -> TaskInfo:
    """The single-file task of one member: the task it would be unpacked (same id)."""
    spec = SourceSpec(
        member.url,
        pack.storage_options,
        task_id=member.task_id,
        version=member.version,
        source_node=pack.source_node,
    )
    return info_for(spec, member.size, True, None)


def members_in(task: TaskInfo, start: int, end: int) -> list[PackMember]:
    """The members whose bytes lie in ``[start, end)`` of a pack (none crosses a piece)."""
    return [m for m in task.members if start <= m.offset < end]


def content_length(task: TaskInfo) -> int:
    """Bytes of the files of a task: its members' for a pack (without the layout's gaps)."""
    return sum(m.size for m in task.members) if task.members else task.length
