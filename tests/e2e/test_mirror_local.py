"""The mirror against a real registry, without Ray (in-process LocalBlobs backend).

Real servers on loopback: docker-registry behind a counting front, the mirror, containerd,
skopeo. Counts are read at the front, i.e. at the upstream.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import shutil
import socket
import subprocess
import time

import pytest
import requests

from rayfly.proxy.upstream import Credentials
from tests.support.mirror import concurrent_sha256s, start_local_mirror

pytestmark = pytest.mark.e2e


@pytest.fixture
def mirror(tmp_path, front, loop_thread):
    running = start_local_mirror(
        loop_thread, tmp_path / "cache", {front.host: front.url}, default=front.host
    )
    yield running
    running.stop()


def _blob_url(mirror, image, digest, ns=None):
    url = f"{mirror.url}/v2/{image.name}/blobs/{digest}"
    return url + (f"?ns={ns}" if ns else "")


def _raw_get(port, path):
    """A request whose path goes on the wire exactly as written (no client normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_v2_root(mirror):
    resp = requests.get(f"{mirror.url}/v2/")
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_manifest_by_tag_and_digest(mirror, front, test_image):
    url = f"{mirror.url}/v2/{test_image.name}/manifests/v1?ns={front.host}"
    resp = requests.get(url)
    assert resp.status_code == 200
    assert resp.content == test_image.manifest
    assert resp.headers["Docker-Content-Digest"] == test_image.manifest_digest
    assert resp.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    head = requests.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(test_image.manifest))
    by_digest = f"{mirror.url}/v2/{test_image.name}/manifests/{test_image.manifest_digest}"
    before = sum(front.state.manifest_gets.values())
    assert requests.get(by_digest).content == test_image.manifest
    assert sum(front.state.manifest_gets.values()) == before, "digest served from cache"


def test_blob_once_then_cached(mirror, front, test_image):
    digest = test_image.layer_digests[0]
    body = requests.get(_blob_url(mirror, test_image, digest, front.host)).content
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    again = requests.get(_blob_url(mirror, test_image, digest))
    assert again.content == body
    assert again.headers["Docker-Content-Digest"] == digest
    assert front.state.bytes_by_digest[digest] == len(body)
    assert front.state.blob_gets[digest] == 1


def test_range_and_head(mirror, front, test_image):
    digest = test_image.layer_digests[1]
    data = test_image.blobs[digest]
    resp = requests.get(
        _blob_url(mirror, test_image, digest), headers={"Range": "bytes=4194000-4194999"}
    )
    assert resp.status_code == 206
    assert resp.content == data[4194000:4195000]
    assert resp.headers["Content-Range"] == f"bytes 4194000-4194999/{len(data)}"
    tail = requests.get(_blob_url(mirror, test_image, digest), headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    head = requests.head(_blob_url(mirror, test_image, digest))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(data))
    bad = requests.get(
        _blob_url(mirror, test_image, digest), headers={"Range": f"bytes={len(data)}-"}
    )
    assert bad.status_code == 416


def test_unknown_ns_is_refused_without_upstream_traffic(mirror, front, test_image):
    digest = test_image.layer_digests[3]
    resp = requests.get(_blob_url(mirror, test_image, digest, "evil.example.com"))
    assert resp.status_code == 403
    assert resp.json()["errors"][0]["code"] == "DENIED"
    resp = requests.get(f"{mirror.url}/v2/{test_image.name}/manifests/v1?ns=127.0.0.1:1")
    assert resp.status_code == 403
    assert front.state.requests == 0


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/a/../../etc/blobs/sha256:{hex}", "NAME_INVALID"),
        ("/v2/../blobs/sha256:{hex}", "NAME_INVALID"),
        ("/v2/UPPER/blobs/sha256:{hex}", "NAME_INVALID"),
        ("/v2/rayfly/test/blobs/sha256:..%2F..%2Fetc", "DIGEST_INVALID"),
        ("/v2/rayfly/test/blobs/sha256:abc", "DIGEST_INVALID"),
        ("/v2/rayfly/test/blobs/md5:{hex}", "DIGEST_INVALID"),
        ("/v2/rayfly/test/manifests/..", "MANIFEST_INVALID"),
    ],
)
def test_bad_names_and_digests(mirror, front, path, code):
    status, body = _raw_get(mirror.port, path.format(hex="a" * 64))
    assert status == 400
    assert json.loads(body)["errors"][0]["code"] == code
    assert front.state.requests == 0
    assert not mirror.cache_dir.exists() or list(mirror.cache_dir.iterdir()) == []


