"""What each route of the ASGI app does, once routing has picked it.

:class:`Handlers` reads the request's parts (query, body, headers), calls the
engine and answers; everything that crosses the wire (status names, the
TaskInfo object, errors) is written by ``_protocol``.  Engine errors become
their answers in :meth:`Handlers.call`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

import errands
from errands import (
    ErrandsError,
    TaskCancelled,
    TaskDefinition,
    TaskFailed,
    TaskInfo,
    TaskNotFound,
    TaskNotReady,
    TaskStatus,
)
from errands._engine import idempotent_id

from ._answers import Answer, json_answer, json_bytes, number, one, request_json, wait_seconds
from ._bridge import EngineAccess
from ._jsonschema import input_schema, output_schema
from ._lifecycle import EngineLife
from ._metrics import Metrics
from ._multipart import MultipartError, parse_multipart, takes_bytes, takes_list, takes_text
from ._openapi import openapi_document
from ._options import HTTPOptions
from ._protocol import (
    STATUS_NAMES,
    HTTPError,
    http_error,
    info_to_json,
    status_name,
    status_names,
)
from ._waiting import EventStream

__all__ = ["Handlers", "submit_options"]

_JSON = [(b"content-type", b"application/json")]

T = TypeVar("T")

#: Seconds a read of the queue's depth serves the room checks that follow,
#: while what they let in keeps the count at most half of ``max_pending``.
DEPTH_REUSE = 1.0


class Handlers:
    """The routes of one app: submit, status, get, cancel, retry, events,
    ``/tasks``, ``/metrics`` and the two schema documents."""

    def __init__(
        self,
        life: EngineLife,
        *,
        http: HTTPOptions,
    ) -> None:
        self.life = life
        self.service = life.service
        self.definitions = self.service.tasks
        self.http = http
        self.bentoml_compat = http.bentoml_compat
        self.max_pending = http.max_pending
        self.max_wait = http.max_wait
        self._submitting = 0  # submits between their queue-depth check and their answer
        #: When the queue's depth was last read, and that depth plus the
        #: tasks let in since (see :meth:`_check_queue_room`).
        self._depth = (-math.inf, 0)
        self._schema: bytes | None = None
        self._openapi: dict[str, bytes] = {}  # by root_path
        #: ``/metrics``: this app's own Prometheus registry.
        self.metrics_exporter = Metrics(self.service)

    async def call(
        self, access: EngineAccess, afn: Callable[..., Awaitable[Any]], *args: Any
    ) -> Any:
        """``afn(*args)`` where the engine runs; its errors raised as their
        answers (as :func:`errors_as_answers` does, without a generator's
        context manager per request)."""
        try:
            return await access.call(afn, *args)
        except ErrandsError as exc:
            answer = http_error(exc, bentoml_compat=self.bentoml_compat)
            if answer is None:
                raise
            raise answer from None

    def _name(self, status: TaskStatus) -> str:
        return status_name(status, bentoml_compat=self.bentoml_compat)

    def _info(self, info: TaskInfo) -> dict[str, Any]:
        return info_to_json(
            info,
            bentoml_compat=self.bentoml_compat,
            hide_errors=self.http.hide_errors,
            tracebacks=self.http.expose_tracebacks and not self.http.hide_errors,
        )

    # ------------------------------------------------------------------ task routes

    async def submit(
        self,
        definition: TaskDefinition,
        body: bytes,
        query: dict[str, list[str]],
        content_type: str,
        idempotency_key: str | None,
    ) -> Answer:
        if content_type.lower().startswith("multipart/form-data"):
            try:
                arguments: Any = parse_multipart(
                    content_type,
                    body,
                    lists=lambda name: _takes_list(definition, name),
                    texts=lambda name: _takes_str(definition, name),
                    raw=lambda name: _takes_bytes(definition, name),
                    max_parts=self.http.max_parts,
                )
            except MultipartError as exc:
                raise HTTPError(400, str(exc)) from None
        else:
            arguments = request_json(body, empty={})
        if not isinstance(arguments, dict):
            raise HTTPError(400, "the body must be a JSON object of named arguments")
        priority, delay = submit_options(query)
        access = await self.life.start_if_needed()
        repeat = False
        if self.max_pending is not None and idempotency_key is not None:
            # A repeat of an accepted submit is answered even when the queue is
            # full (the engine still checks that its arguments are the same).
            first = idempotent_id(self.service.name, definition.name, idempotency_key)
            try:
                await self.call(access, access.engine.status, first)
                repeat = True
            except HTTPError as exc:
                if exc.status != 404:
                    raise
        # Submits under way count as waiting: without them, concurrent
        # submits that all read the depth before any was stored would all pass.
        engine = access.engine
        self._submitting += 1
        try:
            # One crossing to the engine for the room check and the submit.
            async def room_then_submit() -> Any:
                if not repeat:
                    await self._check_queue_room(engine)
                return await engine.submit(
                    definition.name,
                    arguments,
                    from_json=True,
                    priority=priority,
                    delay=delay,
                    idempotency_key=idempotency_key,
                )

            record = await self.call(access, room_then_submit)
        finally:
            self._submitting -= 1
        return json_answer(200, {"task_id": record.id, "status": self._name(record.status)})

    async def _check_queue_room(self, engine: errands.Engine, count: int = 1) -> None:
        """429 with ``Retry-After`` unless ``count`` more tasks fit under
        ``max_pending`` (submits and retries under way included; the caller
        counted its ``count`` in ``_submitting``).  Runs where the engine
        runs: callers make it part of the one call their request crosses
        over with."""
        if self.max_pending is None:
            return
        now = trio.current_time()
        read_at, counted = self._depth
        if now - read_at < DEPTH_REUSE and counted + self._submitting <= self.max_pending // 2:
            # Far below the limit: the depth read lately, plus what passed
            # since (never less than the truth here, as claims only lower it).
            self._depth = (read_at, counted + count)
            return
        depth = await engine.backend.queue.depth()
        waiting = depth + self._submitting - count
        if waiting + count > self.max_pending:
            message = (
                f"the queue is full ({waiting} tasks waiting, max_pending {self.max_pending}); "
                "retry later"
            )
            raise HTTPError(429, message, retry_after=1)
        self._depth = (trio.current_time(), depth + count)

    async def _after_wait(
        self,
        task_id: str,
        query: dict[str, list[str]],
        read: Callable[[str], Awaitable[T]],
        waited: Callable[[str, float], Awaitable[T]] | None = None,
    ) -> T:
        """``read(task_id)`` (an engine method), after ``?wait=S`` if asked:
        held until the task is final or S seconds pass (more than
        ``max_wait`` is a 400); event-driven, no polling inside.
        ``waited(task_id, S)``, when given, is the wait and the read in one
        (an engine method that need not read what the wait handed it).

        The wait and the read are one call where the engine runs: under an
        asyncio server that is one crossing of the bridge per request, not
        two.  A drain ends the hold; the read then answers the state of the
        moment.
        """
        wait = wait_seconds(query, maximum=self.max_wait, default=None)
        access = await self.life.start_if_needed()
        if wait is not None and wait > 0 and not self.life.holds.draining:
            engine = access.engine

            async def wait_then_read() -> T:
                assert wait is not None
                if waited is not None:
                    return await waited(task_id, wait)
                try:
                    await engine.wait(task_id, wait)
                except TimeoutError:
                    pass  # answer with the state it is in now
                return await read(task_id)

            held: list[T] = []
            with self.life.holds.hold():  # a drain ends it early
                held.append(await self.call(access, wait_then_read))
            if held:
                return held[0]
        now: T = await self.call(access, read, task_id)  # no wait, or drained while held
        return now

    async def status(self, task_id: str, query: dict[str, list[str]]) -> Answer:
        access = await self.life.start_if_needed()
        engine = access.engine
        info = await self._after_wait(task_id, query, engine.info, engine.wait_info)
        return json_answer(200, self._info(info))

    async def get(self, task_id: str, query: dict[str, list[str]]) -> Answer:
        access = await self.life.start_if_needed()
        status, error, payload = await self._after_wait(task_id, query, access.engine.final_outcome)
        if status is TaskStatus.SUCCESS:
            if payload is None:
                raise self._error(TaskNotFound(task_id))
            return 200, [(b"content-type", payload.media_type.encode("latin-1"))], payload.data
        if status is TaskStatus.FAILURE:
            shown = error.type if self.http.hide_errors and error is not None else str(error)
            raise self._error(TaskFailed(task_id, shown))
        if status is TaskStatus.CANCELLED:
            raise self._error(TaskCancelled(task_id))
        raise self._error(TaskNotReady(task_id, status.value))

    def _error(self, exc: ErrandsError) -> HTTPError:
        error = http_error(exc, bentoml_compat=self.bentoml_compat)
        assert error is not None, exc
        return error

    async def events(self, task_id: str) -> EventStream:
        access = await self.life.start_if_needed()
        first = await self.call(access, access.engine.info, task_id)
        if not first.status.is_final:
            self.life.holds.check_room()  # a 503 now, not a stream cut short
        return EventStream(
            access,
            first,
            holds=self.life.holds,
            bentoml_compat=self.bentoml_compat,
            hide_errors=self.http.hide_errors,
        )

    async def cancel(self, task_id: str) -> Answer:
        access = await self.life.start_if_needed()
        status = await self.call(access, access.engine.cancel, task_id)
        return json_answer(200, {"task_id": task_id, "status": self._name(status)})

    async def retry(self, task_id: str) -> Answer:
        access = await self.life.start_if_needed()
        engine = access.engine

        async def room_then_retry() -> Any:
            await self._check_queue_room(engine)  # a retry is a new task
            return await engine.retry(task_id)

        self._submitting += 1
        try:
            record = await self.call(access, room_then_retry)
        finally:
            self._submitting -= 1
        answer = {"task_id": record.id, "status": self._name(record.status), "retry_of": task_id}
        return json_answer(200, answer)

    # ------------------------------------------------------------------ the server's routes

    async def list_tasks(self, query: dict[str, list[str]]) -> Answer:
        name = one(query, "name")
        if name is not None and name not in self.definitions:
            raise HTTPError(400, f"unknown task name {name!r}")
        status_text = one(query, "status")
        status = None
        if status_text is not None:
            status = STATUS_NAMES.get(status_text)
            if status is None:
                allowed = ", ".join(status_names())
                raise HTTPError(400, f"unknown status {status_text!r}; one of {allowed}")
        limit = number(query, "limit", int, default=100)
        offset = number(query, "offset", int, default=0)
        if not 1 <= limit <= 1000 or not 0 <= offset < 2**62:
            raise HTTPError(400, "limit must be 1..1000 and offset 0..2**62")
        access = await self.life.start_if_needed()
        infos = await self.call(access, _list_call(access.engine, name, status, limit, offset))
        return json_answer(
            200,
            {
                "tasks": [self._info(i) for i in infos],
                "limit": limit,
                "offset": offset,
                "next_offset": offset + limit if len(infos) == limit else None,
            },
        )

    async def metrics(self) -> Answer:
        """``/metrics``: Prometheus text from this app's registry (see ``_metrics``)."""
        return await self.metrics_exporter.answer(self.life.current, held=len(self.life.holds))

    def schema_json(self) -> Answer:
        """``/schema.json``: BentoML's shape, plus what errands offers beyond it."""
        if self._schema is None:
            routes = [
                {
                    "name": d.name,
                    "route": d.route,
                    "input": input_schema(d, bentoml=True),
                    "output": output_schema(d, bentoml=True),
                    "is_task": True,
                    "is_stream": False,
                    "doc": d.func.__doc__,
                }
                for d in self.definitions.values()
            ]
            # "errands" tells errands' clients what this server offers beyond
            # BentoML's protocol (BentoML's clients read only "routes").
            extra = {
                "version": errands.__version__,
                "max_wait": self.max_wait,
                "wait_many": True,  # POST /tasks/wait
                "wait_results": True,  # ... with {"results": true}
                "wait_stream": True,  # ... with {"stream": true}
                "max_wait_ids": self.http.max_wait_ids,
                "events": True,  # GET <route>/events
                "batches": True,  # <route>/submit_many and /batches/<id>
                "max_batch_page": self.http.max_batch_page,
            }
            self._schema = json_bytes(
                {"name": self.service.name, "type": "service", "routes": routes, "errands": extra}
            )
        return 200, list(_JSON), self._schema

    def openapi_json(self, *, auth: bool, root_path: str = "") -> Answer:
        """``/openapi.json`` (``auth``: routes take a bearer token).  Mounted
        under a prefix (``root_path``), the document names it in ``servers``,
        so generated clients call the right URLs."""
        cached = self._openapi.get(root_path)
        if cached is None:
            document = openapi_document(
                self.service, http=self.http, engine=self.life.options, auth=auth
            )
            if root_path:
                document = {**document, "servers": [{"url": root_path}]}
            cached = self._openapi[root_path] = json_bytes(document)
        return 200, list(_JSON), cached


