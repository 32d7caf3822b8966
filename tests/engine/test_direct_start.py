"""A submit that finds a free slot starts its task in its own write.

On a backend that can (``Backend.starts_on_enqueue``: memory, diskcache),
the submit's write creates, claims and starts the task in one step
(``Backend.enqueue_and_start``), and the engine admits the run before the
submit returns: no dispatch round, no second write.  A freed slot wakes the
dispatcher only when tasks that could use it may wait.  These tests count
the dispatcher's claim calls on real backends (subclassed to count), and
check that slots, order, faults and a stop in the middle of a submit's
write keep what they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import errands
from errands import Backend, BackendError, EventKind, TaskStatus
from errands.backends import DiskCacheBackend, MemoryBackend

svc = errands.Service("direct_start")


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
def sync_add(a: int, b: int) -> int:
    return a + b


gates: dict[str, trio.Event] = {}


@svc.task
async def gated(key: str) -> str:
    await gates[key].wait()
    return key


@svc.task(concurrency=1)
async def narrow(key: str) -> str:
    await gates[key].wait()
    return key


class Counted:
    """Counts the dispatcher's claim calls and the tasks submits started;
    a dispatch round's claim can be held up (``stall``)."""

    rounds: int
    direct: list[str]
    stall: trio.Event | None

    def count(self) -> None:
        self.rounds = 0
        self.direct = []
        self.stall = None

    async def claim_and_start(self, **kwargs: Any) -> Any:
        self.rounds += 1
        if self.stall is not None:
            await self.stall.wait()
        return await super().claim_and_start(**kwargs)  # type: ignore[misc]

    async def enqueue_and_start(self, task: Any, **kwargs: Any) -> Any:
        created, started = await super().enqueue_and_start(task, **kwargs)  # type: ignore[misc]
        if started is not None:
            self.direct.append(started[0].task_id)
        return created, started


class CountedMemory(Counted, MemoryBackend):
    def __init__(self) -> None:
        MemoryBackend.__init__(self)
        self.count()


class CountedDisk(Counted, DiskCacheBackend):
    def __init__(self, path: Path) -> None:
        # No polling rounds during a test: only this engine writes.
        DiskCacheBackend.__init__(self, path, poll_interval=3600, synchronous="NORMAL")
        self.count()


def make(kind: str, path: Path) -> CountedMemory | CountedDisk:
    return CountedMemory() if kind == "memory" else CountedDisk(path / "data")


async def started_up(backend: Counted) -> int:
    """The dispatcher's claim calls once its first round (at start) is done."""
    while backend.rounds == 0:
        await trio.lowlevel.checkpoint()
    await trio.sleep(0.01)
    return backend.rounds


@pytest.mark.parametrize("kind", ["memory", "diskcache"])
async def test_submits_with_free_slots_start_their_tasks_without_a_dispatch_round(
    kind: str, tmp_path: Path
) -> None:
    """Each task starts in its submit's write and is admitted before the
    submit returns (it reads ``in_progress`` at once); the end of each run
    frees its slot without waking the dispatcher, as nothing waits.  (Real
    time: the database thread is invisible to a mock clock.)"""
    backend = make(kind, tmp_path)
    async with errands.open_engine(svc, backend=backend, workers=4) as client:
        base = await started_up(backend)
        for i in range(20):
            gates[f"k{i}"] = trio.Event()
            task = await client.gated.submit(key=f"k{i}")
            assert task.id in backend.direct
            assert await task.get_status() is TaskStatus.IN_PROGRESS
            gates[f"k{i}"].set()
            assert await task.wait() is TaskStatus.SUCCESS
        for i in range(20):
            task = await client.sync_add.submit(a=i, b=1)
            assert await task.wait() is TaskStatus.SUCCESS and await task.get() == i + 1
        assert len(backend.direct) == 40
        assert backend.rounds == base


async def test_a_started_submit_tells_its_events_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = CountedMemory()
    heard: list[tuple[EventKind, str]] = []
    async with errands.open_engine(svc, backend=backend) as client:
        client.engine.listen(lambda event: heard.append((event.kind, event.task_id)))
        task = await client.add.submit(a=1, b=2)
        assert await task.wait() is TaskStatus.SUCCESS and await task.get() == 3
    assert backend.direct == [task.id]
    assert heard == [
        (EventKind.SUBMITTED, task.id),
        (EventKind.STARTED, task.id),
        (EventKind.SUCCEEDED, task.id),
    ]


