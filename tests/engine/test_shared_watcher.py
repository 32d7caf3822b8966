"""Waiting on a backend shared with other processes: one change watcher per
engine reads every watched task in one call per poll interval, so the cost
to storage does not grow with the number of waiters."""

from __future__ import annotations

import trio
import trio.testing

import errands
from errands import TaskStatus
from errands.backends import MemoryBackend
from tests.conftest import trio_wall

from .faulty import FaultyBackend

svc = errands.Service("shared_watcher")


@svc.task
async def slow(seconds: float) -> str:
    await trio.sleep(seconds)
    return "done"


async def _reads_while_waiting(waiters: int) -> dict[str, int]:
    backend = FaultyBackend(MemoryBackend())
    backend.poll_interval = 0.1  # as a backend shared with other processes
    async with errands.open_engine(svc, backend=backend, clock=trio_wall) as client:
        task = await client.slow.submit(seconds=10)
        await trio.sleep(0.5)
        before = dict(backend.faults.calls)
        async with trio.open_nursery() as nursery:
            for i in range(waiters):
                if i % 2:
                    nursery.start_soon(task.wait)
                else:
                    nursery.start_soon(client.engine.next_change, task.id, await task.get_info())
        assert await task.get_status() is TaskStatus.SUCCESS
        after = backend.faults.calls
        counts = {
            k: after.get(k, 0) - before.get(k, 0)
            for k in ("store.get", "store.get_state", "store.get_many")
        }
        return {
            "store.get_many": counts["store.get_many"],
            "reads": counts["store.get"] + counts["store.get_state"],
        }


async def test_a_thousand_waiters_cost_storage_what_one_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    one = await _reads_while_waiting(1)
    many = await _reads_while_waiting(1000)
    # One get_many per poll interval in both cases (about 95 in 9.5 s) ...
    assert 80 <= one["store.get_many"] <= 110, one
    assert abs(many["store.get_many"] - one["store.get_many"]) <= 5, (one, many)
    # ... and each waiter reads its task a fixed number of times, however long
    # it waits: its first read, once when the watcher first sees the task, and
    # once at the end (polling each on its own would be ~95 reads per waiter).
    assert many["reads"] <= 3 * 1000 + 20, many
    assert one["reads"] <= 3 + 20, one
