"""The in-memory backend: the default, fast, and gone when the process ends.

One process only, and one trio run at a time; several engines in that run may
share it (they notice each other's work through :meth:`wait_for_work`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Collection, Mapping, Sequence

import trio
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from errands import (
    Backend,
    BackendError,
    Claim,
    Payload,
    Queue,
    Renewal,
    Store,
    StoredTask,
    TaskStatus,
)
from errands._backend import start_record
from errands._model import Packed
from errands._status import check_transition

__all__ = ["MemoryBackend", "MemoryQueue", "MemoryStore"]


class _Waiting:
    __slots__ = ("name", "not_before", "priority", "rank", "seq")

    def __init__(
        self, name: str, priority: int, not_before: float, rank: float | None, seq: int
    ) -> None:
        self.name = name
        self.priority = priority
        self.not_before = not_before
        self.rank = -priority if rank is None else rank
        self.seq = seq


class MemoryQueue(Queue):
    """Per-name heaps of waiting ids (ready and delayed), and a table of claims."""

    def __init__(self) -> None:
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._waiting: dict[str, _Waiting] = {}
        self._claimed: dict[str, Claim] = {}
        self._cancel_flags: set[str] = set()
        self._claim_priority: dict[str, int] = {}
        # heap items: (rank, seq, task_id); stale items are skipped on pop.
        self._ready: dict[str, list[tuple[float, int, str]]] = {}
        # heap items: (not_before, seq, task_id)
        self._delayed: dict[str, list[tuple[float, int, str]]] = {}
        self._work = trio.Event()
        self._engines = 0  # engines that opened the backend (see _notify)
        #: Per name, how many entries wait.
        self._depth: dict[str, int] = {}
        #: Per name, the (rank, seq) of every waiting entry in queue order:
        #: a position in O(log n), not a scan of the queue.  Built for a
        #: name when a position of it is first asked, then kept: a queue
        #: nobody asks positions of pays nothing for it.
        self._order: dict[str, SortedList] = {}

    def _notify(self) -> None:
        # Only other engines need telling: each engine wakes itself on its own puts.
        if self._engines > 1:
            self._work.set()
            self._work = trio.Event()

    def _push(self, task_id: str, entry: _Waiting) -> None:
        self._waiting[task_id] = entry
        name = entry.name
        self._depth[name] = self._depth.get(name, 0) + 1
        order = self._order.get(name)
        if order is not None:
            order.add((entry.rank, entry.seq))
        if entry.not_before > 0.0:
            heapq.heappush(
                self._delayed.setdefault(entry.name, []), (entry.not_before, entry.seq, task_id)
            )
        else:
            heapq.heappush(self._ready.setdefault(entry.name, []), (entry.rank, entry.seq, task_id))

    def _live(self, task_id: str, seq: int) -> bool:
        entry = self._waiting.get(task_id)
        return entry is not None and entry.seq == seq

    def _promote(self, name: str, now: float) -> None:
        delayed = self._delayed.get(name)
        if not delayed:
            return
        ready = self._ready.setdefault(name, [])
        while delayed and delayed[0][0] <= now:
            _, seq, task_id = heapq.heappop(delayed)
            if self._live(task_id, seq):
                heapq.heappush(ready, (self._waiting[task_id].rank, seq, task_id))

    def _head(self, name: str) -> tuple[float, int, str] | None:
        ready = self._ready.get(name)
        while ready:
            item = ready[0]
            if self._live(item[2], item[1]):
                return item
            heapq.heappop(ready)
        return None

    async def put(
        self,
        task_id: str,
        *,
        name: str,
        priority: int = 0,
        not_before: float = 0.0,
        rank: float | None = None,
    ) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._put(task_id, name, priority, not_before, rank)

    def _put(
        self, task_id: str, name: str, priority: int, not_before: float, rank: float | None
    ) -> None:
        if task_id in self._waiting or task_id in self._claimed:
            return
        self._push(task_id, _Waiting(name, priority, not_before, rank, next(self._seq)))
        self._notify()

    async def claim(
        self,
        *,
        owner: str,
        quotas: Mapping[str, int],
        limit: int,
        now: float,
        lease_until: float,
    ) -> list[Claim]:
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._claim(owner, quotas, limit, now, lease_until)

    def _put_claimed(
        self,
        task_id: str,
        name: str,
        priority: int,
        rank: float | None,
        owner: str,
        now: float,
        lease_until: float,
    ) -> Claim | None:
        """:meth:`_put` of a task due now, then :meth:`_claim` of one task of
        its name: the same claim, without the entry's trip through the heap
        when no ready task of that name waits ahead of it."""
        if task_id in self._waiting or task_id in self._claimed or self._ready_waits(name, now):
            self._put(task_id, name, priority, 0.0, rank)
            claims = self._claim(owner, {name: 1}, 1, now, lease_until)
            return claims[0] if claims else None
        next(self._seq)  # as a put: the counter moves
        self._claim_priority[task_id] = priority
        claim = self._claimed[task_id] = Claim(
            task_id=task_id,
            name=name,
            token=next(self._tokens),
            owner=owner,
            lease_until=lease_until,
        )
        return claim

    def _ready_waits(self, name: str, now: float) -> bool:
        self._promote(name, now)
        return self._head(name) is not None

    def _claim(
        self, owner: str, quotas: Mapping[str, int], limit: int, now: float, lease_until: float
    ) -> list[Claim]:
        left = {name: n for name, n in quotas.items() if n > 0}
        for name in left:
            self._promote(name, now)
        claims: list[Claim] = []
        while left and len(claims) < limit:
            best: tuple[float, int, str] | None = None
            best_name = ""
            for name in left:
                head = self._head(name)
                if head is not None and (best is None or head < best):
                    best, best_name = head, name
            if best is None:
                break
            heapq.heappop(self._ready[best_name])
            task_id = best[2]
            self._claim_priority[task_id] = self._drop(task_id).priority
            claim = Claim(
                task_id=task_id,
                name=best_name,
                token=next(self._tokens),
                owner=owner,
                lease_until=lease_until,
            )
            self._claimed[task_id] = claim
            claims.append(claim)
            left[best_name] -= 1
            if not left[best_name]:
                del left[best_name]
        return claims

    def _held(self, task_id: str, token: int) -> Claim | None:
        claim = self._claimed.get(task_id)
        return claim if claim is not None and claim.token == token else None

    async def renew(self, task_id: str, token: int, *, lease_until: float) -> Renewal:
        await trio.lowlevel.checkpoint_if_cancelled()
        claim = self._held(task_id, token)
        if claim is None:
            return Renewal.LOST
        self._claimed[task_id] = Claim(
            task_id=task_id,
            name=claim.name,
            token=token,
            owner=claim.owner,
            lease_until=lease_until,
        )
        return Renewal.CANCEL_REQUESTED if task_id in self._cancel_flags else Renewal.RENEWED

    async def ack(self, task_id: str, token: int) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._ack(task_id, token)

    def _ack(self, task_id: str, token: int) -> bool:
        if self._held(task_id, token) is None:
            return False
        del self._claimed[task_id]
        self._cancel_flags.discard(task_id)
        self._claim_priority.pop(task_id, None)
        return True

    async def release(
        self, task_id: str, token: int, *, not_before: float = 0.0, rank: float | None = None
    ) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        claim = self._held(task_id, token)
        if claim is None:
            return False
        del self._claimed[task_id]
        self._cancel_flags.discard(task_id)
        priority = self._claim_priority.pop(task_id, 0)
        self._push(task_id, _Waiting(claim.name, priority, not_before, rank, next(self._seq)))
        self._notify()
        return True

    async def remove(self, task_id: str) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        return task_id in self._waiting and self._drop(task_id) is not None

    def _drop(self, task_id: str) -> _Waiting:
        entry = self._waiting.pop(task_id)
        self._depth[entry.name] -= 1
        order = self._order.get(entry.name)
        if order is not None:
            order.remove((entry.rank, entry.seq))
        return entry

    async def request_cancel(self, task_id: str) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        if task_id not in self._claimed:
            return False
        self._cancel_flags.add(task_id)
        return True

    async def expired(self, now: float) -> list[Claim]:
        await trio.lowlevel.checkpoint_if_cancelled()
        return [c for c in self._claimed.values() if c.lease_until <= now]

    async def contains(self, task_id: str) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        return task_id in self._waiting or task_id in self._claimed

    async def next_due(self, names: Sequence[str]) -> float | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        due: float | None = None
        for name in names:
            if self._head(name) is not None:
                return 0.0
            delayed = self._delayed.get(name)
            while delayed and not self._live(delayed[0][2], delayed[0][1]):
                heapq.heappop(delayed)
            if delayed and (due is None or delayed[0][0] < due):
                due = delayed[0][0]
        return due

    async def depth(self, name: str | None = None) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        if name is None:
            return len(self._waiting)
        return self._depth.get(name, 0)

    async def position(self, task_id: str) -> int | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        me = self._waiting.get(task_id)
        if me is None:
            return None
        order = self._order.get(me.name)
        if order is None:
            order = self._order[me.name] = SortedList(
                (e.rank, e.seq) for e in self._waiting.values() if e.name == me.name
            )
        return int(order.bisect_left((me.rank, me.seq)))

    async def wait_for_work(self) -> None:
        await self._work.wait()


def _live_newest_first(task: StoredTask) -> tuple[float, str]:
    return -task.created_at, task.id


#: A final record as :class:`MemoryStore` keeps it: status value, name,
#: created_at, expires_at, token, the record packed.
_Final = tuple[str, str, float, float | None, int, Packed]
_STATUS_OF = {status.value: status for status in TaskStatus}


def _from_final(task_id: str, final: _Final) -> StoredTask:
    status, name, created_at, expires_at, token, packed = final
    return StoredTask.from_packed(
        id=task_id,
        name=name,
        status=_STATUS_OF[status],
        token=token,
        created_at=created_at,
        expires_at=expires_at,
        packed=packed,
    )


class MemoryStore(Store):
    """Records and results in dicts, with a heap of expiry times for purging."""

    def __init__(self) -> None:
        #: Records of tasks not final yet (and final ones that do not pack).
        self._records: dict[str, StoredTask] = {}
        #: Final records, each as a tuple of plain values: its status value,
        #: name, creation time, expiry, token and the record packed
        #: (:func:`~errands._model.pack_record`); and results as their media
        #: type and bytes.  Python's garbage collector never walks these
        #: (tuples of strings, numbers and bytes are untracked at their first
        #: collection), where the objects of the history kept (a day of it
        #: by default) made every full collection longer with each task.  The
        #: scalars beside the packed record are what :meth:`list` filters and
        #: orders by and what a read of the status or the expiry needs,
        #: without unpacking the record.
        self._final: dict[str, _Final] = {}
        self._result_types: dict[str, str] = {}
        self._result_data: dict[str, bytes] = {}
        self._expiry: list[tuple[float, str]] = []
        #: Batch id -> its members, (position, task id) in position order.
        self._batches: dict[str, list[tuple[int, str]]] = {}
        #: Task id -> its batch id, and batch id -> members whose record exists.
        self._batch_of: dict[str, str] = {}
        self._batch_live: dict[str, int] = {}
        #: Every record as (-created_at, id): :meth:`list`'s order, newest
        #: first.  Built at the first listing that needs it, then kept (a
        #: store nobody lists, as in a script, never pays for it).
        self._newest: SortedList | None = None

    async def create(self, task: StoredTask) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._create(task)

    def _find(self, task_id: str) -> StoredTask | None:
        task = self._records.get(task_id)
        if task is None:
            final = self._final.get(task_id)
            if final is not None:
                return _from_final(task_id, final)
        return task

    def _drop_task(self, task_id: str) -> bool:
        """Delete the record and result of ``task_id``; whether it had a record."""
        self._result_types.pop(task_id, None)
        self._result_data.pop(task_id, None)
        live = self._records.pop(task_id, None)
        if live is not None:
            created_at = live.created_at
        else:
            final = self._final.pop(task_id, None)
            if final is None:
                return False
            created_at = final[2]
        if self._newest is not None:
            self._newest.discard((-created_at, task_id))
        return True

    def _create(self, task: StoredTask) -> bool:
        if task.id in self._records or task.id in self._final:
            return False
        self._records[task.id] = task
        if self._newest is not None:
            self._newest.add((-task.created_at, task.id))
        batch_id = self._batch_of.get(task.id)
        if batch_id is not None:
            self._batch_live[batch_id] += 1
        return True

    def _forget(self, task_id: str) -> None:
        """A record was deleted: its batch goes once no member record is left."""
        batch_id = self._batch_of.get(task_id)
        if batch_id is None:
            return
        self._batch_live[batch_id] -= 1
        if self._batch_live[batch_id] <= 0:
            for _, member in self._batches.pop(batch_id):
                self._batch_of.pop(member, None)
            del self._batch_live[batch_id]

    async def add_batch_members(self, batch_id: str, members: Sequence[tuple[int, str]]) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._add_members(batch_id, members)

    def _add_members(self, batch_id: str, members: Sequence[tuple[int, str]]) -> None:
        ordered = self._batches.setdefault(batch_id, [])
        self._batch_live.setdefault(batch_id, 0)
        for position, task_id in members:
            if task_id in self._batch_of:
                continue  # recorded already
            at = bisect.bisect_left(ordered, (position, ""))
            if at < len(ordered) and ordered[at][0] == position:
                continue  # the position keeps its task id
            ordered.insert(at, (position, task_id))  # at the end, as a rule
            self._batch_of[task_id] = batch_id
            if task_id in self._records or task_id in self._final:
                self._batch_live[batch_id] += 1

    async def batch_members(
        self, batch_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[tuple[int, str]]:
        await trio.lowlevel.checkpoint_if_cancelled()
        ordered = self._batches.get(batch_id, [])
        return ordered[offset:] if limit is None else ordered[offset : offset + limit]

    async def get(self, task_id: str) -> StoredTask | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._find(task_id)

    get_state = get  # records are whole here: always read

    async def get_many(
        self,
        task_ids: Collection[str],
        *,
        arguments: bool = True,  # records are whole here: always read
    ) -> dict[str, StoredTask]:
        await trio.lowlevel.checkpoint_if_cancelled()
        found = {}
        for task_id in task_ids:
            task = self._find(task_id)
            if task is not None:
                found[task_id] = task
        return found

    async def transition(
        self,
        task: StoredTask,
        *,
        expect: TaskStatus,
        token: int | None = None,
        result: Payload | None = None,
    ) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._transition(task, expect=expect, token=token, result=result)

    def _transition(
        self,
        task: StoredTask,
        *,
        expect: TaskStatus,
        token: int | None,
        result: Payload | None,
    ) -> bool:
        check_transition(expect, task.status)
        current = self._records.get(task.id)
        if current is None or current.status is not expect:
            return False
        if token is not None and current.token != token:
            return False
        packed = task.packed() if task.status.is_final else None
        if packed is not None:
            del self._records[task.id]
            self._final[task.id] = (
                task.status._value_,
                task.name,
                task.created_at,
                task.expires_at,
                task.token,
                packed,
            )
        else:
            self._records[task.id] = task
        if result is not None:
            self._result_types[task.id] = result.media_type
            self._result_data[task.id] = result.data
        if task.expires_at is not None:
            heapq.heappush(self._expiry, (task.expires_at, task.id))
        return True

    def _result(self, task_id: str) -> Payload | None:
        data = self._result_data.get(task_id)
        return None if data is None else Payload(media_type=self._result_types[task_id], data=data)

    async def get_result(self, task_id: str) -> Payload | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        return self._result(task_id)

    async def get_results(self, task_ids: Collection[str]) -> dict[str, Payload]:
        await trio.lowlevel.checkpoint_if_cancelled()
        found = {}
        for task_id in task_ids:
            payload = self._result(task_id)
            if payload is not None:
                found[task_id] = payload
        return found

    async def get_with_results(
        self, task_ids: Collection[str]
    ) -> dict[str, tuple[StoredTask, Payload | None]]:
        await trio.lowlevel.checkpoint_if_cancelled()
        found: dict[str, tuple[StoredTask, Payload | None]] = {}
        for task_id in task_ids:
            task = self._find(task_id)
            if task is not None:
                found[task_id] = (task, self._result(task_id))
        return found

    async def delete(self, task_id: str) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._drop_task(task_id):
            return False
        self._forget(task_id)
        return True

    async def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        arguments: bool = True,  # records are whole here: always read
    ) -> list[StoredTask]:
        await trio.lowlevel.checkpoint_if_cancelled()
        # Newest first, ties by id (as the diskcache backend orders them).
        if status is not None and not status.is_final:
            # Only records not final yet: the few live ones, sorted.
            matching = [
                t
                for t in self._records.values()
                if t.status is status and (name is None or t.name == name)
            ]
            matching.sort(key=_live_newest_first)
            return matching[offset : offset + limit]
        # Walk the index from the newest until the page is full: the
        # page's records (and those skipped by offset or filters) are read,
        # not the whole history.
        newest = self._newest
        if newest is None:
            newest = self._newest = SortedList(
                [(-t.created_at, i) for i, t in self._records.items()]
                + [(-final[2], i) for i, final in self._final.items()]
            )
        wanted = None if status is None else status.value
        records, finals = self._records, self._final
        page: list[StoredTask] = []
        skip = offset
        for _, task_id in newest:
            if len(page) >= limit:
                break
            live = records.get(task_id)
            if live is not None:
                if (status is not None and live.status is not status) or (
                    name is not None and live.name != name
                ):
                    continue
                if skip:
                    skip -= 1
                    continue
                page.append(live)
                continue
            final = finals[task_id]
            if (name is not None and final[1] != name) or (
                wanted is not None and final[0] != wanted
            ):
                continue
            if skip:
                skip -= 1
                continue
            page.append(_from_final(task_id, final))
        return page

    async def delete_expired(self, task_id: str, now: float) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        current = self._find(task_id)
        if current is None or current.expires_at is None or current.expires_at > now:
            return False
        self._drop_task(task_id)
        batch_id = self._batch_of.get(task_id)
        if batch_id is not None:
            self._batch_live[batch_id] -= 1  # its id is about to be used anew
        return True

    async def purge_expired(self, now: float) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        purged = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, task_id = heapq.heappop(self._expiry)
            current = self._find(task_id)
            if current is not None and current.expires_at is not None and current.expires_at <= now:
                self._drop_task(task_id)
                self._forget(task_id)
                purged += 1
        return purged


class MemoryBackend(Backend):
    """Queue and store in this process's memory.  Nothing survives the process."""

    queue: MemoryQueue
    store: MemoryStore
    volatile = True
    starts_on_enqueue = True
    finishes_now = True

    def __init__(self) -> None:
        self.queue = MemoryQueue()
        self.store = MemoryStore()

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()
        self.queue._engines += 1

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.queue._engines -= 1

    async def enqueue(
        self,
        task: StoredTask,
        *,
        priority: int,
        not_before: float,
        rank: float | None = None,
        on_stored: Callable[[], None] | None = None,  # not reported: reports_stored is False
    ) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self.store._create(task):
            return False
        self.queue._put(task.id, task.name, priority, not_before, rank)
        return True

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
        await trio.lowlevel.checkpoint_if_cancelled()
        store = self.store
        store._add_members(batch_id, list(zip(positions, (t.id for t in tasks), strict=True)))
        answers = []
        for task in tasks:
            created = store._create(task)
            if created:
                self.queue._put(task.id, task.name, priority, not_before, rank)
            answers.append(created)
        return answers

    async def begin(self, task: StoredTask, *, claim: Claim) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.queue._held(claim.task_id, claim.token) is None:
            return False
        return self.store._transition(task, expect=TaskStatus.PENDING, token=None, result=None)

    async def start(
        self, claim: Claim, *, starting: Callable[[StoredTask], StoredTask]
    ) -> StoredTask | None:
        await trio.lowlevel.checkpoint_if_cancelled()
        current = self.store._records.get(claim.task_id)
        if current is None or current.status is not TaskStatus.PENDING:
            return None
        if self.queue._held(claim.task_id, claim.token) is None:
            return None
        begun = starting(current)
        moved = self.store._transition(begun, expect=TaskStatus.PENDING, token=None, result=None)
        return begun if moved else None

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
        claims = await self.queue.claim(
            owner=owner, quotas=quotas, limit=limit, now=now, lease_until=lease_until
        )
        return [(claim, self._start(claim, starting)) for claim in claims]

    def _start(
        self, claim: Claim, starting: Callable[[Claim, StoredTask], StoredTask]
    ) -> StoredTask | None:
        """The claimed task started (its stored record moved to what
        ``starting`` made), or None when it did not start."""
        current = self.store._records.get(claim.task_id)
        if current is None or current.status is not TaskStatus.PENDING:
            return None
        begun = start_record(starting, claim, current)
        if begun is None or not self.store._transition(
            begun, expect=TaskStatus.PENDING, token=None, result=None
        ):
            return None
        return begun

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
        on_stored: Callable[[], None] | None = None,  # not reported: reports_stored is False
    ) -> tuple[bool, tuple[Claim, StoredTask | None] | None]:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self.store._create(task):
            return False, None
        claim = self.queue._put_claimed(task.id, task.name, priority, rank, owner, now, lease_until)
        return True, None if claim is None else (claim, self._start(claim, starting))

    async def finish(
        self,
        task: StoredTask,
        *,
        claim: Claim,
        result: Payload | None = None,
        waited: bool = False,
    ) -> bool:
        # (Nothing is held back here: ``waited`` changes nothing.)
        await trio.lowlevel.checkpoint_if_cancelled()
        return self.finish_now(task, claim=claim, result=result)

    def finish_now(self, task: StoredTask, *, claim: Claim, result: Payload | None = None) -> bool:
        moved = self.store._transition(
            task, expect=TaskStatus.IN_PROGRESS, token=claim.token, result=result
        )
        now = None if moved else self.store._records.get(claim.task_id)
        if now is None or now.status is not TaskStatus.PENDING:
            # (A record put back to pending meanwhile keeps its entry: the
            # release that follows makes it wait again.)
            self.queue._ack(claim.task_id, claim.token)
        return moved

    @classmethod
    def from_url(cls, url: str) -> MemoryBackend:
        """``memory://`` (nothing may follow the scheme)."""
        if url.rstrip("/") not in ("memory:", "memory:/"):
            raise BackendError(f"memory backend URL takes no path or options: {url!r}")
        return cls()
