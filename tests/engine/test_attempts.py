"""Per-attempt history: each attempt's start, end, outcome and error, kept
in the record and shown by ``get_info()``."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import trio
import trio.testing

import errands
from errands import AttemptOutcome, StoredTask, TaskError, TaskStatus, _records
from errands._model import TaskRecord, new_task_id
from errands.backends import MemoryBackend
from tests.conftest import EPOCH, trio_wall

svc = errands.Service("attempts")
calls: dict[str, int] = {}


@svc.task(retries=2, retry_delay=2)
async def flaky(key: str, fail_times: int, seconds: float) -> str:
    calls[key] = calls.get(key, 0) + 1
    await trio.sleep(seconds)
    if calls[key] <= fail_times:
        raise ConnectionError(f"attempt {calls[key]} failed")
    return f"ok after {calls[key]}"


@svc.task
async def forever() -> None:
    await trio.sleep_forever()


@svc.task
async def quick() -> str:
    return "done"


def engine(backend: object = None, **options: object) -> errands.open_engine:  # type: ignore[valid-type]
    options.setdefault("clock", trio_wall)
    return errands.open_engine(svc, backend=backend, **options)  # type: ignore[arg-type]


def at(seconds: float) -> dt.datetime:
    """The wall-clock time ``seconds`` after the test's start (see trio_wall)."""
    return dt.datetime.fromtimestamp(EPOCH + seconds, dt.UTC)


async def test_each_attempt_keeps_its_times_and_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls.clear()
    async with engine() as client:
        task = await client.flaky.submit(key="a", fail_times=2, seconds=1)
        assert await task.wait() is TaskStatus.SUCCESS
        info = await task.get_info()
    assert info.attempt == 3 and info.error is None
    first, second, third = info.attempts
    assert [a.attempt for a in info.attempts] == [1, 2, 3]
    assert [a.outcome for a in info.attempts] == [
        AttemptOutcome.FAILURE,
        AttemptOutcome.FAILURE,
        AttemptOutcome.SUCCESS,
    ]
    assert [a.error for a in info.attempts] == [
        TaskError(type="ConnectionError", message="attempt 1 failed"),
        TaskError(type="ConnectionError", message="attempt 2 failed"),
        None,
    ]
    # Each ran one second, then waited out its backoff (2 s, then 4 s, with
    # jitter in [0.5, 1.0]) before the next began: no overlap, in order.
    for a in info.attempts:
        assert a.started_at is not None and a.finished_at is not None
        assert a.finished_at - a.started_at == dt.timedelta(seconds=1)
    assert first.started_at == at(0)
    assert first.finished_at < second.started_at < second.finished_at < third.started_at  # type: ignore[operator]
    assert (
        dt.timedelta(seconds=1) <= second.started_at - first.finished_at <= dt.timedelta(seconds=2)
    )  # type: ignore[operator]
    assert (
        dt.timedelta(seconds=2) <= third.started_at - second.finished_at <= dt.timedelta(seconds=4)
    )  # type: ignore[operator]
    # The task's own times are its last attempt's.
    assert (info.started_at, info.finished_at) == (third.started_at, third.finished_at)
    assert [(h.attempt, h.message) for h in info.history] == [
        (1, "attempt 1 failed"),
        (2, "attempt 2 failed"),
    ]


async def test_a_failure_on_the_last_attempt_is_the_tasks_error_not_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls.clear()
    async with engine() as client:
        task = await client.flaky.submit(key="b", fail_times=5, seconds=0)
        assert await task.wait() is TaskStatus.FAILURE
        info = await task.get_info()
    assert [a.outcome for a in info.attempts] == [AttemptOutcome.FAILURE] * 3
    assert info.attempts[-1].error == info.error
    assert [h.attempt for h in info.history] == [1, 2]


async def test_the_running_attempt_is_open_and_a_cancelled_one_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with engine() as client:
        task = await client.forever.submit()
        await trio.sleep(5)
        info = await task.get_info()
        assert info.status is TaskStatus.IN_PROGRESS
        [running] = info.attempts
        assert (running.attempt, running.outcome) == (1, AttemptOutcome.RUNNING)
        assert (running.started_at, running.finished_at, running.error) == (at(0), None, None)
        await trio.sleep(5)
        assert await task.cancel() is TaskStatus.CANCELLED
        info = await task.get_info()
    [cancelled] = info.attempts
    assert cancelled.outcome is AttemptOutcome.CANCELLED and cancelled.error is None
    assert (cancelled.started_at, cancelled.finished_at) == (at(0), at(10))
    assert cancelled.finished_at == info.finished_at


async def test_a_task_cancelled_while_pending_has_no_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with engine(workers=0) as client:
        task = await client.quick.submit()
        assert await task.cancel() is TaskStatus.CANCELLED
        info = await task.get_info()
    assert info.attempt == 0 and info.attempts == ()


async def _plant_dead_claim(backend: MemoryBackend, *, attempts_before: int = 0) -> str:
    """A task started by a worker that then died (its claim is never renewed)."""
    now = trio_wall()
    record = TaskRecord(
        id=new_task_id(),
        name="quick",
        args={},
        status=TaskStatus.PENDING,
        created_at=now,
        attempt=attempts_before,
    )
    assert await backend.store.create(StoredTask.from_record(record))
    await backend.queue.put(record.id, name="quick")
    [claim] = await backend.queue.claim(
        owner="dead-worker", quotas={"quick": 1}, limit=1, now=now, lease_until=now + 30
    )
    started = _records.started(record, token=claim.token, now=now)
    assert await backend.store.transition(
        StoredTask.from_record(started), expect=TaskStatus.PENDING
    )
    return record.id


