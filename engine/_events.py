"""What happens to tasks, told once: counts, timings, log lines and listeners.

Every lifecycle event of a task that an engine brings about goes through its
one :class:`Events` (in the ``Core``): submitted, started, succeeded,
failed, cancelled, retried (failed, to run again), lost (its worker died;
re-queued or failed), handed back (at shutdown), and a batch call's size.
For each it

* counts it per task name, with histograms of the wait (ready to start) and
  run (start to end) seconds and of batch sizes: ``Engine.statistics()``
  returns them frozen (:class:`TaskStats`), and adapters export them;
* logs one line on the ``errands.tasks`` logger, with the task id and name as
  structured fields (``task_id``, ``task_name`` on the record): INFO for
  submitted, started and succeeded, WARNING for retried, lost and handed
  back, ERROR (with the traceback, when there is one) for a final failure;
* tells the listeners registered with :meth:`Events.listen` (a metrics
  exporter, a live dashboard), each a plain callable taking a
  :class:`TaskEvent`, called on the engine's trio thread; a listener that
  raises is logged and dropped, never the engine's problem.
"""

from __future__ import annotations

import bisect
import enum
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = [
    "BATCH_BUCKETS",
    "SECONDS_BUCKETS",
    "EventKind",
    "Events",
    "Histogram",
    "TaskEvent",
    "TaskStats",
]

#: The logger of task lifecycle lines (``errands.engine`` has the engine's own).
log = logging.getLogger("errands.tasks")

#: Upper bounds of the wait and run histograms, in seconds (then +Inf).
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
#: Upper bounds of the batch size histogram, in items (then +Inf).
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0)


class EventKind(enum.StrEnum):
    """What happened to a task."""

    SUBMITTED = "submitted"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRIED = "retried"
    LOST = "lost"
    HANDED_BACK = "handed_back"
    BATCH = "batch"


@attrs.frozen(kw_only=True)
class TaskEvent:
    """One event of one task (for listeners).

    Attributes:
        kind: what happened.
        task_id: the task (the first task of the call, for ``batch``).
        name: the task endpoint.
        attempt: the attempt it concerns (0 for ``submitted``).
        seconds: the wait before ``started``, the run before ``succeeded``,
            ``failed``, ``cancelled`` and ``retried``; else None.
        error: the error text of ``failed``, ``retried`` and ``lost``.
        size: the items of a ``batch`` call.
        batch_id: the batch of a task ``submitted`` in bulk (``submit_many``).
    """

    kind: EventKind
    task_id: str
    name: str
    attempt: int = 0
    seconds: float | None = None
    error: str | None = None
    size: int | None = None
    batch_id: str | None = None


@attrs.frozen(kw_only=True)
class Histogram:
    """A histogram as Prometheus has them: cumulative counts per upper bound."""

    #: ``(upper bound, observations <= it)``, ending with ``(inf, count)``.
    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class _Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def frozen(self) -> Histogram:
        running = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return Histogram(buckets=tuple(buckets), sum=self.sum, count=running)


@attrs.frozen(kw_only=True)
class TaskStats:
    """What one engine did with the tasks of one endpoint since it started."""

    submitted: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    lost: int = 0
    #: Tasks of this endpoint running in this engine now.
    running: int = 0
    wait_seconds: Histogram
    run_seconds: Histogram
    batch_sizes: Histogram


class _Stats:
    __slots__ = (
        "batch",
        "cancelled",
        "failed",
        "lost",
        "retried",
        "run",
        "started",
        "submitted",
        "succeeded",
        "wait",
    )

    def __init__(self) -> None:
        self.submitted = self.started = self.succeeded = self.failed = 0
        self.cancelled = self.retried = self.lost = 0
        self.wait = _Histogram(SECONDS_BUCKETS)
        self.run = _Histogram(SECONDS_BUCKETS)
        self.batch = _Histogram(BATCH_BUCKETS)

    def frozen(self, running: int) -> TaskStats:
        return TaskStats(
            submitted=self.submitted,
            started=self.started,
            succeeded=self.succeeded,
            failed=self.failed,
            cancelled=self.cancelled,
            retried=self.retried,
            lost=self.lost,
            running=running,
            wait_seconds=self.wait.frozen(),
            run_seconds=self.run.frozen(),
            batch_sizes=self.batch.frozen(),
        )


def _fields(task_id: str, name: str, **more: Any) -> dict[str, Any]:
    return {"task_id": task_id, "task_name": name, **more}


def _line(message: str, *args: Any, fields: dict[str, Any]) -> None:
    """An INFO line of :data:`log` (the caller checked that INFO is on),
    the record as ``log.info`` makes it, with the file, line and function
    of the calling frame taken from that frame: ``Logger.findCaller``
    walks the stack to find it, a sixth of what a line cost (a line is
    logged for each submit, start and end of every task)."""
    caller = sys._getframe(1)
    code = caller.f_code
    if logging.getLogRecordFactory() is logging.LogRecord and type(log).makeRecord is _MAKE_RECORD:
        record = _record(code, caller.f_lineno, message, args, fields)
    else:
        record = log.makeRecord(
            log.name,
            logging.INFO,
            code.co_filename,
            caller.f_lineno,
            message,
            args,
            None,
            code.co_name,
            fields,
        )
    log.handle(record)


