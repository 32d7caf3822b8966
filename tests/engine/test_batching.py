"""Adaptive batching: waiting tasks of a batchable task share one call.

Timing runs on trio's MockClock (autojump), on the memory backend and on
diskcache (see ``test_waiting.py`` for why diskcache autojumps a little late).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import errands
from errands import Backend, TaskStatus
from errands.backends import DiskCacheBackend, MemoryBackend
from tests.conftest import trio_wall
from tests.tools import mock_clock

#: (trio time at the call, the items) of every call of the batchable tasks.
calls: list[tuple[float, list[int]]] = []
gate = trio.Event()
hold_first = False

svc = errands.Service("batching")


@svc.task(batchable=True, max_batch_size=4, max_latency_ms=50, concurrency=1)
async def double(items: list[int], scale: int = 2) -> list[int]:
    global gate
    calls.append((trio.current_time(), list(items)))
    if hold_first and len(calls) == 1:
        await gate.wait()
    errands.current_task().report(progress=0.5)
    if -1 in items:
        raise RuntimeError("the model choked")
    if -2 in items:
        return [0]  # the wrong length
    return [scale * i for i in items]


@svc.task(batchable=True, max_batch_size=8, max_latency_ms=2000, retries=1, retry_delay=1)
async def flaky(items: list[int]) -> list[int]:
    calls.append((trio.current_time(), list(items)))
    if errands.current_task().attempt == 1:
        raise RuntimeError("first call fails")
    return items


@svc.task(batchable=True, max_batch_size=3, max_latency_ms=20)
def square(items: list[int]) -> list[int]:
    return [i * i for i in items]


@svc.task(batchable=True, max_batch_size=4, max_latency_ms=0, timeout=2)
async def slow(items: list[int]) -> list[int]:
    await trio.sleep(5)
    return items


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": lambda path: MemoryBackend(),
    "diskcache": lambda path: DiskCacheBackend(path / "data", synchronous="NORMAL"),
    "redis": lambda path: MemoryBackend(),  # replaced by make_backend (needs redis_url)
}


@pytest.fixture(params=sorted(BACKENDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> trio.testing.MockClock:
    return mock_clock(kind)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    global gate, hold_first
    calls.clear()
    gate = trio.Event()
    hold_first = False


@pytest.fixture
def make_backend(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[], Backend]:
    if kind == "redis":
        from errands.backends.redis import RedisBackend

        url = request.getfixturevalue("redis_url")
        prefix = f"t{uuid.uuid4().hex[:12]}"
        return lambda: RedisBackend(url, prefix=prefix)
    return lambda: BACKENDS[kind](tmp_path)


async def done(task: Any) -> Any:
    """The task's result once it has finished."""
    await task.wait()
    return await task.get()


@asynccontextmanager
async def engine(backend: Backend, **options: Any) -> AsyncIterator[Any]:
    async with errands.open_engine(svc, backend=backend, clock=trio_wall, **options) as client:
        yield client
    await trio.lowlevel.checkpoint()


