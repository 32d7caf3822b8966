"""The in-process async client: ``client.<task>.submit(...)`` -> :class:`AsyncTask`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._define import TaskDefinition
from ._model import TaskInfo
from ._status import TaskStatus
from ._waiting import EngineWaiter

if TYPE_CHECKING:
    from ._engine import Engine, EngineStatistics

__all__ = ["AsyncClient", "AsyncEndpoint", "AsyncTask", "by_keyword"]


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
