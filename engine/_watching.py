"""How callers wait on an engine without polling it.

Three ways to wait, each a function of the engine that its public method
(:meth:`Engine.wait`, :meth:`Engine.next_change`, :meth:`Engine.wait_any`)
calls:

* :func:`wait_final`: one task, until it is final;
* :func:`next_change`: one task, until its status, progress, message or
  attempt changes;
* :func:`wait_any`: many tasks, until the first of them ends.

The engine reports what it changes to its :class:`Watchers`:
:meth:`Watchers.notify` when a task became final or was handed back, and
:meth:`Watchers.touch` for a change that is not final (started, progress
stored).  ``wait_final``'s watches are woken by ``notify`` only, so waiting
for the end costs no wake-up per progress report.  Changes made by other
processes sharing a backend are seen by the engine's one change watcher
(:meth:`Watchers.poll_round`, every ``backend.poll_interval`` seconds): it
reads every watched task in one ``get_many`` and wakes the waiters of those
that changed, so a thousand waiters cost the storage what one does.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import attrs
import trio

from ._backend import Backend, Store
from ._convert import Payload
from ._errors import BackendError, EngineClosed
from ._model import StoredTask, TaskInfo, TaskRecord, is_task_id
from ._status import TaskStatus

__all__ = [
    "ENDED_KEPT",
    "TRUST_MARGIN",
    "Source",
    "Watchers",
    "next_change",
    "trusted_until",
    "wait_any",
    "wait_final",
    "wait_final_record",
]

#: How many tasks ended by this engine :attr:`Watchers.ended` remembers.
ENDED_KEPT = 8192
#: The largest result (bytes) that :attr:`Watchers.ended` keeps with its
#: task's end: at most ``ENDED_KEPT`` of them, 8 MiB.
KEPT_RESULT = 1024
#: Seconds before its expiry that a remembered end stops being trusted.
TRUST_MARGIN = 60.0


def trusted_until(final: TaskRecord) -> float:
    """Until when a remembered end of ``final`` (this engine stored it)
    answers for the store: :data:`TRUST_MARGIN` seconds, at most half the
    time it is kept, before its expiry, so that an engine whose clock runs
    that much ahead cannot have purged it (or let a key reuse its id) yet."""
    expires_at = final.expires_at
    if expires_at is None:
        return math.inf
    kept = expires_at - (final.finished_at or expires_at)
    return expires_at - min(TRUST_MARGIN, kept / 2)


@attrs.define(eq=False)
class _Watch:
    """Waiters of one task park on ``event``; ``record`` is the final record
    when the engine that set it stored one."""

    event: trio.Event = attrs.field(factory=trio.Event)
    record: TaskRecord | None = None


@attrs.define(eq=False)
class _Listener:
    """One caller of :func:`next_change` or :func:`wait_any`, listening on one
    or more task ids.

    Unlike a :class:`_Watch` it is not dropped when it fires: its owner
    re-arms ``event`` and removes itself when done.  ``fired`` collects the
    ids that changed since the owner last looked.
    """

    changes: bool  # woken by every change (started, progress), not only final ones
    event: trio.Event = attrs.field(factory=trio.Event)
    fired: set[str] = attrs.field(factory=set)
    #: Of ``fired``, the ids that were final or gone when they fired (this
    #: engine stored the end, or the change watcher read it): an owner that
    #: needs to know no more than that need not read them again.
    ended: set[str] = attrs.field(factory=set)
    #: Of ``ended``, the final records that this engine stored (handed to
    #: :meth:`Watchers.notify`): an owner that needs the record has it
    #: without reading it back.
    finals: dict[str, TaskRecord] = attrs.field(factory=dict)

    def rearm(self) -> set[str]:
        """A fresh event; returns (and forgets) the ids that fired before."""
        fired, self.fired = self.fired, set()
        self.ended = set()
        self.finals = {}
        self.event = trio.Event()
        return fired


class Watchers:
    """Who waits on which task, and waking them."""

    def __init__(self) -> None:
        self.watches: dict[str, _Watch] = {}
        self.listeners: dict[str, set[_Listener]] = {}
        self._seen: dict[str, bytes] = {}  # the stored bytes the change watcher last saw
        #: Tasks whose next :meth:`notify` is told to ``on_end(token, final
        #: record or None, result)`` once, on the trio thread: how a thread
        #: that submitted a task hears of its end (``_handoff.py``).  One
        #: token per task, no closure: this lives as long as the task waits.
        self.ends: dict[str, Any] = {}
        self.on_end: Callable[[Any, TaskRecord | None, Payload | None], None] | None = None
        #: Rounds of the change watcher that read storage (for tests and statistics).
        self.poll_reads = 0
        #: The final status, the time until which it is trusted, the task
        #: name and a small result's media type and bytes (see
        #: :data:`KEPT_RESULT`) of the tasks this engine ended last (at most
        #: :data:`ENDED_KEPT`): a wait that begins after the end answers from
        #: here without reading the store, and a success's result is read
        #: without its record, or not at all when it is kept here.  A final
        #: record changes no more until it expires (only expired records are
        #: purged, and only then may an idempotency key take the id anew), so
        #: this is what a read would say, as the record handed to a parked
        #: waiter is.  It is trusted until :data:`TRUST_MARGIN` seconds (at
        #: most half the time it is kept) before its expiry, so that an
        #: engine whose clock runs that much ahead cannot have purged it yet.
        #: (Plain values only, so the collector stops walking the entries.)
        self.ended: OrderedDict[str, tuple[str, float, str, str | None, bytes | None]] = (
            OrderedDict()
        )

    async def poll_round(
        self, store: Store, clock: Callable[[], float], *, only: Collection[str] | None = None
    ) -> int:
        """Read every watched task once and wake the waiters of those that
        changed since the last round (or expired, or are gone).

        A task seen for the first time counts as changed: its waiters look
        again, so a change between their own read and this round is not missed.
        With ``only`` (the backend said which tasks changed), just those of
        the watched tasks are read, and the ones not seen before; with
        ``only`` empty (nothing changed since the last round), none.
        Returns how many tasks it read.
        """
        ids = self.watches.keys() | self.listeners.keys()
        for gone in self._seen.keys() - ids:
            del self._seen[gone]
        if only is not None:
            if not only:
                # No change since the last round, so none since a waiter's
                # own read either: the waiter saw the latest.
                return 0
            ids = {i for i in ids if i in only or i not in self._seen}
        if not ids:
            return 0
        self.poll_reads += 1
        found = await store.get_many(ids, arguments=False)
        self.observe(ids, found, clock())
        return len(ids)

    def observe(self, ids: Collection[str], found: Mapping[str, StoredTask], now: float) -> None:
        """What a read of ``ids`` (done after they were watched) found, as a
        round of the change watcher takes it: wake the waiters of those that
        changed since last seen.  A waiter's own read may be passed too, so
        that the watcher's next round need not read those tasks again."""
        for task_id in ids:
            task = found.get(task_id)
            if task is None or (task.expires_at is not None and task.expires_at <= now):
                self._seen.pop(task_id, None)
                self.notify(task_id, gone_or_final=True)
                continue
            data = task.version_data
            if self._seen.get(task_id) == data:
                continue
            self._seen[task_id] = data
            if task.status.is_final:
                self.notify(task_id, gone_or_final=True)
            else:
                self.touch(task_id)

    def notify(
        self,
        task_id: str,
        final: TaskRecord | None = None,
        result: Payload | None = None,
        *,
        gone_or_final: bool = False,
    ) -> None:
        """Wake the waiters of a task that the engine moved on (``final``: the
        final record it stored, handed to them so they need not read it back;
        ``result``: the result it stored with it, for :attr:`ends`;
        ``gone_or_final``: it was read final, expired or gone just now)."""
        watch = self.watches.pop(task_id, None)
        if watch is not None:
            watch.record = final
            watch.event.set()
        if final is not None:
            ended = self.ended
            kept: tuple[str, bytes] | tuple[None, None] = (None, None)
            if result is not None and len(result.data) <= KEPT_RESULT:
                kept = (result.media_type, result.data)
            ended[task_id] = (final.status._value_, trusted_until(final), final.name, *kept)
            if len(ended) > ENDED_KEPT:
                ended.popitem(last=False)
        if self.ends:
            token = self.ends.pop(task_id, None)
            if token is not None and self.on_end is not None:
                self.on_end(token, final, result)
        listeners = self.listeners.get(task_id)
        if listeners is not None:
            known = gone_or_final or final is not None
            for listener in listeners:
                listener.fired.add(task_id)
                if known:
                    listener.ended.add(task_id)
                    if final is not None:
                        listener.finals[task_id] = final
                listener.event.set()

    def touch(self, task_id: str) -> None:
        """A change that is not final (started, progress stored): wakes only the
        listeners that follow every change, never :func:`wait_final`'s waiters."""
        listeners = self.listeners.get(task_id)
        if listeners is not None:
            for listener in listeners:
                if listener.changes:
                    listener.fired.add(task_id)
                    listener.event.set()

    def wake_all(self) -> None:
        """Wake everyone (the engine stopped; they will see it is closed)."""
        for watch in self.watches.values():
            watch.event.set()
        ends, self.ends = self.ends, {}
        if self.on_end is not None:
            for token in ends.values():
                self.on_end(token, None, None)
        for listeners in self.listeners.values():
            for listener in listeners:
                listener.event.set()

    def ended_as(self, task_id: str, now: float) -> tuple[TaskStatus, str] | None:
        """The final status and the task name of a task this engine ended
        lately, while that is trusted (see :attr:`ended`); None when not
        known here (then the store is asked)."""
        ended = self.ended.get(task_id)
        if ended is None:
            return None
        status, trusted_until, name, _, _ = ended
        if trusted_until <= now:
            del self.ended[task_id]
            return None
        return TaskStatus(status), name

    def kept_result(self, task_id: str, now: float) -> Payload | None:
        """The result of a success this engine stored lately, when it was
        small enough to keep (:data:`KEPT_RESULT`) and its end is still
        trusted (as :meth:`ended_as`): what a read of the store would give
        (a stored result never changes); else None."""
        ended = self.ended.get(task_id)
        if ended is None or ended[1] <= now or ended[3] is None or ended[4] is None:
            return None
        return Payload(media_type=ended[3], data=ended[4])

    def watch(self, task_id: str) -> _Watch:
        watch = self.watches.get(task_id)
        if watch is None:
            watch = self.watches[task_id] = _Watch()
        return watch

    def waited(self, task_id: str) -> bool:
        """Whether someone in this process waits on the task (a wait, a
        long poll, a many-task wait): its end is not to be held back."""
        return task_id in self.watches or task_id in self.listeners

    def drop_if_idle(self, task_id: str) -> None:
        """Drop the task's watch unless another waiter is parked on it."""
        watch = self.watches.get(task_id)
        if watch is not None and not watch.event.statistics().tasks_waiting:
            del self.watches[task_id]

    def listen(self, task_ids: Collection[str], listener: _Listener) -> None:
        for task_id in task_ids:
            self.listeners.setdefault(task_id, set()).add(listener)

    def unlisten(self, task_ids: Collection[str], listener: _Listener) -> None:
        for task_id in task_ids:
            listeners = self.listeners.get(task_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self.listeners[task_id]


class Source(Protocol):
    """What waiting needs of an engine: the whole seam, nothing private."""

    @property
    def watchers(self) -> Watchers: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def is_open(self) -> bool: ...

    def clock(self) -> float:
        """The wall clock of stored timestamps."""
        ...

    def check_open(self) -> None:
        """Raise EngineClosed unless the engine runs."""
        ...

    def runs_here(self, task_id: str) -> bool:
        """Whether this engine is running the task (or storing its end)."""
        ...

    def expedite(self, task_ids: Collection[str]) -> None:
        """A waiter is about to park on these tasks: the ends of theirs that
        this engine is storing now are written without being held back."""
        ...

    async def load(self, task_id: str, *, schedule: bool = True) -> TaskRecord:
        """The live record; TaskNotFound when unknown, expired or malformed."""
        ...

    async def load_stored(
        self, task_id: str, *, schedule: bool = True, arguments: bool = True
    ) -> StoredTask:
        """The live task as stored (its record not decoded); as :meth:`load`."""
        ...

    async def load_state(
        self, task_id: str, *, schedule: bool = True, position: bool = False
    ) -> tuple[TaskRecord, int | None]:
        """The live record without its arguments (unless at hand), read only
        when the engine does not run the task, and its queue position if
        asked; as :meth:`load`."""
        ...


def _differs(record: TaskRecord, seen: TaskInfo) -> bool:
    """Whether ``record`` changed in what :func:`next_change` follows."""
    return (
        record.status is not seen.status
        or record.attempt != seen.attempt
        or record.progress != seen.progress
        or record.message != seen.message
    )


async def _wait_until(event: trio.Event, deadline: float) -> None:
    """``event.wait()``, given up at ``deadline`` (``math.inf``: never, and
    no cancel scope is entered)."""
    if deadline == math.inf:
        await event.wait()
    else:
        with trio.move_on_at(deadline):
            await event.wait()


async def wait_final(engine: Source, task_id: str, timeout: float | None) -> TaskStatus:
    """:meth:`Engine.wait`."""
    try:  # (not through wait_final_record: one coroutine less per wait)
        return (await _wait_final(engine, task_id, timeout))[0]
    finally:
        engine.watchers.drop_if_idle(task_id)


async def wait_final_record(
    engine: Source, task_id: str, timeout: float | None
) -> tuple[TaskStatus, StoredTask | None]:
    """:func:`wait_final`, and the final task as stored when the wait has it:
    read by the wait itself, or handed to it by the engine that stored it
    while it was parked (what a read would give), so that a caller that
    wants more than the status need not read it again.  None when the
    status came from an end remembered here (:meth:`Watchers.ended_as`)."""
    try:
        return await _wait_final(engine, task_id, timeout)
    finally:
        engine.watchers.drop_if_idle(task_id)


async def _wait_final(
    engine: Source, task_id: str, timeout: float | None
) -> tuple[TaskStatus, StoredTask | None]:
    # Exactly one schedule point on every path: the first read does not
    # yield; either the task is final (then checkpoint) or we park.
    deadline = math.inf if timeout is None else trio.current_time() + timeout
    watchers = engine.watchers
    ended = watchers.ended_as(task_id, engine.clock())
    if ended is not None:
        engine.check_open()
        await trio.lowlevel.checkpoint()
        return ended[0], None
    watch = watchers.watch(task_id)  # before reading, so no change slips between
    if not engine.runs_here(task_id):
        # (A task this engine runs is in progress, and its end comes here:
        # nothing to read.  A claim lost meanwhile is the watcher's to see.)
        # The stored status is enough: the record is not decoded (on a
        # durable backend, decoding it was a tenth of a task's CPU).
        stored = await engine.load_stored(task_id, schedule=False, arguments=False)
        if stored.status.is_final:
            await trio.lowlevel.checkpoint()
            return stored.status, stored
    else:
        engine.check_open()
        engine.expedite((task_id,))  # its end may be on its way to storage
    while True:
        if not engine.is_open:
            raise EngineClosed("the engine stopped before the task finished")
        if deadline == math.inf:
            await watch.event.wait()
        else:
            with trio.move_on_at(deadline):
                await watch.event.wait()
        final = watch.record
        if final is not None and not final.is_expired(engine.clock()):
            return final.status, StoredTask.from_record(final)
        watch = watchers.watch(task_id)
        stored = await engine.load_stored(task_id, schedule=False, arguments=False)
        if stored.status.is_final:
            return stored.status, stored
        if trio.current_time() >= deadline:
            raise TimeoutError(f"task {task_id} is still {stored.status.value} after {timeout} s")


async def next_change(
    engine: Source, task_id: str, since: TaskInfo | None, timeout: float | None
) -> TaskInfo:
    """:meth:`Engine.next_change`."""
    deadline = math.inf if timeout is None else trio.current_time() + timeout
    listener = _Listener(changes=True)
    ids = (task_id,)
    engine.watchers.listen(ids, listener)  # before reading, so no change slips between
    try:
        # Neither the arguments (which may be megabytes) nor their decoding:
        # a TaskInfo has none; and no read of a task the engine runs.
        record, _ = await engine.load_state(task_id)
        if since is not None and not _differs(record, since):
            engine.expedite(ids)
        while since is not None and not _differs(record, since):
            if not engine.is_open:
                raise EngineClosed("the engine stopped")
            if trio.current_time() >= deadline:
                raise TimeoutError(f"task {task_id} did not change in {timeout} s")
            await _wait_until(listener.event, deadline)
            listener.rearm()
            record, _ = await engine.load_state(task_id, schedule=False)
        position = None
        if record.status is TaskStatus.PENDING:
            try:
                position = await engine.backend.queue.position(task_id)
            except BackendError:
                engine.check_open()  # closed meanwhile: say so
                raise
        return TaskInfo.from_record(record, position=position)
    finally:
        engine.watchers.unlisten(ids, listener)


async def wait_any(
    engine: Source, task_ids: Collection[str], timeout: float | None
) -> dict[str, TaskInfo | None]:
    """:meth:`Engine.wait_any`."""
    ids = [i for i in dict.fromkeys(task_ids) if is_task_id(i)]
    done: dict[str, TaskInfo | None] = {
        i: None for i in dict.fromkeys(task_ids) if not is_task_id(i)
    }
    deadline = math.inf if timeout is None else trio.current_time() + timeout
    listener = _Listener(changes=False)
    engine.watchers.listen(ids, listener)  # before reading, so no change slips between
    try:
        await trio.lowlevel.checkpoint()
        engine.check_open()
        done.update(await _finals(engine, ids))
        if not done:
            engine.expedite(ids)
        while not done:
            if not engine.is_open:
                raise EngineClosed("the engine stopped")
            if trio.current_time() >= deadline:
                return {}
            await _wait_until(listener.event, deadline)
            finals = listener.finals
            fired = listener.rearm()
            if fired:
                unread = _from_finals(engine, [i for i in ids if i in fired], finals, done)
                done.update(await _finals(engine, unread))
        return done
    finally:
        engine.watchers.unlisten(ids, listener)


class Kept:
    """Results that ``as_completed`` read along with the ends it waited for,
    each kept (with its task's name, for its return type) for the next
    ``get()`` of its task, which then reads nothing (and, from a thread,
    makes no call into the engine), as the HTTP clients keep what ``POST
    /tasks/wait`` brings.  Bounded: results over :attr:`ONE` bytes are not
    kept, and past :attr:`LIMIT` bytes the oldest are dropped (their
    ``get()`` reads the store, as it would have anyway).  Any thread may use
    it."""

    ONE = 64 * 1024
    LIMIT = 16 * 1024 * 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, tuple[str, Payload]] = OrderedDict()
        self._size = 0

    def keep(self, results: Mapping[str, tuple[str, Payload]]) -> None:
        """Keep ``results``: task id -> (task name, stored result)."""
        with self._lock:
            for task_id, kept in results.items():
                if len(kept[1].data) > self.ONE:
                    continue
                old = self._kept.pop(task_id, None)
                if old is not None:
                    self._size -= len(old[1].data)
                self._kept[task_id] = kept
                self._size += len(kept[1].data)
            while self._size > self.LIMIT:
                _, dropped = self._kept.popitem(last=False)
                self._size -= len(dropped[1].data)

    def take(self, task_id: str) -> tuple[str, Payload] | None:
        """The name and result kept for ``task_id`` (then forgotten), or None."""
        if not self._kept:
            return None
        with self._lock:
            kept = self._kept.pop(task_id, None)
            if kept is not None:
                self._size -= len(kept[1].data)
        return kept

    def __len__(self) -> int:
        return len(self._kept)


