"""The ``/batches/<id>`` routes: a batch's counts and ids, its results, cancel.

* ``GET /batches/<id>``: counts by status, progress and a page of task ids
  (``?offset=&limit=``); ``?wait=S`` holds until every task is final, as
  status's ``wait`` does.
* ``GET /batches/<id>/results``: JSON Lines, one line per final task, in
  submission order or as they finish (``?order=``); ``wait=true`` streams
  until every task is final, with a blank line after 15 s of silence.  Each
  line is built from the stored result, never decoded: what ``/get`` sends
  is what is inlined (bytes and images are named by ``result_url``).
* ``POST /batches/<id>/cancel``: cancels what is not final; the counts.

Engine work runs through ``access.call`` (the engine may live in this loop
or in its own thread): one crossing per summary, per cancel, and per page
of result lines.  Bulk submit is ``_batch_submit``'s.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import trio

from errands import (
    BatchNotFound,
    Engine,
    TaskDefinition,
    TaskError,
    TaskInfo,
    TaskStatus,
)
from errands._batches import CHUNK, InTurn, batch_counts, is_batch_id, members_name
from errands._client import load_batch

from ._answers import Answer, json_answer, number, one, wait_seconds
from ._batch_wire import JSONL_TYPES, RESULT_ORDERS, result_line, summary_to_json
from ._protocol import HTTPError
from ._waiting import StreamedAnswer, stream_headers

if TYPE_CHECKING:
    from ._bridge import EngineAccess
    from ._handlers import Handlers
    from ._waiting import Holds

__all__ = ["BATCH_ACTIONS", "KEEPALIVE", "BatchRoutes", "LinesStream", "owner"]

log = logging.getLogger("errands.http")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds of silence after which a waiting results stream sends a blank line.
KEEPALIVE = 15.0
#: The routes under ``/batches/<id>`` and the methods each takes.
BATCH_ACTIONS = {"": ("GET",), "results": ("GET",), "cancel": ("POST", "PUT")}
#: Result lines handed over per engine crossing.
LINES_PER_CALL = 256

_JSON = "application/json"
_STREAM_HEADERS = stream_headers(JSONL_TYPES[0].encode())


# ====================================================================== engine side


async def _batch_name(engine: Engine, batch_id: str) -> str:
    """The endpoint of a batch's tasks ("" when none of the first is kept)."""
    members = await engine.backend.store.batch_members(batch_id, limit=CHUNK)
    return await members_name(engine, [task_id for _, task_id in members])


async def owner(engine: Engine, batch_id: str) -> str | None:
    """The endpoint of an existing batch (None: it has no member yet)."""
    members = await engine.backend.store.batch_members(batch_id, limit=1)
    return await _batch_name(engine, batch_id) if members else None


async def _live_counts(engine: Engine, batch_id: str) -> dict[str, int]:
    """The batch's counts; BatchNotFound when unknown, malformed or all expired."""
    engine.check_open()
    if not is_batch_id(batch_id):
        raise BatchNotFound(batch_id)
    counts = await batch_counts(engine, batch_id)
    total = counts["total"]
    if total == 0 or counts.get("expired", 0) >= total:
        raise BatchNotFound(batch_id)
    return counts


async def _summary(
    engine: Engine, batch_id: str, offset: int, limit: int
) -> tuple[str, dict[str, int], list[tuple[int, str]]]:
    counts = await _live_counts(engine, batch_id)
    page: list[tuple[int, str]] = []
    if limit:
        members = await engine.backend.store.batch_members(batch_id, offset=offset, limit=limit)
        page = [(int(index), str(task_id)) for index, task_id in members]
    return await _batch_name(engine, batch_id), counts, page


async def _wait_batch(engine: Engine, batch_id: str, seconds: float) -> None:
    await _live_counts(engine, batch_id)
    batch = await load_batch(engine, batch_id)
    # A cancel scope, not wait(timeout=): the engine's wait raises trio's
    # TooSlowError, not the TimeoutError it documents.
    with trio.move_on_after(seconds):
        await batch.wait()


async def _cancel(engine: Engine, batch_id: str) -> tuple[str, dict[str, int]]:
    await _live_counts(engine, batch_id)
    batch = await load_batch(engine, batch_id)
    return batch.name, await batch.cancel()


#: Markers a results generator yields besides lines: FLUSH before it may
#: block (hand over what is ready), IDLE after KEEPALIVE seconds of waiting.
FLUSH = b"flush"
IDLE = b"idle"
END = b"end"