_MAKE_RECORD = logging.Logger.makeRecord
#: From Python 3.13 a record's time is taken in nanoseconds (``time.time_ns``),
#: and the logging module's start time with it.
_NS_TIMES = isinstance(logging._startTime, int)  # type: ignore[attr-defined]
#: What a task line's record holds that depends on its call site alone (the
#: logger, file, line and function), by site: the fields of a record that the
#: standard factory made there, every other of which :func:`_record` sets anew.
_sites: dict[tuple[object, int], dict[str, Any]] = {}


def _record(
    code: Any, lineno: int, message: str, args: Any, fields: dict[str, Any]
) -> logging.LogRecord:
    """The record that ``log.makeRecord`` makes for an INFO line of ``code``
    at ``lineno`` with the standard factory, field for field: what
    depends on the site alone is copied from the site's first record, the
    rest is set as ``LogRecord.__init__`` sets it.  Making the record with
    its constructor and ``makeRecord``'s loop over the extra fields was 40%
    of a line's cost (``docs/performance.md``)."""
    site = _sites.get((code, lineno))
    if site is None:
        made = log.makeRecord(
            log.name, logging.INFO, code.co_filename, lineno, message, (), None, code.co_name
        )
        site = _sites[(code, lineno)] = dict(vars(made))
    data = site.copy()
    data["msg"] = message
    if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        args = args[0]
    data["args"] = args
    data["levelname"] = logging.getLevelName(logging.INFO)
    if _NS_TIMES:
        now = time.time_ns()
        data["created"] = created = now / 1e9
        msecs = (now % 1_000_000_000) // 1_000_000 + 0.0
        if msecs == 999.0 and int(created) != now // 1_000_000_000:
            msecs = 0.0  # the division rounded up to the next second
        data["msecs"] = msecs
        data["relativeCreated"] = (now - logging._startTime) / 1e6  # type: ignore[attr-defined]
    else:
        created = time.time()
        data["created"] = created
        data["msecs"] = int((created - int(created)) * 1000) + 0.0
        data["relativeCreated"] = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
    if logging.logThreads:
        data["thread"] = threading.get_ident()
        data["threadName"] = threading.current_thread().name
    else:
        data["thread"] = data["threadName"] = None
    if logging.logMultiprocessing:
        data["processName"] = "MainProcess"
        processes = sys.modules.get("multiprocessing")
        if processes is not None:
            try:
                data["processName"] = processes.current_process().name
            except Exception:  # as the constructor: multiprocessing half imported
                pass
    else:
        data["processName"] = None
    data["process"] = os.getpid() if logging.logProcesses else None
    if "taskName" in data:  # Python 3.12 and later
        data["taskName"] = None
        if logging.logAsyncioTasks:  # type: ignore[attr-defined]
            asyncio = sys.modules.get("asyncio")
            if asyncio is not None:
                try:
                    data["taskName"] = asyncio.current_task().get_name()
                except Exception:  # no asyncio loop in this thread
                    pass
    data.update(fields)
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__ = data
    return record


