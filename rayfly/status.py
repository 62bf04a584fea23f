"""What rayfly is doing on a cluster: tasks, peers, mirrors, pins; and the per-node caches.

Used by ``rayfly status`` and ``rayfly cache ls|rm|gc``. These only look at a cluster that
already runs: they never start Ray and never create actors.
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray

from rayfly.actors import placement
from rayfly.cluster import connect_existing
from rayfly.config import NAMESPACE, SCHEDULER_NAME
from rayfly.errors import NodeNotFound, TaskNotFound

ACTOR_TIMEOUT_S = 10.0


def _scheduler() -> Any:
    try:
        return ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def _gather(refs: dict[str, Any]) -> dict[str, Any]:
    """Results by key; an actor that fails or does not answer in time gives an error dict."""
    answers = placement.gather(refs, ACTOR_TIMEOUT_S)
    return {k: {"error": error} if error else answer for k, (answer, error) in answers.items()}


def task_rows() -> list[dict[str, Any]]:
    """The scheduler's tasks (none when rayfly has not run on this cluster)."""
    scheduler = _scheduler()
    if scheduler is None:
        return []
    return ray.get(scheduler.status.remote(), timeout=ACTOR_TIMEOUT_S)


def peer_rows() -> list[dict[str, Any]]:
    """Each node's peer: cache used / quota, uploads and downloads in flight."""
    infos = _gather({n: p.info.remote() for n, p in placement.existing_peers().items()})
    return [{"node_id": node_id, **info} for node_id, info in sorted(infos.items())]


def mirror_rows() -> list[dict[str, Any]]:
    """Each node's registry-mirror endpoint and health (empty when no mirror runs)."""
    try:
        from rayfly.proxy.actor import mirror_status
    except ImportError:
        return []
    return mirror_status()


def pin_rows() -> list[dict[str, Any]]:
    """Pinned distributions that late-joining nodes receive."""
    from rayfly import pin

    return pin.list_pins()


def cluster_status(address: str | None = None) -> dict[str, Any]:
    """Everything ``rayfly status`` shows, as plain data."""
    connect_existing(address)
    return {
        "cluster": ray.get_runtime_context().gcs_address,
        "nodes_alive": len(placement.alive_nodes()),
        "scheduler": _scheduler() is not None,
        "tasks": task_rows(),
        "peers": peer_rows(),
        "mirrors": mirror_rows(),
        "pins": pin_rows(),
    }


def _mib(n: Any) -> str:
    return f"{n / (1 << 20):.1f}MiB" if isinstance(n, int | float) else "?"


def _rate(value: Any) -> str:
    return f"{value / (1 << 20):.1f}MiB/s" if value else "unlimited"


def _duration(seconds: Any, none: str) -> str:
    if not seconds:
        return none
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _limits(limits: dict[str, Any], gc: dict[str, Any]) -> str:
    return (
        f"download {_rate(limits.get('download_rate'))} upload {_rate(limits.get('upload_rate'))} "
        f"origin {_rate(limits.get('origin_rate'))}; cache ttl {_duration(gc.get('ttl_s'), 'off')} "
        f"watermarks {gc.get('low_watermark', 0):.0%}-{gc.get('high_watermark', 0):.0%} "
        f"gc every {_duration(gc.get('interval_s'), 'never')}"
    )


def format_status(status: dict[str, Any]) -> str:
    """``cluster_status()`` as text tables."""
    lines = [f"cluster {status['cluster']}: {status['nodes_alive']} node(s) alive"]
    if not status["scheduler"]:
        lines.append("rayfly has not run on this cluster yet (no scheduler)")
    lines.append(f"tasks ({len(status['tasks'])}):")
    for t in status["tasks"]:
        lines.append(
            f"  {t['task_id'][:16]} {t['state']:<8} {_mib(t['length']):>10} "
            f"pieces={t['pieces']} nodes_done={t['nodes_done']}/{t['peers']}  {t['url']}"
            + (f"  error: {t['error']}" if t.get("error") else "")
        )
        if asks := t.get("asks"):
            lines.append(f"  {'':16} {_asks(asks)}")
    lines.append(f"peers ({len(status['peers'])}):")
    for p in status["peers"]:
        if "error" in p:
            lines.append(f"  {p['node_id'][:12]} unreachable: {p['error']}")
            continue
        lines.append(
            f"  {p['node_id'][:12]} {p.get('node_ip', ''):<15} "
            f"cache {p.get('cache_id', '?')[:12]}{_cache_notes(p)} "
            f"{_mib(p['cache_used'])}/{_mib(p['cache_quota'])} "
            f"uploads={p['uploads']} downloads={p.get('downloads_inflight', 0)} "
            f"served={p['pieces_served']} "
            f"(from memory {p.get('pieces_served_from_memory', 0)}, "
            f"{_kept(p.get('serve_memory', {}))})"
        )
        lines.append(f"  {'':12} {_limits(p.get('limits', {}), p.get('gc', {}))}")
    lines.append(f"mirrors ({len(status['mirrors'])}):")
    for m in status["mirrors"]:
        health = "healthy" if m.get("healthy") else f"UNHEALTHY {m.get('error', '')}"
        lines.append(f"  {m['node_id'][:12]} {m.get('url', '-')} {health}")
    lines.append(f"pins ({len(status['pins'])}):")
    for p in status["pins"]:
        lines.append(
            f"  {p['pin_id']} {p['source']} -> {p['dest']} nodes={len(p['nodes_done'])}"
            + (f" errors={p['errors']}" if p.get("errors") else "")
        )
    return "\n".join(lines)


