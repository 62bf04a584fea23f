"""Destination paths: placeholder templates and safe joining of relative paths."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from rayfly.errors import InvalidInput

PLACEHOLDERS = ("node_id", "node_ip", "hostname")
_FIELD = re.compile(r"\{([^{}]*)\}")


def validate_template(template: str) -> str:
    """Return ``template`` if its only placeholders are {node_id}, {node_ip}, {hostname}."""
    if not template:
        raise InvalidInput("--dest is empty: give a path, e.g. /data/model.bin")
    bad = [f for f in _FIELD.findall(template) if f not in PLACEHOLDERS]
    stray = _FIELD.sub("", template)
    if bad or "{" in stray or "}" in stray:
        raise InvalidInput(
            f"--dest {template!r}: unknown placeholder "
            f"{'{' + bad[0] + '}' if bad else 'or stray brace'}; "
            f"allowed: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    return template


def render(template: str, node_id: str, node_ip: str, hostname: str) -> str:
    """Fill the placeholders of a validated template for one node."""
    values = {"node_id": node_id, "node_ip": node_ip, "hostname": hostname}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def safe_relpath(relpath: str) -> PurePosixPath:
    """A relative path from the origin, refused if it is absolute or climbs out with ``..``."""
    p = PurePosixPath(relpath)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InvalidInput(f"refusing origin path {relpath!r}: it would leave the destination")
    return p


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _decoded(segment: str, url: str) -> str:
    name = unquote(segment)
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidInput(
            f"refusing the file name {name!r} of {url.split('?')[0]}: it is not a safe file "
            "name once decoded; give the destination file name in --dest"
        )
    return name


def decode_relpath(relpath: str, url: str) -> str:
    """A relative path found at ``url`` as a file path: each segment percent-decoded for
    http(s) URLs (``my%20file.bin`` is ``my file.bin``); S3/GCS keys and local paths are
    literal. A segment that decodes to ``..``, a slash, a NUL or nothing is refused."""
    if not _is_http(url):
        return relpath
    return "/".join(_decoded(s, url) for s in relpath.split("/"))


def url_name(url: str) -> str:
    """The file name of one file's URL: its last path segment (decoded for http(s))."""
    if _is_http(url):
        return _decoded(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1], url)
    return url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]


def names_file(rendered: str) -> bool:
    """True when a single file's destination is a directory to put it in, by its name."""
    return rendered.endswith("/") or Path(rendered).is_dir()


def target_path(rendered: str, relpath: str | None, url: str) -> Path:
    """Where a file lands: ``rendered/relpath`` for a prefix; for one file ``rendered`` itself,
    or ``rendered/<name of url>`` when ``rendered`` ends with ``/`` or is an existing directory."""
    base = Path(rendered)
    if relpath is not None:
        return base / safe_relpath(relpath)
    if names_file(rendered):
        return base / safe_relpath(url_name(url))
    return base
