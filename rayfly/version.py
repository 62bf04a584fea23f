"""An origin object's version: the validators its listing carries, as a value.

A task's identity includes the version (:attr:`Version.key`), so a changed object is a new task;
its reads are conditional on the same validators (``If-Match``, S3 ``IfMatch``/``VersionId``, a
re-stat of local files), so a file never mixes two versions. Validators come from the listing that
every distribution makes anyway (``fs.info`` / ``fs.find(detail=True)``): no extra request.

This module imports nothing else from rayfly.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Version:
    """Validators of one object: HTTP ``ETag``/``Last-Modified``, S3 ``ETag``/``VersionId``,
    GCS ``generation``, local ``st_mtime_ns``/``st_ino``; ``size`` with them.

    ``Version()`` (every field empty) is an origin that gave no validator. ``nonce`` is not a
    validator: it makes an unvalidated object's task unique to one call (see :func:`identity`).
    """

    etag: str = ""
    last_modified: str = ""
    version_id: str = ""
    generation: str = ""
    mtime_ns: int = 0
    inode: int = 0
    size: int = -1
    nonce: str = ""

    @property
    def validated(self) -> bool:
        """True when the origin gave at least one validator."""
        return bool(self.etag or self.last_modified or self.version_id or self.generation) or (
            self.mtime_ns > 0
        )

    @property
    def key(self) -> str:
        """The canonical identity string ('' for no validator and no nonce)."""
        parts = [
            ("etag", self.etag),
            ("last-modified", self.last_modified),
            ("version-id", self.version_id),
            ("generation", self.generation),
            ("mtime-ns", str(self.mtime_ns) if self.mtime_ns else ""),
            ("inode", str(self.inode) if self.inode else ""),
        ]
        found = [f"{k}={v}" for k, v in parts if v]
        if found:
            found.append(f"size={self.size}")
        if self.nonce:
            found.append(f"nonce={self.nonce}")
        return "|".join(found)

    @property
    def strong_etag(self) -> str:
        """The ETag if it is a strong one (``If-Match`` compares strongly), else ''."""
        return "" if self.etag.startswith("W/") else self.etag

    def describe(self) -> str:
        """A short human form for error messages."""
        return self.key.split("|nonce=")[0] or "no validator"


def from_info(info: dict[str, Any], size: int) -> Version:
    """The version an fsspec ``info``/``find(detail=True)`` entry carries (http, s3, gcs)."""
    etag = info.get("ETag") or info.get("etag") or ""
    return Version(
        etag=str(etag),
        last_modified=str(info.get("Last-Modified") or ""),
        version_id=str(info.get("VersionId") or ""),
        generation=str(info.get("generation") or ""),
        size=size,
    )


def from_stat(st: os.stat_result) -> Version:
    """The version of a local file."""
    return Version(mtime_ns=st.st_mtime_ns, inode=st.st_ino, size=st.st_size)


def identity(listed: Version, tag: str = "", sha256: str | None = None) -> Version:
    """The version a task is keyed by.

    With validators: the listed version. Without any: the user's pin of the content (``--tag``,
    or ``--sha256``, folded in so that a cached copy is reused only for that content), else a
    fresh nonce, so that every call is a new task and nothing stale is served.
    """
    if listed.validated or tag:
        return listed
    if sha256:
        return replace(listed, nonce=f"sha256:{sha256.lower()}")
    return replace(listed, nonce=uuid.uuid4().hex)
