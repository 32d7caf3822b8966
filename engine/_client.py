"""The in-process async client: ``client.<task>.submit(...)`` -> :class:`AsyncTask`."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from ._batches import (
    CHUNK,
    BatchResult,
    BatchWriter,
    InTurn,
    batch_counts,
    is_batch_id,
    members_name,
)
from ._define import TaskDefinition
from ._errors import BatchNotFound, CannotCancel, ErrandsError, TaskNotFound
from ._model import TaskInfo
from ._status import TaskStatus
from ._waiting import EngineWaiter, as_completed

if TYPE_CHECKING:
    from ._convert import Payload
    from ._engine import Engine, EngineStatistics
    from ._model import StoredTask

__all__ = ["AsyncBatch", "AsyncClient", "AsyncEndpoint", "AsyncTask", "by_keyword"]


def by_keyword(definition: TaskDefinition, positional: tuple[Any, ...]) -> str:
    """The message for a submit given positional arguments."""
    names = [p.name for p in definition.params]
    shown = ", ".join(f"{n}=..." for n in names) or "no arguments"
    return (
        f"{definition.name}.submit() takes its arguments by keyword, got {len(positional)} "
        f"by position; call {definition.name}.submit({shown})"
    )


class AsyncTask:
    """A handle on one task, for trio code.  Every method is async.

    The handle holds only the id: it stays valid across engine restarts on a
    durable backend, and any number of handles may point at one task.
    """

    __slots__ = ("_engine", "id", "name")

    def __init__(self, engine: Engine, task_id: str, name: str) -> None:
        self._engine = engine
        self.id = task_id
        self.name = name

    async def get_status(self) -> TaskStatus:
        """The current status.  Raises TaskNotFound for an unknown or expired id."""
        return await self._engine.status(self.id)

    async def get_info(self) -> TaskInfo:
        """Everything known about the task (times, attempt, progress, error, ...)."""
        return await self._engine.info(self.id)

    async def get(self) -> Any:
        """The result.  Raises TaskNotReady, TaskFailed, TaskCancelled or TaskNotFound."""
        return await self._engine.result(self.id)

    async def wait(self, timeout: float | None = None) -> TaskStatus:
        """Block until the task is final and return that status.

        Raises TimeoutError after ``timeout`` seconds.  Cancelling the caller
        leaves the task alone.
        """
        return await self._engine.wait(self.id, timeout)

    async def cancel(self) -> TaskStatus:
        """Cancel; returns the status once final or after a short grace.

        Raises CannotCancel when the task already finished or is a running
        sync task that is not cancellable.
        """
        return await self._engine.cancel(self.id)

    async def retry(self) -> AsyncTask:
        """A new task with the same arguments (``retry_of`` points here).

        Raises TaskNotReady while this one is not final.
        """
        record = await self._engine.retry(self.id)
        return AsyncTask(self._engine, record.id, record.name)

    def _completion_waiter(self) -> EngineWaiter:
        return EngineWaiter(self._engine)

    def __repr__(self) -> str:
        return f"<AsyncTask {self.name} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncTask) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class AsyncBatch:
    """A handle on a batch of tasks submitted together (``submit_many``), for trio code.

    Attributes:
        id: the batch id (``client.get_batch(id)`` finds it again).
        name: the task endpoint.
        tasks: the accepted tasks, in submission order.
        indexes: each task's item's index in the submission.
        rejected: the items refused at submit, by their index in the
            submission, with the error each got (``InvalidArguments``...).
    """

    def __init__(
        self,
        engine: Engine,
        batch_id: str,
        name: str,
        members: list[tuple[int, AsyncTask]],
        rejected: Mapping[int, ErrandsError] | None = None,
    ) -> None:
        self._engine = engine
        self.id = batch_id
        self.name = name
        self.indexes = [index for index, _ in members]
        self.tasks = [task for _, task in members]
        self.rejected = dict(rejected or {})

    async def counts(self) -> dict[str, int]:
        """How many tasks are in each status, plus ``total`` (and ``expired``
        for tasks no longer kept)."""
        return await batch_counts(self._engine, self.id)

    async def wait(self, timeout: float | None = None) -> dict[str, int]:
        """Block until every task is final; return :meth:`counts` then.

        Raises TimeoutError after ``timeout`` seconds.
        """
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            # The engine's waiting set reads the tasks once (500 a call),
            # then each once more at its end; a task unknown or gone counts
            # as final.
            left = {task.id for task in self.tasks}
            waiting = self._engine.waiting_set(left, infos=False)
            try:
                while left:
                    left.difference_update(await waiting.next(None))
            finally:
                waiting.close()
        if scope.cancelled_caught:
            raise TimeoutError(f"batch {self.id} not finished after {timeout} s")
        return await self.counts()

    async def results(self, *, order: str = "submission") -> AsyncIterator[BatchResult]:
        """Each task's outcome as it is final: in submission ``order``
        (``"submission"``) or as they finish (``"completed"``)."""
        async for ready in self.result_chunks(order=order):
            for result in ready:
                yield result

    async def result_chunks(self, *, order: str = "submission") -> AsyncIterator[list[BatchResult]]:
        """:meth:`results`, as lists of the outcomes read together.

        In submission order, the members come as their turn comes
        (:class:`~errands._batches.InTurn`: each read when the wait begins
        and once at its end); the outcomes of a turn's members are read
        together, up to 500 in one store call."""
        if order not in ("submission", "completed"):
            raise ValueError(f"order must be 'submission' or 'completed', not {order!r}")
        engine = self._engine
        if order == "completed":
            indexes = dict(zip((t.id for t in self.tasks), self.indexes, strict=True))
            async for task in as_completed(self.tasks):
                yield [await _outcome(engine, indexes[task.id], task.id)]
            return
        in_turn = InTurn(engine, [task.id for task in self.tasks], infos=False)
        try:
            while not in_turn.done:
                turn = await in_turn.next(None)
                for start in range(0, len(turn), CHUNK):
                    members = turn[start : start + CHUNK]
                    read = await engine.result_payloads([task_id for _, task_id, _ in members])
                    yield [
                        _result_of(engine, self.indexes[at], task_id, read.get(task_id))
                        for at, task_id, _ in members
                    ]
        finally:
            in_turn.close()

    async def cancel(self) -> dict[str, int]:
        """Cancel every task of the batch not final yet; return :meth:`counts` then.

        A running sync task that is not cancellable runs on to its end.
        """
        limiter = trio.CapacityLimiter(64)

        async def cancel(task: AsyncTask) -> None:
            async with limiter:
                try:
                    await task.cancel()
                except (CannotCancel, TaskNotFound):
                    pass  # finished, gone, or running and not cancellable

        async with trio.open_nursery() as nursery:
            for task in self.tasks:
                nursery.start_soon(cancel, task)
        return await self.counts()

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<AsyncBatch {self.name} {self.id} tasks={len(self.tasks)}>"


async def _outcome(engine: Engine, index: int, task_id: str) -> BatchResult:
    """What a batch's results report of one final (or gone) task."""
    read = await engine.result_payloads([task_id])
    return _result_of(engine, index, task_id, read.get(task_id))


