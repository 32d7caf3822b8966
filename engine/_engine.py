"""The engine: one trio nursery that dispatches, runs, renews and sweeps.

Workers inside the engine (never "tasks": that word is the user's):

* the **dispatcher** claims ready task ids when a concurrency slot is free;
  a submit, a freed slot or a released claim wakes it at once;
* a **runner** per claimed task: start (compare-and-set pending ->
  in_progress), call the function, store the outcome;
* the **lease keeper** renews the claims of running tasks and recovers the
  claims of dead workers;
* the **sweeper** purges expired records and re-queues pending records whose
  queue entry was lost in a crash;
* the **progress writer** stores coalesced progress reports;
* the **watcher** listens for work put by other engines on the same backend.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import outcome
import trio

from . import _watching
from ._backend import Backend, Renewal
from ._client import AsyncClient
from ._context import TaskContext, _reset_current, _set_current
from ._convert import Payload, decode_result, encode_result
from ._define import Service, TaskDefinition, as_service
from ._errors import (
    BackendError,
    CannotCancel,
    EngineClosed,
    FieldError,
    FinalError,
    InvalidArguments,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskNotReady,
)
from ._model import (
    Claim,
    StoredTask,
    TaskError,
    TaskInfo,
    TaskRecord,
    is_task_id,
    new_task_id,
    task_id_from_bytes,
)
from ._registry import resolve_backend
from ._status import TaskStatus
from ._threads import WorkerThreads

__all__ = ["Engine", "EngineStatistics", "open_engine"]

log = logging.getLogger("errands.engine")

PENDING = TaskStatus.PENDING
IN_PROGRESS = TaskStatus.IN_PROGRESS
SUCCESS = TaskStatus.SUCCESS
FAILURE = TaskStatus.FAILURE
CANCELLED = TaskStatus.CANCELLED

#: Seconds that cleanup writes (final state, releasing a claim) may take once
#: the engine is being cancelled; they run shielded for at most this long.
CLEANUP_SECONDS = 5.0
#: Seconds ``cancel()`` waits for a running task to stop before answering.
CANCEL_GRACE = 5.0
#: The longest automatic-retry backoff, in seconds.
MAX_BACKOFF = 3600.0


class _Stop(enum.Enum):
    CANCEL = "cancel"  # a user asked
    SHUTDOWN = "shutdown"  # the engine is closing: hand the task back
    LOST = "lost"  # our claim was taken over: write nothing


@attrs.define(eq=False)
class _Run:
    """A task this engine is running (mutable internal state)."""

    claim: Claim
    record: TaskRecord  # the in_progress record as stored
    definition: TaskDefinition
    context: TaskContext
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    stop: _Stop | None = None
    timed_out: bool = False
    progress_dirty: bool = False

    def request_stop(self, reason: _Stop) -> None:
        if self.stop is None or reason is not _Stop.CANCEL:
            self.stop = reason
        self.context._cancel()
        if self.definition.is_async or reason is not _Stop.CANCEL:
            self.scope.cancel()


@attrs.frozen(kw_only=True)
class EngineStatistics:
    """A snapshot of an engine (``client.statistics()``)."""

    running: int
    workers: int
    submitted: int
    finished: int


def idempotent_id(service: str, name: str, key: str) -> str:
    """The task id an idempotency key stands for (128 bits of its hash)."""
    digest = hashlib.sha256(f"{service}\0{name}\0{key}".encode()).digest()[:16]
    return task_id_from_bytes(digest)


def _canonical(arguments: Mapping[str, Any]) -> str:
    """Arguments as JSON text that equal arguments share (key order, tuples)."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"))


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_task_id()[:8]}"


