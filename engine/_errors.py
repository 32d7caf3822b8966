"""The exception tree of errands.

Every error the library raises derives from :class:`ErrandsError`; callers pick
a subclass by what they do about it::

    ErrandsError
    ├── TaskNotFound          unknown, expired or malformed task id (HTTP 404)
    ├── TaskNotReady          the task is not final yet (HTTP 409)
    ├── TaskFailed            the task finished with an error (HTTP 500)
    ├── TaskCancelled         the task was cancelled (HTTP 410)
    ├── CannotCancel          too late to cancel, or not cancellable (HTTP 409)
    ├── InvalidArguments      arguments rejected at submit (HTTP 422)
    ├── InvalidTransition     a state change the state machine forbids
    ├── LimitExceeded         a value past one of the engine's caps (HTTP 400)
    ├── BackendError          storage is unusable (bad URL, corrupt data, ...)
    │   └── EngineUnavailable storage is failing now: retry later (HTTP 503)
    ├── EngineClosed          the engine is not running (HTTP 503)
    ├── RemoteError           an HTTP client got an answer no other error means,
    │                         or could not reach the server
    └── FinalError            raised *by task code*: fail now, never retry

``TimeoutError`` (the builtin) is raised by ``wait(timeout=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = [
    "BackendError",
    "BatchNotFound",
    "CannotCancel",
    "EngineClosed",
    "EngineUnavailable",
    "ErrandsError",
    "FieldError",
    "FinalError",
    "InvalidArguments",
    "InvalidTransition",
    "LimitExceeded",
    "RemoteError",
    "TaskCancelled",
    "TaskFailed",
    "TaskNotFound",
    "TaskNotReady",
]


class ErrandsError(Exception):
    """The root of every error raised by errands."""


class TaskNotFound(ErrandsError, LookupError):
    """No task has this id: it is unknown, expired, or not a well-formed id."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r} (unknown, expired or malformed)")
        self.task_id = task_id


class BatchNotFound(ErrandsError, LookupError):
    """No batch has this id: it is unknown, malformed, or all its tasks expired."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch with id {batch_id!r} (unknown, expired or malformed)")
        self.batch_id = batch_id


class TaskNotReady(ErrandsError):
    """The task has not reached a final state yet."""

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id} is not finished (status: {status})")
        self.task_id = task_id
        self.status = status


class TaskFailed(ErrandsError):
    """The task finished with an error; the message holds the task's error."""

    def __init__(self, task_id: str, error: str) -> None:
        super().__init__(f"task {task_id} failed: {error}")
        self.task_id = task_id
        self.error = error


class TaskCancelled(ErrandsError):
    """The task was cancelled before it finished."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


class CannotCancel(ErrandsError):
    """The task can no longer be cancelled (final, or running and not cancellable)."""

    def __init__(self, task_id: str, status: str, reason: str) -> None:
        super().__init__(f"cannot cancel task {task_id} (status: {status}): {reason}")
        self.task_id = task_id
        self.status = status
        self.reason = reason


@attrs.frozen(kw_only=True)
class FieldError:
    """One bad argument: where it is (``$.items[2].size``) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidArguments(ErrandsError, ValueError):
    """Arguments were rejected at submit; ``errors`` names every bad field."""

    def __init__(self, task_name: str, errors: Sequence[FieldError]) -> None:
        self.task_name = task_name
        self.errors = tuple(errors)
        listed = "; ".join(str(e) for e in self.errors)
        super().__init__(f"invalid arguments for task {task_name!r}: {listed}")


class LimitExceeded(ErrandsError, ValueError):
    """A value is past one of the engine's caps (a delay, a key's length, ...).

    ``limit`` names the option that sets the cap, ``maximum`` its value.
    Nothing was stored.
    """

    def __init__(self, message: str, *, limit: str, maximum: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.maximum = maximum


class InvalidTransition(ErrandsError):
    """A status change that the task state machine does not allow."""


class BackendError(ErrandsError):
    """The storage backend cannot be used: bad URL, unreadable or foreign data."""


class EngineUnavailable(BackendError):
    """The engine cannot take this call now: its storage is failing.

    Nothing was stored.  Try again after ``retry_after`` seconds; the engine
    retries its own work and reports ready again once storage answers.
    """

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosed(ErrandsError, RuntimeError):
    """The engine is not running (not started yet, or shut down)."""


class RemoteError(ErrandsError):
    """An HTTP client could not reach the server, or got an answer that no
    other error stands for (a 400, a 429 "queue full", a 500 of the server).

    ``status_code`` is the HTTP status (None when there was no answer) and
    ``retry_after`` the seconds the server asked to wait, if it did.
    """

    status_code: int | None = None
    retry_after: float | None = None


class FinalError(ErrandsError):
    """Raise from task code to fail the task at once, with no automatic retry."""


# Shown as errands.TaskNotFound (not errands._errors.TaskNotFound) in tracebacks and reprs.
for _cls in (
    ErrandsError,
    BatchNotFound,
    TaskNotFound,
    TaskNotReady,
    TaskFailed,
    TaskCancelled,
    CannotCancel,
    FieldError,
    InvalidArguments,
    InvalidTransition,
    LimitExceeded,
    BackendError,
    EngineUnavailable,
    EngineClosed,
    RemoteError,
    FinalError,
):
    _cls.__module__ = "errands"
del _cls
