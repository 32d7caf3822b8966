"""``errands.start``: an engine in its own thread, for scripts and notebooks.

The engine runs ``trio.run`` in a daemon thread.  Submits (and the waits on
what they submitted) go through the :class:`~errands._handoff.Handoff`, in
bursts, with no round trip per call; the other calls through
``trio.from_thread``.  Leaving the ``with`` block, calling ``close()``, or the
interpreter exiting shuts the engine down cleanly.
"""

from __future__ import annotations

import atexit
import html
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import outcome
import trio

from ._backend import Backend
from ._batches import BatchResult
from ._client import AsyncBatch, AsyncClient, AsyncEndpoint, AsyncTask, by_keyword
from ._engine import Engine, EngineStatistics
from ._errors import EngineClosed, ErrandsError
from ._handoff import Handoff, Mailbox, Ticket
from ._model import TaskInfo
from ._open import build_options, open_engine
from ._options import DEFAULTS, EngineOptions
from ._status import TaskStatus

__all__ = ["SyncClient", "SyncEndpoint", "Task", "start"]

T = TypeVar("T")


def task_html(task: Any) -> str:
    """A task handle as HTML for notebooks (``_repr_html_``); never raises."""
    try:
        info = task.get_info()
    except Exception as exc:  # a notebook display must never raise
        name, state, detail = task.name, "unknown", html.escape(str(exc))
    else:
        name, state = info.name, info.status.value
        bits = []
        if info.progress is not None:
            bits.append(f"{info.progress:.0%}")
        if info.message:
            bits.append(html.escape(info.message))
        if info.error is not None:
            bits.append(html.escape(str(info.error)))
        detail = " · ".join(bits)
    return (
        '<div class="errands-task">'
        f"<b>errands task</b> <code>{html.escape(name)}</code> "
        f"<code>{html.escape(task.id)}</code>: "
        f'<span class="errands-status errands-{state}">{state}</span>'
        + (f" <small>{detail}</small>" if detail else "")
        + "</div>"
    )


#: Seconds close() waits for submits handed over before it to be stored.
_SETTLE_SECONDS = 5.0

#: A call of :meth:`SyncClient.call_soon`: the coroutine to start, and where
#: its outcome goes.
_BridgeCall = tuple[Callable[[], Awaitable[None]], Callable[[outcome.Outcome[Any]], None]]


