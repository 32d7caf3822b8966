"""A task handed back at shutdown while its sync thread still runs counts
the attempt, so a task that always outlives the grace period reaches
``max_attempts`` and fails instead of coming back forever."""

from __future__ import annotations

import threading

import pytest
import trio

import errands
from errands import TaskStatus
from errands.backends import MemoryBackend

svc = errands.Service("hand_back")
release = threading.Event()
entered = threading.Semaphore(0)


@svc.task
def stubborn() -> str:
    entered.release()
    release.wait(30)  # ignores cancellation: outlives any grace period
    return "done"


@svc.task
async def polite() -> str:
    await trio.sleep_forever()
    return "never"


@pytest.mark.realtime
async def test_a_thread_outliving_the_grace_period_counts_its_attempts() -> None:
    release.clear()
    backend = MemoryBackend()
    task_id = None
    try:
        for attempt in (1, 2, 3):
            async with errands.open_engine(svc, backend=backend, grace=0, max_attempts=3) as c:
                if task_id is None:
                    task_id = (await c.stubborn.submit()).id
                await trio.to_thread.run_sync(entered.acquire)  # its thread runs
                assert (await c.stubborn.get_task(task_id).get_info()).attempt == attempt
        async with errands.open_engine(svc, backend=backend) as client:
            info = await client.stubborn.get_task(task_id).get_info()
            assert info.status is TaskStatus.FAILURE
            assert info.attempt == 3
            assert info.error is not None and info.error.type == "WorkerLost"
            assert "shut down" in info.error.message
    finally:
        release.set()


async def test_an_async_task_stopped_cleanly_at_shutdown_does_not_count(
    autojump_clock: object,
) -> None:
    backend = MemoryBackend()
    task_id = None
    for _ in range(5):
        async with errands.open_engine(svc, backend=backend, grace=0, max_attempts=3) as c:
            if task_id is None:
                task_id = (await c.polite.submit()).id
            await trio.sleep(1)
            assert (await c.polite.get_task(task_id).get_status()) is TaskStatus.IN_PROGRESS
    async with errands.open_engine(svc, backend=backend, workers=0) as client:
        info = await client.polite.get_task(task_id).get_info()
        assert info.status is TaskStatus.PENDING and info.attempt == 0
