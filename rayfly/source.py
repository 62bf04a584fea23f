"""Back-to-source through fsspec: parse options, stat, list a prefix, ranged reads with retries.

Actors receive URLs and plain option dicts, never live clients; filesystems are built here from
them (fsspec caches the instances).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import inspect
import json
import os
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fsspec
import fsspec.asyn
from fsspec.core import url_to_fs

from rayfly import http_direct, source_http, source_s3
from rayfly.dest import decode_relpath
from rayfly.errors import (
    InvalidStorageOption,
    OriginUnreachable,
    RayflyError,
    SourceError,
    SourceNotFound,
)
from rayfly.task import SIGNATURE_PARAMS, Cut
from rayfly.version import Version, from_info, from_stat

T = TypeVar("T")

RETRY_ATTEMPTS = 4
RETRY_BASE_S = 0.2

# Options every fsspec filesystem accepts, beyond its own constructor's.
_COMMON_OPTIONS = {
    "skip_instance_cache",
    "use_listings_cache",
    "listings_expiry_time",
    "max_paths",
    "asynchronous",
    "loop",
}
# Keyword arguments fsspec's HTTP filesystem forwards to each aiohttp request.
_HTTP_REQUEST_OPTIONS = {"headers", "auth", "timeout", "ssl", "proxy", "cookies"}


@dataclass(frozen=True)
class SourceFile:
    """One file found at the origin: its URL, its path relative to the source, its size, its
    version (validators, as listed), and whether the origin serves byte ranges."""

    url: str
    relpath: str
    size: int
    version: Version = field(default_factory=Version)
    ranges: bool = True


_USERINFO = re.compile(r"://[^/@\s'\"]+@")
_PARAM = re.compile(r"(^|[?&\s'\"(;,])([A-Za-z0-9_.-]+)=([^&\s'\"#)]*)")


def redact_text(text: str) -> str:
    """``text`` (an error message, say) with URL passwords and signature values hidden:
    libraries put the URL they were given into their messages, signature and all."""
    text = _USERINFO.sub("://REDACTED@", text)
    return _PARAM.sub(
        lambda m: f"{m[1]}{m[2]}=REDACTED" if SIGNATURE_PARAMS.match(m[2]) else m[0], text
    )


def redact_url(url: str) -> str:
    """The URL with signature and credential values hidden: safe to log and to show."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    query = [
        (k, "REDACTED" if SIGNATURE_PARAMS.match(k) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_storage_options(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (dotted keys nest: ``client_kwargs.region_name=x``).

    Values are JSON where they parse as JSON (``true``, ``3``, ``{"a": 1}``), strings otherwise.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not p for p in key.split(".")):
            raise InvalidStorageOption(
                f"invalid --storage-option {item!r}: expected key=value, "
                "e.g. endpoint_url=http://127.0.0.1:9000"
            )
        node = options
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InvalidStorageOption(f"--storage-option {item!r} conflicts with {p}")
        node[leaf] = _parse_value(raw)
    return options


def _accepted_options(cls: type) -> set[str]:
    names: set[str] = set(_COMMON_OPTIONS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                names.add(p.name)
    if "http" in getattr(cls, "protocol", ()) or cls.__name__ == "HTTPFileSystem":
        names |= _HTTP_REQUEST_OPTIONS
    return names


def check_storage_options(url: str, options: dict[str, Any]) -> None:
    """Raise :class:`InvalidStorageOption` for a key the URL's filesystem does not accept."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise InvalidStorageOption(f"no filesystem for {protocol}:// URLs: {exc}") from None
    accepted = _accepted_options(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidStorageOption(
            f"storage option(s) {', '.join(unknown)} not accepted by {cls.__name__} "
            f"(for {protocol}:// URLs); accepted: {', '.join(sorted(accepted - _COMMON_OPTIONS))}"
        )


def _cause(exc: BaseException) -> BaseException:
    """The connection error behind a "not found" that fsspec's HTTP filesystem raises when the
    server never answered; otherwise ``exc`` itself."""
    inner = exc.__cause__ or exc.__context__
    if isinstance(exc, FileNotFoundError) and inner is not None and _is_transient(inner):
        return inner
    return exc


def _is_transient(exc: BaseException) -> bool:
    import aiohttp

    if isinstance(exc, aiohttp.ClientResponseError | source_http.OriginStatus):
        return exc.status >= 500 or exc.status == 429
    if isinstance(
        exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError
    ):
        return False
    return isinstance(
        exc,
        OSError
        | asyncio.TimeoutError
        | aiohttp.ClientError
        | fsspec.exceptions.FSTimeoutError
        | http.client.HTTPException,
    )


def _translate(exc: BaseException, url: str, attempts: int) -> RayflyError:
    if isinstance(exc, RayflyError):  # ours already (an empty directory, an unsafe name)
        return exc
    shown = redact_url(url)
    exc = _cause(exc)
    if isinstance(exc, FileNotFoundError):
        return SourceNotFound(f"not found at the origin: {shown}")
    detail = redact_text(f"{type(exc).__name__}: {exc}")
    if _is_transient(exc):
        return OriginUnreachable(f"cannot read {shown} after {attempts} attempts: {detail}")
    return SourceError(f"cannot read {shown}: {detail}")


def _retry_delay(exc: Exception, url: str, attempt: int, attempts: int, base: float) -> float:
    """How long to wait before the next attempt; raises the translated error if none is due."""
    if attempt == attempts or not _is_transient(_cause(exc)):
        # not chained: the original's message (and so any traceback Ray prints or ships to
        # the driver) carries the URL as given, signature included; ours is redacted
        raise _translate(exc, url, attempt) from None
    return base * (2 ** (attempt - 1)) * (0.5 + random.random())


def with_retries(
    fn: Callable[[], T],
    url: str,
    attempts: int = RETRY_ATTEMPTS,
    base_delay: float = RETRY_BASE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry transient origin errors with jittered exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            sleep(_retry_delay(exc, url, attempt, attempts, base_delay))
    raise AssertionError("unreachable")


def _fs(url: str, options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(url, **options)


def _protocol(url: str) -> str:
    return fsspec.core.split_protocol(url)[0] or "file"


def _file(fs: Any, url: str, path: str, rel: str, info: dict[str, Any]) -> SourceFile:
    """A listed file with its version: local files are stat'ed (a syscall, no origin request)."""
    if "file" in fs.protocol:
        st = os.stat(path)
        return SourceFile(url, rel, st.st_size, from_stat(st))
    if info.get("size") is None:
        raise SourceError(f"the origin did not say how large {redact_url(url)} is")
    size = int(info["size"])
    return SourceFile(url, rel, size, from_info(info, size), info.get("partial", True) is not False)


def _http_file(fs: Any, url: str, path: str) -> SourceFile:
    """An HTTP object from one HEAD (fsspec's ``info`` drops ``Accept-Ranges``)."""
    rel = path.rstrip("/").rsplit("/", 1)[-1]
    found = fsspec.asyn.sync(fs.loop, source_http.head, fs, path)
    if found is None:  # no HEAD, or no size in it: fsspec's GET-based info
        return _file(fs, url, path, rel, fs.info(path))
    size, version, ranges = found
    return SourceFile(url, rel, size, version, ranges)


def _stat(url: str, options: dict[str, Any]) -> SourceFile:
    fs, path = _fs(url, options)
    if _protocol(url) in ("http", "https"):
        return _http_file(fs, url, path)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(path)
    return _file(fs, url, path, path.rstrip("/").rsplit("/", 1)[-1], info)


def stat_file(url: str, options: dict[str, Any]) -> SourceFile:
    """The object at ``url``: size, version, whether it serves ranges (one request)."""
    return with_retries(lambda: _stat(url, options), url)


def list_files(url: str, options: dict[str, Any]) -> list[SourceFile]:
    """Every file at ``url`` with its version: the file itself, or every file under a directory
    or prefix (the versions come with the listing, no request per file)."""

    def run() -> list[SourceFile]:
        fs, path = _fs(url, options)
        if _protocol(url) in ("http", "https"):
            return [_http_file(fs, url, path)]
        info = fs.info(path)
        if info.get("type") != "directory":
            return [_file(fs, url, path, path.rstrip("/").rsplit("/", 1)[-1], info)]
        root = path.rstrip("/")
        found = fs.find(root, detail=True)
        files = []
        for p, meta in sorted(found.items()):
            if meta.get("type") == "directory":
                continue
            rel = p[len(root) :].lstrip("/") if p.startswith(root) else p.rsplit("/", 1)[-1]
            rel = decode_relpath(rel, url)
            files.append(_file(fs, fs.unstrip_protocol(p), p, rel, meta))
        if not files:
            raise SourceNotFound(f"{redact_url(url)} is an empty directory: it holds no files")
        return files

    return with_retries(run, url)


def _check_length(data: Any, url: str, start: int, end: int) -> Any:
    if len(data) != end - start:
        raise SourceError(
            f"origin returned {len(data)} bytes for range {start}-{end} of {redact_url(url)}"
        )
    return data


def _check_local(path: str, url: str, version: Version) -> None:
    """Raise :class:`OriginChanged` if a local file is no longer the listed version."""
    if not version.mtime_ns:
        return
    st = os.stat(path)
    now = (st.st_mtime_ns, st.st_size, st.st_ino)
    if now != (version.mtime_ns, version.size, version.inode):
        raise source_http.changed(
            redact_url(url), f"{version.describe()}, now mtime-ns={now[0]} size={now[1]}"
        )


def read_range(
    url: str, options: dict[str, Any], start: int, end: int, version: Version | None = None
) -> bytes:
    """Bytes ``[start, end)`` of the object at ``url``; a local file is stat'ed around the read
    and must still be ``version`` (:class:`OriginChanged` otherwise)."""
    version = version or Version()

    def run() -> bytes:
        fs, path = _fs(url, options)
        if "file" in fs.protocol:
            _check_local(path, url, version)
        data = fs.cat_file(path, start=start, end=end)
        if "file" in fs.protocol:
            _check_local(path, url, version)
        return _check_length(data, url, start, end)

    return with_retries(run, url)


_ASYNC_FS: dict[tuple[int, str, str], Any] = {}


async def _async_fs(url: str, options: dict[str, Any]) -> tuple[Any, str] | None:
    """An asynchronous filesystem for ``url`` bound to the running loop, or None if the
    protocol has no asynchronous implementation."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    cls = fsspec.get_filesystem_class(protocol)
    if not issubclass(cls, fsspec.asyn.AsyncFileSystem):
        return None
    loop = asyncio.get_running_loop()
    key = (id(loop), protocol, json.dumps(options, sort_keys=True, default=str))
    fs = _ASYNC_FS.get(key)
    if fs is None:
        fs = cls(asynchronous=True, loop=loop, skip_instance_cache=True, **options)
        if hasattr(fs, "set_session"):
            await fs.set_session()
        _ASYNC_FS[key] = fs
    return fs, cls._strip_protocol(url)


async def _read_async(fs: Any, path: str, url: str, start: int, end: int, v: Version) -> bytes:
    protocol = _protocol(url)
    if protocol in ("http", "https"):
        return await source_http.read_range(fs, path, redact_url(url), start, end, v)
    if protocol in ("s3", "s3a") and (v.strong_etag or v.version_id):
        return await source_s3.read_range(fs, path, redact_url(url), start, end, v)
    return await fs._cat_file(path, start=start, end=end)


async def read_range_async(
    url: str,
    options: dict[str, Any],
    start: int,
    end: int,
    executor: Any = None,
    version: Version | None = None,
) -> bytes:
    """:func:`read_range` on the running event loop: natively for asynchronous filesystems
    (http, s3, gcs, ...), in ``executor`` for the others. Same retries, same errors.

    Reads are conditional on ``version`` where the protocol allows (HTTP ``If-Match`` /
    ``If-Unmodified-Since`` and a check of the answer's validators, S3 ``IfMatch`` and
    ``VersionId``, a re-stat for local files): a changed object raises :class:`OriginChanged`.
    An HTTP origin that answers a ranged read with the whole object raises
    :class:`~rayfly.errors.RangeIgnored`.
    """
    version = version or Version()
    if http_direct.applies(url, options):
        with contextlib.suppress(http_direct.NotDirect):  # a redirect: the fsspec path
            return await asyncio.get_running_loop().run_in_executor(
                executor, _read_direct, url, start, end, version
            )
    found = await _async_fs(url, options)
    if found is None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, read_range, url, options, start, end, version)
    fs, path = found
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            data = await _read_async(fs, path, url, start, end, version)
            return _check_length(data, url, start, end)
        except Exception as exc:
            await asyncio.sleep(_retry_delay(exc, url, attempt, RETRY_ATTEMPTS, RETRY_BASE_S))
    raise AssertionError("unreachable")


def _read_direct(url: str, start: int, end: int, version: Version) -> Any:
    """:func:`http_direct.read_range`, retried like every other read."""
    shown = redact_url(url)
    data = with_retries(lambda: http_direct.read_range(url, shown, start, end, version), url)
    return _check_length(data, url, start, end)


async def stream_pieces(
    url: str, options: dict[str, Any], version: Version, cut: Cut
) -> AsyncIterator[tuple[int, bytes]]:
    """The object read once, front to back, as ``(index, piece)`` (for HTTP origins that
    ignore ``Range``); conditional on ``version`` like :func:`read_range_async`. Not retried:
    a broken stream is restarted by the scheduler (from the start: the origin cannot skip)."""
    found = await _async_fs(url, options)
    if found is None or _protocol(url) not in ("http", "https"):
        raise SourceError(f"only HTTP origins are streamed, not {redact_url(url)}")
    fs, path = found
    try:
        async for index, piece in source_http.stream(fs, path, redact_url(url), version, cut):
            yield index, piece
    except SourceError:
        raise
    except Exception as exc:
        raise _translate(exc, url, 1) from None
