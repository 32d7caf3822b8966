"""Task events: counted per endpoint (statistics), logged with the task's id
and name as fields, and told to listeners."""

from __future__ import annotations

import linecache
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

import errands
from errands import EventKind, TaskStatus, _events
from tests.conftest import trio_wall

svc = errands.Service("events")


@svc.task(retries=1, retry_delay=2)
async def work(seconds: float, fail: int = 0) -> str:
    await trio.sleep(seconds)
    if errands.current_task().attempt <= fail:
        raise RuntimeError(f"attempt {errands.current_task().attempt} fails")
    return "ok"


@svc.task(batchable=True, max_batch_size=4, max_latency_ms=100)
async def embed(items: list[int]) -> list[int]:
    return items


async def test_statistics_count_each_endpoint_with_timings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with errands.open_engine(svc, clock=trio_wall, workers=1) as client:
        first = await client.work.submit(seconds=3)
        second = await client.work.submit(seconds=1)  # waits 3 s for the one slot
        flaky = await client.work.submit(seconds=1, fail=1)  # fails once, retried
        doomed = await client.work.submit(seconds=0.5, fail=2)  # fails twice: failure
        for task in (first, second, flaky, doomed):
            await task.wait()
        waiting = await client.work.options(delay=60).submit(seconds=1)
        assert await waiting.cancel() is TaskStatus.CANCELLED
        batch = await client.embed.submit_many({"items": [i]} for i in range(6))
        await batch.wait()
        stats = client.statistics().tasks
    work = stats["work"]
    assert (work.submitted, work.started, work.succeeded, work.failed) == (5, 6, 2 + 1, 1)
    assert (work.retried, work.cancelled, work.lost, work.running) == (2, 1, 0, 0)
    runs = work.run_seconds
    assert runs.count == 6 and runs.sum == pytest.approx(3 + 1 + 1 + 1 + 0.5 + 0.5)
    assert dict(runs.buckets)[1.0] == 5 and dict(runs.buckets)[5.0] == 6
    waits = work.wait_seconds
    assert waits.count == 6
    assert dict(waits.buckets)[0.001] >= 1  # the first started at once
    assert waits.sum >= 3  # the second waited for the first
    embed = stats["embed"]
    assert (embed.submitted, embed.started, embed.succeeded) == (6, 6, 6)
    assert embed.batch_sizes.count == 2 and embed.batch_sizes.sum == 6


