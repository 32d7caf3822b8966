"""The engine: lifecycle, public API and the dispatcher.

An engine owns one trio nursery and runs its parts there, each with one job:

* the **dispatcher** (here) claims ready task ids when a concurrency slot is
  free; a submit, a freed slot or a released claim wakes it at once;
* the **runner** (``_runner.py``) starts, calls and settles each claimed
  task, and stores progress reports;
* the **upkeep** (``_upkeep.py``) renews leases, recovers the tasks of dead
  workers, purges expired records and reconciles the queue with the store;
* the **watcher** (here) listens for work put by other engines on the same
  backend.

The parts share a :class:`~errands._core.Core`; record transitions are pure
functions in ``_records.py``; waiting lives in ``_watching.py`` behind the
narrow :class:`~errands._watching.Source` seam that the engine implements.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from typing import Any

import attrs
import trio

from . import _records, _watching
from ._backend import Backend
from ._batching import Batcher
from ._convert import Payload, decode_result, pixel_limit
from ._core import Core
from ._define import Service, TaskDefinition
from ._errors import (
    BackendError,
    CannotCancel,
    EngineClosed,
    EngineUnavailable,
    ErrandsError,
    FieldError,
    InvalidArguments,
    LimitExceeded,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskNotReady,
)
from ._events import TaskEvent, TaskStats
from ._health import HOLD, Health, State
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
from ._options import EngineOptions
from ._runner import Run, Runner, Stop
from ._status import TaskStatus
from ._upkeep import Upkeep

__all__ = ["Engine", "EngineStatistics", "idempotent_id"]

log = logging.getLogger("errands.engine")

PENDING = TaskStatus.PENDING
IN_PROGRESS = TaskStatus.IN_PROGRESS
SUCCESS = TaskStatus.SUCCESS
FAILURE = TaskStatus.FAILURE
CANCELLED = TaskStatus.CANCELLED

#: Seconds that cleanup writes (final state, releasing a claim) may take once
#: the engine is being cancelled; they run shielded for at most this long.
CLEANUP_SECONDS = 5.0
#: The most tasks a second the change watcher reads, averaged over a round
#: and the pause after it (see :meth:`Engine._watch_changes`): rounds of up
#: to 2,000 waited tasks keep the backend's poll interval (0.1 s on
#: diskcache); a batch of 100,000 is read every 5 s.  Changes made in
#: another process reach this one's waiters that much later.
WATCH_READS = 20_000
#: Seconds ``cancel()`` waits for a running task to stop before answering.
CANCEL_GRACE = 5.0
#: The longest a submit from a thread waits for a dispatch round's claim
#: under way (see :meth:`Engine.wait_for_claim_from_thread`).
THREAD_CLAIM_WAIT = 0.05

#: A task a submit's write claimed and started: its claim, its started record
#: (None: not started) and why its stored record did not read (None: it read).
_Started = tuple[Claim, StoredTask | None, str | None]
#: The keywords ``_enqueue`` adds to a backend's write when there is no
#: ``on_stored`` to pass (shared, never changed: no dict per submit).
_NOT_TOLD: Mapping[str, Any] = {}


@attrs.frozen(kw_only=True)
class EngineStatistics:
    """A snapshot of an engine (``client.statistics()``)."""

    running: int
    workers: int
    submitted: int
    finished: int
    #: ``starting``, ``running``, ``stopping``, ``stopped`` or ``dead``.
    state: str
    #: False only once an engine bug ended the engine (its process should exit).
    alive: bool
    #: True while the engine runs and its storage answers.
    ready: bool
    #: The current storage fault, if any (for logs: it may name files).
    storage_error: str | None
    #: Storage faults met since the engine started (each retried).
    storage_faults: int
    #: Counts and timings per task endpoint (:class:`errands.TaskStats`).
    tasks: Mapping[str, TaskStats] = attrs.field(factory=dict)


def idempotent_id(service: str, name: str, key: str) -> str:
    """The task id an idempotency key stands for (128 bits of its hash)."""
    digest = hashlib.sha256(f"{service}\0{name}\0{key}".encode()).digest()[:16]
    return task_id_from_bytes(digest)


def _canonical(arguments: Mapping[str, Any]) -> str:
    """Arguments as JSON text that equal arguments share (key order, tuples)."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"))


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is trio's cancellation (alone or in groups), not an error."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_task_id()[:8]}"


