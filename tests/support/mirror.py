"""Run a mirror (LocalBlobs backend, no Ray) on 127.0.0.1:0 inside a LoopThread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from rayfly.proxy.blobs import BlobBackend, LocalBlobs
from rayfly.proxy.server import Mirror, MirrorSettings, make_clients, start_server
from rayfly.proxy.upstream import Credentials, Upstream
from tests.support.registry import LoopThread


@dataclass
class RunningMirror:
    mirror: Mirror
    port: int
    cache_dir: Path
    _runner: Any
    _session: aiohttp.ClientSession
    _loop: LoopThread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def _stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        self._loop.run(_stop())


def start_local_mirror(
    loop: LoopThread,
    cache_dir: Path,
    upstreams: dict[str, str],
    default: str | None = None,
    credentials: dict[str, Credentials] | None = None,
    timeout_s: float = 30.0,
    blobs: Callable[[aiohttp.ClientSession], BlobBackend] | None = None,
    **settings: Any,
) -> RunningMirror:
    """A mirror of ``{name: http-url}`` upstreams serving from ``cache_dir`` (``blobs``: another
    backend than :class:`LocalBlobs` there, made with the mirror's HTTP session)."""

    async def _start() -> RunningMirror:
        ups = {n: Upstream(n, u, insecure=u.startswith("http://")) for n, u in upstreams.items()}
        conf = MirrorSettings(
            ups, default_upstream=default, upstream_timeout_s=timeout_s, **settings
        )
        session = aiohttp.ClientSession()
        backend = blobs(session) if blobs is not None else LocalBlobs(cache_dir, session)
        mirror = Mirror(conf, make_clients(conf, session, credentials), backend)
        runner, port = await start_server(mirror, "127.0.0.1", 0)
        return RunningMirror(mirror, port, cache_dir, runner, session, loop)

    return loop.run(_start())


def concurrent_sha256s(url: str, clients: int = 20, timeout: float = 120) -> set[str]:
    """``clients`` GETs of ``url`` released at once (a barrier); the sha256 of each body."""
    import concurrent.futures
    import hashlib
    import threading

    import requests

    barrier = threading.Barrier(clients)

    def one(_: int) -> str:
        barrier.wait()
        return hashlib.sha256(requests.get(url, timeout=timeout).content).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return set(pool.map(one, range(clients)))
