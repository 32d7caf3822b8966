"""The ASGI app: every task endpoint over HTTP (submit, status, get, cancel, retry, events).

A raw ASGI 3 application, no web framework.  Served alone it runs its engine
through the ASGI ``lifespan`` protocol; mounted in a host that does not
forward lifespan (Starlette's and FastAPI's ``Mount``), the host calls
:meth:`ErrandsApp.running` from its own lifespan, or does nothing and the
engine starts with the first request (in its own thread) and stops at exit.
"""

from __future__ import annotations

import logging
import math
import threading
import typing
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import sniffio

import errands
from errands import (
    Backend,
    EngineOptions,
    ErrandsError,
    TaskCancelled,
    TaskDefinition,
    TaskFailed,
    TaskInfo,
    TaskNotFound,
    TaskNotReady,
    TaskStatus,
)
from errands._define import as_service
from errands._engine import idempotent_id
from errands._open import build_options
from errands._options import DEFAULTS

from ._answers import json_answer as _json
from ._answers import json_bytes as _json_bytes
from ._answers import number as _number
from ._answers import one as _one
from ._answers import request_json
from ._bridge import EngineAccess, LocalEngine, ThreadedEngine
from ._jsonschema import input_schema, output_schema
from ._multipart import MultipartError, parse_multipart
from ._openapi import openapi_document
from ._protocol import (
    BENTOML_STATUS,
    STATUS_NAMES,
    HTTPError,
    engine_closed,
    errors_as_answers,
    http_error,
    info_to_json,
    status_name,
    status_names,
    storage_unavailable,
)
from ._waiting import EventStream, Holds, wait_many

__all__ = ["BENTOML_STATUS", "ErrandsApp", "create_app"]

log = logging.getLogger("errands.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ACTIONS = {
    "submit": ("POST",),
    "status": ("GET",),
    "get": ("GET",),
    "cancel": ("POST", "PUT"),
    "retry": ("PUT", "POST"),
    "events": ("GET",),
}
DEFAULT_MAX_BODY = 16 * 1024 * 1024