class Engine:
    """Runs the tasks of one service on one backend.  Use :func:`~errands.open_engine`.

    All public methods are async, must be called from the engine's trio run,
    and raise :class:`~errands.EngineClosed` once it has stopped.
    """

    def __init__(self, service: Service, *, backend: Backend, options: EngineOptions) -> None:
        self.service = service
        self.backend = backend
        self.options = options
        self.owner = _default_owner()
        self.definitions: Mapping[str, TaskDefinition] = service.tasks
        self.core = Core(
            service_name=service.name,
            definitions=self.definitions,
            options=options,
            backend=backend,
            owner=self.owner,
            wake=self._wake_dispatcher,
        )
        self.runner = Runner(self.core)
        #: Results read along with the ends ``as_completed`` waited for, each
        #: kept for the next :meth:`result` of its task (bounded; any thread).
        self.kept = _watching.Kept()
        self.upkeep = Upkeep(self.core, self.runner)
        self._batchers = {
            name: Batcher(self.core, self.runner, d, self)
            for name, d in self.definitions.items()
            if d.options.batchable
        }
        workers = options.workers
        self._active = dict.fromkeys(self.definitions, 0)
        self._limits = {
            name: min(d.concurrency or workers, workers) for name, d in self.definitions.items()
        }
        self._total = 0
        #: Set when the claim of the dispatch round under way returns, and
        #: its claims are counted (``_claim_done``: the same, for threads).
        self._claiming: trio.Event | None = None
        self._claim_done = threading.Event()
        self._claim_done.set()
        #: Submits from threads that may start their tasks in their own
        #: writes and whose loop has not taken their slots yet, by name
        #: (see :meth:`may_start_from_thread`), under ``_thread_lock``.
        self._thread_lock = threading.Lock()
        self._thread_starts: dict[str, int] = dict.fromkeys(self.definitions, 0)
        self._thread_starts_total = 0
        #: Names whose ready tasks may wait unclaimed, and whether tasks of
        #: any name may (a change this engine did not make, a retry, a
        #: failed round): a freed slot wakes the dispatcher only when one of
        #: them may use it, and a submit starts its task in its own write
        #: only when none of them may (see _waiting_with_room).
        self._waiting_names: set[str] = set()
        self._any_waiting = True
        #: The names the dispatcher claims (the others have a batcher each).
        self._dispatched = len(self._limits) - len(self._batchers)
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._open = False
        self._accepting = False
        self._hard_stop = False
        self._stop_requested = trio.Event()
        self._counted = False  # counted in service.engines_running

    # ------------------------------------------------------------------ the Source seam

    @property
    def watchers(self) -> _watching.Watchers:
        return self.core.watchers

    @property
    def health(self) -> Health:
        return self.core.health

    @property
    def poll_interval(self) -> float | None:
        return self.backend.poll_interval

    @property
    def is_open(self) -> bool:
        return self._open

    def clock(self) -> float:
        return self.core.now()

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`aclose` is called; ``task_status.started()`` when ready.

        On close: stop claiming, let running tasks finish for ``grace``
        seconds, then stop the rest and hand them back to the queue.
        """
        health = self.core.health
        await self.backend.open()
        try:
            instance = None
            if self.service.cls is not None:
                instance = await trio.to_thread.run_sync(self.service.instantiate)
            self.runner.open(self.service.bind(instance), spawn=self.spawn)
            async with trio.open_nursery() as keeper_nursery:
                keeper_nursery.start_soon(self._stop_if_cancelled)
                keeper_nursery.start_soon(health.supervise, "lease keeper", self._keep_leases)
                keeper_nursery.start_soon(
                    health.supervise, "progress writer", self.runner.write_progress
                )
                async with trio.open_nursery() as runners:
                    # Runners are shielded as a group (not one scope per task): an
                    # outside cancel reaches them only as a stop request, so their
                    # final writes need no shield of their own.
                    runners.cancel_scope.shield = True
                    self._runners = runners
                    try:
                        await self._serve_system(task_status)
                    finally:
                        self.core.stopping = True
                        self.runner.stop_all(Stop.SHUTDOWN)
                        # Ends begun without a task of their own: waited for too.
                        runners.start_soon(self.runner.ends_stored)
                        runners.cancel_scope.deadline = trio.current_time() + CLEANUP_SECONDS
                keeper_nursery.cancel_scope.cancel()
        except BaseException as exc:
            if self._open and not _is_cancellation(exc):
                # Not a storage fault (those are retried) and not a stop: an
                # engine bug.  Say so loudly; the process should exit non-zero.
                health.kill(exc)
                log.critical("engine %s died: %s", self.owner, health.died_of, exc_info=exc)
            raise
        finally:
            if self._counted:
                self.service.engines_running -= 1
                self._counted = False
            if health.alive:
                health.state = State.STOPPED
            self._open = self._accepting = False
            self.runner.close()
            self.core.watchers.wake_all()
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_SECONDS):
                await self.backend.aclose()
            log.info("engine %s stopped", self.owner)

    async def _keep_leases(self) -> None:
        await trio.sleep(self.upkeep.lease_interval)
        await self.upkeep.keep_leases()

    async def _sweep(self) -> None:
        await trio.sleep(self.options.sweep_interval)
        await self.upkeep.sweep()

    async def _orphans(self) -> None:
        await trio.sleep(self.options.lease)
        await self.upkeep.recover_orphans()

    async def _serve_system(self, task_status: trio.TaskStatus[None]) -> None:
        health = self.core.health
        async with trio.open_nursery() as system:
            if self.backend.poll_interval is not None:
                # What a crash left behind.  While storage fails this is
                # retried in the background and the engine starts, not ready.
                try:
                    await self.upkeep.recover_at_start()
                except BackendError as exc:
                    health.fault("recovery", exc)
                    system.start_soon(health.retrying, "recovery", self.upkeep.recover_at_start)
            system.start_soon(health.supervise, "dispatcher", self._dispatch_round)
            system.start_soon(health.supervise, "sweeper", self._sweep)
            system.start_soon(health.supervise, "orphan finder", self._orphans)
            system.start_soon(health.supervise, "watcher", self._watch_backend)
            for name, batcher in self._batchers.items():
                system.start_soon(health.supervise, f"batcher {name}", batcher.form_round)
            if self.backend.poll_interval is not None:
                system.start_soon(health.supervise, "change watcher", self._watch_changes)
            self._open = self._accepting = True
            health.state = State.RUNNING
            self.service.engines_running += 1
            self._counted = True
            log.info("engine %s started for service %s", self.owner, self.service.name)
            task_status.started()
            await self._stop_requested.wait()
            self._accepting = False
            health.state = State.STOPPING
            system.cancel_scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_SECONDS):
            for batcher in self._batchers.values():
                await batcher.release_held()
        await self._drain()

    async def _drain(self) -> None:
        if (self.runner.running or self._total) and not self._hard_stop:
            self._idle = trio.Event()
            with trio.move_on_after(self.options.grace):
                await self._idle.wait()
        self.core.stopping = True
        self.runner.stop_all(Stop.SHUTDOWN)

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
        health = self.core.health
        return EngineStatistics(
            running=len(self.runner.running),
            workers=self.options.workers,
            submitted=self.core.submitted,
            finished=self.core.finished,
            state=health.state.value,
            alive=health.alive,
            ready=health.ready,
            storage_error=health.storage_error,
            storage_faults=health.total_faults,
            tasks=self.core.events.stats(self._running_by_name()),
        )

    def _running_by_name(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.runner.running.values():
            name = run.definition.name
            counts[name] = counts.get(name, 0) + 1
        return counts

    def listen(self, listener: Callable[[TaskEvent], None]) -> Callable[[], None]:
        """Call ``listener(event)`` (on the engine's trio thread) for every task
        event this engine brings about from now on; returns the function that
        stops it.  See ``errands.TaskEvent``."""
        stop: Callable[[], None] = self.core.events.listen(listener)
        return stop

    def check_open(self) -> None:
        """Raise :class:`~errands.EngineClosed` unless the engine runs."""
        if not self._open:
            raise EngineClosed("the engine is not running")

    # ------------------------------------------------------------------ records

    async def load(self, task_id: str, *, schedule: bool = True) -> TaskRecord:
        """The task's record; TaskNotFound when unknown, expired or malformed."""
        return (await self.load_stored(task_id, schedule=schedule)).record

    def runs_here(self, task_id: str) -> bool:
        """Whether this engine is running the task now, or storing its end
        (for waiting: such a task is in progress, and its end is told here)."""
        return self.runner.runs(task_id)

    def expedite(self, task_ids: Collection[str]) -> None:
        """A waiter parks on these tasks: if this engine is storing the end
        of one of them, the backend writes it without holding it back (an
        end stored from now on sees the waiter itself: ``Backend.finish``'s
        ``waited``).  A task running here needs nothing now: its end will
        see the waiter.  (The claim and the start of a task that did not
        start in its submit's write may still be held, for at most the
        database's ``max_hold`` each.)"""
        settling = self.runner.settling
        if not settling:
            return
        waited = self.runner.waited_ends  # written unheld already
        for task_id in task_ids:
            if task_id in settling and task_id not in waited:
                self.backend.expedite()
                return

    async def load_stored(
        self, task_id: str, *, schedule: bool = True, arguments: bool = True
    ) -> StoredTask:
        """The task as stored, its record not decoded yet (its status and
        expiry are read without it, so a record whose bytes no longer
        decode is not noticed here); TaskNotFound when unknown, expired or
        the id is malformed.  Without ``arguments``, a backend that keeps
        them apart does not read them (they may be megabytes): for what
        reads the status or :meth:`StoredTask.without_args` alone."""
        if schedule:
            await trio.lowlevel.checkpoint()  # backends need not schedule; public calls do
        self._check_readable(task_id)
        store = self.core.store
        stored = await (store.get(task_id) if arguments else store.get_state(task_id))
        return self._live(task_id, stored)

    async def load_state(
        self, task_id: str, *, schedule: bool = True, position: bool = False
    ) -> tuple[TaskRecord, int | None]:
        """The live record for what reads its state (a status, a change), as
        :meth:`StoredTask.without_args` gives it, and with ``position`` its
        queue position while it waits (else None).  A task this engine is
        running is answered from its record as stored
        (:meth:`Runner.stored_record`: a client that polls a running task's
        status costs a durable backend no transaction per poll); any other
        is read, with its position in the same backend call
        (:meth:`Backend.state_and_position`).  TaskNotFound as :meth:`load`."""
        running = self.runner.stored_record(task_id)
        if running is not None and not running.is_expired(self.core.now()):
            if schedule:
                await trio.lowlevel.checkpoint()
            self.check_open()
            return running, None
        if not position:
            stored = await self.load_stored(task_id, schedule=schedule, arguments=False)
            return stored.without_args(), None
        if schedule:
            await trio.lowlevel.checkpoint()
        self._check_readable(task_id)
        found, ahead = await self.backend.state_and_position(task_id)
        return self._live(task_id, found).without_args(), ahead

    def _check_readable(self, task_id: str) -> None:
        """What every read of one task checks first: EngineClosed, and
        TaskNotFound for a malformed id (no coroutine: loads are hot)."""
        self.check_open()
        if not is_task_id(task_id):
            raise TaskNotFound(task_id)

    def _live(self, task_id: str, stored: StoredTask | None) -> StoredTask:
        """``stored`` if the task is there and not expired; else TaskNotFound."""
        if stored is None:
            raise TaskNotFound(task_id)
        expires_at = stored.expires_at
        if expires_at is not None and expires_at <= self.core.now():
            raise TaskNotFound(task_id)
        return stored

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
        self.check_accepting()
        definition = self.definition(name)
        args = await self.validate(definition, arguments, from_json)
        self.check_caps(delay, idempotency_key)
        record = self.new_record(
            definition,
            args,
            now=self.core.now(),
            priority=priority,
            delay=delay,
            key=idempotency_key,
            retry_of=retry_of,
        )
        return await self.accept(record, idempotency_key)

    async def accept(
        self,
        record: TaskRecord,
        idempotency_key: str | None = None,
        *,
        on_stored: Callable[[], None] | None = None,
    ) -> TaskRecord:
        """Store and queue the new ``pending`` ``record`` (checked and built by
        the caller: :meth:`validate`, :meth:`new_record`); the record, or the
        live one its idempotency key already stands for.  ``on_stored``
        (without a key): called from any thread as soon as the record is
        stored, where the backend tells (``Backend.reports_stored``), before
        this returns; not called when it tells nothing or nothing was created.

        Raises:
            EngineUnavailable: storage failed; nothing was accepted.
            InvalidArguments: the key was used with other arguments.
        """
        # A free slot: the task may start in the submit's own write.
        slot = await self._reserve_for(record)
        started: _Started | None = None
        try:
            existing, started = await self._enqueue(
                StoredTask.from_record(record),
                idempotency_key,
                record.priority,
                record.not_before,
                start=slot,
                on_stored=on_stored,
            )
        except EngineUnavailable:
            raise
        except BackendError as exc:
            raise self.not_accepted(exc) from exc
        finally:
            if slot and started is None:
                self._slot_freed(record.name)  # the slot was not used
        self.core.health.clear("submit")
        if existing is not None:
            self._check_repeat(existing, record, idempotency_key)
            log.debug("idempotent repeat of %s %s", record.name, record.id)
            return existing
        self.accepted(record)
        if started is not None:
            claim, begun, unreadable = started
            if self.core.stopping:
                # The engine stopped while the write was under way, and its
                # runs are over: the task waits for the next engine.
                await self._hand_back_started(claim, begun, unreadable=unreadable)
                return record
            self._launch(claim, begun, unreadable)
            if claim.task_id == record.id:
                return record  # nothing more waits because of this submit
        self.wake_for(record.name)
        return record

    def not_accepted(self, exc: BackendError) -> EngineUnavailable:
        """Record a submit's storage fault (any thread); the error its caller gets."""
        self.core.health.fault("submit", exc, hold=HOLD)
        error = EngineUnavailable(
            f"the task was not accepted: storage is failing ({exc})",
            retry_after=self.core.health.retry_after(),
        )
        error.__cause__ = exc
        return error

    def accepted(self, record: TaskRecord) -> None:
        """Count and announce a new task stored (on the engine's loop)."""
        self.core.submitted += 1
        self.core.events.submitted(record.id, record.name)

    async def _hand_back_started(
        self,
        claim: Claim,
        begun: StoredTask | None,
        slotted: bool = True,
        unreadable: str | None = None,
    ) -> None:
        """Give back a task claimed (and started, as ``begun``) by a submit's
        write that returned once the engine had stopped (or, ``slotted``
        False, that found no slot free).  If storage fails here, the claim's
        lease runs out and the next engine re-queues it.  A task whose
        stored record did not read (``unreadable``) is failed instead: its
        start stored a placeholder, which must not wait in the queue as if
        it were the task."""
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_SECONDS):
                if begun is None:
                    await self.core.queue.release(claim.task_id, claim.token)
                elif unreadable is not None:
                    await self.runner.started(claim, begun, unreadable)  # fails it
                else:
                    await self.runner.hand_back(claim, begun.record, counts=False, started=False)
        except BackendError as exc:
            log.warning("task %s: not handed back (%s)", claim.task_id, exc)
        finally:
            if slotted:
                self._slot_freed(claim.name)
            else:
                self.wake_for(claim.name)  # it waits again

    async def _reserve_for(self, record: TaskRecord) -> bool:
        """Take a slot for ``record`` to start in its submit's write, where
        that can be: the backend starts on enqueue, the task is due now and
        not batched, the engine runs, a slot of its name is free, and no
        task may wait that the dispatcher has not claimed (it would go
        first: the dispatcher claims across names in rank order).

        While a dispatch round claims, its claims may fill every free slot:
        a submit that would find one free waits for that claim to return (a
        plain enqueue would need one more round to start it)."""
        name = record.name
        if (
            not self.backend.starts_on_enqueue
            or record.not_before is not None
            or name in self._batchers
        ):
            return False
        while self._claiming is not None and self._has_room(name) and not self._waiting_with_room():
            await self._claiming.wait()
        return (
            not self._waiting_with_room()
            and self._accepting
            and not self.core.stopping
            and self.take(name)
        )

    def may_start_from_thread(self, record: TaskRecord) -> bool:
        """From another thread, a hint: whether ``record``, submitted now,
        would find a slot of its name free, with no dispatch round's claim
        under way (:meth:`wait_for_claim_from_thread` waits for one first)
        and no task of another name waiting for a slot it could take, so
        that its write may start it (see :meth:`adopt_started`).
        Reads plain values that the engine's loop writes: it may be stale,
        never wrong in what it lets happen (the loop takes the slot, or
        hands the task back; a round whose claim it overtook puts back
        what no longer fits).

        Tasks of its own name that may wait do not rule it out: the write
        claims the head of its name's queue, as a round would.  Nor do
        tasks of names at their limits, as for a submit from trio code
        (:meth:`_reserve_for`).  Before, any of these sent the submit to
        the queue, for a round to claim; a thread submitting in a loop
        while earlier tasks ran kept a round going for every two or three
        submits (``docs/decisions.md``)."""
        name = record.name
        if not (
            self.backend.starts_on_enqueue
            and record.not_before is None
            and self._accepting
            and not self.core.stopping
            and not self._any_waiting
            and self._claiming is None
            and name not in self._batchers
            and not self._others_waiting_with_room(name)
        ):
            return False
        # Threads that submit at once count each other's starts, so that
        # they do not all take the same free slot.
        with self._thread_lock:
            starting = self._thread_starts
            if (
                self._total + self._thread_starts_total < self.options.workers
                and self._active[name] + starting[name] < self._limits[name]
            ):
                starting[name] += 1
                self._thread_starts_total += 1
                return True
        return False

    def thread_start_done(self, name: str) -> None:
        """A start :meth:`may_start_from_thread` counted is over: its loop took
        the slot, put the task back, or the write did not start it (any
        thread)."""
        with self._thread_lock:
            self._thread_starts[name] -= 1
            self._thread_starts_total -= 1

    def wait_for_claim_from_thread(self, record: TaskRecord) -> None:
        """From another thread, before :meth:`may_start_from_thread`: while a
        dispatch round's claim is under way and ``record`` would find a slot
        of its name free, wait for that claim to return and be counted (at
        most ``THREAD_CLAIM_WAIT`` seconds), as a submit from trio code does
        (:meth:`_reserve_for`).  The submit then starts in its own write if a
        slot is still free; without the wait it went to the queue, and the
        round it woke kept the next submit waiting in turn (a thread
        submitting in a loop took a round for every two submits)."""
        if (
            self._claiming is not None
            and self.backend.starts_on_enqueue  # else the write cannot start it: no wait
            and record.not_before is None
            and self._has_room(record.name)
        ):
            self._claim_done.wait(THREAD_CLAIM_WAIT)

    def _others_waiting_with_room(self, name: str) -> bool:
        """Whether tasks of a name other than ``name`` may wait unclaimed with
        a slot of theirs free (read from another thread: copies, no writes)."""
        waiting = self._waiting_names
        if not waiting or (len(waiting) == 1 and name in waiting):
            return False
        active, limits = self._active, self._limits
        return any(n != name and active.get(n, 0) < limits.get(n, 0) for n in list(waiting))

    def adopt_started(
        self, record: TaskRecord, claim: Claim, begun: StoredTask | None, unreadable: str | None
    ) -> None:
        """On the loop: the write of ``record`` (a submit from another thread,
        see :meth:`may_start_from_thread`) also claimed and started ``claim``'s
        task (``record`` itself, or one of its name that waited ahead).  It
        runs if a slot of its name is free; else it goes back to the queue."""
        try:
            if self._accepting and not self.core.stopping:
                self._run_or_put_back(claim, begun, unreadable)
            else:
                self.spawn(self._hand_back_started, claim, begun, False, unreadable)
        except RuntimeError:
            # The engine's runs are over (its write came back while it
            # stopped): the claim's lease runs out, and the next engine
            # puts the task back in the queue.
            self.thread_start_done(record.name)
            log.debug("task %s: started by a submit as the engine stopped", claim.task_id)
            return
        self.thread_start_done(record.name)  # after the slot was taken
        if claim.task_id != record.id:
            self.wake_for(record.name)

    def _run_or_put_back(
        self, claim: Claim, begun: StoredTask | None, unreadable: str | None
    ) -> None:
        """Run a task that a claim or a submit's write started, in a free slot
        of its name; with none free, put it back in the queue.  A task whose
        stored record did not read (``unreadable``) is failed at once, slot
        or not: nothing of it runs, and its start stored a placeholder that
        must not wait in the queue as if it were the task."""
        if self.take(claim.name):
            self._launch(claim, begun, unreadable)
        elif unreadable is not None:
            self._active[claim.name] += 1  # for the one write that fails it
            self._total += 1
            self._launch(claim, begun, unreadable)
        else:
            self.spawn(self._hand_back_started, claim, begun, False)

    def check_accepting(self) -> None:
        """Raise :class:`~errands.EngineClosed` unless the engine takes tasks."""
        if not self._accepting:
            raise EngineClosed("the engine is not accepting tasks")

    async def validate(
        self, definition: TaskDefinition, arguments: Mapping[str, Any], from_json: bool
    ) -> dict[str, Any]:
        """The arguments checked and as JSON data (InvalidArguments naming every bad field)."""
        if definition.decodes_images:
            # Decoding an image can take seconds: off the event loop, bounded.
            return await trio.to_thread.run_sync(
                self._validate_images, definition, arguments, from_json
            )
        return definition.validate(arguments, from_json=from_json)

    def new_record(
        self,
        definition: TaskDefinition,
        args: dict[str, Any],
        *,
        now: float,
        priority: int,
        delay: float | None,
        key: str | None,
        retry_of: str | None = None,
    ) -> TaskRecord:
        """A new ``pending`` record (its id derived from ``key`` when given)."""
        options = definition.options
        name = definition.name
        return TaskRecord(
            id=new_task_id() if key is None else idempotent_id(self.service.name, name, key),
            name=name,
            args=args,
            status=PENDING,
            created_at=now,
            max_attempts=max(
                options.max_attempts or self.options.max_attempts, options.retries + 1
            ),
            retries=options.retries,
            priority=priority,
            not_before=now + delay if delay else None,
            retry_of=retry_of,
            ttl=options.ttl or self.options.ttl,
            ttl_success=options.ttl_success,
            ttl_failure=options.ttl_failure,
            ttl_cancelled=options.ttl_cancelled,
        )

    def _check_repeat(self, existing: TaskRecord, record: TaskRecord, key: str | None) -> None:
        if _canonical(existing.args) != _canonical(record.args):
            message = (
                f"the idempotency key {key!r} was used for task {record.id} with other arguments"
            )
            raise InvalidArguments(record.name, [FieldError(path="$", message=message)])

    async def enqueue_idempotent(self, record: TaskRecord, key: str) -> TaskRecord:
        """Enqueue ``record`` whose id derives from ``key``; the live task that
        already holds the id if there is one (InvalidArguments if its
        arguments differ)."""
        existing, _ = await self._enqueue(
            StoredTask.from_record(record), key, record.priority, record.not_before
        )
        if existing is None:
            self.core.submitted += 1
            return record
        self._check_repeat(existing, record, key)
        return existing

    def wake_for(self, name: str) -> None:
        """Tasks of ``name`` were queued: wake whoever claims them."""
        batcher = self._batchers.get(name)
        if batcher is not None:
            batcher.wake()
        else:
            self._waiting_names.add(name)
            self._wake.set()

    def _validate_images(
        self, definition: TaskDefinition, arguments: Mapping[str, Any], from_json: bool
    ) -> dict[str, Any]:
        with pixel_limit(self.options.max_image_pixels):
            return definition.validate(arguments, from_json=from_json)

    def check_caps(self, delay: float | None, idempotency_key: str | None) -> None:
        """Raise LimitExceeded for a delay or an idempotency key over the engine's caps."""
        options = self.options
        if delay is not None and not 0 <= delay <= options.max_delay:
            raise LimitExceeded(
                f"delay must be between 0 and {options.max_delay:g} seconds, got {delay!r}",
                limit="max_delay",
                maximum=options.max_delay,
            )
        if idempotency_key is not None and len(idempotency_key) > options.max_key_length:
            raise LimitExceeded(
                f"the idempotency key is {len(idempotency_key)} characters long; the "
                f"limit is {options.max_key_length}",
                limit="max_key_length",
                maximum=options.max_key_length,
            )

    async def _enqueue(
        self,
        stored: StoredTask,
        idempotency_key: str | None,
        priority: int,
        not_before: float | None,
        *,
        start: bool = False,
        on_stored: Callable[[], None] | None = None,
    ) -> tuple[TaskRecord | None, _Started | None]:
        """Store and queue ``stored``; with an idempotency key, the live record
        that already holds its id, if any (then nothing is stored).  With
        ``start`` (a slot is reserved for it), the task the backend claimed
        and started in the same write, if any (see
        :meth:`Backend.enqueue_and_start`).  ``on_stored``: passed on to a
        backend that reports its writes (``Backend.reports_stored``); to no
        other (one written before the keyword may not take it)."""
        store = self.core.store
        told = _NOT_TOLD
        if on_stored is not None and self.backend.reports_stored:
            told = {"on_stored": on_stored}
        while True:
            if start:
                now = self.core.now()
                unreadable: dict[str, str] = {}
                created, claimed = await self.backend.enqueue_and_start(
                    stored,
                    priority=priority,
                    rank=self.core.rank(priority, not_before),
                    owner=self.owner,
                    now=now,
                    lease_until=now + self.options.lease,
                    starting=self.runner.starting(now, unreadable),
                    **told,
                )
                if claimed is not None:
                    claim, begun = claimed
                    return None, (claim, begun, unreadable.get(claim.task_id))
            else:
                created = await self.backend.enqueue(
                    stored,
                    priority=priority,
                    not_before=not_before or 0.0,
                    rank=self.core.rank(priority, not_before),
                    **told,
                )
            if created:
                return None, None
            if idempotency_key is None:
                raise BackendError(f"task id {stored.id} already exists")  # 2**-128 odds
            existing = await store.get(stored.id)
            now = self.core.now()
            if existing is not None and not existing.record.is_expired(now):
                return existing.record, None
            if existing is not None:
                # Expired: the key may be used anew.  Compare-and-delete, so a
                # concurrent submit's fresh record is never the one deleted.
                await store.delete_expired(stored.id, now)

    async def info(self, task_id: str) -> TaskInfo:
        """The task's :class:`TaskInfo` (with its queue position while pending,
        read with its state in one backend call; a task running here is not
        read: :meth:`load_state`)."""
        record, position = await self.load_state(task_id, position=True)
        return TaskInfo.from_record(record, position=position)

    async def status(self, task_id: str) -> TaskStatus:
        # The record is read (an unreadable one is reported), not its
        # arguments, unless this engine runs the task (load_state); no
        # TaskInfo is built for one status.
        record, _ = await self.load_state(task_id)
        return record.status

    async def result(self, task_id: str) -> Any:
        """The result decoded to the task's return type.

        Raises:
            TaskNotReady, TaskFailed, TaskCancelled, TaskNotFound.
        """
        await trio.lowlevel.checkpoint()
        self.check_open()
        kept = self.kept.take(task_id)
        if kept is not None:  # read along with its end by as_completed
            return self.outcome(task_id, SUCCESS, kept[0], None, kept[1])
        watchers, now = self.core.watchers, self.core.now()
        ended = watchers.ended_as(task_id, now)
        if ended is not None and ended[0] is SUCCESS:
            # This engine stored its success: the result alone is read, when
            # it was too large to keep with the end.
            payload = watchers.kept_result(task_id, now)
            if payload is None:
                payload = await self.core.store.get_result(task_id)
            if payload is not None:
                return self.outcome(task_id, SUCCESS, ended[1], None, payload)
            # Purged meanwhile: the record says so (TaskNotFound).
        task, payload = await self._with_result(task_id)
        status = task.status
        if status is SUCCESS:
            if payload is None:
                raise TaskNotFound(task_id)  # purged meanwhile
            return self.outcome(task_id, status, task.name, None, payload)
        return self.outcome_of(task.without_args(), None)

    def outcome_of(self, record: TaskRecord, payload: Payload | None) -> Any:
        """What :meth:`result` answers for ``record`` (with its stored result
        ``payload`` when it succeeded): the decoded result, or the error.
        Plain code: any thread may call it."""
        error = None if record.error is None else str(record.error)
        return self.outcome(record.id, record.status, record.name, error, payload)

    def outcome(
        self,
        task_id: str,
        status: TaskStatus,
        name: str,
        error: str | None,
        payload: Payload | None,
    ) -> Any:
        """:meth:`outcome_of` from the record's parts (``error``: its text)."""
        if status is SUCCESS:
            assert payload is not None
            definition = self.definitions.get(name)
            try:
                return decode_result(payload, definition.return_type if definition else None)
            except Exception as exc:
                # Stored by another version of the task (its return type changed).
                raise ErrandsError(
                    f"the stored result of task {task_id} does not read as the task's "
                    f"return type: {exc}"
                ) from exc
        if status is FAILURE:
            raise TaskFailed(task_id, str(error))
        if status is CANCELLED:
            raise TaskCancelled(task_id)
        raise TaskNotReady(task_id, status.value)

    async def result_payload(self, task_id: str) -> tuple[StoredTask, Payload | None]:
        """The task as stored (without its arguments, as
        :meth:`result_payloads` reads it) and, for a success, its stored
        result, read in one store call (for adapters); TaskNotFound as
        :meth:`load`.  The payload of a success is None only when it was
        purged meanwhile."""
        await trio.lowlevel.checkpoint()
        return await self._with_result(task_id)

    async def final_outcome(
        self, task_id: str
    ) -> tuple[TaskStatus, TaskError | None, Payload | None]:
        """For adapters: the task's status, its error when it failed, and a
        success's stored result (None only when purged meanwhile), as
        :meth:`result_payload` reads them; TaskNotFound as :meth:`load`.  A
        success this engine ended lately whose result it kept (see
        :meth:`result`) reads nothing."""
        await trio.lowlevel.checkpoint()
        self.check_open()
        payload = self.core.watchers.kept_result(task_id, self.core.now())
        if payload is not None:
            return SUCCESS, None, payload
        task, payload = await self._with_result(task_id)
        status = task.status
        return status, task.without_args().error if status is FAILURE else None, payload

    async def _with_result(self, task_id: str) -> tuple[StoredTask, Payload | None]:
        self.check_open()
        if not is_task_id(task_id):
            raise TaskNotFound(task_id)
        found = (await self.core.store.get_with_results((task_id,))).get(task_id)
        if found is None or found[0].is_expired(self.core.now()):
            raise TaskNotFound(task_id)
        return found

    async def stored_results(self, task_ids: Collection[str]) -> dict[str, Payload]:
        """The stored results of those of ``task_ids`` that have one (successes
        not purged), read together in one store call (for adapters).  The
        small results of successes this engine ended lately (see
        :meth:`result`) are not read."""
        await trio.lowlevel.checkpoint()
        self.check_open()
        found = self.kept_results(task_ids)
        ids = [i for i in task_ids if i not in found and is_task_id(i)]
        if ids:
            found.update(await self.core.store.get_results(ids))
        return found

    def kept_results(self, task_ids: Iterable[str]) -> dict[str, Payload]:
        """The small results of those of ``task_ids`` that are successes this
        engine ended lately, kept with their ends (see :meth:`result`): what
        the store would give, without reading it.  The others are left out.
        For adapters, in the engine's run."""
        kept, now = self.core.watchers.kept_result, self.core.now()
        found: dict[str, Payload] = {}
        for task_id in task_ids:
            payload = kept(task_id, now)
            if payload is not None:
                found[task_id] = payload
        return found

    async def result_payloads(
        self,
        task_ids: Collection[str],
        *,
        wanted: Callable[[str | None], bool] | None = None,
    ) -> dict[str, tuple[StoredTask, Payload | None]]:
        """The stored tasks and, for successes, their stored results, read
        together: one store call (two with ``wanted``), not two per task (a
        batch's results).
        Tasks unknown, expired, with a malformed id, or a success whose
        result is gone (purged meanwhile) are left out.  The tasks are read
        without their arguments (``info()``, ``without_args()`` and the
        scalars; ``record`` may raise), and their records are not decoded
        unless ``wanted`` is given: then a success's result is read only
        when ``wanted(result_type)`` (its media type) says so, else its
        payload is None."""
        await trio.lowlevel.checkpoint()
        self.check_open()
        ids = [task_id for task_id in task_ids if is_task_id(task_id)]
        if not ids:
            return {}
        now = self.core.now()
        if wanted is None:  # records and results in one store call
            return {
                task_id: (task, payload)
                for task_id, (task, payload) in (
                    await self.core.store.get_with_results(ids)
                ).items()
                if not task.is_expired(now) and (payload is not None or task.status is not SUCCESS)
            }
        stored = await self.core.store.get_many(ids, arguments=False)
        found: dict[str, tuple[StoredTask, Payload | None]] = {}
        successes = []
        for task_id in ids:
            task = stored.get(task_id)
            if task is None or task.is_expired(now):
                continue
            found[task_id] = (task, None)
            if task.status is SUCCESS and (
                wanted is None or wanted(task.without_args().result_type)
            ):
                successes.append(task_id)
        if successes:
            payloads = await self.core.store.get_results(successes)
            for task_id in successes:
                payload = payloads.get(task_id)
                if payload is None:
                    del found[task_id]  # purged between the two reads
                else:
                    found[task_id] = (found[task_id][0], payload)
        return found

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        """Block until the task is final; return its status.

        Event-driven for changes made by this engine; for backends shared with
        other processes, it also looks every ``poll_interval`` seconds.

        Raises:
            TimeoutError: not final after ``timeout`` seconds.
            TaskNotFound: unknown or expired id.
        """
        return await _watching.wait_final(self, task_id, timeout)

    async def wait_info(self, task_id: str, timeout: float) -> TaskInfo:
        """The task's :class:`TaskInfo` once it is final, or as it is when
        ``timeout`` seconds passed first (a long poll of its status).  The
        final task that the wait read, or that this engine stored and handed
        to it, is not read again (on a durable backend, a trip to the
        database per long poll).

        Raises:
            TaskNotFound: unknown, expired or malformed id.
        """
        try:
            _, final = await _watching.wait_final_record(self, task_id, timeout)
        except TimeoutError:
            final = None
        if final is None:
            return await self.info(task_id)
        return final.info()

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

    def waiting_set(
        self, task_ids: Collection[str], *, infos: bool = True, keep_results: bool = False
    ) -> _watching.WaitingSet:
        """Many tasks to wait on round after round (``as_completed``): each
        round returns what ended since the last, reading only those (see
        :class:`~errands._watching.WaitingSet`); with ``infos=False`` each
        maps to None and no record is decoded; with ``keep_results``, the
        results of the successes each round returns are read along and kept
        (:attr:`kept`) for their :meth:`result`.  In the engine's trio run;
        close it when done."""
        self.check_open()
        kept = self.kept if keep_results else None
        return _watching.WaitingSet(self, task_ids, infos=infos, kept=kept)

    async def cancel(self, task_id: str) -> TaskStatus:
        """Cancel the task; return its status once it is final (or after a short grace).

        Raises:
            CannotCancel: it already finished, or it is a running sync task
                that was not declared ``cancellable=True``.
            TaskNotFound: unknown or expired id.
        """
        record = await self.load(task_id)
        if record.status is PENDING:
            cancelled = _records.cancelled_pending(record, now=self.core.now())
            if await self.core.store.transition(StoredTask.from_record(cancelled), expect=PENDING):
                await self.core.queue.remove(task_id)
                self.core.finished += 1
                self.core.events.cancelled_waiting(task_id, record.name)
                self.core.watchers.notify(task_id, cancelled)
                return CANCELLED
            record = await self.load(task_id)  # it moved on meanwhile
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
            run = self.runner.running.get(task_id)
            if run is not None and run.claim.token == record.token:
                run.request_stop(Stop.CANCEL)
            else:
                await self.core.queue.request_cancel(task_id)
            try:
                return await self.wait(task_id, timeout=CANCEL_GRACE)
            except TimeoutError:
                return (await self.load(task_id)).status
        if record.status is CANCELLED:
            return CANCELLED
        raise CannotCancel(task_id, record.status.value, "it has already finished")

    async def retry(self, task_id: str) -> TaskRecord:
        """Submit a new task with the same arguments; ``retry_of`` points back.

        Raises:
            TaskNotReady: the task is not final yet.
        """
        record = await self.load(task_id)
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
        now = self.core.now()
        rows = await self.core.store.list(
            name=name, status=status, limit=limit, offset=offset, arguments=False
        )
        return [r.info() for r in rows if not r.is_expired(now)]

    # ------------------------------------------------------------------ dispatcher

    def _wake_dispatcher(self) -> None:
        self._any_waiting = True
        self._wake.set()
        for batcher in self._batchers.values():
            batcher.wake()

    async def _dispatch_round(self) -> None:
        """Claim what is ready and fits the free slots; then wait to be woken
        (or until the next delayed task is due)."""
        self._wake = trio.Event()
        # Cleared here; whatever queues work from now on marks it again, and
        # so does this round for the names it cannot rule out.
        waiting, self._waiting_names = self._waiting_names, set()
        any_waiting, self._any_waiting = self._any_waiting, False
        free = self.options.workers - self._total
        quotas = {
            n: self._limits[n] - self._active[n] for n in self._limits if n not in self._batchers
        }
        quotas = {n: q for n, q in quotas.items() if q > 0}
        timeout = math.inf
        if free <= 0:
            # Nothing is asked: what may have waited still may.
            self._waiting_names |= waiting
            self._any_waiting = self._any_waiting or any_waiting
        elif len(quotas) < self._dispatched:
            # Names at their limits are not asked: what may wait for them
            # still may, claimed when one of their slots frees.
            self._waiting_names.update(
                n
                for n in self._limits
                if n not in quotas and n not in self._batchers and (any_waiting or n in waiting)
            )
        if free > 0 and quotas:
            now = self.core.now()
            # Claimed and started in one backend call where the backend can:
            # a run then starts from the record this call stored.
            unreadable: dict[str, str] = {}
            self._claiming = claiming = trio.Event()
            self._claim_done.clear()
            try:
                try:
                    claims = await self.backend.claim_and_start(
                        owner=self.owner,
                        quotas=quotas,
                        limit=free,
                        now=now,
                        lease_until=now + self.options.lease,
                        starting=self.runner.starting(now, unreadable),
                    )
                except BaseException:
                    self._any_waiting = True  # nothing was learnt: the next round looks
                    raise
                with self.runner.burst():
                    for claim, begun in claims:
                        quotas[claim.name] -= 1
                        # A slot this round counted on may be gone: a batcher's
                        # round, or a submit from a thread that started a task
                        # in its own write, took it while this claim was out.
                        self._run_or_put_back(claim, begun, unreadable.get(claim.task_id))
            finally:
                self._claiming = None
                claiming.set()
                self._claim_done.set()
            if len(claims) >= free:
                self._waiting_names.update(quotas)
                return  # there may be more ready
            # Fewer than asked: nothing more is ready for the names with room
            # left, so ask only when the next delayed one is due.  A name that
            # got all its quota may have more waiting, for its next free slot.
            names = [n for n, q in quotas.items() if q > 0]
            self._waiting_names.update(n for n, q in quotas.items() if q <= 0)
            due = await self.core.queue.next_due(names) if names else None
            if due is not None:
                timeout = max(due - now, 0.001)
        # Storage answered: a fault of an earlier round is over now, not only
        # once this round's wait ends.
        if self.core.health.failing:
            self.core.health.clear("dispatcher")
        if self._wake.is_set():
            return
        if timeout == math.inf:
            await self._wake.wait()
        else:
            with trio.move_on_after(timeout):
                await self._wake.wait()

    def _launch(self, claim: Claim, begun: StoredTask | None, unreadable: str | None) -> None:
        """Run a task claimed in a slot already counted as taken (``begun``,
        ``unreadable``: as :meth:`Runner.run` takes them).  Synchronous: the
        run is admitted here, before its first step, so a cancel that sees
        the task ``in_progress`` finds its run."""
        run = None if begun is None or unreadable else self.runner.admit(claim, begun.record)
        if run is None or not self.runner.call_in_thread(run, self._slot_freed):
            self._runners.start_soon(self._run, claim, begun, unreadable, run)

    async def _watch_changes(self) -> None:
        """One round of the change watcher: what other processes changed in
        the tasks someone waits on (see ``_watching.py``)."""
        poll = self.backend.poll_interval
        assert poll is not None
        changed = await self.backend.changed_tasks()
        read = await self.core.watchers.poll_round(self.core.store, self.core.now, only=changed)
        # A round that read many tasks is followed by a pause in proportion:
        # a backend that cannot tell what changed (diskcache) gets a read of
        # every waited task per round, and a batch of thousands waited on
        # every 0.1 s kept the database busy in proportion to the batch's
        # size (and slowed the batch: 26.7 reads per task for 8,000).  This
        # engine's own changes never wait for a round.
        rest = read / WATCH_READS - poll
        if rest > 0:
            await trio.sleep(rest)
        if changed is not None:
            # A cancel asked in another process, of a task running here.
            await self.upkeep.check_runs(changed)

    async def _watch_backend(self) -> None:
        await self.core.queue.wait_for_work()
        self._wake_dispatcher()

    async def _run(
        self, claim: Claim, begun: StoredTask | None, unreadable: str | None, run: Run | None
    ) -> None:
        try:
            await self.runner.run(claim, begun, unreadable, run)
        finally:
            self._slot_freed(claim.name)

    def _slot_freed(self, name: str) -> None:
        self._active[name] -= 1
        self._total -= 1
        if self._waiting_with_room():
            self._wake.set()
        for batcher in self._batchers.values():
            batcher.slot_freed()
        if not self._total:
            self._idle.set()

    # ------------------------------------------------------------------ slots (for batchers)

    def _waiting_with_room(self) -> bool:
        """Whether tasks that a free slot could run may wait unclaimed."""
        if self._any_waiting:
            return True
        if not self._waiting_names or self._total >= self.options.workers:
            return False
        active, limits = self._active, self._limits
        for name in self._waiting_names:  # noqa: SIM110 (no generator per freed slot)
            if active[name] < limits[name]:
                return True
        return False

    def _has_room(self, name: str) -> bool:
        return self._total < self.options.workers and self._active[name] < self._limits[name]

    def take(self, name: str) -> bool:
        """Reserve a slot of ``name`` if one is free (see ``_batching.Slots``)."""
        if not self._has_room(name):
            return False
        self._active[name] += 1
        self._total += 1
        return True

    def give(self, name: str) -> None:
        self._slot_freed(name)

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        self._runners.start_soon(fn, *args)
