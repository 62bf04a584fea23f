"""An S3 origin on loopback for tests and benchmarks: moto's server, counting the requests that
reach it (GETs and HEADs per object key, listings per bucket). moto is a test dependency: it is
imported only when a server starts."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

ADDRESS = "127.0.0.1"
THREADS = 32  # requests served at once; more wait for a thread, on their open connection


def _backend() -> Any:
    """moto's in-memory S3 backend, which a server in this process serves."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


class CountingS3Server:
    """moto's S3 server on ``127.0.0.1``; ``gets[key]``/``heads[key]`` count the requests for
    each object (``bucket/key``), ``lists`` the bucket listings, ``clients`` the connections
    (address, port) requests came on; ``last_list`` and ``first_get`` are when
    (``time.monotonic()``) the last listing request and the first object GET since the last
    :meth:`reset` arrived (None: none yet). ``before_get``, if set, is called with the key of
    each object GET before it is served (a test changes the origin there, between a listing
    and the reads: in the backend, see :meth:`delete_in_backend`)."""

    def __init__(self, port: int = 0):
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.gets: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.lists = 0
        self.clients: set[tuple[str, str]] = set()  # (address, port): one per connection
        self.last_list: float | None = None
        self.first_get: float | None = None
        self.before_get: Callable[[str], None] | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{ADDRESS}:{self._server.bind_addr[1]}"

    def options(self) -> dict[str, Any]:
        """fsspec (s3fs) storage options for this server (moto's test credentials)."""
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-west-2"},
        }

    def start(self) -> CountingS3Server:
        """Serve in a daemon thread, keeping connections alive as S3 does."""
        from cheroot import wsgi
        from moto.server import create_backend_app

        # moto's S3 app alone: moto's dispatcher finds the service of every request under one
        # lock by listing its own package directory, which cost ~half the CPU of a 4 KiB GET.
        # Served by cheroot, not moto's own server (werkzeug's development server): that one
        # closes the connection after every response, so each GET cost its client a new TCP
        # connection and the server a new thread, about half the CPU of a 4 KiB GET on either
        # side (docs/BENCHMARKS.md, twenty-third pass). S3 keeps connections alive.
        app = self._counting(create_backend_app("s3"))
        self._server = wsgi.Server((ADDRESS, self._port), app, numthreads=THREADS)
        self._server.prepare()  # bound: the endpoint is known
        self._thread = threading.Thread(target=self._server.serve, daemon=True)
        self._thread.start()
        return self

    def put_in_backend(self, bucket: str, objects: Iterable[tuple[str, bytes]]) -> int:
        """Create ``bucket`` (if it does not exist) and ``objects`` (key, bytes) straight in
        moto's in-memory backend, which this server (in this process) serves: no HTTP request,
        so ~10,000 objects/s where PUTs through s3fs make ~40-400. They are the same objects a
        PUT makes (ETag, last-modified) and are listed and served like them; nothing is counted.
        Returns the number of objects put."""
        backend = _backend()
        if bucket not in backend.buckets:
            backend.create_bucket(bucket, "us-east-1")
        count = 0
        for key, value in objects:
            backend.put_object(bucket, key, value)
            count += 1
        return count

    def delete_in_backend(self, bucket: str, key: str) -> None:
        """Delete one object straight in moto's backend (no request, nothing counted): what a
        test that changes the origin while a request is being served must use, since a request
        from inside the server's own handler could wait for a thread that it holds."""
        _backend().delete_object(bucket, key)

    def stop(self) -> None:
        """Stop serving (open connections are closed)."""
        if self._server is not None:
            self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.gets.clear()
            self.heads.clear()
            self.lists = 0
            self.clients.clear()
            self.last_list = self.first_get = None

    def object_gets(self, keys: Iterable[str] | None = None) -> int:
        """GET requests for objects (of ``keys`` only, if given)."""
        with self._lock:
            if keys is None:
                return sum(self.gets.values())
            return sum(self.gets[k] for k in keys)

    def _count(self, method: str, path: str, client: tuple[str, str]) -> None:
        key = path.lstrip("/")
        with self._lock:
            self.clients.add(client)
            if "/" not in key.rstrip("/"):
                if method == "GET":
                    self.lists += 1
                    self.last_list = time.monotonic()
            elif method == "GET":
                self.gets[key] += 1
                self.first_get = self.first_get or time.monotonic()
            elif method == "HEAD":
                self.heads[key] += 1

    def _counting(self, app: Callable[..., Any]) -> Callable[..., Any]:
        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
            client = (environ.get("REMOTE_ADDR", ""), environ.get("REMOTE_PORT", ""))
            self._count(method, path, client)
            key = path.lstrip("/")
            if method == "GET" and "/" in key.rstrip("/") and self.before_get is not None:
                self.before_get(key)
            return app(environ, start_response)

        return counted
