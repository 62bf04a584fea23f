"""HTTP origins: a listing that keeps ``Accept-Ranges``, ranged reads conditional on the listed
validators, and one sequential stream for origins that ignore ``Range``.

Requests go through the fsspec HTTP filesystem's own aiohttp session and request options
(headers, auth, ssl, ...), so storage options apply as for any other read. Functions take the
URL as it may be shown (``shown``, redacted) for their error messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from rayfly.errors import OriginChanged, RangeIgnored
from rayfly.task import Cut
from rayfly.version import Version, from_info

IDENTITY = {"Accept-Encoding": "identity"}  # the bytes as stored, and their validators
STREAM_CHUNK = 1 << 20


class OriginStatus(Exception):
    """An HTTP error status from the origin (5xx and 429 are worth retrying)."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status = status


def changed(shown: str, detail: str) -> OriginChanged:
    """The error for an object that no longer matches its listed version."""
    return OriginChanged(
        f"{shown} changed at the origin during the distribution; "
        f"run it again to get the new version ({detail})"
    )


def _request_kwargs(fs: Any, extra: dict[str, str]) -> dict[str, Any]:
    kw = dict(fs.kwargs)
    kw["headers"] = {**kw.get("headers", {}), **extra}
    return kw


async def head(fs: Any, url: str) -> tuple[int, Version, bool] | None:
    """``(size, version, accepts ranges)`` from one HEAD; None if the server refuses HEAD (a
    URL signed for GET only, a 405) or gives no size: the caller falls back to fsspec's own
    ``info``, which tries a GET."""
    session = await fs.set_session()
    kw = _request_kwargs(fs, IDENTITY)
    kw.pop("allow_redirects", None)
    async with session.head(fs.encode_url(url), allow_redirects=True, **kw) as r:
        if r.status == 404:
            raise FileNotFoundError(url)
        if 400 <= r.status < 500 or r.status == 501:
            return None
        r.raise_for_status()
        length = r.headers.get("Content-Length")
        if length is None or r.headers.get("Content-Encoding", "identity") != "identity":
            return None
        fields = {k: r.headers.get(k) for k in ("ETag", "Last-Modified")}
        ranges = "bytes" in r.headers.get("Accept-Ranges", "").lower()
        return int(length), from_info(fields, int(length)), ranges


def conditions(version: Version) -> dict[str, str]:
    """Request headers that make a read fail (412) if the object is no longer ``version``."""
    if version.strong_etag:
        return {"If-Match": version.strong_etag}
    if version.last_modified:
        return {"If-Unmodified-Since": version.last_modified}
    return {}


def check_response(r: Any, shown: str, version: Version) -> None:
    """Raise if the answer is an error or carries validators other than the listed ones (a
    server may ignore ``If-Match``; it still sends its current ``ETag``)."""
    if r.status == 412:
        raise changed(shown, f"the origin no longer has {version.describe()}")
    if r.status == 404:
        raise FileNotFoundError(shown)
    r.raise_for_status()
    for name, listed in (("ETag", version.etag), ("Last-Modified", version.last_modified)):
        now = r.headers.get(name)
        if listed and now and now.removeprefix("W/") != listed.removeprefix("W/"):
            raise changed(shown, f"{name} was {listed}, now {now}")
    total = r.headers.get("Content-Range", "").rpartition("/")[2]
    if version.size >= 0 and total.isdigit() and int(total) != version.size:
        raise changed(shown, f"size was {version.size}, now {total}")


async def read_range(
    fs: Any, url: str, shown: str, start: int, end: int, version: Version
) -> bytes:
    """Bytes ``[start, end)``, conditional on ``version``; :class:`RangeIgnored` (before the
    body is read) when the server answers with the whole object instead."""
    session = await fs.set_session()
    ranged = {**IDENTITY, **conditions(version), "Range": f"bytes={start}-{end - 1}"}
    kw = _request_kwargs(fs, ranged)
    async with session.get(fs.encode_url(url), **kw) as r:
        check_response(r, shown, version)
        whole = int(r.headers.get("Content-Length", -1))
        if r.status == 200 and (start > 0 or whole != end - start):
            raise RangeIgnored(f"{shown} ignores Range (answered 200 with {whole} bytes)")
        return await r.read()


def _cut(buf: bytearray, index: int, sizes: list[int]) -> list[bytes]:
    """Pop whole pieces (``sizes[index:]``) off the front of ``buf``."""
    out = []
    while index + len(out) < len(sizes) and len(buf) >= sizes[index + len(out)]:
        n = sizes[index + len(out)]
        out.append(bytes(buf[:n]))
        del buf[:n]
    return out


async def stream(
    fs: Any, url: str, shown: str, version: Version, cut: Cut
) -> AsyncIterator[tuple[int, bytes]]:
    """The object read once from its start, cut into ``(index, piece)`` as it arrives; a body
    of another length than listed is :class:`OriginChanged`."""
    length = cut.length
    sizes = [end - start for start, end in map(cut.bounds, range(cut.n_pieces))]
    session = await fs.set_session()
    kw = _request_kwargs(fs, {**IDENTITY, **conditions(version)})
    async with session.get(fs.encode_url(url), **kw) as r:
        check_response(r, shown, version)
        sent = r.headers.get("Content-Length")
        if sent is not None and int(sent) != length:
            raise changed(shown, f"size was {length}, now {sent}")
        buf, index, received = bytearray(), 0, 0
        for piece in _cut(buf, index, sizes):  # an empty object: one empty piece
            yield index, piece
            index += 1
        async for chunk in r.content.iter_chunked(STREAM_CHUNK):
            received += len(chunk)
            if received > length:
                raise changed(shown, f"size was {length}, the body is longer")
            buf += chunk
            for piece in _cut(buf, index, sizes):
                yield index, piece
                index += 1
        if index < len(sizes):
            raise changed(shown, f"size was {length}, the body ended at {received}")
