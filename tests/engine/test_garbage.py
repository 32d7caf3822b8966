"""A task's run leaves no reference cycle behind.

What the engine builds to run a task (its run, its call, the task's
context, the claim and the started record) is freed by reference counting
as soon as the task is settled.  Left in a cycle, it waits for the garbage
collector instead: about eleven objects per task, which made the collector
run every few dozen tasks and cost a tenth of the thread path's time
(``docs/performance.md``, ninth round).

Each test runs its tasks with the collector off, then counts what a
collection finds unreachable.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

import errands
from errands import TaskStatus

svc = errands.Service("garbage")

N = 200


@svc.task
def sync_double(n: int) -> int:
    return 2 * n


@svc.task
async def async_double(n: int) -> int:
    return 2 * n


@svc.task(retries=0)
def fails(n: int) -> int:
    raise ValueError(f"no {n}")


@svc.task(batchable=True, max_batch_size=8, max_latency_ms=5)
def doubles(items: list[int]) -> list[int]:
    return [2 * i for i in items]


@svc.task
async def sleeper(n: int) -> int:
    await trio.sleep(60)
    return n


@contextmanager
def collector_off() -> Iterator[list[int]]:
    """The collector off inside; the count of what it then finds unreachable
    is appended to the list yielded."""
    found: list[int] = []
    gc.collect()
    gc.disable()
    try:
        yield found
        found.append(gc.collect())
    finally:
        gc.enable()


async def _garbage_per_task(
    client: errands.AsyncClient, work: Callable[[int], Awaitable[TaskStatus]]
) -> float:
    for i in range(20):  # warm: first calls build caches that live on
        await work(i)
    with collector_off() as found:
        statuses = [await work(i) for i in range(N)]
    assert len(set(statuses)) == 1, statuses
    return found[0] / N


async def _submit_and_wait(
    client: errands.AsyncClient, name: str
) -> Callable[[int], Awaitable[TaskStatus]]:
    async def work(i: int) -> TaskStatus:
        task = await client[name].submit(n=i)
        return await task.wait(timeout=60)

    return work


@pytest.mark.parametrize("name", ["sync_double", "async_double", "fails"])
async def test_runs_on_the_memory_backend_leave_no_cycles(name: str) -> None:
    async with errands.open_engine(svc) as client:
        per_task = await _garbage_per_task(client, await _submit_and_wait(client, name))
    # Before: 10.8 (sync), 11.8 (async), 10.8 (failed) objects per task.
    assert per_task < 0.5, per_task


async def test_runs_on_a_durable_backend_leave_no_cycles(tmp_path: Path) -> None:
    async with errands.open_engine(svc, backend=f"diskcache://{tmp_path}") as client:
        per_task = await _garbage_per_task(client, await _submit_and_wait(client, "sync_double"))
    assert per_task < 0.5, per_task


async def test_batched_runs_leave_no_cycles() -> None:
    async with errands.open_engine(svc) as client:

        async def work(i: int) -> TaskStatus:
            tasks = [await client.doubles.submit(items=[i, j]) for j in range(4)]
            statuses = {await task.wait(timeout=60) for task in tasks}
            assert statuses == {TaskStatus.SUCCESS}
            return TaskStatus.SUCCESS

        per_call = await _garbage_per_task(client, work)
    assert per_call < 2, per_call  # four tasks each


async def test_cancelled_runs_leave_no_cycles() -> None:
    async with errands.open_engine(svc) as client:

        async def work(i: int) -> TaskStatus:
            task = await client.sleeper.submit(n=i)
            while await task.get_status() is TaskStatus.PENDING:
                await trio.lowlevel.checkpoint()
            await task.cancel()
            return await task.wait(timeout=60)

        per_task = await _garbage_per_task(client, work)
    assert per_task < 0.5, per_task


def test_thread_path_runs_leave_no_cycles() -> None:
    with errands.start(svc) as client:
        warm = [client.sync_double.submit(n=i) for i in range(50)]
        for task in warm:
            task.wait(timeout=60)
        with collector_off() as found:
            tasks = [client.sync_double.submit(n=i) for i in range(N)]
            for task in tasks:
                assert task.wait(timeout=60) is TaskStatus.SUCCESS
            del tasks, task
    assert found[0] / N < 0.5, found[0] / N