def test_push_is_unsupported(mirror, front):
    resp = requests.post(f"{mirror.url}/v2/rayfly/test/blobs/uploads/")
    assert resp.status_code == 405
    assert resp.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert front.state.requests == 0


def test_blob_unknown(mirror, front, test_image):
    resp = requests.get(_blob_url(mirror, test_image, "sha256:" + "0" * 64))
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    resp = requests.get(f"{mirror.url}/v2/{test_image.name}/manifests/nope")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_upstream_down_is_a_clean_502(tmp_path, loop_thread, test_image):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    running = start_local_mirror(
        loop_thread,
        tmp_path / "c",
        {"dead": f"http://127.0.0.1:{dead}"},
        default="dead",
        timeout_s=2,
    )
    try:
        t0 = time.monotonic()
        resp = requests.get(_blob_url(running, test_image, test_image.config_digest), timeout=20)
        assert resp.status_code == 502
        resp = requests.get(f"{running.url}/v2/x/manifests/v1", timeout=20)
        assert resp.status_code == 502
        assert time.monotonic() - t0 < 10
    finally:
        running.stop()


def test_upstream_hanging_is_a_clean_502(tmp_path, loop_thread, test_image):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    running = start_local_mirror(
        loop_thread,
        tmp_path / "c",
        {"hang": f"http://127.0.0.1:{port}"},
        default="hang",
        timeout_s=1,
    )
    try:
        t0 = time.monotonic()
        resp = requests.get(f"{running.url}/v2/x/manifests/v1", timeout=30)
        assert resp.status_code == 502
        assert time.monotonic() - t0 < 10
    finally:
        running.stop()
        listener.close()


@pytest.mark.parametrize("which", [3, 0])
def test_corrupt_upstream_bytes_are_never_cached(mirror, front, test_image, which):
    """A small blob fails with a JSON error; a large one is cut short. Nothing is cached."""
    digest = test_image.layer_digests[which]
    front.state.corrupt.add(digest)
    resp = requests.get(_blob_url(mirror, test_image, digest), stream=True)
    if which == 3:
        assert resp.status_code == 502
        assert resp.json()["errors"][0]["code"] == "DIGEST_INVALID"
    else:
        assert resp.status_code == 200
        received = 0
        with pytest.raises(requests.exceptions.RequestException):
            for chunk in resp.iter_content(1 << 20):
                received += len(chunk)
        assert received < len(test_image.blobs[digest]), "the response was cut short"
    assert list(mirror.cache_dir.iterdir()) == []
    front.state.corrupt.clear()
    good = requests.get(_blob_url(mirror, test_image, digest))
    assert good.status_code == 200
    assert hashlib.sha256(good.content).hexdigest() == digest.split(":")[1]


def test_token_flow_anonymous(mirror, front, test_image):
    front.state.require_token = True
    resp = requests.get(f"{mirror.url}/v2/{test_image.name}/manifests/v1")
    assert resp.status_code == 200
    digest = test_image.layer_digests[2]
    assert requests.get(_blob_url(mirror, test_image, digest)).content == test_image.blobs[digest]
    assert len(front.state.tokens) >= 1


