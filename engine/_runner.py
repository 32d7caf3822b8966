"""The runner: starts a claimed task, calls its function, stores the outcome.

One :meth:`Runner.run` per claim, started by the dispatcher in the engine's
shielded runners nursery.  It moves the record ``pending -> in_progress``
(fenced by the claim's token), calls the function (async on the loop, sync
in a worker thread), and settles: ``success``, ``failure``, an automatic
retry, ``cancelled``, or a hand-back at shutdown.  It also owns the progress
writer, which stores coalesced ``current_task().report()`` calls.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import enum
import inspect
import logging
import random
import threading
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import outcome
import trio

from . import _records
from ._context import TaskContext, _reset_current, _set_current
from ._convert import Payload, encode_result, pixel_limit, type_name
from ._core import Core
from ._define import TaskDefinition
from ._errors import BackendError, FieldError, FinalError, InvalidArguments
from ._events import EventKind
from ._model import Claim, StoredTask, TaskError, TaskRecord
from ._status import TaskStatus
from ._threads import WorkerThreads

__all__ = ["Runner", "Stop"]

T = TypeVar("T")

log = logging.getLogger("errands.engine")

PENDING = TaskStatus.PENDING
IN_PROGRESS = TaskStatus.IN_PROGRESS
SUCCESS = TaskStatus.SUCCESS
FAILURE = TaskStatus.FAILURE
CANCELLED = TaskStatus.CANCELLED

#: The event each final status of a run is told as.
_ENDED = {
    SUCCESS: EventKind.SUCCEEDED,
    FAILURE: EventKind.FAILED,
    CANCELLED: EventKind.CANCELLED,
}

#: The longest automatic-retry backoff, in seconds.
MAX_BACKOFF = 3600.0


class Stop(enum.Enum):
    """Why a run was asked to stop."""

    CANCEL = "cancel"  # a user asked
    SHUTDOWN = "shutdown"  # the engine is closing: hand the task back
    LOST = "lost"  # our claim was taken over: write nothing


@attrs.define(eq=False)
class Run:
    """A task this engine is running (mutable internal state)."""

    claim: Claim
    record: TaskRecord  # the in_progress record as stored
    definition: TaskDefinition
    context: TaskContext
    stop: Stop | None = None
    #: The call of the task function this run is part of (set before it starts).
    call: Call | None = None

    def request_stop(self, reason: Stop) -> None:
        if self.stop is None or reason is not Stop.CANCEL:
            self.stop = reason
        self.context._cancel()
        if self.call is not None:
            self.call.member_stopped()


@attrs.define(eq=False)
class Call:
    """One call of a task function: one task's run, or the runs of a batch.

    The call stops only once every run in it was asked to stop; a run
    stopped alone (a batch member cancelled) just drops its share.
    """

    definition: TaskDefinition
    runs: list[Run]
    #: What ``errands.current_task()`` returns inside the call.
    context: TaskContext
    #: The cancel scope the call runs in, made as it is entered
    #: (:meth:`enter_scope`): a sync call without a timeout has none.
    scope: trio.CancelScope | None = None
    #: Whether the call as a whole was stopped (its scope, even one made
    #: later, is cancelled).
    cancelled: bool = False
    #: Called instead of cancelling a scope when a sync call without a
    #: timeout waits for its thread without one.
    wake: Callable[[], None] | None = None
    timed_out: bool = False
    #: A sync function whose thread had not returned when the call ended.
    thread_left: bool = False

    @property
    def stopped(self) -> bool:
        """Whether every run in the call was asked to stop."""
        return all(run.stop is not None for run in self.runs)

    def enter_scope(self) -> trio.CancelScope:
        """A new cancel scope for the call to run in (cancelled already if the call was)."""
        scope = self.scope = trio.CancelScope()
        if self.cancelled:
            scope.cancel()
        return scope

    def member_stopped(self) -> None:
        if not self.stopped:
            return
        self.context._cancel()
        if self.definition.is_async or any(r.stop is not Stop.CANCEL for r in self.runs):
            self.cancelled = True
            if self.scope is not None:
                self.scope.cancel()
            if self.wake is not None:
                self.wake()


def _is_engine_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is (or carries) trio's cancellation, which must propagate."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[0] is not None
    return False


def _text(exc: BaseException) -> str:
    """``str(exc)``, or its ``repr``, or a placeholder: never raises."""
    for render in (str, repr):
        try:
            return render(exc)
        except BaseException:  # an error's __str__ may raise anything
            continue
    return f"<unprintable {type(exc).__name__}>"


def _traceback_text(exc: BaseException) -> str | None:
    """The formatted traceback of a task's error; None if it cannot be formatted."""
    try:
        return "".join(traceback.format_exception(exc))
    except BaseException:  # an error's own methods may raise anything
        return None


def task_error(exc: BaseException) -> TaskError:
    """What a task's exception is recorded as (type name and message).

    A group's message names the errors inside it, which is what a reader
    wants to know.
    """
    message = _text(exc)
    if isinstance(exc, BaseExceptionGroup):
        inner = "; ".join(str(task_error(e)) for e in exc.exceptions)
        message = f"{message}: {inner}"
    return TaskError(type=type(exc).__name__, message=message)


class InvalidResult(FinalError):
    """A batch call's result that cannot be split among its tasks."""


