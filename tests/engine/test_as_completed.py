"""``errands.as_completed`` over in-process handles: AsyncTask (``async
for``, on MockClock) and Task (``for``, engine in its own thread)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import errands
from errands import TaskStatus

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
