"""Retention by outcome: a task may keep its failures longer than its successes."""

from __future__ import annotations

import datetime as dt

import pytest
import trio
import trio.testing

import errands
from errands import TaskStatus
from tests.conftest import trio_wall

svc = errands.Service("retention")


@svc.task(ttl=100, ttl_success=10, ttl_failure=1000)
async def job(fail: bool) -> str:
    if fail:
        raise RuntimeError("no")
    return "ok"


async def test_each_outcome_is_kept_its_own_time(autojump_clock: trio.testing.MockClock) -> None:
    async with errands.open_engine(svc, clock=trio_wall) as client:
        ok = await client.job.submit(fail=False)
        failed = await client.job.submit(fail=True)
        cancelled = await client.job.options(delay=5).submit(fail=False)
        assert await cancelled.cancel() is TaskStatus.CANCELLED  # kept its plain ttl: 100 s
        assert await ok.wait() is TaskStatus.SUCCESS
        assert await failed.wait() is TaskStatus.FAILURE
        ended = (await ok.get_info()).finished_at
        assert ended is not None
        assert (await ok.get_info()).expires_at == ended + dt.timedelta(seconds=10)
        await trio.sleep(11)
        with pytest.raises(errands.TaskNotFound):
            await ok.get_status()
        assert await failed.get_status() is TaskStatus.FAILURE
        assert await cancelled.get_status() is TaskStatus.CANCELLED
        await trio.sleep(100)
        with pytest.raises(errands.TaskNotFound):
            await cancelled.get_status()
        assert await failed.get_status() is TaskStatus.FAILURE  # a failure: 1,000 s
        await trio.sleep(1000)
        with pytest.raises(errands.TaskNotFound):
            await failed.get_status()


def test_the_options_are_checked() -> None:
    with pytest.raises(ValueError, match="ttl_failure must be positive"):
        errands.task(ttl_failure=0)
