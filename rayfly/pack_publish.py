"""Publishing the members of a complete pack: each file's byte range copied out of the pack's
cache file into a temporary file in its destination directory, hashed on the way, then renamed
into place (atomic: a reader sees the whole file or none). Storage only: no network."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from rayfly.task import PackMember


@dataclass(frozen=True)
class Published:
    """One member at its destination: its path and sha256, or the error that kept it out."""

    path: str
    sha256: str | None
    error: str | None = None


def publish_members(data: Path, members: list[tuple[PackMember, Path | None]]) -> list[Published]:
    """Publish each ``(member, target)`` from the pack data file ``data``; one result each
    (a target None: only hash it). A member that cannot be written fails alone (its temporary
    file removed)."""
    fd = os.open(data, os.O_RDONLY)
    try:
        return [_publish_one(fd, m, target) for m, target in members]
    finally:
        os.close(fd)


def _publish_one(fd: int, member: PackMember, target: Path | None) -> Published:
    if target is None:
        return Published("", hashlib.sha256(os.pread(fd, member.size, member.offset)).hexdigest())
    tmp = target.parent / f".{target.name}.rayfly-{uuid.uuid4().hex[:8]}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        data = os.pread(fd, member.size, member.offset)
        if len(data) != member.size:
            raise OSError(f"the cached pack is short: {len(data)} of {member.size} bytes")
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return Published(str(target), None, f"cannot write {target}: {exc.strerror or exc}")
    return Published(str(target), hashlib.sha256(data).hexdigest())
