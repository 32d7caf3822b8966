"""``errands.current_task()``: what running task code can see and report."""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable

import trio

from ._errors import ErrandsError, TaskCancelled

__all__ = ["TaskContext", "current_task"]

_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("errands_current_task")


class TaskContext:
    """The running task, as its own code sees it.

    Safe to use from the trio thread (async tasks) and from the worker thread
    of a sync task.

    Attributes:
        id: the task id.
        name: the task endpoint's name.
        attempt: 1 for the first run, 2 for the first retry, ...
    """

    def __init__(
        self,
        *,
        id: str,
        name: str,
        attempt: int,
        on_report: Callable[[TaskContext], None],
        max_message_length: int = 4096,
        loop: tuple[int, trio.lowlevel.TrioToken] | None = None,
    ) -> None:
        self.id = id
        self._max_message = max_message_length
        self.name = name
        self.attempt = attempt
        self.progress: float | None = None
        self.message: str | None = None
        self._cancelled = False
        self._on_report = on_report
        # The trio thread it reports to (``loop``: its ident and token, when
        # the caller has them at hand; by default the current ones).
        if loop is None:
            loop = (threading.get_ident(), trio.lowlevel.current_trio_token())
        self._loop_thread, self._token = loop

    @property
    def cancelled(self) -> bool:
        """True once the task was asked to stop (cancel, timeout or shutdown).

        Sync tasks declared ``cancellable=True`` poll this and return early.
        """
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~errands.TaskCancelled` if :attr:`cancelled` is set."""
        if self._cancelled:
            raise TaskCancelled(self.id)

    def report(self, progress: float | None = None, message: str | None = None) -> None:
        """Record progress (0..1) and/or a message; readers see it shortly after.

        Does not block; reports are coalesced, the last one wins, and they stay
        visible after the task ends.

        Raises:
            ValueError: progress outside 0..1, or a message longer than the
                engine's ``max_message_length``.
        """
        if progress is not None:
            if isinstance(progress, bool) or not isinstance(progress, int | float):
                raise TypeError("progress must be a number between 0 and 1")
            if math.isnan(progress) or not 0.0 <= progress <= 1.0:
                raise ValueError(f"progress must be between 0 and 1, got {progress!r}")
            self.progress = float(progress)
        if message is not None:
            text = str(message)
            if len(text) > self._max_message:
                raise ValueError(
                    f"the progress message is {len(text)} characters long; the limit is "
                    f"{self._max_message} (max_message_length)"
                )
            self.message = text
        if threading.get_ident() == self._loop_thread:
            self._on_report(self)
        else:
            try:
                self._token.run_sync_soon(self._on_report, self)
            except trio.RunFinishedError:
                pass  # the engine is gone; the final state was already written

    def _cancel(self) -> None:
        self._cancelled = True

    def __repr__(self) -> str:
        return f"<TaskContext {self.name} {self.id} attempt={self.attempt}>"


def current_task() -> TaskContext:
    """The task whose code is running now (in its worker thread or trio task).

    Raises:
        ErrandsError: when called outside task code.
    """
    try:
        return _current.get()
    except LookupError:
        raise ErrandsError("errands.current_task() was called outside a running task") from None


def _set_current(context: TaskContext) -> contextvars.Token[TaskContext]:
    return _current.set(context)


def _reset_current(token: contextvars.Token[TaskContext]) -> None:
    _current.reset(token)
