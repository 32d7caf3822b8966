"""Bulk submit: many tasks of one endpoint in one batch, written in chunks.

A batch is a set of tasks submitted together: it has an id, and its
members are the accepted tasks in submission order.  :class:`BatchWriter`
validates items one by one (an invalid item is reported and skipped; the
others are accepted) and writes the valid ones a chunk at a time, each
chunk in one backend call (:meth:`~errands.Backend.enqueue_many`: one
transaction on diskcache), with their membership.  A crash part way leaves
every accepted task listed in its batch; the items after it were never
accepted.

With an idempotency key, the batch id and each item's task id derive from
the key (and the item's index in the submission), so sending the same
items again after a failure returns the same tasks instead of new ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import (
    BackendError,
    EngineUnavailable,
    ErrandsError,
    FieldError,
    InvalidArguments,
    LimitExceeded,
)
from ._health import HOLD
from ._model import StoredTask, TaskError, TaskInfo, TaskRecord, is_task_id, new_task_id

if TYPE_CHECKING:
    from ._engine import Engine
    from ._watching import WaitingSet

__all__ = ["BatchItem", "BatchResult", "BatchWriter", "InTurn", "batch_id_for", "is_batch_id"]

log = logging.getLogger("errands.engine")

#: Items written per backend call.
CHUNK = 500
#: Members a results stream in submission order waits on at a time (a
#: waiting set of each span in turn): the first results of a large batch
#: need not wait for every member's status to be read.
SPAN = 10 * CHUNK


class InTurn:
    """A batch's members in submission order, each once it has ended: the
    results streams in that order (``batch.results()``, the HTTP stream
    with ``wait=true``).

    The members are waited on as a waiting set, :data:`SPAN` of them at a
    time: each is read when the wait on its span begins and once at its
    end, whatever its turn, and an end that comes before its turn is kept
    until then.  (Reading a window of the next 500 at each end of the
    member whose turn it was read each about twenty times.)  In the
    engine's trio run; call :meth:`close` when done.
    """

    def __init__(self, engine: Engine, ids: Sequence[str], *, infos: bool) -> None:
        self._engine = engine
        self._ids = ids
        self._infos = infos
        self._last = {task_id: at for at, task_id in enumerate(ids)}  # where each is forgotten
        self._ended: dict[str, TaskInfo | None] = {}
        self._waiting: WaitingSet | None = None
        self._span = 0
        #: The first member not handed out yet.
        self.position = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self._ids)

    async def next(self, timeout: float | None) -> list[tuple[int, str, TaskInfo | None]]:
        """The members whose turn came since the last call (position, task
        id, and its info as the waiting set read it: None without
        ``infos``, or when gone); ``[]`` when ``timeout`` seconds pass first."""
        ids, ended = self._ids, self._ended
        if not self.done and ids[self.position] not in ended:
            if self.position >= self._span:  # the next span of members is waited on
                self.close()
                self._span = self.position + SPAN
                self._waiting = self._engine.waiting_set(
                    ids[self.position : self._span], infos=self._infos
                )
            assert self._waiting is not None
            ended.update(await self._waiting.next(timeout))
        turn: list[tuple[int, str, TaskInfo | None]] = []
        while not self.done and ids[self.position] in ended:
            at, task_id = self.position, ids[self.position]
            info = ended[task_id] if self._last[task_id] > at else ended.pop(task_id)
            turn.append((at, task_id, info))
            self.position += 1
        return turn

    def close(self) -> None:
        if self._waiting is not None:
            self._waiting.close()
            self._waiting = None


async def members_name(engine: Engine, task_ids: Sequence[str]) -> str:
    """The task name of a batch whose members are ``task_ids`` (in order):
    what the first of them still kept says ("" when none of the first
    :data:`CHUNK` is).  The members of a batch share their name, so one
    record is read, then more only when it is gone (every opened results
    stream read 500: most of a bulk's reads per task after its own)."""
    store = engine.core.store
    for chunk in (task_ids[:1], task_ids[1:CHUNK]):
        if chunk:
            found = await store.get_many(chunk, arguments=False)
            for stored in found.values():
                return stored.name
    return ""


def is_batch_id(value: object) -> bool:
    """Batch ids have the shape of task ids."""
    return is_task_id(value)


def batch_id_for(engine: Engine, name: str, idempotency_key: str | None) -> str:
    from ._engine import idempotent_id

    if idempotency_key is None:
        return new_task_id()
    return idempotent_id(engine.service.name, name, f"\0batch\0{idempotency_key}")


@attrs.frozen(kw_only=True)
class BatchItem:
    """What became of one submitted item: its task id, or why it was refused."""

    index: int
    task_id: str | None = None
    error: ErrandsError | None = None

    @property
    def accepted(self) -> bool:
        return self.task_id is not None


@attrs.frozen(kw_only=True)
class BatchResult:
    """One task's outcome in a batch's results.

    Attributes:
        index: the task's item's index in the submission (0-based; items
            refused at submit have indexes too, and no result).
        task_id: its id.
        status: ``success``, ``failure``, ``cancelled``, or ``expired`` for
            a task no longer kept.
        result: the result of a successful task (else None).
        error: why a failed task failed (else None).
    """

    index: int
    task_id: str
    status: str
    result: Any = None
    error: TaskError | None = None


class BatchWriter:
    """Accepts the items of one batch, a chunk at a time (see the module docstring).

    Use :meth:`add` with consecutive chunks of items; every item gets a
    :class:`BatchItem`, in order.  Each accepted task is the batch's member at
    its item's index in the submission (``first_index`` for the first item:
    a batch sent in several requests continues with ``batch_id`` and the
    index its next item has).
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        from_json: bool = False,
        priority: int = 0,
        delay: float | None = None,
        idempotency_key: str | None = None,
        batch_id: str | None = None,
        first_index: int = 0,
    ) -> None:
        engine.definition(name)  # LookupError for an unknown endpoint
        engine.check_caps(delay, idempotency_key)
        if batch_id is not None and not is_batch_id(batch_id):
            raise ValueError(f"{batch_id!r} is not a batch id")
        if first_index < 0:
            raise ValueError("first_index must not be negative")
        self.engine = engine
        self.name = name
        self.id = batch_id or batch_id_for(engine, name, idempotency_key)
        self._from_json = from_json
        self._priority = priority
        self._delay = delay
        self._key = idempotency_key
        self._index = first_index  # the next item's index in the submission
        #: Accepted tasks so far.
        self.accepted = 0

    async def add(self, items: Sequence[Any]) -> list[BatchItem]:
        """Validate and enqueue ``items`` (mappings of arguments) as the next
        part of the batch; one :class:`BatchItem` per item, in order.

        Raises:
            EngineClosed: the engine stopped.
            EngineUnavailable: storage failed; this chunk was not accepted
                (the chunks before it were).
        """
        engine = self.engine
        engine.check_accepting()
        definition = engine.definition(self.name)
        answers: list[BatchItem] = []
        records: list[tuple[int, TaskRecord]] = []
        positions: list[int] = []
        now = engine.core.now()
        for item in items:
            index = self._index
            self._index += 1
            if not isinstance(item, Mapping):
                message = "an item must be an object of arguments"
                refused = InvalidArguments(self.name, [FieldError(path="$", message=message)])
                answers.append(BatchItem(index=index, error=refused))
                continue
            try:
                args = await engine.validate(definition, item, self._from_json)
            except (InvalidArguments, LimitExceeded) as exc:
                answers.append(BatchItem(index=index, error=exc))
                continue
            key = None if self._key is None else f"{self._key}\0{index}"
            record = engine.new_record(
                definition, args, now=now, priority=self._priority, delay=self._delay, key=key
            )
            records.append((len(answers), record))
            positions.append(index)
            answers.append(BatchItem(index=index, task_id=record.id))
        if records:
            await self._write(records, positions, answers)
        return answers

    async def _write(
        self, records: list[tuple[int, TaskRecord]], positions: list[int], answers: list[BatchItem]
    ) -> None:
        engine = self.engine
        backend = engine.backend
        not_before = records[0][1].not_before or 0.0
        stored = [StoredTask.from_record(r) for _, r in records]
        try:
            created = await backend.enqueue_many(
                stored,
                priority=self._priority,
                not_before=not_before,
                rank=engine.core.rank(self._priority, records[0][1].not_before),
                batch_id=self.id,
                positions=positions,
            )
            for (at, record), new in zip(records, created, strict=True):
                if not new:
                    answers[at] = await self._existing(answers[at], record)
        except BackendError as exc:
            engine.core.health.fault("submit", exc, hold=HOLD)
            raise EngineUnavailable(
                f"part of the batch was not accepted: storage is failing ({exc})",
                retry_after=engine.core.health.retry_after(),
            ) from exc
        engine.core.health.clear("submit")
        self.accepted += sum(1 for at, _ in records if answers[at].accepted)
        engine.core.submitted += sum(created)
        fresh = [record.id for (_, record), new in zip(records, created, strict=True) if new]
        engine.core.events.submitted_together(self.id, self.name, fresh)
        engine.wake_for(self.name)

    async def _existing(self, answer: BatchItem, record: TaskRecord) -> BatchItem:
        """An item whose task id existed: an idempotent repeat (or a conflict)."""
        if self._key is None:
            raise BackendError(f"task id {record.id} already exists")  # 2**-128 odds
        try:
            await self.engine.enqueue_idempotent(record, f"{self._key}\0{answer.index}")
        except InvalidArguments as exc:
            return BatchItem(index=answer.index, error=exc)
        return answer


async def batch_counts(engine: Engine, batch_id: str) -> dict[str, int]:
    """How many members of the batch are in each status (``total`` too):
    :meth:`Store.batch_counts`, which reads no member's record."""
    return await engine.core.store.batch_counts(batch_id, now=engine.core.now())
