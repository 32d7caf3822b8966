"""Which handler answers a request: paths, methods, query and body reading.

Task routes are ``<route>/<action>`` for every task (task ids are global, so
any task route answers for any id); the server's own routes are fixed paths.
``root_path`` (a mounted app) is taken off the path first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio

from ._answers import Answer, one
from ._batch_routes import BATCH_ACTIONS, BatchRoutes
from ._batch_submit import BatchSubmit
from ._dashboard import PAGE_PATHS, Dashboard
from ._handlers import Handlers
from ._options import HTTPOptions
from ._protocol import HTTPError
from ._scopes import move_on_after
from ._security import OPEN_PATHS, Authenticator, HostAllowList, header
from ._waiting import StreamedAnswer, wait_many

__all__ = ["ACTIONS", "SUBMIT_TYPES", "Router"]

#: The media types a submit takes.
SUBMIT_TYPES = frozenset({"application/json", "multipart/form-data"})

log = logging.getLogger("errands.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

#: The actions of a task route and the methods each takes.  ``PUT`` and
#: ``POST`` both for cancel and retry: BentoML's docs and code disagree.
ACTIONS = {
    "submit": ("POST",),
    "status": ("GET",),
    "get": ("GET",),
    "cancel": ("POST", "PUT"),
    "retry": ("PUT", "POST"),
    "events": ("GET",),
    "submit_many": ("POST",),
}
#: Where the batch routes live: ``/batches/<id>``, ``.../results``, ``.../cancel``.
BATCHES = "/batches/"


class Router:
    """Sends each request to its handler."""

    def __init__(
        self,
        handlers: Handlers,
        *,
        http: HTTPOptions,
        auth: Authenticator,
        hosts: HostAllowList | None,
    ) -> None:
        self.handlers = handlers
        self.batches = BatchRoutes(handlers)
        self.submit_many = BatchSubmit(handlers)
        self.life = handlers.life
        self.routes = {d.route: d for d in handlers.definitions.values()}
        self.http = http
        self.max_body_size = http.max_body_size
        self.auth = auth
        self.hosts = hosts
        self.dashboard: Dashboard | None = None
        if http.dashboard and "/dashboard" in self.routes:
            log.warning("no dashboard: a task's route is /dashboard")
        elif http.dashboard:
            self.dashboard = Dashboard(handlers)

    async def dispatch(self, scope: Scope, receive: Receive) -> Answer | StreamedAnswer:
        """The answer to an HTTP request (raises HTTPError for an error answer)."""
        path: str = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        method: str = scope["method"]
        if self.hosts is not None and not self.hosts.allows(scope):
            # DNS rebinding: a page on another name aimed at this server.
            host = _header(scope, b"host")[:100]
            raise HTTPError(421, f"this server does not answer to the host name {host!r}")
        dashboard = self.dashboard
        if dashboard is not None and path in PAGE_PATHS:
            # The page holds no data: it asks for the token (see _dashboard).
            _allow(method, ("GET", "HEAD"))
            return dashboard.page(path)
        if path not in OPEN_PATHS and not await self.auth.allows(scope):
            error = HTTPError(401, "a valid bearer token is required (Authorization: Bearer ...)")
            error.headers.append((b"www-authenticate", b'Bearer realm="errands"'))
            raise error
        # Blank values are kept: ``?limit=`` is a bad limit, not the default.
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        handlers = self.handlers
        if path == "/livez":
            _allow(method, ("GET", "HEAD"))
            return self.life.liveness()
        if path == "/readyz":
            _allow(method, ("GET", "HEAD"))
            return await self.life.readiness()
        if path == "/schema.json":
            _allow(method, ("GET",))
            return handlers.schema_json()
        if path == "/openapi.json":
            _allow(method, ("GET",))
            return handlers.openapi_json(auth=self.auth.enabled, root_path=root)
        if path == "/metrics":
            _allow(method, ("GET",))
            return await handlers.metrics()
        if path == "/tasks":
            _allow(method, ("GET",))
            return await handlers.list_tasks(query)
        if dashboard is not None and dashboard.serves(path):
            _allow(method, ("GET",))
            return await dashboard.dispatch(path, query)
        if path == "/tasks/wait":
            _allow(method, ("POST",))
            body = await self._read_body(scope, receive)
            return await wait_many(
                await self.life.start_if_needed(),
                body,
                query,
                holds=self.life.holds,
                max_wait=handlers.max_wait,
                bentoml_compat=handlers.bentoml_compat,
                max_ids=self.http.max_wait_ids,
                hide_errors=self.http.hide_errors,
            )
        prefix, _, action = path.rpartition("/")
        definition = self.routes.get(prefix or "/")
        if (definition is None or action not in ACTIONS) and path.startswith(BATCHES):
            batch_id, _, batch_action = path[len(BATCHES) :].partition("/")
            if batch_action in BATCH_ACTIONS:
                _allow(method, BATCH_ACTIONS[batch_action])
                return await self.batches.dispatch(batch_action, batch_id, query, root)
        if definition is None or action not in ACTIONS:
            routes = ", ".join(sorted(self.routes))
            raise HTTPError(
                404,
                f"no route {path[:200]}; the task endpoints are {routes}, each with "
                f"/{', /'.join(ACTIONS)} (and /tasks, /tasks/wait, /batches/<id>, "
                "/batches/<id>/results, /batches/<id>/cancel, /readyz, /livez, "
                "/schema.json, /openapi.json, /metrics)",
            )
        _allow(method, ACTIONS[action])
        if action == "submit_many":
            return await self.submit_many(
                definition,
                scope,
                receive,
                query,
                _header(scope, b"content-type"),
                _header(scope, b"idempotency-key") or None,
                self._read_body,
            )
        if action == "submit":
            content_type = _header(scope, b"content-type")
            media = content_type.split(";", 1)[0].strip().lower()
            if media not in SUBMIT_TYPES:
                # Anything else is what a web page may send cross-origin
                # without asking first (text/plain, forms).
                raise HTTPError(
                    415,
                    f"submit takes application/json or multipart/form-data, not "
                    f"{media[:100] or 'a body without a content-type'}",
                )
            body = await self._read_body(scope, receive)
            return await handlers.submit(
                definition, body, query, content_type, _header(scope, b"idempotency-key") or None
            )
        task_id = one(query, "task_id", required=True)
        assert task_id is not None
        if action == "status":
            return await handlers.status(task_id, query)
        if action == "get":
            return await handlers.get(task_id, query)
        if action == "events":
            return await handlers.events(task_id)
        if action == "cancel":
            return await handlers.cancel(task_id)
        return await handlers.retry(task_id)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_body_size
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise HTTPError(400, "bad content-length header") from None
                if declared > limit:
                    if declared <= _drain_budget(limit):
                        await self._drain(receive)
                    raise HTTPError(413, _too_large(limit))
        chunks: list[bytes] = []
        size = 0
        # A client that stalls half way through its body holds nothing for long.
        with move_on_after(self.http.read_timeout) as timer:
            return await self._receive_body(receive, chunks, size, limit)
        assert timer.cancelled_caught
        raise HTTPError(408, f"the request body did not arrive within {self.http.read_timeout:g} s")

    async def _receive_body(
        self, receive: Receive, chunks: list[bytes], size: int, limit: int
    ) -> bytes:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                if message.get("more_body", False):
                    await self._drain(receive, _drain_budget(limit) - size)
                raise HTTPError(413, _too_large(limit))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _drain(self, receive: Receive, budget: int | None = None) -> None:
        """Read and drop the rest of a body that is too large, up to ``budget``
        bytes and the read timeout, so the client (still sending) gets to read
        the 413 answer instead of a reset connection.  Beyond that, the answer
        goes out anyway and the server closes the connection."""
        left = _drain_budget(self.max_body_size) if budget is None else budget
        with anyio.move_on_after(self.http.read_timeout):
            while left > 0:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                left -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


def _drain_budget(limit: int) -> int:
    """How much of a too-large body the server reads and drops before answering."""
    return max(16 * limit, 1 << 20)


def _too_large(limit: int) -> str:
    return (
        f"the body is larger than {limit} bytes, the server's limit (max_body_size; "
        "errands serve --max-body-size BYTES)"
    )


def _header(scope: Scope, name: bytes) -> str:
    value = header(scope, name)
    return "" if value is None else value.decode("latin-1")


def _allow(method: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if method not in allowed:
        error = HTTPError(405, f"method {method} not allowed here; use {', '.join(allowed)}")
        error.headers.append((b"allow", ", ".join(allowed).encode()))
        raise error
