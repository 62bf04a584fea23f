"""Real servers for the mirror's tests: a distribution registry, a counting front, test images.

Everything listens on 127.0.0.1 only. The counting front is an aiohttp reverse proxy in front
of the real registry: it counts the blob GETs and bytes that reach upstream, and can require the
Bearer token flow (with its own token endpoint) or serve wrong bytes for chosen digests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import platform
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import requests
from aiohttp import web

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, ok: tuple[int, ...] = (200, 401)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code in ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def goarch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass
class TestImage:
    """An image built in memory: its blobs by digest and its manifest."""

    __test__ = False
    name: str
    tag: str
    manifest: bytes
    config_digest: str
    layer_digests: list[str]
    blobs: dict[str, bytes] = field(repr=False)

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def blob_digests(self) -> list[str]:
        return [self.config_digest, *self.layer_digests]

    @property
    def total_blob_bytes(self) -> int:
        return sum(len(self.blobs[d]) for d in self.blob_digests)


def random_tar(size: int, seed: int, name: str) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"rayfly/{name}.bin")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build_image(name: str, tag: str, sizes: list[int], seed: int, arch: str = "") -> TestImage:
    """An OCI image of uncompressed tar layers of random data, one file per layer."""
    layers = [random_tar(size, seed * 100 + i, f"layer{i}") for i, size in enumerate(sizes)]
    diff_ids = [sha256_digest(layer) for layer in layers]
    config = json.dumps(
        {
            "architecture": arch or goarch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": d, "size": len(b)}
                for d, b in zip(diff_ids, layers, strict=True)
            ],
        }
    ).encode()
    blobs = {sha256_digest(config): config, **dict(zip(diff_ids, layers, strict=True))}
    return TestImage(name, tag, manifest, sha256_digest(config), diff_ids, blobs)


def push_blob(base: str, name: str, data: bytes) -> str:
    digest = sha256_digest(data)
    if requests.head(f"{base}/v2/{name}/blobs/{digest}", timeout=30).status_code == 200:
        return digest
    resp = requests.post(f"{base}/v2/{name}/blobs/uploads/", timeout=30)
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    resp = requests.put(
        f"{location}{sep}digest={digest}",
        data=data,
        timeout=120,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 201, resp.text
    return digest


def push_manifest(base: str, name: str, ref: str, body: bytes, media_type: str) -> None:
    resp = requests.put(
        f"{base}/v2/{name}/manifests/{ref}",
        data=body,
        timeout=30,
        headers={"Content-Type": media_type},
    )
    assert resp.status_code == 201, resp.text


def push_image(base: str, image: TestImage) -> None:
    for digest in image.blob_digests:
        push_blob(base, image.name, image.blobs[digest])
    push_manifest(base, image.name, image.tag, image.manifest, OCI_MANIFEST)


def push_index(base: str, name: str, tag: str, images: dict[str, TestImage]) -> bytes:
    """Push an OCI index of ``{"os/arch": image}`` (each image already pushed to ``name``)."""
    manifests = []
    for plat, image in images.items():
        os_, arch = plat.split("/")[:2]
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": len(image.manifest),
                "platform": {"os": os_, "architecture": arch},
            }
        )
        push_manifest(base, name, image.manifest_digest, image.manifest, OCI_MANIFEST)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    push_manifest(base, name, tag, body, OCI_INDEX)
    return body


class RegistryProcess:
    """Debian's ``docker-registry`` (CNCF distribution) on 127.0.0.1, storage in ``root``."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.root = root
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: rayfly-test\n"
        )
        self.log = open(root / "registry.log", "wb")  # noqa: SIM115
        binary = shutil.which("docker-registry") or "docker-registry"
        self.proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_http(f"{self.url}/v2/")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@dataclass
