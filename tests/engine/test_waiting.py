"""Waiting without polling: ``Engine.next_change`` and ``Engine.wait_any``.

On trio's MockClock, against the memory backend and the diskcache backend
(changes made by the engine itself are event-driven on both; a second engine
on the same diskcache directory sees them by polling).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import errands
from errands import Backend, Engine, TaskInfo, TaskStatus, _watching
from errands._model import TaskRecord, new_task_id
from errands.backends import DiskCacheBackend, MemoryBackend
from tests.conftest import trio_wall
from tests.tools import count_calls, mock_clock

svc = errands.Service("waiting")


@svc.task
async def sleepy(seconds: float) -> str:
    await trio.sleep(seconds)
    return "awake"


@svc.task
async def stepper(steps: int) -> int:
    """One step a second, reporting each; the first report after a second."""
    for i in range(steps):
        await trio.sleep(1)
        errands.current_task().report((i + 1) / steps, f"step {i + 1}")
    await trio.sleep(1)
    return steps


@svc.task(retries=1, retry_delay=1)
async def flaky(seconds: float) -> None:
    await trio.sleep(seconds)
    if errands.current_task().attempt == 1:
        raise RuntimeError("first time fails")


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": lambda path: MemoryBackend(),
    # NORMAL: no fsync per commit, so a disk write never outlasts the clock's threshold.
    "diskcache": lambda path: DiskCacheBackend(path / "data", synchronous="NORMAL"),
}


@pytest.fixture(params=sorted(BACKENDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> trio.testing.MockClock:
    """Autojump, but for diskcache only after a short real pause: its calls run in a
    thread, during which the trio side looks idle and would jump ahead at once.  A
    late disk call still jumps, but only to the backend's next poll (0.1 s on)."""
    return mock_clock(kind)


@pytest.fixture
def make_backend(kind: str, tmp_path: Path) -> Callable[[], Backend]:
    return lambda: BACKENDS[kind](tmp_path)


@asynccontextmanager
async def engine(backend: Backend, **options: Any) -> AsyncIterator[Engine]:
    async with errands.open_engine(svc, backend=backend, clock=trio_wall, **options) as client:
        yield client.engine
    await trio.lowlevel.checkpoint()


def close_to(kind: str, expected: float) -> Any:
    """Exact on memory; on diskcache the writer thread adds a little mock time."""
    return pytest.approx(expected, abs=0 if kind == "memory" else 0.3)


def seen(info: TaskInfo) -> tuple[str, float | None, str | None, int]:
    return info.status.value, info.progress, info.message, info.attempt


async def started(eng: Engine, task_id: str) -> TaskInfo:
    """Follow the task until it runs; its info then."""
    info = await eng.next_change(task_id)
    while info.status is not TaskStatus.IN_PROGRESS:
        info = await eng.next_change(task_id, info, timeout=5)
    return info


# ---------------------------------------------------------------- next_change