class WaitingSet:
    """Many tasks waited on together until each is final (``as_completed``).

    :func:`wait_any` listens on, and reads, every id it is given at each
    call, so a loop that calls it again with the ids not final yet costs the
    whole remaining set per round: quadratic in the tasks.  A waiting set
    listens once, reads every id once (the first :meth:`next`), then reads
    only the ids whose ends it heard of; each id stops being listened to
    once it is returned.  Made and used in the engine's trio run; call
    :meth:`close` when done (it leaves nothing registered).
    """

    def __init__(
        self,
        engine: Source,
        task_ids: Collection[str],
        *,
        infos: bool = True,
        kept: Kept | None = None,
    ) -> None:
        ids = list(dict.fromkeys(task_ids))
        self._engine = engine
        # With ``kept``, each round also reads the results of the successes
        # it returns (one store call) and keeps them for their get().
        self._kept = kept
        # Without infos, the answers map ids to None and records are not
        # decoded: whether a task is final is its stored status.
        self._read = _finals if infos else _final_ids
        #: The stored result types (media types) of the successes that the
        #: last :meth:`next` answered, where it knew them (with infos): what
        #: a caller that reads their results would read the records for.
        self.result_types: dict[str, str | None] = {}
        self._listener = _Listener(changes=False)
        self._remaining = {i for i in ids if is_task_id(i)}
        self._malformed: dict[str, TaskInfo | None] = {i: None for i in ids if not is_task_id(i)}
        self._unread = [i for i in ids if i in self._remaining]
        # Before the first read, so no end slips between.
        engine.watchers.listen(self._remaining, self._listener)

    async def next(self, timeout: float | None) -> dict[str, TaskInfo | None]:
        """The ids that became final (or unknown, expired, malformed) since
        the last call, each once: as :meth:`Engine.wait_any` answers them.
        ``{}`` when ``timeout`` seconds pass first; EngineClosed when the
        engine stops."""
        engine = self._engine
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        await trio.lowlevel.checkpoint()
        engine.check_open()
        done, self._malformed = self._malformed, {}
        types = self.result_types = {}
        unread, self._unread = self._unread, []
        for start in range(0, len(unread), _READ_CHUNK):
            done.update(await self._read(engine, unread[start : start + _READ_CHUNK], types))
        listener = self._listener
        if not done and self._remaining:
            engine.expedite(self._remaining)  # about to park: see Engine.expedite
        while not done and self._remaining:
            if not engine.is_open:
                raise EngineClosed("the engine stopped")
            if trio.current_time() >= deadline:
                break
            await _wait_until(listener.event, deadline)
            known, finals = listener.ended, listener.finals
            fired = [i for i in listener.rearm() if i in self._remaining]
            if self._read is _final_ids and known:
                # Known to be final or gone: what a read would answer (None).
                done.update((i, None) for i in fired if i in known)
                fired = [i for i in fired if i not in known]
            elif finals:
                fired = _from_finals(engine, fired, finals, done, types)
            for start in range(0, len(fired), _READ_CHUNK):
                done.update(await self._read(engine, fired[start : start + _READ_CHUNK], types))
        ended = [i for i in done if i in self._remaining]
        self._remaining.difference_update(ended)
        engine.watchers.unlisten(ended, listener)
        if self._kept is not None:
            names = {
                i: info.name
                for i, info in done.items()
                if info is not None and info.status is TaskStatus.SUCCESS
            }
            if names:
                results = await engine.backend.store.get_results(names)
                self._kept.keep({i: (names[i], payload) for i, payload in results.items()})
        return done

    def close(self) -> None:
        """Stop listening (the ids not returned yet are left)."""
        self._engine.watchers.unlisten(self._remaining, self._listener)
        self._remaining = set()