def _result_of(
    engine: Engine, index: int, task_id: str, got: tuple[StoredTask, Payload | None] | None
) -> BatchResult:
    """What a batch's results report of a task, from what was read of it
    (None: gone).  A success's record is not decoded: its stored scalars
    and result say all."""
    if got is None:
        return BatchResult(index=index, task_id=task_id, status="expired")
    task, payload = got
    status = task.status
    if status is TaskStatus.SUCCESS:
        assert payload is not None
        return BatchResult(
            index=index,
            task_id=task_id,
            status=status.value,
            result=engine.outcome(task_id, status, task.name, None, payload),
        )
    error = task.without_args().error
    return BatchResult(index=index, task_id=task_id, status=status.value, error=error)


async def load_batch(engine: Engine, batch_id: str) -> AsyncBatch:
    """The batch ``batch_id`` with its tasks (BatchNotFound when unknown or gone)."""
    members: list[tuple[int, str]] = []
    if is_batch_id(batch_id):
        while True:
            page = await engine.core.store.batch_members(batch_id, offset=len(members), limit=CHUNK)
            members.extend(page)
            if len(page) < CHUNK:
                break
    if not members:
        raise BatchNotFound(batch_id)
    name = await members_name(engine, [task_id for _, task_id in members[:CHUNK]])
    return AsyncBatch(
        engine, batch_id, name, [(index, AsyncTask(engine, i, name)) for index, i in members]
    )


