"""Storage faults are weather: the engine rides them out and loses nothing.

A fault-injecting wrapper (``faulty.py``) fails chosen calls of a real memory
backend; every test runs on trio's autojump clock.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import errands
from errands import BackendError, EngineUnavailable, TaskStatus
from errands.backends import MemoryBackend
from tests.conftest import trio_wall

from .faulty import FaultyBackend

svc = errands.Service("weather")


@svc.task
async def nap(n: int, seconds: float) -> int:
    errands.current_task().report(0.5, message="half way")
    await trio.sleep(seconds)
    return 2 * n


def engine(backend: FaultyBackend) -> Any:
    return errands.open_engine(
        svc, backend=backend, clock=trio_wall, lease=3, ttl=300, sweep_interval=2, workers=4
    )


async def submit(client: Any, **arguments: Any) -> Any:
    """Submit until accepted: a refused submit (EngineUnavailable) stored nothing."""
    while True:
        try:
            return await client.nap.submit(**arguments)
        except EngineUnavailable:
            await trio.sleep(1)


async def final(task: Any) -> TaskStatus:
    """Wait until final, riding out read faults too."""
    while True:
        try:
            status: TaskStatus = await task.wait(timeout=600)
        except BackendError:
            await trio.sleep(1)
        else:
            return status


SITES = [
    "queue.claim",
    "queue.next_due",
    "queue.renew_many",
    "queue.expired",
    "queue.ack",
    "store.get",
    "store.transition",
    "store.list",
    "store.purge_expired",
    "backend.begin",
    "backend.enqueue",
]


@pytest.mark.parametrize("site", SITES)
async def test_the_engine_rides_out_failures_at_every_call_site(
    autojump_clock: trio.testing.MockClock, site: str
) -> None:
    backend = FaultyBackend(MemoryBackend())
    async with engine(backend) as client:
        health = client.engine.health
        backend.faults.fail(site, nth=2, times=4)
        tasks = [await submit(client, n=n, seconds=10 if n % 2 else 0.5) for n in range(10)]
        # A few rounds of every loop pass while the faults happen.
        for task in tasks:
            assert await final(task) is TaskStatus.SUCCESS
        for n, task in enumerate(tasks):
            assert await task.get() == 2 * n
        await trio.sleep(30)  # every supervised loop has had a good round since
        assert backend.faults.raised.get(site), f"{site} was never failed"
        # Faults met by the engine's own work were seen by its health (a read
        # by this test's own wait raises to the test instead).
        assert health.total_faults >= 1
        assert health.alive and health.ready, health.storage_error
        assert client.statistics().ready
        # And it still takes work.
        again = await submit(client, n=99, seconds=0)
        assert await final(again) is TaskStatus.SUCCESS


async def test_every_site_was_reached(autojump_clock: trio.testing.MockClock) -> None:
    """The sites above are really called by that workload (else their test proves nothing)."""
    backend = FaultyBackend(MemoryBackend())
    async with engine(backend) as client:
        tasks = [await submit(client, n=n, seconds=10 if n % 2 else 0.5) for n in range(10)]
        for task in tasks:
            await final(task)
        await trio.sleep(30)
    missing = [s for s in SITES if not backend.faults.calls.get(s)]
    assert missing == []


async def test_readiness_drops_while_storage_fails_and_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyBackend(MemoryBackend())
    async with engine(backend) as client:
        health = client.engine.health
        assert health.ready
        backend.faults.fail("queue.claim", nth=1, times=10**9)
        task = await submit(client, n=1, seconds=0)
        await trio.sleep(1)
        assert not health.ready and health.alive
        assert "injected: queue.claim" in (health.storage_error or "")
        stats = client.statistics()
        assert not stats.ready and stats.alive and stats.storage_error
        assert await task.get_status() is TaskStatus.PENDING  # accepted, untouched
        backend.faults.plans.clear()  # storage is back
        assert await final(task) is TaskStatus.SUCCESS
        assert health.ready and health.storage_error is None


async def test_a_refused_submit_stores_nothing_and_says_when_to_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyBackend(MemoryBackend())
    async with engine(backend) as client:
        backend.faults.fail("backend.enqueue", nth=1, times=1)
        with pytest.raises(EngineUnavailable) as caught:
            await client.nap.submit(n=1, seconds=0)
        assert caught.value.retry_after > 0
        assert "storage is failing" in str(caught.value)
        assert not client.engine.health.ready
        assert await client.list() == []  # nothing half-stored
        task = await client.nap.submit(n=1, seconds=0)  # the next one goes through
        assert client.engine.health.ready
        assert await final(task) is TaskStatus.SUCCESS


async def test_a_progress_report_lost_to_a_fault_is_written_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyBackend(MemoryBackend())
    async with engine(backend) as client:
        task = await submit(client, n=3, seconds=20)
        await trio.sleep(1)
        backend.faults.fail("store.transition", nth=1, times=2)
        await trio.sleep(5)
        info = await task.get_info()
        assert info.status is TaskStatus.IN_PROGRESS
        assert (info.progress, info.message) == (0.5, "half way")


async def test_an_engine_bug_ends_the_engine_loudly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Anything but a BackendError from a loop is an engine bug: the engine
    dies (and says so) instead of running on half-broken."""
    backend = FaultyBackend(MemoryBackend())
    with pytest.raises(BaseException) as caught:
        async with engine(backend) as client:
            health = client.engine.health
            backend.faults.fail("queue.claim", nth=1, error=lambda: ZeroDivisionError("bug"))
            await client.nap.submit(n=1, seconds=0)
            await trio.sleep(10)
    error = caught.value
    if isinstance(error, BaseExceptionGroup):
        matched, _ = error.split(ZeroDivisionError)
        assert matched is not None
    else:
        assert isinstance(error, ZeroDivisionError)
    assert not health.alive and health.died_of == "ZeroDivisionError: bug"


async def test_a_finish_retried_after_a_fault_part_way_counts_its_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The composed ``Backend.finish`` (transition, then ack) failed at its
    ack: the retry finds the record moved by the first try and tells the
    success, instead of a refused move."""
    backend = FaultyBackend(MemoryBackend())
    async with engine(backend) as client:
        backend.faults.fail("queue.ack", nth=1, times=1)
        task = await submit(client, n=4, seconds=1)
        assert await final(task) is TaskStatus.SUCCESS
        assert backend.faults.raised.get("queue.ack") == 1
        assert await task.get() == 8
        assert client.statistics().tasks["nap"].succeeded == 1
        assert not await backend.inner.queue.contains(task.id)
