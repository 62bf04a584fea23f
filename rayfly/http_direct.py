"""Ranged HTTP reads straight into a buffer, for plain ``http(s)://`` origins read without
storage options.

fsspec's aiohttp client hands a body over in chunks that are joined afterwards, with Python
work on the peer's event loop for every chunk: about 1.3 CPU-s per GiB here. A blocking
HTTP/1.1 request on one of the peer's origin threads (a keep-alive connection per thread and
origin) reads the body into the piece's buffer with ``readinto``: one copy, out of the event
loop, about 0.55 CPU-s per GiB (docs/BENCHMARKS.md). Buffers come from
:data:`rayfly.piecemem.BUFFERS`; the peer gives each back once its bytes are written and hashed.
The request and the checks of the answer are the same (conditional headers, validators,
``Content-Range``, a 200 to a ranged read); anything this path does not handle (a redirect,
credentials in the URL, storage options) is left to the fsspec path (:class:`NotDirect`).
"""

from __future__ import annotations

import http.client
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from rayfly.errors import RangeIgnored, RayflyError
from rayfly.piecemem import BUFFERS
from rayfly.source_http import IDENTITY, OriginStatus, check_response, conditions
from rayfly.version import Version

TIMEOUT_S = 60.0
_local = threading.local()


class NotDirect(RayflyError):
    """This read needs the fsspec path (a redirect, say)."""


def applies(url: str, options: dict[str, Any]) -> bool:
    """Whether ``url`` is read here: plain http(s), no storage options, no credentials in it."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and not options and not parts.username


class _Answer:
    """An ``http.client`` response with the interface :func:`check_response` reads."""

    def __init__(self, r: http.client.HTTPResponse):
        self.r, self.status, self.headers = r, r.status, r.headers

    def raise_for_status(self) -> None:
        if self.status >= 400:
            raise OriginStatus(self.status, self.r.reason)


def _connection(scheme: str, netloc: str) -> http.client.HTTPConnection:
    pool: dict[tuple[str, str], http.client.HTTPConnection] = _local.__dict__.setdefault("c", {})
    conn = pool.get((scheme, netloc))
    if conn is None:
        if scheme == "https":
            ctx = ssl.create_default_context()
            conn = http.client.HTTPSConnection(netloc, timeout=TIMEOUT_S, context=ctx)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=TIMEOUT_S)
        pool[(scheme, netloc)] = conn
    return conn


def _drop(scheme: str, netloc: str) -> None:
    conn = _local.__dict__.get("c", {}).pop((scheme, netloc), None)
    if conn is not None:
        conn.close()


def read_range(url: str, shown: str, start: int, end: int, version: Version) -> memoryview:
    """Bytes ``[start, end)`` of ``url`` into a new buffer, conditional on ``version``
    (blocking: run it on a thread). Errors as the fsspec path raises them."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {**IDENTITY, **conditions(version), "Range": f"bytes={start}-{end - 1}"}
    try:
        conn = _connection(parts.scheme, parts.netloc)
        conn.request("GET", target, headers=headers)
        r = conn.getresponse()
        data = _body(r, shown, start, end, version)
        if not r.isclosed():  # more body than the range: do not reuse the connection
            _drop(parts.scheme, parts.netloc)
        return data
    except BaseException:
        _drop(parts.scheme, parts.netloc)  # its state is unknown: the next read reconnects
        raise


def _body(
    r: http.client.HTTPResponse, shown: str, start: int, end: int, version: Version
) -> memoryview:
    if 300 <= r.status < 400:
        raise NotDirect(f"{shown} redirects")
    check_response(_Answer(r), shown, version)
    whole = int(r.headers.get("Content-Length", -1))
    if r.status == 200 and (start > 0 or whole != end - start):
        raise RangeIgnored(f"{shown} ignores Range (answered 200 with {whole} bytes)")
    view = memoryview(BUFFERS.take(end - start))  # not zeroed: it is overwritten
    got = 0
    while got < len(view):
        n = r.readinto(view[got:])
        if not n:
            break
        got += n
    if got < len(view):
        raise http.client.IncompleteRead(b"", len(view) - got)
    return view