#: Ids read per store call by a :class:`WaitingSet`.
_READ_CHUNK = 500


async def _read_watched(
    engine: Source, task_ids: Collection[str]
) -> tuple[Mapping[str, StoredTask], float]:
    """The stored state of ``task_ids`` (listened to already) and the time;
    an engine that watches for other processes' changes takes the read as
    its own, so its next round need not read them again."""
    stored = await engine.backend.store.get_many(task_ids, arguments=False)
    now = engine.clock()
    if engine.backend.poll_interval is not None:
        engine.watchers.observe(task_ids, stored, now)
    return stored, now


async def _final_ids(
    engine: Source, task_ids: Collection[str], types: dict[str, str | None] | None = None
) -> dict[str, TaskInfo | None]:
    """The final or missing ones among well-formed ``task_ids``, each to None:
    read by their stored status and expiry, no record decoded (so no
    result type is noted in ``types``)."""
    stored, now = await _read_watched(engine, task_ids)
    found: dict[str, TaskInfo | None] = {}
    for task_id in task_ids:
        task = stored.get(task_id)
        if task is None or task.status.is_final or task.is_expired(now):
            found[task_id] = None
    return found


def _answer(record: TaskRecord, now: float, types: dict[str, str | None] | None) -> TaskInfo | None:
    """A final record as :func:`_finals` answers it (None once expired),
    noting a success's result type in ``types``."""
    if record.is_expired(now):
        return None
    if types is not None and record.status is TaskStatus.SUCCESS:
        types[record.id] = record.result_type
    return TaskInfo.from_record(record)


def _from_finals(
    engine: Source,
    task_ids: list[str],
    finals: Mapping[str, TaskRecord],
    done: dict[str, TaskInfo | None],
    types: dict[str, str | None] | None = None,
) -> list[str]:
    """Answer into ``done`` those of ``task_ids`` whose final record this
    engine stored (``finals``), as :func:`_finals` would after a read;
    returns the others, to be read."""
    now = engine.clock()
    unread = []
    for task_id in task_ids:
        final = finals.get(task_id)
        if final is None:
            unread.append(task_id)
        else:
            done[task_id] = _answer(final, now, types)
    return unread


async def _finals(
    engine: Source, task_ids: Collection[str], types: dict[str, str | None] | None = None
) -> dict[str, TaskInfo | None]:
    """The final or missing ones among well-formed ``task_ids``, read in one
    go (the result types of the successes noted in ``types``)."""
    if not task_ids:
        return {}
    stored, now = await _read_watched(engine, task_ids)
    found: dict[str, TaskInfo | None] = {}
    for task_id in task_ids:
        task = stored.get(task_id)
        if task is None:
            found[task_id] = None
        elif task.status.is_final:
            found[task_id] = _answer(task.without_args(), now, types)
    return found