async def test_with_every_slot_taken_a_submit_waits_its_turn_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No slot free: the task queues, and the dispatcher starts the waiting
    tasks in priority order as slots free (each freed slot wakes it)."""
    backend = CountedMemory()
    order: list[str] = []
    async with errands.open_engine(svc, backend=backend, workers=1) as client:
        gates["first"] = trio.Event()
        first = await client.gated.submit(key="first")
        assert backend.direct == [first.id]
        waiting = []
        for key, priority in (("low", 0), ("high", 5), ("mid", 1)):
            gates[key] = trio.Event()
            gates[key].set()
            waiting.append(await client.gated.options(priority=priority).submit(key=key))
        assert backend.direct == [first.id]  # the others wait: no slot
        assert [await t.get_status() for t in waiting] == [TaskStatus.PENDING] * 3

        def heard(event: errands.TaskEvent) -> None:
            if event.kind is EventKind.STARTED:
                order.append(event.task_id)

        client.engine.listen(heard)
        gates["first"].set()
        for task in waiting:
            assert await task.wait() is TaskStatus.SUCCESS
    assert order == [waiting[1].id, waiting[2].id, waiting[0].id]


async def test_an_endpoint_waiting_at_its_limit_holds_up_no_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Tasks of one endpoint wait at its concurrency limit: another
    endpoint's submits still start their tasks in their own write, and the
    ends of those runs wake no dispatch round (the waiting tasks could not
    use their slots); the waiting task starts once its endpoint's slot
    frees."""
    backend = CountedMemory()
    async with errands.open_engine(svc, backend=backend, workers=4) as client:
        await started_up(backend)
        gates["n1"], gates["n2"] = trio.Event(), trio.Event()
        n1 = await client.narrow.submit(key="n1")
        n2 = await client.narrow.submit(key="n2")
        assert backend.direct == [n1.id]  # n2 waits for narrow's one slot
        await trio.testing.wait_all_tasks_blocked()
        rounds = backend.rounds
        for i in range(5):
            task = await client.add.submit(a=i, b=i)
            assert task.id in backend.direct
            assert await task.wait() is TaskStatus.SUCCESS
        assert backend.rounds == rounds
        assert await n2.get_status() is TaskStatus.PENDING
        gates["n2"].set()
        gates["n1"].set()
        assert await n2.wait() is TaskStatus.SUCCESS
        assert backend.rounds > rounds  # narrow's freed slot brought the round


