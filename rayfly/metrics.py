"""rayfly's counters and gauges, through ``ray.util.metrics``.

Ray exports them on every node's Prometheus endpoint (``ray.nodes()[i]["MetricsExportPort"]``,
path ``/metrics``) with the prefix ``ray_``; counters get the suffix ``_total``. So
``rayfly_origin_bytes`` is scraped as ``ray_rayfly_origin_bytes_total{node_id="..."}``.

| metric | kind | tags | what |
| --- | --- | --- | --- |
| rayfly_origin_bytes | counter | node_id | piece bytes a node read from the origin |
| rayfly_peer_bytes | counter | node_id | piece bytes a node received from other peers |
| rayfly_pieces_served | counter | node_id | pieces a node uploaded to other peers |
| rayfly_piece_failures | counter | node_id, reason | pieces that failed, by reason |
| rayfly_mirror_requests | counter | node_id, status | registry-mirror responses, by HTTP status |
| rayfly_cache_bytes | gauge | node_id | bytes the node's piece store holds |

Recording never raises: a metrics problem must not fail a transfer. Ray stops exporting a gauge
that is not set again before its next report, so gauges are re-set every second by a daemon
thread of the recording process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rayfly.errors import MetricsUnavailable

log = logging.getLogger(__name__)

ORIGIN_BYTES = "rayfly_origin_bytes"
PEER_BYTES = "rayfly_peer_bytes"
PIECES_SERVED = "rayfly_pieces_served"
PIECE_FAILURES = "rayfly_piece_failures"
MIRROR_REQUESTS = "rayfly_mirror_requests"
CACHE_BYTES = "rayfly_cache_bytes"

FAILURE_REASONS = ("timeout", "parent_died", "corrupt", "origin", "unavailable", "other")

_SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    ORIGIN_BYTES: ("counter", "Piece bytes read from the origin", ("node_id",)),
    PEER_BYTES: ("counter", "Piece bytes received from other peers", ("node_id",)),
    PIECES_SERVED: ("counter", "Pieces uploaded to other peers", ("node_id",)),
    PIECE_FAILURES: ("counter", "Pieces that failed, by reason", ("node_id", "reason")),
    MIRROR_REQUESTS: ("counter", "Registry-mirror responses by status", ("node_id", "status")),
    CACHE_BYTES: ("gauge", "Bytes held by the node's piece store", ("node_id",)),
}
GAUGE_REFRESH_S = 1.0

_made: dict[str, Any] = {}
_gauges: dict[tuple[str, str], float] = {}
_lock = threading.Lock()
_refresher: threading.Thread | None = None


def exported_name(name: str) -> str:
    """The name Ray's Prometheus endpoint shows for metric ``name``."""
    kind = _SPECS[name][0]
    return f"ray_{name}_total" if kind == "counter" else f"ray_{name}"


def _metric(name: str) -> Any:
    if name not in _made:
        from ray.util import metrics

        kind, description, tags = _SPECS[name]
        cls = metrics.Counter if kind == "counter" else metrics.Gauge
        _made[name] = cls(name, description=description, tag_keys=tags)
    return _made[name]


def _record(name: str, value: float, tags: dict[str, str]) -> None:
    try:
        metric = _metric(name)
        if _SPECS[name][0] == "counter":
            if value > 0:
                metric.inc(value, tags=tags)
        else:
            metric.set(value, tags=tags)
    except Exception as exc:  # never let metrics break a transfer
        log.debug("metric %s not recorded: %s", name, exc)


def failure_reason(reason: str, parent_dead: bool = False) -> str:
    """Fold a piece failure's message into one of :data:`FAILURE_REASONS`."""
    text = reason.lower()
    if parent_dead or "parent died" in text:
        return "parent_died"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "corrupt" in text or "digest" in text:
        return "corrupt"
    if "unavailable" in text or "does not hold" in text:
        return "unavailable"
    if "origin" in text or "unreachable" in text:
        return "origin"
    return "other"