async def test_listeners_hear_every_event_and_logs_carry_the_task(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[tuple[EventKind, str]] = []
    caplog.set_level(logging.INFO, logger="errands.tasks")
    async with errands.open_engine(svc, clock=trio_wall) as client:
        stop = client.engine.listen(lambda event: heard.append((event.kind, event.task_id)))
        task = await client.work.submit(seconds=1, fail=1)
        await task.wait()
        stop()
        await (await client.work.submit(seconds=1)).wait()
    kinds = [kind for kind, task_id in heard if task_id == task.id]
    assert kinds == [
        EventKind.SUBMITTED,
        EventKind.STARTED,
        EventKind.RETRIED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]
    assert len(heard) == 5  # nothing after stop()
    mine = [r for r in caplog.records if getattr(r, "task_id", None) == task.id]
    assert [r.levelname for r in mine] == ["INFO", "INFO", "WARNING", "INFO", "INFO"]
    assert all(r.name == "errands.tasks" and r.task_name == "work" for r in mine)
    assert "retrying in" in mine[2].getMessage()


async def test_task_lines_name_their_caller_without_a_stack_walk(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The INFO line of each submit, start and success: the file, line and
    # function are where the engine logs it, as log.info gives them, but
    # taken from the calling frame (Logger.findCaller's walk was a sixth
    # of a line's cost: docs/performance.md).
    walks: list[str] = []
    monkeypatch.setattr(
        logging.getLogger("errands.tasks"),
        "findCaller",
        lambda *args, **kwargs: walks.append("walk") or ("(unknown file)", 0, "?", None),
    )
    caplog.set_level(logging.INFO, logger="errands.tasks")
    async with errands.open_engine(svc, clock=trio_wall) as client:
        task = await client.work.submit(seconds=1)
        await task.wait()
        running = await client.work.submit(seconds=5)
        await trio.sleep(1)
        await running.cancel()
        await running.wait()
    mine = [r for r in caplog.records if getattr(r, "task_id", None) == task.id]
    assert [r.funcName for r in mine] == ["submitted", "started", "ended"]
    assert walks == []
    for record in mine:
        assert record.module == "_events" and record.pathname.endswith("_events.py")
        assert "_line(" in linecache.getline(record.pathname, record.lineno)
        assert record.levelno == logging.INFO and record.task_name == "work"
    cancelled = [r for r in caplog.records if getattr(r, "task_id", None) == running.id]
    assert cancelled[-1].getMessage().endswith("cancelled") and cancelled[-1].funcName == "ended"


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[_Kept]:
    """The records of errands.tasks at INFO, kept as they come."""
    logger = logging.getLogger("errands.tasks")
    handler, level = _Kept(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _a_task_line(*args: Any) -> None:
    # One call site for the quick record and the standard one.
    _events._line("task " + "%s " * len(args), *args, fields={"task_id": "abc"})


def _standard_factory_made(kept: _Kept, *args: Any) -> logging.LogRecord:
    """The record of _a_task_line made by the standard factory itself."""
    standard = logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *a, **k: logging.LogRecord(*a, **k))
    try:
        _a_task_line(*args)
    finally:
        logging.setLogRecordFactory(standard)
    return kept.records.pop()


@pytest.mark.parametrize("now", [1_700_000_000.0, 1_700_000_000.9995, 1_764_600_000.123456])
def test_task_line_records_are_the_standard_factorys_field_for_field(
    kept: _Kept, monkeypatch: pytest.MonkeyPatch, now: float
) -> None:
    # Task lines are made without LogRecord's constructor (a site's fixed
    # fields are copied, docs/performance.md): each record must hold what
    # the constructor would have put there, first at a site and after.
    monkeypatch.setattr(time, "time", lambda: now)
    monkeypatch.setattr(time, "time_ns", lambda: int(now * 1e9))
    for args in [("work", "abc"), ("work", "abc"), (1, 2.5, None), ({"a": 1},), ()]:
        _a_task_line(*args)
        quick = kept.records.pop()
        assert vars(quick) == vars(_standard_factory_made(kept, *args))
        assert type(quick) is logging.LogRecord and quick.task_id == "abc"  # type: ignore[attr-defined]
    renamed: list[logging.LogRecord] = []

    def elsewhere() -> None:
        threading.current_thread().name = "renamed"
        _a_task_line()
        renamed.append(kept.records.pop())
        renamed.append(_standard_factory_made(kept))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert vars(renamed[0]) == vars(renamed[1]) and renamed[0].threadName == "renamed"
    # INFO renamed after the site's first line (undone by monkeypatch).
    monkeypatch.setitem(logging._levelToName, logging.INFO, "NOTE")  # type: ignore[attr-defined]
    _a_task_line()
    assert vars(kept.records.pop()) == vars(_standard_factory_made(kept))
    assert logging.getLevelName(logging.INFO) == "NOTE"
    monkeypatch.setattr(logging, "logThreads", False)
    monkeypatch.setattr(logging, "logProcesses", False)
    monkeypatch.setattr(logging, "logMultiprocessing", False)
    _a_task_line()
    assert vars(kept.records.pop()) == vars(_standard_factory_made(kept))


def test_task_lines_do_not_construct_records_after_a_sites_first(
    kept: _Kept, monkeypatch: pytest.MonkeyPatch
) -> None:
    _a_task_line()
    made: list[object] = []
    constructor = logging.LogRecord.__init__

    def counted(self: logging.LogRecord, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        constructor(self, *args, **kwargs)

    monkeypatch.setattr(logging.LogRecord, "__init__", counted)
    for _ in range(3):
        _a_task_line()
    assert made == [] and len(kept.records) == 4


def test_a_record_factory_of_ones_own_makes_every_task_line(
    kept: _Kept, monkeypatch: pytest.MonkeyPatch
) -> None:
    standard = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = standard(*args, **kwargs)
        record.request = "r-1"
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", tagged)
    assert logging.getLogRecordFactory() is tagged
    _a_task_line()
    _a_task_line()
    assert [r.request for r in kept.records] == ["r-1", "r-1"]  # type: ignore[attr-defined]


async def test_a_final_failure_is_an_error_line_with_its_traceback(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with errands.open_engine(svc, clock=trio_wall) as client:
        task = await client.work.submit(seconds=0, fail=2)
        await task.wait()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].task_id == task.id
    assert "Traceback" in errors[0].getMessage() and "attempt 2 fails" in errors[0].getMessage()


async def test_a_listener_that_raises_is_dropped_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: errands.TaskEvent) -> None:
        raise ValueError("listener bug")

    async with errands.open_engine(svc, clock=trio_wall) as client:
        client.engine.listen(broken)
        first = await client.work.submit(seconds=0)
        second = await client.work.submit(seconds=0)
        assert await first.wait() is TaskStatus.SUCCESS
        assert await second.wait() is TaskStatus.SUCCESS
    assert sum("listener failed" in r.getMessage() for r in caplog.records) == 1


async def test_tasks_submitted_in_bulk_are_told_with_their_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    heard: list[errands.TaskEvent] = []
    async with errands.open_engine(svc, clock=trio_wall) as client:
        client.engine.listen(heard.append)
        alone = await client.work.submit(seconds=0)
        batch = await client.work.submit_many({"seconds": 0} for _ in range(3))
        await batch.wait()
        await alone.wait()
    submitted = {e.task_id: e.batch_id for e in heard if e.kind is EventKind.SUBMITTED}
    assert submitted == {alone.id: None, **{task.id: batch.id for task in batch.tasks}}
