"""The ASGI app: every task endpoint over HTTP (submit, status, get, cancel, retry, events).

A raw ASGI 3 application, no web framework.  Served alone it runs its engine
through the ASGI ``lifespan`` protocol; mounted in a host that does not
forward lifespan (Starlette's and FastAPI's ``Mount``), the host calls
:meth:`ErrandsApp.running` from its own lifespan, or does nothing and the
engine starts with the first request (in its own thread) and stops at exit.

The app is put together from its jobs: ``_lifecycle`` (the engine's life),
``_routing`` (which handler answers a request), ``_handlers`` (what each
route does) and ``_protocol`` (the wire format: status names, the TaskInfo
object, errors); this module speaks ASGI.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import errands
from errands import Backend, EngineOptions
from errands._define import as_service
from errands._open import build_options
from errands._options import DEFAULTS

from ._answers import Answer, json_bytes
from ._bridge import BridgedEngine, EngineAccess, LocalEngine
from ._handlers import Handlers
from ._lifecycle import EngineLife
from ._metrics import Metrics
from ._options import HTTP_DEFAULTS, HTTPOptions
from ._protocol import BENTOML_STATUS, HTTPError
from ._routing import Router
from ._security import AuthCheck, Authenticator, HostAllowList
from ._waiting import Holds, StreamedAnswer

__all__ = ["BENTOML_STATUS", "DEFAULT_MAX_BODY", "ErrandsApp", "create_app"]

log = logging.getLogger("errands.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MAX_BODY = HTTP_DEFAULTS.max_body_size


class ErrandsApp:
    """The ASGI application for one service (build it with :func:`create_app`)."""

    def __init__(
        self,
        service: object,
        *,
        backend: Backend | str | None,
        http: HTTPOptions,
        auth: str | AuthCheck | None,
        engine_options: EngineOptions,
    ) -> None:
        self.service = as_service(service)
        self.definitions = self.service.tasks
        self.http = http
        self.bentoml_compat = http.bentoml_compat
        self.max_body_size = http.max_body_size
        self.max_pending = http.max_pending
        self.max_wait = http.max_wait
        self._life = EngineLife(self.service, backend=backend, options=engine_options)
        self._life.holds.limit = http.max_held
        handlers = Handlers(self._life, http=http)
        hosts = None if http.allowed_hosts is None else HostAllowList(http.allowed_hosts)
        self._router = Router(handlers, http=http, auth=Authenticator(auth), hosts=hosts)

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
        async with self._life.running():
            yield self

    @property
    def on_engine_death(self) -> Callable[[str], None] | None:
        """Called with the reason when an engine bug ends the app's engine
        (``errands serve`` stops the server and exits non-zero)."""
        return self._life.on_death

    @on_engine_death.setter
    def on_engine_death(self, callback: Callable[[str], None] | None) -> None:
        self._life.on_death = callback

    @property
    def client(self) -> errands.AsyncClient:
        """The engine's async client, for the host app's own routes: the
        handles ``open_engine`` gives (``await app.client.add.submit(a=1)``),
        under asyncio or trio, wherever the engine runs.

        Raises:
            errands.EngineClosed: the engine is not running (use it inside
                the host's lifespan block that runs :meth:`running`, or
                after the first request started it).
        """
        access = self._life.current
        if access is None:
            raise errands.EngineClosed(
                "the errands engine is not running: use app.client inside the host's "
                "lifespan (async with errands_app.running(): ...)"
            )
        if isinstance(access, LocalEngine):
            return errands.AsyncClient(access.engine)
        return errands.AsyncClient(BridgedEngine(access))  # type: ignore[arg-type]

    @property
    def alive(self) -> bool:
        """False once an engine bug ended the app's engine."""
        return self._life.alive

    @property
    def metrics(self) -> Metrics:
        """The app's Prometheus metrics (``GET /metrics``): ``metrics.registry``
        is this app's own ``CollectorRegistry``, never the global one; a host
        may register its own collectors there to serve them on the same route."""
        return self._router.handlers.metrics_exporter

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
        self._life.drain()

    def close(self) -> None:
        """Stop an engine that was started by a first request (idempotent)."""
        self._life.close()

    # The engine and the held requests, as tests and tools inspect them.
    def _engine(self) -> EngineAccess:
        return self._life.access()

    @property
    def _access(self) -> EngineAccess | None:
        return self._life.current

    @property
    def _holds(self) -> Holds:
        return self._life.holds

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
        answer: Answer | StreamedAnswer
        try:
            self.metrics.check_port(scope)  # a --metrics-port answers metrics only
            answer = await self._router.dispatch(scope, receive)
        except HTTPError as exc:
            answer = _error_answer(exc)
        except Exception:
            log.exception("internal error answering %s %s", scope["method"], scope["path"])
            answer = _error_answer(HTTPError(500, "internal server error"))
        if isinstance(answer, StreamedAnswer):
            await answer.run(send, receive)  # its own errors: after the start, no 500
            return
        status, headers, body = answer
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _error_answer(error: HTTPError) -> Answer:
    headers = [(b"content-type", b"application/json"), *error.headers]
    return error.status, headers, json_bytes(error.body)


