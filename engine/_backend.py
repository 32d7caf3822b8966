"""The storage interfaces a backend implements: :class:`Queue` and :class:`Store`.

**The invariant.** At every moment between two backend calls, every task
the engine accepted is in exactly one of these states:

* final (``success``, ``failure``, ``cancelled``) until it expires;
* ``pending`` with a queue entry (waiting, or claimed by a worker that has
  not started it yet);
* ``in_progress`` under a live claim: a queue entry claimed with the
  record's own fencing token.

The engine keeps it by three rules: a claim may start a task only while it
still holds it (:meth:`Backend.begin`, one atomic step); every other change
of an ``in_progress`` record is a compare-and-set on status and token; and
the upkeep repairs what a crash between two calls leaves (a ``pending``
record without an entry is queued again, an expired claim or an
``in_progress`` record without an entry is re-queued or failed).
``tests/engine/test_invariant.py`` checks it under random workloads.

The engine treats the **store as the truth** and the **queue as a to-do list
it checks against the store**.  Every state change is a compare-and-set on the
store, and every queue entry the engine claims is validated by such a
compare-and-set before anything runs.  That is what makes crashes between two
backend calls harmless: a queue entry whose record is no longer ``pending`` is
dropped, and a ``pending`` record whose queue entry was lost is put back by
the engine's reconciliation.  Backends therefore need atomicity only *within*
each call, never across calls.

All methods are async and must be cancel points on every path (at least
``trio.lowlevel.checkpoint_if_cancelled()``); a backend that blocks or does
I/O is a full checkpoint anyway.  The engine's public methods are full
checkpoints themselves, so a backend that only touches memory need not yield.
A call cancelled before it returns may or may not have taken effect, but
never half: each call is atomic.  Backends raise :class:`~errands.BackendError` when their storage
is unusable; they raise nothing for ordinary refusals (those return ``False``
or ``None``).
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Callable, Collection, Mapping, Sequence

import trio

from ._convert import Payload
from ._errors import BackendError
from ._model import Claim, StoredTask
from ._status import TaskStatus, check_transition

__all__ = ["Backend", "NewestEnds", "Queue", "Renewal", "Store", "start_record"]

#: Members read per step by :meth:`Store.batch_counts`'s default.
_COUNT_CHUNK = 500

#: What :meth:`Store.newest_ends` returns: ``(status, expires_at, finished_at)``
#: of each of the newest records.
NewestEnds = list[tuple[TaskStatus, float | None, float | None]]


def start_record(
    starting: Callable[[Claim, StoredTask], StoredTask], claim: Claim, pending: StoredTask
) -> StoredTask | None:
    """``starting(claim, pending)`` for :meth:`Backend.claim_and_start`, checked
    to be an ``in_progress`` record; None if it raised (anything: the
    caller's :meth:`Backend.start` calls it again, and raises it there)."""
    try:
        begun = starting(claim, pending)
        check_transition(TaskStatus.PENDING, begun.status)
    except Exception:
        return None
    return begun


class Renewal(enum.Enum):
    """The answer to :meth:`Queue.renew`."""

    #: The claim is still ours and now lives until the new deadline.
    RENEWED = "renewed"
    #: The claim is gone or belongs to a newer token: stop, write nothing.
    LOST = "lost"
    #: Still ours, renewed, and somebody asked for the task to be cancelled.
    CANCEL_REQUESTED = "cancel_requested"


class Queue(abc.ABC):
    """The waiting line of task ids, with leased claims and fencing tokens.

    An entry is *waiting* (put, not claimed) or *claimed* (held by an owner
    until its lease runs out).  Ready means waiting with ``not_before <= now``.

    **Claim order** among ready entries: lowest ``rank`` first, then the
    order of ``put`` (or ``release``: a released entry goes behind every
    entry of the same rank put before its release).  The queue never computes
    a rank: the engine gives one with each ``put`` and ``release`` (see
    ``engine/_aging.py``: priority aging is the engine's rule, backends only
    sort by its key).  A rank of None means ``-priority``, which orders by
    higher ``priority`` first, then put order.  :meth:`position` counts in
    the same order.
    """

    @abc.abstractmethod
    async def put(
        self,
        task_id: str,
        *,
        name: str,
        priority: int = 0,
        not_before: float = 0.0,
        rank: float | None = None,
    ) -> None:
        """Add ``task_id`` as waiting, ordered by ``rank`` (None: ``-priority``).

        Idempotent: no change (not even to its rank) if it is already queued,
        waiting or claimed.
        """

    @abc.abstractmethod
    async def claim(
        self,
        *,
        owner: str,
        quotas: Mapping[str, int],
        limit: int,
        now: float,
        lease_until: float,
    ) -> list[Claim]:
        """Claim up to ``limit`` ready entries, at most ``quotas[name]`` of each
        listed name (names not listed are not claimed), best first.

        Each claim gets a fencing token larger than any token this queue gave
        before.  Claimed entries stop being waiting; they are not removed.
        If it raises ``Cancelled``, nothing was claimed (a claim nobody saw
        would sit unrun until its lease ran out): once begun, it finishes.
        """

    @abc.abstractmethod
    async def renew(self, task_id: str, token: int, *, lease_until: float) -> Renewal:
        """Extend the claim ``(task_id, token)``; see :class:`Renewal` for the answers."""

    async def renew_many(
        self, claims: Sequence[tuple[str, int]], *, lease_until: float
    ) -> list[Renewal]:
        """:meth:`renew` for several ``(task_id, token)`` claims; answers in order.

        The default calls :meth:`renew` once per claim; backends that can do
        it in one step should.
        """
        return [await self.renew(i, t, lease_until=lease_until) for i, t in claims]

    @abc.abstractmethod
    async def ack(self, task_id: str, token: int) -> bool:
        """Remove the claimed entry if it is still held with ``token``."""

    @abc.abstractmethod
    async def release(
        self, task_id: str, token: int, *, not_before: float = 0.0, rank: float | None = None
    ) -> bool:
        """Make the claimed entry waiting again, if still held with ``token``.

        It keeps its priority and takes ``rank`` (None: ``-priority``) and a
        new place in put order, as if put now.  False (and no change) if the
        entry is not held with ``token``.
        """

    @abc.abstractmethod
    async def remove(self, task_id: str) -> bool:
        """Remove a *waiting* entry.  False (and no change) if it is claimed or absent."""

    @abc.abstractmethod
    async def request_cancel(self, task_id: str) -> bool:
        """Flag a *claimed* entry so its holder's next :meth:`renew` answers
        ``CANCEL_REQUESTED``.  False if the entry is not claimed."""

    @abc.abstractmethod
    async def expired(self, now: float) -> list[Claim]:
        """Claims whose lease ran out (``lease_until <= now``); they stay until
        acked or released."""

    @abc.abstractmethod
    async def contains(self, task_id: str) -> bool:
        """True if ``task_id`` is queued, waiting or claimed."""

    @abc.abstractmethod
    async def next_due(self, names: Sequence[str]) -> float | None:
        """The smallest ``not_before`` among waiting entries of these names, or None."""

    @abc.abstractmethod
    async def depth(self, name: str | None = None) -> int:
        """How many entries are waiting (of ``name``, or of all names)."""

    @abc.abstractmethod
    async def position(self, task_id: str) -> int | None:
        """How many waiting entries of the same name would be claimed before this
        one, or None if it is not waiting.  Exact, except that a backend may
        answer far back in a deep queue from its order of a moment before
        (the diskcache backend: at most a second old, by default)."""

    async def wait_for_work(self) -> None:
        """Block until another engine may have put or released work.

        The default never returns (a queue only one engine uses needs no
        notice); backends shared between processes return after a poll
        interval or on a notification.  Cancellation is the only way out of
        the default.
        """
        await trio.sleep_forever()


class Store(abc.ABC):
    """Task records and results, changed only by compare-and-set.

    Reads never delete.  Expiry is the engine's business (an expired record
    reads as not found before any purge runs); the store just deletes what
    :meth:`purge_expired` is asked to.
    """

    @abc.abstractmethod
    async def create(self, task: StoredTask) -> bool:
        """Store a new record.  False (and no change) if the id exists."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> StoredTask | None:
        """The record, or None."""

    async def get_state(self, task_id: str) -> StoredTask | None:
        """The record without its arguments where this backend keeps them
        apart (as ``get_many(..., arguments=False)`` reads it), or None:
        for what reads a status or :meth:`StoredTask.without_args` alone
        (arguments may be megabytes).  The default calls :meth:`get_many`."""
        return (await self.get_many((task_id,), arguments=False)).get(task_id)

    async def get_many(
        self, task_ids: Collection[str], *, arguments: bool = True
    ) -> dict[str, StoredTask]:
        """The records of those ``task_ids`` that exist, by id (missing ones left out).

        A read of many records for waiters on many tasks.  The default calls
        :meth:`get` for each id; backends that can read them in one go
        override it.  Records may be read at slightly different moments.
        ``arguments=False``: as for :meth:`list`.
        """
        await trio.lowlevel.checkpoint()
        found: dict[str, StoredTask] = {}
        for task_id in task_ids:
            task = await self.get(task_id)
            if task is not None:
                found[task_id] = task
        return found

    @abc.abstractmethod
    async def transition(
        self,
        task: StoredTask,
        *,
        expect: TaskStatus,
        token: int | None = None,
        result: Payload | None = None,
    ) -> bool:
        """Replace the record of ``task.id`` with ``task``, atomically, if the stored
        one is in status ``expect`` and (unless ``token`` is None) holds fencing
        token ``token``.  ``result``, if given, is saved in the same step.

        Returns False, changing nothing, when the record is missing or does not
        match.  Raises :class:`~errands.InvalidTransition` when ``expect ->
        task.status`` is not a move of the state machine.
        """

    @abc.abstractmethod
    async def get_result(self, task_id: str) -> Payload | None:
        """The stored result, or None."""

    async def get_results(self, task_ids: Collection[str]) -> dict[str, Payload]:
        """The stored results of those of ``task_ids`` that have one, read
        together (a batch's results).  This default reads one at a time; a
        backend that can read many in one step overrides it."""
        found = {}
        for task_id in task_ids:
            payload = await self.get_result(task_id)
            if payload is not None:
                found[task_id] = payload
        return found

    async def get_with_results(
        self, task_ids: Collection[str]
    ) -> dict[str, tuple[StoredTask, Payload | None]]:
        """The stored tasks of those of ``task_ids`` that exist, each with its
        stored result when it has one (a success), read together: a
        ``get()`` of a task, a batch's results.  The tasks are read as
        :meth:`get_many` with ``arguments=False`` reads them (what a result
        or an error needs is never the arguments, which may be megabytes).
        This default is :meth:`get_many` then :meth:`get_results`; a
        backend that reads a record and its result in one step overrides
        it."""
        tasks = await self.get_many(task_ids, arguments=False)
        successes = [i for i, task in tasks.items() if task.status is TaskStatus.SUCCESS]
        results = await self.get_results(successes) if successes else {}
        return {i: (task, results.get(i)) for i, task in tasks.items()}

    @abc.abstractmethod
    async def delete(self, task_id: str) -> bool:
        """Delete the record and its result.  False if there was none."""

    @abc.abstractmethod
    async def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        arguments: bool = True,
    ) -> list[StoredTask]:
        """Records, newest first, filtered by name and status.

        ``arguments=False``: the caller reads each task's scalars and
        :meth:`StoredTask.info` only (a listing to show); a backend that
        stores arguments apart may leave them unread, and such a task's
        ``record`` then raises.  Other backends ignore it.
        """

    async def newest_ends(self, limit: int) -> NewestEnds:
        """``(status, expires_at, finished_at)`` of the newest ``limit``
        records, newest first (as :meth:`list` orders them): what a summary
        of recent work (the dashboard's counts and chart) needs.  This
        default reads the records without their arguments; a backend whose
        records are encoded may override it to read these three values
        without decoding them."""
        return [
            (task.status, task.expires_at, task.without_args().finished_at)
            for task in await self.list(limit=limit, arguments=False)
        ]

    @abc.abstractmethod
    async def purge_expired(self, now: float) -> int:
        """Delete records (and results) with ``expires_at <= now``; return how many."""

    async def delete_expired(self, task_id: str, now: float) -> bool:
        """Delete the record of ``task_id`` (and its result) only if it has expired
        by ``now`` (``expires_at <= now``); a compare-and-delete.

        False, changing nothing, when the record is missing or not expired.
        The default reads, then deletes: not atomic.  Backends shared between
        engines must override it with one atomic step.
        """
        task = await self.get(task_id)
        if task is None or task.expires_at is None or task.expires_at > now:
            return False
        return await self.delete(task_id)

    async def add_batch_members(self, batch_id: str, members: Sequence[tuple[int, str]]) -> None:
        """Record ``(position, task_id)`` pairs as members of batch ``batch_id``.

        Positions order the members; they need not be consecutive (an item
        refused at submit leaves a gap).  Idempotent: a position recorded
        again keeps its task id.  A batch
        lists every member (a purged one reads as not found) until the last
        of its members' records is deleted; then the batch is gone too.
        Backends that support
        bulk submit (:meth:`Backend.enqueue_many`) implement this and
        :meth:`batch_members`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not record batches")

    async def batch_members(
        self, batch_id: str, *, offset: int = 0, limit: int | None = None
    ) -> Sequence[tuple[int, str]]:
        """The ``(position, task_id)`` members of batch ``batch_id`` in position
        order, skipping the first ``offset`` members, then at most ``limit``
        of them; [] for an unknown batch."""
        raise NotImplementedError(f"{type(self).__name__} does not record batches")

    async def batch_counts(self, batch_id: str, *, now: float) -> dict[str, int]:
        """How many members of batch ``batch_id`` are in each status: a key
        per status value, ``total`` (every member), and ``expired`` for
        members whose record is gone or whose expiry is at or before ``now``
        (only when there are any).  All zero for an unknown batch.

        Reads each member's stored status and expiry, never its record.
        This default reads the members and their tasks in chunks; a backend
        that can count in one query overrides it.
        """
        counts = dict.fromkeys((s.value for s in TaskStatus), 0)
        total = 0
        while True:
            members = await self.batch_members(batch_id, offset=total, limit=_COUNT_CHUNK)
            if not members:
                break
            ids = [task_id for _, task_id in members]
            found = await self.get_many(ids, arguments=False)
            for task_id in ids:
                task = found.get(task_id)
                if task is None or task.is_expired(now):
                    counts["expired"] = counts.get("expired", 0) + 1
                else:
                    counts[task.status.value] += 1
            total += len(ids)
        counts["total"] = total
        return counts


class Backend(abc.ABC):
    """One queue and one store that share a storage, plus their lifecycle.

    Attributes:
        queue: the :class:`Queue`.
        store: the :class:`Store`.
        poll_interval: None when only the engine using this object changes
            its storage; otherwise the seconds between the engine's looks for
            changes it did not make (other processes' results, cancel
            requests).
    """

    queue: Queue
    store: Store
    poll_interval: float | None = None
    #: True when the storage is this process's memory, used by one engine:
    #: a task is as safe once the engine holds it as it will ever be, and
    #: only that engine changes it.  Then a submit from another thread
    #: returns before the write, and waits park without asking the engine.
    volatile: bool = False
    #: True when :meth:`finish_now` stores a run's end at once (the
    #: backends that implement it say so); the engine calls it only then.
    finishes_now: bool = False
    #: True when :meth:`finish_soon` begins a run's end without a coroutine
    #: (the backends that implement it say so); the engine calls it only then.
    finishes_soon: bool = False
    #: True when :meth:`enqueue_and_start` claims and starts (the backends
    #: that override it say so); the engine calls it only then.
    starts_on_enqueue: bool = False
    #: True when :meth:`enqueue` and :meth:`enqueue_and_start` call their
    #: ``on_stored`` (the backends that do say so; the engine passes it only
    #: then): with no argument, from any thread, as soon as the created task
    #: is as durable as the backend promises, before the call returns.  A
    #: submit from another thread then returns without waiting for the
    #: engine's loop to hear of the write.
    reports_stored: bool = False
    #: True when :meth:`enqueue_from_thread` works (the backends that
    #: implement it say so): a submit from another thread is then stored by
    #: the backend without a trip through the engine's loop.
    enqueues_from_threads: bool = False

    def enqueue_from_thread(
        self,
        task: StoredTask,
        *,
        priority: int,
        not_before: float,
        rank: float | None,
        answer: Callable[[bool | BackendError], object],
        then: Callable[[], object] | None = None,
    ) -> None:
        """From any thread but the engine's loop: start :meth:`enqueue` of
        ``task`` and return without waiting.  ``answer`` is then called once,
        from a thread of the backend's, with whether the task was created
        (False: the id existed, nothing done), as soon as it is as durable as
        the backend promises, or with the BackendError that stopped the
        write (then nothing was stored).  It must be quick and must not
        raise.  Raises BackendError at once (and neither ``answer`` nor
        ``then`` is ever called) when the backend cannot take the write (it
        is closed).

        ``then``, if given, is called once after ``answer``, from a thread of
        the backend's, with the same rules: the engine tells its loop of the
        write there, which it wants done soon but need not be done before
        the submitter goes on.  A backend may call it right after ``answer``,
        or a little later where that keeps the submitter's next write from
        waiting (the diskcache backend runs it right before its next commit,
        whose fsync leaves the interpreter free, or once it has nothing else
        to do).

        Only backends that set ``enqueues_from_threads`` implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not enqueue from threads")

    def enqueue_and_start_from_thread(
        self,
        task: StoredTask,
        *,
        priority: int,
        rank: float | None,
        owner: str,
        now: float,
        lease_until: float,
        starting: Callable[[Claim, StoredTask], StoredTask],
        answer: Callable[
            [tuple[bool, tuple[Claim, StoredTask | None] | None] | BackendError], object
        ],
        then: Callable[[], object] | None = None,
    ) -> bool:
        """:meth:`enqueue_and_start` as :meth:`enqueue_from_thread` starts
        :meth:`enqueue`: from any thread, without waiting; ``answer`` gets
        what :meth:`enqueue_and_start` returns, or the BackendError, and
        ``then`` follows it as there.  False (nothing done, neither called)
        when it cannot be done here now: then :meth:`enqueue_from_thread`
        can.  Raises as :meth:`enqueue_from_thread`.  The default says False.
        """
        return False

    async def enqueue(
        self,
        task: StoredTask,
        *,
        priority: int,
        not_before: float,
        rank: float | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> bool:
        """Create the record and put its id on the queue (as :meth:`Queue.put`
        with these ``priority``, ``not_before`` and ``rank``); False (and
        nothing done) if the id already exists.  ``on_stored``: see
        ``reports_stored`` (ignored here).

        If it raises ``Cancelled``, nothing was created: once the write has
        begun it finishes and the call returns.  The default runs the two calls
        shielded, store first (a crash between them leaves a pending record
        that the engine's reconciliation re-queues); backends that can do both
        in one atomic step override it.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):
            if not await self.store.create(task):
                return False
            await self.queue.put(
                task.id, name=task.name, priority=priority, not_before=not_before, rank=rank
            )
        return True

    async def enqueue_and_start(
        self,
        task: StoredTask,
        *,
        priority: int,
        rank: float | None = None,
        owner: str,
        now: float,
        lease_until: float,
        starting: Callable[[Claim, StoredTask], StoredTask],
        on_stored: Callable[[], None] | None = None,
    ) -> tuple[bool, tuple[Claim, StoredTask | None] | None]:
        """:meth:`enqueue` a task that is due now, then, only if it was
        created, :meth:`claim_and_start` one task of its name for ``owner``
        (``quotas={task.name: 1}``, ``limit=1``), in the same step: whether it
        was created, and the claim with its started record (or None when
        nothing was claimed).

        The claim is the one a dispatch round would make right after the
        enqueue: the new task itself unless an older or higher-ranked ready
        task of the same name waits, which is then claimed instead.  Used by
        a submit that finds a free slot, so that the task starts in the
        submit's own write instead of a dispatch round's.

        If it raises ``Cancelled``, nothing was created or claimed: once the
        write has begun it finishes and the call returns.  The default
        enqueues only and claims nothing (``starts_on_enqueue`` is False, so
        the engine calls :meth:`enqueue`); backends that can do both in one
        atomic step override it and set ``starts_on_enqueue``.  ``on_stored``:
        as for :meth:`enqueue`.
        """
        created = await self.enqueue(task, priority=priority, not_before=0.0, rank=rank)
        return created, None

    async def enqueue_many(
        self,
        tasks: Sequence[StoredTask],
        *,
        priority: int,
        not_before: float,
        rank: float | None = None,
        batch_id: str,
        positions: Sequence[int],
    ) -> list[bool]:
        """:meth:`enqueue` for several tasks of batch ``batch_id``, recording
        each as its member at the matching ``positions`` entry (its index in
        the submission); one answer per task, in order (False: the id existed
        and nothing was created for it, but it is recorded as a member all
        the same).

        If it raises ``Cancelled``, nothing was created.  Each task is created
        with its membership or not at all, so a crash part way leaves every
        created task listed in its batch.  The default calls :meth:`enqueue`
        per task, shielded; backends that can write them in one transaction
        override it.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        answers: list[bool] = []
        with trio.CancelScope(shield=True):
            for position, task in zip(positions, tasks, strict=True):
                await self.store.add_batch_members(batch_id, [(position, task.id)])
                answers.append(
                    await self.enqueue(task, priority=priority, not_before=not_before, rank=rank)
                )
        return answers

    async def state_and_position(self, task_id: str) -> tuple[StoredTask | None, int | None]:
        """What a status reads: the task as :meth:`Store.get_state` reads it
        and, while it is ``pending``, its queue position as
        :meth:`Queue.position` gives it (None otherwise, and when it is not
        waiting in the queue).

        The default makes the two calls; a backend that can answer both in
        one (one transaction, one round trip) overrides it.
        """
        stored = await self.store.get_state(task_id)
        if stored is None or stored.status is not TaskStatus.PENDING:
            return stored, None
        return stored, await self.queue.position(task_id)

    async def begin(self, task: StoredTask, *, claim: Claim) -> bool:
        """Start a claimed task: replace its ``pending`` record with ``task`` (its
        ``in_progress`` record) only while ``claim`` is still held, in one
        atomic step.

        False, changing nothing, when the record is not ``pending`` or the
        queue entry is no longer claimed with ``claim.token`` (the lease ran
        out and the entry was released or claimed again).  This is what keeps
        a worker that stalled past its lease from starting a task that
        another claim now owns, which would leave it ``in_progress`` with no
        queue entry.

        The default checks the claim with :meth:`Queue.renew`, then moves the
        record: two calls, atomic only for a backend that one engine uses
        alone.  Backends shared between engines must override it.
        """
        held = await self.queue.renew(claim.task_id, claim.token, lease_until=claim.lease_until)
        if held is Renewal.LOST:
            return False
        return await self.store.transition(task, expect=TaskStatus.PENDING)

    async def start(
        self, claim: Claim, *, starting: Callable[[StoredTask], StoredTask]
    ) -> StoredTask | None:
        """Start a claimed task: read its record and, if it is ``pending`` and
        ``claim`` is still held, replace it with ``starting(record)`` (its
        ``in_progress`` record, fenced by ``claim.token``); return the record
        ``starting`` returned, as stored.

        None, changing nothing, when the record is missing or not ``pending``
        (cancelled while it waited, or a stale entry) or the claim is no
        longer held (see :meth:`begin`).  ``starting`` is a pure function of
        the pending record; it may run on another thread (a backend's I/O
        thread), and more than once (a backend whose transaction is run
        again: the same record each time), and whatever it raises is raised
        here unchanged, with nothing changed.

        The default reads with :meth:`Store.get`, then calls :meth:`begin`:
        two calls, safe because :meth:`begin` is a compare-and-set on
        ``pending`` and the claim.  Backends that can read and write in one
        step override it (one round trip per start instead of two).
        """
        stored = await self.store.get(claim.task_id)
        if stored is None or stored.status is not TaskStatus.PENDING:
            return None
        begun = starting(stored)
        return begun if await self.begin(begun, claim=claim) else None

    async def claim_and_start(
        self,
        *,
        owner: str,
        quotas: Mapping[str, int],
        limit: int,
        now: float,
        lease_until: float,
        starting: Callable[[Claim, StoredTask], StoredTask],
    ) -> list[tuple[Claim, StoredTask | None]]:
        """:meth:`Queue.claim` (same arguments, same claims), and :meth:`start`
        of the claimed tasks where the backend can do it in the same step.

        Each claim comes with the record its start stored (as :meth:`start`
        returns it, ``starting(claim, pending)`` standing for its
        ``starting``), or with None when this call did not start it: the
        caller then calls :meth:`start` for that claim, which answers for it
        (a record that is missing, or not ``pending``, is not started there
        either).  ``starting`` is called once per claim (again, with the same
        pending record, where the backend runs its transaction again); a
        claim for which it raises comes back with None and its task
        unchanged.  If it
        raises ``Cancelled``, nothing was claimed (as :meth:`Queue.claim`).

        The default claims and starts none: the caller starts each claim with
        :meth:`start`.  Backends that can claim and start in one round trip
        override it (one call per dispatch round instead of one more per
        task).
        """
        claims = await self.queue.claim(
            owner=owner, quotas=quotas, limit=limit, now=now, lease_until=lease_until
        )
        return [(claim, None) for claim in claims]

    async def finish(
        self,
        task: StoredTask,
        *,
        claim: Claim,
        result: Payload | None = None,
        waited: bool = False,
    ) -> bool:
        """End a run: :meth:`Store.transition` the ``in_progress`` record held
        with ``claim.token`` to ``task`` (saving ``result`` with it), then
        :meth:`Queue.ack` the claim, whether or not the record moved, except
        when the record is ``pending``.

        ``waited``: someone in this process waits on this end (a ``wait()``,
        a long poll).  A backend that holds the ends of runs back to share a
        commit with the next submit (the diskcache backend) writes this one
        without holding it: the waiter's next submit cannot come before the
        end it waits on.  Others ignore it.

        Returns whether the record moved.  A refused move (the record was
        cancelled, or a newer claim holds it) changes no record, and the
        entry still goes if this claim holds it: a task whose record moved on
        must not stay queued under a dead claim.  A record put back to
        ``pending`` (another engine's upkeep found the lease run out, and
        releases the entry next) keeps its entry: acked, the task would
        wait with nothing in the queue.

        The default makes the calls in order, so a failure between them
        leaves the record moved and the entry claimed (the upkeep acks such
        an entry when its lease runs out).  Backends that can do both in one
        atomic step override it.
        """
        moved = await self.store.transition(
            task, expect=TaskStatus.IN_PROGRESS, token=claim.token, result=result
        )
        now = None if moved else await self.store.get_state(claim.task_id)
        if now is None or now.status is not TaskStatus.PENDING:
            await self.queue.ack(claim.task_id, claim.token)
        return moved

    def finish_now(self, task: StoredTask, *, claim: Claim, result: Payload | None = None) -> bool:
        """:meth:`finish`, done at once: synchronously, on the engine's
        thread, with no schedule point, no I/O and no ``BackendError``.
        Called only where :attr:`finishes_now` is true: storage in this
        process's memory can, storage anywhere else cannot.  The engine then
        stores the end of a run that returned without a coroutine step of
        its own (``docs/performance.md``).  A subclass that overrides
        :meth:`finish` and not this one keeps its :meth:`finish` called.
        The default raises ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} does not finish at once")

    def finish_soon(
        self,
        task: StoredTask,
        *,
        claim: Claim,
        result: Payload | None = None,
        waited: bool = False,
        answer: Callable[[bool | BackendError], object],
    ) -> bool:
        """:meth:`finish`, begun on the engine's thread without a coroutine:
        the write is handed to storage now, and ``answer(moved)`` is called
        later on the engine's thread once it is as durable as :meth:`finish`
        would have made it before returning (``answer(error)`` with the
        BackendError :meth:`finish` would have raised, if it failed).
        ``answer`` must be quick.  Returns False, having done nothing, when
        this end cannot be begun so (a result stored apart, storage not
        open): the engine then calls :meth:`finish`.  The engine calls it
        only where :attr:`finishes_soon` is true, so that a sync task's run
        whose call returned ends without a trio task of its own waiting for
        the write (``docs/performance.md``); a subclass that overrides
        :meth:`finish` and not this one keeps its :meth:`finish` called.
        The default raises ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} does not begin ends without a coroutine")

    def expedite(self) -> None:
        """Someone in this process began to wait on an end that this engine
        is storing right now (its :meth:`finish` is under way with ``waited``
        false, perhaps not handed to storage yet): a backend that holds such
        writes back to share a commit (see :meth:`finish`) writes them now,
        and does not hold the end when it comes.  Called on the trio thread;
        quick, and never raises.  The default does nothing."""
        return  # nothing is held back

    async def changed_tasks(self) -> Collection[str] | None:
        """Block until tasks may have been changed by another process; return
        their ids, or None when any may have (look at every watched task),
        or an empty collection when none has since the last call.

        Used by the engine's change watcher on shared backends
        (``poll_interval`` not None).  The default sleeps ``poll_interval``
        seconds and returns None: a poll.  Backends that hear of changes
        (Redis pub/sub) return as soon as they do, with the ids; backends
        that can tell that nothing changed (diskcache: SQLite's
        ``data_version``) say so.  They may leave out the changes that the
        engine which calls made itself: it heard of those already.
        """
        await trio.sleep(self.poll_interval if self.poll_interval is not None else math.inf)
        return None

    async def open(self) -> None:
        """Acquire resources; called once by the engine before any other call."""
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Release resources; called once when the engine stops, even after errors."""
        await trio.lowlevel.checkpoint()

    @classmethod
    def from_url(cls, url: str) -> Backend:
        """Build a backend from its URL (``scheme://...``)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a URL")
