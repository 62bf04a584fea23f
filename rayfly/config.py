"""Settings as frozen dataclasses; every field can also be set by an environment variable.

The variable for a field is ``RAYFLY_`` + the field name in upper case, for example
``RAYFLY_CONCURRENCY=16`` or ``RAYFLY_CACHE_QUOTA=200GiB``. ``RAYFLY_CACHE_DIR`` is no field:
each node reads it from its own environment (:func:`node_cache_dir`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from rayfly.errors import InvalidInput
from rayfly.scheduling import piece_policy

NAMESPACE = "rayfly"
SCHEDULER_NAME = "rayfly-scheduler"
PEER_PREFIX = "rayfly-peer-"

T = TypeVar("T")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
}


def parse_size(text: str | int) -> int:
    """Parse ``"64MiB"``, ``"4m"``, ``"1G"`` or ``"1048576"`` into a byte count (binary units)."""
    if isinstance(text, int):
        return text
    raw = text.strip().lower().replace(" ", "")
    digits = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(digits) :]
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise InvalidInput(f"invalid size {text!r}: use a number with an optional unit, e.g. 16MiB")
    return int(value * _UNITS[unit])


_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_OFF = {"off", "none", "never", "unlimited", "0"}


def parse_duration(text: str | float) -> float | None:
    """Parse ``"7d"``, ``"15m"``, ``"30s"``, ``"1.5h"`` or seconds into seconds; ``"off"`` (or
    ``0``) is None: no limit."""
    if isinstance(text, int | float):
        return float(text) or None
    raw = text.strip().lower()
    if raw in _OFF:
        return None
    unit = raw[-1] if raw and raw[-1].isalpha() else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        value = -1.0
    if unit not in _DURATION_UNITS or value <= 0:
        raise InvalidInput(f"invalid duration {text!r}: use e.g. 30s, 15m, 1h, 7d, or off")
    return value * _DURATION_UNITS[unit]


def parse_percent(text: str | float) -> float:
    """Parse ``"80%"`` or ``0.8`` into a fraction between 0 and 1."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise InvalidInput(f"invalid share {text!r}: use a percentage, e.g. 80%")
    return value


def parse_switch(text: str | bool) -> bool:
    """Parse an on/off setting: ``1/true/yes/on`` or ``0/false/no/off``."""
    raw = str(text).strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise InvalidInput(f"invalid switch {text!r}: use on or off")


