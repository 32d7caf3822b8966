"""Pure record transitions: each state change of a task as a new record.

No I/O and no engine state: the runner, the upkeep and the public API each
build the record they store through one of these, and store it with the
store's compare-and-set.  Keeping them here means a move such as "worker
lost" is spelled the same wherever it happens.

Each attempt is an entry of ``TaskRecord.attempts``: :func:`started` opens
one, and every move out of ``in_progress`` closes it with its end time and
outcome (or, for a run handed back at shutdown that does not count, drops
it with the attempt).
"""

from __future__ import annotations

import attrs

from ._model import AttemptOutcome, AttemptRecord, TaskError, TaskRecord
from ._status import TaskStatus

__all__ = [
    "SHUT_DOWN",
    "SHUT_DOWN_RUNNING",
    "WORKER_LOST",
    "cancelled_pending",
    "finished",
    "handed_back",
    "lost",
    "retry_later",
    "started",
    "unreadable",
]

#: The error of a task whose worker stopped responding.
WORKER_LOST = TaskError(type="WorkerLost", message="the worker running the task stopped responding")


_OUTCOMES = {
    TaskStatus.SUCCESS: AttemptOutcome.SUCCESS,
    TaskStatus.FAILURE: AttemptOutcome.FAILURE,
    TaskStatus.CANCELLED: AttemptOutcome.CANCELLED,
}


def unreadable(task_id: str, name: str, created_at: float) -> TaskRecord:
    """A ``pending`` record standing for one whose stored bytes do not
    decode: what the store's columns still tell (its arguments are lost);
    the runner fails it at once.  One attempt only: started, it replaces
    the stored record, so an engine that dies before failing it leaves the
    placeholder to recovery, which then fails it (its attempt lost) instead
    of running it as the task, without its arguments or options."""
    return TaskRecord(
        id=task_id,
        name=name,
        args={},
        status=TaskStatus.PENDING,
        created_at=created_at,
        max_attempts=1,
    )


def started(record: TaskRecord, *, token: int, now: float) -> TaskRecord:
    """``pending -> in_progress`` under the claim ``token``; counts an attempt
    and opens its entry."""
    attempt = record.attempt + 1
    entry = AttemptRecord(attempt=attempt, started_at=now)
    return record.replace(
        status=TaskStatus.IN_PROGRESS,
        attempt=attempt,
        started_at=now,
        token=token,
        attempts=(*record.attempts, entry),
    )


def _closed(
    record: TaskRecord, *, now: float, outcome: AttemptOutcome, error: TaskError | None
) -> tuple[AttemptRecord, ...]:
    """``record.attempts`` with the running attempt closed (a no-op unless
    the task is ``in_progress``)."""
    attempts = record.attempts
    if record.status is not TaskStatus.IN_PROGRESS:
        return attempts
    last = attempts[-1] if attempts else None
    if last is not None and last.attempt == record.attempt and last.finished_at is None:
        attempts, started_at = attempts[:-1], last.started_at
    else:
        started_at = record.started_at  # started by a version that opened no entry
    entry = AttemptRecord(
        attempt=record.attempt,
        started_at=started_at,
        finished_at=now,
        outcome=outcome,
        error=error,
    )
    return (*attempts, entry)


def finished(
    record: TaskRecord,
    *,
    status: TaskStatus,
    now: float,
    error: TaskError | None = None,
    result_type: str | None = None,
    traceback: str | None = None,
    outcome: AttemptOutcome | None = None,
) -> TaskRecord:
    """A final record (``success``, ``failure`` or ``cancelled``), kept as long
    as the task keeps tasks that ended that way (:meth:`TaskRecord.ttl_for`).

    ``outcome`` is how the running attempt ended, when not the status's own
    (a task failed because its worker was lost: ``lost``).
    """
    return record.replace(
        status=status,
        finished_at=now,
        expires_at=now + record.ttl_for(status),
        error=error,
        result_type=result_type,
        traceback=traceback,
        attempts=_closed(record, now=now, outcome=outcome or _OUTCOMES[status], error=error),
    )


def cancelled_pending(record: TaskRecord, *, now: float) -> TaskRecord:
    """``pending -> cancelled``."""
    return attrs.evolve(
        record,
        status=TaskStatus.CANCELLED,
        finished_at=now,
        expires_at=now + record.ttl_for(TaskStatus.CANCELLED),
    )


def retry_later(
    record: TaskRecord, *, error: TaskError, now: float, not_before: float
) -> TaskRecord:
    """``in_progress -> pending`` for an automatic retry after ``error`` (kept
    in the attempt's entry: the task's ``error`` is for its final failure only)."""
    return attrs.evolve(
        record,
        status=TaskStatus.PENDING,
        error=None,
        traceback=None,
        attempts=_closed(record, now=now, outcome=AttemptOutcome.FAILURE, error=error),
        not_before=not_before,
    )


#: The error of a task still running at shutdown on its last attempt.
SHUT_DOWN = TaskError(
    type="WorkerLost",
    message="the engine shut down while the task still ran, on its last attempt",
)
#: The error of an attempt still running at shutdown, when attempts are left.
SHUT_DOWN_RUNNING = TaskError(
    type="WorkerLost", message="the engine shut down while the task still ran"
)


def handed_back(record: TaskRecord, *, counts: bool, now: float) -> TaskRecord:
    """``in_progress -> pending`` at shutdown.

    ``counts`` says whether the attempt counts: it does not when the run was
    stopped cleanly, and does when it may still be running (a sync thread
    that outlived the grace period), so a task that always outlives it
    reaches ``max_attempts`` and then fails instead of coming back forever.
    An attempt that does not count leaves no entry; one that counts ends
    ``lost``.
    """
    if not counts:
        attempts = record.attempts
        if attempts and attempts[-1].attempt == record.attempt:
            attempts = attempts[:-1]
        return attrs.evolve(
            record,
            status=TaskStatus.PENDING,
            attempt=record.attempt - 1,
            started_at=None,
            attempts=attempts,
        )
    if record.attempt >= record.max_attempts:
        return finished(
            record,
            status=TaskStatus.FAILURE,
            now=now,
            error=SHUT_DOWN,
            outcome=AttemptOutcome.LOST,
        )
    return attrs.evolve(
        record,
        status=TaskStatus.PENDING,
        started_at=None,
        attempts=_closed(record, now=now, outcome=AttemptOutcome.LOST, error=SHUT_DOWN_RUNNING),
    )


def lost(record: TaskRecord, *, now: float) -> TaskRecord:
    """A task whose worker died: back to ``pending`` while attempts are left,
    else ``failure`` with :data:`WORKER_LOST`.  Either way the attempt ends
    ``lost`` at ``now``, when the loss was noticed."""
    if record.attempt < record.max_attempts:
        return attrs.evolve(
            record,
            status=TaskStatus.PENDING,
            error=None,
            attempts=_closed(record, now=now, outcome=AttemptOutcome.LOST, error=WORKER_LOST),
            not_before=None,
        )
    return finished(
        record, status=TaskStatus.FAILURE, now=now, error=WORKER_LOST, outcome=AttemptOutcome.LOST
    )
