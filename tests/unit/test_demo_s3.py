"""The benchmarks' S3 origin (:mod:`rayfly.demo_s3`): objects made straight in moto's backend are
real S3 objects, listed with their ETags and served over HTTP; the counters time the requests."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from rayfly import source
from rayfly.demo_s3 import CountingS3Server


@pytest.fixture(scope="module")
def server() -> Iterator[CountingS3Server]:
    s = CountingS3Server().start()
    yield s
    s.stop()


def test_objects_put_in_the_backend_are_listed_with_etags_and_served(
    server: CountingS3Server,
) -> None:
    bucket = f"demo-{uuid.uuid4().hex[:12]}"
    data = {f"p/d{i % 3}/f{i}": os.urandom(100 + i) for i in range(7)}
    assert server.put_in_backend(bucket, data.items()) == 7
    server.reset()
    before = time.monotonic()

    files = source.list_files(f"s3://{bucket}/p/", server.options())

    assert sorted(f.relpath for f in files) == sorted(k.removeprefix("p/") for k in data)
    for f in files:
        body = data["p/" + f.relpath]
        assert f.size == len(body)
        assert f.version.etag.strip('"') == hashlib.md5(body).hexdigest()
        got = source.read_range(f.url, server.options(), 0, f.size, f.version)
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert server.lists >= 1
    assert server.object_gets() == 7
    assert server.last_list is not None and server.first_get is not None
    assert before <= server.last_list <= server.first_get <= time.monotonic()


def test_put_in_the_backend_adds_to_an_existing_bucket(server: CountingS3Server) -> None:
    bucket = f"demo-{uuid.uuid4().hex[:12]}"
    server.put_in_backend(bucket, [("a/one", b"1")])
    server.put_in_backend(bucket, [("a/two", b"22")])

    files = source.list_files(f"s3://{bucket}/a/", server.options())

    assert {(f.relpath, f.size) for f in files} == {("one", 1), ("two", 2)}


def test_reset_forgets_the_request_times(server: CountingS3Server) -> None:
    bucket = f"demo-{uuid.uuid4().hex[:12]}"
    server.put_in_backend(bucket, [("k/x", b"x")])
    source.read_range(f"s3://{bucket}/k/x", server.options(), 0, 1)
    assert server.first_get is not None

    server.reset()

    assert server.first_get is None and server.last_list is None and server.lists == 0


def test_connections_are_kept_alive_as_s3_keeps_them(server: CountingS3Server) -> None:
    """A client's GETs share its connections (moto's own server closed one per response)."""
    bucket = f"demo-{uuid.uuid4().hex[:12]}"
    data = {f"k{i}": os.urandom(64 + i) for i in range(40)}
    server.put_in_backend(bucket, data.items())
    files = source.list_files(f"s3://{bucket}/", server.options())
    server.reset()
    for f in files:
        got = source.read_range(f.url, server.options(), 0, f.size, f.version)
        assert got == data[f.relpath]
    assert server.object_gets() == 40
    assert len(server.clients) <= 2, server.clients
