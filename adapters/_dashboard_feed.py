"""The dashboard's reader of the queue, on the engine's side.

Each ``/dashboard/events`` stream has one :class:`Feed`, whose methods run
where the engine runs (the stream calls them through ``access.call``).  A
:meth:`Feed.next` waits until this engine tells of an event
(``Engine.listen``) or :data:`TICK` seconds pass, then reads the store and
returns the server-sent events for what changed: the tasks in view and the
counts, chart series and batch progress.  Reading the store, not only
listening, is what shows the tasks of other processes sharing the backend.
:class:`Recent` is what the streams of one engine share.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Callable
from typing import Any

import trio

from errands import Engine, TaskEvent, TaskInfo, TaskStatus
from errands._batches import batch_counts

from ._answers import json_bytes
from ._protocol import info_to_json, status_name, status_names

__all__ = ["MAX_BATCHES", "TICK", "WINDOW", "Feed", "Recent", "sse"]

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
#: Batches a stream follows at most (the newest seen first).
MAX_BATCHES = 8
#: Seconds after which an unchanged ``stats`` event is sent again (a keep-alive).
RESEND = 15.0


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
        running = len(await store.list(status=TaskStatus.IN_PROGRESS, limit=1000, arguments=False))
        counts = dict.fromkeys((s.value for s in TaskStatus), 0)
        finished = [0] * BUCKETS
        start = wall - BUCKETS * BUCKET
        for status, expires_at, ended in await store.newest_ends(WINDOW):
            if expires_at is not None and expires_at <= wall:
                continue
            counts[status.value] += 1
            if status.is_final and ended is not None and ended >= start:
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
