"""Calls from other threads into the engine's trio run, without a round trip each.

A plain thread (a script, a notebook, a Flask view) that talks to an engine
running in ``errands.start()``'s thread would pay, per call, a
``trio.from_thread`` round trip: wake the loop, run there, wake the caller
(about 190 µs on a 2-core machine, measured in ``benchmarks/threadpath.py``).
Two things here avoid it on the paths that matter:

* a :class:`Mailbox` takes items from any thread and hands them to the trio
  run in bursts: one ``run_sync_soon`` wakes the loop for everything put
  until it runs, not one per item;
* the :class:`Handoff` builds on it for submits: the caller's thread checks
  the arguments and builds the record, and the engine stores it when the
  burst arrives.  On a volatile backend (the memory backend, which nothing
  outlives) the submit returns at once; on any other it returns only once
  the record is stored, so "accepted" still means "durable".  Each submitted
  task gets a :class:`Ticket`, which the engine fills in when the task ends,
  so a ``wait()`` from the thread reads it there, or parks on a
  ``threading.Condition`` until the engine fills it in.

Ordering: a call that goes through the engine (``get_status()``, ``cancel()``,
...) first settles every submit handed over before it (:meth:`Handoff.settle`),
so a handle used right after its submit always finds its task.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from ._convert import Payload
from ._errors import BackendError, EngineClosed
from ._model import Claim, StoredTask, TaskRecord
from ._status import TaskStatus
from ._watching import trusted_until

if TYPE_CHECKING:
    from ._define import TaskDefinition
    from ._engine import Engine

__all__ = ["Handoff", "Mailbox", "Ticket"]

log = logging.getLogger("errands.engine")

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Items put from any thread, handed to one trio run in bursts.

    ``receive(items)`` runs on the trio thread (inside a ``run_sync_soon``
    callback: it must not raise, nor block) with every item put since the
    last burst, in the order they were put.
    """

    def __init__(self, token: trio.lowlevel.TrioToken, receive: Callable[[list[T]], None]) -> None:
        self._token = token
        self._receive = receive
        self._items: collections.deque[T] = collections.deque()
        self._scheduled = False

    def put(self, item: T, *, wake: bool = True) -> None:
        """Hand ``item`` over (any thread).  Raises trio.RunFinishedError once
        the trio run has ended.  With ``wake=False`` the trio run is not woken
        for it: it is received with the next burst, at :meth:`wake`, or at
        :meth:`deliver_now`, whichever comes first."""
        self._items.append(item)
        if wake:
            self.wake(quiet=False)

    def wake(self, *, quiet: bool = True) -> None:
        """Have the items put so far received soon (any thread); once the run
        has ended, nothing (or trio.RunFinishedError, when not ``quiet``)."""
        if not self._scheduled and self._items:
            # Two threads may both get here: the second burst finds nothing.
            # The receiving side clears the flag *before* taking the items,
            # so an item put after it took them schedules a new burst.
            self._scheduled = True
            try:
                self._token.run_sync_soon(self._deliver)
            except trio.RunFinishedError:
                self._scheduled = False
                if not quiet:
                    raise

    def _deliver(self) -> None:
        self._scheduled = False
        self.deliver_now()

    @property
    def pending(self) -> bool:
        """Whether items were put and not delivered yet."""
        return bool(self._items)

    def deliver_now(self) -> None:
        """Receive what is waiting now (on the trio thread)."""
        items: list[T] = []
        take = self._items.popleft
        while True:
            try:
                items.append(take())
            except IndexError:
                break
        if items:
            self._receive(items)

    def drop(self) -> list[T]:
        """Take back everything not delivered (the trio run ended)."""
        items = list(self._items)
        self._items.clear()
        return items


class Ticket:
    """What the submitting thread knows of its task once this engine ended
    it: its final status (trusted until shortly before its expiry, as the
    engine's own remembered ends are: :func:`~errands._watching.trusted_until`),
    name and error text, and its result's media type and bytes for a
    success; or ``woken`` when the engine moved it on otherwise (handed
    back, engine stopped): then the engine itself is asked.

    Plain values, not the final record and result objects: a script keeps
    its handles, and every object a handle holds is walked by each full
    garbage collection while it does."""

    __slots__ = (
        "data",
        "error",
        "media_type",
        "name",
        "parked",
        "status",
        "trusted_until",
        "woken",
    )

    def __init__(self) -> None:
        self.status: TaskStatus | None = None  # set once ended here
        self.trusted_until = 0.0
        self.name = ""
        self.error: str | None = None
        self.media_type: str | None = None
        self.data: bytes | None = None
        self.woken = False
        #: Where threads waiting for this ticket's end park (made by the
        #: first to park): an end wakes only the threads waiting for it.
        self.parked: threading.Condition | None = None


