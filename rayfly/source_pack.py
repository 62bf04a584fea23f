"""Origin reads of a task's byte range: a plain task's range with one ranged read, a pack's by
reading each member in its range in full (one GET per object), concurrently, into the piece."""

from __future__ import annotations

import asyncio
from typing import Any

from rayfly import source
from rayfly.pack import members_in
from rayfly.task import PackMember, TaskInfo

MEMBER_READS = 32
"""How many members of one pack piece are read from the origin at once."""


async def read_task_range(
    task: TaskInfo, start: int, end: int, executor: Any = None
) -> bytes | bytearray:
    """Bytes ``[start, end)`` of ``task`` from the origin (see
    :func:`rayfly.source.read_range_async`: same retries, same errors, conditional reads)."""
    if start == end:
        return b""
    if not task.members:
        return await source.read_range_async(
            task.url, task.storage_options, start, end, executor, task.version
        )
    buf = bytearray(end - start)  # the gaps of the layout stay zero
    slots = asyncio.Semaphore(MEMBER_READS)

    async def one(m: PackMember) -> None:
        async with slots:
            data = await _read_member(task, m, executor)
        buf[m.offset - start : m.offset - start + m.size] = data

    reads = [asyncio.ensure_future(one(m)) for m in members_in(task, start, end)]
    try:
        await asyncio.gather(*reads)
    except BaseException:  # the first failure (its own error, as is) cancels the other reads
        for r in reads:
            r.cancel()
        raise
    return buf


async def _read_member(task: TaskInfo, m: PackMember, executor: Any) -> bytes:
    if m.size == 0:
        return b""
    return await source.read_range_async(
        m.url, task.storage_options, 0, m.size, executor, m.version
    )
