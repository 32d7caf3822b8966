"""The cancel scopes a request enters (a body's read timeout, a long poll's
hold): trio's own under trio, anyio's under asyncio, each doing its job
under both loops (a stalled body's 408 under each: test_security.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import trio
import trio.testing

from errands.adapters._scopes import move_on_after, under_trio
from errands.adapters._waiting import Holds


async def test_under_trio_a_request_takes_trios_own_scopes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert under_trio()
    holds = Holds()
    with holds.hold() as held:
        assert type(held) is trio.CancelScope  # not anyio's wrapper of one
        holds.drain()  # from this thread: at once
        await trio.sleep(60)
    assert held.cancelled_caught and len(holds) == 0
    with move_on_after(5) as timer:
        assert type(timer) is trio.CancelScope
        await trio.sleep(60)
    assert timer.cancelled_caught and trio.current_time() == 5  # the drain ended the first at 0


async def test_under_trio_a_drain_from_another_thread_ends_a_hold() -> None:
    holds = Holds()
    with trio.fail_after(10), holds.hold() as held:
        await trio.to_thread.run_sync(holds.drain)
        await trio.sleep(30)
    assert held.cancelled_caught


def test_under_asyncio_a_request_takes_anyios_scopes() -> None:
    async def main() -> tuple[Any, Any]:
        assert not under_trio()
        holds = Holds()
        with holds.hold() as held:
            assert isinstance(held, anyio.CancelScope)
            drainer = threading.Thread(target=holds.drain)
            drainer.start()
            await asyncio.sleep(30)
        drainer.join()
        with move_on_after(0.01) as timer:
            assert isinstance(timer, anyio.CancelScope)
            await asyncio.sleep(30)
        return held, timer

    held, timer = asyncio.run(main())  # a hold the drain missed: 30 s, then the assert
    assert held.cancelled_caught and timer.cancelled_caught
