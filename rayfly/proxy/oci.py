"""OCI distribution vocabulary: references, digests, media types, manifests and wire errors.

Everything here is pure: no network, no filesystem. Names, tags and digests are validated with
the OCI distribution spec's grammar before any other layer may use them to build a URL, a task
id or a path. The spec's error codes live here, in one place; only the HTTP layer
(:mod:`rayfly.proxy.server`) turns them into responses.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from rayfly.errors import IntegrityError, InvalidInput, RayflyError

NAME_RE = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
HOST_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::[0-9]{1,5})?"
)
_HEX_LEN = {"sha256": 64}
MAX_NAME_LEN = 255

DOCKER_HUB = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT_MANIFESTS = ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))
MAX_MANIFEST_BYTES = 4 << 20


class RegistryError(RayflyError):
    """An error the mirror answers in the OCI spec's JSON form.

    ``code`` is the spec's error code, ``status`` the HTTP status that carries it.
    """

    code = "UNKNOWN"
    status = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def body(self) -> bytes:
        """The response body: ``{"errors": [{"code", "message", "detail"}]}``."""
        return error_body(self.code, self.message, self.detail)


class BlobUnknown(RegistryError):
    """The blob is not known to the upstream registry."""

    code, status = "BLOB_UNKNOWN", 404


class ManifestUnknown(RegistryError):
    """The manifest (tag or digest) is not known to the upstream registry."""

    code, status = "MANIFEST_UNKNOWN", 404


class NameInvalid(RegistryError):
    """A repository name breaks the spec's grammar (``..``, upper case, too long, ...)."""

    code, status = "NAME_INVALID", 400


class DigestInvalid(RegistryError):
    """A digest is malformed, of an unsupported algorithm, or bytes did not match it."""

    code, status = "DIGEST_INVALID", 400


class TagInvalid(RegistryError):
    """A tag breaks the spec's grammar."""

    code, status = "MANIFEST_INVALID", 400


class ManifestInvalid(RegistryError):
    """A manifest could not be parsed, or is of an unsupported media type."""

    code, status = "MANIFEST_INVALID", 400


class Unauthorized(RegistryError):
    """The upstream asked for authentication; ``www_authenticate`` is passed back to the client."""

    code, status = "UNAUTHORIZED", 401

    def __init__(self, message: str, www_authenticate: str = "", detail: Any = None) -> None:
        super().__init__(message, detail)
        self.www_authenticate = www_authenticate


class Denied(RegistryError):
    """The request is refused: an unconfigured upstream, or upstream denied access."""

    code, status = "DENIED", 403


class Unsupported(RegistryError):
    """The operation is not part of this pull-only mirror (pushes, deletes, catalog)."""

    code, status = "UNSUPPORTED", 405


class RangeNotSatisfiable(RegistryError):
    """A ``Range`` header asks for bytes outside the blob."""

    code, status = "RANGE_INVALID", 416


class UpstreamError(RegistryError):
    """The upstream registry is down, timed out or answered something unusable (a 502)."""

    code, status = "UNKNOWN", 502


class BlobDigestMismatch(DigestInvalid, IntegrityError):
    """Bytes from upstream did not match their digest; nothing was cached."""

    status = 502


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    """Encode one OCI error as the spec's JSON body."""
    return json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()


@dataclass(frozen=True)
class Digest:
    """A validated content digest such as ``sha256:<64 hex>``."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def task_id(self) -> str:
        """The P2P task id of this blob: ``sha256-<hex>`` (safe as a file name)."""
        return f"{self.algorithm}-{self.hex}"

    def matches(self, data: bytes) -> bool:
        """Whether ``data`` hashes to this digest."""
        return hashlib.new(self.algorithm, data).hexdigest() == self.hex


def parse_digest(text: str) -> Digest:
    """Validate ``text`` as a sha256 digest with lower-case hex, or raise DigestInvalid.

    sha256 is the only algorithm the mirror accepts: it is what registries use, and the P2P core
    checks every blob's bytes against a sha256.
    """
    if not isinstance(text, str) or not DIGEST_RE.fullmatch(text):
        raise DigestInvalid(f"invalid digest {text!r}", detail={"digest": str(text)[:200]})
    algorithm, hexpart = text.split(":", 1)
    want = _HEX_LEN.get(algorithm)
    if want is None:
        raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}: use sha256")
    if len(hexpart) != want or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise DigestInvalid(f"invalid {algorithm} digest {text!r}: want {want} lower-case hex")
    return Digest(algorithm, hexpart)


def digest_of(data: bytes) -> Digest:
    """The sha256 digest of ``data``."""
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid repository name, else raise NameInvalid."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LEN or not NAME_RE.fullmatch(name):
        raise NameInvalid(f"invalid repository name {str(name)[:300]!r}")
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise TagInvalid."""
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise TagInvalid(f"invalid tag {str(tag)[:200]!r}")
    return tag


