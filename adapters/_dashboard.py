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
tasks at least every :data:`TICK` seconds and sends what changed; events of
this engine (``Engine.listen``) wake it at once.  The stream's loop runs
where the engine runs (``access.call``), as the task event stream's does.
"""

from __future__ import annotations

import collections
import datetime as dt
import importlib.resources
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import trio

from errands import Engine, EngineClosed, ErrandsError, TaskEvent, TaskInfo, TaskStatus
from errands._batches import batch_counts, is_batch_id

from ._answers import Answer, json_answer, json_bytes, number, one
from ._protocol import STATUS_NAMES, HTTPError, hidden, info_to_json, status_name, status_names

if TYPE_CHECKING:
    from ._bridge import EngineAccess
    from ._handlers import Handlers
    from ._waiting import Holds

__all__ = ["PAGE_PATHS", "TICK", "WINDOW", "Dashboard", "DashboardStream"]

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
#: Seconds between two reads of the store while nothing wakes a stream.
TICK = 1.0
#: The same while a task in view is running (its progress is stored, not told).
BUSY_TICK = 0.25
#: A burst of this engine's events is read together after this many seconds.
SETTLE = 0.05
#: The counts of finished tasks are over the newest this many tasks.
WINDOW = 500
#: The chart: this many buckets of :data:`BUCKET` seconds.
BUCKETS = 30
BUCKET = 10.0
#: Tasks in view at most (``?limit=``).
MAX_LIMIT = 500
#: Batches a stream follows at most (the newest seen first).
MAX_BATCHES = 8
#: Seconds after which an unchanged ``stats`` event is sent again (a keep-alive).
RESEND = 15.0

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
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_FINAL = ("success", "failure", "cancelled")


def _read_page(name: str) -> bytes:
    return (importlib.resources.files("errands.adapters") / name).read_bytes()


def sse(event: str, data: Any) -> bytes:
    """One server-sent event (``data`` as one line of JSON)."""
    return f"event: {event}\ndata: ".encode() + json_bytes(data) + b"\n\n"


class Recent:
    """What the dashboards of one engine share, touched on the engine's thread
    only: queue depth samples (for the chart) and the batches seen submitted."""

    def __init__(self) -> None:
        self.depths: collections.deque[tuple[float, int]] = collections.deque()
        self.batches: collections.deque[str] = collections.deque(maxlen=MAX_BATCHES)
        self.engine: Engine | None = None
        self._stop: Callable[[], None] | None = None

    def attach(self, engine: Engine) -> None:
        """Listen to ``engine`` (once; again after an engine restart)."""
        if self.engine is engine:
            return
        if self._stop is not None:
            self._stop()
        self.engine = engine
        self.depths.clear()
        self._stop = engine.listen(self._heard)

    def _heard(self, event: TaskEvent) -> None:
        if event.batch_id is not None and event.batch_id not in self.batches:
            self.batches.appendleft(event.batch_id)

    def sample(self, now: float, depth: int) -> None:
        if self.depths and now - self.depths[-1][0] < TICK / 2:
            return
        self.depths.append((now, depth))
        while self.depths and self.depths[0][0] < now - BUCKETS * BUCKET:
            self.depths.popleft()


class Feed:
    """One stream's reader, on the engine's side: each :meth:`next` waits for
    a wake (an event of this engine) or :data:`TICK` seconds, reads the store
    and returns the events to send (empty when nothing changed)."""

    def __init__(
        self,
        engine: Engine,
        recent: Recent,
        *,
        name: str | None,
        status: TaskStatus | None,
        limit: int,
        batches: list[str],
        bentoml_compat: bool,
        hide_errors: bool,
    ) -> None:
        self.engine = engine
        self.recent = recent
        self.name = name
        self.status = status
        self.limit = limit
        self.asked_batches = batches
        self.compat = bentoml_compat
        self.hide = hide_errors
        self._wake = trio.Event()
        self._stop: Callable[[], None] | None = None
        self._seen: dict[str, bytes] = {}
        self._ids: list[str] | None = None
        self._stats: bytes | None = None
        self._stats_at = -float("inf")
        self._done_batches: dict[str, dict[str, int]] = {}
        self._busy = False  # a task in view runs: its progress is read more often
        self._counted_at = -float("inf")

    async def open(self) -> bytes:
        """Start listening; the first events (names, the tasks in view, stats)."""
        self.engine.check_open()
        self.recent.attach(self.engine)
        self._stop = self.engine.listen(self._heard)
        service = self.engine.service
        hello = sse(
            "hello",
            {
                "service": service.name,
                "routes": {name: d.route for name, d in sorted(service.tasks.items())},
                "statuses": status_names(bentoml_compat=self.compat),
                "final": [
                    status_name(s, bentoml_compat=self.compat) for s in TaskStatus if s.is_final
                ],
            },
        )
        return hello + await self._read()

    async def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None
        await trio.lowlevel.checkpoint()

    def _heard(self, event: TaskEvent) -> None:
        if self.name is None or event.name == self.name:
            self._wake.set()

    async def next(self) -> bytes:
        """The next events to send (blocks up to :data:`TICK` seconds)."""
        with trio.move_on_after(BUSY_TICK if self._busy else TICK):
            await self._wake.wait()
            await trio.sleep(SETTLE)  # a burst of events: one read
        woken = self._wake.is_set()
        self._wake = trio.Event()
        return await self._read(counts=woken)

    async def _read(self, *, counts: bool = True) -> bytes:
        """The events for what changed; the counts too when ``counts`` or
        :data:`TICK` seconds have passed (a running task's progress is read
        more often than the counts)."""
        out = await self._tasks()
        now = trio.current_time()
        if counts or now - self._counted_at >= TICK:
            self._counted_at = now
            out += await self._stats_event(now)
        return out

    async def _tasks(self) -> bytes:
        engine = self.engine
        engine.check_open()
        out = b""
        infos = await engine.list(name=self.name, status=self.status, limit=self.limit)
        changed = []
        seen: dict[str, bytes] = {}
        for info in infos:
            body = self._json(info)
            text = json_bytes(body)
            seen[info.id] = text
            if self._seen.get(info.id) != text:
                changed.append(body)
        ids = [info.id for info in infos]
        if changed or ids != self._ids:
            out += sse("tasks", {"ids": ids, "tasks": changed})
        self._seen, self._ids = seen, ids
        self._busy = any(info.status is TaskStatus.IN_PROGRESS for info in infos)
        return out

    async def _stats_event(self, now: float) -> bytes:
        stats = await self._stats_now()
        key = json_bytes(stats)
        if key == self._stats and now - self._stats_at < RESEND:
            return b""
        self._stats, self._stats_at = key, now
        stats["now"] = dt.datetime.fromtimestamp(self.engine.clock(), dt.UTC).isoformat()
        return sse("stats", stats)

    def _json(self, info: TaskInfo) -> dict[str, Any]:
        return info_to_json(info, bentoml_compat=self.compat, hide_errors=self.hide)

    async def _stats_now(self) -> dict[str, Any]:
        engine = self.engine
        store = engine.backend.store
        wall = engine.clock()
        depth = await engine.backend.queue.depth()
        self.recent.sample(wall, depth)
        running = len(await store.list(status=TaskStatus.IN_PROGRESS, limit=1000))
        newest = await store.list(limit=WINDOW)
        counts = dict.fromkeys((s.value for s in TaskStatus), 0)
        finished = [0] * BUCKETS
        start = wall - BUCKETS * BUCKET
        for stored in newest:
            record = stored.record
            if record.is_expired(wall):
                continue
            counts[stored.status.value] += 1
            ended = record.finished_at
            if stored.status.is_final and ended is not None and ended >= start:
                finished[min(int((ended - start) // BUCKET), BUCKETS - 1)] += 1
        depths: list[int | None] = [None] * BUCKETS
        for moment, value in self.recent.depths:
            if moment >= start:
                at = min(int((moment - start) // BUCKET), BUCKETS - 1)
                depths[at] = max(value, depths[at] or 0)
        # Exact across processes: the queue's depth and the running tasks;
        # the finished counts are over the newest WINDOW tasks.
        counts["pending"] = depth
        counts["in_progress"] = running
        shown = {status_name(s, bentoml_compat=self.compat): counts[s.value] for s in TaskStatus}
        return {
            "counts": shown,
            "window": WINDOW,
            "depth": depth,
            "running_here": len(engine.runner.running),
            "chart": {"bucket": BUCKET, "finished": finished, "depth": depths},
            "batches": await self._batches(),
        }

    async def _batches(self) -> list[dict[str, Any]]:
        wanted = list(dict.fromkeys([*self.asked_batches, *self.recent.batches]))[:MAX_BATCHES]
        out = []
        for batch_id in wanted:
            counts = self._done_batches.get(batch_id)
            if counts is None:
                counts = await batch_counts(self.engine, batch_id)
                if counts["total"] and all(
                    counts[s.value] == 0 for s in TaskStatus if not s.is_final
                ):
                    self._done_batches[batch_id] = counts  # final: it no longer changes
            if not counts["total"]:
                continue  # unknown, or gone with its tasks
            shown = {
                status_name(s, bentoml_compat=self.compat): counts.get(s.value, 0)
                for s in TaskStatus
            }
            out.append(
                {
                    "batch_id": batch_id,
                    "total": counts["total"],
                    "expired": counts.get("expired", 0),
                    "counts": shown,
                }
            )
        return out


class DashboardStream:
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

    async def _send(self, send: Send, data: bytes, *, more: bool = True) -> None:
        try:
            await send({"type": "http.response.body", "body": data, "more_body": more})
        except OSError:  # some servers raise once the client has gone
            self._gone = True

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        scope.cancel()


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