class Engine:
    """Runs the tasks of one service on one backend.  Use :func:`open_engine`.

    All public methods are async, must be called from the engine's trio run,
    and raise :class:`~errands.EngineClosed` once it has stopped.
    """

    def __init__(
        self,
        service: Service,
        *,
        backend: Backend,
        ttl: float,
        lease: float,
        workers: int,
        grace: float,
        max_attempts: int,
        sweep_interval: float,
        clock: Callable[[], float],
    ) -> None:
        if ttl <= 0 or lease <= 0 or workers < 0 or grace < 0 or max_attempts < 1:
            raise ValueError("ttl, lease and max_attempts must be positive; workers and grace >= 0")
        self.service = service
        self.backend = backend
        self.ttl = float(ttl)
        self.lease = float(lease)
        self.workers = workers
        self.grace = float(grace)
        self.max_attempts = max_attempts
        self.sweep_interval = float(sweep_interval)
        self.clock = clock
        self.owner = _default_owner()
        self.definitions: Mapping[str, TaskDefinition] = service.tasks
        self._queue = backend.queue
        self._store = backend.store
        self._bound: dict[str, Callable[..., Any]] = {}
        self._running: dict[str, _Run] = {}
        self._active = dict.fromkeys(self.definitions, 0)
        self._limits = {
            name: min(d.options.concurrency or workers, workers)
            for name, d in self.definitions.items()
        }
        self._total = 0
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._watching = _watching.Watchers()
        self._dirty: dict[str, _Run] = {}
        self._progress_wake = trio.Event()
        self._runners: trio.Nursery | None = None
        self._threads: WorkerThreads | None = None
        self._open = False
        self._accepting = False
        self._stopping = False
        self._hard_stop = False
        self._stop_requested = trio.Event()
        self._submitted = 0
        self._finished = 0

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`aclose` is called; ``task_status.started()`` when ready.

        On close: stop claiming, let running tasks finish for ``grace``
        seconds, then stop the rest and hand them back to the queue.
        """
        await self.backend.open()
        try:
            self._threads = WorkerThreads()
            instance = None
            if self.service.cls is not None:
                instance = await trio.to_thread.run_sync(self.service.instantiate)
            self._bound = self.service.bind(instance)
            async with trio.open_nursery() as keeper_nursery:
                keeper_nursery.start_soon(self._stop_if_cancelled)
                keeper_nursery.start_soon(self._keep_leases)
                keeper_nursery.start_soon(self._write_progress)
                async with trio.open_nursery() as runners:
                    # Runners are shielded as a group (not one scope per task): an
                    # outside cancel reaches them only as a stop request, so their
                    # final writes need no shield of their own.
                    runners.cancel_scope.shield = True
                    self._runners = runners
                    try:
                        await self._serve_system(task_status)
                    finally:
                        self._stopping = True
                        for run in list(self._running.values()):
                            run.request_stop(_Stop.SHUTDOWN)
                        runners.cancel_scope.deadline = trio.current_time() + CLEANUP_SECONDS
                keeper_nursery.cancel_scope.cancel()
        finally:
            self._open = self._accepting = False
            if self._threads is not None:
                self._threads.close()
            self._watching.wake_all()
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_SECONDS):
                await self.backend.aclose()
            log.info("engine %s stopped", self.owner)

    async def _serve_system(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as system:
            if self.backend.poll_interval is not None:
                await self._reconcile()
                await self._recover_expired(self.clock())
            system.start_soon(self._dispatch)
            system.start_soon(self._sweep)
            system.start_soon(self._watch_backend)
            self._open = self._accepting = True
            log.info("engine %s started for service %s", self.owner, self.service.name)
            task_status.started()
            await self._stop_requested.wait()
            self._accepting = False
            system.cancel_scope.cancel()
        await self._drain()

    async def _drain(self) -> None:
        if (self._running or self._total) and not self._hard_stop:
            self._idle = trio.Event()
            with trio.move_on_after(self.grace):
                await self._idle.wait()
        self._stopping = True
        for run in list(self._running.values()):
            run.request_stop(_Stop.SHUTDOWN)

    def stop(self) -> None:
        """Ask the engine to stop (``serve`` drains); never blocks, never fails."""
        self._accepting = False
        self._stop_requested.set()

    async def aclose(self) -> None:
        """Ask the engine to stop; returns at once (``serve`` does the draining)."""
        self.stop()
        await trio.lowlevel.checkpoint()

    async def _stop_if_cancelled(self) -> None:
        # The runners nursery is shielded, so cancelling the caller's block
        # cannot reach serve() there; this unshielded sleeper can, and turns
        # the cancellation into a stop without the grace period.
        try:
            await trio.sleep_forever()
        finally:
            if not self._stop_requested.is_set():
                self._hard_stop = True
                self.stop()

    def statistics(self) -> EngineStatistics:
        """Counts for this engine since it started."""
        return EngineStatistics(
            running=len(self._running),
            workers=self.workers,
            submitted=self._submitted,
            finished=self._finished,
        )

    def _check_open(self) -> None:
        if not self._open:
            raise EngineClosed("the engine is not running")

    # ------------------------------------------------------------------ records

    async def _load(self, task_id: str, *, schedule: bool = True) -> TaskRecord:
        if schedule:
            await trio.lowlevel.checkpoint()  # backends need not schedule; public calls do
        self._check_open()
        if not is_task_id(task_id):
            raise TaskNotFound(task_id)
        stored = await self._store.get(task_id)
        if stored is None:
            raise TaskNotFound(task_id)
        record = stored.record
        if record.is_expired(self.clock()):
            raise TaskNotFound(task_id)
        return record

    def definition(self, name: str) -> TaskDefinition:
        try:
            return self.definitions[name]
        except KeyError:
            raise LookupError(f"service {self.service.name!r} has no task {name!r}") from None

    # ------------------------------------------------------------------ public operations

    async def submit(
        self,
        name: str,
        arguments: Mapping[str, Any],
        *,
        from_json: bool = False,
        priority: int = 0,
        delay: float | None = None,
        retry_of: str | None = None,
        idempotency_key: str | None = None,
    ) -> TaskRecord:
        """Validate and enqueue; returns the new ``pending`` record.

        A submit either returns the task's record or created nothing (a
        cancelled caller gets the record if the write had begun).  With an
        ``idempotency_key``, a repeat of the same key on the same endpoint
        returns the first task (while it is kept) instead of a new one.

        Raises:
            InvalidArguments: naming every bad field (nothing is stored).
            EngineClosed: the engine is stopping or stopped.
        """
        await trio.lowlevel.checkpoint()
        if not self._accepting:
            raise EngineClosed("the engine is not accepting tasks")
        definition = self.definition(name)
        args = definition.validate(arguments, from_json=from_json)
        now = self.clock()
        not_before = now + delay if delay else None
        options = definition.options
        task_id = (
            new_task_id()
            if idempotency_key is None
            else idempotent_id(self.service.name, name, idempotency_key)
        )
        record = TaskRecord(
            id=task_id,
            name=name,
            args=args,
            status=PENDING,
            created_at=now,
            max_attempts=max(options.max_attempts or self.max_attempts, options.retries + 1),
            retries=options.retries,
            priority=priority,
            not_before=not_before,
            retry_of=retry_of,
            ttl=options.ttl or self.ttl,
        )
        stored = StoredTask.from_record(record)
        while not await self.backend.enqueue(
            stored, priority=priority, not_before=not_before or 0.0
        ):
            if idempotency_key is None:
                raise BackendError(f"task id {task_id} already exists")  # 2**-128 odds
            existing = await self._store.get(task_id)
            if existing is not None and not existing.record.is_expired(self.clock()):
                if _canonical(existing.record.args) != _canonical(args):
                    message = (
                        f"the idempotency key {idempotency_key!r} was used for task "
                        f"{task_id} with other arguments"
                    )
                    raise InvalidArguments(name, [FieldError(path="$", message=message)])
                log.debug("idempotent repeat of %s %s", name, task_id)
                return existing.record
            if existing is not None:
                await self._store.delete(task_id)  # expired: the key may be used anew
        self._submitted += 1
        self._wake.set()
        log.debug("submitted %s %s", name, record.id)
        return record

    async def info(self, task_id: str) -> TaskInfo:
        """The task's :class:`TaskInfo` (with its queue position while pending)."""
        record = await self._load(task_id)
        position = None
        if record.status is PENDING:
            position = await self._queue.position(task_id)
        return TaskInfo.from_record(record, position=position)

    async def status(self, task_id: str) -> TaskStatus:
        return (await self._load(task_id)).status

    async def result(self, task_id: str) -> Any:
        """The result decoded to the task's return type.

        Raises:
            TaskNotReady, TaskFailed, TaskCancelled, TaskNotFound.
        """
        record = await self._load(task_id)
        if record.status is SUCCESS:
            payload = await self._store.get_result(task_id)
            if payload is None:
                raise TaskNotFound(task_id)  # purged between the two reads
            definition = self.definitions.get(record.name)
            return decode_result(payload, definition.return_type if definition else None)
        if record.status is FAILURE:
            raise TaskFailed(task_id, str(record.error))
        if record.status is CANCELLED:
            raise TaskCancelled(task_id)
        raise TaskNotReady(task_id, record.status.value)

    async def result_payload(self, task_id: str) -> tuple[TaskRecord, Payload | None]:
        """The record and, for a successful task, its stored result (for adapters)."""
        record = await self._load(task_id)
        payload = await self._store.get_result(task_id) if record.status is SUCCESS else None
        return record, payload

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        """Block until the task is final; return its status.

        Event-driven for changes made by this engine; for backends shared with
        other processes, it also looks every ``poll_interval`` seconds.

        Raises:
            TimeoutError: not final after ``timeout`` seconds.
            TaskNotFound: unknown or expired id.
        """
        return await _watching.wait_final(self, task_id, timeout)

    async def next_change(
        self, task_id: str, since: TaskInfo | None = None, timeout: float | None = None
    ) -> TaskInfo:
        """Block until the task's status, progress, message or attempt differs
        from ``since``; return its info then (with its queue position while
        pending).  With ``since=None``, return the current info at once.

        Event-driven for changes this engine makes (started, progress stored,
        retried, final); for backends shared with other processes it also
        looks every ``poll_interval`` seconds.  A final task does not change
        again: called with a final ``since``, it waits for the timeout (or
        the task's expiry, seen when polling).  Nothing is left registered
        when it returns, raises or is cancelled.

        Args:
            task_id: the task to follow.
            since: the info the caller has already seen (as returned before).
            timeout: seconds to wait at most (None: no limit).

        Returns:
            The task's :class:`TaskInfo`, different from ``since``.

        Raises:
            TimeoutError: no change within ``timeout`` seconds.
            TaskNotFound: unknown, expired or malformed id (also when it
                expires while waited on).
            EngineClosed: the engine stopped meanwhile.
        """
        return await _watching.next_change(self, task_id, since, timeout)

    async def wait_any(
        self, task_ids: Collection[str], timeout: float | None = None
    ) -> dict[str, TaskInfo | None]:
        """Block until at least one of ``task_ids`` is final, unknown or expired.

        Returns then a dict of *every* such id at that moment: a final task's
        id maps to its :class:`TaskInfo`, an unknown, expired or malformed id
        to None.  Ids not in the dict are not final yet.  When ``timeout``
        seconds pass first, returns ``{}`` (no ``TimeoutError``: this is a
        building block; ``timeout=0`` looks once).  Repeated ids count once.

        Event-driven for changes this engine makes (one event shared by all
        the ids); for backends shared with other processes it also reads the
        ids every ``poll_interval`` seconds.  It always passes a schedule
        point, and leaves nothing registered when it returns, raises or is
        cancelled.

        Args:
            task_ids: the tasks to wait on.
            timeout: seconds to wait at most (None: no limit).

        Raises:
            EngineClosed: the engine stopped (or stops while waiting).
        """
        return await _watching.wait_any(self, task_ids, timeout)

    async def cancel(self, task_id: str) -> TaskStatus:
        """Cancel the task; return its status once it is final (or after a short grace).

        Raises:
            CannotCancel: it already finished, or it is a running sync task
                that was not declared ``cancellable=True``.
            TaskNotFound: unknown or expired id.
        """
        record = await self._load(task_id)
        if record.status is PENDING:
            now = self.clock()
            cancelled = attrs.evolve(
                record, status=CANCELLED, finished_at=now, expires_at=now + record.ttl
            )
            if await self._store.transition(StoredTask.from_record(cancelled), expect=PENDING):
                await self._queue.remove(task_id)
                self._finished += 1
                self._watching.notify(task_id, cancelled)
                log.debug("cancelled pending %s", task_id)
                return CANCELLED
            record = await self._load(task_id)  # it moved on meanwhile
        if record.status is IN_PROGRESS:
            definition = self.definitions.get(record.name)
            if definition is None or not definition.cancellable:
                raise CannotCancel(
                    task_id,
                    record.status.value,
                    "it is running and its sync function cannot be interrupted "
                    "(declare it with @errands.task(cancellable=True) and poll "
                    "errands.current_task().cancelled)",
                )
            run = self._running.get(task_id)
            if run is not None and run.claim.token == record.token:
                run.request_stop(_Stop.CANCEL)
            else:
                await self._queue.request_cancel(task_id)
            try:
                return await self.wait(task_id, timeout=CANCEL_GRACE)
            except TimeoutError:
                return (await self._load(task_id)).status
        if record.status is CANCELLED:
            return CANCELLED
        raise CannotCancel(task_id, record.status.value, "it has already finished")

    async def retry(self, task_id: str) -> TaskRecord:
        """Submit a new task with the same arguments; ``retry_of`` points back.

        Raises:
            TaskNotReady: the task is not final yet.
        """
        record = await self._load(task_id)
        if not record.status.is_final:
            raise TaskNotReady(task_id, record.status.value)
        return await self.submit(
            record.name, record.args, from_json=True, priority=record.priority, retry_of=record.id
        )

    async def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskInfo]:
        """Tasks, newest first (expired ones left out)."""
        now = self.clock()
        rows = await self._store.list(name=name, status=status, limit=limit, offset=offset)
        return [TaskInfo.from_record(r.record) for r in rows if not r.record.is_expired(now)]

    # ------------------------------------------------------------------ dispatcher

    async def _dispatch(self) -> None:
        assert self._runners is not None
        while True:
            self._wake = trio.Event()
            free = self.workers - self._total
            quotas = {n: self._limits[n] - self._active[n] for n in self._limits}
            quotas = {n: q for n, q in quotas.items() if q > 0}
            timeout = math.inf
            if free > 0 and quotas:
                now = self.clock()
                claims = await self._queue.claim(
                    owner=self.owner,
                    quotas=quotas,
                    limit=free,
                    now=now,
                    lease_until=now + self.lease,
                )
                for claim in claims:
                    self._active[claim.name] += 1
                    quotas[claim.name] -= 1
                    self._total += 1
                    self._runners.start_soon(self._run, claim)
                if len(claims) >= free:
                    continue  # there may be more ready
                # Fewer than asked: nothing more is ready for the names with room
                # left, so ask only when the next delayed one is due.
                names = [n for n, q in quotas.items() if q > 0]
                due = await self._queue.next_due(names) if names else None
                if due is not None:
                    timeout = max(due - now, 0.001)
            if self._wake.is_set():
                continue
            if timeout == math.inf:
                await self._wake.wait()
            else:
                with trio.move_on_after(timeout):
                    await self._wake.wait()

    async def _watch_backend(self) -> None:
        while True:
            await self._queue.wait_for_work()
            self._wake.set()

    def _slot_freed(self, name: str) -> None:
        self._active[name] -= 1
        self._total -= 1
        self._wake.set()
        if not self._total:
            self._idle.set()

    # ------------------------------------------------------------------ runner

    async def _run(self, claim: Claim) -> None:
        try:
            await self._run_claimed(claim)
        finally:
            self._slot_freed(claim.name)

    async def _run_claimed(self, claim: Claim) -> None:
        task_id = claim.task_id
        stored = await self._store.get(task_id)
        record = stored.record if stored is not None else None
        if record is None or record.status is not PENDING:
            await self._queue.ack(task_id, claim.token)  # stale entry: cancelled, gone or duplicate
            return
        now = self.clock()
        running = record.replace(
            status=IN_PROGRESS,
            attempt=record.attempt + 1,
            started_at=now,
            token=claim.token,
        )
        if not await self._store.transition(StoredTask.from_record(running), expect=PENDING):
            await self._queue.ack(task_id, claim.token)
            return
        self._watching.touch(task_id)
        definition = self.definitions.get(record.name)
        if definition is None:
            unknown = TaskError(
                type="UnknownTask", message=f"this engine's service has no task {record.name!r}"
            )
            await self._finish(claim, running, None, error=unknown)
            return
        if self._stopping:
            await self._hand_back(claim, running)
            return
        context = TaskContext(
            id=task_id, name=record.name, attempt=running.attempt, on_report=self._on_report
        )
        run = _Run(claim=claim, record=running, definition=definition, context=context)
        self._running[task_id] = run
        try:
            result = await self._call(run)
        finally:
            del self._running[task_id]
            self._dirty.pop(task_id, None)
        await self._settle(run, result)

    async def _call(self, run: _Run) -> outcome.Outcome[Any] | None:
        """Call the task function; None when the call was stopped (see ``run.stop``)."""
        definition = run.definition
        try:
            kwargs = definition.structure(run.record.args)
        except InvalidArguments as exc:
            return outcome.Error(FinalError(str(exc)))
        func = self._bound[definition.name]
        timeout = definition.options.timeout
        token = _set_current(run.context)
        try:
            if definition.is_async:
                with run.scope:
                    if timeout is not None:
                        run.scope.deadline = trio.current_time() + timeout
                    try:
                        return outcome.Value(await func(**kwargs))
                    except Exception as exc:
                        return outcome.Error(exc)
                if run.stop is None:
                    run.timed_out = True
                return None
            return await self._call_in_thread(run, func, kwargs, timeout)
        finally:
            _reset_current(token)

    async def _call_in_thread(
        self, run: _Run, func: Callable[..., Any], kwargs: dict[str, Any], timeout: float | None
    ) -> outcome.Outcome[Any] | None:
        done = trio.Event()
        box: list[outcome.Outcome[Any]] = []
        context = contextvars.copy_context()

        def work() -> Any:
            return context.run(func, **kwargs)

        def deliver(result: outcome.Outcome[Any]) -> None:
            box.append(result)  # on the trio thread
            done.set()

        assert self._threads is not None
        self._threads.submit(work, deliver)
        with run.scope:
            if timeout is not None:
                run.scope.deadline = trio.current_time() + timeout
            await done.wait()
        if not done.is_set() and run.stop is None:
            # Timed out: a thread cannot be interrupted.  Ask it to stop, and
            # keep its slot until it really returns, so limits stay true.
            run.timed_out = True
            run.context._cancel()
            run.scope = trio.CancelScope()
            with run.scope:
                await done.wait()
        if not done.is_set():
            return None  # shutdown or lost claim: the thread is left to finish alone
        return box[0]

    async def _settle(self, run: _Run, result: outcome.Outcome[Any] | None) -> None:
        claim, record = run.claim, run.record
        context = run.context
        if context.progress != record.progress or context.message != record.message:
            record = record.replace(progress=context.progress, message=context.message)
        if run.stop is _Stop.LOST:
            log.warning(
                "task %s: claim taken over by another worker; result dropped", claim.task_id
            )
            return
        if run.stop is _Stop.SHUTDOWN:
            await self._hand_back(claim, record)
            return
        async_value = run.definition.is_async and isinstance(result, outcome.Value)
        if run.stop is _Stop.CANCEL and not async_value:
            # A sync function that returns after a cancel request stopped early.
            await self._finish(claim, record, None, cancelled=True)
            return
        if run.timed_out:
            timeout = run.definition.options.timeout
            error = TaskError(
                type="TimeoutError", message=f"the task took longer than its timeout of {timeout} s"
            )
            await self._fail_or_retry(run, record, error, final=False)
            return
        if isinstance(result, outcome.Error):
            exc = result.error
            error = TaskError(type=type(exc).__name__, message=str(exc))
            final = isinstance(exc, FinalError)
            if not final:
                log.debug("task %s raised %r", claim.task_id, exc)
            await self._fail_or_retry(run, record, error, final=final)
            return
        assert isinstance(result, outcome.Value)
        try:
            payload = encode_result(result.value, run.definition.return_type)
        except (TypeError, ValueError, RecursionError) as exc:
            error = TaskError(type="InvalidResult", message=f"the result cannot be stored: {exc}")
            await self._fail_or_retry(run, record, error, final=True)
            return
        await self._finish(claim, record, payload)

    async def _finish(
        self,
        claim: Claim,
        record: TaskRecord,
        payload: Payload | None,
        *,
        error: TaskError | None = None,
        cancelled: bool = False,
    ) -> None:
        now = self.clock()
        status = CANCELLED if cancelled else (FAILURE if error is not None else SUCCESS)
        done = record.replace(
            status=status,
            finished_at=now,
            expires_at=now + record.ttl,
            error=error,
            result_type=payload.media_type if payload is not None else None,
        )
        stored = StoredTask.from_record(done)
        stored_final = await self._store.transition(
            stored, expect=IN_PROGRESS, token=claim.token, result=payload
        )
        if stored_final:
            self._finished += 1
            if status is FAILURE:
                log.error("task %s %s failed: %s", record.name, record.id, error)
            else:
                log.debug("task %s %s", record.id, status.value)
        else:
            log.warning(
                "task %s: its record moved on; outcome %s not stored", record.id, status.value
            )
        await self._queue.ack(claim.task_id, claim.token)
        self._watching.notify(claim.task_id, done if stored_final else None)

    async def _fail_or_retry(
        self, run: _Run, record: TaskRecord, error: TaskError, *, final: bool
    ) -> None:
        claim = run.claim
        if final or record.attempt > record.retries:
            await self._finish(claim, record, None, error=error)
            return
        base = run.definition.options.retry_delay
        delay = min(base * 2 ** (record.attempt - 1), MAX_BACKOFF) * random.uniform(0.5, 1.0)
        not_before = self.clock() + delay
        again = attrs.evolve(record, status=PENDING, error=error, not_before=not_before)
        if await self._store.transition(
            StoredTask.from_record(again), expect=IN_PROGRESS, token=claim.token
        ):
            await self._queue.release(claim.task_id, claim.token, not_before=not_before)
            log.warning(
                "task %s %s failed (attempt %d), retrying in %.1f s: %s",
                record.name,
                record.id,
                record.attempt,
                delay,
                error,
            )
            self._wake.set()
        self._watching.notify(claim.task_id)

    async def _hand_back(self, claim: Claim, record: TaskRecord) -> None:
        """Shutdown: the task goes back to pending; this attempt does not count."""
        again = attrs.evolve(record, status=PENDING, attempt=record.attempt - 1, started_at=None)
        if await self._store.transition(
            StoredTask.from_record(again), expect=IN_PROGRESS, token=claim.token
        ):
            await self._queue.release(claim.task_id, claim.token)
            log.info("task %s handed back to the queue at shutdown", record.id)
        self._watching.notify(claim.task_id)

    # ------------------------------------------------------------------ progress

    def _on_report(self, context: TaskContext) -> None:
        run = self._running.get(context.id)
        if run is not None and run.context is context:
            self._dirty[context.id] = run
            self._progress_wake.set()

    async def _write_progress(self) -> None:
        while True:
            await self._progress_wake.wait()
            self._progress_wake = trio.Event()
            dirty, self._dirty = self._dirty, {}
            for run in dirty.values():
                updated = attrs.evolve(
                    run.record, progress=run.context.progress, message=run.context.message
                )
                if await self._store.transition(
                    StoredTask.from_record(updated), expect=IN_PROGRESS, token=run.claim.token
                ):
                    run.record = updated
                    self._watching.touch(run.claim.task_id)

    # ------------------------------------------------------------------ leases

    async def _keep_leases(self) -> None:
        interval = self.lease / 3
        if self.backend.poll_interval is not None:
            interval = min(interval, self.backend.poll_interval)
        while True:
            await trio.sleep(interval)
            now = self.clock()
            runs = list(self._running.values())
            if runs:
                answers = await self._queue.renew_many(
                    [(r.claim.task_id, r.claim.token) for r in runs], lease_until=now + self.lease
                )
                for run, answer in zip(runs, answers, strict=True):
                    if self._running.get(run.claim.task_id) is not run:
                        continue  # it finished (and was acked) while we renewed
                    if answer is Renewal.LOST:
                        log.warning("task %s: lease lost", run.claim.task_id)
                        run.request_stop(_Stop.LOST)
                    elif answer is Renewal.CANCEL_REQUESTED and run.definition.cancellable:
                        run.request_stop(_Stop.CANCEL)
            await self._recover_expired(now)

    async def _recover_expired(self, now: float) -> None:
        """Re-queue (or fail) the tasks of claims whose lease ran out."""
        for claim in await self._queue.expired(now):
            run = self._running.get(claim.task_id)
            if run is not None and run.claim.token == claim.token:
                continue  # ours and alive; the next renewal extends it
            stored = await self._store.get(claim.task_id)
            record = stored.record if stored is not None else None
            if record is None or record.status.is_final:
                await self._queue.ack(claim.task_id, claim.token)
                continue
            if record.status is PENDING:
                # Claimed, but its worker died before starting it (or between
                # handing it back and releasing the claim).
                await self._queue.release(
                    claim.task_id, claim.token, not_before=record.not_before or 0.0
                )
                self._wake.set()
                continue
            if record.token != claim.token:
                await self._queue.ack(claim.task_id, claim.token)  # a newer claim runs it
                continue
            lost = TaskError(
                type="WorkerLost", message="the worker running the task stopped responding"
            )
            if record.attempt < record.max_attempts:
                again = attrs.evolve(record, status=PENDING, error=lost, not_before=None)
                if await self._store.transition(
                    StoredTask.from_record(again), expect=IN_PROGRESS, token=claim.token
                ):
                    await self._queue.release(claim.task_id, claim.token)
                    log.warning(
                        "task %s: worker lost, re-queued after attempt %d",
                        record.id,
                        record.attempt,
                    )
                    self._wake.set()
            else:
                failed = attrs.evolve(
                    record, status=FAILURE, error=lost, finished_at=now, expires_at=now + record.ttl
                )
                if await self._store.transition(
                    StoredTask.from_record(failed), expect=IN_PROGRESS, token=claim.token
                ):
                    await self._queue.ack(claim.task_id, claim.token)
                    self._finished += 1
                    log.error("task %s: worker lost on its last attempt; failed", record.id)
            self._watching.notify(claim.task_id)

    # ------------------------------------------------------------------ sweeping

    async def _sweep(self) -> None:
        while True:
            await trio.sleep(self.sweep_interval)
            purged = await self._store.purge_expired(self.clock())
            if purged:
                log.debug("purged %d expired tasks", purged)
            if self.backend.poll_interval is not None:
                await self._reconcile()

    async def _reconcile(self) -> None:
        """Put back pending records whose queue entry was lost between two writes."""
        offset = 0
        while True:
            rows = await self._store.list(status=PENDING, limit=500, offset=offset)
            for stored in rows:
                if not await self._queue.contains(stored.id):
                    record = stored.record
                    await self._queue.put(
                        record.id,
                        name=record.name,
                        priority=record.priority,
                        not_before=record.not_before or 0.0,
                    )
                    log.warning("task %s had no queue entry; re-queued", record.id)
                    self._wake.set()
            if len(rows) < 500:
                return
            offset += 500