async def test_a_full_batch_starts_at_once_and_each_task_gets_its_slice(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        start = trio.current_time()
        tasks = [
            await client.double.submit(items=[1, 2]),
            await client.double.submit(items=[3]),
            await client.double.submit(items=[4]),
        ]
        for task in tasks:
            assert await task.wait() is TaskStatus.SUCCESS
        assert [call[1] for call in calls] == [[1, 2, 3, 4]]
        assert calls[0][0] - start < 0.05  # full: it did not wait out the latency
        assert [await done(t) for t in tasks] == [[2, 4], [6], [8]]
        infos = [await t.get_info() for t in tasks]
        assert len({i.id for i in infos}) == 3
        assert all(i.attempt == 1 and i.progress == 0.5 for i in infos)


async def test_a_batch_that_is_not_full_waits_its_latency_for_more(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        start = trio.current_time()
        first = await client.double.submit(items=[1])
        await trio.sleep(0.02)
        second = await client.double.submit(items=[2])
        assert await first.wait() is TaskStatus.SUCCESS
        assert await second.wait() is TaskStatus.SUCCESS
        assert [call[1] for call in calls] == [[1, 2]]
        assert 0.05 <= calls[0][0] - start < 0.1  # waited max_latency_ms, no longer
        await trio.sleep(1)
        alone = await client.double.submit(items=[5])
        assert await done(alone) == [10]
        assert [call[1] for call in calls] == [[1, 2], [5]]


async def test_tasks_queued_behind_a_busy_call_form_the_next_batches(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    global hold_first
    hold_first = True
    async with engine(make_backend()) as client:
        first = await client.double.submit(items=[0])
        await trio.sleep(0.1)  # its call runs, holding the one slot
        tasks = [await client.double.submit(items=[i]) for i in range(1, 11)]
        gate.set()
        for task in [first, *tasks]:
            assert await task.wait() is TaskStatus.SUCCESS
        assert [call[1] for call in calls] == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
        assert [await done(t) for t in tasks] == [[2 * i] for i in range(1, 11)]


async def test_priorities_choose_the_next_batch(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    global hold_first
    hold_first = True
    async with engine(make_backend()) as client:
        first = await client.double.submit(items=[0])
        await trio.sleep(0.1)
        low = [await client.double.submit(items=[i]) for i in (1, 2, 3, 4)]
        high = [await client.double.options(priority=5).submit(items=[i]) for i in (5, 6, 7, 8)]
        gate.set()
        for task in [first, *low, *high]:
            assert await task.wait() is TaskStatus.SUCCESS
        assert [call[1] for call in calls] == [[0], [5, 6, 7, 8], [1, 2, 3, 4]]


async def test_only_tasks_with_equal_other_arguments_share_a_call(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        a = await client.double.submit(items=[1])
        b = await client.double.submit(items=[2], scale=3)
        c = await client.double.submit(items=[3])
        assert [await done(t) for t in (a, b, c)] == [[2], [6], [6]]
        assert sorted(call[1] for call in calls) == [[1, 3], [2]]


async def test_a_task_that_does_not_fit_waits_for_the_next_batch_in_its_place(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    global hold_first
    hold_first = True
    async with engine(make_backend()) as client:
        first = await client.double.submit(items=[0])
        await trio.sleep(0.1)
        a = await client.double.submit(items=[1, 2, 3])
        b = await client.double.submit(items=[4, 5])  # does not fit beside a
        c = await client.double.submit(items=[6])
        d = await client.double.submit(items=[7])
        gate.set()
        for task in (first, a, b, c, d):
            assert await task.wait() is TaskStatus.SUCCESS
        assert [call[1] for call in calls] == [[0], [1, 2, 3, 6], [4, 5, 7]]


async def test_a_call_that_raises_fails_each_task_of_it(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        good = await client.double.submit(items=[1, 2])
        bad = await client.double.submit(items=[-1])
        assert await good.wait() is TaskStatus.FAILURE
        assert await bad.wait() is TaskStatus.FAILURE
        for task in (good, bad):
            info = await task.get_info()
            assert info.error is not None
            assert (info.error.type, info.error.message) == ("RuntimeError", "the model choked")
        # The engine goes on: the next call is a new batch.
        assert await done(await client.double.submit(items=[3])) == [6]


async def test_a_result_of_the_wrong_length_fails_them_all_clearly(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        tasks = [await client.double.submit(items=[-2]), await client.double.submit(items=[1])]
        for task in tasks:
            assert await task.wait() is TaskStatus.FAILURE
            error = (await task.get_info()).error
            assert error is not None and error.type == "InvalidResult"
            assert error.message == "the batch call returned 1 results for 2 items (of 2 tasks)"


async def test_a_failed_batch_is_retried_and_each_attempt_counts(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        tasks = [await client.flaky.submit(items=[i]) for i in (1, 2, 3)]
        assert [await done(t) for t in tasks] == [[1], [2], [3]]
        for task in tasks:
            info = await task.get_info()
            assert info.attempt == 2
        # Batched on each attempt (the retries' jittered delays fall within the latency).
        assert [sorted(call[1]) for call in calls] == [[1, 2, 3], [1, 2, 3]]


async def test_a_task_cancelled_while_its_batch_forms_is_left_out(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        a = await client.double.submit(items=[1])
        b = await client.double.submit(items=[2])
        await trio.sleep(0.01)  # claimed: the batch waits for more
        assert await a.cancel() is TaskStatus.CANCELLED
        assert await done(b) == [4]
        assert [call[1] for call in calls] == [[2]]
        assert await a.get_status() is TaskStatus.CANCELLED


async def test_a_running_batch_task_cancelled_drops_its_share(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    global hold_first
    hold_first = True
    async with engine(make_backend()) as client:
        a = await client.double.submit(items=[1])
        b = await client.double.submit(items=[2])
        await trio.sleep(0.1)  # both in the one call, which waits on the gate
        assert await a.get_status() is TaskStatus.IN_PROGRESS
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.cancel)
            await trio.sleep(0.1)
            gate.set()
        assert await a.get_status() is TaskStatus.CANCELLED
        assert await done(b) == [4]


async def test_a_batch_call_honours_the_timeout(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        tasks = [await client.slow.submit(items=[1]), await client.slow.submit(items=[2])]
        for task in tasks:
            assert await task.wait() is TaskStatus.FAILURE
            error = (await task.get_info()).error
            assert error is not None and error.type == "TimeoutError"


async def test_a_sync_batchable_function_runs_in_a_thread(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        tasks = [await client.square.submit(items=[i, i + 1]) for i in (1, 3, 5)]
        assert [await done(t) for t in tasks] == [[1, 4], [9, 16], [25, 36]]


async def test_delayed_tasks_join_batches_when_due(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with engine(make_backend()) as client:
        start = trio.current_time()
        late = await client.double.options(delay=10).submit(items=[1])
        assert await late.get_status() is TaskStatus.PENDING
        await late.wait()
        assert calls[0][0] - start >= 10
        assert await done(late) == [2]


async def test_items_are_validated_at_submit(autojump_clock: trio.testing.MockClock) -> None:
    async with engine(MemoryBackend()) as client:
        with pytest.raises(errands.InvalidArguments) as caught:
            await client.double.submit(items=[1, "two"])
        assert caught.value.errors[0].path == "$.items[1]"
        with pytest.raises(errands.InvalidArguments, match=r"\$\.items: has 5 items; .* 1 to 4"):
            await client.double.submit(items=[1, 2, 3, 4, 5])
        with pytest.raises(errands.InvalidArguments, match=r"\$\.items: has 0 items"):
            await client.double.submit(items=[])
        assert await done(await client.double.submit(items=[1, 2, 3, 4])) == [2, 4, 6, 8]


def test_batchable_definitions_are_checked() -> None:
    other = errands.Service("other")
    with pytest.raises(TypeError, match="'max_batch_size' is for batchable tasks"):
        other.task(max_batch_size=4)
    with pytest.raises(TypeError, match="first argument 'text' must be annotated list"):

        @other.task(batchable=True)
        def one(text: str) -> list[str]:
            return [text]

    with pytest.raises(TypeError, match=r"must return list\[\.\.\.\]"):

        @other.task(batchable=True)
        def two(texts: list[str]) -> str:
            return ""

    with pytest.raises(ValueError, match="max_batch_size must be positive"):
        other.task(batchable=True, max_batch_size=0)


slow_batch = errands.Service("slow_batch")


@slow_batch.task(batchable=True, max_batch_size=8, max_latency_ms=5000)
async def gather(items: list[int]) -> list[int]:
    calls.append((trio.current_time(), list(items)))
    return items


async def test_claims_held_while_a_batch_forms_are_renewed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    async with errands.open_engine(slow_batch, backend=backend, clock=trio_wall, lease=1) as c:
        start = trio.current_time()
        a = await c.gather.submit(items=[1])
        await trio.sleep(3)  # three leases: held, and renewed by the lease keeper
        assert await backend.queue.expired(trio_wall()) == []
        assert await backend.queue.position(a.id) is None  # still claimed, not waiting
        b = await c.gather.submit(items=[2])
        assert await done(a) == [1]
        assert await done(b) == [2]
        assert [(round(t - start, 1), items) for t, items in calls] == [(5.0, [1, 2])]
        assert (await a.get_info()).attempt == 1