def test_401_passed_back_with_challenge(mirror, front, test_image):
    front.state.require_token = True
    front.state.credentials = ("alice", "s3cret")
    resp = requests.get(f"{mirror.url}/v2/{test_image.name}/manifests/v1")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert resp.json()["errors"][0]["code"] == "UNAUTHORIZED"
    # The client authenticates with the realm and retries with its own token: passed upstream.
    realm = front.url + "/token"
    token = requests.get(realm, auth=("alice", "s3cret")).json()["token"]
    ok = requests.get(
        f"{mirror.url}/v2/{test_image.name}/manifests/v1",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert ok.status_code == 200 and ok.content == test_image.manifest


def test_configured_credentials_and_no_secrets_in_logs(
    tmp_path, front, loop_thread, test_image, caplog
):
    front.state.require_token = True
    front.state.credentials = ("bob", "hunter2-secret")
    caplog.set_level(logging.DEBUG)
    running = start_local_mirror(
        loop_thread,
        tmp_path / "c",
        {front.host: front.url},
        default=front.host,
        credentials={front.host: Credentials("bob", "hunter2-secret")},
    )
    try:
        digest = test_image.layer_digests[3]
        resp = requests.get(_blob_url(running, test_image, digest))
        assert resp.status_code == 200 and resp.content == test_image.blobs[digest]
        assert requests.get(_blob_url(running, test_image, "sha256:" + "1" * 64)).status_code == 404
        text = caplog.text + repr(running.mirror.clients) + json.dumps(running.mirror.snapshot())
        assert "hunter2" not in text
        for token in front.state.tokens:
            assert token not in text
    finally:
        running.stop()


def test_verify_access_mode_checks_upstream_before_serving_cache(
    tmp_path, front, loop_thread, test_image
):
    running = start_local_mirror(
        loop_thread, tmp_path / "c", {front.host: front.url}, default=front.host, verify_access=True
    )
    try:
        digest = test_image.layer_digests[3]
        assert requests.get(_blob_url(running, test_image, digest)).status_code == 200
        front.state.require_token = True
        front.state.credentials = ("carol", "pw")
        resp = requests.get(_blob_url(running, test_image, digest))
        assert resp.status_code == 401, "a cached blob is not served to a client upstream refuses"
        assert front.state.blob_gets[digest] == 1
    finally:
        running.stop()


def test_twenty_concurrent_clients_one_upstream_fetch(mirror, front, test_image):
    digest = test_image.layer_digests[0]
    assert concurrent_sha256s(_blob_url(mirror, test_image, digest)) == {digest.split(":")[1]}
    assert front.state.bytes_by_digest[digest] == len(test_image.blobs[digest])


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_through_mirror(mirror, front, test_image, tmp_path):
    ref = f"docker://127.0.0.1:{mirror.port}/{test_image.name}:v1"
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", ref],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.encode() == test_image.manifest
    dest = tmp_path / "dir"
    out = subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", ref, f"dir:{dest}"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    for digest in test_image.blob_digests:
        blob = dest / digest.split(":")[1]
        assert blob.stat().st_size == len(test_image.blobs[digest])
    for digest in test_image.blob_digests:
        assert front.state.bytes_by_digest[digest] <= len(test_image.blobs[digest])


def test_containerd_pulls_through_mirror(mirror, front, test_image, containerd_factory):
    ctd = containerd_factory("local")
    ctd.remove_all()
    ctd.use_mirror(front.host, mirror.url, front.url)
    out = ctd.pull(f"{front.host}/{test_image.name}:v1")
    assert out.returncode == 0, out.stderr + out.stdout
    assert set(test_image.blob_digests) <= ctd.content_digests()
    for digest in test_image.blob_digests:
        assert front.state.bytes_by_digest[digest] == len(test_image.blobs[digest]), digest
    assert mirror.mirror.stats.blob_requests >= len(test_image.blob_digests)


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_registries_conf_routes_by_registry_without_ns(tmp_path, front, loop_thread, test_image):
    """CRI-O and podman send no ns: with the registries.conf that `rayfly mirror config crio`
    writes, a pull of FRONT/name goes to the mirror as /v2/FRONT/name/... and reaches the
    FRONT upstream although the mirror's default upstream is another registry."""
    from rayfly.proxy.runtimes import registries_conf

    running = start_local_mirror(
        loop_thread,
        tmp_path / "cache",
        {front.host: front.url, "other.invalid:5000": "http://127.0.0.1:9"},
        default="other.invalid:5000",
    )
    try:
        conf = tmp_path / "registries.conf"
        conf.write_text(registries_conf([front.host], running.url))
        ref = f"docker://{front.host}/{test_image.name}:v1"
        skopeo = ["skopeo", "--registries-conf", str(conf), "copy", "--src-tls-verify=false"]
        out = subprocess.run(
            [*skopeo, ref, f"dir:{tmp_path / 'dir'}"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stderr
        for digest in test_image.blob_digests:
            blob = tmp_path / "dir" / digest.split(":")[1]
            assert blob.read_bytes() == test_image.blobs[digest]
        assert running.mirror.stats.blob_requests >= len(test_image.blob_digests)
        assert running.mirror.stats.errors == 0
    finally:
        running.stop()