def parse_manifest_ref(ref: str) -> str | Digest:
    """A manifest reference from a URL: a Digest if it has a ``:``, else a validated tag."""
    return parse_digest(ref) if ":" in ref else validate_tag(ref)


def validate_registry(host: str) -> str:
    """Return ``host`` (``name[:port]``) if it is a plausible registry host, else raise Denied."""
    if not isinstance(host, str) or len(host) > 253 or not HOST_RE.fullmatch(host):
        raise Denied(f"invalid registry host {str(host)[:200]!r}")
    return host.lower()


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: ``registry/name[:tag][@digest]``."""

    registry: str
    name: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def reference(self) -> str:
        """What to put after ``/manifests/``: the digest if pinned, else the tag."""
        return str(self.digest) if self.digest else (self.tag or "latest")

    def __str__(self) -> str:
        text = f"{self.registry}/{self.name}"
        if self.tag:
            text += f":{self.tag}"
        return f"{text}@{self.digest}" if self.digest else text


def parse_image_ref(text: str, default_registry: str = DOCKER_HUB) -> ImageRef:
    """Parse ``[registry/]name[:tag][@digest]`` the way docker does.

    The first path component is a registry if it contains ``.`` or ``:`` or is ``localhost``;
    Docker Hub names without a ``/`` get the ``library/`` prefix. Raises an InvalidInput-like
    RegistryError (NameInvalid, TagInvalid, DigestInvalid) on malformed input.
    """
    rest, digest = text.strip(), None
    if "@" in rest:
        rest, dtext = rest.split("@", 1)
        digest = parse_digest(dtext)
    registry, path = default_registry, rest
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = validate_registry(first), remainder
    tag = None
    slash, colon = path.rfind("/"), path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], validate_tag(path[colon + 1 :])
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, validate_name(path), tag, digest)


@dataclass(frozen=True)
class Platform:
    """An image platform such as ``linux/amd64`` or ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]``; raise InvalidInput on malformed text."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_.-]+", p) for p in parts):
        raise InvalidInput(f"invalid platform {text!r}: use os/arch[/variant], e.g. linux/amd64")
    return Platform(*parts)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: media type, digest, size and, in an index, a platform."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None


@dataclass(frozen=True)
class ImageManifest:
    """A single-platform manifest: one config and the layers, in order."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """The config followed by the layers: every blob a pull fetches."""
        return (self.config, *self.layers)


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform index (OCI index or Docker manifest list)."""

    media_type: str
    manifests: tuple[Descriptor, ...] = field(default_factory=tuple)

    def select(self, platform: Platform | None) -> list[Descriptor]:
        """The manifests for ``platform`` (all of them if None); raise ManifestUnknown if none."""
        if platform is None:
            return list(self.manifests)
        chosen = [d for d in self.manifests if _platform_matches(d.platform, platform)]
        if not chosen:
            have = ", ".join(str(d.platform) for d in self.manifests if d.platform)
            raise ManifestUnknown(f"no manifest for platform {platform} in the index (has: {have})")
        return chosen[:1]


def _platform_matches(have: Platform | None, want: Platform) -> bool:
    if have is None or (have.os, have.architecture) != (want.os, want.architecture):
        return False
    return not want.variant or have.variant == want.variant


def _descriptor(raw: Any) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestInvalid("a descriptor is not an object")
    size = raw.get("size")
    if not isinstance(size, int) or size < 0:
        raise ManifestInvalid(f"descriptor size {size!r} is not a non-negative integer")
    plat = raw.get("platform")
    platform = None
    if isinstance(plat, dict) and plat.get("os") and plat.get("architecture"):
        platform = Platform(
            str(plat["os"]), str(plat["architecture"]), str(plat.get("variant", ""))
        )
    return Descriptor(
        str(raw.get("mediaType", "")), parse_digest(str(raw.get("digest"))), size, platform
    )


def parse_manifest(data: bytes, content_type: str = "") -> ImageManifest | ImageIndex:
    """Parse a manifest or index body; the body's ``mediaType`` wins over ``content_type``."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(f"manifest of {len(data)} bytes is larger than {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestInvalid(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest is not a JSON object")
    media_type = str(doc.get("mediaType") or content_type.split(";")[0].strip())
    if media_type in INDEX_TYPES or (not media_type and "manifests" in doc):
        return ImageIndex(
            media_type or OCI_INDEX, tuple(_descriptor(m) for m in doc.get("manifests", []))
        )
    if media_type in MANIFEST_TYPES or (not media_type and "layers" in doc):
        layers = tuple(_descriptor(m) for m in doc.get("layers") or [])
        return ImageManifest(media_type or OCI_MANIFEST, _descriptor(doc.get("config")), layers)
    raise ManifestInvalid(f"unsupported manifest media type {media_type!r}")