def create_app(
    service: object,
    *,
    backend: Backend | str | None = None,
    auth: str | AuthCheck | None = None,
    bentoml_compat: bool = HTTP_DEFAULTS.bentoml_compat,
    max_body_size: int = HTTP_DEFAULTS.max_body_size,
    max_pending: int | None = HTTP_DEFAULTS.max_pending,
    max_wait: float = HTTP_DEFAULTS.max_wait,
    max_held: int = HTTP_DEFAULTS.max_held,
    max_wait_ids: int = HTTP_DEFAULTS.max_wait_ids,
    max_parts: int = HTTP_DEFAULTS.max_parts,
    hide_errors: bool = HTTP_DEFAULTS.hide_errors,
    expose_tracebacks: bool = HTTP_DEFAULTS.expose_tracebacks,
    allowed_hosts: Iterable[str] | None = HTTP_DEFAULTS.allowed_hosts,
    read_timeout: float = HTTP_DEFAULTS.read_timeout,
    batch_page: int = HTTP_DEFAULTS.batch_page,
    max_batch_page: int = HTTP_DEFAULTS.max_batch_page,
    dashboard: bool = HTTP_DEFAULTS.dashboard,
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
        auth: a bearer token every route but ``/livez`` and ``/readyz``
            requires (401 without it), or an async callable given the
            request's ASGI scope that answers whether it may pass; None: no
            auth (for a loopback server, or a host app that checks itself).
        bentoml_compat, max_body_size, max_pending, max_wait, max_held,
            max_wait_ids, max_parts, hide_errors, expose_tracebacks, allowed_hosts,
            read_timeout, batch_page, max_batch_page, dashboard: see
            ``errands.adapters.HTTPOptions``.
        ttl, lease, workers, grace, max_attempts, sweep_interval: engine
            options, see :class:`errands.EngineOptions`.
        options: the engine options as one :class:`errands.EngineOptions` instead.

    Raises:
        ValueError: naming the bad option.
    """
    http = HTTPOptions(
        bentoml_compat=bentoml_compat,
        max_body_size=max_body_size,
        max_pending=max_pending,
        max_wait=max_wait,
        max_held=max_held,
        max_wait_ids=max_wait_ids,
        max_parts=max_parts,
        hide_errors=hide_errors,
        expose_tracebacks=expose_tracebacks,
        allowed_hosts=allowed_hosts,
        read_timeout=read_timeout,
        batch_page=batch_page,
        max_batch_page=max_batch_page,
        dashboard=dashboard,
    )
    return ErrandsApp(
        service,
        backend=backend,
        http=http,
        auth=auth,
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