@asynccontextmanager
async def open_engine(
    service: object,
    *,
    backend: Backend | str | None = None,
    ttl: float = 86400.0,
    lease: float = 30.0,
    workers: int = 32,
    grace: float = 10.0,
    max_attempts: int = 3,
    sweep_interval: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Any]:
    """Run an engine for ``service`` and yield its async client.

    Args:
        service: an ``errands.Service`` or an ``@errands.service`` class.
        backend: a backend object, a URL (``memory://``, ``diskcache:///path``),
            or None for a new memory backend.
        ttl: seconds a finished task is kept (tasks may set their own).
        lease: seconds a claim lives without renewal; a dead worker's task is
            re-run after this.
        workers: how many tasks may run at once, all endpoints together; 0
            makes a pure client that submits and reads but runs nothing (for a
            shared backend whose tasks other processes run).
        grace: seconds running tasks get to finish when the block exits;
            then async ones are cancelled and all unfinished ones go back to
            the queue.
        max_attempts: runs allowed for a task whose worker keeps dying.
        sweep_interval: seconds between purges of expired tasks.
        clock: the wall clock for stored timestamps (seconds since the epoch).
    """
    engine = Engine(
        as_service(service),
        backend=resolve_backend(backend),
        ttl=ttl,
        lease=lease,
        workers=workers,
        grace=grace,
        max_attempts=max_attempts,
        sweep_interval=sweep_interval,
        clock=clock,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.serve)
            try:
                yield AsyncClient(engine)
            finally:
                engine.stop()  # not aclose(): it must happen even when we are cancelled
    except BaseExceptionGroup as group:
        # One error (from the caller's block, or from starting the engine)
        # comes out as itself, so ``except KeyError:`` around the block works.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            error = group.exceptions[0]
            raise error from error.__cause__
        raise