async def test_next_change_follows_every_change(
    clock: trio.testing.MockClock, kind: str, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as eng:
        record = await eng.submit("stepper", {"steps": 2})
        start = trio.current_time()
        info = await eng.next_change(record.id)  # no since: the state now, at once
        assert trio.current_time() == start
        history = [(seen(info), 0.0)]
        while not info.status.is_final:
            info = await eng.next_change(record.id, info, timeout=10)
            history.append((seen(info), trio.current_time() - start))
        if history[0][0] == ("pending", None, None, 0):
            del history[0]  # read before the dispatcher started it (it usually is)
        assert [h[0] for h in history] == [
            ("in_progress", None, None, 1),
            ("in_progress", 0.5, "step 1", 1),
            ("in_progress", 1.0, "step 2", 1),
            ("success", 1.0, "step 2", 1),
        ]
        assert [h[1] for h in history] == [close_to(kind, t) for t in (0, 1, 2, 3)]
        assert eng.watchers.listeners == {}


async def test_next_change_sees_a_retry_as_a_change(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as eng:
        record = await eng.submit("flaky", {"seconds": 1})
        info = await eng.next_change(record.id)
        statuses = [(info.status.value, info.attempt)]
        while not info.status.is_final:
            info = await eng.next_change(record.id, info, timeout=10)
            statuses.append((info.status.value, info.attempt))
        assert statuses[statuses[0] == ("pending", 0) :] == [
            ("in_progress", 1),
            ("pending", 1),
            ("in_progress", 2),
            ("success", 2),
        ]


async def test_next_change_times_out_and_refuses_unknown_ids(
    clock: trio.testing.MockClock, kind: str, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as eng:
        record = await eng.submit("sleepy", {"seconds": 100})
        info = await started(eng, record.id)
        assert info.status is TaskStatus.IN_PROGRESS
        start = trio.current_time()
        with pytest.raises(TimeoutError):
            await eng.next_change(record.id, info, timeout=7)
        assert trio.current_time() - start == close_to(kind, 7)
        with pytest.raises(TimeoutError), trio.testing.assert_checkpoints():
            await eng.next_change(record.id, info, timeout=0)
        for bad in (new_task_id(), "nope"):
            with pytest.raises(errands.TaskNotFound), trio.testing.assert_checkpoints():
                await eng.next_change(bad, info, timeout=5)
        with trio.move_on_after(3):  # cancelled while parked
            await eng.next_change(record.id, info)
        assert eng.watchers.listeners == {}


async def test_next_change_leaves_wait_alone(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    """Progress and start wake followers of changes, never the waiters of wait()."""
    async with engine(make_backend()) as eng, trio.open_nursery() as nursery:
        record = await eng.submit("stepper", {"steps": 3})
        nursery.start_soon(eng.wait, record.id)
        await trio.testing.wait_all_tasks_blocked()
        watch = eng.watchers.watches[record.id]
        info = await eng.next_change(record.id)
        while info.progress is None or info.progress < 1:
            info = await eng.next_change(record.id, info, timeout=10)
            assert eng.watchers.watches.get(record.id) is watch and not watch.event.is_set()
        assert (await eng.wait(record.id)) is TaskStatus.SUCCESS
    assert eng.watchers.listeners == {} and eng.watchers.watches == {}


async def test_next_change_raises_when_the_engine_stops(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    seen_after: list[str] = []
    caught: list[BaseException] = []
    async with engine(make_backend(), grace=0) as eng:
        record = await eng.submit("sleepy", {"seconds": 100})
        info = await started(eng, record.id)
        assert info.status is TaskStatus.IN_PROGRESS

        async def follow(info: TaskInfo) -> None:
            try:
                while True:
                    info = await eng.next_change(record.id, info)
                    seen_after.append(info.status.value)
            except errands.EngineClosed as exc:
                caught.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, info)
            await trio.testing.wait_all_tasks_blocked()
            eng.stop()
    # The running task went back to the queue (a change), then the engine closed.
    assert seen_after in ([], ["pending"]) and caught
    assert eng.watchers.listeners == {}


# ---------------------------------------------------------------- wait_any


async def test_wait_any_answers_at_once_with_every_final_or_missing_id(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as eng:
        done = await eng.submit("sleepy", {"seconds": 0})
        assert await eng.wait(done.id) is TaskStatus.SUCCESS
        running = await eng.submit("sleepy", {"seconds": 50})
        unknown = new_task_id()
        start = trio.current_time()
        with trio.testing.assert_checkpoints():
            got = await eng.wait_any([running.id, done.id, unknown, "bad id", done.id])
        assert trio.current_time() == start
        assert set(got) == {done.id, unknown, "bad id"}
        info = got[done.id]
        assert info is not None and info.status is TaskStatus.SUCCESS and info.id == done.id
        assert got[unknown] is None and got["bad id"] is None
        with trio.testing.assert_checkpoints():
            assert await eng.wait_any(["bad id"], timeout=0) == {"bad id": None}
        assert eng.watchers.listeners == {}


async def test_wait_any_returns_when_the_first_one_ends(
    clock: trio.testing.MockClock, kind: str, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as eng:
        slow = await eng.submit("sleepy", {"seconds": 5})
        fast = await eng.submit("sleepy", {"seconds": 3})
        start = trio.current_time()
        got = await eng.wait_any([slow.id, fast.id])
        assert list(got) == [fast.id] and trio.current_time() - start == close_to(kind, 3)
        got = await eng.wait_any([slow.id])
        assert list(got) == [slow.id] and trio.current_time() - start == close_to(kind, 5)
        info = got[slow.id]
        assert info is not None and info.status is TaskStatus.SUCCESS
        # A cancel wakes it too; a retry (back to pending) does not.
        pending = await eng.submit("sleepy", {"seconds": 1}, delay=100)
        flaky = await eng.submit("flaky", {"seconds": 1})
        async with trio.open_nursery() as nursery:
            results: list[dict[str, TaskInfo | None]] = []

            async def wait_both() -> None:
                results.append(await eng.wait_any([pending.id, flaky.id]))

            nursery.start_soon(wait_both)
            await trio.sleep(1.5)  # flaky failed once and is pending again
            assert not results
            await eng.cancel(pending.id)
        cancelled = results[0][pending.id]
        assert list(results[0]) == [pending.id]
        assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
        assert eng.watchers.listeners == {}


async def test_wait_any_times_out_with_nothing(
    clock: trio.testing.MockClock, kind: str, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as eng:
        record = await eng.submit("sleepy", {"seconds": 50})
        start = trio.current_time()
        with trio.testing.assert_checkpoints():
            assert await eng.wait_any([record.id], timeout=0) == {}
        assert trio.current_time() == start
        assert await eng.wait_any([record.id], timeout=8) == {}
        assert trio.current_time() - start == close_to(kind, 8)
        with trio.move_on_after(2):  # cancelled while parked
            await eng.wait_any([record.id])
        assert eng.watchers.listeners == {}


async def test_wait_any_raises_when_the_engine_stops(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    caught: list[BaseException] = []
    async with engine(make_backend(), grace=0) as eng:
        record = await eng.submit("sleepy", {"seconds": 100})

        async def wait() -> None:
            try:
                await eng.wait_any([record.id])
            except errands.EngineClosed as exc:
                caught.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            eng.stop()
    assert caught
    with pytest.raises(errands.EngineClosed):
        await eng.wait_any([record.id])
    assert eng.watchers.listeners == {}


async def test_wait_any_many_ids(
    clock: trio.testing.MockClock, kind: str, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as eng:
        ids = [(await eng.submit("sleepy", {"seconds": 10 + i})).id for i in range(20)]
        others = [new_task_id() for _ in range(3000)]  # unknown, but well-formed
        waiting = ids + others
        assert set(await eng.wait_any(waiting, timeout=1)) == set(others)
        start = trio.current_time()
        got = await eng.wait_any(ids)
        assert list(got) == [ids[0]] and trio.current_time() - start == close_to(kind, 10)
        assert eng.watchers.listeners == {}


# ---------------------------------------------------------------- another process


@pytest.mark.parametrize("kind", ["diskcache"])
@pytest.mark.parametrize("shared", [False, True], ids=["two backends", "one backend object"])
async def test_changes_by_another_engine_are_seen_by_polling(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend], shared: bool
) -> None:
    """Two engines on one directory: one runs the tasks, the other (a pure
    client) follows them; it sees each change within a poll interval.  Also
    when both use one backend object (one database connection, whose own
    commits SQLite does not count as changes)."""
    first = make_backend()
    second = first if shared else make_backend()
    async with engine(first) as runner, engine(second, workers=0) as watcher:
        assert watcher.backend.poll_interval == pytest.approx(0.1)
        record = await watcher.submit("stepper", {"steps": 2})
        info = await watcher.next_change(record.id)
        start = trio.current_time()
        history = []
        while not info.status.is_final:
            info = await watcher.next_change(record.id, info, timeout=10)
            history.append((seen(info), trio.current_time() - start))
        changes = [h[0] for h in history]
        assert changes[-1] == ("success", 1.0, "step 2", 1)
        assert ("in_progress", 0.5, "step 1", 1) in changes
        for (_, at), due in zip(history[-3:], (1, 2, 3), strict=True):
            assert due - 0.05 <= at <= due + 0.4
        other = await watcher.submit("sleepy", {"seconds": 2})
        start = trio.current_time()
        got = await watcher.wait_any([other.id])
        assert list(got) == [other.id] and 2 <= trio.current_time() - start <= 2.4
        assert runner.watchers.listeners == {} and watcher.watchers.listeners == {}


# ---------------------------------------------------------------- wait after the end


@svc.task(ttl=10)
async def brief() -> int:
    return 7


async def test_a_wait_after_the_end_answers_without_reading_the_store(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    """A task this engine ended is remembered (its final status and expiry):
    a wait that begins later reads nothing, and once the task has expired
    the wait says so, as a read would."""
    backend = make_backend()
    async with engine(backend) as eng:
        record = await eng.submit("brief", {})
        assert await eng.wait(record.id, timeout=10) is TaskStatus.SUCCESS
        reads = 0
        get, get_state = backend.store.get, backend.store.get_state

        async def counted(task_id: str) -> Any:
            nonlocal reads
            reads += 1
            return await get(task_id)

        async def counted_state(task_id: str) -> Any:
            nonlocal reads
            reads += 1
            return await get_state(task_id)

        backend.store.get = counted  # type: ignore[method-assign]
        backend.store.get_state = counted_state  # type: ignore[method-assign]
        for _ in range(3):
            assert await eng.wait(record.id, timeout=10) is TaskStatus.SUCCESS
        assert reads == 0
        assert eng.watchers.ended_as(record.id, eng.clock()) == (TaskStatus.SUCCESS, "brief")
        await trio.sleep(11)
        with pytest.raises(errands.TaskNotFound):
            await eng.wait(record.id, timeout=10)
        assert reads == 1  # expired: asked the store (which may not have purged it yet)
        assert eng.watchers.ended_as(record.id, eng.clock()) is None


async def test_a_wait_on_a_task_this_engine_runs_reads_nothing(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    """A task this engine is running (or storing the end of) is in
    progress, and its end will be told here: a wait that begins then does
    not read the store first (on diskcache, a trip to the database per
    wait; the HTTP long poll after a submit is one)."""
    backend = make_backend()
    async with engine(backend) as eng:
        record = await eng.submit("sleepy", {"seconds": 5})
        await started(eng, record.id)
        calls = count_calls(backend.store, "get", "get_state", "get_many")
        with pytest.raises(TimeoutError):
            await eng.wait(record.id, timeout=1)
        # Its timeout reads the stored status once, to say what it is.
        assert calls.count == {"get": 0, "get_state": 1, "get_many": 0}
        assert await eng.wait(record.id, timeout=10) is TaskStatus.SUCCESS
        assert calls.count == {"get": 0, "get_state": 1, "get_many": 0}


async def test_a_status_waited_for_comes_with_the_end_not_from_the_store(
    clock: trio.testing.MockClock, kind: str, make_backend: Callable[[], Backend]
) -> None:
    """``wait_info`` (a long poll of a status) on a task that ends while it
    waits answers the final record this engine stored, as a read would
    give it, without reading it back (on diskcache, a trip to the database
    per long poll); one that times out reads the state of the moment."""
    backend = make_backend()
    async with engine(backend) as eng:
        record = await eng.submit("stepper", {"steps": 2})
        await started(eng, record.id)
        calls = count_calls(backend.store, "get", "get_state", "get_many")
        start = trio.current_time()
        info = await eng.wait_info(record.id, 10)
        assert trio.current_time() - start == close_to(kind, 3)
        assert calls.count == {"get": 0, "get_state": 0, "get_many": 0}
        assert seen(info) == ("success", 1.0, "step 2", 1)
        assert info == await eng.info(record.id)  # what the store says
        eng.watchers.ended.clear()  # as after a restart: its end not remembered
        before = calls.count["get_state"]
        assert await eng.wait_info(record.id, 10) == info
        assert calls.count["get_state"] == before + 1  # read by the wait, not again
        slow = await eng.submit("sleepy", {"seconds": 50})
        await started(eng, slow.id)
        before = calls.count["get_state"]
        info = await eng.wait_info(slow.id, 1)
        assert info.status is TaskStatus.IN_PROGRESS
        assert calls.count["get_state"] > before  # timed out: the state now, read
        with pytest.raises(errands.TaskNotFound):
            await eng.wait_info(new_task_id(), 1)


async def test_the_status_of_a_task_running_here_is_its_stored_record_not_a_read(
    clock: trio.testing.MockClock, kind: str, make_backend: Callable[[], Backend]
) -> None:
    """``info()``, ``status()`` and ``next_change()`` of a task this engine
    runs answer the run's record as stored (what a poll of a running task's
    status asks, again and again; on diskcache, a trip to the database
    each).  While a report waits to be stored, or is being stored, the store
    is read instead; once stored, the record with it is answered."""
    backend = make_backend()
    async with engine(backend) as eng:
        record = await eng.submit("stepper", {"steps": 3})
        await started(eng, record.id)
        calls = count_calls(backend.store, "get", "get_state", "get_many")
        reads = count_calls(backend, "state_and_position")
        polled = [await eng.info(record.id) for _ in range(5)]
        assert await eng.status(record.id) is TaskStatus.IN_PROGRESS
        assert calls.count == {"get": 0, "get_state": 0, "get_many": 0}
        assert reads.count["state_and_position"] == 0
        stored = await backend.store.get_state(record.id)
        assert stored is not None and polled == [stored.info()] * 5
        assert polled[0].status is TaskStatus.IN_PROGRESS and polled[0].progress is None
        while True:  # the first report, once the progress writer stored it
            await trio.sleep(0.05)
            running = eng.runner.stored_record(record.id)
            if running is not None and running.progress is not None:
                break
        before = dict(calls.count)
        info = await eng.info(record.id)
        assert calls.count == before
        assert (info.progress, info.message) == (pytest.approx(1 / 3), "step 1")
        stored = await backend.store.get_state(record.id)
        assert stored is not None and info == stored.info()
        before = dict(calls.count)
        changed = await eng.next_change(record.id, info, timeout=5)  # an event stream's step
        assert changed.message == "step 2" and calls.count == before
        info = changed
        eng.runner._dirty[record.id] = eng.runner.running[record.id]  # a report not stored yet
        assert (await eng.info(record.id)) == info
        assert reads.count["state_and_position"] == 1  # read, this time
        assert await eng.wait(record.id, timeout=10) is TaskStatus.SUCCESS
        assert eng.runner.stored_record(record.id) is None  # ended: the store says


async def test_the_status_of_a_waiting_task_is_one_backend_call(
    clock: trio.testing.MockClock, kind: str, make_backend: Callable[[], Backend]
) -> None:
    """``info()`` of a task waiting in the queue reads its state and its
    position in one backend call (``state_and_position``: on diskcache one
    transaction, where it was two)."""
    backend = make_backend()
    async with engine(backend, workers=1) as eng:
        first = await eng.submit("sleepy", {"seconds": 50})
        waiting = await eng.submit("sleepy", {"seconds": 50})
        await started(eng, first.id)
        calls = count_calls(backend, "state_and_position")
        info = await eng.info(waiting.id)
        assert info.status is TaskStatus.PENDING and info.position == 0
        assert calls.count["state_and_position"] == 1
        assert info.position == await backend.queue.position(waiting.id)


async def test_the_status_of_a_task_whose_report_is_being_stored_is_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the progress writer stores a report of a task running here, the
    run's record is not yet what the store holds (it may already be, or not
    at all): ``info()`` reads the store, as it did for every task before."""
    backend = MemoryBackend()
    gate = trio.Event()
    transition = backend.store.transition
    writing: list[str] = []

    async def held(task: Any, **kwargs: Any) -> bool:
        if task.status is TaskStatus.IN_PROGRESS:  # a report, not an end
            writing.append(task.id)
            await gate.wait()
        return await transition(task, **kwargs)

    backend.store.transition = held  # type: ignore[method-assign]
    async with engine(backend) as eng:
        record = await eng.submit("stepper", {"steps": 3})
        while not writing:
            await trio.sleep(0.1)
        assert eng.runner.stored_record(record.id) is None
        calls = count_calls(backend.store, "get_state")
        info = await eng.info(record.id)
        assert calls.count["get_state"] == 1 and info.progress is None  # what the store holds
        gate.set()
        await trio.sleep(0.1)
        running = eng.runner.stored_record(record.id)
        assert running is not None and running.progress == pytest.approx(1 / 3)
        assert await eng.wait(record.id, timeout=10) is TaskStatus.SUCCESS


@svc.task
async def text(size: int) -> str:
    return "x" * size


async def test_a_small_result_comes_with_its_end_not_from_the_store(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    """The result of a task this engine ended lately is kept with its end
    when small (at most ``KEPT_RESULT`` bytes): ``get()`` after ``wait()``
    reads nothing (on diskcache, a trip to the database per task); a
    larger result is read from the store as before."""
    backend = make_backend()
    async with engine(backend) as eng:
        small = await eng.submit("text", {"size": 10})
        large = await eng.submit("text", {"size": _watching.KEPT_RESULT + 1})
        for record in (small, large):
            assert await eng.wait(record.id, timeout=10) is TaskStatus.SUCCESS
        calls = count_calls(backend.store, "get_result", "get_with_results")
        for _ in range(2):
            assert await eng.result(small.id) == "x" * 10
        assert calls.count == {"get_result": 0, "get_with_results": 0}
        assert await eng.result(large.id) == "x" * (_watching.KEPT_RESULT + 1)
        assert calls.count == {"get_result": 1, "get_with_results": 0}


async def test_the_engine_remembers_a_bounded_number_of_ends(
    clock: trio.testing.MockClock,
) -> None:
    async with engine(MemoryBackend()) as eng:
        watchers = eng.watchers
        first = await eng.submit("brief", {})
        await eng.wait(first.id, timeout=10)
        final = await eng.load(first.id)
        for _ in range(_watching.ENDED_KEPT):
            watchers.notify(new_task_id(), final)
        assert len(watchers.ended) == _watching.ENDED_KEPT
        assert first.id not in watchers.ended  # the oldest went first
        assert await eng.wait(first.id, timeout=10) is TaskStatus.SUCCESS  # read from the store


async def test_the_result_of_a_success_ended_here_is_read_without_its_record(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    backend = make_backend()
    async with engine(backend) as eng:
        record = await eng.submit("brief", {})
        await eng.wait(record.id, timeout=10)
        reads: list[str] = []
        store = backend.store
        get, get_result, get_both = store.get, store.get_result, store.get_with_results

        async def counted_get(task_id: str) -> Any:
            reads.append("record")
            return await get(task_id)

        async def counted_result(task_id: str) -> Any:
            reads.append("result")
            return await get_result(task_id)

        async def counted_both(task_ids: Any) -> Any:
            reads.append("record")  # and its result, in the same call
            return await get_both(task_ids)

        store.get = counted_get  # type: ignore[method-assign]
        store.get_result = counted_result  # type: ignore[method-assign]
        store.get_with_results = counted_both  # type: ignore[method-assign]
        assert await eng.result(record.id) == 7
        assert reads == []  # a small result is kept with the end (see below)
        await trio.sleep(11)  # expired: the record is read, and says so
        with pytest.raises(errands.TaskNotFound):
            await eng.result(record.id)
        assert reads == ["record"]


def test_a_remembered_end_is_trusted_until_shortly_before_its_expiry() -> None:
    """Another engine whose clock runs ahead may purge a task (and reuse its
    id) a little before this engine's clock says it expired: the end stops
    answering for the store TRUST_MARGIN seconds before (at most half the
    time the task is kept)."""
    watchers = _watching.Watchers()
    margin = _watching.TRUST_MARGIN
    for kept, trusted in ((3600.0, 3600.0 - margin), (10.0, 5.0)):
        record = TaskRecord(
            id=new_task_id(),
            name="brief",
            args={},
            status=TaskStatus.SUCCESS,
            created_at=100.0,
            finished_at=1000.0,
            expires_at=1000.0 + kept,
        )
        watchers.notify(record.id, record)
        assert watchers.ended_as(record.id, 1000.0 + trusted - 0.001) == (
            TaskStatus.SUCCESS,
            "brief",
        )
        assert watchers.ended_as(record.id, 1000.0 + trusted) is None
        assert record.id not in watchers.ended
