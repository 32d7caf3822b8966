"""Which handler answers a request: paths, methods, query and body reading.

Task routes are ``<route>/<action>`` for every task (task ids are global, so
any task route answers for any id); the server's own routes are fixed paths.
``root_path`` (a mounted app) is taken off the path first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from ._answers import Answer, one
from ._handlers import Handlers
from ._protocol import HTTPError
from ._waiting import EventStream, wait_many

__all__ = ["ACTIONS", "Router"]

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
}


class Router:
    """Sends each request to its handler."""

    def __init__(self, handlers: Handlers, *, max_body_size: int) -> None:
        self.handlers = handlers
        self.life = handlers.life
        self.routes = {d.route: d for d in handlers.definitions.values()}
        self.max_body_size = max_body_size

    async def dispatch(self, scope: Scope, receive: Receive) -> Answer | EventStream:
        """The answer to an HTTP request (raises HTTPError for an error answer)."""
        path: str = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        method: str = scope["method"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
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
            return handlers.openapi_json()
        if path == "/metrics":
            _allow(method, ("GET",))
            return handlers.metrics()
        if path == "/tasks":
            _allow(method, ("GET",))
            return await handlers.list_tasks(query)
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
            )
        prefix, _, action = path.rpartition("/")
        definition = self.routes.get(prefix or "/")
        if definition is None or action not in ACTIONS:
            raise HTTPError(404, f"no route {path}")
        _allow(method, ACTIONS[action])
        if action == "submit":
            body = await self._read_body(scope, receive)
            return await handlers.submit(
                definition,
                body,
                query,
                _header(scope, b"content-type"),
                _header(scope, b"idempotency-key") or None,
            )
        task_id = one(query, "task_id", required=True)
        assert task_id is not None
        if action in ("status", "get"):
            await handlers.long_poll(task_id, query)
            if action == "status":
                return await handlers.status(task_id)
            return await handlers.get(task_id)
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
                    raise HTTPError(413, f"the body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


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
