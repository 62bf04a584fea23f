"""Object versions: identity, conditional reads against real servers on loopback (no Ray)."""

from __future__ import annotations

import asyncio
import http.server
import os
import threading

import pytest

from rayfly import source
from rayfly.demo_origin import OriginServer
from rayfly.errors import OriginChanged, RangeIgnored
from rayfly.task import Cut, SourceSpec, task_id_for
from rayfly.version import Version, from_info, identity

URL = "http://o/x.bin"


def test_a_changed_object_is_a_new_task():
    old = Version(etag='"a"', size=8)
    same_size = Version(etag='"b"', size=8)
    other_size = Version(last_modified="Sat, 28 Nov 2026 09:00:00 GMT", size=5)
    ids = {SourceSpec(URL, version=v).resolved_task_id() for v in (old, same_size, other_size)}
    assert len(ids) == 3
    assert SourceSpec(URL, version=old).resolved_task_id() == task_id_for(URL, version=old.key)
    assert task_id_for(URL) == task_id_for(URL, version="")  # OCI/explicit ids unchanged


def test_versions_from_listings_of_each_protocol():
    http = from_info({"ETag": '"e"', "Last-Modified": "Sat, 28 Nov 2026 09:00:00 GMT"}, 3)
    s3 = from_info({"ETag": '"md5"', "VersionId": "v7", "LastModified": object()}, 3)
    gcs = from_info({"generation": "1712", "etag": "CJ"}, 3)
    assert http.validated and "last-modified=" in http.key and http.key.endswith("size=3")
    assert s3.key == 'etag="md5"|version-id=v7|size=3'
    assert "generation=1712" in gcs.key
    assert Version(etag='W/"weak"').strong_etag == ""
    assert not Version(size=3).validated and Version(size=3).key == ""


def test_no_validator_is_a_fresh_task_unless_the_user_pins_the_content():
    bare = Version(size=10)
    first, second = identity(bare), identity(bare)
    assert first.key != second.key  # every call a new task
    pinned = identity(bare, sha256="AB" * 32)
    assert pinned.key == identity(bare, sha256="ab" * 32).key
    assert identity(bare, tag="v1") == bare  # the tag is in the id already
    listed = Version(etag='"e"', size=10)
    assert identity(listed) == listed


@pytest.fixture
def origin(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"a" * 4096)
    server = OriginServer(tmp_path).start()
    yield server
    server.stop()


def test_http_listing_carries_the_version_and_range_support(origin):
    (listed,) = source.list_files(origin.url + "f.bin", {})
    assert listed.size == 4096 and listed.ranges
    assert listed.version.etag and listed.version.last_modified
    assert origin.requests["/f.bin"] == 0  # the listing is one HEAD, no body
    assert source.stat_file(origin.url + "f.bin", {}) == listed


def test_http_reads_fail_once_the_object_changed_same_size(origin):
    (listed,) = source.list_files(origin.url + "f.bin", {})
    origin.swap_after("/f.bin", 1, b"b" * 4096)

    async def go():
        first = await source.read_range_async(listed.url, {}, 0, 16, version=listed.version)
        with pytest.raises(OriginChanged, match="changed at the origin during the distribution"):
            await source.read_range_async(listed.url, {}, 16, 32, version=listed.version)
        return first

    assert asyncio.run(go()) == b"a" * 16
    assert origin.served("/f.bin") == 16  # the 412 sent no body


def test_local_reads_check_the_file_around_the_read(tmp_path):
    path = tmp_path / "l.bin"
    path.write_bytes(b"1" * 100)
    (listed,) = source.list_files(str(path), {})
    assert listed.version.mtime_ns and listed.version.inode
    assert source.read_range(listed.url, {}, 0, 10, listed.version) == b"1" * 10
    tmp = tmp_path / "new"
    tmp.write_bytes(b"2" * 100)
    os.replace(tmp, path)
    with pytest.raises(OriginChanged, match="run it again to get the new version"):
        source.read_range(listed.url, {}, 0, 10, listed.version)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def plain_server(tmp_path):
    """Python's own http.server: no Accept-Ranges, a ranged GET answered with 200."""
    (tmp_path / "p.bin").write_bytes(bytes(range(256)) * 64)
    handler = lambda *a, **kw: _Quiet(*a, directory=str(tmp_path), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_an_origin_that_ignores_range_is_detected_and_streamed(plain_server):
    (listed,) = source.list_files(plain_server + "p.bin", {})
    assert not listed.ranges and listed.version.last_modified and not listed.version.etag

    async def go():
        with pytest.raises(RangeIgnored):
            await source.read_range_async(listed.url, {}, 100, 200, version=listed.version)
        return [
            (i, p)
            async for i, p in source.stream_pieces(listed.url, {}, listed.version, Cut(16384, 5000))
        ]

    pieces = asyncio.run(go())
    assert [i for i, _ in pieces] == [0, 1, 2, 3]
    assert [len(p) for _, p in pieces] == [5000, 5000, 5000, 1384]
    assert b"".join(p for _, p in pieces) == bytes(range(256)) * 64

    async def split():  # a cut whose last 2 pieces' worth is split in four: 14 + 8 pieces
        cut = Cut(16384, 1024, 4)
        return [p async for _, p in source.stream_pieces(listed.url, {}, listed.version, cut)]

    tail = asyncio.run(split())
    assert [len(p) for p in tail] == [1024] * 14 + [256] * 8
    assert b"".join(tail) == bytes(range(256)) * 64


def test_s3_reads_are_pinned_to_the_listed_etag(s3_options):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdirs("rayfly-unit-versions", exist_ok=True)
    fs.pipe("rayfly-unit-versions/o.bin", b"1" * 1000)
    (listed,) = source.list_files("s3://rayfly-unit-versions/", s3_options)
    assert listed.version.etag and listed.version.key.endswith("size=1000")

    async def read():
        return await source.read_range_async(listed.url, s3_options, 0, 10, version=listed.version)

    assert asyncio.run(read()) == b"1" * 10
    fs.pipe("rayfly-unit-versions/o.bin", b"2" * 1000)  # overwritten, same size
    with pytest.raises(OriginChanged, match="changed at the origin during the distribution"):
        asyncio.run(read())


class _GetOnly(http.server.BaseHTTPRequestHandler):
    """A URL signed for GET only: HEAD is refused (403), as S3 presigned URLs do."""

    def log_message(self, *args: object) -> None:
        return

    def do_HEAD(self) -> None:
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.send_header("ETag", '"g1"')
        self.end_headers()
        self.wfile.write(b"hello")


def test_a_listing_falls_back_to_get_when_head_is_refused():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GetOnly)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        (listed,) = source.list_files(f"http://127.0.0.1:{httpd.server_address[1]}/x", {})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert listed.size == 5 and listed.version.etag == '"g1"'