async def test_a_lost_worker_ends_its_attempt_when_the_loss_is_noticed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    task_id = await _plant_dead_claim(backend)
    async with engine(backend, lease=30) as client:
        task = client.get_task(task_id)
        assert await task.wait() is TaskStatus.SUCCESS
        info = await task.get_info()
    lost, done = info.attempts
    assert (lost.attempt, lost.outcome) == (1, AttemptOutcome.LOST)
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert lost.started_at == at(0)
    # Nobody saw the worker stop: the end is when its lease was found expired.
    assert lost.finished_at is not None and at(30) <= lost.finished_at <= at(41)
    assert (done.attempt, done.outcome, done.error) == (2, AttemptOutcome.SUCCESS, None)
    assert lost.finished_at <= done.started_at  # type: ignore[operator]
    assert [h.type for h in info.history] == ["WorkerLost"]


async def test_a_worker_lost_on_the_last_attempt_fails_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    task_id = await _plant_dead_claim(backend, attempts_before=2)
    async with engine(backend, lease=30) as client:
        task = client.get_task(task_id)
        assert await task.wait() is TaskStatus.FAILURE
        info = await task.get_info()
    [lost] = info.attempts
    assert (lost.attempt, lost.outcome) == (3, AttemptOutcome.LOST)
    assert lost.error == info.error and lost.finished_at == info.finished_at
    assert info.history == ()


async def test_a_run_stopped_cleanly_at_shutdown_leaves_no_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    async with engine(backend, grace=0) as client:
        task_id = (await client.forever.submit()).id
        await trio.sleep(1)
    stored = await backend.store.get(task_id)
    assert stored is not None
    assert (stored.record.attempt, stored.record.attempts) == (0, ())


def _running(attempt: int, *, max_attempts: int = 3) -> TaskRecord:
    pending = TaskRecord(
        id="x" * 22,
        name="t",
        args={},
        status=TaskStatus.PENDING,
        created_at=0,
        attempt=attempt - 1,
        max_attempts=max_attempts,
    )
    return _records.started(pending, token=attempt, now=10.0)


def test_a_run_handed_back_that_counts_ends_lost() -> None:
    again = _records.handed_back(_running(1), counts=True, now=12.0)
    assert again.status is TaskStatus.PENDING and again.attempt == 1
    [entry] = again.attempts
    assert (entry.started_at, entry.finished_at, entry.outcome) == (10.0, 12.0, AttemptOutcome.LOST)
    assert entry.error is not None and "shut down" in entry.error.message
    failed = _records.handed_back(_running(3), counts=True, now=12.0)
    assert failed.status is TaskStatus.FAILURE
    assert failed.attempts[-1].outcome is AttemptOutcome.LOST
    assert failed.attempts[-1].error == failed.error


def test_a_run_handed_back_that_does_not_count_is_dropped() -> None:
    again = _records.handed_back(_running(1), counts=False, now=12.0)
    assert (again.attempt, again.attempts) == (0, ())


def test_a_run_started_by_an_older_version_is_closed_with_the_records_start() -> None:
    # Such a run opened no entry: its end adds one.
    running = TaskRecord(
        id="x" * 22,
        name="t",
        args={},
        status=TaskStatus.IN_PROGRESS,
        created_at=0,
        started_at=5.0,
        attempt=1,
    )
    done = _records.finished(running, status=TaskStatus.SUCCESS, now=7.0)
    [entry] = done.attempts
    assert (entry.attempt, entry.started_at, entry.finished_at) == (1, 5.0, 7.0)
    assert entry.outcome is AttemptOutcome.SUCCESS


@pytest.mark.parametrize("status", ["pending", "failure"])
def test_a_record_written_with_the_old_history_still_reads(status: str) -> None:
    # What the previous version stored: "history", the errors of earlier
    # attempts, without times.
    data = {
        "id": "x" * 22,
        "name": "t",
        "args": {"a": 1},
        "status": status,
        "created_at": 1.0,
        "started_at": 2.0,
        "finished_at": 3.0 if status == "failure" else None,
        "attempt": 3 if status == "failure" else 2,
        "error": {"type": "ValueError", "message": "final"} if status == "failure" else None,
        "history": [
            {"attempt": 1, "type": "WorkerLost", "message": "the worker stopped responding"},
            {"attempt": 2, "type": "ValueError", "message": "kaput"},
        ],
    }
    stored = StoredTask(
        id=data["id"],  # type: ignore[arg-type]
        name="t",
        status=TaskStatus(status),
        token=0,
        created_at=1.0,
        expires_at=None,
        data=json.dumps(data).encode(),
    )
    record = stored.record
    assert [(a.attempt, a.outcome, a.started_at, a.finished_at) for a in record.attempts] == [
        (1, AttemptOutcome.LOST, None, None),
        (2, AttemptOutcome.FAILURE, None, None),
    ]
    assert record.attempts[1].error == TaskError(type="ValueError", message="kaput")
    info = errands.TaskInfo.from_record(record)
    assert [str(h) for h in info.history] == [
        "attempt 1: WorkerLost: the worker stopped responding",
        "attempt 2: ValueError: kaput",
    ]
    # Written back, it has the new shape and reads the same.
    again = StoredTask.from_record(record).data
    assert b'"history"' not in again
    assert (
        StoredTask(
            id=record.id,
            name="t",
            status=record.status,
            token=0,
            created_at=1.0,
            expires_at=None,
            data=again,
        ).record
        == record
    )