class Events:
    """The engine's one place where task events are counted, logged and told."""

    def __init__(self) -> None:
        self._stats: dict[str, _Stats] = {}
        self._listeners: list[Callable[[TaskEvent], None]] = []

    def _of(self, name: str) -> _Stats:
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = _Stats()
        return stats

    def stats(self, running: Mapping[str, int]) -> Mapping[str, TaskStats]:
        """A frozen copy of the counts, by task name (``running``: the tasks of
        each name running now, which the runner knows)."""
        names = sorted(self._stats.keys() | running.keys())
        return {name: self._of(name).frozen(running.get(name, 0)) for name in names}

    def listen(self, listener: Callable[[TaskEvent], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for every event from now on; returns the
        function that stops it."""
        self._listeners.append(listener)

        def stop() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return stop

    def _tell(self, event: TaskEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logging.getLogger("errands.engine").exception(
                    "an event listener failed and was removed: %r", listener
                )
                self._listeners.remove(listener)

    # ------------------------------------------------------------------ events

    def submitted(self, task_id: str, name: str, count: int = 1) -> None:
        self._of(name).submitted += count
        if log.isEnabledFor(logging.INFO):
            _line("task %s %s submitted", name, task_id, fields=_fields(task_id, name))
        if self._listeners:
            self._tell(TaskEvent(kind=EventKind.SUBMITTED, task_id=task_id, name=name))

    def submitted_together(self, batch_id: str, name: str, task_ids: list[str]) -> None:
        """Tasks accepted by one bulk submit (one log line for them all)."""
        if not task_ids:
            return
        self._of(name).submitted += len(task_ids)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "batch %s: %d tasks of %s submitted (%s ... %s)",
                batch_id,
                len(task_ids),
                name,
                task_ids[0],
                task_ids[-1],
                extra={"task_name": name, "batch_id": batch_id, "count": len(task_ids)},
            )
        if self._listeners:
            for task_id in task_ids:
                self._tell(
                    TaskEvent(
                        kind=EventKind.SUBMITTED, task_id=task_id, name=name, batch_id=batch_id
                    )
                )

    def started(self, task_id: str, name: str, attempt: int, waited: float) -> None:
        stats = self._of(name)
        stats.started += 1
        stats.wait.observe(max(waited, 0.0))
        if log.isEnabledFor(logging.INFO):
            _line(
                "task %s %s started (attempt %d, waited %.3f s)",
                name,
                task_id,
                attempt,
                waited,
                fields=_fields(task_id, name, attempt=attempt),
            )
        if self._listeners:
            self._tell(
                TaskEvent(
                    kind=EventKind.STARTED,
                    task_id=task_id,
                    name=name,
                    attempt=attempt,
                    seconds=waited,
                )
            )

    def ended(
        self,
        kind: EventKind,
        task_id: str,
        name: str,
        attempt: int,
        ran: float | None,
        *,
        error: str | None = None,
        traceback: str | None = None,
        retry_in: float | None = None,
    ) -> None:
        """The end of a run: ``succeeded``, ``failed``, ``cancelled`` or ``retried``."""
        stats = self._of(name)
        if ran is not None:
            stats.run.observe(max(ran, 0.0))
        if kind is EventKind.SUCCEEDED:
            stats.succeeded += 1
            if log.isEnabledFor(logging.INFO):
                fields = _fields(task_id, name, attempt=attempt)
                _line("task %s %s succeeded in %.3f s", name, task_id, ran or 0.0, fields=fields)
            if self._listeners:
                self._tell(
                    TaskEvent(kind=kind, task_id=task_id, name=name, attempt=attempt, seconds=ran)
                )
            return
        fields = _fields(task_id, name, attempt=attempt)
        if kind is EventKind.CANCELLED:
            stats.cancelled += 1
            if log.isEnabledFor(logging.INFO):
                _line("task %s %s cancelled", name, task_id, fields=fields)
        elif kind is EventKind.RETRIED:
            stats.retried += 1
            log.warning(
                "task %s %s failed (attempt %d), retrying in %.1f s: %s",
                name,
                task_id,
                attempt,
                retry_in or 0.0,
                error,
                extra=fields,
            )
        else:
            stats.failed += 1
            if traceback:
                log.error(
                    "task %s %s failed: %s\n%s",
                    name,
                    task_id,
                    error,
                    traceback.rstrip(),
                    extra=fields,
                )
            else:
                log.error("task %s %s failed: %s", name, task_id, error, extra=fields)
        if self._listeners:
            self._tell(
                TaskEvent(
                    kind=kind,
                    task_id=task_id,
                    name=name,
                    attempt=attempt,
                    seconds=ran,
                    error=error,
                )
            )

    def cancelled_waiting(self, task_id: str, name: str) -> None:
        """A task cancelled before it started."""
        self._of(name).cancelled += 1
        if log.isEnabledFor(logging.INFO):
            _line(
                "task %s %s cancelled before it started",
                name,
                task_id,
                fields=_fields(task_id, name),
            )
        if self._listeners:
            self._tell(TaskEvent(kind=EventKind.CANCELLED, task_id=task_id, name=name))

    def lost(self, task_id: str, name: str, attempt: int, *, final: bool) -> None:
        """A task whose worker stopped answering: re-queued, or failed if ``final``."""
        stats = self._of(name)
        stats.lost += 1
        fields = _fields(task_id, name, attempt=attempt)
        if final:
            stats.failed += 1
            log.error(
                "task %s %s: its worker was lost on its last attempt (%d); failed",
                name,
                task_id,
                attempt,
                extra=fields,
            )
        else:
            log.warning(
                "task %s %s: its worker was lost during attempt %d; re-queued",
                name,
                task_id,
                attempt,
                extra=fields,
            )
        if self._listeners:
            self._tell(
                TaskEvent(
                    kind=EventKind.LOST,
                    task_id=task_id,
                    name=name,
                    attempt=attempt,
                    error="WorkerLost",
                )
            )

    def handed_back(self, task_id: str, name: str, attempt: int) -> None:
        log.warning(
            "task %s %s handed back to the queue at shutdown",
            name,
            task_id,
            extra=_fields(task_id, name, attempt=attempt),
        )
        if self._listeners:
            self._tell(
                TaskEvent(kind=EventKind.HANDED_BACK, task_id=task_id, name=name, attempt=attempt)
            )

    def batch(self, task_id: str, name: str, size: int) -> None:
        """A batch call of ``size`` items began (``task_id``: its first task)."""
        self._of(name).batch.observe(size)
        if self._listeners:
            self._tell(TaskEvent(kind=EventKind.BATCH, task_id=task_id, name=name, size=size))
