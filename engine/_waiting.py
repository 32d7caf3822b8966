"""``errands.as_completed``: many task handles, each yielded as its task ends.

Works for every kind of handle: in-process (``AsyncTask`` with ``async
for``, ``Task`` with ``for``) and HTTP (``AsyncHTTPTask``, ``HTTPTask``).
Each handle names a *waiter* (its engine or its HTTP client) that can wait
for any of many ids at once (``Engine.wait_any``; ``POST /tasks/wait`` over
HTTP), so waiting costs one call per batch of endings, never one worker or
one poll loop per task.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import trio

__all__ = ["AsCompleted", "EngineWaiter", "as_completed"]

H = TypeVar("H")


class SyncWaiter(Protocol):
    """Waits in the calling thread (``Task``, ``HTTPTask``)."""

    def now(self) -> float: ...

    def wait_any(self, task_ids: list[str], timeout: float | None) -> dict[str, Any]: ...


class AsyncWaiter(Protocol):
    """Waits in the caller's event loop (``AsyncTask``, ``AsyncHTTPTask``)."""

    def now(self) -> float: ...

    def wait_any(self, task_ids: list[str], timeout: float | None) -> Awaitable[dict[str, Any]]: ...


class EngineWaiter:
    """Waits through an engine, in its trio run (for ``AsyncTask``)."""

    is_async = True

    def __init__(self, engine: Any) -> None:
        self.owner = engine

    def now(self) -> float:
        return trio.current_time()

    def wait_any(self, task_ids: list[str], timeout: float | None) -> Awaitable[dict[str, Any]]:
        return self.owner.wait_any(task_ids, timeout)  # type: ignore[no-any-return]

    def open_waiting(self, task_ids: list[str]) -> Any:
        """A waiting set of the engine (``Engine.waiting_set``): listened to
        once, each round reads only what ended, and the results of the
        successes along, kept for their ``get()``."""
        return self.owner.waiting_set(task_ids, keep_results=True)


class AsCompleted(Iterable[H]):
    """The handles given to :func:`as_completed`, in the order their tasks end.

    Iterate with ``for`` over sync handles and ``async for`` over async ones.
    :attr:`infos` holds what was known of each task when it was yielded.
    """

    def __init__(self, tasks: Iterable[H], timeout: float | None) -> None:
        self._tasks = list(tasks)
        self._timeout = timeout
        #: Task id -> its final :class:`~errands.TaskInfo` as seen when the task
        #: was yielded, or None for an unknown or expired id (no need to ask again).
        self.infos: dict[str, Any] = {}
        waiters = {}
        for task in self._tasks:
            source = getattr(task, "_completion_waiter", None)
            if source is None:
                raise TypeError(f"as_completed takes errands task handles, not {task!r}")
            waiter = source()
            key = (id(getattr(waiter, "owner", waiter)), getattr(waiter, "is_async", False))
            waiters[key] = waiter
        if len(waiters) > 1:
            raise ValueError("as_completed takes tasks of one client (or one engine) at a time")
        self._waiter: Any = next(iter(waiters.values()), None)

    def _by_id(self) -> dict[str, list[H]]:
        out: dict[str, list[H]] = {}
        for task in self._tasks:
            out.setdefault(task.id, []).append(task)  # type: ignore[attr-defined]
        return out

    def __iter__(self) -> Iterator[H]:
        if self._waiter is None:
            return
        if getattr(self._waiter, "is_async", False):
            raise TypeError("these are async task handles: use `async for` over as_completed")
        waiter: SyncWaiter = self._waiter
        remaining = self._by_id()
        deadline = math.inf if self._timeout is None else waiter.now() + self._timeout
        # A waiter that keeps a waiting set is asked, each round, only for
        # what ended since (one listening, each id read once or twice);
        # others are asked for every id still running, round after round.
        opener = getattr(waiter, "open_waiting", None)
        session = None if opener is None else opener(list(remaining))
        try:
            while remaining:
                left = None if deadline == math.inf else max(0.0, deadline - waiter.now())
                if session is None:
                    done = waiter.wait_any(list(remaining), left)
                else:
                    done = session.next(left)
                if not done:
                    raise TimeoutError(
                        f"{len(remaining)} tasks not finished after {self._timeout} s"
                    )
                self.infos.update(done)
                for task_id in [i for i in done if i in remaining]:
                    yield from remaining.pop(task_id)
        finally:
            if session is not None:
                session.close()

    async def __aiter__(self) -> AsyncIterator[H]:
        if self._waiter is None:
            return
        if not getattr(self._waiter, "is_async", False):
            raise TypeError("these are sync task handles: use `for` over as_completed")
        waiter: AsyncWaiter = self._waiter
        remaining = self._by_id()
        deadline = math.inf if self._timeout is None else waiter.now() + self._timeout
        opener = getattr(waiter, "open_waiting", None)  # as in __iter__
        session = None if opener is None else opener(list(remaining))
        try:
            while remaining:
                left = None if deadline == math.inf else max(0.0, deadline - waiter.now())
                if session is None:
                    done = await waiter.wait_any(list(remaining), left)
                else:
                    done = await session.next(left)
                if not done:
                    raise TimeoutError(
                        f"{len(remaining)} tasks not finished after {self._timeout} s"
                    )
                self.infos.update(done)
                for task_id in [i for i in done if i in remaining]:
                    for task in remaining.pop(task_id):
                        yield task
        finally:
            if session is not None:
                # An HTTP client's session closes its stream (``aclose``).
                aclose = getattr(session, "aclose", None)
                if aclose is not None:
                    await aclose()
                else:
                    session.close()


def as_completed(tasks: Iterable[H], *, timeout: float | None = None) -> AsCompleted[H]:
    """Yield each task handle as its task becomes final.

    ``for task in errands.as_completed(tasks)`` for sync handles (``Task``,
    ``HTTPTask``), ``async for`` for async ones.  All handles must come from
    one client or engine.  A task whose id is unknown or expired is yielded
    too (its ``get()`` raises ``TaskNotFound``).  A handle given twice is
    yielded twice.

    Raises:
        TimeoutError: ``timeout`` seconds passed with tasks still running
            (the ones yielded so far stay yielded).
        ValueError: handles of different clients.
        TypeError: something that is not a task handle.
    """
    return AsCompleted(tasks, timeout)
