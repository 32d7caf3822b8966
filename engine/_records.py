"""Pure record transitions: each state change of a task as a new record.

No I/O and no engine state: the runner, the upkeep and the public API each
build the record they store through one of these, and store it with the
store's compare-and-set.  Keeping them here means a move such as "worker
lost" is spelled the same wherever it happens.
"""

from __future__ import annotations

import attrs

from ._model import AttemptError, TaskError, TaskRecord
from ._status import TaskStatus

__all__ = [
    "SHUT_DOWN",
    "WORKER_LOST",
    "cancelled_pending",
    "finished",
    "handed_back",
    "lost",
    "retry_later",
    "started",
]

#: The error of a task whose worker stopped responding.
WORKER_LOST = TaskError(type="WorkerLost", message="the worker running the task stopped responding")


def started(record: TaskRecord, *, token: int, now: float) -> TaskRecord:
    """``pending -> in_progress`` under the claim ``token``; counts an attempt."""
    return record.replace(
        status=TaskStatus.IN_PROGRESS, attempt=record.attempt + 1, started_at=now, token=token
    )


def finished(
    record: TaskRecord,
    *,
    status: TaskStatus,
    now: float,
    error: TaskError | None = None,
    result_type: str | None = None,
    traceback: str | None = None,
) -> TaskRecord:
    """A final record (``success``, ``failure`` or ``cancelled``), kept as long
    as the task keeps tasks that ended that way (:meth:`TaskRecord.ttl_for`)."""
    return record.replace(
        status=status,
        finished_at=now,
        expires_at=now + record.ttl_for(status),
        error=error,
        result_type=result_type,
        traceback=traceback,
    )


def cancelled_pending(record: TaskRecord, *, now: float) -> TaskRecord:
    """``pending -> cancelled``."""
    return attrs.evolve(
        record,
        status=TaskStatus.CANCELLED,
        finished_at=now,
        expires_at=now + record.ttl_for(TaskStatus.CANCELLED),
    )


def _with_history(record: TaskRecord, error: TaskError) -> tuple[AttemptError, ...]:
    entry = AttemptError(attempt=record.attempt, type=error.type, message=error.message)
    return (*record.history, entry)


def retry_later(record: TaskRecord, *, error: TaskError, not_before: float) -> TaskRecord:
    """``in_progress -> pending`` for an automatic retry after ``error`` (kept
    as history: the task's ``error`` is for its final failure only)."""
    return attrs.evolve(
        record,
        status=TaskStatus.PENDING,
        error=None,
        traceback=None,
        history=_with_history(record, error),
        not_before=not_before,
    )


#: The error of a task still running at shutdown on its last attempt.
SHUT_DOWN = TaskError(
    type="WorkerLost",
    message="the engine shut down while the task still ran, on its last attempt",
)


def handed_back(record: TaskRecord, *, counts: bool, now: float) -> TaskRecord:
    """``in_progress -> pending`` at shutdown.

    ``counts`` says whether the attempt counts: it does not when the run was
    stopped cleanly, and does when it may still be running (a sync thread
    that outlived the grace period), so a task that always outlives it
    reaches ``max_attempts`` and then fails instead of coming back forever.
    """
    if not counts:
        return attrs.evolve(
            record, status=TaskStatus.PENDING, attempt=record.attempt - 1, started_at=None
        )
    if record.attempt >= record.max_attempts:
        return finished(record, status=TaskStatus.FAILURE, now=now, error=SHUT_DOWN)
    return attrs.evolve(record, status=TaskStatus.PENDING, started_at=None)


def lost(record: TaskRecord, *, now: float) -> TaskRecord:
    """A task whose worker died: back to ``pending`` while attempts are left,
    else ``failure`` with :data:`WORKER_LOST`."""
    if record.attempt < record.max_attempts:
        return attrs.evolve(
            record,
            status=TaskStatus.PENDING,
            error=None,
            history=_with_history(record, WORKER_LOST),
            not_before=None,
        )
    return finished(record, status=TaskStatus.FAILURE, now=now, error=WORKER_LOST)