class _ResultLines:
    """The engine side of a results stream: builds each line from the stored
    result, never decoding it (what ``/get`` sends is what is inlined)."""

    def __init__(
        self,
        engine: Engine,
        definition: TaskDefinition | None,
        *,
        root_path: str,
        bentoml_compat: bool,
        hide_errors: bool,
    ) -> None:
        self.engine = engine
        self._get = None if definition is None else f"{root_path}{definition.route}/get"
        self._compat = bentoml_compat
        self._hide = hide_errors

    async def lines(self, members: Sequence[_Member]) -> list[bytes]:
        """The lines of ``members`` (index, task id, and the status and error
        read of each), their successes' results read in one call."""
        successes = [task_id for _, task_id, status, _ in members if status is TaskStatus.SUCCESS]
        payloads = await self.engine.stored_results(successes) if successes else {}
        out = []
        for index, task_id, status, error in members:
            media = data = url = None
            if status is TaskStatus.SUCCESS:
                payload = payloads.get(task_id)
                if payload is None:
                    status = None  # gone since it was read
                else:
                    media, data = payload.media_type, payload.data
                    if self._get is not None:
                        url = f"{self._get}?task_id={task_id}"
            out.append(
                result_line(
                    index,
                    task_id,
                    status,
                    error,
                    media_type=media,
                    data=data,
                    result_url=url,
                    bentoml_compat=self._compat,
                    hide_errors=self._hide,
                )
            )
        return out

    async def finished_now(
        self, indexes: Sequence[int], ids: Sequence[str], order: str
    ) -> AsyncGenerator[bytes]:
        """The tasks final now (or gone): in submission order, or by when they ended."""
        ended: list[tuple[float, _Member]] = []
        for start in range(0, len(ids), CHUNK):
            window = ids[start : start + CHUNK]
            found = await self.engine.wait_any(window, 0)
            members = [
                _member(index, task_id, found[task_id])
                for index, task_id in zip(indexes[start : start + CHUNK], window, strict=True)
                if task_id in found
            ]
            if order == "submission":
                for line in await self.lines(members):
                    yield line
            else:
                ended.extend((_ended_at(found[m[1]]), m) for m in members)
        ended.sort(key=lambda e: (e[0], e[1][0]))
        for start in range(0, len(ended), CHUNK):
            for line in await self.lines([m for _, m in ended[start : start + CHUNK]]):
                yield line

    async def in_order(self, indexes: Sequence[int], ids: Sequence[str]) -> AsyncGenerator[bytes]:
        """Every task in submission order, each once it is final (as its
        turn comes: :class:`~errands._batches.InTurn`)."""
        in_turn = InTurn(self.engine, ids, infos=True)
        try:
            while not in_turn.done:
                turn = await in_turn.next(0)
                if not turn:
                    yield FLUSH  # the next is not final: what is ready went out first
                    turn = await in_turn.next(KEEPALIVE)
                    if not turn:
                        yield IDLE
                        continue
                members = [_member(indexes[at], task_id, info) for at, task_id, info in turn]
                for start in range(0, len(members), CHUNK):
                    for line in await self.lines(members[start : start + CHUNK]):
                        yield line
        finally:
            in_turn.close()

    async def as_completed(
        self, indexes: Sequence[int], ids: Sequence[str]
    ) -> AsyncGenerator[bytes]:
        """Every task, each as it becomes final.  The engine's waiting set
        reads each task once at the start and once at its end (asking for
        every task still running at each round was quadratic in a batch)."""
        remaining = dict(zip(ids, indexes, strict=True))
        waiting = self.engine.waiting_set(list(remaining))
        try:
            while remaining:
                found = await waiting.next(0)
                if not found:
                    yield FLUSH
                    found = await waiting.next(KEEPALIVE)
                    if not found:
                        yield IDLE
                        continue
                members = []
                for task_id in sorted(found, key=lambda i: _ended_at(found[i])):
                    index = remaining.pop(task_id, None)
                    if index is not None:
                        members.append(_member(index, task_id, found[task_id]))
                for start in range(0, len(members), CHUNK):
                    for line in await self.lines(members[start : start + CHUNK]):
                        yield line
        finally:
            waiting.close()


#: A member of a results stream: its index, task id, and status and error
#: as read (None, None: gone).
_Member = tuple[int, str, "TaskStatus | None", "TaskError | None"]


def _member(index: int, task_id: str, info: TaskInfo | None) -> _Member:
    if info is None:
        return index, task_id, None, None
    return index, task_id, info.status, info.error


def _ended_at(info: TaskInfo | None) -> float:
    """When a final task ended, for ordering (a task gone counts as earliest)."""
    moment = None if info is None else info.finished_at
    return float("-inf") if moment is None else moment.timestamp()


async def _open_results(
    engine: Engine,
    batch_id: str,
    order: str,
    wait: bool,
    lines: Callable[[Engine, str], _ResultLines],
) -> AsyncGenerator[bytes]:
    """The lines of the results stream (BatchNotFound before the first)."""
    await _live_counts(engine, batch_id)
    batch = await load_batch(engine, batch_id)
    ids = [task.id for task in batch.tasks]
    source = lines(engine, batch.name)
    if not wait:
        return source.finished_now(batch.indexes, ids, order)
    if order == "submission":
        return source.in_order(batch.indexes, ids)
    return source.as_completed(batch.indexes, ids)


