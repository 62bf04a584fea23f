"""A small HTTP origin on loopback that serves a directory with Range support and counts bytes.

Used by ``rayfly demo``, the tests and the benchmarks, so that "the origin served each byte once"
is measured where the bytes leave, not inferred. It sends ``ETag`` (from inode, mtime and size)
and ``Last-Modified``, honours ``If-Match`` / ``If-Unmodified-Since`` (412), and can replace a
file after a number of reads (:meth:`OriginServer.swap_after`), for "changed mid-transfer" tests.
"""

from __future__ import annotations

import email.utils
import os
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 20


class OriginServer:
    """Serve ``root`` at ``http://host:port/``; ``bytes_served`` and ``requests`` count traffic,
    ``log`` keeps ``(path, start, end, bytes sent)`` of every body served (counted once sent,
    paced: see ``rate``), ``gets_arrived`` the GETs per path as they arrive.

    ``rate`` (bytes/s per response) slows responses down; ``fail_paths`` maps a URL path to a
    number of requests to answer with 503 first; ``validators = False`` sends no ``ETag`` and no
    ``Last-Modified`` (an origin that gives no validator).
    """

    def __init__(
        self, root: str | Path, host: str = "127.0.0.1", port: int = 0, rate: float | None = None
    ):
        self.root = Path(root).resolve()
        self.rate = rate
        self.bytes_served = 0
        self.requests: Counter[str] = Counter()
        self.gets_arrived: Counter[str] = Counter()  # GETs as they arrive, before any byte
        self.log: list[tuple[str, int, int, int]] = []
        self.fail_paths: dict[str, int] = {}
        self.validators = True
        self._swaps: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL, ending in ``/``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> OriginServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.bytes_served = 0
            self.requests.clear()
            self.gets_arrived.clear()
            self.log.clear()

    def served(self, path: str) -> int:
        """Body bytes served for URL path ``path`` (``/name``) since the last reset."""
        with self._lock:
            return sum(sent for p, _, _, sent in self.log if p == path)

    def swap_after(self, path: str, reads: int, content: bytes) -> None:
        """Replace the file at URL ``path`` with ``content`` (a new inode, so a new ETag) when
        the GET after the next ``reads`` ones arrives: those ``reads`` see the old file, every
        later GET the new one, however many are in flight at once."""
        with self._lock:
            self._swaps[path] = (reads, content)

    def _count(self, path: str, start: int, end: int, nbytes: int) -> None:
        with self._lock:
            self.bytes_served += nbytes
            self.requests[path] += 1
            self.log.append((path, start, end, nbytes))

    def _get_arrived(self, path: str) -> None:
        """Count a GET of URL ``path`` before its file is opened; swap the file if it is due."""
        with self._lock:
            self.gets_arrived[path] += 1
            left, content = self._swaps.get(path, (-1, b""))
            if left < 0:
                return
            if left > 0:
                self._swaps[path] = (left - 1, content)
                return
            del self._swaps[path]
            target = self.root / unquote(path).lstrip("/")
            tmp = target.with_name(target.name + ".swap")
            tmp.write_bytes(content)
            os.replace(tmp, target)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class serving this origin."""
        return type("Handler", (_Handler,), {"origin": self})


class _Handler(BaseHTTPRequestHandler):
    """Serves files of :attr:`origin` (set on the subclass :meth:`OriginServer._handler` makes)."""

    origin: OriginServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def _file(self) -> Path | None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        path = (self.origin.root / rel).resolve()
        if self.origin.root not in path.parents or not path.is_file():
            return None
        return path

    def _error(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        rel = urlsplit(self.path).path
        if self.origin.fail_paths.get(rel, 0) > 0:
            self.origin.fail_paths[rel] -= 1
            return self._error(503)
        if body:
            self.origin._get_arrived(rel)
        path = self._file()
        if path is None:
            return self._error(404)
        with open(path, "rb") as fh:
            self._answer(fh, rel, body)

    def _answer(self, fh: BinaryIO, rel: str, body: bool) -> None:
        st = os.fstat(fh.fileno())
        size = st.st_size
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{size:x}"'
        if not _conditions_hold(self.headers, etag, st.st_mtime):
            return self._error(412)
        start, end = 0, size
        m = _RANGE.match(self.headers.get("Range", ""))
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            else:
                start = max(0, size - int(m.group(2)))
            if start >= size and size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        if self.origin.validators:
            self.send_header("ETag", etag)
            lm = email.utils.formatdate(st.st_mtime, usegmt=True)
            self.send_header("Last-Modified", lm)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self._send(fh, start, end, rel)

    def _send(self, fh: BinaryIO, start: int, end: int, rel: str) -> None:
        sent = 0
        t0 = time.monotonic()
        fh.seek(start)
        while sent < end - start:
            chunk = fh.read(min(_CHUNK, end - start - sent))
            if not chunk:
                break
            try:
                self.wfile.write(chunk)
            except OSError:
                break
            sent += len(chunk)
            if self.origin.rate:
                time.sleep(max(0.0, sent / self.origin.rate - (time.monotonic() - t0)))
        self.origin._count(rel, start, end, sent)


def _conditions_hold(headers: Any, etag: str, mtime: float) -> bool:
    """``If-Match`` / ``If-Unmodified-Since`` of a request, against the file's validators."""
    match = headers.get("If-Match")
    if match is not None:
        return match.strip() == "*" or etag in [t.strip() for t in match.split(",")]
    since = headers.get("If-Unmodified-Since")
    if since is not None:
        try:
            return int(mtime) <= email.utils.parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return True
    return True


def make_file(path: str | Path, size: int, seed: int = 0) -> Path:
    """Write ``size`` pseudo-random bytes to ``path`` (fast, reproducible by ``seed``)."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(left, 16 << 20)
            fh.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n
    os.chmod(path, 0o644)
    return path