class _Portal:
    """Runs coroutine functions in the engine's trio thread and waits for them."""

    def __init__(self) -> None:
        self.token: trio.lowlevel.TrioToken | None = None
        self.died_of: str | None = None  # set when an engine bug ended the engine
        self.handoff: Handoff | None = None  # submits from threads (set while running)

    def _closed(self, message: str) -> EngineClosed:
        if self.died_of is not None:
            return EngineClosed(f"the engine died: {self.died_of}")
        return EngineClosed(message)

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self.token is None:
            raise self._closed("the engine is not running")
        _refuse_in_trio("this sync client's methods block")
        try:
            return trio.from_thread.run(self._settled, afn, args, trio_token=self.token)
        except trio.RunFinishedError:
            raise self._closed("the engine has stopped") from None

    async def _settled(self, afn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
        # What was submitted before this call is stored first, so a handle
        # used right after its submit finds its task.
        handoff = self.handoff
        if handoff is not None and handoff.unsettled:
            await handoff.settle()
        return await afn(*args)


def _refuse_in_trio(what: str) -> None:
    """Blocking the trio thread would freeze it: name the API to use instead."""
    if not trio.lowlevel.in_trio_run():
        return  # not in a trio run's thread: blocking is fine
    raise ErrandsError(
        f"{what}, and this is trio code: use `async with errands.open_engine(...) as "
        "client:` and await its methods instead (errands.start() and its sync client "
        "are for plain scripts, threads, asyncio and notebooks)"
    )


class _PortalWaiter:
    """Waits through the engine thread (for ``as_completed`` over ``Task``)."""

    is_async = False

    def __init__(self, portal: _Portal, engine: Engine) -> None:
        self._portal = portal
        self.owner = engine

    def now(self) -> float:
        return time.monotonic()

    def wait_any(self, task_ids: list[str], timeout: float | None) -> dict[str, Any]:
        return self._portal.run(self.owner.wait_any, task_ids, timeout)

    def open_waiting(self, task_ids: list[str]) -> _PortalWaitingSet:
        """The engine's waiting set of ``task_ids`` (``Engine.waiting_set``),
        used from this thread: one call into the engine per round."""

        async def make() -> Any:
            await trio.lowlevel.checkpoint()
            return self.owner.waiting_set(task_ids, keep_results=True)

        return _PortalWaitingSet(self._portal, self._portal.run(make))


class _PortalWaitingSet:
    """An engine's waiting set, used from another thread through the portal:
    one call into the engine per round (it also keeps the results of the
    successes it returns for their ``get()``: :class:`~errands._watching.Kept`)."""

    def __init__(self, portal: _Portal, waiting: Any) -> None:
        self._portal = portal
        self._waiting = waiting

    def next(self, timeout: float | None) -> dict[str, Any]:
        return self._portal.run(self._waiting.next, timeout)

    def close(self) -> None:
        async def close() -> None:
            await trio.lowlevel.checkpoint()
            self._waiting.close()

        try:
            self._portal.run(close)
        except EngineClosed:
            pass  # the engine stopped: its waiting set went with it


class Task:
    """A handle on one task, for sync code (scripts, notebooks, threads).

    Same members as :class:`~errands.AsyncTask`, without ``await``.
    """

    __slots__ = ("_handle", "_portal", "_ticket")

    def __init__(self, portal: _Portal, handle: AsyncTask, ticket: Ticket | None = None) -> None:
        self._portal = portal
        self._handle = handle
        self._ticket = ticket  # set when this thread path submitted it

    @property
    def id(self) -> str:
        return self._handle.id

    @property
    def name(self) -> str:
        return self._handle.name

    def get_status(self) -> TaskStatus:
        """The current status.  Raises TaskNotFound for an unknown or expired id."""
        ended = self._ended_here()
        if ended is not None:
            status = ended[0].final(ended[1])  # final for good, unless expired
            if status is not None:
                return status
        return self._portal.run(self._handle.get_status)

    def get_info(self) -> TaskInfo:
        """Everything known about the task (times, attempt, progress, error, ...)."""
        return self._portal.run(self._handle.get_info)

    def get(self) -> Any:
        """The result.  Raises TaskNotReady, TaskFailed, TaskCancelled or TaskNotFound.

        Right after ``as_completed`` yielded the task, the result it read
        along, without a call into the engine."""
        engine = self._handle._engine
        kept = engine.kept.take(self.id)  # taken either way: not kept on
        ended = self._ended_here()
        if ended is not None:
            known, result = ended[0].outcome(ended[1], self.id)  # no round trip
            if known:
                return result
        if kept is not None:
            return engine.outcome(self.id, TaskStatus.SUCCESS, kept[0], None, kept[1])
        return self._portal.run(self._handle.get)

    def _ended_here(self) -> tuple[Handoff, Ticket] | None:
        """The hand-off and ticket of a task submitted and ended here, whose
        ticket can answer (None: ask the engine)."""
        ticket, handoff = self._ticket, self._portal.handoff
        if ticket is None or handoff is None or ticket.status is None:
            return None
        _refuse_in_trio("this sync client's methods block")
        return handoff, ticket

    def wait(self, timeout: float | None = None) -> TaskStatus:
        """Block until final and return that status; TimeoutError after ``timeout`` s."""
        ticket, handoff = self._ticket, self._portal.handoff
        if ticket is not None and handoff is not None:
            # Submitted here: the engine fills in the ticket when it ends the
            # task, so most waits need no round trip to the engine's thread.
            _refuse_in_trio("this sync client's methods block")
            start = time.monotonic()
            try:
                status = handoff.wait(ticket, timeout)
            except TimeoutError:
                status = self.get_status()
                if status.is_final:
                    return status
                raise TimeoutError(
                    f"task {self.id} is still {status.value} after {timeout} s"
                ) from None
            if status is not None:
                return status
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        return self._portal.run(self._handle.wait, timeout)

    def cancel(self) -> TaskStatus:
        """Cancel; returns the status once final or after a short grace.

        Raises CannotCancel when too late.
        """
        return self._portal.run(self._handle.cancel)

    def retry(self) -> Task:
        """A new task with the same arguments.  Raises TaskNotReady while not final."""
        return Task(self._portal, self._portal.run(self._handle.retry))

    def _completion_waiter(self) -> _PortalWaiter:
        return _PortalWaiter(self._portal, self._handle._engine)

    def __repr__(self) -> str:
        return f"<Task {self.name} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _repr_html_(self) -> str:
        return task_html(self)


class Batch:
    """A handle on a batch of tasks (``submit_many``), for sync code.

    Same members as :class:`~errands.AsyncBatch`, without ``await``;
    ``results()`` is a plain iterator.
    """

    def __init__(self, portal: _Portal, handle: AsyncBatch) -> None:
        self._portal = portal
        self._handle = handle
        self.id = handle.id
        self.name = handle.name
        self.tasks = [Task(portal, t) for t in handle.tasks]
        self.indexes = handle.indexes
        self.rejected = handle.rejected

    def counts(self) -> dict[str, int]:
        """How many tasks are in each status, plus ``total``."""
        return self._portal.run(self._handle.counts)

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        """Block until every task is final; the counts then.  TimeoutError after ``timeout``."""
        return self._portal.run(self._handle.wait, timeout)

    def results(self, *, order: str = "submission") -> Iterator[BatchResult]:
        """Each task's outcome as it is final, in submission ``order`` or as
        they finish (``"completed"``)."""
        if order not in ("submission", "completed"):
            raise ValueError(f"order must be 'submission' or 'completed', not {order!r}")
        chunks = self._handle.result_chunks(order=order)

        async def step() -> list[BatchResult] | None:
            try:
                return await chunks.__anext__()
            except StopAsyncIteration:
                return None

        # One call into the engine per list of outcomes read together, not
        # one per task.
        while True:
            ready = self._portal.run(step)
            if ready is None:
                return
            yield from ready

    def cancel(self) -> dict[str, int]:
        """Cancel every task not final yet; the counts then."""
        return self._portal.run(self._handle.cancel)

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<Batch {self.name} {self.id} tasks={len(self.tasks)}>"


class SyncEndpoint:
    """One task endpoint: ``submit`` new tasks, ``get_task`` existing ones."""

    def __init__(self, portal: _Portal, endpoint: AsyncEndpoint) -> None:
        self._portal = portal
        self._endpoint = endpoint
        self.name = endpoint.name

    def submit(self, *positional: Any, **arguments: Any) -> Task:
        """Validate and enqueue; returns the handle at once.  Raises InvalidArguments.

        Arguments are passed by keyword (``submit(prompt="...")``).
        """
        endpoint = self._endpoint
        if positional:
            raise TypeError(by_keyword(endpoint.definition, positional))
        handoff = self._portal.handoff
        if (
            handoff is not None
            and endpoint._idempotency_key is None  # its lookup reads storage
            and not endpoint.definition.decodes_images  # decoded off the loop, bounded
        ):
            _refuse_in_trio("this sync client's methods block")
            record, ticket = handoff.submit(
                endpoint.definition,
                arguments,
                priority=endpoint._priority,
                delay=endpoint._delay,
            )
            return Task(self._portal, AsyncTask(endpoint._engine, record.id, self.name), ticket)

        async def submit() -> AsyncTask:
            return await endpoint.submit(**arguments)

        return Task(self._portal, self._portal.run(submit))

    def submit_many(self, items: Iterable[Mapping[str, Any]]) -> Batch:
        """Validate and enqueue one task per item, in chunks; the :class:`Batch`
        (see :meth:`AsyncEndpoint.submit_many`)."""

        async def submit_many() -> AsyncBatch:
            return await self._endpoint.submit_many(items)

        return Batch(self._portal, self._portal.run(submit_many))

    def options(
        self,
        *,
        priority: int = 0,
        delay: float | None = None,
        idempotency_key: str | None = None,
    ) -> SyncEndpoint:
        """This endpoint with submit options (see :meth:`AsyncEndpoint.options`)."""
        return SyncEndpoint(
            self._portal,
            self._endpoint.options(priority=priority, delay=delay, idempotency_key=idempotency_key),
        )

    def get_task(self, task_id: str) -> Task:
        """A handle for an existing task id."""
        return Task(self._portal, self._endpoint.get_task(task_id))

    def __repr__(self) -> str:
        return f"<SyncEndpoint {self.name}>"


class SyncClient:
    """An engine running in a background thread, and its sync client.

    Returned by :func:`start`; a context manager, or call :meth:`close`.
    """

    def __init__(
        self, service: object, *, backend: Backend | str | None, options: EngineOptions
    ) -> None:
        self._portal = _Portal()
        self._service = service
        self._backend = backend
        self._options = options
        self._aclient: AsyncClient | None = None
        self._calls: trio.Nursery | None = None
        self._bridge: Mailbox[_BridgeCall] | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._endpoints: dict[str, SyncEndpoint] = {}
        self._thread = threading.Thread(target=self._main, name="errands-engine", daemon=True)
        self._closed = False
        #: Called (in the engine thread) with the reason if an engine bug ends
        #: the engine after it started.
        self.on_death: Callable[[str], None] | None = None

    def _start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        assert self._aclient is not None
        self._endpoints = {
            name: SyncEndpoint(self._portal, endpoint)
            for name, endpoint in self._aclient.endpoints.items()
        }
        atexit.register(self.close)

    def _main(self) -> None:
        try:
            trio.run(self._amain)
        except BaseException as exc:
            if not self._ready.is_set():
                self._error = exc
            else:
                # An engine bug after start (the engine logged it): later calls
                # say so, and whoever embeds the client is told.
                engine = self._aclient.engine if self._aclient is not None else None
                died_of = engine.health.died_of if engine is not None else None
                self._portal.died_of = died_of or f"{type(exc).__name__}: {exc}"
                if self.on_death is not None:
                    self.on_death(self._portal.died_of)
        finally:
            self._portal.token = None
            handoff, self._portal.handoff = self._portal.handoff, None
            if handoff is not None:
                handoff.abandon()  # and, with no handoff, calls say EngineClosed
            self._ready.set()

    async def _amain(self) -> None:
        async with (
            open_engine(self._service, backend=self._backend, options=self._options) as client,
            trio.open_nursery() as calls,
        ):
            self._calls = calls
            self._aclient = client
            self._stop = trio.Event()
            token = trio.lowlevel.current_trio_token()
            self._bridge = Mailbox(token, self._start_calls)
            handoff = Handoff(client.engine, calls.start_soon)
            self._portal.handoff = handoff
            self._portal.token = token
            self._ready.set()
            await self._stop.wait()
            # What was submitted before close() is stored before the engine
            # stops (on a durable backend it is then there at the next start).
            with trio.CancelScope(shield=True), trio.move_on_after(_SETTLE_SECONDS):
                await handoff.settle()
            calls.cancel_scope.cancel()

    def _start_calls(self, calls: list[_BridgeCall]) -> None:
        # On the trio thread, in a run_sync_soon callback: must not raise.
        assert self._calls is not None
        for run, deliver in calls:
            try:
                self._calls.start_soon(run)
            except RuntimeError:  # closing: the calls nursery takes no more
                deliver(outcome.Error(EngineClosed("the engine has stopped")))

    @property
    def engine(self) -> Engine:
        """The engine (it lives in the engine thread: call it only through
        :meth:`call_soon` or this client's methods)."""
        assert self._aclient is not None
        return self._aclient.engine

    def call_soon(
        self,
        afn: Callable[..., Awaitable[T]],
        *args: Any,
        deliver: Callable[[outcome.Outcome[T]], None],
    ) -> Callable[[], None]:
        """Start ``afn(*args)`` in the engine thread without waiting for it.

        ``deliver(outcome)`` is called *in the engine thread* when it ends, so
        it must only hand the outcome over (e.g. ``loop.call_soon_threadsafe``).
        Returns a thread-safe function that cancels the call.  This is the
        bridge that lets any event loop (asyncio, another trio run) use the
        engine without blocking a thread per call.

        Raises:
            EngineClosed: the engine is not running.
        """
        token = self._portal.token
        bridge = self._bridge
        if token is None or bridge is None:
            raise EngineClosed("the engine is not running")
        scope = trio.CancelScope()
        portal = self._portal

        async def run() -> None:
            with scope:
                result = await outcome.acapture(portal._settled, afn, args)
            if scope.cancelled_caught:
                result = outcome.Error(EngineClosed("the call was cancelled"))
            deliver(result)

        try:
            # Calls made together start together: one wake-up of the engine's
            # loop per burst, not one per call.
            bridge.put((run, deliver))
        except trio.RunFinishedError:
            raise EngineClosed("the engine has stopped") from None

        def cancel() -> None:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass

        return cancel

    def close(self) -> None:
        """Stop the engine (running tasks get the ``grace`` period) and join its thread."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        token, stop = self._portal.token, self._stop
        if token is not None and stop is not None:
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        self._thread.join()

    def _service_name(self) -> str:
        name = getattr(self._service, "name", None) or getattr(self._service, "__name__", "")
        return f"service {name!r}"

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def endpoints(self) -> Mapping[str, SyncEndpoint]:
        return dict(self._endpoints)

    def __getattr__(self, name: str) -> SyncEndpoint:
        endpoints = self.__dict__.get("_endpoints", {})
        try:
            return endpoints[name]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(
                f"no task endpoint {name!r} (endpoints: {', '.join(sorted(endpoints))})"
            ) from None

    def __getitem__(self, name: str) -> SyncEndpoint:
        return self._endpoints[name]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._endpoints))

    def get_task(self, task_id: str) -> Task:
        """A handle for any task id."""
        assert self._aclient is not None
        return Task(self._portal, self._aclient.get_task(task_id))

    def get_batch(self, batch_id: str) -> Batch:
        """The batch ``batch_id`` (BatchNotFound when unknown or all its tasks expired)."""
        assert self._aclient is not None
        aclient = self._aclient

        async def run() -> AsyncBatch:
            return await aclient.get_batch(batch_id)

        return Batch(self._portal, self._portal.run(run))

    def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskInfo]:
        """Tasks, newest first."""
        assert self._aclient is not None
        aclient = self._aclient

        async def run() -> list[TaskInfo]:
            return await aclient.list(name=name, status=status, limit=limit, offset=offset)

        return self._portal.run(run)

    def statistics(self) -> EngineStatistics:
        assert self._aclient is not None
        return self._aclient.statistics()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<SyncClient {state} tasks={sorted(self._endpoints)}>"


def start(
    service: object,
    *,
    backend: Backend | str | None = None,
    ttl: float = DEFAULTS.ttl,
    lease: float = DEFAULTS.lease,
    workers: int = DEFAULTS.workers,
    grace: float = DEFAULTS.grace,
    max_attempts: int = DEFAULTS.max_attempts,
    sweep_interval: float = DEFAULTS.sweep_interval,
    options: EngineOptions | None = None,
) -> SyncClient:
    """Start an engine in a background thread and return its sync client.

    Use it as a context manager, or keep the client and call ``close()``
    (interpreter exit closes it too).  Options are those of
    :func:`errands.open_engine`.

    Raises whatever starting the engine raised (bad backend URL, an exception
    from the service class's ``__init__``, ...); ``ValueError`` naming a bad
    option.
    """
    _refuse_in_trio("errands.start() runs an engine in a thread and blocks until it is up")
    built = build_options(
        options,
        ttl=ttl,
        lease=lease,
        workers=workers,
        grace=grace,
        max_attempts=max_attempts,
        sweep_interval=sweep_interval,
    )
    _warn_if_running(service)
    client = SyncClient(service, backend=backend, options=built)
    client._start()
    _started.add(client)
    return client


#: The clients of start() that are running (to warn about a second one).
_started: weakref.WeakSet[SyncClient] = weakref.WeakSet()


def _warn_if_running(service: object) -> None:
    for other in list(_started):
        if other._service is service and not other._closed:
            warnings.warn(
                f"errands.start() is already running an engine for {other._service_name()} "
                f"({other!r}); this starts a second one"
                + (
                    " with its own memory backend, so each sees only its own tasks"
                    if other._backend is None
                    else ""
                )
                + ". Close the first with client.close() (or leave its with block), or keep "
                "using it",
                RuntimeWarning,
                stacklevel=3,
            )
            return
