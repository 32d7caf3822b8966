"""A fault-injecting backend wrapper: fails chosen calls of a real backend.

``FaultyBackend(inner)`` forwards every call to ``inner`` (its queue, its
store, ``begin`` and ``enqueue``).  ``fail("store.transition", nth=3,
times=2)`` makes the 3rd and 4th calls of that method raise (a
:class:`~errands.BackendError` unless told otherwise) before they reach the
inner backend, so nothing of a failed call takes effect.  Deterministic: it
counts calls, it does not look at the clock.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import attrs
import trio

from errands import Backend, BackendError, Claim, StoredTask


@attrs.define
class _Plan:
    nth: int
    times: int
    error: Callable[[], BaseException]


class Faults:
    """Counts calls by name and raises where a plan says so."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.plans: dict[str, _Plan] = {}
        self.raised: dict[str, int] = {}

    def fail(
        self,
        method: str,
        *,
        nth: int = 1,
        times: int = 1,
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        """Fail calls ``nth`` .. ``nth + times - 1`` of ``method`` (counted from 1
        among the calls made from now on)."""
        self.calls[method] = 0
        self.plans[method] = _Plan(
            nth=nth, times=times, error=error or (lambda: BackendError(f"injected: {method}"))
        )

    def check(self, method: str) -> None:
        count = self.calls[method] = self.calls.get(method, 0) + 1
        plan = self.plans.get(method)
        if plan is not None and plan.nth <= count < plan.nth + plan.times:
            self.raised[method] = self.raised.get(method, 0) + 1
            raise plan.error()


class _Proxy:
    """Forwards attribute access to ``inner``; its async methods check faults first."""

    def __init__(self, inner: Any, prefix: str, faults: Faults) -> None:
        self._inner = inner
        self._prefix = prefix
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(value):
            return value
        method = f"{self._prefix}.{name}"
        faults = self._faults

        @functools.wraps(value)
        async def call(*args: Any, **kwargs: Any) -> Any:
            await trio.lowlevel.checkpoint_if_cancelled()
            faults.check(method)
            return await value(*args, **kwargs)

        return call


class FaultyBackend(Backend):
    """``inner`` with injectable faults (see the module docstring)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.faults = Faults()
        self.queue = _Proxy(inner.queue, "queue", self.faults)  # type: ignore[assignment]
        self.store = _Proxy(inner.store, "store", self.faults)  # type: ignore[assignment]
        self.poll_interval = inner.poll_interval

    async def enqueue(
        self,
        task: StoredTask,
        *,
        priority: int,
        not_before: float,
        rank: float | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.faults.check("backend.enqueue")
        return await self.inner.enqueue(task, priority=priority, not_before=not_before, rank=rank)

    async def begin(self, task: StoredTask, *, claim: Claim) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.faults.check("backend.begin")
        return await self.inner.begin(task, claim=claim)

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()
