"""The invariant of ``engine/_backend.py``, checked under random workloads.

Every accepted task is, at every moment between two backend calls, final, or
``pending`` with a queue entry, or ``in_progress`` under a live claim (an
entry claimed with the record's own token).  Two engines share one memory
backend; each engine's backend calls are stalled at random (a renewal, a
start, a final write held up past the lease), so leases run out, claims are
recovered and taken over, and starts race.  A checker looks at the shared
backend after every scheduling step; at the end every task must be final
with its own result.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import hypothesis
import hypothesis.strategies as st
import trio
import trio.testing

import errands
from errands import Backend, Claim, StoredTask, TaskStatus
from errands.backends import MemoryBackend
from tests.conftest import trio_wall

svc = errands.Service("invariant")
LEASE = 1.0


@svc.task
async def work(n: int, seconds: float) -> int:
    await trio.sleep(seconds)
    return n * 3


class _Stalling:
    """Forwards to ``inner``; some async calls first sleep a random while."""

    def __init__(self, inner: Any, rng: random.Random, stalls: dict[str, float]) -> None:
        self._inner, self._rng, self._stalls = inner, rng, stalls

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        chance = self._stalls.get(name)
        if chance is None:
            return value

        @functools.wraps(value)
        async def stalled(*args: Any, **kwargs: Any) -> Any:
            if self._rng.random() < chance:
                await trio.sleep(self._rng.uniform(0, 3 * LEASE))
            return await value(*args, **kwargs)

        return stalled


class _StallingBackend(Backend):
    def __init__(self, inner: MemoryBackend, rng: random.Random) -> None:
        self.inner, self.rng = inner, rng
        self.queue = _Stalling(inner.queue, rng, {"renew_many": 0.3, "claim": 0.1})  # type: ignore[assignment]
        self.store = _Stalling(inner.store, rng, {"get": 0.1})  # type: ignore[assignment]
        self.poll_interval = inner.poll_interval

    async def enqueue(
        self, task: StoredTask, *, priority: int, not_before: float, rank: float | None = None
    ) -> bool:
        return await self.inner.enqueue(task, priority=priority, not_before=not_before, rank=rank)

    # Submits start tasks in their own write, as the memory backend's do,
    # and may stall right after.
    starts_on_enqueue = True

    async def enqueue_and_start(self, task: StoredTask, **kwargs: Any) -> Any:
        answer = await self.inner.enqueue_and_start(task, **kwargs)
        if answer[1] is not None and self.rng.random() < 0.3:
            await trio.sleep(self.rng.uniform(0, 3 * LEASE))
        return answer

    async def begin(self, task: StoredTask, *, claim: Claim) -> bool:
        if self.rng.random() < 0.3:
            await trio.sleep(self.rng.uniform(0, 3 * LEASE))  # stalled right after claiming
        return await self.inner.begin(task, claim=claim)

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()


def violations(backend: MemoryBackend) -> list[str]:
    """Accepted tasks that are in none of the invariant's states."""
    queue, store = backend.queue, backend.store
    found = []
    for task_id, task in store._records.items():
        status = task.status
        if status.is_final:
            continue
        waiting = task_id in queue._waiting
        claim = queue._claimed.get(task_id)
        if status is TaskStatus.PENDING and (waiting or claim is not None):
            continue
        if status is TaskStatus.IN_PROGRESS and claim is not None and claim.token == task.token:
            continue
        found.append(f"{task_id}: {status.value}, waiting={waiting}, claim={claim}")
    return found


class _Checker(trio.abc.Instrument):
    """Checks the invariant after every step of every trio task."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.seen: list[str] = []
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if not self.seen:
            self.seen.extend(violations(self.backend))


async def _workload(seed: int, count: int, cancels: int) -> None:
    rng = random.Random(seed)
    shared = MemoryBackend()
    checker = _Checker(shared)
    trio.lowlevel.add_instrument(checker)
    options: dict[str, Any] = {"lease": LEASE, "clock": trio_wall, "grace": 1, "max_attempts": 50}
    async with (
        errands.open_engine(svc, backend=_StallingBackend(shared, rng), workers=3, **options) as a,
        errands.open_engine(svc, backend=_StallingBackend(shared, rng), workers=3, **options),
    ):
        tasks = []
        for n in range(count):
            tasks.append(await a.work.submit(n=n, seconds=rng.uniform(0, 2 * LEASE)))
            await trio.sleep(rng.uniform(0, 0.3))
        cancelled, asked = set(), set()
        for task in rng.sample(tasks, min(cancels, len(tasks))):
            asked.add(task.id)
            try:
                if await task.cancel() is TaskStatus.CANCELLED:
                    cancelled.add(task.id)
            except errands.CannotCancel:
                pass
        with trio.fail_after(600):
            for task in tasks:
                # Polled: B's results are not announced to A's waiters.
                while not (await task.get_status()).is_final:
                    await trio.sleep(0.5)
        for n, task in enumerate(tasks):
            status = await task.get_status()
            if task.id in cancelled:
                assert status is TaskStatus.CANCELLED
            elif task.id in asked and status is TaskStatus.CANCELLED:
                pass  # the cancel reached it after cancel() answered
            else:
                assert status is TaskStatus.SUCCESS, await task.get_info()
                assert await task.get() == n * 3
    trio.lowlevel.remove_instrument(checker)
    assert checker.steps > 0 and checker.seen == [], checker.seen
    assert violations(shared) == []


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**32 - 1), count=st.integers(1, 12), cancels=st.integers(0, 3)
)
def test_every_task_is_final_pending_and_queued_or_running_under_its_claim(
    seed: int, count: int, cancels: int
) -> None:
    trio.run(_workload, seed, count, cancels, clock=trio.testing.MockClock(autojump_threshold=0))