async def test_a_submit_during_a_claim_waits_for_it_and_keeps_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While a dispatch round claims, its claims may fill every free slot: a
    submit waits for the round's claim, then starts its task in its own
    write (not a plain enqueue that needs one more round), and the engine
    never runs more than ``workers`` tasks."""
    backend = CountedMemory()
    async with errands.open_engine(svc, backend=backend, workers=2) as client:
        await started_up(backend)
        gates["a"], gates["b"], gates["c"] = trio.Event(), trio.Event(), trio.Event()
        # One task waits in the queue with the slots full, so that a freed
        # slot brings a dispatch round, held up in its claim.
        a = await client.gated.submit(key="a")
        b = await client.gated.submit(key="b")
        c = await client.gated.submit(key="c")
        assert backend.direct == [a.id, b.id]
        backend.stall = trio.Event()
        rounds = backend.rounds
        gates["a"].set()
        await a.wait()
        while backend.rounds == rounds:
            await trio.sleep(0.001)  # the round for c is in its claim
        gates["d"] = trio.Event()
        async with trio.open_nursery() as nursery:
            submitted: list[errands.AsyncTask[Any]] = []

            async def submit_d() -> None:
                submitted.append(await client.gated.submit(key="d"))

            nursery.start_soon(submit_d)
            await trio.sleep(1)
            assert submitted == []  # it waits for the round's claim
            backend.stall.set()
            backend.stall = None
        [d] = submitted
        # The round claimed c, which took the last slot: d waits for one.
        assert await c.get_status() is TaskStatus.IN_PROGRESS
        assert await d.get_status() is TaskStatus.PENDING
        assert client.engine.statistics().running == 2
        gates["b"].set()
        await b.wait()
        gates["c"].set()
        gates["d"].set()
        assert await d.wait() is TaskStatus.SUCCESS


async def test_a_submit_that_finds_the_claim_over_and_a_slot_free_starts_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = CountedMemory()
    async with errands.open_engine(svc, backend=backend, workers=2) as client:
        await started_up(backend)
        backend.stall = trio.Event()
        client.engine._wake_dispatcher()  # a round, held up in its claim
        base = backend.rounds
        while backend.rounds == base:
            await trio.sleep(0.001)
        rounds = backend.rounds
        submitted: list[errands.AsyncTask[Any]] = []
        async with trio.open_nursery() as nursery:

            async def submit() -> None:
                submitted.append(await client.add.submit(a=2, b=3))

            nursery.start_soon(submit)
            await trio.sleep(1)
            assert submitted == []
            backend.stall.set()
            backend.stall = None
        [task] = submitted
        assert backend.direct == [task.id]
        assert await task.wait() is TaskStatus.SUCCESS and await task.get() == 5
        assert backend.rounds == rounds


class FailingStart(MemoryBackend):
    """A memory backend whose next ``enqueue_and_start`` calls fail before
    they write anything."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def enqueue_and_start(self, task: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise BackendError("injected: the disk is full")
        return await super().enqueue_and_start(task, **kwargs)


async def test_a_storage_fault_in_a_starting_submit_loses_nothing_and_frees_the_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FailingStart()
    async with errands.open_engine(svc, backend=backend, workers=1) as client:
        backend.failures = 1
        with pytest.raises(errands.EngineUnavailable):
            await client.add.submit(a=1, b=1)
        assert await client.engine.core.queue.depth() == 0
        assert client.engine.statistics().submitted == 0
        # The slot it had taken is free again: the next task runs.
        with trio.fail_after(60):
            task = await client.add.submit(a=2, b=2)
            assert await task.wait() is TaskStatus.SUCCESS and await task.get() == 4


async def test_a_backend_that_does_not_start_on_enqueue_is_only_asked_to_enqueue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Plain(MemoryBackend):
        starts_on_enqueue = False
        asked = 0

        async def enqueue_and_start(self, task: Any, **kwargs: Any) -> Any:
            Plain.asked += 1
            return await super().enqueue_and_start(task, **kwargs)

    backend: Backend = Plain()
    async with errands.open_engine(svc, backend=backend) as client:
        task = await client.add.submit(a=1, b=1)
        assert await task.wait() is TaskStatus.SUCCESS and await task.get() == 2
    assert Plain.asked == 0


class StallsAfterStarting(MemoryBackend):
    """A memory backend whose ``enqueue_and_start`` stalls, once it has
    written, until ``go`` is set (as a slow database's answer would)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = trio.Event()
        self.go = trio.Event()

    async def enqueue_and_start(self, task: Any, **kwargs: Any) -> Any:
        answer = await super().enqueue_and_start(task, **kwargs)
        self.written.set()
        with trio.CancelScope(shield=True):  # as the backends' writes are
            await self.go.wait()
        return answer


async def test_a_task_its_submit_started_while_the_engine_stopped_is_handed_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The engine stopped while the submit's write was under way: the task
    it started is handed back (pending and queued, for the next engine), and
    the submit answers with its record, not an error."""
    backend = StallsAfterStarting()
    submitted: list[errands.AsyncTask[Any]] = []
    async with errands.open_engine(svc, backend=backend, grace=0) as client:

        async def submit() -> None:
            submitted.append(await client.add.submit(a=1, b=2))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            await backend.written.wait()
            await client.engine.aclose()
            await trio.sleep(1)  # the engine has stopped (its runners are done)
            backend.go.set()
    [task] = submitted
    stored = backend.store._records[task.id]
    assert stored.status is TaskStatus.PENDING
    assert task.id in backend.queue._waiting and task.id not in backend.queue._claimed
