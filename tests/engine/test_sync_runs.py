"""Runs of sync functions without a timeout have no trio task each.

Such a run's task would only wait for its worker thread and then settle, so
the runner starts the thread from the dispatcher; on a volatile backend one
settler task per burst settles the runs whose threads returned, and on the
diskcache backend the end of each is queued for the database thread, which
answers once it is stored (``Runner.call_in_thread``, ``Backend.finish_soon``).
These tests check that the path is taken, and that a run on it still does
what any run does: fail alone on arguments that no longer read, and ride
out storage faults while settling.  Cancelling and handing back runs on it
are in ``test_control.py`` and ``test_hand_back.py`` (their sync tasks run
on the memory backend).  The real clock: worker threads are invisible to
trio's autojump clock.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import attrs
import pytest
import trio

import errands
from errands import TaskStatus
from errands.backends import DiskCacheBackend, MemoryBackend

from .faulty import FaultyBackend

svc = errands.Service("sync_runs")


@svc.task
def double(n: int) -> int:
    return 2 * n


@svc.task
async def async_double(n: int) -> int:
    return 2 * n


#: Whether an Item reads (flipped to spoil the arguments of a task waiting to run).
readable = {"now": True}


def _still_readable(instance: object, attribute: object, value: int) -> None:
    if not readable["now"]:
        raise ValueError("this item no longer reads")


@attrs.define
class Item:
    n: int = attrs.field(validator=_still_readable)


@svc.task
def double_item(item: Item) -> int:
    return 2 * item.n


class VolatileFaulty(FaultyBackend):
    """Faults around a memory backend, volatile as the memory backend is, whose
    dispatcher claims and starts in one call as the memory backend does."""

    volatile = True

    async def claim_and_start(self, **kwargs: Any) -> Any:
        return await self.inner.claim_and_start(**kwargs)


class RunTasks(trio.abc.Instrument):
    """Counts the trio tasks spawned for runs (the engine's ``_run``)."""

    def __init__(self) -> None:
        self.runs = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Engine._run"):
            self.runs += 1


async def _count_run_tasks(client: Any, name: str, n: int) -> int:
    counter = RunTasks()
    trio.lowlevel.add_instrument(counter)
    try:
        tasks = [await client[name].submit(n=i) for i in range(n)]
        for task in tasks:
            assert await task.wait(timeout=60) is TaskStatus.SUCCESS
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert [await task.get() for task in tasks] == [2 * i for i in range(n)]
    return counter.runs


async def test_sync_runs_on_the_memory_backend_have_no_task_each(tmp_path: Any) -> None:
    async with errands.open_engine(svc) as client:
        assert await _count_run_tasks(client, "double", 50) == 0
        # Async runs keep theirs (they run on the loop, each in its own scope).
        assert await _count_run_tasks(client, "async_double", 50) == 50
    # On the diskcache backend too: each end is queued for the database thread.
    async with errands.open_engine(svc, backend=f"diskcache://{tmp_path}") as client:
        assert await _count_run_tasks(client, "double", 20) == 0
        assert await _count_run_tasks(client, "async_double", 20) == 20


class FlakyEnds(DiskCacheBackend):
    """The diskcache backend whose first ``failures`` ends begun without a
    coroutine fail in the database (a write that raises, as a disk I/O
    error would)."""

    failures = 3

    def finish_soon(self, task: Any, **keywords: Any) -> bool:
        if self.failures <= 0:
            return super().finish_soon(task, **keywords)
        self.failures -= 1
        db: Any = self._db
        real = db.call_soon

        def call_soon(fn: Any, **options: Any) -> None:
            def broken(conn: sqlite3.Connection) -> bool:
                raise sqlite3.OperationalError("disk I/O error")

            real(broken, **options)

        db.call_soon = call_soon
        try:
            return super().finish_soon(task, **keywords)
        finally:
            del db.call_soon


async def test_ends_begun_without_a_task_ride_out_storage_faults(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An end queued for the database thread whose write fails is retried
    (reported as a storage fault, then cleared), its slot held until it is
    stored; nothing is lost, and no run gets a task of its own."""
    backend = FlakyEnds(tmp_path)
    async with errands.open_engine(svc, backend=backend, workers=4) as client:
        assert await _count_run_tasks(client, "double", 12) == 0
        assert backend.failures == 0
        assert "storage fault in runner" in caplog.text
        assert client.engine.health.alive and client.engine.health.ready


async def test_the_engine_stops_once_ends_begun_without_a_task_are_stored(
    tmp_path: Any,
) -> None:
    """Leaving the engine while ends are queued for the database thread: they
    are stored before it stops (as the runs' tasks' ends are), and a new
    engine finds every task ended."""
    async with errands.open_engine(svc, backend=f"diskcache://{tmp_path}") as client:
        ids = [(await client.double.submit(n=i)).id for i in range(30)]
    async with errands.open_engine(svc, backend=f"diskcache://{tmp_path}") as client:
        for i, task_id in enumerate(ids):
            task = client.get_task(task_id)
            assert await task.wait(timeout=60) is TaskStatus.SUCCESS
            assert await task.get() == 2 * i


async def test_arguments_that_no_longer_read_fail_their_task_alone() -> None:
    async with errands.open_engine(svc) as client:
        task = await client.double_item.options(delay=0.3).submit(item={"n": 1})
        readable["now"] = False
        try:
            assert await task.wait(timeout=60) is TaskStatus.FAILURE
        finally:
            readable["now"] = True
        info = await task.get_info()
        assert info.error is not None and info.error.type == "FinalError"
        assert "item" in info.error.message, info.error.message
        after = await client.double_item.submit(item={"n": 4})
        assert await after.wait(timeout=60) is TaskStatus.SUCCESS
        assert await after.get() == 8


async def test_ends_of_runs_are_written_through_storage_faults() -> None:
    backend = VolatileFaulty(MemoryBackend())
    async with errands.open_engine(svc, backend=backend) as client:
        counter = RunTasks()
        trio.lowlevel.add_instrument(counter)
        try:
            # Every end of a run is a transition: the first ends meet faults.
            backend.faults.fail("store.transition", nth=1, times=3)
            tasks = [await client.double.submit(n=i) for i in range(20)]
            for task in tasks:
                assert await task.wait(timeout=60) is TaskStatus.SUCCESS
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert [await task.get() for task in tasks] == [2 * i for i in range(20)]
        assert backend.faults.raised["store.transition"] == 3
        assert counter.runs == 0  # the settler rode them out, not a task per run
        assert client.engine.health.alive and client.engine.health.ready
