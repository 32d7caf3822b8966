"""Priority aging (engine/_aging.py): waiting raises a task's effective priority,
so a low-priority task under a steady stream of high-priority ones still runs,
within the bound the rule promises; with aging off it is starved."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

import errands
from errands import Backend, TaskStatus
from errands._aging import rank
from errands.backends import DiskCacheBackend, MemoryBackend
from tests.conftest import trio_wall
from tests.tools import mock_clock

svc = errands.Service("aging")
#: When each task started (trio time), by tag.
started: dict[str, float] = {}


@svc.task
async def work(tag: str, seconds: float) -> None:
    started[tag] = trio.current_time()
    await trio.sleep(seconds)


@svc.task(retries=1, retry_delay=1)
async def flaky(tag: str) -> None:
    attempt = errands.current_task().attempt
    started[f"{tag}-{attempt}"] = trio.current_time()
    if attempt == 1:
        raise RuntimeError("the first attempt fails")


#: The stream's priority; the low task has priority 0.
HIGH = 5
#: Seconds each task runs.
RUN = 1.0
#: Stream tasks queued at the start; one more arrives every RUN seconds
#: after, as fast as the one task slot works them off, so the line never
#: shortens and every stream task waits the same.
BACKLOG = 2
#: Seconds of waiting worth one point of priority, in the test with aging.
AGING = 4.0
#: The low task is submitted this long after the stream begins.
LOW_AT = 0.5
#: Seconds the stream keeps coming.
STREAM = 40.0

BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": lambda path: MemoryBackend(),
    # NORMAL: no fsync per commit, so a disk write never outlasts the clock's threshold.
    "diskcache": lambda path: DiskCacheBackend(
        path / "data", synchronous="NORMAL", poll_interval=1.0
    ),
}


@pytest.fixture(params=sorted(BACKENDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> trio.testing.MockClock:
    """Autojump; for diskcache only after a short real pause, as its calls run in a
    thread during which the trio side looks idle (see test_waiting.py)."""
    return mock_clock(kind)


def slack(kind: str) -> float:
    """Exact on memory; on diskcache a late disk call lets the clock jump a little."""
    return 0.0 if kind == "memory" else RUN


async def low_under_stream(backend: Backend, *, aging: float) -> tuple[float, float]:
    """Run the stream with the low task in it, on an engine with one task slot;
    returns when the low task was submitted and when it started (trio time)."""
    started.clear()
    async with errands.open_engine(
        svc,
        backend=backend,
        options=errands.EngineOptions(workers=1, priority_aging=aging, clock=trio_wall),
    ) as client:
        high = client.work.options(priority=HIGH)
        t0 = trio.current_time()
        tasks = [await high.submit(tag=f"high-{i}", seconds=RUN) for i in range(BACKLOG)]
        await trio.sleep_until(t0 + LOW_AT)
        low_submitted = trio.current_time()
        low = await client.work.options(priority=0).submit(tag="low", seconds=RUN)
        tick = 1
        while tick * RUN <= STREAM:
            await trio.sleep_until(t0 + tick * RUN)
            tasks.append(await high.submit(tag=f"high-{BACKLOG + tick - 1}", seconds=RUN))
            tick += 1
        assert await low.wait() is TaskStatus.SUCCESS
        for task in tasks:
            assert await task.wait() is TaskStatus.SUCCESS
    # Among themselves the stream's tasks ran in submit order.
    order = sorted((t, tag) for tag, t in started.items() if tag != "low")
    assert [tag for _, tag in order] == [f"high-{i}" for i in range(len(tasks))]
    return low_submitted - t0, started["low"] - t0


def bound(submitted: float) -> float:
    """When the rule promises the low task starts, with aging at AGING.

    Every stream task that arrives later than ``HIGH * AGING`` seconds after
    the low one ranks behind it.  At that moment at most BACKLOG stream tasks
    are ahead of it (one running, the rest waiting), RUN seconds each.
    """
    return submitted + HIGH * AGING + BACKLOG * RUN


async def test_a_low_priority_task_starts_within_the_bound(
    clock: trio.testing.MockClock, kind: str, tmp_path: Path
) -> None:
    submitted, start = await low_under_stream(BACKENDS[kind](tmp_path), aging=AGING)
    assert start <= bound(submitted) + slack(kind)
    # Not before HIGH * AGING, though: the stream tasks that arrived earlier
    # than that still went first, so priorities still count.
    assert start >= submitted + HIGH * AGING - slack(kind)
    assert start < STREAM  # it ran while the stream still came, not after it
    if kind == "memory":
        assert start == pytest.approx(22.0)


async def test_without_aging_the_stream_starves_it(
    clock: trio.testing.MockClock, kind: str, tmp_path: Path
) -> None:
    submitted, start = await low_under_stream(BACKENDS[kind](tmp_path), aging=0)
    # Strict priority: it runs only once the last stream task has run.
    assert start >= STREAM + RUN - slack(kind)
    assert start > bound(submitted) + slack(kind)
    if kind == "memory":
        assert start == pytest.approx(STREAM + 2 * RUN)


async def test_a_retried_task_waits_from_its_retry(
    clock: trio.testing.MockClock, kind: str, tmp_path: Path
) -> None:
    """Its wait counts from when it is due again, so it goes behind the tasks
    waiting since before then (given no rank it would jump the whole line)."""
    started.clear()
    async with errands.open_engine(
        svc,
        backend=BACKENDS[kind](tmp_path),
        options=errands.EngineOptions(workers=1, priority_aging=AGING, clock=trio_wall),
    ) as client:
        t0 = trio.current_time()
        retried = await client.flaky.submit(tag="flaky")
        others = [await client.work.submit(tag=f"other-{i}", seconds=RUN) for i in range(3)]
        for task in [retried, *others]:
            assert await task.wait() is TaskStatus.SUCCESS
    # The first attempt fails at once and is due again within a second, while
    # the first of the others runs; the other two still go before it.
    assert started["flaky-1"] == t0
    assert started["flaky-2"] - t0 == pytest.approx(3 * RUN, abs=slack(kind))
    assert started["flaky-2"] > max(started[f"other-{i}"] for i in range(3))


def test_rank_is_the_static_form_of_the_rule() -> None:
    aging = 60.0
    # One point of priority is worth `aging` seconds of waiting: a task that
    # has waited that much longer ties with one a point higher.
    assert rank(2, now=1000.0, not_before=None, aging=aging) == rank(
        3, now=1060.0, not_before=None, aging=aging
    )
    # Effective priority at any later moment orders as rank does, lowest first.
    tasks = [(0, 1000.0), (2, 1100.0), (1, 1030.0), (5, 1290.0)]
    for now in (1300.0, 2000.0, 10_000.0):
        effective = sorted(tasks, key=lambda t: -(t[0] + (now - t[1]) / aging))
        ranked = sorted(tasks, key=lambda t: rank(t[0], now=t[1], not_before=None, aging=aging))
        assert effective == ranked
    # A delayed task waits from its not_before, not from its submit.
    assert rank(0, now=1000.0, not_before=1500.0, aging=aging) == 1500.0
    assert rank(0, now=1000.0, not_before=900.0, aging=aging) == 1000.0
    # Aging off: -priority, whatever the time.
    assert rank(4, now=1000.0, not_before=2000.0, aging=0) == -4.0
    # Priorities too large for a float count as the largest that is not.
    assert rank(10**400, now=0.0, not_before=None, aging=aging) == -(2.0**63) * aging


def test_priority_aging_is_checked() -> None:
    assert errands.EngineOptions().priority_aging == 60.0
    assert errands.EngineOptions(priority_aging=0).priority_aging == 0
    for bad in (-1, float("nan"), float("inf"), "60", True):
        with pytest.raises(ValueError, match="priority_aging must be a non-negative number"):
            errands.EngineOptions(priority_aging=bad)  # type: ignore[arg-type]
