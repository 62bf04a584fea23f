"""Destination paths: placeholder templates and safe joining of relative paths."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

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


def target_path(rendered: str, relpath: str | None, name: str) -> Path:
    """Where a file lands: ``rendered/relpath`` for a prefix; for one file ``rendered`` itself,
    or ``rendered/name`` when ``rendered`` ends with ``/`` or is an existing directory."""
    base = Path(rendered)
    if relpath is not None:
        return base / safe_relpath(relpath)
    if rendered.endswith("/") or base.is_dir():
        return base / safe_relpath(name)
    return base
