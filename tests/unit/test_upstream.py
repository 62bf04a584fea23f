"""The registry client against a real aiohttp registry on loopback with the Bearer token flow."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import aiohttp
import pytest
from aiohttp import web

from rayfly.errors import InvalidInput
from rayfly.proxy.oci import (
    BlobUnknown,
    Denied,
    ManifestUnknown,
    Unauthorized,
    UpstreamError,
    digest_of,
)
from rayfly.proxy.upstream import (
    Credentials,
    RegistryClient,
    Upstream,
    load_docker_config,
    parse_challenge,
    parse_upstream,
    redact_headers,
)

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {},
        "layers": [],
    }
).encode()
BLOB = b"hello blob" * 100
WHOLE = b"no ranges here" * 100


class FakeRegistry:
    """A tiny token-protected registry: /token issues tokens, /v2/ needs one."""

    def __init__(self, user: str | None = None, password: str | None = None):
        self.user, self.password = user, password
        self.tokens: list[str] = []
        self.seen: list[str] = []
        self.token_requests = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_route("*", "/v2/{tail:.*}", self.v2)
        return app

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if self.user:
            want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if request.headers.get("Authorization") != want:
                return web.Response(status=401)
        assert request.query["service"] == "reg"
        assert request.query["scope"].startswith("repository:")
        token = f"tok{len(self.tokens)}"
        self.tokens.append(token)
        return web.json_response({"token": token, "expires_in": 60})

    async def v2(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.seen.append(auth)
        if auth.removeprefix("Bearer ") not in self.tokens:
            challenge = (
                f'Bearer realm="http://{request.host}/token",service="reg",'
                f'scope="repository:lib/app:pull"'
            )
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        tail = request.match_info["tail"]
        if tail == "lib/app/manifests/v1":
            return web.Response(
                body=MANIFEST,
                headers={
                    "Content-Type": "application/vnd.oci.image.manifest.v1+json",
                    "Docker-Content-Digest": str(digest_of(MANIFEST)),
                },
            )
        if tail == "lib/app/manifests/lying":
            return web.Response(
                body=MANIFEST, headers={"Docker-Content-Digest": "sha256:" + "0" * 64}
            )
        if tail == f"lib/app/blobs/{digest_of(BLOB)}":
            return web.Response(
                body=None if request.method == "HEAD" else BLOB,
                headers={"Content-Length": str(len(BLOB)), "Accept-Ranges": "bytes"},
            )
        if tail == f"lib/app/blobs/{digest_of(WHOLE)}":  # no Accept-Ranges: served whole only
            return web.Response(
                body=None if request.method == "HEAD" else WHOLE,
                headers={"Content-Length": str(len(WHOLE))},
            )
        if tail.startswith("lib/secret/"):
            return web.Response(status=403)
        if tail.startswith("lib/broken/"):
            return web.Response(status=500)
        return web.Response(status=404)


async def _with_registry(fake: FakeRegistry, body, creds=None, clock=None):
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            kwargs = {"clock": clock} if clock else {}
            client = RegistryClient(
                Upstream("reg", f"http://127.0.0.1:{port}", True),
                session,
                creds,
                timeout_s=5,
                **kwargs,
            )
            return await body(client)
    finally:
        await runner.cleanup()


def run(fake, body, **kw):
    return asyncio.run(_with_registry(fake, body, **kw))


def test_anonymous_token_flow_and_token_reuse():
    fake = FakeRegistry()

    async def body(client):
        reply = await client.get_manifest("lib/app", "v1")
        head = await client.head_blob("lib/app", digest_of(BLOB))
        return reply, head

    reply, head = run(fake, body)
    assert reply.body == MANIFEST and reply.digest == digest_of(MANIFEST)
    assert head.length == len(BLOB)
    assert head.auth_headers == {"Authorization": "Bearer tok0"}
    assert fake.token_requests == 1, "the token is cached for the repository scope"


def test_head_blob_tells_whether_the_registry_serves_ranges():
    """The mirror registers a blob from its HEAD: a registry that does not announce
    ``Accept-Ranges`` is read as one stream by the peers, not in ranged pieces."""

    async def body(client):
        return [await client.head_blob("lib/app", digest_of(b)) for b in (BLOB, WHOLE)]

    ranged, whole = run(FakeRegistry(), body)
    assert (ranged.ranges, ranged.length) == (True, len(BLOB))
    assert (whole.ranges, whole.length) == (False, len(WHOLE))


def test_token_expiry_follows_injected_clock():
    fake = FakeRegistry()
    now = [0.0]

    async def body(client):
        await client.get_manifest("lib/app", "v1")
        now[0] += 3600
        await client.get_manifest("lib/app", "v1")

    run(fake, body, clock=lambda: now[0])
    assert fake.token_requests == 2


def test_configured_credentials_fetch_the_token():
    fake = FakeRegistry("u", "pw")

    async def body(client):
        return await client.get_manifest("lib/app", "v1")

    assert run(fake, body, creds=Credentials("u", "pw")).body == MANIFEST
    with pytest.raises(Unauthorized) as err:
        run(FakeRegistry("u", "pw"), body)
    assert err.value.www_authenticate.startswith("Bearer realm=")


def test_client_authorization_is_passed_through_and_401_passed_back():
    fake = FakeRegistry()

    async def body(client):
        with pytest.raises(Unauthorized) as err:
            await client.get_manifest("lib/app", "v1", client_auth="Bearer nope")
        assert "realm=" in err.value.www_authenticate
        fake.tokens.append("mine")
        return await client.get_manifest("lib/app", "v1", client_auth="Bearer mine")

    assert run(fake, body).body == MANIFEST
    assert fake.token_requests == 0, "the mirror did not fetch a token of its own"
    assert "Bearer mine" in fake.seen


@pytest.mark.parametrize(
    ("name", "ref", "error"),
    [
        ("lib/app", "nope", ManifestUnknown),
        ("lib/secret", "v1", Denied),
        ("lib/broken", "v1", UpstreamError),
        ("lib/app", "lying", UpstreamError),
    ],
)
def test_manifest_errors(name, ref, error):
    fake = FakeRegistry()
    fake.tokens.append("t")

    async def body(client):
        await client.get_manifest(name, ref, client_auth="Bearer t")

    with pytest.raises(error):
        run(fake, body)


def test_blob_unknown():
    async def body(client):
        await client.head_blob("lib/app", digest_of(b"other"))

    with pytest.raises(BlobUnknown):
        run(FakeRegistry(), body)


def test_unreachable_upstream_is_upstream_error():
    async def body():
        async with aiohttp.ClientSession() as session:
            client = RegistryClient(Upstream("x", "http://127.0.0.1:9", True), session, timeout_s=2)
            await client.ping()

    with pytest.raises(UpstreamError):
        asyncio.run(body())


def test_docker_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw1").decode()},
                    "ghcr.io": {"username": "gh", "password": "pw2"},
                    "quay.io": {"identitytoken": "ignored"},
                }
            }
        )
    )
    creds = load_docker_config(path)
    assert creds["docker.io"] == Credentials("hub", "pw1")
    assert creds["ghcr.io"].basic() == "Basic " + base64.b64encode(b"gh:pw2").decode()
    assert "quay.io" not in creds
    assert "pw1" not in repr(creds) and "pw2" not in repr(creds)
    with pytest.raises(InvalidInput):
        load_docker_config(tmp_path / "missing.json")


def test_redaction_and_repr():
    headers = {"Authorization": "Bearer secret", "Accept": "x"}
    assert redact_headers(headers) == {"Authorization": "<redacted>", "Accept": "x"}
    assert "secret" not in repr(Credentials("u", "secret"))


def test_parse_upstream_and_challenge():
    assert parse_upstream("docker.io=mirror.gcr.io").url == "https://mirror.gcr.io"
    assert parse_upstream("local=127.0.0.1:5000", insecure=True).url == "http://127.0.0.1:5000"
    with pytest.raises(InvalidInput):
        parse_upstream("noequals")
    with pytest.raises(InvalidInput):
        Upstream("x", "http://127.0.0.1:1")  # plain http must be marked insecure
    with pytest.raises(InvalidInput):
        Upstream("x", "ftp://h")
    scheme, params = parse_challenge('Bearer realm="https://a/token",service="s",scope="r:x:pull"')
    assert scheme == "bearer" and params == {
        "realm": "https://a/token",
        "service": "s",
        "scope": "r:x:pull",
    }


def test_blob_digest_helper():
    assert digest_of(BLOB).hex == hashlib.sha256(BLOB).hexdigest()
