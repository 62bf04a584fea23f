"""Scheduler calls retried while the actor restarts, and given up on after a bounded time."""

import asyncio

import pytest
from ray.exceptions import ActorUnavailableError, RayActorError

from rayfly.actors import retry
from rayfly.errors import SchedulerUnavailable, TaskNotFound


def flaky(failures: int, error: BaseException):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return len(calls)

    return call, calls


def test_a_restarting_scheduler_is_asked_again_until_it_answers():
    call, _ = flaky(2, ActorUnavailableError("restarting", None))
    assert retry.call_sync(call) == 3


def test_errors_of_the_scheduler_itself_are_not_retried():
    call, calls = flaky(5, TaskNotFound("unknown task t"))
    with pytest.raises(TaskNotFound):
        retry.call_sync(call)
    assert len(calls) == 1


def test_retries_stop_after_the_retry_time(monkeypatch):
    monkeypatch.setattr(retry, "SCHEDULER_RETRY_S", 0.3)
    call, calls = flaky(1000, RayActorError())
    with pytest.raises(SchedulerUnavailable, match="did not answer 'exchange' for 0s"):
        retry.call_sync(call, "'exchange'")
    assert 2 <= len(calls) < 20


def test_async_retries_look_the_handle_up_again():
    call, _ = flaky(2, ValueError("Failed to look up actor"))
    lookups = []

    async def run():
        async def acall():
            return call()

        return await retry.call_async(acall, "x", lambda: lookups.append(1))

    assert asyncio.run(run()) == 3 and len(lookups) == 2
