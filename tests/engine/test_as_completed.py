"""``errands.as_completed`` over in-process handles: AsyncTask (``async
for``, on MockClock) and Task (``for``, engine in its own thread)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import errands
from errands import TaskStatus
from errands.backends import MemoryBackend
from tests.tools import count_calls

svc = errands.Service("many")


@svc.task
async def sleepy(seconds: float) -> float:
    await trio.sleep(seconds)
    return seconds


@svc.task
async def broken() -> None:
    raise RuntimeError("no")


async def test_async_handles_come_in_order_of_ending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with errands.open_engine(svc) as client:
        tasks = [await client.sleepy.submit(seconds=s) for s in (30, 10, 20)]
        failing = await client.broken.submit()
        ghost = client.get_task("q" * 22)
        start = trio.current_time()
        ended = []
        waiting = errands.as_completed([*tasks, failing, ghost])
        async for task in waiting:
            ended.append((task, round(trio.current_time() - start)))
        assert {t for t, at in ended[:2]} == {failing, ghost}
        assert [(t.id, at) for t, at in ended[2:]] == [
            (tasks[1].id, 10),
            (tasks[2].id, 20),
            (tasks[0].id, 30),
        ]
        assert await failing.get_status() is TaskStatus.FAILURE
        assert waiting.infos[failing.id].status is TaskStatus.FAILURE
        assert str(waiting.infos[failing.id].error) == "RuntimeError: no"
        assert waiting.infos[ghost.id] is None
        assert waiting.infos[tasks[0].id].finished_at is not None
        with pytest.raises(errands.TaskNotFound):
            await ghost.get()


async def test_async_timeout_keeps_what_was_yielded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with errands.open_engine(svc) as client:
        quick = await client.sleepy.submit(seconds=1)
        slow = await client.sleepy.submit(seconds=100)
        seen = []
        with pytest.raises(TimeoutError, match="1 tasks not finished after 5 s"):
            async for task in errands.as_completed([slow, quick], timeout=5):
                seen.append(task)
        assert seen == [quick]
        assert trio.current_time() < 6
        assert [t async for t in errands.as_completed([])] == []


async def test_handles_are_checked(autojump_clock: trio.testing.MockClock) -> None:
    async with errands.open_engine(svc) as one, errands.open_engine(svc) as two:
        a = await one.sleepy.submit(seconds=0)
        b = await two.sleepy.submit(seconds=0)
        with pytest.raises(ValueError, match="one client"):
            errands.as_completed([a, b])
        with pytest.raises(TypeError, match="task handles"):
            errands.as_completed([a, "not a task"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="async task handles"):
            list(errands.as_completed([a]))


@pytest.mark.realtime
def test_sync_handles_in_a_script() -> None:
    with errands.start(svc) as client:
        slow = client.sleepy.submit(seconds=0.5)
        quick = client.sleepy.submit(seconds=0)
        assert list(errands.as_completed([slow, quick], timeout=30)) == [quick, slow]
        assert slow.get() == 0.5


async def test_each_task_is_read_once_however_many_rounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Waiting listens once and reads each task once at the start; an end
    that this engine stored comes with its final record, read no more: 300
    tasks ending one by one cost 300 reads, not one read of every task
    still running at every end (about 45,000), nor a second read of each
    at its end (600)."""
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend) as client:
        tasks = [await client.sleepy.submit(seconds=i) for i in range(300)]
        calls = count_calls(backend.store, "get_many")
        ended = [t async for t in errands.as_completed(tasks)]
        assert ended == tasks  # in order of ending: one a second
        assert calls.ids_read("get_many") == len(tasks)
        assert not client.engine.core.watchers.listeners  # nothing left registered


async def test_leaving_early_leaves_nothing_registered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with errands.open_engine(svc) as client:
        tasks = [await client.sleepy.submit(seconds=s) for s in (1, 50, 60)]
        waiting = errands.as_completed(tasks).__aiter__()
        assert await waiting.__anext__() == tasks[0]
        await waiting.aclose()
        assert not client.engine.core.watchers.listeners


@pytest.mark.realtime
def test_sync_results_come_with_the_ends() -> None:
    """``for t in as_completed(tasks): t.get()`` from a thread: the results
    are read with the ends, one call into the engine per round, none per
    ``get()``; what is not taken stays bounded, and leaving early leaves
    nothing registered."""
    with errands.start(svc) as client:
        batch = client.sleepy.submit_many([{"seconds": 0.001 * (i % 7)} for i in range(200)])
        engine = client.engine
        calls = count_calls(engine, "result")
        values = {t.id: t.get() for t in errands.as_completed(batch.tasks, timeout=60)}
        assert values == {t.id: 0.001 * (i % 7) for i, t in enumerate(batch.tasks)}
        assert calls.count["result"] == 0
        assert len(engine.kept) == 0  # each taken by its get()
        more = client.sleepy.submit_many([{"seconds": 0.5}, {"seconds": 0}])
        for first in errands.as_completed(more.tasks, timeout=60):
            assert first == more.tasks[1]
            break
        assert client._portal.run(_listeners, engine) == 0
        more.tasks[0].wait(timeout=30)
        assert more.tasks[0].get() == 0.5  # not kept: asked of the engine
        assert calls.count["result"] == 1


async def _listeners(engine: errands.Engine) -> int:
    await trio.lowlevel.checkpoint()
    return len(engine.core.watchers.listeners)


def test_kept_results_are_bounded() -> None:
    from errands._convert import Payload
    from errands._watching import Kept

    kept = Kept()
    big = Payload(media_type="application/json", data=b"1" * (Kept.ONE + 1))
    kept.keep({"big": ("job", big)})
    assert len(kept) == 0  # over one result's bound: never kept
    piece = ("job", Payload(media_type="application/json", data=b"2" * Kept.ONE))
    count = Kept.LIMIT // Kept.ONE
    kept.keep({f"t{i}": piece for i in range(count + 3)})
    assert len(kept) == count  # the oldest dropped past the limit
    assert kept.take("t0") is None and kept.take(f"t{count + 2}") == piece
    assert kept.take(f"t{count + 2}") is None  # taken once


async def test_async_results_come_with_the_ends(autojump_clock: trio.testing.MockClock) -> None:
    """``async for t in as_completed(tasks): await t.get()``: each round reads
    the results of the tasks it yields in one store call, and their
    ``get()`` reads nothing more."""
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend) as client:
        tasks = [await client.sleepy.submit(seconds=i % 4) for i in range(40)]
        calls = count_calls(backend.store, "get_result")
        values = {t.id: await t.get() async for t in errands.as_completed(tasks)}
        assert values == {t.id: i % 4 for i, t in enumerate(tasks)}
        assert calls.count["get_result"] == 0 and len(client.engine.kept) == 0
