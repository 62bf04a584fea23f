"""Calls to the cluster's scheduler that outlive its restart: retried with jittered backoff.

The scheduler is restarted by Ray when it dies (``max_restarts=-1``); meanwhile calls to it fail
with ``ActorUnavailableError`` / ``RayActorError``. Errors raised by the scheduler's own code
(``RayTaskError``) are not retried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray.exceptions import RayActorError, RayTaskError

from rayfly.errors import SchedulerUnavailable

T = TypeVar("T")

SCHEDULER_RETRY_S = 60.0
"""How long a caller keeps retrying a scheduler that does not answer (a restart takes seconds)."""


def unwrap(exc: BaseException) -> BaseException:
    """The original exception behind a Ray task error."""
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return exc


def backoff(attempt: int, base: float = 0.1, cap: float = 2.0) -> float:
    """Jittered exponential delay before retry number ``attempt`` (0, 1, ...)."""
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


def first_line(exc: BaseException) -> str:
    """An exception as one short line (Ray's errors run over many lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _give_up(what: str, exc: BaseException) -> SchedulerUnavailable:
    return SchedulerUnavailable(
        f"the scheduler did not answer {what} for {SCHEDULER_RETRY_S:.0f}s: {first_line(exc)}"
    )


def call_sync(call: Callable[[], T], what: str = "") -> T:
    """``call()``, retried while the scheduler restarts, for up to :data:`SCHEDULER_RETRY_S`."""
    deadline = time.monotonic() + SCHEDULER_RETRY_S
    attempt = 0
    while True:
        try:
            return call()
        except RayActorError as exc:
            delay = backoff(attempt)
            if time.monotonic() + delay > deadline:
                raise _give_up(what, exc) from None
            attempt += 1
            time.sleep(delay)


async def call_async(
    call: Callable[[], Awaitable[T]], what: str = "", on_retry: Callable[[], None] | None = None
) -> T:
    """``await call()``, retried like :func:`call_sync`; ``on_retry`` runs before each retry
    (e.g. to look the scheduler's handle up again). A ``ValueError`` (no actor of that name
    yet) is retried too."""
    deadline = time.monotonic() + SCHEDULER_RETRY_S
    attempt = 0
    while True:
        try:
            return await call()
        except (RayActorError, ValueError) as exc:
            delay = backoff(attempt)
            if time.monotonic() + delay > deadline:
                raise _give_up(what, exc) from None
            if on_retry is not None:
                on_retry()
            attempt += 1
            await asyncio.sleep(delay)