class FrontState:
    """What the counting front saw, and how it behaves."""

    blob_gets: Counter = field(default_factory=Counter)
    blob_heads: Counter = field(default_factory=Counter)
    manifest_gets: Counter = field(default_factory=Counter)
    blob_bytes: int = 0
    bytes_by_digest: Counter = field(default_factory=Counter)
    requests: int = 0
    auth_headers_seen: list[str] = field(default_factory=list)
    require_token: bool = False
    credentials: tuple[str, str] | None = None
    tokens: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    rate: float = 0.0  # bytes/s of all bodies together (0: unlimited): a registry far away
    ignore_ranges: bool = False  # answer every GET whole, announce no Accept-Ranges

    def reset(self) -> None:
        self.blob_gets.clear()
        self.blob_heads.clear()
        self.manifest_gets.clear()
        self.bytes_by_digest.clear()
        self.blob_bytes = self.requests = 0
        self.auth_headers_seen.clear()
        self.require_token, self.credentials = False, None
        self.tokens.clear()
        self.corrupt.clear()
        self.ignore_ranges = False


class CountingFront:
    """A reverse proxy in front of the registry that counts what reaches upstream."""

    def __init__(self, registry_url: str, loop: LoopThread) -> None:
        self.target = registry_url
        self.state = FrontState()
        self._free_at = 0.0
        self._loop = loop
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        loop.run(self._start())

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        async def _stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        self._loop.run(_stop())

    async def _token(self, request: web.Request) -> web.Response:
        st = self.state
        if st.credentials:
            want = "Basic " + base64.b64encode(":".join(st.credentials).encode()).decode()
            if request.headers.get("Authorization") != want:
                return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        token = secrets.token_hex(16)
        st.tokens.add(token)
        return web.json_response({"token": token, "expires_in": 300})

    def _challenge(self, path: str) -> str:
        match = re.match(r"^/v2/(.+)/(blobs|manifests)/", path)
        scope = f',scope="repository:{match[1]}:pull"' if match else ""
        return f'Bearer realm="{self.url}/token",service="rayfly-test"{scope}'

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        st = self.state
        st.requests += 1
        auth = request.headers.get("Authorization", "")
        if auth:
            st.auth_headers_seen.append(auth)
        if st.require_token and auth.removeprefix("Bearer ") not in st.tokens:
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "auth"}]},
                status=401,
                headers={"WWW-Authenticate": self._challenge(request.path)},
            )
        blob = _BLOB_PATH.match(request.path)
        if blob and request.method == "GET":
            st.blob_gets[blob["digest"]] += 1
        elif blob:
            st.blob_heads[blob["digest"]] += 1
        elif "/manifests/" in request.path and request.method == "GET":
            st.manifest_gets[request.path] += 1
        return await self._relay(request, blob["digest"] if blob else None)

    async def _relay(self, request: web.Request, digest: str | None) -> web.StreamResponse:
        forward = {"accept", "content-type"} | (set() if self.state.ignore_ranges else {"range"})
        headers = {k: v for k, v in request.headers.items() if k.lower() in forward}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as up:
            keep = (
                "content-type",
                "content-length",
                "docker-content-digest",
                "content-range",
                "location",
                "docker-distribution-api-version",
                *(() if self.state.ignore_ranges else ("accept-ranges",)),
            )
            resp = web.StreamResponse(
                status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() in keep}
            )
            await resp.prepare(request)
            if request.method == "HEAD":
                return resp
            flip = digest is not None and digest in self.state.corrupt
            async for chunk in up.content.iter_chunked(1 << 20):
                if digest is not None:
                    self.state.blob_bytes += len(chunk)
                    self.state.bytes_by_digest[digest] += len(chunk)
                if flip:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    flip = False
                await self._pace(len(chunk))
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def _pace(self, nbytes: int) -> None:
        """Hold a chunk until the shared link of ``state.rate`` bytes/s has room for it."""
        if not self.state.rate:
            return
        now = asyncio.get_running_loop().time()
        self._free_at = max(now, self._free_at) + nbytes / self.state.rate
        await asyncio.sleep(self._free_at - now)
