"""A backend written against an earlier ``Backend.finish`` (without the
``waited`` keyword) still runs tasks: the engine passes the keyword only to
a ``finish`` that takes it."""

from __future__ import annotations

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
