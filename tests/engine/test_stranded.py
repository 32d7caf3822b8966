"""The stranded-task race, on two engines sharing one backend.

Engine A claims a task and stalls before starting it, past its lease.  The
lease runs out and recovery puts the task back on the queue.  Then A's start
write lands, and only then does engine B claim the task.  Before the start
was fenced, A's write succeeded (the record was ``pending``), B found the
task ``in_progress`` and dropped its claim, and A, whose claim was gone,
stopped without writing: the task stayed ``in_progress`` with no queue entry
for good.  Now A's start is refused because its claim is no longer held, and
B runs the task once.

The order is forced by wrappers around the shared backend (events, not
timing), so the test is deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import errands
from errands import Backend, Claim, StoredTask, TaskStatus
from errands.backends import DiskCacheBackend, MemoryBackend
from tests.conftest import trio_wall

svc = errands.Service("stranded")
runs: list[str] = []


@svc.task
async def job(n: int) -> int:
    runs.append(errands.current_task().id)
    await trio.sleep(2)  # longer than a lease: a lost claim is noticed while it runs
    return 2 * n


class _Order:
    """The events that force the interleaving."""

    def __init__(self) -> None:
        self.a_claimed = trio.Event()
        self.released = trio.Event()
        self.a_started = trio.Event()


class _Queue:
    def __init__(self, inner: Any, role: str, order: _Order) -> None:
        self._inner, self._role, self._order = inner, role, order

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim(self, **kwargs: Any) -> list[Claim]:
        order = self._order
        if self._role == "B":
            await order.a_claimed.wait()  # A claims first
            if order.released.is_set() and not order.a_started.is_set():
                await order.a_started.wait()  # B claims only after A's start write
        claims: list[Claim] = await self._inner.claim(**kwargs)
        if self._role == "A" and claims:
            order.a_claimed.set()
        return claims

    async def release(self, task_id: str, token: int, **kwargs: Any) -> bool:
        released: bool = await self._inner.release(task_id, token, **kwargs)
        if released:
            self._order.released.set()
        return released


class _Store:
    def __init__(self, inner: Any, role: str, order: _Order) -> None:
        self._inner, self._role, self._order = inner, role, order

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def transition(self, task: StoredTask, **kwargs: Any) -> bool:
        # An engine that starts tasks with a plain compare-and-set (no fence).
        if (
            self._role == "A"
            and kwargs.get("expect") is TaskStatus.PENDING
            and task.status is TaskStatus.IN_PROGRESS
        ):
            return await _stalled_start(self._order, self._inner.transition(task, **kwargs))
        moved: bool = await self._inner.transition(task, **kwargs)
        return moved


async def _stalled_start(order: _Order, write: Any) -> bool:
    await order.released.wait()  # stalled past the lease until recovery gave the task back
    try:
        started: bool = await write
        return started
    finally:
        order.a_started.set()


class _Role(Backend):
    """One engine's view of the shared backend."""

    def __init__(self, inner: Backend, role: str, order: _Order) -> None:
        self.inner, self.role, self.order = inner, role, order
        self.queue = _Queue(inner.queue, role, order)  # type: ignore[assignment]
        self.store = _Store(inner.store, role, order)  # type: ignore[assignment]
        self.poll_interval = inner.poll_interval

    async def enqueue(
        self, task: StoredTask, *, priority: int, not_before: float, rank: float | None = None
    ) -> bool:
        return await self.inner.enqueue(task, priority=priority, not_before=not_before, rank=rank)

    async def begin(self, task: StoredTask, *, claim: Claim) -> bool:
        if self.role == "A":
            return await _stalled_start(self.order, self.inner.begin(task, claim=claim))
        return await self.inner.begin(task, claim=claim)

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _race(shared: Backend, **options: Any) -> errands.TaskInfo:
    runs.clear()
    order = _Order()
    a, b = _Role(shared, "A", order), _Role(shared, "B", order)
    async with (
        errands.open_engine(svc, backend=a, lease=1, grace=0, **options) as client_a,
        errands.open_engine(svc, backend=b, lease=1, grace=0, **options),
    ):
        task = await client_a.job.submit(n=21)
        with trio.fail_after(30):
            # Polled: an engine is not told of what another engine finishes
            # on a memory backend, and B may be the one that runs it.
            while not (await task.get_status()).is_final:
                await trio.sleep(0.1)
        assert await task.get_status() is TaskStatus.SUCCESS
        assert order.a_started.is_set()  # the race really happened
        assert await task.get() == 42
        info: errands.TaskInfo = await task.get_info()
    return info


async def test_a_stalled_start_cannot_strand_a_task_memory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    info = await _race(MemoryBackend(), clock=trio_wall)
    assert runs == [info.id]  # run once, by B
    assert info.attempt == 1


@pytest.mark.realtime
async def test_a_stalled_start_cannot_strand_a_task_diskcache(tmp_path: Path) -> None:
    info = await _race(DiskCacheBackend(tmp_path / "data", poll_interval=0.05))
    assert runs == [info.id]
    assert info.attempt == 1


async def _plant_orphan(backend: Backend, *, attempt: int, max_attempts: int = 3) -> str:
    """An ``in_progress`` record whose claim is gone (no queue entry), as a
    stranding bug would leave it."""
    from errands._model import TaskRecord, new_task_id

    record = TaskRecord(
        id=new_task_id(),
        name="job",
        args={"n": 5},
        status=TaskStatus.IN_PROGRESS,
        created_at=trio_wall(),
        started_at=trio_wall(),
        attempt=attempt,
        max_attempts=max_attempts,
        token=7,
    )
    await backend.open()
    try:
        assert await backend.store.create(StoredTask.from_record(record))
    finally:
        await backend.aclose()
    return record.id


async def test_an_orphaned_task_is_re_queued_within_one_lease(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs.clear()
    backend = MemoryBackend()
    task_id = await _plant_orphan(backend, attempt=1)
    async with errands.open_engine(svc, backend=backend, lease=5, clock=trio_wall) as client:
        start = trio.current_time()
        task = client.job.get_task(task_id)
        assert await task.wait(timeout=60) is TaskStatus.SUCCESS
        assert trio.current_time() - start <= 5 + 2 + 0.5  # one lease, then the run
        info = await task.get_info()
        assert info.attempt == 2 and runs == [task_id]
        assert await task.get() == 10


async def test_an_orphan_on_its_last_attempt_fails_as_worker_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    task_id = await _plant_orphan(backend, attempt=3, max_attempts=3)
    async with errands.open_engine(svc, backend=backend, lease=5, clock=trio_wall) as client:
        task = client.job.get_task(task_id)
        assert await task.wait(timeout=60) is TaskStatus.FAILURE
        info = await task.get_info()
        assert info.error is not None and info.error.type == "WorkerLost"
