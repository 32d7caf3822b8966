"""Concurrency, timeouts, retries, cancellation and manual retry."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

import errands
from errands import TaskStatus
from tests.conftest import trio_wall

svc = errands.Service("control")
calls: dict[str, int] = {}
running_now = {"n": 0, "peak": 0}
release = threading.Event()


@svc.task(concurrency=2)
async def limited(seconds: float) -> None:
    running_now["n"] += 1
    running_now["peak"] = max(running_now["peak"], running_now["n"])
    await trio.sleep(seconds)
    running_now["n"] -= 1


@svc.task(timeout=5)
async def too_slow() -> None:
    await trio.sleep(60)


@svc.task(retries=3, retry_delay=2)
async def flaky(key: str, fail_times: int) -> str:
    calls[key] = calls.get(key, 0) + 1
    if calls[key] <= fail_times:
        raise ConnectionError(f"attempt {calls[key]} failed")
    return f"ok after {calls[key]}"


@svc.task(retries=5)
async def refuses(key: str) -> None:
    calls[key] = calls.get(key, 0) + 1
    raise errands.FinalError("bad input, retrying will not help")


@svc.task
async def forever() -> None:
    await trio.sleep_forever()


@svc.task
def stubborn() -> str:
    """A sync task that did not opt in to cancellation."""
    release.wait(10)
    return "done"


@svc.task(cancellable=True)
def polite() -> str:
    ctx = errands.current_task()
    while not ctx.cancelled:
        if release.wait(0.01):
            return "finished"
    return "stopped early"


@svc.task(timeout=0.2, cancellable=True)
def slow_sync() -> str:
    ctx = errands.current_task()
    for _ in range(1000):
        if ctx.cancelled:
            return "noticed"
        release.wait(0.01)
    return "never"


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


def engine(**options: object) -> errands.open_engine:  # type: ignore[valid-type]
    options.setdefault("clock", trio_wall)
    return errands.open_engine(svc, **options)  # type: ignore[arg-type]


async def test_concurrency_limit_keeps_extra_tasks_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running_now.update(n=0, peak=0)
    async with engine() as client:
        tasks = [await client.limited.submit(seconds=10) for _ in range(5)]
        await trio.testing.wait_all_tasks_blocked()
        statuses = [await t.get_status() for t in tasks]
        assert statuses.count(TaskStatus.IN_PROGRESS) == 2
        assert statuses.count(TaskStatus.PENDING) == 3
        # A task waiting for a slot is pending, and cancels as pending.
        assert await tasks[-1].cancel() is TaskStatus.CANCELLED
        for t in tasks[:-1]:
            await t.wait()
    assert running_now["peak"] == 2
    assert trio.current_time() == pytest.approx(20)


async def test_workers_bound_all_endpoints(autojump_clock: trio.testing.MockClock) -> None:
    running_now.update(n=0, peak=0)
    async with engine(workers=1) as client:
        slow = await client.limited.submit(seconds=10)
        quick = await client.add.submit(a=1, b=1)
        await trio.testing.wait_all_tasks_blocked()
        assert await quick.get_status() is TaskStatus.PENDING
        await quick.wait()
        assert trio.current_time() == pytest.approx(10)
        await slow.wait()


async def test_timeout_fails_an_async_task(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.too_slow.submit()
        assert await task.wait() is TaskStatus.FAILURE
        assert trio.current_time() == pytest.approx(5)
        info = await task.get_info()
        assert info.error is not None and info.error.type == "TimeoutError"
        with pytest.raises(errands.TaskFailed, match="timeout of 5"):
            await task.get()


@pytest.mark.realtime
async def test_timeout_of_a_sync_task_asks_it_to_stop() -> None:
    release.clear()
    async with engine(clock=__import__("time").time) as client:
        task = await client.slow_sync.submit()
        assert await task.wait(timeout=10) is TaskStatus.FAILURE
        info = await task.get_info()
        assert info.error is not None and info.error.type == "TimeoutError"


async def test_automatic_retries_back_off(autojump_clock: trio.testing.MockClock) -> None:
    calls.clear()
    async with engine() as client:
        task = await client.flaky.submit(key="a", fail_times=2)
        await trio.testing.wait_all_tasks_blocked()
        info = await task.get_info()
        assert info.status is TaskStatus.PENDING  # waiting out its backoff
        # The failed attempt is history; the task itself has not failed.
        assert info.error is None
        assert [(h.attempt, h.type) for h in info.history] == [(1, "ConnectionError")]
        assert "attempt 1 failed" in info.history[0].message
        assert await task.wait() is TaskStatus.SUCCESS
        assert await task.get() == "ok after 3"
        info = await task.get_info()
        assert info.attempt == 3 and info.error is None
        assert [h.attempt for h in info.history] == [1, 2]
        # Backoff: 2 s then 4 s, each with jitter in [0.5, 1.0].
        assert 1.0 + 2.0 <= trio.current_time() <= 2.0 + 4.0


async def test_retries_run_out(autojump_clock: trio.testing.MockClock) -> None:
    calls.clear()
    async with engine() as client:
        task = await client.flaky.submit(key="b", fail_times=10)
        assert await task.wait() is TaskStatus.FAILURE
        assert calls["b"] == 4  # 1 run + 3 retries
        assert (await task.get_info()).attempt == 4


async def test_final_error_is_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    calls.clear()
    async with engine() as client:
        task = await client.refuses.submit(key="c")
        assert await task.wait() is TaskStatus.FAILURE
        assert calls["c"] == 1
        with pytest.raises(errands.TaskFailed, match="retrying will not help"):
            await task.get()


async def test_cancel_pending_task_never_runs(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.add.options(delay=60).submit(a=1, b=1)
        assert await task.cancel() is TaskStatus.CANCELLED
        await trio.sleep(120)
        assert await task.get_status() is TaskStatus.CANCELLED
        info = await task.get_info()
        assert info.started_at is None and info.finished_at is not None
        with pytest.raises(errands.TaskCancelled):
            await task.get()
        # Cancelling again answers the same; a finished task cannot be cancelled.
        assert await task.cancel() is TaskStatus.CANCELLED
        done = await client.add.submit(a=1, b=1)
        await done.wait()
        with pytest.raises(errands.CannotCancel, match="already finished"):
            await done.cancel()
        assert await done.get_status() is TaskStatus.SUCCESS


async def test_cancel_running_async_task(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.forever.submit()
        await trio.testing.wait_all_tasks_blocked()
        assert await task.get_status() is TaskStatus.IN_PROGRESS
        assert await task.cancel() is TaskStatus.CANCELLED
        assert await task.get_status() is TaskStatus.CANCELLED
        assert client.statistics().running == 0


@pytest.mark.realtime
async def test_running_sync_task_cannot_be_cancelled_unless_declared() -> None:
    release.clear()
    async with engine(clock=__import__("time").time) as client:
        task = await client.stubborn.submit()
        while await task.get_status() is not TaskStatus.IN_PROGRESS:
            await trio.sleep(0.01)
        with pytest.raises(errands.CannotCancel, match="cancellable=True"):
            await task.cancel()
        assert await task.get_status() is TaskStatus.IN_PROGRESS  # untouched
        release.set()
        assert await task.wait(timeout=10) is TaskStatus.SUCCESS
        assert await task.get() == "done"


@pytest.mark.realtime
async def test_cancellable_sync_task_stops_when_asked() -> None:
    release.clear()
    async with engine(clock=__import__("time").time) as client:
        task = await client.polite.submit()
        while await task.get_status() is not TaskStatus.IN_PROGRESS:
            await trio.sleep(0.01)
        assert await task.cancel() is TaskStatus.CANCELLED
        with pytest.raises(errands.TaskCancelled):
            await task.get()


@pytest.mark.parametrize("backend", ["memory", "diskcache"])
async def test_a_task_seen_in_progress_is_cancelled_at_once(backend: str, tmp_path: object) -> None:
    """A task is started in one backend call, by its submit (a slot was
    free) or by a dispatch round (it waited for one), and its run is known
    to the engine from that moment: a cancel made as soon as the task reads
    ``in_progress`` stops it, instead of leaving a request for the lease
    keeper and answering ``in_progress`` after the grace period.  (Real
    time: a mock clock would run the leases out while the database thread
    works.)"""
    url = "memory://" if backend == "memory" else f"diskcache://{tmp_path}"
    async with engine(backend=url, workers=1) as client:
        for _ in range(10):
            task = await client.forever.submit()  # started by its submit
            while await task.get_status() is not TaskStatus.IN_PROGRESS:
                pass  # every read is a checkpoint: the first in_progress is seen
            waiting = await client.forever.submit()  # no slot: it waits
            assert await waiting.get_status() is TaskStatus.PENDING
            assert await task.cancel() is TaskStatus.CANCELLED
            # The freed slot brings a dispatch round, which starts it.
            while await waiting.get_status() is not TaskStatus.IN_PROGRESS:
                pass
            assert await waiting.cancel() is TaskStatus.CANCELLED


async def test_manual_retry_makes_a_new_task(autojump_clock: trio.testing.MockClock) -> None:
    calls.clear()
    async with engine() as client:
        # Delayed, so that it is surely not final yet when retried.
        first = await client.refuses.options(delay=1).submit(key="d")
        with pytest.raises(errands.TaskNotReady):
            await first.retry()
        assert await first.wait() is TaskStatus.FAILURE
        second = await first.retry()
        assert second.id != first.id
        assert await second.wait() is TaskStatus.FAILURE
        info = await second.get_info()
        assert info.retry_of == first.id
        assert calls["d"] == 2
        # The original record is never reopened.
        assert await first.get_status() is TaskStatus.FAILURE


async def test_cancel_then_retry(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.add.options(delay=10).submit(a=2, b=2)
        await task.cancel()
        again = await task.retry()
        assert await again.wait() is TaskStatus.SUCCESS
        assert await again.get() == 4


async def test_a_failing_task_harms_no_other(autojump_clock: trio.testing.MockClock) -> None:
    calls.clear()
    async with engine() as client:
        bad = [await client.refuses.submit(key=f"e{i}") for i in range(3)]
        good = [await client.add.submit(a=i, b=1) for i in range(3)]
        for t in bad + good:
            await t.wait()
        assert [await t.get() for t in good] == [1, 2, 3]