def piece_result(node_id: str, result: Any) -> None:
    """Count one piece outcome of a peer: a ``Done`` (bytes by source) or a ``Failed``."""
    tags = {"node_id": node_id}
    if hasattr(result, "nbytes"):
        _record(ORIGIN_BYTES if result.parent is None else PEER_BYTES, result.nbytes, tags)
        return
    reason = "origin" if result.parent is None else None
    reason = reason or failure_reason(result.reason, getattr(result, "parent_dead", False))
    _record(PIECE_FAILURES, 1, {**tags, "reason": reason})


def piece_served(node_id: str) -> None:
    """Count a piece uploaded to another peer."""
    _record(PIECES_SERVED, 1, {"node_id": node_id})


def cache_bytes(node_id: str, used: int) -> None:
    """Set the bytes held by a node's piece store (kept exported until the next call)."""
    _gauges[(CACHE_BYTES, node_id)] = float(used)
    _record(CACHE_BYTES, used, {"node_id": node_id})
    _start_refresher()


def _start_refresher() -> None:
    """Re-set every gauge each :data:`GAUGE_REFRESH_S`: Ray drops a gauge series that has not
    been set since its last report, so a value set once would vanish from the endpoint."""
    global _refresher
    with _lock:
        if _refresher is not None:
            return
        _refresher = threading.Thread(target=_refresh, name="rayfly-metrics", daemon=True)
        _refresher.start()


def _refresh() -> None:
    while True:
        time.sleep(GAUGE_REFRESH_S)
        for (name, node_id), value in list(_gauges.items()):
            _record(name, value, {"node_id": node_id})


def mirror_request(node_id: str, status: int) -> None:
    """Count one registry-mirror response with HTTP ``status``."""
    _record(MIRROR_REQUESTS, 1, {"node_id": node_id, "status": str(status)})


def mirror_middleware(node_id: str) -> Callable[..., Awaitable[Any]]:
    """An aiohttp middleware counting every response of the mirror by status.

    Add it with ``web.Application(middlewares=[mirror_middleware(node_id)])``.
    """
    from aiohttp import web

    @web.middleware
    async def count(request: web.Request, handler: Callable[..., Awaitable[Any]]) -> Any:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            with contextlib.suppress(Exception):
                mirror_request(node_id, status)

    return count


def parse_prometheus(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` (exported name) in Prometheus text format."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        labels: dict[str, str] = {}
        if "{" in head:
            metric, _, body = head.partition("{")
            if metric != name:
                continue
            for part in _split_labels(body.rstrip("}")):
                key, _, val = part.partition("=")
                labels[key] = val.strip('"')
        elif head != name:
            continue
        out.append((labels, float(value)))
    return out


def _split_labels(body: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def _fetch_text(url: str, timeout: float, attempts: int = 3) -> str:
    import urllib.request

    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.read().decode()
        except OSError as exc:
            if attempt == attempts - 1:
                raise MetricsUnavailable(f"metrics endpoint {url} did not answer: {exc}") from exc
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def scrape(name: str, tags: dict[str, str] | None = None, timeout: float = 5.0) -> float:
    """Sum of metric ``name`` (rayfly name) over every alive node's Prometheus endpoint.

    Only samples whose labels include ``tags`` count. Reads ``http://127.0.0.1:<port>/metrics``
    when the node runs on this machine, else the node's address. An endpoint that does not
    answer after a few tries raises :class:`MetricsUnavailable` (a sum without it would be wrong).
    """
    import socket

    import ray

    local = {socket.gethostname(), ray.util.get_node_ip_address()}
    total = 0.0
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if not node.get("Alive") or not port:
            continue
        host = node["NodeManagerAddress"]
        host = "127.0.0.1" if host in local else host
        text = _fetch_text(f"http://{host}:{port}/metrics", timeout)
        for labels, value in parse_prometheus(text, exported_name(name)):
            if all(labels.get(k) == v for k, v in (tags or {}).items()):
                total += value
    return total
