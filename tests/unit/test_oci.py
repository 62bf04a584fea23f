"""OCI vocabulary: names, tags, digests, references, manifests, error bodies."""

from __future__ import annotations

import hashlib
import json

import pytest

from rayfly.errors import InvalidInput
from rayfly.proxy import oci

HEX = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("name", ["a", "library/alpine", "a.b_c__d-e/f--g", "x/y/z/0"])
def test_valid_names(name):
    assert oci.validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "..", "a/../b", "A", "a//b", "/a", "a/", "a_", "-a", "a/.b", "a" * 256, "a b"]
)
def test_invalid_names(name):
    with pytest.raises(oci.NameInvalid) as err:
        oci.validate_name(name)
    assert err.value.status == 400
    assert json.loads(err.value.body())["errors"][0]["code"] == "NAME_INVALID"


@pytest.mark.parametrize("text", [f"sha256:{HEX}"])
def test_valid_digest(text):
    d = oci.parse_digest(text)
    assert str(d) == text
    assert d.task_id == f"sha256-{HEX}"
    assert d.matches(b"x") and not d.matches(b"y")


@pytest.mark.parametrize(
    "text",
    [
        "sha256:abc",
        f"sha256:{HEX.upper()}",
        f"md5:{HEX}",
        f"sha512:{HEX}",
        "sha256:../../etc/passwd",
        f"sha256:{HEX}/..",
        "",
        HEX,
    ],
)
def test_invalid_digest(text):
    with pytest.raises(oci.DigestInvalid) as err:
        oci.parse_digest(text)
    assert err.value.code == "DIGEST_INVALID" and err.value.status == 400


def test_tags_and_manifest_refs():
    assert oci.parse_manifest_ref("v1.0_rc-1") == "v1.0_rc-1"
    assert oci.parse_manifest_ref(f"sha256:{HEX}") == oci.Digest("sha256", HEX)
    for bad in ["", ".x", "-x", "a" * 129, "a/b", "..", "x y"]:
        with pytest.raises(oci.RegistryError):
            oci.parse_manifest_ref(bad)


@pytest.mark.parametrize(
    ("text", "registry", "name", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("localhost/app:1", "localhost", "app", "1", None),
        ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000", "a/b", "t", None),
        (f"ghcr.io/o/r@sha256:{HEX}", "ghcr.io", "o/r", None, HEX),
        (f"r.io:443/o/r:t@sha256:{HEX}", "r.io:443", "o/r", "t", HEX),
    ],
)
def test_image_refs(text, registry, name, tag, digest):
    ref = oci.parse_image_ref(text)
    assert (ref.registry, ref.name, ref.tag) == (registry, name, tag)
    assert (ref.digest.hex if ref.digest else None) == digest
    assert ref.reference == (f"sha256:{digest}" if digest else tag)


@pytest.mark.parametrize("text", ["UPPER/x", "a/../b", "x:bad tag", "r.io/a@sha256:zz"])
def test_bad_image_refs(text):
    with pytest.raises(oci.RegistryError):
        oci.parse_image_ref(text)


def _desc(data: bytes, media: str = oci.OCI_LAYER, platform=None):
    out = {
        "mediaType": media,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    if platform:
        out["platform"] = platform
    return out


def test_parse_manifest_and_blobs():
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.DOCKER_MANIFEST,
            "config": _desc(b"c", oci.DOCKER_CONFIG),
            "layers": [_desc(b"l1"), _desc(b"l2")],
        }
    ).encode()
    m = oci.parse_manifest(body)
    assert isinstance(m, oci.ImageManifest)
    assert m.media_type == oci.DOCKER_MANIFEST
    assert [d.size for d in m.blobs] == [1, 2, 2]
    assert m.blobs[0].digest == oci.digest_of(b"c")


def test_parse_index_and_select_platform():
    amd = _desc(b"m1", oci.OCI_MANIFEST, {"os": "linux", "architecture": "amd64"})
    arm = _desc(b"m2", oci.OCI_MANIFEST, {"os": "linux", "architecture": "arm64", "variant": "v8"})
    body = json.dumps({"schemaVersion": 2, "manifests": [amd, arm]}).encode()
    idx = oci.parse_manifest(body, oci.OCI_INDEX + "; charset=utf-8")
    assert isinstance(idx, oci.ImageIndex)
    assert [d.digest for d in idx.select(oci.parse_platform("linux/arm64"))] == [
        oci.digest_of(b"m2")
    ]
    assert idx.select(oci.parse_platform("linux/arm64/v8"))[0].digest == oci.digest_of(b"m2")
    assert len(idx.select(None)) == 2
    with pytest.raises(oci.ManifestUnknown):
        idx.select(oci.parse_platform("windows/amd64"))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"mediaType": "application/x-unknown"}',
        json.dumps(
            {
                "mediaType": oci.OCI_MANIFEST,
                "config": {"digest": "sha256:zz", "size": 1},
                "layers": [],
            }
        ).encode(),
        json.dumps(
            {
                "mediaType": oci.OCI_MANIFEST,
                "config": {"digest": f"sha256:{HEX}", "size": -1},
                "layers": [],
            }
        ).encode(),
    ],
)
def test_bad_manifests(body):
    with pytest.raises(oci.RegistryError):
        oci.parse_manifest(body)


def test_platform_parsing():
    assert str(oci.parse_platform("linux/arm64/v8")) == "linux/arm64/v8"
    with pytest.raises(InvalidInput):
        oci.parse_platform("linux")


def test_error_bodies_and_statuses():
    cases = {
        oci.BlobUnknown: 404,
        oci.ManifestUnknown: 404,
        oci.Denied: 403,
        oci.Unsupported: 405,
        oci.Unauthorized: 401,
        oci.UpstreamError: 502,
    }
    for cls, status in cases.items():
        err = cls("m")
        assert err.status == status
        doc = json.loads(err.body())
        assert doc == {"errors": [{"code": cls.code, "message": "m", "detail": None}]}
