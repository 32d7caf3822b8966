"""A backend written against an earlier ``Backend.finish`` (without the
``waited`` keyword) still runs tasks: the engine passes the keyword only to
a ``finish`` that takes it."""

from __future__ import annotations

from typing import Any

import trio.testing

import errands
from errands import Claim, StoredTask
from errands._convert import Payload
from errands.backends import MemoryBackend
from tests.conftest import trio_wall

svc = errands.Service("compat")


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


class EarlierBackend(MemoryBackend):
    """``finish`` as custom backends overrode it before ``waited``."""

    ends = 0

    async def finish(
        self, task: StoredTask, *, claim: Claim, result: Payload | None = None
    ) -> bool:
        EarlierBackend.ends += 1
        return await super().finish(task, claim=claim, result=result)


async def test_a_finish_without_waited_still_ends_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    EarlierBackend.ends = 0
    async with errands.open_engine(svc, backend=EarlierBackend(), clock=trio_wall) as client:
        task = await client.add.submit(a=2, b=3)
        assert await task.wait() is errands.TaskStatus.SUCCESS  # someone waits: waited=True
        assert await task.get() == 5
    assert EarlierBackend.ends == 1


@svc.task
def double(x: int) -> int:
    return 2 * x


@svc.task
async def wrong() -> int:
    return "not an int"  # type: ignore[return-value]


class CountingBackend(MemoryBackend):
    """Counts the two ways a run's end is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.later = 0

    def finish_now(self, task: StoredTask, **kwargs: Any) -> bool:
        self.now += 1
        return super().finish_now(task, **kwargs)

    async def finish(self, task: StoredTask, **kwargs: Any) -> bool:
        self.later += 1
        return await super().finish(task, **kwargs)


async def test_ends_on_a_backend_that_finishes_at_once_are_stored_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Async and sync runs that returned, a result that does not store
    among them, end through ``finish_now``, storing what ``finish`` would."""
    backend = CountingBackend()
    async with errands.open_engine(svc, backend=backend, clock=trio_wall) as client:
        added = await client.add.submit(a=2, b=3)
        doubled = await client.double.submit(x=21)
        bad = await client.wrong.submit()
        for task in (added, doubled, bad):
            await task.wait()
        assert await added.get() == 5
        assert await doubled.get() == 42
        info = await bad.get_info()
        assert info.status is errands.TaskStatus.FAILURE
        assert info.error is not None and info.error.type == "InvalidResult"
        assert "does not match the return type int" in info.error.message
    assert (backend.now, backend.later) == (3, 0)


async def test_a_backend_overriding_finish_alone_has_its_finish_called(
    autojump_clock: trio.testing.MockClock,
) -> None:
    EarlierBackend.ends = 0
    backend = EarlierBackend()
    assert backend.finishes_now  # inherited: yet its own finish is what runs
    async with errands.open_engine(svc, backend=backend, clock=trio_wall) as client:
        task = await client.double.submit(x=4)
        await task.wait()
        assert await task.get() == 8
    assert EarlierBackend.ends == 1