def submit_options(query: dict[str, list[str]]) -> tuple[int, float | None]:
    """A submit's ``?priority=`` and ``?delay=`` (400 when out of range)."""
    priority = number(query, "priority", int, default=0)
    if not -(2**31) <= priority < 2**31:
        raise HTTPError(400, "priority must be between -2**31 and 2**31 - 1")
    delay = number(query, "delay", float, default=None)
    if delay is not None and (delay < 0 or not math.isfinite(delay)):
        raise HTTPError(400, "delay must be a non-negative number of seconds")
    return priority, delay


def _list_call(
    engine: errands.Engine, name: str | None, status: TaskStatus | None, limit: int, offset: int
) -> Callable[[], Awaitable[list[TaskInfo]]]:
    async def list_tasks() -> list[TaskInfo]:
        return await engine.list(name=name, status=status, limit=limit, offset=offset)

    return list_tasks


def _takes_list(definition: TaskDefinition, name: str) -> bool:
    return any(p.name == name and takes_list(p.annotation) for p in definition.params)


def _takes_str(definition: TaskDefinition, name: str) -> bool:
    return any(p.name == name and takes_text(p.annotation) for p in definition.params)


def _takes_bytes(definition: TaskDefinition, name: str) -> bool:
    return any(p.name == name and takes_bytes(p.annotation) for p in definition.params)