def parse_rate(text: str | float | None) -> float | None:
    """Parse a byte rate, ``"100MiB"`` or ``"100MiB/s"`` (binary units), into bytes/s; ``"0"``,
    ``"unlimited"`` or None mean no limit (None)."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text) or None
    raw = text.strip().lower().removesuffix("/s")
    if raw in _OFF or raw == "":
        return None
    try:
        return float(parse_size(raw)) or None
    except InvalidInput:
        raise InvalidInput(
            f"invalid rate {text!r}: use bytes per second with a unit, e.g. 100MiB (or unlimited)"
        ) from None


def node_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """This node's cache directory: ``RAYFLY_CACHE_DIR``, else ``~/.cache/rayfly`` (XDG).

    Read by the peer on its node, from the environment of the node's raylet (which Ray's
    workers inherit): each node decides where its cache lives, not the client.
    """
    env = os.environ if environ is None else environ
    if env.get("RAYFLY_CACHE_DIR"):
        return Path(env["RAYFLY_CACHE_DIR"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rayfly"


def _check_policy(name: str) -> str:
    """``name`` if it names a piece policy, else :class:`InvalidInput` listing the known ones."""
    piece_policy(name)
    return name


@dataclass(frozen=True)
class PeerConfig:
    """How a node's peer stores and moves pieces (its cache directory is the node's own:
    :func:`node_cache_dir`)."""

    cache_quota: int = 50 << 30
    concurrency: int = 8
    upload_slots: int = 8
    piece_timeout_s: float = 60.0


@dataclass(frozen=True)
class PackConfig:
    """How the client packs a prefix of small files (:mod:`rayfly.pack`): files of at most
    ``pack_threshold`` bytes (``RAYFLY_PACK_THRESHOLD``; 0: never) go, in listing order, into
    shared tasks of at most ``pack_size`` bytes (``RAYFLY_PACK_SIZE``)."""

    pack_threshold: int = 1 << 20
    pack_size: int = 64 << 20

    def __post_init__(self) -> None:
        if self.pack_threshold < 0 or self.pack_size <= 0:
            raise InvalidInput(
                f"pack threshold {self.pack_threshold} and pack size {self.pack_size}: "
                "use a size >= 0 for RAYFLY_PACK_THRESHOLD and > 0 for RAYFLY_PACK_SIZE"
            )


@dataclass(frozen=True)
class SchedulerConfig:
    """How the scheduler hands out pieces.

    ``policy`` (``RAYFLY_POLICY``): the piece order of a task registered without one
    (:data:`rayfly.scheduling.POLICIES`: ``rarest-first``, ``sequential``); an unknown name
    fails here.
    """

    origin_parallelism: int = 8
    lease_timeout_s: float = 60.0
    long_poll_s: float = 0.5
    policy: str = dataclasses.field(default="rarest-first", metadata={"parse": _check_policy})
    wake_per_piece: int = 8

    def __post_init__(self) -> None:
        _check_policy(self.policy)


@dataclass(frozen=True)
class NodeConfig:
    """Settings a node reads from its own environment (its raylet's, which Ray's workers on the
    node inherit), not from the client: rates in bytes/s (None: unlimited) for pieces fetched,
    pieces served and origin reads; the cache's TTL, disk watermarks and GC period; and how many
    bytes of recently received or served pieces the peer keeps referenced in Ray's object store
    to serve them again without a disk read (``serve_memory``; default: a quarter of the node's
    object store, at most 128 MiB; 0: always from disk); and whether a piece held by a parent on
    this host, whose piece store this node sees, is read from that store's file directly
    instead of through the object store (``local_reads``, default on); and whether the piece
    store writes aligned pieces with ``O_DIRECT``, past the page cache (``direct_io``, default
    on where the filesystem allows it)."""

    download_rate: float | None = dataclasses.field(default=None, metadata={"parse": parse_rate})
    upload_rate: float | None = dataclasses.field(default=None, metadata={"parse": parse_rate})
    origin_rate: float | None = dataclasses.field(default=None, metadata={"parse": parse_rate})
    cache_ttl: float | None = dataclasses.field(
        default=7 * 86400.0, metadata={"parse": parse_duration}
    )
    cache_high_watermark: float = dataclasses.field(default=0.80, metadata={"parse": parse_percent})
    cache_low_watermark: float = dataclasses.field(default=0.60, metadata={"parse": parse_percent})
    gc_interval: float | None = dataclasses.field(default=900.0, metadata={"parse": parse_duration})
    serve_memory: int | None = dataclasses.field(default=None, metadata={"parse": parse_size})
    local_reads: bool = dataclasses.field(default=True, metadata={"parse": parse_switch})
    direct_io: bool = dataclasses.field(default=True, metadata={"parse": parse_switch})


def _coerce(raw: str, kind: type) -> Any:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if kind is int:
        return parse_size(raw)
    return kind(raw)


def from_env(cls: type[T], environ: dict[str, str] | None = None, **overrides: Any) -> T:
    """Build ``cls`` from defaults, then ``RAYFLY_*`` variables, then explicit ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    types = {"int": int, "float": float, "str": str, "bool": bool}
    for f in fields(cls):  # type: ignore[arg-type]
        name = f"RAYFLY_{f.name.upper()}"
        if name in env:
            kind = types.get(str(f.type), str)
            parse = f.metadata.get("parse")
            try:
                values[f.name] = parse(env[name]) if parse else _coerce(env[name], kind)
            except (ValueError, InvalidInput) as exc:
                raise InvalidInput(f"environment variable {name}={env[name]!r}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
