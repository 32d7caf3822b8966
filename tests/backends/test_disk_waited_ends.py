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
