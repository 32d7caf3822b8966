"""An end someone waits on is not held back for a submit to share its commit.

On the diskcache backend the end of a run may wait, uncommitted, for the
next submit's fsync (``Flush.SOON``, ``backends/_database.py``).  A caller
that submits, then waits, then submits again never sends that next submit
before the end it waits on: each task waited out the whole hold.  Here the
hold is a minute (the tests' own ``max_hold``), far past every deadline
below, so an end held back fails the test instead of slowing it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

import errands
from errands.backends import DiskCacheBackend
from errands.backends._database import Flush

pytestmark = pytest.mark.realtime

svc = errands.Service("waited-ends")

#: Set by a test to let ``gated`` end.
gate = threading.Event()


@svc.task
def noop() -> int:
    return 7


@svc.task
def gated() -> int:
    gate.wait(30)
    return 8


@svc.task
def large() -> str:
    return "x" * 40_000  # past the inline limit: written to its own file first


def _hold_long(backend: DiskCacheBackend) -> None:
    """A minute's hold: what is held waits for a submit, not for the clock."""
    backend._db.max_hold = 60.0


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[errands.AsyncClient]:
    backend = DiskCacheBackend(tmp_path / "data")
    async with errands.open_engine(svc, backend=backend) as opened:
        _hold_long(backend)
        yield opened


async def test_submit_then_wait_in_a_loop_is_never_held(client: errands.AsyncClient) -> None:
    with trio.fail_after(20):  # held, the third task alone would take a minute
        for _ in range(8):
            task = await client.noop.submit()
            assert await task.wait() is errands.TaskStatus.SUCCESS
            assert await task.get() == 7


async def test_an_end_stored_after_the_waiter_parked_is_written_at_once(
    client: errands.AsyncClient,
) -> None:
    for _ in range(3):  # submits one after another: ends would be held
        await (await client.noop.submit()).wait()
    gate.clear()
    task = await client.gated.submit()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            ended: list[errands.TaskStatus] = []

            async def wait() -> None:
                ended.append(await task.wait())

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert client.engine.core.watchers.waited(task.id)
            gate.set()  # the run ends with its waiter parked
    assert ended == [errands.TaskStatus.SUCCESS]


async def test_a_wait_that_finds_the_end_held_has_it_written_at_once(
    client: errands.AsyncClient, tmp_path: Path
) -> None:
    backend = client.engine.backend
    assert isinstance(backend, DiskCacheBackend)
    for _ in range(3):
        await (await client.noop.submit()).wait()
    task = await client.noop.submit()  # nobody waits on it yet: its end is held
    with trio.fail_after(20):
        while not backend._db._held:
            await trio.sleep(0.001)
    assert [call.flush for call in backend._db._held] == [Flush.SOON]
    with trio.fail_after(20):
        assert await task.wait() is errands.TaskStatus.SUCCESS
    assert not backend._db._held


def test_a_thread_that_submits_then_waits_is_never_held(tmp_path: Path) -> None:
    backend = DiskCacheBackend(tmp_path / "data")
    with errands.start(svc, backend=backend, grace=0.1) as client:
        _hold_long(backend)
        for _ in range(8):
            task = client.noop.submit()
            assert task.wait(timeout=20) is errands.TaskStatus.SUCCESS
            assert task.get() == 7


async def _submits_then_waits(client: errands.AsyncClient) -> None:
    """Submits one after another: from here on, what can be held is held."""
    for _ in range(3):
        await (await client.noop.submit()).wait()


async def _until_held(backend: DiskCacheBackend, flush: Flush) -> None:
    with trio.fail_after(20):
        while not any(call.flush is flush for call in backend._db._held):
            await trio.sleep(0.001)


async def test_as_completed_on_an_end_held_has_it_written_at_once(
    client: errands.AsyncClient,
) -> None:
    backend = client.engine.backend
    assert isinstance(backend, DiskCacheBackend)
    await _submits_then_waits(client)
    task = await client.noop.submit()  # nobody waits on it yet: its end is held
    await _until_held(backend, Flush.SOON)
    with trio.fail_after(20):
        async for done in errands.as_completed([task]):
            assert await done.get() == 7


async def test_a_wait_that_comes_while_a_large_result_is_written_is_not_held(
    client: errands.AsyncClient,
) -> None:
    """The waiter parks while the end's result file is being written, before
    the end reaches the database: nothing is held yet for it to expedite, so
    the end, when it comes, must not be held either."""
    await _submits_then_waits(client)
    task = await client.large.submit()
    settling = client.engine.runner.settling
    with trio.fail_after(20):
        while task.id not in settling:
            await trio.lowlevel.checkpoint()
    assert client.engine.backend._db.expedites == 0  # type: ignore[attr-defined]
    with trio.fail_after(20):
        assert await task.wait() is errands.TaskStatus.SUCCESS
    assert len(await task.get()) == 40_000


async def test_a_waiter_on_ends_written_as_waited_for_expedites_nothing(
    client: errands.AsyncClient,
) -> None:
    """``as_completed`` parks again after each group of ends; the ends under
    way then were written as waited for (never held), so there is nothing to
    expedite: no extra commit for each group (an ``expedite()`` is one)."""
    backend = client.engine.backend
    assert isinstance(backend, DiskCacheBackend)
    gate.clear()
    batch = await client.gated.submit_many([{}] * 40)
    seen: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                async for done in errands.as_completed(batch.tasks):
                    seen.append(await done.get())

            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            assert all(client.engine.core.watchers.waited(t.id) for t in batch.tasks)
            gate.set()
    assert seen == [8] * 40
    assert backend._db.expedites == 0
