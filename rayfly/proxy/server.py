"""The mirror's HTTP routes: the pull side of the OCI distribution API, on aiohttp.

Routes: ``GET /v2/``; ``GET``/``HEAD /v2/<name>/manifests/<tag|digest>``;
``GET``/``HEAD /v2/<name>/blobs/<digest>`` (with ``Range``). Anything else under ``/v2/`` is
``UNSUPPORTED``. The path is parsed from the raw request line and every name, tag and digest is
validated before anything else happens: no upstream request, no file.

Which upstream: ``?ns=<registry>`` (containerd adds it); else a first name component that is a
configured upstream's host, its port after ``__`` (CRI-O and podman, whose mirror location is
``<mirror>/<registry>``, ask for ``/v2/<registry>/<name>/...``; a ``:`` is not allowed in a
repository path); else the default upstream. Only configured upstreams are
contacted. Blobs come from a :class:`~rayfly.proxy.blobs.BlobBackend`
(P2P in a cluster); the response streams pieces in order and sends its last bytes only after the
whole blob's digest was checked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from rayfly.errors import DigestMismatch, RayflyError, SourceNotFound, StorageError
from rayfly.proxy.blobs import BlobBackend, BlobHandle, BlobSource, FileSpan, Piece
from rayfly.proxy.oci import (
    BlobDigestMismatch,
    BlobUnknown,
    Denied,
    Digest,
    NameInvalid,
    RangeNotSatisfiable,
    RegistryError,
    Unauthorized,
    Unsupported,
    UpstreamError,
    parse_digest,
    parse_manifest_ref,
    validate_name,
    validate_registry,
)
from rayfly.proxy.upstream import Credentials, ManifestReply, RegistryClient, Upstream

log = logging.getLogger(__name__)
_PATH_RE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
MIRROR_KEY: web.AppKey[Mirror] = web.AppKey("mirror")
API_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


@dataclass
class MirrorSettings:
    """How one node's mirror behaves.

    ``verify_access``: before serving a blob or manifest from the node's cache, check with a
    ``HEAD`` upstream, with the client's own credentials, that this client may read it.
    """

    upstreams: dict[str, Upstream]
    default_upstream: str | None = None
    tag_ttl_s: float = 5.0
    manifest_cache_entries: int = 1024
    verify_access: bool = False
    upstream_timeout_s: float = 30.0
    p2p_concurrency: int | None = None


@dataclass
class MirrorStats:
    """Counters of one mirror, reported by ``rayfly mirror status``."""

    requests: int = 0
    blob_requests: int = 0
    manifest_requests: int = 0
    errors: int = 0
    bytes_served: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


class Mirror:
    """The mirror's state: upstream clients, the manifest cache, the blob backend, counters."""

    def __init__(
        self,
        settings: MirrorSettings,
        clients: dict[str, RegistryClient],
        blobs: BlobBackend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.clients, self.blobs = settings, clients, blobs
        self.stats = MirrorStats()
        self._clock = clock
        self._manifests: OrderedDict[str, ManifestReply] = OrderedDict()
        self._tags: dict[tuple[str, str, str], tuple[float, ManifestReply]] = {}

    def client_for(self, ns: str | None) -> RegistryClient:
        """The client of the upstream ``ns`` selects (the default without it); else Denied."""
        name = validate_registry(ns) if ns else self.settings.default_upstream
        if not name or name not in self.clients:
            raise Denied(f"registry {name or '(none)'!r} is not an upstream of this mirror")
        return self.clients[name]

    def route(self, name: str, ns: str | None) -> tuple[RegistryClient, str]:
        """The upstream client and repository name for a request for ``name``: see the module
        docstring. A prefix is only taken for an upstream host (it has a dot, a port, or is
        ``localhost``), which a plain repository's first component cannot be mistaken for."""
        if ns:
            return self.client_for(ns), name
        first, sep, rest = name.partition("/")
        host = first.replace("__", ":", 1)
        if sep and host in self.clients and _is_host(host):
            return self.clients[host], rest
        return self.client_for(None), name

    def snapshot(self) -> dict[str, object]:
        """Counters and backend figures as a plain dict."""
        return {**self.stats.__dict__, **self.blobs.stats()}

    async def manifest(
        self, client: RegistryClient, name: str, ref: str | Digest, auth: str | None
    ) -> ManifestReply:
        """A manifest by digest (cached) or by tag (resolved upstream, cached ``tag_ttl_s``)."""
        if isinstance(ref, Digest):
            cached = self._manifests.get(str(ref))
            if cached is not None:
                if self.settings.verify_access:
                    await client.get_manifest(name, str(ref), auth)
                self._manifests.move_to_end(str(ref))
                return cached
            return self._remember(await client.get_manifest(name, str(ref), auth))
        key = (client.upstream.name, name, ref)
        hit = self._tags.get(key)
        if hit and hit[0] > self._clock() and not self.settings.verify_access:
            return hit[1]
        reply = self._remember(await client.get_manifest(name, ref, auth))
        self._tags[key] = (self._clock() + self.settings.tag_ttl_s, reply)
        return reply

    def _remember(self, reply: ManifestReply) -> ManifestReply:
        self._manifests[str(reply.digest)] = reply
        while len(self._manifests) > self.settings.manifest_cache_entries:
            self._manifests.popitem(last=False)
        return reply

    async def blob_length(
        self, client: RegistryClient, name: str, digest: Digest, auth: str | None
    ) -> int:
        """The blob's length: from the node's or the cluster's cache if there (and access
        allowed), else a HEAD upstream."""
        length = await self.blobs.cached_length(digest)
        if length is not None and not self.settings.verify_access:
            return length
        head = await client.head_blob(name, digest, auth)
        return head.length

    async def open_blob(
        self, client: RegistryClient, name: str, digest: Digest, auth: str | None
    ) -> BlobHandle:
        """Open a blob; upstream is asked (HEAD, then the P2P fetch) only when no node of the
        cluster holds the whole blob."""

        async def source() -> BlobSource:
            head = await client.head_blob(name, digest, auth)
            url = client.blob_url(name, digest)
            return BlobSource(url, head.auth_headers, head.length, head.ranges)

        return await self.blobs.open(digest, source)


def build_app(mirror: Mirror, middlewares: Sequence[Any] = ()) -> web.Application:
    """The aiohttp application serving ``mirror`` (``middlewares``: e.g. request metrics)."""
    app = web.Application(middlewares=list(middlewares))
    app[MIRROR_KEY] = mirror
    app.router.add_route("*", "/v2", _root)
    app.router.add_route("*", "/v2/", _root)
    app.router.add_route("*", "/v2/{tail:.*}", _dispatch)
    return app


def _error(err: RegistryError, head: bool = False) -> web.Response:
    headers = dict(API_HEADER)
    if isinstance(err, Unauthorized) and err.www_authenticate:
        headers["WWW-Authenticate"] = err.www_authenticate
    body = None if head else err.body()
    return web.Response(
        status=err.status, body=body, headers=headers, content_type="application/json"
    )


async def _root(request: web.Request) -> web.Response:
    if request.method not in ("GET", "HEAD"):
        return _error(Unsupported("this mirror serves pulls only"))
    return web.json_response({}, headers=API_HEADER)


async def _dispatch(request: web.Request) -> web.StreamResponse:
    mirror = request.app[MIRROR_KEY]
    mirror.stats.requests += 1
    head = request.method == "HEAD"
    try:
        kind, name, ref = _parse_path(request)
        client, name = mirror.route(name, request.query.get("ns"))
        auth = request.headers.get("Authorization")
        if kind == "manifests":
            mirror.stats.manifest_requests += 1
            return await _manifest(mirror, client, name, ref, auth, head)
        mirror.stats.blob_requests += 1
        return await _blob(request, mirror, client, name, parse_digest(ref), auth)
    except Exception as exc:
        err = as_registry_error(exc)
        mirror.stats.errors += 1
        mirror.stats.by_code[err.code] = mirror.stats.by_code.get(err.code, 0) + 1
        log.info("%s %s -> %s %s", request.method, request.path, err.status, err.code)
        return _error(err, head)


def as_registry_error(exc: Exception) -> RegistryError:
    """The wire error for any failure: RegistryErrors as they are, the rest as a 502/500."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, DigestMismatch):
        return BlobDigestMismatch(f"bytes from upstream do not match the digest: {exc}")
    if isinstance(exc, SourceNotFound):
        return BlobUnknown(f"upstream has no such blob: {exc}")
    if isinstance(exc, RayflyError):
        return UpstreamError(f"{type(exc).__name__}: {exc}")
    log.exception("unexpected error in the mirror")
    return RegistryError(f"internal error: {type(exc).__name__}")


def _parse_path(request: web.Request) -> tuple[str, str, str]:
    if request.method not in ("GET", "HEAD"):
        raise Unsupported(f"{request.method} is not served: this mirror serves pulls only")
    raw = request.raw_path.split("?", 1)[0]
    match = _PATH_RE.match(raw)
    if not match:
        if raw.startswith("/v2/_catalog") or "/tags/list" in raw:
            raise Unsupported("catalog and tag listing are not served by the mirror")
        raise NameInvalid(f"not a manifest or blob path: {raw[:200]!r}")
    return match["kind"], validate_name(match["name"]), match["ref"]


async def _manifest(
    mirror: Mirror, client: RegistryClient, name: str, ref: str, auth: str | None, head: bool
) -> web.Response:
    reply = await mirror.manifest(client, name, parse_manifest_ref(ref), auth)
    headers = {
        **API_HEADER,
        "Docker-Content-Digest": str(reply.digest),
        "Content-Type": reply.media_type or "application/octet-stream",
        "Content-Length": str(len(reply.body)),
    }
    if head:
        return web.Response(status=200, headers=headers)
    mirror.stats.bytes_served += len(reply.body)
    return web.Response(status=200, body=reply.body, headers=headers)


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive of a single ``bytes=`` range, None for the whole blob."""
    if not header:
        return None
    match = _RANGE_RE.match(header.strip())
    if not match or (not match[1] and not match[2]):
        raise RangeNotSatisfiable(f"unsupported Range {header[:100]!r}: use one bytes=a-b range")
    if not match[1]:
        start, end = max(0, length - int(match[2])), length - 1
    else:
        start = int(match[1])
        end = min(int(match[2]), length - 1) if match[2] else length - 1
    if start >= length or end < start:
        raise RangeNotSatisfiable(f"Range {header[:100]!r} outside a {length}-byte blob")
    return start, end


async def _blob(
    request: web.Request,
    mirror: Mirror,
    client: RegistryClient,
    name: str,
    digest: Digest,
    auth: str | None,
) -> web.StreamResponse:
    headers = {
        **API_HEADER,
        "Docker-Content-Digest": str(digest),
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if request.method == "HEAD":
        length = await mirror.blob_length(client, name, digest, auth)
        return web.Response(status=200, headers={**headers, "Content-Length": str(length)})
    if mirror.settings.verify_access:
        await client.head_blob(name, digest, auth)
    path = await mirror.blobs.local_path(digest)
    if path is not None:
        # Complete and verified on this node: the kernel sends the file (sendfile, Range too).
        mirror.stats.bytes_served += path.stat().st_size
        return web.FileResponse(path, headers=headers)
    handle = await mirror.open_blob(client, name, digest, auth)
    try:
        return await _send_blob(request, mirror, handle, digest, headers)
    finally:
        handle.close()


async def _send_blob(
    request: web.Request,
    mirror: Mirror,
    handle: BlobHandle,
    digest: Digest,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Headers once the first piece is here, then pieces in order; abort if a check fails."""
    span = parse_range(request.headers.get("Range"), handle.length)
    start, end = span if span else (0, handle.length - 1)
    resp = web.StreamResponse(status=206 if span else 200, headers=headers)
    resp.content_length = end - start + 1
    if span:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{handle.length}"
    if handle.length == 0:
        await handle.verify()
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    first = handle.cut.index_of(start)
    first_piece = await handle.piece(first)
    if first == handle.cut.index_of(end):
        await handle.verify()
    await resp.prepare(request)
    try:
        await _stream(request, resp, handle, (start, end), first_piece)
    except Exception as err:
        log.warning("blob %s aborted after headers: %s", digest, type(err).__name__)
        mirror.stats.errors += 1
        if request.transport is not None:
            request.transport.close()
        return resp
    mirror.stats.bytes_served += end - start + 1
    await resp.write_eof()
    return resp


async def _stream(
    request: web.Request,
    resp: web.StreamResponse,
    handle: BlobHandle,
    span: tuple[int, int],
    first: Piece,
) -> None:
    """Write bytes ``span[0]..span[1]`` piece by piece; the final write of a span over several
    pieces waits for ``verify()`` (a span within one piece was verified before its headers)."""
    start, end = span
    first_index, last_index = handle.cut.index_of(start), handle.cut.index_of(end)
    for index in range(first_index, last_index + 1):
        data = first if index == first_index else await handle.piece(index)
        first_byte, past = handle.cut.bounds(index)
        lo, hi = max(start, first_byte) - first_byte, min(end + 1, past) - first_byte
        if index == last_index != first_index:
            await handle.verify()
        if isinstance(data, FileSpan):
            await _send_span(request, data, lo, hi)
        else:
            await resp.write(data[lo:hi])


async def _send_span(request: web.Request, span: FileSpan, lo: int, hi: int) -> None:
    """Have the kernel send bytes ``lo..hi`` of a piece from its file (``sendfile``; asyncio
    first lets the transport flush what was written before, and falls back to reads and
    writes where the transport cannot, e.g. TLS); a file shorter than the span aborts."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client closed the connection")
    with open(span.path, "rb") as file:
        loop = asyncio.get_running_loop()
        sent = await loop.sendfile(transport, file, span.offset + lo, hi - lo)
    if sent != hi - lo:
        raise StorageError(f"{span.path} ended {hi - lo - sent} bytes before the piece's end")


def make_clients(
    settings: MirrorSettings,
    session: aiohttp.ClientSession,
    credentials: dict[str, Credentials] | None = None,
) -> dict[str, RegistryClient]:
    """One RegistryClient per configured upstream, with its credentials if any."""
    creds = credentials or {}
    return {
        name: RegistryClient(
            up, session, creds.get(name) or creds.get(_host_of(up.url)), settings.upstream_timeout_s
        )
        for name, up in settings.upstreams.items()
    }


def _is_host(text: str) -> bool:
    return "." in text or ":" in text or text == "localhost"


def _host_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0].lower()


async def start_server(
    mirror: Mirror, host: str = "127.0.0.1", port: int = 65001, middlewares: Sequence[Any] = ()
) -> tuple[web.AppRunner, int]:
    """Serve ``mirror`` on ``host:port`` (``port=0`` picks a free port); returns the runner
    (``await runner.cleanup()`` stops it) and the bound port."""
    runner = web.AppRunner(build_app(mirror, middlewares), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