class ErrandsApp:
    """The ASGI application for one service (build it with :func:`create_app`)."""

    def __init__(
        self,
        service: object,
        *,
        backend: Backend | str | None,
        bentoml_compat: bool,
        max_body_size: int,
        max_pending: int | None,
        max_wait: float,
        engine_options: EngineOptions,
    ) -> None:
        self.service = as_service(service)
        self.definitions = self.service.tasks
        self.routes = {d.route: d for d in self.definitions.values()}
        self.bentoml_compat = bentoml_compat
        self.max_body_size = max_body_size
        self.max_pending = max_pending
        self.max_wait = max_wait
        self._backend = backend
        self._engine_options = engine_options
        self._access: EngineAccess | None = None
        self._ended = False  # a running() block ended: no engine will come back
        self._died_of: str | None = None  # an engine bug ended the engine
        #: Called with the reason when an engine bug ends the app's engine
        #: (``errands serve`` stops the server and exits non-zero).
        self.on_engine_death: Callable[[str], None] | None = None
        self._autostart_lock = threading.Lock()
        self._autostarted: errands.SyncClient | None = None
        self._schema: bytes | None = None
        self._submitting = 0  # submits between their queue-depth check and their answer
        self._openapi: bytes | None = None
        self._holds = Holds()

    # ------------------------------------------------------------------ engine

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ErrandsApp]:
        """Run the engine for the duration of the block (from a host's lifespan).

        Under trio the engine runs in the current loop; under asyncio in its
        own trio thread.  Leaving the block first drains the app's held
        requests (:meth:`drain`), then the engine (see ``grace``); while the
        engine drains, reads are still answered (held requests answer with
        the state of the moment) and ``/readyz`` says 503.
        """
        self._ended = False
        self._holds.reopen()
        if sniffio.current_async_library() == "trio":
            engine: errands.Engine | None = None
            try:
                async with errands.open_engine(
                    self.service, backend=self._backend, options=self._engine_options
                ) as client:
                    engine = client.engine
                    self._access = LocalEngine(engine)
                    try:
                        yield self
                    finally:
                        self._stopping()
            except BaseException:
                if engine is not None and not engine.health.alive:
                    self._engine_died(engine.health.died_of or "unknown")
                raise
            finally:
                self._access = None
            return
        import anyio.to_thread

        sync_client = await anyio.to_thread.run_sync(self._start_thread_engine)
        self._access = ThreadedEngine(sync_client)
        try:
            yield self
        finally:
            self._stopping()
            try:
                await anyio.to_thread.run_sync(sync_client.close)
            finally:
                self._access = None

    def _stopping(self) -> None:
        self.drain()
        self._ended = True

    def _start_thread_engine(self) -> errands.SyncClient:
        client = errands.start(self.service, backend=self._backend, options=self._engine_options)
        client.on_death = self._engine_died
        return client

    def _engine_died(self, reason: str) -> None:
        """An engine bug ended the engine: every route answers 503, /livez too."""
        self._died_of = reason
        self._ended = True
        log.critical("the errands engine died (%s); answering 503", reason)
        if self.on_engine_death is not None:
            self.on_engine_death(reason)

    @property
    def alive(self) -> bool:
        """False once an engine bug ended the app's engine."""
        return self._died_of is None

    def _engine(self) -> EngineAccess:
        if self._access is not None:
            return self._access
        if self._ended:
            raise engine_closed("the engine has stopped", state="stopped")
        # Mounted where nobody ran our lifespan: start the engine in its own
        # thread on first use; interpreter exit stops it.
        with self._autostart_lock:
            if self._access is None:
                log.info("no lifespan reached errands; starting its engine on first request")
                self._autostarted = self._start_thread_engine()
                self._access = ThreadedEngine(self._autostarted)
        return self._access

    def drain(self) -> None:
        """Answer every held request now, and hold no new one; never blocks.

        Held ``?wait=`` long polls and ``POST /tasks/wait`` answer at once
        with the state of the moment, event streams end, and new ones do the
        same without holding, until the app's engine is started again.  Call
        it when a shutdown begins (servers wait for in-flight requests before
        they end the lifespan, which drains too).  Safe from any thread, but
        not from a signal handler (schedule it on the loop from there).
        Idempotent.
        """
        self._holds.drain()

    def close(self) -> None:
        """Stop an engine that was started by a first request (idempotent)."""
        self.drain()
        self._ended = True
        client, self._autostarted = self._autostarted, None
        if client is not None:
            self._access = None
            client.close()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        started = False
        try:
            async with self.running():
                started = True
                await send({"type": "lifespan.startup.complete"})
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
        except Exception as exc:
            log.exception("errands engine failed")
            if not started:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer: tuple[int, list[tuple[bytes, bytes]], bytes] | EventStream
        try:
            answer = await self._dispatch(scope, receive)
        except HTTPError as exc:
            answer = _error_answer(exc)
        except Exception:
            log.exception("internal error answering %s %s", scope["method"], scope["path"])
            answer = _error_answer(HTTPError(500, "internal server error"))
        if isinstance(answer, EventStream):
            await answer.run(send, receive)  # its own errors: after the start, no 500
            return
        status, headers, body = answer
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _dispatch(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | EventStream:
        path: str = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        method: str = scope["method"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path == "/livez":
            _allow(method, ("GET", "HEAD"))
            if self._died_of is not None:
                raise engine_closed("the engine died", state="dead")
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            _allow(method, ("GET", "HEAD"))
            return self._readyz()
        if path == "/schema.json":
            _allow(method, ("GET",))
            return 200, [(b"content-type", b"application/json")], self._schema_json()
        if path == "/openapi.json":
            _allow(method, ("GET",))
            return 200, [(b"content-type", b"application/json")], self._openapi_json()
        if path == "/metrics":
            _allow(method, ("GET",))
            return self._metrics()
        if path == "/tasks":
            _allow(method, ("GET",))
            return await self._list(query)
        if path == "/tasks/wait":
            _allow(method, ("POST",))
            body = await self._read_body(scope, receive)
            return await wait_many(
                self._engine(),
                body,
                query,
                holds=self._holds,
                max_wait=self.max_wait,
                bentoml_compat=self.bentoml_compat,
            )
        prefix, _, action = path.rpartition("/")
        definition = self.routes.get(prefix or "/")
        if definition is None or action not in ACTIONS:
            raise HTTPError(404, f"no route {path}")
        _allow(method, ACTIONS[action])
        if action == "submit":
            body = await self._read_body(scope, receive)
            return await self._submit(
                definition,
                body,
                query,
                _header(scope, b"content-type"),
                _header(scope, b"idempotency-key") or None,
            )
        task_id = _one(query, "task_id", required=True)
        assert task_id is not None
        if action in ("status", "get"):
            await self._long_poll(task_id, query)
            if action == "status":
                return await self._status(task_id)
            return await self._get(task_id)
        if action == "events":
            access = self._engine()
            first = await self._call(access, access.engine.info, task_id)
            return EventStream(access, first, holds=self._holds, bentoml_compat=self.bentoml_compat)
        if action == "cancel":
            return await self._cancel(task_id)
        return await self._retry(task_id)

    # ------------------------------------------------------------------ routes

    async def _submit(
        self,
        definition: TaskDefinition,
        body: bytes,
        query: dict[str, list[str]],
        content_type: str,
        idempotency_key: str | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if content_type.lower().startswith("multipart/form-data"):
            try:
                arguments: Any = parse_multipart(
                    content_type,
                    body,
                    lists=lambda name: _takes_list(definition, name),
                    texts=lambda name: _takes_str(definition, name),
                )
            except MultipartError as exc:
                raise HTTPError(400, str(exc)) from None
        else:
            arguments = request_json(body, empty={})
        if not isinstance(arguments, dict):
            raise HTTPError(400, "the body must be a JSON object of named arguments")
        priority = _number(query, "priority", int, default=0)
        if not -(2**31) <= priority < 2**31:
            raise HTTPError(400, "priority must be between -2**31 and 2**31 - 1")
        delay = _number(query, "delay", float, default=None)
        if delay is not None and (delay < 0 or not math.isfinite(delay)):
            raise HTTPError(400, "delay must be a non-negative number of seconds")
        access = self._engine()
        repeat = False
        if self.max_pending is not None and idempotency_key is not None:
            # A repeat of an accepted submit is answered even when the queue is
            # full (the engine still checks that its arguments are the same).
            first = idempotent_id(self.service.name, definition.name, idempotency_key)
            try:
                await access.call(access.engine.status, first)
                repeat = True
            except TaskNotFound:
                pass
        # Submits under way count as waiting: without them, concurrent
        # submits that all read the depth before any was stored would all pass.
        self._submitting += 1
        try:
            if self.max_pending is not None and not repeat:
                depth = await self._call(access, access.engine.backend.queue.depth)
                waiting = depth + self._submitting - 1
                if waiting >= self.max_pending:
                    message = f"the queue is full ({waiting} tasks waiting); retry later"
                    raise HTTPError(429, message, retry_after=1)
            record = await self._call(
                access,
                _submit_call(
                    access.engine, definition.name, arguments, priority, delay, idempotency_key
                ),
            )
        finally:
            self._submitting -= 1
        return _json(200, {"task_id": record.id, "status": self._status_name(record.status)})

    async def _long_poll(self, task_id: str, query: dict[str, list[str]]) -> None:
        """``?wait=S``: hold the request until the task is final or S seconds
        pass (at most ``max_wait``); event-driven, no polling inside."""
        wait = _number(query, "wait", float, default=None)
        if wait is None:
            return
        if not (math.isfinite(wait) and wait >= 0):
            raise HTTPError(400, "wait must be a non-negative number of seconds")
        wait = min(wait, self.max_wait)
        if wait > 0 and not self._holds.draining:
            access = self._engine()
            with self._holds.hold():  # a drain ends it early
                try:
                    await self._call(access, access.engine.wait, task_id, wait)
                except TimeoutError:
                    pass  # answer with the state it is in now

    async def _status(self, task_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        access = self._engine()
        info = await self._call(access, access.engine.info, task_id)
        return _json(200, self._info(info))

    async def _get(self, task_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        access = self._engine()
        record, payload = await self._call(access, access.engine.result_payload, task_id)
        if record.status is TaskStatus.SUCCESS:
            if payload is None:
                raise self._error(TaskNotFound(task_id))
            return 200, [(b"content-type", payload.media_type.encode("latin-1"))], payload.data
        if record.status is TaskStatus.FAILURE:
            raise self._error(TaskFailed(task_id, str(record.error)))
        if record.status is TaskStatus.CANCELLED:
            raise self._error(TaskCancelled(task_id))
        raise self._error(TaskNotReady(task_id, record.status.value))

    def _error(self, exc: ErrandsError) -> HTTPError:
        error = http_error(exc, bentoml_compat=self.bentoml_compat)
        assert error is not None, exc
        return error

    async def _cancel(self, task_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        access = self._engine()
        status = await self._call(access, access.engine.cancel, task_id)
        return _json(200, {"task_id": task_id, "status": self._status_name(status)})

    async def _retry(self, task_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        access = self._engine()
        record = await self._call(access, access.engine.retry, task_id)
        return _json(
            200,
            {
                "task_id": record.id,
                "status": self._status_name(record.status),
                "retry_of": task_id,
            },
        )

    async def _list(
        self, query: dict[str, list[str]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        name = _one(query, "name")
        if name is not None and name not in self.definitions:
            raise HTTPError(400, f"unknown task name {name!r}")
        status_text = _one(query, "status")
        status = None
        if status_text is not None:
            status = STATUS_NAMES.get(status_text)
            if status is None:
                allowed = ", ".join(status_names())
                raise HTTPError(400, f"unknown status {status_text!r}; one of {allowed}")
        limit = _number(query, "limit", int, default=100)
        offset = _number(query, "offset", int, default=0)
        if not 1 <= limit <= 1000 or not 0 <= offset < 2**62:
            raise HTTPError(400, "limit must be 1..1000 and offset 0..2**62")
        access = self._engine()
        infos = await self._call(access, _list_call(access.engine, name, status, limit, offset))
        return _json(
            200,
            {
                "tasks": [self._info(i) for i in infos],
                "limit": limit,
                "offset": offset,
                "next_offset": offset + limit if len(infos) == limit else None,
            },
        )

    def _metrics(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        lines = [
            "# HELP errands_up Whether the errands engine is running.",
            "# TYPE errands_up gauge",
        ]
        access = self._access
        lines.append(f"errands_up {1 if access is not None else 0}")
        lines += [
            "# HELP errands_http_held Requests held open now (long polls, event streams,"
            " waits on many tasks).",
            "# TYPE errands_http_held gauge",
            f"errands_http_held {len(self._holds)}",
        ]
        if access is not None:
            stats = access.engine.statistics()
            lines += [
                "# HELP errands_tasks_submitted_total Tasks accepted by this process.",
                "# TYPE errands_tasks_submitted_total counter",
                f"errands_tasks_submitted_total {stats.submitted}",
                "# HELP errands_tasks_finished_total Tasks this process brought to a final state.",
                "# TYPE errands_tasks_finished_total counter",
                f"errands_tasks_finished_total {stats.finished}",
                "# HELP errands_tasks_running Tasks running in this process now.",
                "# TYPE errands_tasks_running gauge",
                f"errands_tasks_running {stats.running}",
                "# HELP errands_workers How many tasks this process may run at once.",
                "# TYPE errands_workers gauge",
                f"errands_workers {stats.workers}",
            ]
        body = ("\n".join(lines) + "\n").encode()
        return 200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], body

    # ------------------------------------------------------------------ helpers

    async def _call(
        self, access: EngineAccess, afn: Callable[..., Awaitable[Any]], *args: Any
    ) -> Any:
        with errors_as_answers(bentoml_compat=self.bentoml_compat):
            return await access.call(afn, *args)

    def _readyz(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self._died_of is not None:
            raise engine_closed("the engine died", state="dead")
        if self._ended:
            raise engine_closed("the engine has stopped", state="stopped")
        access = self._access
        if access is not None:
            stats = access.engine.statistics()
            if not stats.ready:
                if stats.storage_error is not None:
                    # The detail (it may name files) is in the server's log only.
                    raise storage_unavailable("storage is failing; the engine retries")
                raise engine_closed(f"the engine is {stats.state}", state=stats.state)
        return _json(200, {"status": "ok"})

    def _status_name(self, status: TaskStatus) -> str:
        return status_name(status, bentoml_compat=self.bentoml_compat)

    def _info(self, info: TaskInfo) -> dict[str, Any]:
        return info_to_json(info, bentoml_compat=self.bentoml_compat)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise HTTPError(400, "bad content-length header") from None
                if declared > self.max_body_size:
                    raise HTTPError(413, f"the body is larger than {self.max_body_size} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                raise HTTPError(413, f"the body is larger than {self.max_body_size} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _schema_json(self) -> bytes:
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
                "events": True,  # GET <route>/events
            }
            self._schema = _json_bytes(
                {"name": self.service.name, "type": "service", "routes": routes, "errands": extra}
            )
        return self._schema

    def _openapi_json(self) -> bytes:
        if self._openapi is None:
            self._openapi = _json_bytes(
                openapi_document(self.service, bentoml_compat=self.bentoml_compat)
            )
        return self._openapi


def _submit_call(
    engine: errands.Engine,
    name: str,
    arguments: dict[str, Any],
    priority: int,
    delay: float | None,
    idempotency_key: str | None,
) -> Callable[[], Awaitable[Any]]:
    async def submit() -> Any:
        return await engine.submit(
            name,
            arguments,
            from_json=True,
            priority=priority,
            delay=delay,
            idempotency_key=idempotency_key,
        )

    return submit


def _list_call(
    engine: errands.Engine, name: str | None, status: TaskStatus | None, limit: int, offset: int
) -> Callable[[], Awaitable[list[TaskInfo]]]:
    async def list_tasks() -> list[TaskInfo]:
        return await engine.list(name=name, status=status, limit=limit, offset=offset)

    return list_tasks


def _error_answer(error: HTTPError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [(b"content-type", b"application/json"), *error.headers]
    return error.status, headers, _json_bytes(error.body)


def _takes_list(definition: TaskDefinition, name: str) -> bool:
    for param in definition.params:
        if param.name == name:
            origin = typing.get_origin(param.annotation)
            return origin in (list, tuple, set, frozenset, Sequence)
    return False


def _takes_str(definition: TaskDefinition, name: str) -> bool:
    return any(p.name == name and p.annotation is str for p in definition.params)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _allow(method: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if method not in allowed:
        error = HTTPError(405, f"method {method} not allowed here; use {', '.join(allowed)}")
        error.headers.append((b"allow", ", ".join(allowed).encode()))
        raise error


def create_app(
    service: object,
    *,
    backend: Backend | str | None = None,
    bentoml_compat: bool = False,
    max_body_size: int = DEFAULT_MAX_BODY,
    max_pending: int | None = None,
    max_wait: float = 60.0,
    ttl: float = DEFAULTS.ttl,
    lease: float = DEFAULTS.lease,
    workers: int = DEFAULTS.workers,
    grace: float = DEFAULTS.grace,
    max_attempts: int = DEFAULTS.max_attempts,
    sweep_interval: float = DEFAULTS.sweep_interval,
    options: EngineOptions | None = None,
) -> ErrandsApp:
    """The ASGI app serving ``service``'s tasks over HTTP.

    Args:
        service: an ``errands.Service`` or an ``@errands.service`` class.
        backend: the engine's backend (object or URL; None: memory).
        bentoml_compat: report statuses as BentoML's clients expect
            (``completed``, ``failed``, ``canceled``).
        max_body_size: the largest request body accepted, in bytes (413 above).
        max_pending: refuse submits with 429 (and ``Retry-After``) while this
            many tasks wait in the queue (None: no limit).
        max_wait: the longest a ``?wait=`` long poll on status/get, or a
            ``POST /tasks/wait``, is held, in seconds.
        ttl, lease, workers, grace, max_attempts, sweep_interval: engine
            options, see :class:`errands.EngineOptions`.
        options: the engine options as one :class:`errands.EngineOptions` instead.

    Raises:
        ValueError: naming the bad option.
    """
    if max_body_size < 1:
        raise ValueError("max_body_size must be positive")
    if max_pending is not None and max_pending < 1:
        raise ValueError("max_pending must be positive")
    if not 0 <= max_wait < math.inf:
        raise ValueError("max_wait must be a number of seconds >= 0")
    return ErrandsApp(
        service,
        backend=backend,
        bentoml_compat=bentoml_compat,
        max_body_size=max_body_size,
        max_pending=max_pending,
        max_wait=max_wait,
        engine_options=build_options(
            options,
            ttl=ttl,
            lease=lease,
            workers=workers,
            grace=grace,
            max_attempts=max_attempts,
            sweep_interval=sweep_interval,
        ),
    )
