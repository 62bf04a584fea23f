"""A small client of an upstream registry's pull API, with the Bearer token flow.

Only upstreams the operator configured are ever contacted (see :class:`Upstream`). Credentials
and tokens are kept out of every ``repr``, log line and error message: errors name the method,
the registry and the path, never a header.

Auth, in order: a client's own ``Authorization`` header is passed upstream as is (and a 401 is
passed back so the client can authenticate); otherwise a cached token for the repository's pull
scope; otherwise the request goes anonymously and, on ``401`` with a ``Bearer`` challenge, a token
is fetched from the challenge's realm (with the configured credentials, if any) and the request
retried once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import aiohttp

from rayfly.errors import InvalidInput
from rayfly.proxy.neterrors import upstream_failure
from rayfly.proxy.oci import (
    ACCEPT_MANIFESTS,
    DOCKER_HUB,
    DOCKER_HUB_HOST,
    MAX_MANIFEST_BYTES,
    BlobUnknown,
    Denied,
    Digest,
    ManifestInvalid,
    ManifestUnknown,
    RegistryError,
    Unauthorized,
    UpstreamError,
    digest_of,
    parse_digest,
    validate_name,
    validate_registry,
)

log = logging.getLogger(__name__)
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Upstream:
    """A registry the mirror may contact: the name clients use (``ns=``) and its base URL."""

    name: str
    url: str
    insecure: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise InvalidInput(f"upstream URL {self.url!r} must be http(s)://host[:port]")
        if parts.scheme == "http" and not self.insecure:
            raise InvalidInput(f"upstream {self.name!r} uses plain http: mark it --insecure")
        validate_registry(self.name)


def parse_upstream(text: str, insecure: bool = False) -> Upstream:
    """Parse ``NAME=URL`` (``URL`` may omit its scheme: https, or http if ``insecure``)."""
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise InvalidInput(f"upstream {text!r}: use NAME=URL, e.g. docker.io=https://mirror.gcr.io")
    if "://" not in url:
        url = ("http://" if insecure else "https://") + url
    return Upstream(name.strip().lower(), url.rstrip("/"), insecure)


def default_upstreams() -> dict[str, Upstream]:
    """The upstreams known without configuration: ``docker.io`` is Docker Hub's registry host."""
    return {DOCKER_HUB: Upstream(DOCKER_HUB, f"https://{DOCKER_HUB_HOST}")}


@dataclass(frozen=True)
class Credentials:
    """A user name and secret for one registry; the secret never appears in a repr."""

    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The value of a Basic ``Authorization`` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def load_docker_config(path: str | Path) -> dict[str, Credentials]:
    """Read the ``auths`` of a Docker ``config.json``: registry host -> Credentials.

    Entries with ``auth`` (base64 ``user:secret``) or ``username``/``password`` are taken;
    credential helpers are not run. Docker Hub's legacy key maps to ``docker.io``.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read docker config {path}: {type(exc).__name__}") from None
    out: dict[str, Credentials] = {}
    for key, entry in (doc.get("auths") or {}).items():
        creds = _entry_credentials(entry) if isinstance(entry, dict) else None
        if creds:
            out[_config_host(key)] = creds
    return out


def _entry_credentials(entry: Mapping[str, object]) -> Credentials | None:
    if entry.get("auth"):
        try:
            user, _, secret = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(user, secret)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def _config_host(key: str) -> str:
    host = urlsplit(key).netloc if "://" in key else key.split("/")[0]
    return DOCKER_HUB if host in ("index.docker.io", DOCKER_HUB_HOST) else host.lower()


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with credentials replaced by ``<redacted>``, safe to log."""
    secret = {"authorization", "proxy-authorization", "cookie", "x-registry-auth"}
    return {k: ("<redacted>" if k.lower() in secret else v) for k, v in headers.items()}


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split a ``WWW-Authenticate`` value into its scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_RE.findall(rest))


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float


@dataclass(frozen=True)
class ManifestReply:
    """A manifest as the upstream served it, its digest checked."""

    media_type: str
    digest: Digest
    body: bytes


