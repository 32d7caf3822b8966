"""HTTP clients: the in-process task-handle API, over the network.

``SyncHTTPClient(url)`` for plain code and ``AsyncHTTPClient(url)`` for trio
or asyncio code read the server's ``/schema.json`` and offer one attribute per
task endpoint; ``client.<task>.submit(**arguments)`` returns a handle with the
members of the in-process ones (``id``, ``get_status``, ``get_info``, ``get``,
``wait``, ``cancel``, ``retry``), and ``client.<task>.submit_many(items)``
a batch handle (``_http_batch``).  Server errors come back as the same
``errands`` exceptions.  They talk to errands servers and to BentoML servers.

Both clients run the same request flows (``_flows``); only the drivers below
differ (httpx.Client and ``time``, or httpx.AsyncClient and anyio).
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any

import anyio
import attrs
import httpx

from errands import RemoteError, TaskInfo, TaskStatus
from errands._sync import task_html

from . import _batch_flows, _flows
from ._flows import Call, Clock, Emit, Flow, Line, Open, Sleep
from ._http_batch import AsyncHTTPBatch, HTTPBatch
from ._plain_http import PLAIN_FIELDS, PlainConnections
from ._wire import Endpoint, ServerInfo, decode_result

__all__ = [
    "DEFAULT_URL",
    "AsyncHTTPBatch",
    "AsyncHTTPClient",
    "AsyncHTTPEndpoint",
    "AsyncHTTPTask",
    "HTTPBatch",
    "HTTPEndpoint",
    "HTTPTask",
    "SyncHTTPClient",
]

DEFAULT_URL = "http://127.0.0.1:3000"


def _headers(token: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    out = {"user-agent": "errands-client", **(headers or {})}
    if token is not None:
        out["authorization"] = f"Bearer {token}"
    return out


_tls: ssl.SSLContext | None = None
_tls_lock = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    """One TLS context (httpx's defaults: its CA bundle, verification on) for
    every client of the process.  httpx builds a new one for each client,
    even for an ``http://`` URL, and loading the CA bundle cost ~45 ms of CPU
    per client here: a script or a CLI command that makes a client, or a web
    view that makes one per request, paid it each time."""
    global _tls
    with _tls_lock:
        if _tls is None:
            _tls = httpx.create_ssl_context()
        return _tls


def _timeout(default: float, call: Call | Open) -> Any:
    if call.hold:
        return httpx.Timeout(default, read=default + call.hold)
    return httpx.USE_CLIENT_DEFAULT


def _absolute(base: str, call: Call | Open) -> dict[str, Any]:
    """The request with an absolute URL: measured, httpx's joining of a relative
    one onto ``base_url`` cost 14 µs of the client's ~50 µs per request."""
    return {**call.request, "url": base + call.request["url"]}


class _Direct:
    """Builds the requests of plain calls (:class:`Call`) for the connection
    pool that ``httpx.Client`` would send them to, so the clients send them
    there themselves.

    Measured, that skips about a third of httpx's CPU per request (merging
    the request with the client's defaults, the auth and redirect steps, the
    cookie jar): what neither client uses.  They follow no redirects either
    way; a server that sets a cookie switches its client back to the
    ``httpx.Client`` for good, so cookies work as before.  Streamed answers
    always go through the ``httpx.Client``.
    """

    def __init__(self, http: httpx.Client | httpx.AsyncClient, base: str, timeout: float) -> None:
        self.base = base
        self.headers = http.headers  # the client's defaults (httpx's and ours)
        self.default = timeout
        self.timeout = httpx.Timeout(timeout).as_dict()

    @staticmethod
    def sets_cookies(http: httpx.Client | httpx.AsyncClient, response: httpx.Response) -> bool:
        """Whether the server (or a proxy in front) set a cookie; ``http`` keeps it."""
        if "set-cookie" not in response.headers:
            return False
        http.cookies.extract_cookies(response)
        return True

    def request(self, call: Call) -> httpx.Request:
        fields = call.request
        headers = self.headers
        if (extra := fields.get("headers")) is not None:
            headers = httpx.Headers(headers)
            headers.update(extra)
        timeout = _timeout(self.default, call).as_dict() if call.hold else self.timeout
        return httpx.Request(
            fields["method"],
            self.base + fields["url"],
            params=fields.get("params"),
            content=fields.get("content"),
            data=fields.get("data"),
            files=fields.get("files"),
            headers=headers,
            extensions={"timeout": timeout},
        )


def _pool(http: httpx.Client | httpx.AsyncClient, base: str) -> Any:
    """The transport ``http`` sends ``base``'s requests to (its pool, a proxy
    from the environment, or the one given), or None when this httpx does
    not say (then every request goes through the client)."""
    pick = getattr(http, "_transport_for_url", None)  # httpx's, not public
    if pick is None:
        return None
    try:
        url = httpx.URL(base)
        if url.userinfo:  # credentials in the URL: httpx.Client's auth step sends them
            return None
        return pick(url)
    except Exception:  # another httpx: go through the client
        return None


def _unreachable(url: str, exc: httpx.TransportError) -> RemoteError:
    if isinstance(exc, httpx.TimeoutException):
        error = RemoteError(f"the server at {url} did not answer in time ({exc!r})")
    else:
        error = RemoteError(f"cannot reach the server at {url}: {exc!r}")
    error.__cause__ = exc
    return error


class _Inlined:
    """Results that a many-task wait (``as_completed``) brought along, each
    kept for the next ``get()`` of its task, which then sends no request.

    Bounded: past :attr:`LIMIT` bytes the oldest are dropped (their ``get()``
    asks the server, as it would have anyway).  Any thread may use it.
    """

    LIMIT = 16 * 1024 * 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: collections.OrderedDict[str, httpx.Response] = collections.OrderedDict()
        self._size = 0

    def keep(self, results: Mapping[str, httpx.Response]) -> None:
        with self._lock:
            for task_id, response in results.items():
                old = self._kept.pop(task_id, None)
                if old is not None:
                    self._size -= len(old.content)
                self._kept[task_id] = response
                self._size += len(response.content)
            while self._size > self.LIMIT:
                _, dropped = self._kept.popitem(last=False)
                self._size -= len(dropped.content)

    def take(self, task_id: str, endpoint: Endpoint | None = None) -> httpx.Response | None:
        """The answer kept for ``task_id`` (then forgotten), or None.  None for
        an endpoint whose result is raw bytes too (``Annotated[bytes,
        MediaType(...)]``): an inlined copy of JSON is the same value, not
        the same bytes, so its ``get()`` asks the server."""
        with self._lock:
            response = self._kept.pop(task_id, None)
            if response is not None:
                self._size -= len(response.content)
        if response is not None and endpoint is not None and _raw_bytes(endpoint):
            return None
        return response

    def __len__(self) -> int:
        return len(self._kept)


def _raw_bytes(endpoint: Endpoint) -> bool:
    """Whether the endpoint's result is handed back as the bytes stored."""
    output = endpoint.output
    return output.get("type") == "string" and output.get("format") == "binary"


@attrs.frozen(kw_only=True)
class _Options:
    """An endpoint's submit options (``endpoint.options(...)``)."""

    priority: int = 0
    delay: float | None = None
    idempotency_key: str | None = None

    def submit(self, endpoint: Endpoint, arguments: Mapping[str, Any]) -> Flow:
        return _flows.submit(
            endpoint,
            arguments,
            priority=self.priority,
            delay=self.delay,
            idempotency_key=self.idempotency_key,
        )

    def submit_many(
        self, endpoint: Endpoint, items: Iterable[Any], progress: Callable[[int], None] | None
    ) -> Flow:
        return _batch_flows.submit_many(
            endpoint,
            items,
            priority=self.priority,
            delay=self.delay,
            idempotency_key=self.idempotency_key,
            progress=progress,
        )


def _route(server: ServerInfo, name: str) -> Endpoint:
    """The endpoint whose routes to use for a task: its own, or any (task
    ids are global on errands' and BentoML's servers alike)."""
    endpoint = server.endpoints.get(name)
    if endpoint is not None:
        return endpoint
    for endpoint in server.endpoints.values():
        return endpoint
    raise RemoteError("the server has no task endpoints")


def _routes(server: ServerInfo, name: str) -> tuple[Endpoint, Endpoint | None]:
    """The routes to use for a task of endpoint ``name``, and that endpoint."""
    return _route(server, name), server.endpoints.get(name)


def _unknown(server: ServerInfo, name: str) -> AttributeError:
    known = ", ".join(sorted(server.endpoints)) or "none"
    return AttributeError(f"no task endpoint {name!r} on the server (endpoints: {known})")


class _AsyncWaiter:
    """``errands.as_completed`` over AsyncHTTPTask handles of one client."""

    is_async = True

    def __init__(self, client: AsyncHTTPClient) -> None:
        self.owner = client

    def now(self) -> float:
        return anyio.current_time()

    async def wait_any(
        self, task_ids: Collection[str], timeout: float | None
    ) -> dict[str, TaskInfo | None]:
        return await self.owner._wait_any(task_ids, timeout)

    def open_waiting(self, task_ids: list[str]) -> _AsyncWaitSession:
        return _AsyncWaitSession(self.owner, task_ids)


class _SyncWaiter:
    """``errands.as_completed`` over HTTPTask handles of one client."""

    is_async = False

    def __init__(self, client: SyncHTTPClient) -> None:
        self.owner = client

    def now(self) -> float:
        return time.monotonic()

    def wait_any(
        self, task_ids: Collection[str], timeout: float | None
    ) -> dict[str, TaskInfo | None]:
        return self.owner._wait_any(task_ids, timeout)

    def open_waiting(self, task_ids: list[str]) -> _SyncWaitSession:
        return _SyncWaitSession(self.owner, task_ids)


class _AsyncWaitSession:
    """``as_completed``'s rounds over one client: one streamed ``POST
    /tasks/wait`` for every task (``wait_stream``), opened at the first
    round with its timeout, which holds for the whole session; a server
    without it is asked again, each round, for every task not ended yet."""

    def __init__(self, client: AsyncHTTPClient, task_ids: list[str]) -> None:
        self._client = client
        self._left = dict.fromkeys(task_ids)
        self._rounds: AsyncGenerator[Any] | None = None

    async def next(self, timeout: float | None) -> dict[str, TaskInfo | None]:
        client = self._client
        if self._rounds is None:
            server = await client.server_info()
            if not server.wait_stream:
                found = await client._wait_any(list(self._left), timeout)
                for task_id in found:
                    self._left.pop(task_id, None)
                return found
            flow = _flows.wait_stream(server, self._left, timeout, results=client._wait_results)
            self._rounds = client._iterate(flow)
        found, inlined = await anext(self._rounds, ({}, {}))
        client._inlined.keep(inlined)
        return found

    async def aclose(self) -> None:
        if self._rounds is not None:
            await self._rounds.aclose()


class _SyncWaitSession:
    """:class:`_AsyncWaitSession` for :class:`SyncHTTPClient`."""

    def __init__(self, client: SyncHTTPClient, task_ids: list[str]) -> None:
        self._client = client
        self._left = dict.fromkeys(task_ids)
        self._rounds: Generator[Any] | None = None

    def next(self, timeout: float | None) -> dict[str, TaskInfo | None]:
        client = self._client
        if self._rounds is None:
            server = client.server_info()
            if not server.wait_stream:
                found = client._wait_any(list(self._left), timeout)
                for task_id in found:
                    self._left.pop(task_id, None)
                return found
            flow = _flows.wait_stream(server, self._left, timeout, results=client._wait_results)
            self._rounds = client._iterate(flow)
        found, inlined = next(self._rounds, ({}, {}))
        client._inlined.keep(inlined)
        return found

    def close(self) -> None:
        if self._rounds is not None:
            self._rounds.close()


# ====================================================================== async


class AsyncHTTPTask:
    """A handle on one task of an HTTP server, for async code (trio or asyncio)."""

    __slots__ = ("_client", "_fetched", "id", "name")

    def __init__(self, client: AsyncHTTPClient, task_id: str, name: str) -> None:
        self._client = client
        self.id = task_id
        self.name = name
        self._fetched: httpx.Response | None = None  # the answer to get that wait() brought

    async def get_status(self) -> TaskStatus:
        """The current status.  Raises TaskNotFound for an unknown or expired id."""
        return (await self.get_info()).status

    async def get_info(self) -> TaskInfo:
        """Everything the server knows about the task (times, attempt, progress, ...)."""
        server = await self._client.server_info()
        return await self._client._run(_flows.info(_route(server, self.name), self.id, self.name))  # type: ignore[no-any-return]

    async def get(self) -> Any:
        """The result, decoded by the endpoint's output schema.

        Raises TaskNotReady, TaskFailed, TaskCancelled or TaskNotFound.
        """
        server = await self._client.server_info()
        endpoint = server.endpoints.get(self.name)
        fetched, self._fetched = self._fetched, None
        if fetched is None:
            fetched = self._client._inlined.take(self.id, endpoint)
        if fetched is not None:
            return decode_result(fetched, endpoint)
        return await self._client._run(_flows.get(_route(server, self.name), self.id, endpoint))

    async def wait(self, timeout: float | None = None) -> TaskStatus:
        """Until the task is final; returns that status.

        Long polls on an errands server, so the answer comes when the task
        ends, not at the next poll: it asks ``get`` with ``?wait=``, and keeps
        a success's result for the next :meth:`get` (which then sends no
        request).  Polls the status with backoff on a server without long
        polls (BentoML's).  Raises TimeoutError after ``timeout`` seconds.
        """
        server = await self._client.server_info()
        route = _route(server, self.name)
        if not server.max_wait:
            return await self._client._run(_flows.wait(server, route, self.id, timeout))  # type: ignore[no-any-return]
        flow = _flows.wait_fetching(server, route, self.id, timeout)
        status, self._fetched = await self._client._run(flow)
        return status  # type: ignore[no-any-return]

    async def cancel(self) -> TaskStatus:
        """Cancel; returns the status the server reports.  Raises CannotCancel."""
        server = await self._client.server_info()
        return await self._client._run(_flows.cancel(_route(server, self.name), self.id))  # type: ignore[no-any-return]

    async def retry(self) -> AsyncHTTPTask:
        """A new task with the same arguments.  Raises TaskNotReady while not final."""
        server = await self._client.server_info()
        new_id = await self._client._run(_flows.retry(_route(server, self.name), self.id))
        return AsyncHTTPTask(self._client, new_id, self.name)

    def _completion_waiter(self) -> _AsyncWaiter:
        return _AsyncWaiter(self._client)

    def __repr__(self) -> str:
        return f"<AsyncHTTPTask {self.name} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncHTTPTask) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class AsyncHTTPEndpoint:
    """One task endpoint of a server: ``submit`` new tasks, ``get_task`` old ones."""

    def __init__(
        self,
        client: AsyncHTTPClient,
        name: str,
        *,
        priority: int = 0,
        delay: float | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self._client = client
        self.name = name
        self._options = _Options(priority=priority, delay=delay, idempotency_key=idempotency_key)

    async def submit(self, **arguments: Any) -> AsyncHTTPTask:
        """Send the arguments; returns the new task's handle as soon as it is queued.

        Raises:
            InvalidArguments: naming every bad field (checked by the server).
            AttributeError: the server has no such endpoint.
        """
        server = await self._client.server_info()
        endpoint = server.endpoints.get(self.name)
        if endpoint is None:
            raise _unknown(server, self.name)
        task_id = await self._client._run(self._options.submit(endpoint, arguments))
        return AsyncHTTPTask(self._client, task_id, self.name)

    async def submit_many(
        self, items: Iterable[Mapping[str, Any]], *, progress: Callable[[int], None] | None = None
    ) -> AsyncHTTPBatch:
        """Submit one task per item (a mapping of keyword arguments), sent as
        JSON Lines in requests of a few thousand items; the batch's handle.

        Items are checked one by one: an invalid item is left out and named
        in ``batch.rejected``; the others are accepted.  The submit options
        (priority, delay, idempotency key) apply to every item; with an
        idempotency key, sending the same items again gives the same tasks.
        ``progress(n)`` is told how many items were sent after each request.

        Raises:
            AttributeError: the server has no such endpoint.
            EngineUnavailable, RemoteError: a request failed part way (its
                note says which items were answered before it).
        """
        server = await self._client.server_info()
        endpoint = server.endpoints.get(self.name)
        if endpoint is None:
            raise _unknown(server, self.name)
        flow = self._options.submit_many(endpoint, items, progress)
        done: _batch_flows.Submitted = await self._client._run(flow)
        members = [(i, AsyncHTTPTask(self._client, t, self.name)) for i, t in done.members]
        return AsyncHTTPBatch(self._client, done.batch_id, self.name, members, done.rejected)

    def options(
        self, *, priority: int = 0, delay: float | None = None, idempotency_key: str | None = None
    ) -> AsyncHTTPEndpoint:
        """This endpoint with submit options (as for the in-process client)."""
        if delay is not None and delay < 0:
            raise ValueError("delay must not be negative")
        return AsyncHTTPEndpoint(
            self._client,
            self.name,
            priority=priority,
            delay=delay,
            idempotency_key=idempotency_key,
        )

    def get_task(self, task_id: str) -> AsyncHTTPTask:
        """A handle for an existing task id (checked when the handle is used)."""
        return AsyncHTTPTask(self._client, task_id, self.name)

    def __repr__(self) -> str:
        return f"<AsyncHTTPEndpoint {self.name}>"


class AsyncHTTPClient:
    """A client of an errands (or BentoML) server, for trio or asyncio code.

    Use it as ``async with AsyncHTTPClient(url) as client:`` (reads the
    schema on entry and closes the connections on exit), or call
    :meth:`aclose` yourself.  ``token`` is sent as a bearer token.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=_headers(token, headers),
            timeout=timeout,
            transport=transport,
            verify=_tls_context() if transport is None else True,
        )
        self._server: ServerInfo | None = None
        self._inlined = _Inlined()
        #: Whether many-task waits (as_completed) bring results along (the
        #: CLI's `wait`, which reads only statuses, turns it off).
        self._wait_results = True
        self._direct = _Direct(self._http, self.url, timeout)
        self._pool: httpx.AsyncBaseTransport | None = _pool(self._http, self.url)

    async def _send(self, call: Call) -> httpx.Response:
        """One plain call's answer, read whole (see :class:`_Direct`)."""
        pool = self._pool
        if pool is None or self._http.is_closed:  # (closed: httpx says so)
            return await self._http.request(
                **_absolute(self.url, call), timeout=_timeout(self.timeout, call)
            )
        request = self._direct.request(call)
        try:
            response = await pool.handle_async_request(request)
        except httpx.TransportError as exc:
            exc.request = request  # as httpx.Client does
            raise
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        if _Direct.sets_cookies(self._http, response):
            self._pool = None  # from now on through httpx.Client, which sends them back
        return response

    async def _run(self, flow: Flow) -> Any:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Call):
                    try:
                        reply: Any = await self._send(step)
                    except httpx.TransportError as exc:
                        # Into the flow: waits ride out a restart, others re-raise.
                        step = flow.throw(_unreachable(self.url, exc))
                        continue
                elif isinstance(step, Sleep):
                    await anyio.sleep(step.seconds)
                    reply = None
                else:
                    assert isinstance(step, Clock)
                    reply = anyio.current_time()
                step = flow.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    async def _iterate(self, flow: Flow) -> AsyncGenerator[Any]:
        """Drive a flow that hands out values (``Emit``) and may stream answers
        (``Open``, ``Line``); yields each value."""
        opened: dict[int, tuple[httpx.Response, AsyncIterator[str]]] = {}
        try:
            step = next(flow)
            while True:
                reply: Any = None
                if isinstance(step, Emit):
                    yield step.value
                elif isinstance(step, Sleep):
                    await anyio.sleep(step.seconds)
                elif isinstance(step, Clock):
                    reply = anyio.current_time()
                else:
                    try:
                        reply = await self._transfer(step, opened)
                    except httpx.TransportError as exc:
                        step = flow.throw(_unreachable(self.url, exc))
                        continue
                step = flow.send(reply)
        except StopIteration:
            return
        finally:
            flow.close()
            for response, lines in opened.values():
                await lines.aclose()  # type: ignore[attr-defined]  # (an async generator)
                await response.aclose()

    async def _transfer(
        self, step: Call | Open | Line, opened: dict[int, tuple[httpx.Response, AsyncIterator[str]]]
    ) -> Any:
        if isinstance(step, Line):
            return await anext(opened[id(step.response)][1], None)
        if isinstance(step, Call):
            return await self._send(step)
        request = self._http.build_request(
            **_absolute(self.url, step), timeout=_timeout(self.timeout, step)
        )
        response = await self._http.send(request, stream=True)
        opened[id(response)] = (response, response.aiter_lines())
        if response.status_code >= 400:
            await response.aread()
        return response

    def _routes(self, server: ServerInfo, name: str) -> tuple[Endpoint, Endpoint | None]:
        return _routes(server, name)

    async def server_info(self) -> ServerInfo:
        """The server's task endpoints (read from ``/schema.json`` once)."""
        if self._server is None:
            self._server = await self._run(_flows.schema())
        return self._server

    async def is_ready(self) -> bool:
        """Whether the server answers ``/readyz`` with 200."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def endpoints(self) -> Mapping[str, AsyncHTTPEndpoint]:
        """The task endpoints (empty until the schema was read)."""
        if self._server is None:
            return {}
        return {name: AsyncHTTPEndpoint(self, name) for name in self._server.endpoints}

    def __getattr__(self, name: str) -> AsyncHTTPEndpoint:
        if name.startswith("_"):
            raise AttributeError(name)
        server = self.__dict__.get("_server")
        if server is not None and name not in server.endpoints:
            raise _unknown(server, name)
        return AsyncHTTPEndpoint(self, name)

    def __getitem__(self, name: str) -> AsyncHTTPEndpoint:
        return AsyncHTTPEndpoint(self, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.endpoints))

    def get_task(self, task_id: str) -> AsyncHTTPTask:
        """A handle for any task id on the server."""
        return AsyncHTTPTask(self, task_id, "")

    async def get_batch(self, batch_id: str) -> AsyncHTTPBatch:
        """The batch ``batch_id`` with every task id (read a page at a time).

        Raises BatchNotFound when it is unknown or all its tasks expired.
        """
        server = await self.server_info()
        summary = await self._run(_batch_flows.load(server, batch_id))
        members = [
            (i, AsyncHTTPTask(self, t, summary.name))
            for i, t in zip(summary.indexes, summary.task_ids, strict=True)
        ]
        return AsyncHTTPBatch(self, summary.batch_id, summary.name, members)

    async def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskInfo]:
        """Tasks, newest first (errands servers only)."""
        flow = _flows.list_tasks(name=name, status=status, limit=limit, offset=offset)
        return await self._run(flow)  # type: ignore[no-any-return]

    async def _wait_any(
        self, task_ids: Collection[str], timeout: float | None
    ) -> dict[str, TaskInfo | None]:
        server = await self.server_info()
        flow = _flows.wait_any(
            server, _route(server, ""), task_ids, timeout, results=self._wait_results
        )
        found, inlined = await self._run(flow)
        self._inlined.keep(inlined)
        return found  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncHTTPClient:
        await self.server_info()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncHTTPClient {self.url}>"


# ====================================================================== sync


class HTTPTask:
    """A handle on one task of an HTTP server, for sync code.

    Same members as :class:`~errands.Task`.
    """

    __slots__ = ("_client", "_fetched", "id", "name")

    def __init__(self, client: SyncHTTPClient, task_id: str, name: str) -> None:
        self._client = client
        self.id = task_id
        self.name = name
        self._fetched: httpx.Response | None = None  # the answer to get that wait() brought

    def get_status(self) -> TaskStatus:
        """The current status.  Raises TaskNotFound for an unknown or expired id."""
        return self.get_info().status

    def get_info(self) -> TaskInfo:
        """Everything the server knows about the task (times, attempt, progress, ...)."""
        server = self._client.server_info()
        return self._client._run(_flows.info(_route(server, self.name), self.id, self.name))  # type: ignore[no-any-return]

    def get(self) -> Any:
        """The result.  Raises TaskNotReady, TaskFailed, TaskCancelled or TaskNotFound.

        Right after a :meth:`wait` that saw the task succeed, the result it
        brought along, without a request."""
        server = self._client.server_info()
        endpoint = server.endpoints.get(self.name)
        fetched, self._fetched = self._fetched, None
        if fetched is None:
            fetched = self._client._inlined.take(self.id, endpoint)
        if fetched is not None:
            return decode_result(fetched, endpoint)
        return self._client._run(_flows.get(_route(server, self.name), self.id, endpoint))

    def wait(self, timeout: float | None = None) -> TaskStatus:
        """Until the task is final (long polls); TimeoutError after ``timeout`` s.

        On an errands server one long poll of ``get`` brings the final
        status and a success's result, kept for the next :meth:`get`
        (see :meth:`AsyncHTTPTask.wait`)."""
        server = self._client.server_info()
        route = _route(server, self.name)
        if not server.max_wait:
            return self._client._run(_flows.wait(server, route, self.id, timeout))  # type: ignore[no-any-return]
        status, self._fetched = self._client._run(
            _flows.wait_fetching(server, route, self.id, timeout)
        )
        return status  # type: ignore[no-any-return]

    def cancel(self) -> TaskStatus:
        """Cancel; returns the status the server reports.  Raises CannotCancel."""
        server = self._client.server_info()
        return self._client._run(_flows.cancel(_route(server, self.name), self.id))  # type: ignore[no-any-return]

    def retry(self) -> HTTPTask:
        """A new task with the same arguments.  Raises TaskNotReady while not final."""
        server = self._client.server_info()
        new_id = self._client._run(_flows.retry(_route(server, self.name), self.id))
        return HTTPTask(self._client, new_id, self.name)

    def _completion_waiter(self) -> _SyncWaiter:
        return _SyncWaiter(self._client)

    def __repr__(self) -> str:
        return f"<HTTPTask {self.name} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HTTPTask) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _repr_html_(self) -> str:
        return task_html(self)


class HTTPEndpoint:
    """One task endpoint of a server, for sync code."""

    def __init__(
        self,
        client: SyncHTTPClient,
        endpoint: Endpoint,
        *,
        priority: int = 0,
        delay: float | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self._client = client
        self.endpoint = endpoint
        self.name = endpoint.name
        self._options = _Options(priority=priority, delay=delay, idempotency_key=idempotency_key)

    def submit(self, **arguments: Any) -> HTTPTask:
        """Send the arguments; returns the new task's handle as soon as it is queued.

        Raises InvalidArguments naming every bad field.
        """
        task_id = self._client._run(self._options.submit(self.endpoint, arguments))
        return HTTPTask(self._client, task_id, self.name)

    def submit_many(
        self, items: Iterable[Mapping[str, Any]], *, progress: Callable[[int], None] | None = None
    ) -> HTTPBatch:
        """Submit one task per item, sent as JSON Lines in requests of a few
        thousand items; the batch's handle (see
        :meth:`AsyncHTTPEndpoint.submit_many`)."""
        flow = self._options.submit_many(self.endpoint, items, progress)
        done: _batch_flows.Submitted = self._client._run(flow)
        members = [(i, HTTPTask(self._client, t, self.name)) for i, t in done.members]
        return HTTPBatch(self._client, done.batch_id, self.name, members, done.rejected)

    def options(
        self, *, priority: int = 0, delay: float | None = None, idempotency_key: str | None = None
    ) -> HTTPEndpoint:
        """This endpoint with submit options (as for the in-process client)."""
        if delay is not None and delay < 0:
            raise ValueError("delay must not be negative")
        return HTTPEndpoint(
            self._client,
            self.endpoint,
            priority=priority,
            delay=delay,
            idempotency_key=idempotency_key,
        )

    def get_task(self, task_id: str) -> HTTPTask:
        """A handle for an existing task id (checked when the handle is used)."""
        return HTTPTask(self._client, task_id, self.name)

    def __repr__(self) -> str:
        return f"<HTTPEndpoint {self.name}>"


class SyncHTTPClient:
    """A client of an errands (or BentoML) server, for plain code.

    The schema is read on first use of an endpoint; ``with SyncHTTPClient(url)
    as client:`` closes the connections at the end (or call :meth:`close`).
    ``token`` is sent as a bearer token.  One client may be shared by threads.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            headers=_headers(token, headers),
            timeout=timeout,
            transport=transport,
            verify=_tls_context() if transport is None else True,
        )
        self._server: ServerInfo | None = None
        self._lock = threading.Lock()
        self._inlined = _Inlined()
        #: Whether many-task waits (as_completed) bring results along (the
        #: CLI's `wait`, which reads only statuses, turns it off).
        self._wait_results = True
        self._direct = _Direct(self._http, self.url, timeout)
        self._pool: httpx.BaseTransport | None = _pool(self._http, self.url)
        #: Where plain calls go over ``http.client`` (see ``_plain_http``).
        self._plain: PlainConnections | None = None
        if transport is None and PlainConnections.serves(self.url, self._pool, self._http):
            self._plain = PlainConnections(self.url, self._http.headers, timeout, _tls_context())

    def _send(self, call: Call) -> httpx.Response:
        """One plain call's answer, read whole (see :class:`_Direct` and
        ``_plain_http``)."""
        plain, fields = self._plain, call.request
        if plain is not None and fields.keys() <= PLAIN_FIELDS and not self._http.is_closed:
            response = plain.send(
                fields["method"],
                fields["url"],
                params=fields.get("params"),
                content=fields.get("content"),
                headers=fields.get("headers"),
                hold=call.hold,
            )
            if _Direct.sets_cookies(self._http, response):
                # From now on through httpx.Client, which sends them back.
                self._plain = self._pool = None
                plain.close()
            return response
        pool = self._pool
        if pool is None or self._http.is_closed:  # (closed: httpx says so)
            return self._http.request(
                **_absolute(self.url, call), timeout=_timeout(self.timeout, call)
            )
        request = self._direct.request(call)
        try:
            response = pool.handle_request(request)
        except httpx.TransportError as exc:
            exc.request = request  # as httpx.Client does
            raise
        response.request = request
        try:
            response.read()
        finally:
            response.close()
        if _Direct.sets_cookies(self._http, response):
            self._pool = None  # from now on through httpx.Client, which sends them back
        return response

    def _run(self, flow: Flow) -> Any:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Call):
                    try:
                        reply: Any = self._send(step)
                    except httpx.TransportError as exc:
                        # Into the flow: waits ride out a restart, others re-raise.
                        step = flow.throw(_unreachable(self.url, exc))
                        continue
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    reply = None
                else:
                    assert isinstance(step, Clock)
                    reply = time.monotonic()
                step = flow.send(reply)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    def _iterate(self, flow: Flow) -> Generator[Any]:
        """Drive a flow that hands out values (``Emit``) and may stream answers
        (``Open``, ``Line``); yields each value."""
        opened: dict[int, tuple[httpx.Response, Iterator[str]]] = {}
        try:
            step = next(flow)
            while True:
                reply: Any = None
                if isinstance(step, Emit):
                    yield step.value
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                elif isinstance(step, Clock):
                    reply = time.monotonic()
                else:
                    try:
                        reply = self._transfer(step, opened)
                    except httpx.TransportError as exc:
                        step = flow.throw(_unreachable(self.url, exc))
                        continue
                step = flow.send(reply)
        except StopIteration:
            return
        finally:
            flow.close()
            for response, _ in opened.values():
                response.close()

    def _transfer(
        self, step: Call | Open | Line, opened: dict[int, tuple[httpx.Response, Iterator[str]]]
    ) -> Any:
        if isinstance(step, Line):
            return next(opened[id(step.response)][1], None)
        if isinstance(step, Call):
            return self._send(step)
        request = self._http.build_request(
            **_absolute(self.url, step), timeout=_timeout(self.timeout, step)
        )
        response = self._http.send(request, stream=True)
        opened[id(response)] = (response, response.iter_lines())
        if response.status_code >= 400:
            response.read()
        return response

    def _routes(self, server: ServerInfo, name: str) -> tuple[Endpoint, Endpoint | None]:
        return _routes(server, name)

    def server_info(self) -> ServerInfo:
        """The server's task endpoints (read from ``/schema.json`` once)."""
        with self._lock:
            if self._server is None:
                self._server = self._run(_flows.schema())
            return self._server

    def is_ready(self) -> bool:
        """Whether the server answers ``/readyz`` with 200."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    @property
    def endpoints(self) -> Mapping[str, HTTPEndpoint]:
        """The task endpoints (reads the schema if not read yet)."""
        server = self.server_info()
        return {name: HTTPEndpoint(self, e) for name, e in server.endpoints.items()}

    def __getattr__(self, name: str) -> HTTPEndpoint:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> HTTPEndpoint:
        server = self.server_info()
        endpoint = server.endpoints.get(name)
        if endpoint is None:
            raise _unknown(server, name)
        return HTTPEndpoint(self, endpoint)

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        try:
            names |= set(self.server_info().endpoints)
        except RemoteError:
            pass  # tab completion must not raise
        return sorted(names)

    def get_task(self, task_id: str) -> HTTPTask:
        """A handle for any task id on the server."""
        return HTTPTask(self, task_id, "")

    def get_batch(self, batch_id: str) -> HTTPBatch:
        """The batch ``batch_id`` with every task id (read a page at a time).

        Raises BatchNotFound when it is unknown or all its tasks expired.
        """
        summary = self._run(_batch_flows.load(self.server_info(), batch_id))
        members = [
            (i, HTTPTask(self, t, summary.name))
            for i, t in zip(summary.indexes, summary.task_ids, strict=True)
        ]
        return HTTPBatch(self, summary.batch_id, summary.name, members)

    def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskInfo]:
        """Tasks, newest first (errands servers only)."""
        flow = _flows.list_tasks(name=name, status=status, limit=limit, offset=offset)
        return self._run(flow)  # type: ignore[no-any-return]

    def _wait_any(
        self, task_ids: Collection[str], timeout: float | None
    ) -> dict[str, TaskInfo | None]:
        server = self.server_info()
        flow = _flows.wait_any(
            server, _route(server, ""), task_ids, timeout, results=self._wait_results
        )
        found, inlined = self._run(flow)
        self._inlined.keep(inlined)
        return found  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the connections."""
        self._http.close()
        if self._plain is not None:
            self._plain.close()

    def __enter__(self) -> SyncHTTPClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncHTTPClient {self.url}>"