class AsyncEndpoint:
    """One task endpoint of a client: ``submit`` new tasks, ``get_task`` old ones."""

    def __init__(
        self,
        engine: Engine,
        definition: TaskDefinition,
        *,
        priority: int = 0,
        delay: float | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self._engine = engine
        self.definition = definition
        self.name = definition.name
        self._priority = priority
        self._delay = delay
        self._idempotency_key = idempotency_key

    async def submit(self, *positional: Any, **arguments: Any) -> AsyncTask:
        """Validate the arguments and enqueue a task; returns at once with its handle.

        Arguments are passed by keyword (``submit(prompt="...")``).

        Raises:
            InvalidArguments: naming every bad field; nothing is enqueued.
            TypeError: an argument was passed by position.
        """
        if positional:
            raise TypeError(by_keyword(self.definition, positional))
        record = await self._engine.submit(
            self.name,
            arguments,
            priority=self._priority,
            delay=self._delay,
            idempotency_key=self._idempotency_key,
        )
        return AsyncTask(self._engine, record.id, self.name)

    async def submit_many(self, items: Iterable[Mapping[str, Any]]) -> AsyncBatch:
        """Validate and enqueue one task per item (a mapping of keyword
        arguments), written a chunk at a time; returns the :class:`AsyncBatch`.

        Items are checked one by one: an invalid item is left out and named
        in ``batch.rejected``; the others are accepted.  The submit options
        (priority, delay, idempotency key) apply to every item; with an
        idempotency key, sending the same items again returns the same tasks.

        Raises:
            EngineUnavailable: storage failed part way (the batch id in its
                message lists what was accepted).
        """
        writer = BatchWriter(
            self._engine,
            self.name,
            priority=self._priority,
            delay=self._delay,
            idempotency_key=self._idempotency_key,
        )
        tasks: list[tuple[int, AsyncTask]] = []
        rejected: dict[int, ErrandsError] = {}
        chunk: list[Any] = []

        async def flush() -> None:
            for answer in await writer.add(chunk):
                if answer.task_id is not None:
                    task = AsyncTask(self._engine, answer.task_id, self.name)
                    tasks.append((answer.index, task))
                elif answer.error is not None:
                    rejected[answer.index] = answer.error
            chunk.clear()

        await trio.lowlevel.checkpoint()
        for item in items:
            chunk.append(item)
            if len(chunk) >= CHUNK:
                await flush()
        if chunk:
            await flush()
        return AsyncBatch(self._engine, writer.id, self.name, tasks, rejected)

    def options(
        self,
        *,
        priority: int = 0,
        delay: float | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncEndpoint:
        """This endpoint with submit options: higher ``priority`` runs first;
        ``delay`` seconds before the task may start; a repeated
        ``idempotency_key`` returns the first task instead of a new one."""
        if delay is not None and delay < 0:
            raise ValueError("delay must not be negative")
        return AsyncEndpoint(
            self._engine,
            self.definition,
            priority=priority,
            delay=delay,
            idempotency_key=idempotency_key,
        )

    def get_task(self, task_id: str) -> AsyncTask:
        """A handle for an existing task id (checked when the handle is used)."""
        return AsyncTask(self._engine, task_id, self.name)

    def __repr__(self) -> str:
        return f"<AsyncEndpoint {self.name}>"


class AsyncClient:
    """The client an engine yields: one attribute per task endpoint."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._endpoints = {name: AsyncEndpoint(engine, d) for name, d in engine.definitions.items()}

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def endpoints(self) -> Mapping[str, AsyncEndpoint]:
        return dict(self._endpoints)

    def __getattr__(self, name: str) -> AsyncEndpoint:
        try:
            return self.__dict__["_endpoints"][name]  # type: ignore[no-any-return]
        except KeyError:
            known = ", ".join(sorted(self.__dict__.get("_endpoints", ())))
            raise AttributeError(f"no task endpoint {name!r} (endpoints: {known})") from None

    def __getitem__(self, name: str) -> AsyncEndpoint:
        return self._endpoints[name]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._endpoints))

    def get_task(self, task_id: str) -> AsyncTask:
        """A handle for any task id (ids are global across endpoints).

        Its ``name`` is filled in lazily; use ``get_info()`` for it.
        """
        return AsyncTask(self._engine, task_id, "")

    async def get_batch(self, batch_id: str) -> AsyncBatch:
        """The batch ``batch_id`` (BatchNotFound when unknown or all its tasks expired)."""
        return await load_batch(self._engine, batch_id)

    async def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskInfo]:
        """Tasks, newest first."""
        return await self._engine.list(name=name, status=status, limit=limit, offset=offset)

    def statistics(self) -> EngineStatistics:
        return self._engine.statistics()

    def __repr__(self) -> str:
        return f"<AsyncClient {self._engine.service.name} tasks={sorted(self._endpoints)}>"