async def _take(lines: AsyncGenerator[bytes], most: int) -> tuple[list[bytes], bytes | None]:
    """Up to ``most`` lines, fewer when the stream would block (FLUSH) or has
    waited KEEPALIVE (IDLE) or ended (END)."""
    out: list[bytes] = []
    while len(out) < most:
        try:
            line = await anext(lines)
        except StopAsyncIteration:
            return out, END
        if line is FLUSH:
            if out:
                return out, None
            continue  # nothing to hand over: wait on in the generator
        if line is IDLE:
            return out, IDLE
        out.append(line)
    return out, None


class LinesStream(StreamedAnswer):
    """``GET /batches/<id>/results``'s answer once the batch was found: JSON
    Lines sent as they come; blank lines while waiting; it ends when every
    task was sent, on drain (a client reading it then asks again), or when
    the client goes away."""

    def __init__(
        self, access: EngineAccess, lines: AsyncGenerator[bytes], *, holds: Holds | None
    ) -> None:
        self._access = access
        self._lines = lines
        self._holds = holds  # a waiting stream is held: a drain ends it
        self._gone = False

    async def run(self, send: Send, receive: Receive) -> None:
        """Send the whole stream; returns when it has ended."""
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        try:
            if self._holds is None:
                await self._pump(send, receive)
            else:
                with self._holds.hold(checked=True):
                    await self._pump(send, receive)
        except Exception:
            # After the answer began there is no error answer: the stream ends short.
            log.exception("a batch results stream ended by an error")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self._access.call(self._lines.aclose)
                except Exception:
                    pass  # the engine stopped: nothing is left to close
        if not self._gone:
            await self._send(send, b"", more=False)

    async def _pump(self, send: Send, receive: Receive) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
            while not self._gone:
                lines, state = await self._access.call(_take, self._lines, LINES_PER_CALL)
                if lines:
                    await self._send(send, b"".join(lines))
                if state is IDLE:
                    await self._send(send, b"\n")
                elif state is END:
                    break
            group.cancel_scope.cancel()


# ====================================================================== the routes


def _flag(query: dict[str, list[str]], name: str, *, default: bool) -> bool:
    text = one(query, name)
    if text is None:
        return default
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise HTTPError(400, f"{name} must be true or false, got {text[:40]!r}")
    return value


class BatchRoutes:
    """The ``/batches/<id>`` routes of one app."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.life = handlers.life
        self.http = handlers.http

    async def dispatch(
        self, action: str, batch_id: str, query: dict[str, list[str]], root_path: str
    ) -> Answer | LinesStream:
        """``/batches/<id>[/<action>]`` (the router checked the method)."""
        if action == "results":
            return await self.results(batch_id, query, root_path)
        if action == "cancel":
            return await self.cancel(batch_id)
        return await self.summary(batch_id, query)

    async def summary(self, batch_id: str, query: dict[str, list[str]]) -> Answer:
        http = self.http
        offset = number(query, "offset", int, default=0)
        limit = number(query, "limit", int, default=http.batch_page)
        if not 0 <= limit <= http.max_batch_page or not 0 <= offset < 2**62:
            raise HTTPError(
                400, f"limit must be 0..{http.max_batch_page} (max_batch_page) and offset 0..2**62"
            )
        wait = wait_seconds(query, maximum=http.max_wait, default=None)
        access = await self.life.start_if_needed()
        engine = access.engine
        holds = self.life.holds
        if wait and not holds.draining:
            with holds.hold():  # a drain ends it early: answer with the state now
                await self.handlers.call(access, _wait_batch, engine, batch_id, wait)
        name, counts, page = await self.handlers.call(
            access, _summary, engine, batch_id, offset, limit
        )
        compat = self.handlers.bentoml_compat
        return json_answer(
            200,
            summary_to_json(
                batch_id,
                name,
                counts,
                bentoml_compat=compat,
                page=page,
                offset=offset,
                limit=limit,
            ),
        )

    async def results(
        self, batch_id: str, query: dict[str, list[str]], root_path: str
    ) -> LinesStream:
        order = one(query, "order") or "submission"
        if order not in RESULT_ORDERS:
            raise HTTPError(400, f"order must be one of {', '.join(RESULT_ORDERS)}, got {order!r}")
        wait = _flag(query, "wait", default=False)
        access = await self.life.start_if_needed()
        holds = self.life.holds
        held = wait and not holds.draining
        if held:
            holds.check_room()  # a 503 now, not a stream cut short
        definitions = self.handlers.definitions
        http = self.http
        compat = self.handlers.bentoml_compat

        def lines(engine: Engine, name: str) -> _ResultLines:
            return _ResultLines(
                engine,
                definitions.get(name),
                root_path=root_path,
                bentoml_compat=compat,
                hide_errors=http.hide_errors,
            )

        stream = await self.handlers.call(
            access, _open_results, access.engine, batch_id, order, wait, lines
        )
        return LinesStream(access, stream, holds=holds if held else None)

    async def cancel(self, batch_id: str) -> Answer:
        access = await self.life.start_if_needed()
        name, counts = await self.handlers.call(access, _cancel, access.engine, batch_id)
        compat = self.handlers.bentoml_compat
        return json_answer(200, summary_to_json(batch_id, name, counts, bentoml_compat=compat))
