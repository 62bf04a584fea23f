"""Ranged HTTP reads straight into a buffer (rayfly.http_direct) against real servers on
loopback: the bytes, retries, errors, and what it leaves to the fsspec path."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rayfly import http_direct, source
from rayfly.demo_origin import OriginServer
from rayfly.errors import OriginChanged, OriginUnreachable, RangeIgnored, SourceNotFound
from rayfly.version import Version

DATA = bytes(range(256)) * 64


@pytest.fixture
def server(tmp_path):
    (tmp_path / "a.bin").write_bytes(DATA)
    s = OriginServer(tmp_path).start()
    yield s
    s.stop()


def read(url: str, start: int, end: int, version: Version | None = None):
    return asyncio.run(source.read_range_async(url, {}, start, end, None, version))


def test_reads_the_range_into_a_buffer(server):
    data = read(server.url + "a.bin", 100, 5000)
    assert isinstance(data, memoryview) and data == DATA[100:5000]
    assert server.bytes_served == 4900


def test_transient_errors_are_retried_and_missing_objects_named(server):
    server.fail_paths["/a.bin"] = 2
    assert read(server.url + "a.bin", 0, 16) == DATA[:16]
    with pytest.raises(SourceNotFound, match="not found at the origin"):
        read(server.url + "nope.bin", 0, 1)
    with pytest.raises(OriginUnreachable, match="after 4 attempts"):
        read("http://127.0.0.1:1/x", 0, 1)


def test_a_changed_object_fails_the_read(server):
    listed = source.stat_file(server.url + "a.bin", {}).version
    (server.root / "a.bin").write_bytes(DATA[::-1])
    with pytest.raises(OriginChanged, match="changed at the origin"):
        read(server.url + "a.bin", 0, 16, listed)


class _Odd(BaseHTTPRequestHandler):
    """``/moved`` redirects to the origin's ``/a.bin``; ``/whole`` ignores ``Range``."""

    target = ""

    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", self.target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def odd(server):
    handler = type("H", (_Odd,), {"target": server.url + "a.bin"})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_a_redirect_is_followed_by_the_fsspec_path_and_range_ignored_is_told(odd):
    assert read(odd + "moved", 10, 20) == DATA[10:20]
    with pytest.raises(RangeIgnored, match="ignores Range"):
        read(odd + "whole", 10, 20)


def test_only_plain_urls_without_options_take_this_path():
    assert http_direct.applies("http://h/x", {})
    assert http_direct.applies("https://h/x?sig=1", {})
    assert not http_direct.applies("http://h/x", {"headers": {"Authorization": "x"}})
    assert not http_direct.applies("http://user:pw@h/x", {})
    assert not http_direct.applies("s3://b/x", {})