def _split(
    result: outcome.Outcome[Any] | None, sizes: list[int]
) -> list[outcome.Outcome[Any] | None]:
    """Each task's share of a batch call's outcome, for tasks of ``sizes`` items."""
    if not isinstance(result, outcome.Value):
        return [result] * len(sizes)  # an error (or a stop) is every task's
    value = result.value
    total = sum(sizes)
    if not isinstance(value, list | tuple):
        error = InvalidResult(
            f"a batchable task must return a list (one result per item), got {type(value).__name__}"
        )
        return [outcome.Error(error)] * len(sizes)
    if len(value) != total:
        error = InvalidResult(
            f"the batch call returned {len(value)} results for {total} items "
            f"(of {len(sizes)} tasks)"
        )
        return [outcome.Error(error)] * len(sizes)
    shares: list[outcome.Outcome[Any] | None] = []
    start = 0
    for size in sizes:
        shares.append(outcome.Value(list(value[start : start + size])))
        start += size
    return shares


def _reported(run: Run) -> TaskRecord:
    """The run's record with its last reported progress and message."""
    record, context = run.record, run.context
    if context.progress != record.progress or context.message != record.message:
        return record.replace(progress=context.progress, message=context.message)
    return record


class Runner:
    """Runs claimed tasks for one engine (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.running: dict[str, Run] = {}
        #: Tasks whose ends :meth:`_settle` is storing (their calls ended).
        self.settling: set[str] = set()
        #: Those of them whose end was handed to storage as waited for
        #: (``Backend.finish``'s ``waited``): not held back, so a waiter that
        #: parks on one has nothing to expedite.  Added where an end is handed
        #: over (:meth:`_store_end`, :meth:`_settle_soon`), dropped once it is
        #: stored (:meth:`_finish`, the answer of :meth:`_settle_soon`).
        self.waited_ends: set[str] = set()
        self.bound: dict[str, Callable[..., Any]] = {}
        self.threads: WorkerThreads | None = None
        self._dirty: dict[str, Run] = {}
        #: The reports the progress writer is storing in its current round.
        self._writing: dict[str, Run] = {}
        #: Claims of batch members not started yet, by task id: the lease
        #: keeper renews them with the runs' claims.
        self.held: dict[str, Claim] = {}
        self._progress_wake = trio.Event()
        #: Runs called without a task of their own (:meth:`call_in_thread`)
        #: whose call ended, waiting for the settler, with what frees their slot.
        self._to_settle: collections.deque[
            tuple[Run, outcome.Outcome[Any] | None, Callable[[str], None]]
        ] = collections.deque()
        self._settler_busy = False
        self._spawn: Callable[..., None] | None = None
        #: Per task name, whether its runs take :meth:`call_in_thread`.
        self._threaded: dict[str, bool] = {}
        #: The engine's trio thread (ident, token), for its tasks' contexts.
        self._loop: tuple[int, trio.lowlevel.TrioToken] | None = None
        #: Whether the backend's ``finish`` takes ``waited`` (one written
        #: before it existed does not: it is then not passed).
        self._finish_takes_waited = _takes_keyword(core.backend.finish, "waited")
        #: ``Backend.finish_now`` where the backend finishes at once.
        backend = core.backend
        self._finish_now = (
            backend.finish_now if _overrides(backend, "finishes_now", "finish_now") else None
        )
        #: ``Backend.finish_soon`` where the backend begins ends so.
        self._finish_soon = (
            backend.finish_soon if _overrides(backend, "finishes_soon", "finish_soon") else None
        )
        #: Ends begun with ``finish_soon`` whose answer has not come yet, and
        #: what :meth:`ends_stored` waits on.
        self._ends_begun = 0
        self._ends_stored: trio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self, bound: dict[str, Callable[..., Any]], spawn: Callable[..., None]) -> None:
        """Start the worker threads (in the engine's trio run) with the bound
        functions; ``spawn(fn, *args)`` starts a task in the runners' nursery."""
        self.bound = bound
        self.threads = WorkerThreads()
        self._loop = (threading.get_ident(), trio.lowlevel.current_trio_token())
        self._spawn = spawn

    def burst(self) -> contextlib.AbstractContextManager[None]:
        """Runs started inside (a dispatch round's) start their worker
        threads' jobs together when it ends (``WorkerThreads.burst``), on a
        backend whose ends share commits: there ends that come back
        together are written together.  On a volatile backend an end is
        written at once, and a thread that starts on the first jobs while
        the round goes on is a head start (measured on the thread path:
        8% and 15% slower in a burst in two of three alternating pairs,
        2% faster in the third)."""
        if self.threads is None or self.core.backend.volatile:
            return contextlib.nullcontext()
        return self.threads.burst()

    def close(self) -> None:
        if self.threads is not None:
            self.threads.close()

    def stop_all(self, reason: Stop) -> None:
        for run in list(self.running.values()):
            run.request_stop(reason)

    def runs(self, task_id: str) -> bool:
        """Whether this engine runs the task now, or is storing its end: it
        is in progress, and its end will be told to this engine's waiters
        (unless its claim was lost: then the watcher sees it)."""
        return task_id in self.running or task_id in self.settling

    def stored_record(self, task_id: str) -> TaskRecord | None:
        """The record of a task this engine is running, as it is stored: none
        of its reports waits to be stored or is being stored, and its run was
        not asked to stop.  None when the store is to be read instead."""
        run = self.running.get(task_id)
        if run is None or run.stop is not None:
            return None
        if task_id in self._dirty or task_id in self._writing:
            return None
        return run.record

    def holds(self, task_id: str, token: int) -> Run | None:
        """The run of ``task_id`` under claim ``token``, if this engine runs it."""
        run = self.running.get(task_id)
        return run if run is not None and run.claim.token == token else None

    # ------------------------------------------------------------------ running

    async def _storage(self, call: Callable[[], Awaitable[T]]) -> T:
        """A backend call the runner must see through: retried while storage fails.

        The first try is a plain await (the hot path pays for no retry loop).
        """
        health = self.core.health
        try:
            result = await call()
        except BackendError as exc:
            health.fault("runner", exc)
            return await health.retrying("runner", call)
        if health.failing:
            health.clear("runner")
        return result

    async def run(
        self,
        claim: Claim,
        begun: StoredTask | None = None,
        unreadable: str | None = None,
        admitted: Run | None = None,
    ) -> None:
        """Start, call and settle one claimed task.

        ``begun`` is its record when :meth:`Backend.claim_and_start` started
        it already (``unreadable``: why its stored record did not decode, see
        :meth:`starting`), and ``admitted`` its run if :meth:`admit` made it.
        """
        run = admitted
        if run is None:
            if begun is None:
                run = await self.start(claim)
            else:
                run = await self.started(claim, begun, unreadable)
        if run is None:
            return
        call = Call(definition=run.definition, runs=[run], context=run.context)
        run.call = call
        if run.stop is Stop.CANCEL:
            # Cancelled after it was admitted, before this first step: the
            # call begins cancelled (its attempt began; the function sees it).
            call.member_stopped()
        elif run.stop is not None:
            # Handed back (shutdown) or lost before this first step: the
            # function is not called (a hand-back does not count an attempt).
            self._forget(call)
            await self._settle(run, None)
            return
        try:
            result = await self._call(call, run.record.args)
        finally:
            self._forget(call)
        if not self._settle_now(run, result):
            await self._settle(run, result)

    def starting(
        self, now: float, unreadable: dict[str, str]
    ) -> Callable[[Claim, StoredTask], StoredTask]:
        """What a start at ``now`` stores: a claimed ``pending`` record as its
        ``in_progress`` record, fenced by the claim's token.  A record whose
        stored bytes do not decode (a bug or damage, not a fault that passes)
        is started as a placeholder, its error kept in ``unreadable`` by task
        id: that task then fails alone, with what can still be known of it,
        instead of being retried for ever with its slot held and the engine
        not ready.  Pure: a backend may call it on its own thread, and more
        than once for one claim (the same record each time)."""

        def starting(claim: Claim, pending: StoredTask) -> StoredTask:
            try:
                record = pending.record
            except BackendError as exc:
                unreadable[pending.id] = str(exc)
                record = _records.unreadable(pending.id, pending.name, pending.created_at)
            return StoredTask.from_record(_records.started(record, token=claim.token, now=now))

        return starting

    async def start(self, claim: Claim) -> Run | None:
        """Read and start the claimed task in one backend call
        (:meth:`Backend.start`); its :class:`Run`, or None when it is not to
        run here (a stale entry, a lost claim: acked, or settled at once)."""
        core = self.core
        unreadable: dict[str, str] = {}
        # now read here: the wall clock may be trio's (tests)
        starting = self.starting(core.now(), unreadable)
        begun = await self._storage(
            lambda: core.backend.start(claim, starting=lambda pending: starting(claim, pending))
        )
        return await self.started(claim, begun, unreadable.get(claim.task_id))

    async def started(
        self, claim: Claim, begun: StoredTask | None, unreadable: str | None
    ) -> Run | None:
        """The claimed task's :class:`Run` once its start stored ``begun`` (None:
        it did not start); None when it is not to run here (acked, or settled
        at once)."""
        core = self.core
        if begun is None:
            # Cancelled while waiting, gone, a duplicate entry, or our claim
            # was lost (the lease ran out while we stalled): whoever holds the
            # task now runs it.
            await self._storage(lambda: core.queue.ack(claim.task_id, claim.token))
            return None
        if unreadable is not None:
            log.error("task %s: %s; failed", claim.task_id, unreadable)
            error = TaskError(type="UnreadableRecord", message=unreadable)
            self.settling.add(claim.task_id)  # a waiter that comes now expedites its end
            try:
                await self._finish(claim, begun.record, None, error=error)
            finally:
                self.settling.discard(claim.task_id)
            return None
        return await self._started(claim, begun.record)

    async def begin(self, claim: Claim, record: TaskRecord) -> Run | None:
        """Start the claimed ``pending`` ``record`` (fenced by the claim); its
        :class:`Run`, or None when it is not to run here (settled or acked)."""
        core = self.core
        task_id = claim.task_id
        running = _records.started(record, token=claim.token, now=core.now())
        begun = StoredTask.from_record(running)
        if not await self._storage(lambda: core.backend.begin(begun, claim=claim)):
            # The record moved on (cancelled while waiting), or our claim was
            # lost (the lease ran out while we stalled): whoever holds the
            # task now runs it.
            await self._storage(lambda: core.queue.ack(task_id, claim.token))
            return None
        return await self._started(claim, running)

    def admit(self, claim: Claim, running: TaskRecord) -> Run | None:
        """The :class:`Run` of the claimed task started as ``running``, now
        registered as running here; None when it cannot run here (a task
        this engine does not know, or the engine is stopping: then
        :meth:`_started` settles it).

        Synchronous, so that the task is never seen ``in_progress`` in this
        engine's loop without its run (a cancel finds the run to stop)."""
        core = self.core
        task_id = claim.task_id
        definition = core.definitions.get(running.name)
        if definition is None or core.stopping:
            return None
        core.watchers.touch(task_id)
        ready = running.not_before if running.not_before is not None else running.created_at
        core.events.started(task_id, running.name, running.attempt, core.now() - ready)
        context = TaskContext(
            id=task_id,
            name=running.name,
            attempt=running.attempt,
            on_report=self._on_report,
            max_message_length=core.options.max_message_length,
            loop=self._loop,
        )
        run = Run(claim=claim, record=running, definition=definition, context=context)
        older = self.running.get(task_id)
        if older is not None:
            # This engine still runs an older claim of the same task (it
            # stalled past its lease and the task was claimed again): that
            # claim is gone, so the older run stops and writes nothing.
            older.request_stop(Stop.LOST)
        self.running[task_id] = run
        return run

    async def _started(self, claim: Claim, running: TaskRecord) -> Run | None:
        """The claimed task is ``in_progress`` as ``running``: its :class:`Run`,
        or None when it cannot run here (settled or handed back)."""
        run = self.admit(claim, running)
        if run is not None:
            return run
        core = self.core
        core.watchers.touch(claim.task_id)
        if running.name not in core.definitions:
            unknown = TaskError(
                type="UnknownTask", message=f"this engine's service has no task {running.name!r}"
            )
            await self._finish(claim, running, None, error=unknown)
            return None
        await self.hand_back(claim, running, counts=False, started=False)
        return None

    async def run_batch(self, members: Sequence[tuple[Claim, TaskRecord]]) -> None:
        """Start the claimed tasks of one batch, call the function once with all
        their items, and settle each with its own slice of the result."""
        runs: list[Run] = []
        try:
            for claim, record in members:
                run = await self.begin(claim, record)
                if run is not None:
                    runs.append(run)
        finally:
            for claim, _ in members:
                if self.held.get(claim.task_id) == claim:
                    del self.held[claim.task_id]
        if not runs:
            return
        definition = runs[0].definition
        param = definition.batch_param
        assert param is not None
        results: dict[int, outcome.Outcome[Any] | None] = {}
        calls: list[tuple[Run, dict[str, Any]]] = []
        for run in runs:
            try:
                calls.append((run, await self._structure(definition, run.record.args)))
            except BaseException as exc:
                # This task's stored arguments do not read: it fails alone.
                if _is_engine_cancel(exc):
                    raise
                error = FinalError(str(exc)) if isinstance(exc, InvalidArguments) else exc
                run.call = Call(definition=definition, runs=[run], context=run.context)
                results[id(run)] = outcome.Error(error)
        if calls:
            together = [run for run, _ in calls]
            call = Call(definition=definition, runs=together, context=self._batch_context(together))
            items: list[Any] = []
            sizes: list[int] = []
            for run, kwargs in calls:
                run.call = call
                items.extend(kwargs[param])
                sizes.append(len(kwargs[param]))
            arguments = dict(calls[0][1])
            arguments[param] = items
            self.core.events.batch(together[0].claim.task_id, definition.name, len(items))
            try:
                result = await self._invoke(call, arguments)
            finally:
                self._forget(call)
            for run, share in zip(together, _split(result, sizes), strict=True):
                results[id(run)] = None if run.stop is Stop.CANCEL else share
        for run in runs:
            if not self._settle_now(run, results[id(run)]):
                await self._settle(run, results[id(run)])

    def _batch_context(self, runs: list[Run]) -> TaskContext:
        """What ``current_task()`` is in a batch call: the first task's id and
        attempt; a report goes to every task of the batch."""
        first = runs[0].context

        def report_all(context: TaskContext) -> None:
            for run in runs:
                run.context.progress, run.context.message = context.progress, context.message
                self._on_report(run.context)

        return TaskContext(
            id=first.id,
            name=first.name,
            attempt=first.attempt,
            on_report=report_all,
            max_message_length=self.core.options.max_message_length,
        )

    def _forget(self, call: Call) -> None:
        """The call ended: its runs no longer run here."""
        for run in call.runs:
            task_id = run.claim.task_id
            if self.running.get(task_id) is run:
                del self.running[task_id]
                self._dirty.pop(task_id, None)

    async def _call(self, call: Call, args: dict[str, Any]) -> outcome.Outcome[Any] | None:
        """Call the task function with the stored ``args``; None when the call
        was stopped (see ``Run.stop``) or timed out (``call.timed_out``)."""
        definition = call.definition
        if not definition.is_async:
            # Decoded in the worker thread, just before the call: large
            # arguments (bytes, images, long lists) never stall the loop.
            return await self._invoke(call, args, decode=True)
        try:
            kwargs = await self._structure(definition, args)
        except InvalidArguments as exc:
            return outcome.Error(FinalError(str(exc)))
        except BaseException as exc:
            if _is_engine_cancel(exc):
                raise
            return outcome.Error(exc)
        return await self._invoke(call, kwargs)

    async def _structure(self, definition: TaskDefinition, args: dict[str, Any]) -> dict[str, Any]:
        """Stored JSON arguments as the typed values the function takes."""
        if definition.decodes_images:
            return await trio.to_thread.run_sync(self._structure_images, definition, args)
        return definition.structure(args)

    def _structure_images(self, definition: TaskDefinition, args: dict[str, Any]) -> dict[str, Any]:
        with pixel_limit(self.core.options.max_image_pixels):
            return definition.structure(args)

    def _decode_here(self, definition: TaskDefinition, args: dict[str, Any]) -> dict[str, Any]:
        """Stored JSON arguments as typed values, in the calling (worker)
        thread; arguments that do not read fail the task for good."""
        try:
            if definition.decodes_images:
                return self._structure_images(definition, args)
            return definition.structure(args)
        except InvalidArguments as exc:
            raise FinalError(str(exc)) from None

    async def _invoke(
        self, call: Call, kwargs: dict[str, Any], *, decode: bool = False
    ) -> outcome.Outcome[Any] | None:
        """Call the function with typed ``kwargs`` (on the loop, or in a
        thread); with ``decode``, a sync function's ``kwargs`` are its stored
        arguments, decoded in its thread."""
        definition = call.definition
        func = self.bound[definition.name]
        timeout = definition.options.timeout
        token = _set_current(call.context)
        try:
            if definition.is_async:
                with call.enter_scope() as scope:
                    if timeout is not None:
                        scope.deadline = trio.current_time() + timeout
                    try:
                        return outcome.Value(await func(**kwargs))
                    except BaseException as exc:
                        # Anything but the engine's own cancellation is the
                        # task's failure (SystemExit, KeyboardInterrupt, ...).
                        if _is_engine_cancel(exc):
                            raise
                        return outcome.Error(exc)
                if not call.stopped:
                    call.timed_out = True
                return None
            return await self._call_in_thread(call, func, kwargs, timeout, decode=decode)
        finally:
            _reset_current(token)

    def call_in_thread(self, run: Run, done: Callable[[str], None]) -> bool:
        """Start the call of the admitted ``run`` in a worker thread without a
        trio task of its own; False, doing nothing, unless the run is one this
        path takes.

        It takes the runs of sync functions without a timeout, on a
        volatile backend or one that begins ends without a coroutine
        (``Backend.finish_soon``); their arguments are decoded in the
        thread, as on every path of a sync function.  Such a run's task
        would only wait for its thread and then settle.  Here, on a
        volatile backend, the thread's return (or a stop: shutdown, a lost
        claim) queues the run, and one settler task settles what is queued,
        one run after another (:meth:`_settle_queued`), then calls
        ``done(name)`` for each: one after another costs nothing where the
        backend's writes do not wait.  Elsewhere a durable end waits for its
        commit, so the thread's return hands the end to the backend at once
        (:meth:`_settle_soon`), whose answer calls ``done(name)``, and the
        ends of concurrent runs share commits; a stopped or failed run is
        settled by a task of its own (:meth:`_settle_alone`).
        """
        definition = run.definition
        threaded = self._threaded.get(definition.name)
        if threaded is None:
            threaded = self._threaded[definition.name] = not (
                definition.is_async
                or definition.options.timeout is not None
                or not (self.core.backend.volatile or self._finish_soon is not None)
            )
        if not threaded or run.stop is not None:
            return False
        call = Call(definition=definition, runs=[run], context=run.context)
        run.call = call
        args = run.record.args
        func = self.bound[definition.name]
        context = contextvars.copy_context()
        context.run(_set_current, call.context)  # current_task() in the thread

        def work() -> Any:
            # Decoded here, in the thread (as in _call): arguments that do
            # not read fail the task alone, for good.
            return context.run(func, **self._decode_here(definition, args))

        def deliver(result: outcome.Outcome[Any]) -> None:  # on the trio thread
            if not call.thread_left:
                call.wake = None
                self._forget(call)
                if self._finish_soon is None or not self._settle_soon(run, result, done):
                    self._queue_settle(run, result, done)

        def abandon() -> None:
            # Stopped for good (shutdown, lost claim): settled without
            # waiting; the thread is left to finish alone.
            call.wake = None
            call.thread_left = True
            self._forget(call)
            self._queue_settle(run, None, done)

        call.wake = abandon
        assert self.threads is not None
        self.threads.submit(work, deliver)
        return True

    def _queue_settle(
        self, run: Run, result: outcome.Outcome[Any] | None, done: Callable[[str], None]
    ) -> None:
        if self._finish_soon is not None:
            # Each waits for its own writes: settled side by side, so that
            # their ends share commits as the runs' tasks' ends do.
            assert self._spawn is not None
            self._spawn(self._settle_alone, run, result, done)
            return
        self._to_settle.append((run, result, done))
        if not self._settler_busy:
            assert self._spawn is not None
            self._settler_busy = True
            self._spawn(self._settle_queued)

    async def _settle_queued(self) -> None:
        """Settle the queued runs (see :meth:`call_in_thread`), until none is left."""
        try:
            while self._to_settle:
                run, result, done = self._to_settle.popleft()
                try:
                    if not self._settle_now(run, result):
                        await self._settle(run, result)
                finally:
                    done(run.claim.name)
        finally:
            self._settler_busy = False

    async def _settle_alone(
        self, run: Run, result: outcome.Outcome[Any] | None, done: Callable[[str], None]
    ) -> None:
        try:
            await self._settle(run, result)
        finally:
            done(run.claim.name)

    def _settle_soon(
        self, run: Run, result: outcome.Outcome[Any] | None, done: Callable[[str], None]
    ) -> bool:
        """Begin storing how the admitted ``run`` of :meth:`call_in_thread`
        ended, without a coroutine: where the backend begins ends so
        (``Backend.finish_soon``) and the call returned (not stopped).  The
        backend's answer tells the end and calls ``done(name)``.  True when
        begun here; False, having done nothing, otherwise (then the run is
        settled as the others are).

        A run's task would only wait for the write; here the loop hears of
        the end once, when it is stored (``docs/performance.md``).  What is
        stored is what :meth:`_settle` stores: success, or a result that does
        not store failing the task for good."""
        finish_soon = self._finish_soon
        if finish_soon is None:
            return False
        returned = self._returned(run, result)
        if returned is None:
            return False
        claim, record, ended, payload, error = returned
        final = StoredTask.from_record(ended)
        task_id = claim.task_id

        def answer(moved: bool | BackendError) -> None:  # on the trio thread
            if isinstance(moved, BackendError):
                # Retried as ``_finish`` retries, by a task that then tells it.
                assert self._spawn is not None
                self._spawn(self._end_retried, claim, record, ended, payload, error, moved, done)
                return
            try:
                health = self.core.health
                if health.failing:
                    health.clear("runner")
                self._told(claim, record, ended, payload, error, None, moved)
            finally:
                self.settling.discard(task_id)
                self.waited_ends.discard(task_id)
                self._end_answered(done, claim.name)

        waited = self.core.watchers.waited(task_id)
        if not finish_soon(final, claim=claim, result=payload, waited=waited, answer=answer):
            return False
        self.settling.add(task_id)  # a waiter that comes now expedites its end
        if waited:
            self.waited_ends.add(task_id)
        self._ends_begun += 1
        run.call = None
        return True

    def _end_answered(self, done: Callable[[str], None], name: str) -> None:
        """An end begun with ``finish_soon`` was told: its slot is free."""
        try:
            done(name)
        finally:
            self._ends_begun -= 1
            if not self._ends_begun and self._ends_stored is not None:
                self._ends_stored.set()

    async def _end_retried(
        self,
        claim: Claim,
        record: TaskRecord,
        ended: TaskRecord,
        payload: Payload | None,
        error: TaskError | None,
        exc: BackendError,
        done: Callable[[str], None],
    ) -> None:
        try:
            final = StoredTask.from_record(ended)
            moved = await self._store_end_again(final, claim, payload, exc)
            self._told(claim, record, ended, payload, error, None, moved)
        finally:
            self.settling.discard(claim.task_id)
            self.waited_ends.discard(claim.task_id)
            self._end_answered(done, claim.name)

    async def ends_stored(self) -> None:
        """Return once every end begun with ``finish_soon`` was answered (the
        engine waits for them as it waits for its runs' tasks)."""
        while self._ends_begun:
            event = self._ends_stored = trio.Event()
            await event.wait()

    async def _call_in_thread(
        self,
        call: Call,
        func: Callable[..., Any],
        kwargs: dict[str, Any],
        timeout: float | None,
        *,
        decode: bool = False,
    ) -> outcome.Outcome[Any] | None:
        done = trio.Event()
        box: list[outcome.Outcome[Any]] = []
        context = contextvars.copy_context()
        definition = call.definition

        def work() -> Any:
            values = self._decode_here(definition, kwargs) if decode else kwargs
            return context.run(func, **values)

        def deliver(result: outcome.Outcome[Any]) -> None:
            box.append(result)  # on the trio thread
            done.set()

        assert self.threads is not None
        self.threads.submit(work, deliver)
        if timeout is None:
            # The common case needs no cancel scope (entering one is a
            # measurable share of a no-op task): a stop sets the event too.
            call.wake = done.set
            if not call.cancelled:  # not stopped before it began
                await done.wait()
            if box:
                return box[0]
            call.thread_left = True
            return None  # shutdown or lost claim: the thread is left to finish alone
        with call.enter_scope() as scope:
            scope.deadline = trio.current_time() + timeout
            await done.wait()
        if not done.is_set() and not call.stopped:
            # Timed out: a thread cannot be interrupted.  Ask it to stop, and
            # keep its slot until it really returns, so limits stay true.
            call.timed_out = True
            call.context._cancel()
            with call.enter_scope():  # not cancelled: the call was not stopped
                await done.wait()
        if not done.is_set():
            call.thread_left = True
            return None  # shutdown or lost claim: the thread is left to finish alone
        return box[0]

    # ------------------------------------------------------------------ settling

    async def _settle(self, run: Run, result: outcome.Outcome[Any] | None) -> None:
        """Store how the admitted ``run`` ended (``result``: its outcome, None
        when it was stopped), then let its objects go.

        A run and its call refer to each other: the cycle is broken here, so
        that what the run held is freed at once by reference counting, not
        later by the garbage collector (``tests/engine/test_garbage.py``)."""
        task_id = run.claim.task_id
        self.settling.add(task_id)
        try:
            claim, record = run.claim, _reported(run)
            if run.stop is Stop.LOST:
                log.warning(
                    "task %s: claim taken over by another worker; result dropped", claim.task_id
                )
                return
            call = run.call
            assert call is not None
            if run.stop is Stop.SHUTDOWN:
                # A thread still running may yet do the work: that attempt counts.
                await self.hand_back(claim, record, counts=call.thread_left)
                return
            async_value = run.definition.is_async and isinstance(result, outcome.Value)
            if run.stop is Stop.CANCEL and not async_value:
                # A sync function that returns after a cancel request stopped early.
                await self._finish(claim, record, None, cancelled=True)
                return
            if call.timed_out:
                timeout = run.definition.options.timeout
                error = TaskError(
                    type="TimeoutError",
                    message=f"the task took longer than its timeout of {timeout} s",
                )
                await self._fail_or_retry(run, record, error, final=False)
                return
            if isinstance(result, outcome.Error):
                exc = result.error
                error = task_error(exc)
                final = isinstance(exc, FinalError)
                if not final:
                    log.debug("task %s raised %s", claim.task_id, error)
                await self._fail_or_retry(
                    run, record, error, final=final, traceback=_traceback_text(exc)
                )
                return
            assert isinstance(result, outcome.Value)
            stored = self._stored_value(run.definition, result.value)
            if isinstance(stored, TaskError):
                await self._fail_or_retry(run, record, stored, final=True)
                return
            await self._finish(claim, record, stored)
        finally:
            run.call = None
            self.settling.discard(task_id)

    def _stored_value(self, definition: TaskDefinition, value: Any) -> Payload | TaskError:
        """A returned ``value`` as it is stored; or, where it does not match
        the return type, cannot be encoded or is too large, the error that
        fails its task for good."""
        try:
            wrong = definition.check_result(value)
        except BaseException as exc:  # a strange value's own methods may raise anything
            if _is_engine_cancel(exc):
                raise
            wrong = [FieldError(path="$", message=_text(exc))]
        if wrong:
            return TaskError(
                type="InvalidResult",
                message="the result does not match the return type "
                f"{type_name(definition.return_type)}: " + "; ".join(str(e) for e in wrong),
            )
        try:
            payload = encode_result(value, definition.return_type)
        except BaseException as exc:  # whatever a strange result raises is the task's
            if _is_engine_cancel(exc):
                raise
            return TaskError(
                type="InvalidResult", message=f"the result cannot be stored: {_text(exc)}"
            )
        limit = self.core.options.max_result_size
        if len(payload.data) > limit:
            return TaskError(
                type="InvalidResult",
                message=f"the result is {len(payload.data)} bytes; the limit is {limit} "
                "(max_result_size)",
            )
        return payload

    def _settle_now(self, run: Run, result: outcome.Outcome[Any] | None) -> bool:
        """Store how the admitted ``run`` ended, at once, where that is all
        it takes: the backend finishes at once (:attr:`Backend.finishes_now`)
        and the call returned (not stopped, not timed out).  True when
        settled here; False, having done nothing, otherwise (then
        :meth:`_settle`).

        No coroutine, no schedule point: on a backend in memory a run's end
        is a few dict writes, which the layers of :meth:`_settle`,
        :meth:`_finish` and ``Backend.finish`` cost more than (measured in
        ``docs/performance.md``).  What is stored is what :meth:`_settle`
        stores: success, or a result that does not store failing the task
        for good."""
        finish_now = self._finish_now
        if finish_now is None:
            return False
        returned = self._returned(run, result)
        if returned is None:
            return False
        claim, record, done, payload, error = returned
        stored_final = finish_now(StoredTask.from_record(done), claim=claim, result=payload)
        run.call = None
        self._told(claim, record, done, payload, error, None, stored_final)
        return True

    def _returned(
        self, run: Run, result: outcome.Outcome[Any] | None
    ) -> tuple[Claim, TaskRecord, TaskRecord, Payload | None, TaskError | None] | None:
        """The end of a run whose call returned (not stopped, not timed out)
        as :meth:`_settle_now` and :meth:`_settle_soon` store it: its claim,
        its running record, its final record, and the payload and error to
        store (success, or a result that does not store failing the task
        for good); None for any other run."""
        call = run.call
        if (
            run.stop is not None
            or type(result) is not outcome.Value
            or call is None
            or call.timed_out
        ):
            return None
        claim, record = run.claim, _reported(run)
        stored = self._stored_value(run.definition, result.value)
        payload, error = (None, stored) if isinstance(stored, TaskError) else (stored, None)
        ended = self._final(record, FAILURE if error is not None else SUCCESS, payload, error, None)
        return claim, record, ended, payload, error

    async def _finish(
        self,
        claim: Claim,
        record: TaskRecord,
        payload: Payload | None,
        *,
        error: TaskError | None = None,
        cancelled: bool = False,
        traceback: str | None = None,
    ) -> None:
        core = self.core
        status = CANCELLED if cancelled else (FAILURE if error is not None else SUCCESS)
        done = self._final(record, status, payload, error, traceback)
        final = StoredTask.from_record(done)
        health = core.health
        try:
            # The first try is a plain await (see _storage), the retries below.
            stored_final = await self._store_end(final, claim, payload)
        except BackendError as exc:
            stored_final = await self._store_end_again(final, claim, payload, exc)
        else:
            if health.failing:
                health.clear("runner")
        finally:
            self.waited_ends.discard(claim.task_id)
        self._told(claim, record, done, payload, error, traceback, stored_final)

    async def _store_end_again(
        self, final: StoredTask, claim: Claim, payload: Payload | None, exc: BackendError
    ) -> bool:
        """The end's first write failed with ``exc``: reported, and retried
        until storage answers; whether the record moved."""
        core = self.core
        health = core.health
        health.fault("runner", exc)

        async def finish_again() -> bool:
            moved = await self._store_end(final, claim, payload)
            if moved:
                return True
            # The failed try may have moved the record before it failed
            # (a backend that makes two calls of it).
            now = await core.store.get(claim.task_id)
            return now is not None and now.status is final.status and now.token == claim.token

        return await health.retrying("runner", finish_again)

    def _final(
        self,
        record: TaskRecord,
        status: TaskStatus,
        payload: Payload | None,
        error: TaskError | None,
        traceback: str | None,
    ) -> TaskRecord:
        """The running ``record`` ended in the final ``status``, now."""
        return _records.finished(
            record,
            status=status,
            now=self.core.now(),
            error=error,
            result_type=payload.media_type if payload is not None else None,
            traceback=traceback,
        )

    def _told(
        self,
        claim: Claim,
        record: TaskRecord,
        done: TaskRecord,
        payload: Payload | None,
        error: TaskError | None,
        traceback: str | None,
        stored_final: bool,
    ) -> None:
        """Count, announce and wake the waiters of a run's end: stored as
        ``done`` when ``stored_final``, else refused (the record moved on)."""
        core = self.core
        if stored_final:
            core.finished += 1
            ended = done.finished_at
            ran = None if record.started_at is None or ended is None else ended - record.started_at
            core.events.ended(
                _ENDED[done.status],
                record.id,
                record.name,
                record.attempt,
                ran,
                error=None if error is None else str(error),
                traceback=traceback,
            )
            core.watchers.notify(claim.task_id, done, payload)
            return
        log.warning(
            "task %s: its record moved on; outcome %s not stored", record.id, done.status.value
        )
        core.watchers.notify(claim.task_id)

    def _store_end(
        self, final: StoredTask, claim: Claim, payload: Payload | None
    ) -> Awaitable[bool]:
        """``Backend.finish``'s call (to await), telling it whether someone in
        this process waits on this end now (then it is not to be held back).
        Not a coroutine of its own: no extra frame for every task's end."""
        backend = self.core.backend
        if not self._finish_takes_waited:
            return backend.finish(final, claim=claim, result=payload)
        waited = self.core.watchers.waited(claim.task_id)
        if waited:
            self.waited_ends.add(claim.task_id)
        return backend.finish(final, claim=claim, result=payload, waited=waited)

    async def _fail_or_retry(
        self,
        run: Run,
        record: TaskRecord,
        error: TaskError,
        *,
        final: bool,
        traceback: str | None = None,
    ) -> None:
        core = self.core
        claim = run.claim
        if final or record.attempt > record.retries:
            await self._finish(claim, record, None, error=error, traceback=traceback)
            return
        base = run.definition.options.retry_delay
        delay = min(base * 2 ** (record.attempt - 1), MAX_BACKOFF) * random.uniform(0.5, 1.0)
        now = core.now()
        not_before = now + delay
        again = StoredTask.from_record(
            _records.retry_later(record, error=error, now=now, not_before=not_before)
        )
        if await self._storage(
            lambda: core.store.transition(again, expect=IN_PROGRESS, token=claim.token)
        ):
            rank = core.rank(record.priority, not_before)
            await self._storage(
                lambda: core.queue.release(
                    claim.task_id, claim.token, not_before=not_before, rank=rank
                )
            )
            ran = None if record.started_at is None else now - record.started_at
            core.events.ended(
                EventKind.RETRIED,
                record.id,
                record.name,
                record.attempt,
                ran,
                error=str(error),
                retry_in=delay,
            )
            core.wake()
        core.watchers.notify(claim.task_id)

    async def hand_back(
        self, claim: Claim, record: TaskRecord, *, counts: bool, started: bool = True
    ) -> None:
        """Shutdown: the task goes back to pending (see :func:`_records.handed_back`).

        ``started``: whether its start was told (as an event) before.
        """
        core = self.core
        again = _records.handed_back(record, counts=counts, now=core.now())
        stored = StoredTask.from_record(again)
        if not await self._storage(
            lambda: core.store.transition(stored, expect=IN_PROGRESS, token=claim.token)
        ):
            core.watchers.notify(claim.task_id)
            return
        if again.status is PENDING:
            rank = core.rank(record.priority)
            await self._storage(lambda: core.queue.release(claim.task_id, claim.token, rank=rank))
            if started:
                core.events.handed_back(record.id, record.name, record.attempt)
            core.watchers.notify(claim.task_id)
        else:
            await self._storage(lambda: core.queue.ack(claim.task_id, claim.token))
            core.finished += 1
            core.events.ended(
                EventKind.FAILED,
                record.id,
                record.name,
                record.attempt,
                None,
                error=str(again.error),
            )
            core.watchers.notify(claim.task_id, again)

    # ------------------------------------------------------------------ progress

    def _on_report(self, context: TaskContext) -> None:
        run = self.running.get(context.id)
        if run is not None and run.context is context:
            self._dirty[context.id] = run
            self._progress_wake.set()

    async def write_progress(self) -> None:
        """One round of the progress writer: wait for reports, store them."""
        await self._progress_wake.wait()
        self._progress_wake = trio.Event()
        dirty, self._dirty = self._dirty, {}
        self._writing = dirty  # (what is left of it: each is deleted once stored)
        store, watchers = self.core.store, self.core.watchers
        try:
            while dirty:
                task_id, run = next(iter(dirty.items()))
                updated = attrs.evolve(
                    run.record, progress=run.context.progress, message=run.context.message
                )
                if await store.transition(
                    StoredTask.from_record(updated), expect=IN_PROGRESS, token=run.claim.token
                ):
                    run.record = updated
                    watchers.touch(task_id)
                del dirty[task_id]
        finally:
            self._writing = {}
            # Reports not stored (storage failed) are tried again; newer ones win.
            for task_id, run in dirty.items():
                if self.running.get(task_id) is run:
                    self._dirty.setdefault(task_id, run)
            if self._dirty:
                self._progress_wake.set()


def _overrides(backend: Any, flag: str, method: str) -> bool:
    """Whether the engine may call ``backend.<method>`` (``finish_now``,
    ``finish_soon``) for its ``finish``: the backend says so (its ``flag``),
    and no subclass overrode ``finish`` alone after ``method`` was written
    (its ``finish`` is then what runs, as it expects)."""
    if not getattr(backend, flag):
        return False
    mro = type(backend).__mro__

    def written_in(name: str) -> int:
        return next(i for i, cls in enumerate(mro) if name in vars(cls))

    return written_in(method) <= written_in("finish")


def _takes_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name``."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in parameters
    )