class _Reply:
    """The answer to a submit whose caller waits for the write (durable
    backends).  Sent once: from the backend's thread as soon as the write is
    durable (``Backend.reports_stored``), else from the engine's loop; a
    second send (the loop's, after the backend's) changes nothing."""

    __slots__ = ("_lock", "error", "record")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.record: TaskRecord | None = None
        self.error: BaseException | None = None

    def send(self, record: TaskRecord | None, error: BaseException | None) -> None:
        if self.record is None and self.error is None:
            self.record, self.error = record, error
            self._lock.release()

    def wait(self) -> TaskRecord:
        self._lock.acquire()
        if self.error is not None:
            raise self.error
        assert self.record is not None
        return self.record


_Item = tuple[TaskRecord, Ticket, "_Reply | None"]
#: What a backend that stores from threads tells the engine's loop after the
#: write: the task stored, with its ticket, and what the write claimed and
#: started, if it did (the claim, the started record, an unreadable one's error).
_Started = tuple[Claim, "StoredTask | None", "str | None"]
_Stored = tuple[TaskRecord, Ticket, "_Started | None"]


class Handoff:
    """Submits from other threads, handed to one engine in bursts (see the
    module docstring).  Made in the engine's trio run; ``spawn`` starts a
    coroutine function there (in a nursery that outlives each call)."""

    def __init__(self, engine: Engine, spawn: Callable[..., None]) -> None:
        self._engine = engine
        self._spawn = spawn
        #: Whether the accepted record is as safe as it will be once the
        #: engine has it (then a submit need not wait for the write), and
        #: every change to its tasks is this engine's (then a wait may park
        #: on its ticket alone).
        self.volatile = engine.backend.volatile
        #: Whether a submit is stored by the backend from the caller's
        #: thread (``Backend.enqueues_from_threads``), the engine's loop
        #: told after the write, rather than handed to the loop first.
        self.direct = not self.volatile and engine.backend.enqueues_from_threads
        #: Guards the tickets' ends; a thread that waits for one parks on
        #: that ticket's own condition of this lock (see :class:`Ticket`).
        self._lock = threading.Lock()
        token = trio.lowlevel.current_trio_token()
        self._mailbox: Mailbox[_Item] = Mailbox(token, self._receive)
        self._stored: Mailbox[_Stored] = Mailbox(token, self._were_stored)
        self._busy = 0  # bursts being stored (trio thread only)
        self._settled = trio.Event()
        self._settled.set()
        engine.core.watchers.on_end = self._ended

    # ------------------------------------------------------------------ the caller's thread

    def submit(
        self,
        definition: TaskDefinition,
        arguments: dict[str, Any],
        *,
        priority: int,
        delay: float | None,
    ) -> tuple[TaskRecord, Ticket]:
        """Check, build and hand over a new task (the caller's thread).

        Raises what :meth:`Engine.submit` raises (InvalidArguments,
        LimitExceeded, EngineClosed, EngineUnavailable).
        """
        engine = self._engine
        engine.check_accepting()
        args = definition.validate(arguments, from_json=False)
        engine.check_caps(delay, None)
        record = engine.new_record(
            definition, args, now=engine.core.now(), priority=priority, delay=delay, key=None
        )
        ticket = Ticket()
        if self.direct:
            return self._store_here(record, ticket), ticket
        reply = None if self.volatile else _Reply()
        try:
            self._mailbox.put((record, ticket, reply))
        except trio.RunFinishedError:
            raise EngineClosed("the engine has stopped") from None
        if reply is not None:
            record = reply.wait()
        return record, ticket

    def _store_here(self, record: TaskRecord, ticket: Ticket) -> TaskRecord:
        """Have the backend store ``record`` (its own thread answers, once
        the write is durable) and tell the engine's loop after: no trip
        through the loop before the write (the caller's thread)."""
        engine = self._engine
        backend = engine.backend
        reply = _Reply()
        stored = self._stored
        unreadable: dict[str, str] = {}

        def answer(created: bool | BackendError, started: _Started | None = None) -> None:
            # On the backend's thread.  The loop is woken for the task by
            # ``stored.wake``, passed as the write's ``then``: the backend
            # calls it when it slows the submitter's next write least; a
            # call of this thread into the engine receives it before that.
            if created is True:
                engine.core.health.clear("submit")
                stored.put((record, ticket, started), wake=False)
                reply.send(record, None)
                return
            if not isinstance(created, BackendError):
                created = BackendError(f"task id {record.id} already exists")  # 2**-128 odds
            reply.send(None, engine.not_accepted(created))

        def answer_started(
            answered: tuple[bool, tuple[Claim, StoredTask | None] | None] | BackendError,
        ) -> None:
            if isinstance(answered, BackendError):
                engine.thread_start_done(record.name)
                answer(answered)
                return
            created, claimed = answered
            if claimed is not None and created is True:
                claim, begun = claimed
                # The loop counts it done once it took the slot (adopt_started).
                answer(created, (claim, begun, unreadable.get(claim.task_id)))
            else:
                engine.thread_start_done(record.name)
                answer(created)

        task = StoredTask.from_record(record)
        rank = engine.core.rank(record.priority, record.not_before)
        try:
            # Started in its own write when the engine looks free for it.
            engine.wait_for_claim_from_thread(record)
            now = engine.core.now()
            starts = engine.may_start_from_thread(record)
            if starts:
                try:
                    starts = backend.enqueue_and_start_from_thread(
                        task,
                        priority=record.priority,
                        rank=rank,
                        owner=engine.owner,
                        now=now,
                        lease_until=now + engine.options.lease,
                        starting=engine.runner.starting(now, unreadable),
                        answer=answer_started,
                        then=stored.wake,
                    )
                finally:
                    if not starts:
                        engine.thread_start_done(record.name)
            if not starts:
                backend.enqueue_from_thread(
                    task,
                    priority=record.priority,
                    not_before=record.not_before or 0.0,
                    rank=rank,
                    answer=answer,
                    then=stored.wake,
                )
        except BackendError as exc:  # it takes no more writes: closed, or closing
            engine.check_accepting()
            raise engine.not_accepted(exc) from exc
        return reply.wait()

    def wait(self, ticket: Ticket, timeout: float | None) -> TaskStatus | None:
        """The task's final status from its ticket, parking until the engine
        ends it when the backend is volatile; None when the engine must be
        asked (not final here yet, expired, or woken without an answer).
        Raises TimeoutError when ``timeout`` passes first."""
        if ticket.status is None and not ticket.woken:
            if not self.volatile:
                return None  # another process may end it: the engine watches for that
            with self._lock:
                parked = ticket.parked
                if parked is None:
                    parked = ticket.parked = threading.Condition(self._lock)
                ended = parked.wait_for(lambda: ticket.status is not None or ticket.woken, timeout)
            if not ended:
                raise TimeoutError
        return self.final(ticket)

    def final(self, ticket: Ticket) -> TaskStatus | None:
        """The task's final status from its ticket while trusted (after that
        the engine is asked, and says TaskNotFound once it expired), or None
        when not known here."""
        status = ticket.status
        if status is None or ticket.trusted_until <= self._engine.core.now():
            return None
        return status

    def outcome(self, ticket: Ticket, task_id: str) -> tuple[bool, Any]:
        """``(True, result)`` for a task that ended here, decoded in this
        thread (or raising its TaskFailed, TaskCancelled); ``(False, None)``
        when the engine must be asked."""
        status = self.final(ticket)
        if status is None:
            return False, None
        payload = None
        if status is TaskStatus.SUCCESS:
            if ticket.data is None or ticket.media_type is None:
                return False, None
            payload = Payload(media_type=ticket.media_type, data=ticket.data)
        return True, self._engine.outcome(task_id, status, ticket.name, ticket.error, payload)

    # ------------------------------------------------------------------ the trio thread

    @property
    def unsettled(self) -> bool:
        """Whether submits were handed over and are not stored yet, or were
        stored by the backend and not taken in yet."""
        return self._busy > 0 or self._mailbox.pending or self._stored.pending

    async def settle(self) -> None:
        """Store every submit handed over so far (what a call from a thread
        does first, so a handle finds its task), and take in those the
        backend stored from their threads."""
        self._stored.deliver_now()
        self._mailbox.deliver_now()
        while self._busy:
            await self._settled.wait()

    def _were_stored(self, items: list[_Stored]) -> None:
        # On the trio thread, in a run_sync_soon callback: must not raise.
        # Each was stored before this runs, and before any claim of it can
        # reach this loop (the backend answers its calls in order).
        engine = self._engine
        ends = engine.core.watchers.ends
        with engine.runner.burst():
            for record, ticket, started in items:
                ends[record.id] = ticket
                engine.accepted(record)
                if started is None:
                    engine.wake_for(record.name)
                else:
                    engine.adopt_started(record, *started)

    def _receive(self, items: list[_Item]) -> None:
        # On the trio thread, in a run_sync_soon callback: must not raise.
        watchers = self._engine.core.watchers
        for record, ticket, _ in items:
            # Before the task is stored: its end cannot come before this.
            watchers.ends[record.id] = ticket
        if self._busy == 0:
            self._settled = trio.Event()
        self._busy += 1
        try:
            self._spawn(self._store, items)
        except RuntimeError as exc:  # closing: nothing more starts
            self._busy -= 1
            if not self._busy:
                self._settled.set()
            self._fail(items, exc)

    async def _store(self, items: list[_Item]) -> None:
        try:
            if self.volatile:
                # Nothing to wait for: one after another, in order.
                for record, ticket, _ in items:
                    await self._accept(record, ticket, None)
            elif len(items) == 1:
                # One submit (a thread that submits one at a time): nothing
                # to commit together, so no nursery and no task of its own.
                await self._accept(*items[0])
            else:
                # Concurrent writes, so the backend can commit them together.
                async with trio.open_nursery() as nursery:
                    for record, ticket, reply in items:
                        nursery.start_soon(self._accept, record, ticket, reply)
        finally:
            self._busy -= 1
            if not self._busy:
                self._settled.set()

    async def _accept(self, record: TaskRecord, ticket: Ticket, reply: _Reply | None) -> None:
        # A durable backend that reports its commit answers the submitter
        # from its own thread, without waiting for this loop to wake.
        # (Ordering holds: the submitter's next call into the engine settles
        # this burst first.)
        on_stored = None if reply is None else functools.partial(reply.send, record, None)
        try:
            await self._engine.accept(record, on_stored=on_stored)
        except BaseException as exc:
            self._engine.core.watchers.ends.pop(record.id, None)
            if reply is not None:
                error = exc if isinstance(exc, Exception) else EngineClosed("the engine stopped")
                reply.send(None, error)
            else:
                # The caller has its handle already (memory backend): the
                # task is lost, as every waiting task is when it stops.
                if isinstance(exc, Exception):
                    log.exception("task %s %s was not accepted", record.name, record.id)
                self._ended(ticket, None)
            if not isinstance(exc, Exception):
                raise
        else:
            if reply is not None:
                reply.send(record, None)

    def _ended(
        self, ticket: Ticket, final: TaskRecord | None, result: Payload | None = None
    ) -> None:
        with self._lock:
            if final is not None and final.status.is_final:
                ticket.name = final.name
                ticket.trusted_until = trusted_until(final)
                ticket.error = None if final.error is None else str(final.error)
                if result is not None:
                    ticket.media_type, ticket.data = result.media_type, result.data
                ticket.status = final.status
            else:
                ticket.woken = True
            parked = ticket.parked
            if parked is not None:  # only its own waiters wake
                parked.notify_all()
                ticket.parked = None  # they hold it while they wake; a handle keeps no lock

    def _fail(self, items: list[_Item], exc: Exception) -> None:
        log.debug("submits not taken (%s): the engine is stopping", exc)
        for record, _, _ in items:
            self._engine.core.watchers.ends.pop(record.id, None)
        self._closed_on(items)

    def abandon(self) -> None:
        """The trio run ended: answer what it never took (any thread)."""
        self._closed_on(self._mailbox.drop())

    def _closed_on(self, items: list[_Item]) -> None:
        """Tell the submitters of ``items``, never stored, that the engine stopped."""
        for _, ticket, reply in items:
            if reply is not None:
                reply.send(None, EngineClosed("the engine has stopped"))
            self._ended(ticket, None)
