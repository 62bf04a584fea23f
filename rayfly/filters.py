"""Which files of a prefix to take: ``--include`` / ``--exclude`` globs and ``--max-files``.

Patterns match the path relative to the prefix, as ``aws s3 cp --include`` does: ``*`` and ``?``
match any characters, ``/`` included, so ``*.safetensors`` takes every such file at any depth and
``config.json`` only the one at the top. With includes, a file must match one of them; a file that
matches an exclude is left out. Pure functions, no I/O.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from rayfly.errors import InvalidInput, SourceNotFound


class _HasRelpath(Protocol):
    relpath: str


F = TypeVar("F", bound=_HasRelpath)


@dataclass(frozen=True)
class FileFilter:
    """``--include`` / ``--exclude`` patterns and the ``--max-files`` limit of one call."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_files: int | None = None

    def check(self) -> FileFilter:
        """Raise :class:`InvalidInput` for a bad pattern or limit; returns self."""
        check_patterns(self.include, self.exclude, self.max_files)
        return self

    def apply(self, files: list[F], source: str) -> list[F]:
        """See :func:`select_files`."""
        return select_files(files, source, self.include, self.exclude, self.max_files)


def check_patterns(include: Sequence[str], exclude: Sequence[str], max_files: int | None) -> None:
    """Raise :class:`InvalidInput` for an empty pattern or a limit below one."""
    for flag, patterns in (("--include", include), ("--exclude", exclude)):
        for p in patterns:
            if not p or not p.strip():
                raise InvalidInput(f"{flag} '': give a pattern, e.g. {flag} '*.safetensors'")
    if max_files is not None and max_files < 1:
        raise InvalidInput(f"--max-files must be at least 1, got {max_files}")


def wanted(relpath: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """True if ``relpath`` passes the include and exclude patterns."""
    if include and not any(fnmatch.fnmatchcase(relpath, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(relpath, p) for p in exclude)


def select_files(
    files: list[F],
    source: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_files: int | None = None,
) -> list[F]:
    """The files of ``source`` that the patterns take; raises if none does, or too many."""
    check_patterns(include, exclude, max_files)
    chosen = [f for f in files if wanted(f.relpath, include, exclude)]
    if not chosen:
        given = " ".join(
            [*(f"--include {p!r}" for p in include), *(f"--exclude {p!r}" for p in exclude)]
        )
        raise SourceNotFound(
            f"none of the {len(files)} file(s) under {source} matches {given}; the patterns "
            "match the path relative to the prefix (e.g. 'sub/dir/*.bin')"
        )
    if max_files is not None and len(chosen) > max_files:
        raise InvalidInput(
            f"{source} holds {len(chosen)} file(s) to distribute, more than --max-files "
            f"{max_files}: narrow it with --include/--exclude, or raise --max-files"
        )
    return chosen