@dataclass(frozen=True)
class BlobHead:
    """What a HEAD on a blob told: its length, the auth headers that were accepted, and
    whether the registry serves byte ranges of it."""

    length: int
    auth_headers: dict[str, str] = field(repr=False)
    ranges: bool = True


class RegistryClient:
    """Pull-side client of one upstream registry (async, aiohttp).

    ``clock`` is injected so tests control token expiry. One client is shared by every request
    the mirror serves for that upstream; tokens are cached per repository scope.
    """

    def __init__(
        self,
        upstream: Upstream,
        session: aiohttp.ClientSession,
        credentials: Credentials | None = None,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self._session = session
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._clock = clock
        self._tokens: dict[str, _Token] = {}

    def __repr__(self) -> str:
        creds = "with credentials" if self._credentials else "anonymous"
        return f"RegistryClient({self.upstream.name} -> {self.upstream.url}, {creds})"

    def blob_url(self, name: str, digest: Digest) -> str:
        """The upstream URL of a blob (name and digest validated)."""
        return f"{self.upstream.url}/v2/{validate_name(name)}/blobs/{digest}"

    async def ping(self) -> int:
        """``GET /v2/``: the status the upstream answers (200, or 401 when it wants auth)."""
        async with self._send("GET", "/v2/", {}) as resp:
            return resp.status

    async def get_manifest(
        self, name: str, reference: str, client_auth: str | None = None
    ) -> ManifestReply:
        """GET a manifest by tag or digest; the body's digest is checked against a digest ref."""
        path = f"/v2/{validate_name(name)}/manifests/{reference}"
        async with self.request("GET", path, name, client_auth, {"Accept": ACCEPT_MANIFESTS}) as r:
            if r.status == 404:
                raise ManifestUnknown(
                    f"manifest {name}:{reference} unknown to {self.upstream.name}"
                )
            _raise_for_status(r, self.upstream.name, path)
            body = await r.content.read(MAX_MANIFEST_BYTES + 1)
            media_type = r.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = r.headers.get("Docker-Content-Digest")
        if len(body) > MAX_MANIFEST_BYTES:
            raise ManifestInvalid(
                f"manifest {name}:{reference} is larger than {MAX_MANIFEST_BYTES}"
            )
        digest = digest_of(body)
        expected = reference if ":" in reference else header_digest
        if expected and parse_digest(expected) != digest:
            raise UpstreamError(
                f"manifest {name}:{reference} from {self.upstream.name} has digest {digest}"
            )
        return ManifestReply(media_type, digest, body)

    async def head_blob(
        self, name: str, digest: Digest, client_auth: str | None = None
    ) -> BlobHead:
        """HEAD a blob: its length and the auth headers to fetch it with (for fsspec)."""
        path = f"/v2/{validate_name(name)}/blobs/{digest}"
        req = self.request("HEAD", path, name, client_auth, {})
        async with req as resp:
            if resp.status == 404:
                raise BlobUnknown(f"blob {digest} unknown to {self.upstream.name}/{name}")
            _raise_for_status(resp, self.upstream.name, path)
            length = int(resp.headers.get("Content-Length", "-1"))
            ranges = "bytes" in resp.headers.get("Accept-Ranges", "").lower()
        if length < 0:
            raise UpstreamError(f"HEAD {path} on {self.upstream.name}: no Content-Length")
        return BlobHead(length, dict(req.used_auth), ranges)

    def request(
        self, method: str, path: str, name: str, client_auth: str | None, headers: dict[str, str]
    ) -> _AuthedRequest:
        """An ``async with`` request that runs the auth flow; 401/403 raise Unauthorized/Denied."""
        return _AuthedRequest(self, method, path, name, client_auth, headers)

    def _send(self, method: str, path: str, headers: dict[str, str]) -> _Send:
        return _Send(self, method, self.upstream.url + path, headers)

    async def _auth_for(self, name: str, client_auth: str | None) -> dict[str, str]:
        if client_auth:
            return {"Authorization": client_auth}
        token = self._tokens.get(_scope(name))
        if token and token.expires_at > self._clock():
            return {"Authorization": f"Bearer {token.value}"}
        return {}

    async def _fetch_token(self, name: str, challenge: str) -> dict[str, str] | None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            creds = self._credentials
            return {"Authorization": creds.basic()} if creds else None
        if scheme != "bearer" or not params.get("realm"):
            return None
        query = {"service": params.get("service", ""), "scope": params.get("scope", _scope(name))}
        url = params["realm"] + "?" + urlencode({k: v for k, v in query.items() if v})
        auth = {"Authorization": self._credentials.basic()} if self._credentials else {}
        try:
            async with self._session.get(url, headers=auth, timeout=self._timeout) as resp:
                if resp.status != 200:
                    return None
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            raise UpstreamError(f"token endpoint of {self.upstream.name} failed") from None
        value = str(doc.get("token") or doc.get("access_token") or "")
        if not value:
            return None
        ttl = max(10.0, float(doc.get("expires_in") or 60) - 10.0)
        self._tokens[_scope(name)] = _Token(value, self._clock() + ttl)
        return {"Authorization": f"Bearer {value}"}


def _scope(name: str) -> str:
    return f"repository:{name}:pull"


def _raise_for_status(resp: aiohttp.ClientResponse, upstream: str, path: str) -> None:
    if resp.status in (200, 206):
        return
    if resp.status == 401:
        challenge = resp.headers.get("WWW-Authenticate", "")
        raise Unauthorized(f"{upstream} wants authentication for {path}", challenge)
    if resp.status == 403:
        raise Denied(f"{upstream} denied access to {path}")
    if resp.status == 404:
        raise RegistryError(f"{upstream} has no {path}")
    raise UpstreamError(f"{upstream} answered {resp.status} for {path}")


class _Send:
    """One plain request to the upstream, network errors turned into UpstreamError."""

    def __init__(self, client: RegistryClient, method: str, url: str, headers: dict[str, str]):
        self._client, self._method, self._url, self._headers = client, method, url, headers
        self._cm: object = None
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        c = self._client
        path = urlsplit(self._url).path
        with upstream_failure(f"{self._method} {path} on {c.upstream.name} failed"):
            self._cm = c._session.request(
                self._method,
                self._url,
                headers=self._headers,
                timeout=c._timeout,
                allow_redirects=True,
            )
            self._resp = await self._cm.__aenter__()  # type: ignore[attr-defined]
        return self._resp

    async def __aexit__(self, *exc: object) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(*exc)  # type: ignore[attr-defined]


class _AuthedRequest:
    """A request with the auth flow: retry once with a token after a Bearer challenge."""

    def __init__(
        self,
        client: RegistryClient,
        method: str,
        path: str,
        name: str,
        client_auth: str | None,
        headers: dict[str, str],
    ) -> None:
        self._c, self._method, self._path, self._name = client, method, path, name
        self._client_auth, self._headers = client_auth, headers
        self._current: _Send | None = None
        self.used_auth: dict[str, str] = {}

    async def __aenter__(self) -> aiohttp.ClientResponse:
        c = self._c
        auth = await c._auth_for(self._name, self._client_auth)
        resp = await self._open(auth)
        if resp.status != 401 or self._client_auth:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        await self._close()
        retry = await c._fetch_token(self._name, challenge)
        if retry is None:
            raise Unauthorized(
                f"{c.upstream.name} wants authentication for {self._path}", challenge
            )
        return await self._open(retry)

    async def _open(self, auth: dict[str, str]) -> aiohttp.ClientResponse:
        self.used_auth = auth
        self._current = self._c._send(self._method, self._path, {**self._headers, **auth})
        return await self._current.__aenter__()

    async def _close(self) -> None:
        if self._current is not None:
            current, self._current = self._current, None
            await current.__aexit__(None, None, None)

    async def __aexit__(self, *exc: object) -> None:
        if self._current is not None:
            await self._current.__aexit__(*exc)