def _kept(kept: dict[str, int]) -> str:
    """The bytes of pieces a peer keeps to serve, and of its node's object store it pins."""
    text = f"{_mib(kept.get('held', 0))} kept"
    if "referenced" in kept:
        text += f", {_mib(kept['referenced'])} of the object store referenced"
    return text


def _cache_notes(peer: dict[str, Any]) -> str:
    """What a peer row says about its cache beside its id: a directory shared with another
    live peer, a filesystem on which task space cannot be reserved (no ``fallocate``)."""
    notes = []
    if peer.get("cache_shared"):
        notes.append("temporary: directory shared with a live peer")
    if unreserved := peer.get("tasks_begun_unreserved"):
        notes.append(f"space not reserved for {unreserved} task(s): no fallocate on its disk")
    return "".join(f" ({n})" for n in notes)


def _asks(asks: dict[str, int]) -> str:
    """The scheduler's answers to the peers' asks for pieces: how many it gave, and why not
    the others (every live holder busy, waiting for the origin, nothing left to hand out)."""
    return (
        f"pieces asked={asks.get('asked', 0)} given={asks.get('given', 0)} not given: "
        f"holders busy={asks.get('busy', 0)} origin={asks.get('origin', 0)} "
        f"none left={asks.get('none', 0)}"
    )


# --- caches -------------------------------------------------------------------------------------
def _peers(nodes: str | None) -> dict[str, Any]:
    peers = placement.existing_peers()
    if not nodes or nodes == "all":
        return peers
    alive = [n for n in placement.alive_nodes() if n.node_id in peers]
    if not alive:
        raise NodeNotFound(f"--node {nodes}: no node of this cluster runs a rayfly peer yet")
    return {n.node_id: peers[n.node_id] for n in placement.select_nodes(nodes, alive)}


def _entries(peers: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    answers = _gather({n: p.cache_entries.remote() for n, p in peers.items()}) if peers else {}
    for node_id, entries in sorted(answers.items()):
        if isinstance(entries, dict):
            rows.append({"node_id": node_id, **entries})
        else:
            rows.extend({"node_id": node_id, **e} for e in entries)
    return rows


def cache_ls(nodes: str | None = None) -> list[dict[str, Any]]:
    """Every cache entry of the chosen nodes' piece stores, one row per node and task."""
    return _entries(_peers(nodes))


def cache_rm(task_id: str, nodes: str | None = None) -> list[str]:
    """Remove ``task_id`` from the chosen nodes' caches; returns the nodes that held it.

    Raises :class:`TaskNotFound` when no chosen node holds it. A unique prefix of at least 8
    characters may stand for the id.
    """
    peers = _peers(nodes)
    full = _resolve_task_id(task_id, peers)
    removed = []
    for node_id, peer in peers.items():
        with contextlib.suppress(ray.exceptions.RayActorError):
            if ray.get(peer.cache_remove.remote(full), timeout=ACTOR_TIMEOUT_S):
                removed.append(node_id)
    return removed


def _resolve_task_id(task_id: str, peers: dict[str, Any]) -> str:
    known = {e["task_id"] for e in _entries(peers) if "task_id" in e}
    matches = sorted(
        t for t in known if t == task_id or (len(task_id) >= 8 and t.startswith(task_id))
    )
    if len(matches) != 1:
        what = "is in no chosen node's cache" if not matches else "matches several tasks"
        raise TaskNotFound(f"task {task_id!r} {what}; see `rayfly cache ls`")
    return matches[0]


def cache_gc(
    keep_bytes: int | None = None, nodes: str | None = None, dry_run: bool = False
) -> dict[str, dict[str, Any]]:
    """Run each chosen node's cache GC (TTL, quota or ``keep_bytes``, disk watermarks); per node
    the evictions made (or, with ``dry_run``, that would be) with their reasons."""
    out = _gather({n: p.cache_gc.remote(keep_bytes, dry_run) for n, p in _peers(nodes).items()})
    empty: dict[str, Any] = {"evictions": [], "note": None}
    return {
        n: (v if isinstance(v, dict) and "evictions" in v else empty)
        for n, v in sorted(out.items())
    }
