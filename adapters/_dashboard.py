"""The live dashboard: ``GET /dashboard``, one page that shows the queue.

Routes, under the app's root path (a mounted app serves them under its
prefix, and the page uses only relative URLs):

* ``GET /dashboard`` and its two files (``dashboard.js``, ``dashboard.css``):
  the page, static and the same for every server (no task data, no secret),
  served without a token.  Shipped as package data (``adapters/dashboard.*``).
* ``GET /dashboard/events?name=&status=&limit=&batch=``: a server-sent
  events stream of the queue (token required when auth is on): ``hello``
  (task names) at once, then ``tasks`` (the ids in view, newest first, and
  the tasks that changed) and ``stats`` (counts, queue depth, a chart's
  series, batch progress) whenever something changed.
* ``GET /dashboard/task?task_id=``: one task's status object with its
  arguments (token required), read once when a task is opened.

The page authenticates with the bearer token like any client: it reads the
token from the URL fragment (``#token=...``, which browsers never send to a
server) or a form, keeps it in ``sessionStorage``, and sends it in the
``Authorization`` header of every request, the event stream included (read
with ``fetch``, not ``EventSource``, which cannot send headers).  No cookie,
so no request forgery; no token in a URL that a log could keep.

What the stream tells comes from the store, so tasks that other processes
sharing the backend submit or run show too: each stream reads the newest
tasks every second and sends what changed; events of this engine
(``Engine.listen``) wake it at once.  Its reader (``_dashboard_feed``) runs
where the engine runs (``access.call``), as the task event stream's does.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio

from errands import Engine, EngineClosed, ErrandsError, TaskInfo
from errands._batches import is_batch_id

from ._answers import Answer, json_answer, number, one
from ._dashboard_feed import MAX_BATCHES, Feed, Recent
from ._protocol import STATUS_NAMES, HTTPError, hidden, info_to_json, status_names
from ._waiting import StreamedAnswer, stream_headers

if TYPE_CHECKING:
    from ._bridge import EngineAccess
    from ._handlers import Handlers
    from ._waiting import Holds

__all__ = ["PAGE_PATHS", "Dashboard", "DashboardStream"]

log = logging.getLogger("errands.http")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The page's files: path -> (file in ``adapters/``, media type).
PAGE_PATHS = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
#: Tasks in view at most (``?limit=``).
MAX_LIMIT = 500

# The page runs no inline script or style, talks only to its own origin,
# and may not be framed (clickjacking on the cancel buttons).
_PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]
_STREAM_HEADERS = stream_headers(b"text/event-stream")


def _read_page(name: str) -> bytes:
    return (importlib.resources.files("errands.adapters") / name).read_bytes()


class DashboardStream(StreamedAnswer):
    """``GET /dashboard/events``'s answer: the feed's events as they come,
    until the client goes away, the engine stops, or a drain."""

    def __init__(self, access: EngineAccess, feed: Feed, *, holds: Holds) -> None:
        self._access = access
        self._feed = feed
        self._holds = holds
        self._gone = False

    async def run(self, send: Send, receive: Receive) -> None:
        """Send the whole stream; returns when it has ended."""
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        try:
            with self._holds.hold(checked=True):
                async with anyio.create_task_group() as group:
                    group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                    await self._pump(send)
                    group.cancel_scope.cancel()
        except (EngineClosed, HTTPError):
            pass  # the engine stopped: the page reconnects and is told so
        except ErrandsError:
            log.exception("a dashboard stream ended by an engine error")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self._access.call(self._feed.close)
                except Exception:
                    pass  # the engine stopped: nothing is left to close
        if not self._gone:
            await self._send(send, b"", more=False)

    async def _pump(self, send: Send) -> None:
        data = await self._access.call(self._feed.open)
        while not self._gone:
            if data:
                await self._send(send, data)
            data = await self._access.call(self._feed.next)


class Dashboard:
    """The dashboard routes of one app."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.life = handlers.life
        self.http = handlers.http
        self.recent = Recent()
        self._files: dict[str, bytes] = {}

    @staticmethod
    def serves(path: str) -> bool:
        return path == "/dashboard" or path.startswith("/dashboard/")

    def page(self, path: str) -> Answer:
        """The page or one of its files (open: they hold no data)."""
        name, media = PAGE_PATHS[path]
        body = self._files.get(name)
        if body is None:
            body = self._files[name] = _read_page(name)
        return 200, [(b"content-type", media.encode()), *_PAGE_HEADERS], body

    async def dispatch(self, path: str, query: dict[str, list[str]]) -> Answer | DashboardStream:
        """``/dashboard/events`` or ``/dashboard/task`` (the router checked
        auth and the method)."""
        if path == "/dashboard/events":
            return await self.events(query)
        if path == "/dashboard/task":
            return await self.task(query)
        raise HTTPError(
            404,
            f"no route {path[:200]}; the dashboard's are /dashboard, /dashboard/events "
            "and /dashboard/task",
        )

    async def events(self, query: dict[str, list[str]]) -> DashboardStream:
        name = one(query, "name") or None
        if name is not None and name not in self.handlers.definitions:
            raise HTTPError(400, f"unknown task name {name!r}")
        status = None
        status_text = one(query, "status") or None
        if status_text is not None:
            status = STATUS_NAMES.get(status_text)
            if status is None:
                allowed = ", ".join(status_names())
                raise HTTPError(400, f"unknown status {status_text!r}; one of {allowed}")
        limit = number(query, "limit", int, default=100)
        if not 1 <= limit <= MAX_LIMIT:
            raise HTTPError(400, f"limit must be 1..{MAX_LIMIT}")
        batches = query.get("batch", [])[:MAX_BATCHES]
        bad = [b for b in batches if not is_batch_id(b)]
        if bad:
            raise HTTPError(400, f"not a batch id: {bad[0][:100]!r}")
        access = await self.life.start_if_needed()
        holds = self.life.holds
        holds.check_room()  # a 503 now, not a stream cut short
        if holds.draining:
            raise HTTPError(503, "the server is shutting down", retry_after=1)
        feed = Feed(
            access.engine,
            self.recent,
            name=name,
            status=status,
            limit=limit,
            batches=batches,
            bentoml_compat=self.handlers.bentoml_compat,
            hide_errors=self.http.hide_errors,
        )
        return DashboardStream(access, feed, holds=holds)

    async def task(self, query: dict[str, list[str]]) -> Answer:
        task_id = one(query, "task_id", required=True)
        assert task_id is not None
        access = await self.life.start_if_needed()
        info, args = await self.handlers.call(access, _details, access.engine, task_id)
        if self.http.hide_errors:
            info = hidden(info)
        body = info_to_json(info, bentoml_compat=self.handlers.bentoml_compat)
        body["args"] = args
        return json_answer(200, body)


async def _details(engine: Engine, task_id: str) -> tuple[TaskInfo, Any]:
    info = await engine.info(task_id)
    record = await engine.load(task_id)
    return info, record.args  # JSON data already (validated at submit)
