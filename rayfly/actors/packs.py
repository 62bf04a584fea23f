"""A peer's part of a pack (:mod:`rayfly.pack`): fetch the pack task like any task, then
publish each member at its own path, one :class:`FileResult` per member. When the pack fails
at the origin (a member deleted or changed since the listing), its members are fetched as
single-file tasks, so that only the bad file fails, with the usual error."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rayfly import dest as dest_paths
from rayfly import source
from rayfly.actors.download import TaskOutcome
from rayfly.errors import RayflyError, SourceError
from rayfly.pack import member_task
from rayfly.pack_publish import Published, publish_members
from rayfly.protocol import FetchItem, FileResult
from rayfly.ratelimit import TokenBucket

log = logging.getLogger(__name__)

FetchOne = Callable[[FetchItem], Awaitable[FileResult]]


async def fetch_pack(
    peer: Any,
    item: FetchItem,
    rendered: str | None,
    slots: asyncio.Semaphore,
    limit: TokenBucket | None,
    fetch_one: FetchOne,
) -> list[FileResult]:
    """Fetch the pack of ``item`` and publish its members under ``rendered`` (None: only
    fetch, and hash the members); ``fetch_one`` fetches one single-file item (the fallback)."""
    task = item.task
    t0 = time.time()
    try:
        job = peer.downloads.start(task, slots, limit)
        earlier = job.done()
        out: TaskOutcome = await asyncio.shield(job)
    except SourceError as exc:
        log.warning("pack %s failed (%s): fetching its files one by one", task.task_id, exc)
        return await _one_by_one(peer, item, fetch_one)
    except Exception as exc:
        error = str(exc) if isinstance(exc, RayflyError) else f"{type(exc).__name__}: {exc}"
        return _all_failed(item, source.redact_text(error), time.time() - t0)
    pairs = zip(task.members, item.relpaths, strict=True)
    targets = [(m, _target(rendered, rel, m.url)) for m, rel in pairs]
    published = await peer.downloads.disk_io(
        publish_members, peer.store.data_path(task.task_id), targets
    )
    return _results(item, published, out, out.cached or earlier, time.time() - t0)


def _target(rendered: str | None, relpath: str, url: str) -> Path | None:
    return None if rendered is None else dest_paths.target_path(rendered, relpath, url)


def _results(
    item: FetchItem, published: list[Published], out: TaskOutcome, cached: bool, seconds: float
) -> list[FileResult]:
    """One row per member; the pack's bytes from the origin and from peers (gaps of its layout
    included) shared out by size."""
    total = max(1, item.task.length)
    rows = []
    for m, rel, p in zip(item.task.members, item.relpaths, published, strict=True):
        origin = 0 if cached else out.bytes_from_origin * m.size // total
        peers = 0 if cached else out.bytes_from_peers * m.size // total
        ok = p.error is None
        row = FileResult(rel, p.path, m.size, p.sha256, seconds, origin, peers, ok, p.error)
        row.cached = cached
        rows.append(row)
    return rows


def _all_failed(item: FetchItem, error: str, seconds: float) -> list[FileResult]:
    return [
        FileResult(rel, "", m.size, None, seconds, 0, 0, False, error)
        for m, rel in zip(item.task.members, item.relpaths, strict=True)
    ]


async def _one_by_one(peer: Any, item: FetchItem, fetch_one: FetchOne) -> list[FileResult]:
    """Each member as its own task (registered in one call; the same id it would have had
    unpacked), fetched through the ordinary single-file path."""
    infos = [member_task(item.task, m) for m in item.task.members]
    tasks = await peer.links.ask("register_tasks", infos)
    singles = [FetchItem(t, rel) for t, rel in zip(tasks, item.relpaths, strict=True)]
    return list(await asyncio.gather(*(fetch_one(s) for s in singles)))
