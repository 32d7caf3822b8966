"""Waiting without polling over HTTP: held requests, server-sent events, many-task waits.

* :class:`Holds` keeps the requests the app holds open (``?wait=`` long
  polls, event streams, ``POST /tasks/wait``) so that a drain answers them
  all at once: long polls and waits with the state of the moment, streams by
  ending.  Its scopes are of the request's loop (``_scopes``), so this works
  under trio and asyncio servers.
* :class:`EventStream` is ``GET /<route>/events?task_id=``: ``text/event-stream``
  with one ``status`` event at once, then one per change, ending after the
  final one.
* :func:`wait_many` is ``POST /tasks/wait``.

Every engine call goes through ``access.call`` (see ``_bridge``), so the engine
may live in this loop or in its own thread; cancelling a held call cancels it
where the engine runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import trio

from errands import EngineClosed, ErrandsError, Payload, TaskInfo, TaskNotFound, TaskStatus

from ._answers import Answer, json_bytes, request_json, wait_seconds
from ._batch_wire import JSONL_TYPES, inlinable, inline_result
from ._protocol import HTTPError, errors_as_answers, info_to_json
from ._scopes import Scope, under_trio

if TYPE_CHECKING:
    from errands import Engine
    from errands._watching import WaitingSet

    from ._bridge import EngineAccess

__all__ = ["KEEPALIVE", "MAX_WAIT_IDS", "EventStream", "Holds", "WaitStream", "wait_many"]

log = logging.getLogger("errands.http")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds of silence after which an event stream sends a ``: keepalive`` comment.
KEEPALIVE = 15.0
#: The most task ids one ``POST /tasks/wait`` may name.
MAX_WAIT_IDS = 10_000

SUCCESS = TaskStatus.SUCCESS


def stream_headers(content_type: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of a streamed answer of ``content_type``."""
    return [
        (b"content-type", content_type),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),  # proxies such as nginx: pass each part on at once
    ]


_STREAM_HEADERS = stream_headers(b"text/event-stream")
_KEEPALIVE_LINE = b": keepalive\n\n"


class Holds:
    """The requests an app holds open, and its drain.

    :meth:`hold` is used from the server's loop; :meth:`drain` may be called
    from any thread (a hold made in another loop is cancelled through that
    loop's thread-safe callback).
    """

    def __init__(self, limit: int = 1024) -> None:
        self.draining = False
        #: The most requests held at once; past it :meth:`hold` answers 503.
        self.limit = limit
        self._holds: dict[Scope, Callable[[], None]] = {}

    def __len__(self) -> int:
        """How many requests are held now."""
        return len(self._holds)

    def drain(self) -> None:
        """End every hold now and refuse new ones until :meth:`reopen`; never blocks."""
        self.draining = True
        for cancel in list(self._holds.values()):
            cancel()

    def reopen(self) -> None:
        """Holds may last again (a new engine run began)."""
        self.draining = False

    def check_room(self) -> None:
        """Raise the 503 that :meth:`hold` would, before an answer starts."""
        if len(self._holds) >= self.limit:
            raise HTTPError(
                503,
                f"the server holds {len(self._holds)} requests open, its limit (max_held); "
                "try again shortly",
                state="busy",
                retry_after=1,
            )

    @contextmanager
    def hold(self, *, checked: bool = False) -> Iterator[Scope]:
        """A block that :meth:`drain` ends early (quietly: the code after the
        block runs and answers).  While draining, the block is cancelled at once.

        Raises:
            HTTPError: 503 with ``Retry-After`` when ``limit`` requests are
                held already (nothing is held then).
        """
        if not checked:  # (an event stream checks before its answer starts)
            self.check_room()
        trio_here = under_trio()
        scope: Scope = trio.CancelScope() if trio_here else anyio.CancelScope()
        if self.draining:
            scope.cancel()
        self._holds[scope] = _canceller(scope, trio_here)
        try:
            with scope:
                yield scope
        finally:
            del self._holds[scope]


def _canceller(scope: Scope, trio_here: bool) -> Callable[[], None]:
    """A function that cancels ``scope`` (made in the running loop, a trio
    run when ``trio_here``) from any thread."""
    home = threading.get_ident()
    if trio_here:
        token = trio.lowlevel.current_trio_token()

        def soon() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

    else:
        loop = asyncio.get_running_loop()

        def soon() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(scope.cancel)

    def cancel() -> None:
        if threading.get_ident() == home:
            scope.cancel()
        else:
            soon()

    return cancel


class StreamedAnswer:
    """What every streamed answer shares (event streams, JSON Lines): it
    notices a client that went away, and stops sending to it."""

    _gone = False

    async def run(self, send: Send, receive: Receive) -> None:
        """Send the whole stream; returns when it has ended."""
        raise NotImplementedError

    async def _send(self, send: Send, data: bytes, *, more: bool = True) -> None:
        try:
            await send({"type": "http.response.body", "body": data, "more_body": more})
        except OSError:  # some servers raise once the client has gone
            self._gone = True

    async def _watch_disconnect(self, receive: Receive, scope: Scope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        scope.cancel()


class EventStream(StreamedAnswer):
    """``GET /<route>/events``: the answer after the task id was found.

    The first event carries ``first`` (read before any byte was sent, so an
    unknown id was a plain 404); then one event per change of status,
    progress, message or attempt; the stream ends after the event of a final
    status, on drain, when the client goes away, or if the task can no longer
    be read (engine stopped, task expired).
    """

    def __init__(
        self,
        access: EngineAccess,
        first: TaskInfo,
        *,
        holds: Holds,
        bentoml_compat: bool,
        hide_errors: bool = False,
    ) -> None:
        self._hide_errors = hide_errors
        self._access = access
        self._first = first
        self._holds = holds
        self._bentoml_compat = bentoml_compat
        self._gone = False

    def _event(self, info: TaskInfo) -> bytes:
        body = info_to_json(
            info, bentoml_compat=self._bentoml_compat, hide_errors=self._hide_errors
        )
        return b"event: status\ndata: " + json_bytes(body) + b"\n\n"

    async def run(self, send: Send, receive: Receive) -> None:
        """Send the whole stream; returns when it has ended."""
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        info = self._first
        await self._send(send, self._event(info))
        if not info.status.is_final and not self._gone:
            with self._holds.hold(checked=True):
                async with anyio.create_task_group() as group:
                    group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                    await self._follow(send, info)
                    group.cancel_scope.cancel()
        if not self._gone:
            await self._send(send, b"", more=False)

    async def _follow(self, send: Send, info: TaskInfo) -> None:
        engine = self._access.engine
        while not info.status.is_final and not self._gone:
            try:
                info = await self._access.call(engine.next_change, info.id, info, KEEPALIVE)
            except TimeoutError:
                await self._send(send, _KEEPALIVE_LINE)
                continue
            except (TaskNotFound, EngineClosed):
                return
            except ErrandsError:
                log.exception("event stream of task %s ended by an engine error", info.id)
                return
            await self._send(send, self._event(info))


async def wait_many(
    access: EngineAccess,
    body: bytes,
    query: dict[str, list[str]],
    *,
    holds: Holds,
    max_wait: float,
    bentoml_compat: bool,
    max_ids: int = MAX_WAIT_IDS,
    hide_errors: bool = False,
) -> Answer | WaitStream:
    """``POST /tasks/wait?wait=S`` with ``{"task_ids": [...]}``.

    Answers ``{"done": [status objects of final tasks], "missing": [unknown
    or expired ids], "pending": [ids not final yet]}`` as soon as ``done`` or
    ``missing`` is not empty, or after S seconds (S defaults to 0: answer
    at once; more than ``max_wait`` is a 400), or at once on drain.  Repeated ids count
    once; every list keeps the order of the request.

    With ``"results": true`` in the body, the status object of each success
    also carries its result (``result``, with its media type in
    ``result_type``) when it is JSON or text of at most :data:`INLINE_RESULT`
    bytes, while the answer's inlined results stay within
    :data:`INLINE_ANSWER` bytes: a client that goes on to ``get()`` each task
    as it ends (``as_completed``) needs no request for those.

    With ``"stream": true``, the answer is a :class:`WaitStream` instead:
    JSON Lines, one line per round of endings, until every id was sent, or
    for at most S seconds when ``?wait=S`` is given.
    """
    request = request_json(body, empty=None)
    if not isinstance(request, dict):
        raise HTTPError(400, 'the body must be a JSON object: {"task_ids": [...]}')
    unknown = sorted(set(request) - {"task_ids", "results", "stream"})
    if unknown:
        raise HTTPError(400, f"unknown fields in the body: {', '.join(unknown)}")
    results = request.get("results", False)
    if not isinstance(results, bool):
        raise HTTPError(400, "results must be true or false")
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise HTTPError(400, "stream must be true or false")
    ids = request.get("task_ids")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= max_ids
        or not all(isinstance(i, str) for i in ids)
    ):
        raise HTTPError(
            400, f"task_ids must be a list of 1 to {max_ids} task ids (strings) (max_wait_ids)"
        )
    unique = list(dict.fromkeys(ids))
    entries = _Entries(bentoml_compat=bentoml_compat, hide_errors=hide_errors)
    if stream:
        # A stream is held until its tasks are final, or ``wait`` seconds.
        limit = wait_seconds(query, maximum=max_wait, default=None)
        held = not holds.draining and limit != 0
        if held:
            holds.check_room()  # a 503 now, not a stream cut short
        with errors_as_answers(bentoml_compat=bentoml_compat):
            waiting = await access.call(_open_waiting, access.engine, unique)
        return WaitStream(
            access,
            waiting,
            unique,
            entries,
            results=results,
            wait=limit,
            holds=holds if held else None,
        )
    wait = wait_seconds(query, maximum=max_wait, default=0.0)
    found: dict[str, TaskInfo | None] = {}
    inlined: dict[str, tuple[str, bytes]] = {}
    engine = access.engine
    with errors_as_answers(bentoml_compat=bentoml_compat):
        if wait > 0 and not holds.draining:
            with holds.hold():
                found, inlined = await access.call(_wait_and_read, engine, unique, wait, results)
        if not found:  # timed out, drained, or no wait asked: the state now
            found, inlined = await access.call(_wait_and_read, engine, unique, 0, results)
    done = [info for i in unique if (info := found.get(i)) is not None]
    missing = [i for i in unique if i in found and found[i] is None]
    pending = [i for i in unique if i not in found]
    answer = b'{"done":[%s],"missing":%s,"pending":%s}' % (
        b",".join(entries.done(done, inlined)),
        json_bytes(missing),
        json_bytes(pending),
    )
    return 200, [(b"content-type", b"application/json")], answer


class _Entries:
    """The ``done`` entries of a many-task wait: each task's status object,
    with its inlined result (``result_type`` and ``result``) when it has one."""

    def __init__(self, *, bentoml_compat: bool, hide_errors: bool) -> None:
        self._compat = bentoml_compat
        self._hide = hide_errors

    def done(self, infos: list[TaskInfo], inlined: dict[str, tuple[str, bytes]]) -> list[bytes]:
        out = []
        for info in infos:
            entry = json_bytes(
                info_to_json(info, bentoml_compat=self._compat, hide_errors=self._hide)
            )
            if (result := inlined.get(info.id)) is not None:
                media, inline = result
                # The status object with two more members; the result's JSON
                # goes in as stored, never parsed again.
                entry = entry[:-1] + b',"result_type":%s,"result":%s}' % (json_bytes(media), inline)
            out.append(entry)
        return out


#: The largest result ``POST /tasks/wait`` inlines (bytes of its JSON).
INLINE_RESULT = 64 * 1024
#: The most bytes of inlined results in one ``POST /tasks/wait`` answer.
INLINE_ANSWER = 1024 * 1024
#: Below this much room left, no more results are read for an answer.
_SMALLEST = 64
#: Successes whose results are read together for an answer.
_INLINE_WINDOW = 64


async def _wait_and_read(
    engine: Engine, task_ids: list[str], wait: float, results: bool
) -> tuple[dict[str, TaskInfo | None], dict[str, tuple[str, bytes]]]:
    """In the engine's run, one call per request: ``wait_any``, then (when
    asked) the results to inline of the successes it found."""
    found = await engine.wait_any(task_ids, wait)
    if not results:
        return found, {}
    succeeded = [i for i in task_ids if (f := found.get(i)) is not None and f.status is SUCCESS]
    return found, await _inlined_results(engine, succeeded) if succeeded else {}


async def _inlined_results(
    engine: Engine, task_ids: list[str], types: Mapping[str, str | None] | None = None
) -> dict[str, tuple[str, bytes]]:
    """In the engine's run: the stored results of these successes that the
    answer inlines, as (media type, JSON), by task id (see :func:`wait_many`).
    Read a window at a time (two store calls each), until the answer's
    share is spent.  ``types``: the result types of those whose records the
    wait had in hand, which are not read again for them."""
    out: dict[str, tuple[str, bytes]] = {}
    room = INLINE_ANSWER
    for start in range(0, len(task_ids), _INLINE_WINDOW):
        if room < _SMALLEST:
            break  # the answer's share is spent: the rest are read by their get()
        window = task_ids[start : start + _INLINE_WINDOW]
        # Bytes and images are never inlined: not even read.  Expired ones
        # are left out: their get() says so.
        read = await _window_results(engine, window, types or {})
        for task_id in window:
            if room < _SMALLEST:
                break
            payload = read.get(task_id)
            if payload is None or len(payload.data) > min(INLINE_RESULT, room):
                continue
            inline = inline_result(payload.media_type, payload.data)
            if inline is not None and len(inline) <= min(INLINE_RESULT, room):
                out[task_id] = (payload.media_type, inline)
                room -= len(inline)
    return out


async def _window_results(
    engine: Engine, window: list[str], types: Mapping[str, str | None]
) -> dict[str, Payload]:
    """The inlinable results of these successes, by task id.  Small ones
    that the engine kept with their ends are not read; the others are read
    with their records, except where ``types`` knows the result type
    already."""
    kept = engine.kept_results(window)
    read = {i: payload for i, payload in kept.items() if inlinable(payload.media_type)}
    unknown, wanted = [], []
    for task_id in window:
        if task_id in kept:
            continue
        if task_id not in types:
            unknown.append(task_id)
        elif inlinable(types[task_id]):
            wanted.append(task_id)
    if unknown:
        results = await engine.result_payloads(unknown, wanted=inlinable)
        read.update((i, payload) for i, (_, payload) in results.items() if payload is not None)
    if wanted:
        read.update(await engine.backend.store.get_results(wanted))
    return read


# ---------------------------------------------------------------------- streamed


async def _open_waiting(engine: Engine, task_ids: list[str]) -> WaitingSet:
    return engine.waiting_set(task_ids)


async def _close_waiting(waiting: WaitingSet) -> None:
    waiting.close()


async def _next_round(
    engine: Engine, waiting: WaitingSet, timeout: float, results: bool
) -> tuple[dict[str, TaskInfo | None], dict[str, tuple[str, bytes]]]:
    """In the engine's run: what ended since the last round (at most
    ``timeout`` seconds of waiting for it), and the results to inline."""
    found = await waiting.next(timeout)
    if not results or not found:
        return found, {}
    succeeded = [i for i, f in found.items() if f is not None and f.status is SUCCESS]
    if not succeeded:
        return found, {}
    return found, await _inlined_results(engine, succeeded, waiting.result_types)


def _ended_at(info: TaskInfo) -> float:
    moment = info.finished_at
    return float("-inf") if moment is None else moment.timestamp()


_JSONL_HEADERS = stream_headers(JSONL_TYPES[0].encode())


class WaitStream(StreamedAnswer):
    """``POST /tasks/wait`` with ``{"stream": true}``: JSON Lines, one line
    per round of endings, ``{"done": [...], "missing": [...]}`` as the
    answer without a stream has them (done in the order the tasks ended);
    a blank line after KEEPALIVE seconds of silence.  It ends when every id
    was sent, after ``?wait=`` seconds when given, on drain (a client
    reading it then asks again for the rest), or when the client goes away.

    The engine's waiting set listens once and reads each task at the start
    and at its end: a client that waits on many tasks as they end
    (``as_completed``) costs the server the tasks, not the tasks times the
    rounds, as asking again with every id still running does.
    """

    def __init__(
        self,
        access: EngineAccess,
        waiting: WaitingSet,
        task_ids: list[str],
        entries: _Entries,
        *,
        results: bool,
        wait: float | None,
        holds: Holds | None,
    ) -> None:
        self._access = access
        self._waiting = waiting
        self._left = set(task_ids)
        self._entries = entries
        self._results = results
        self._wait = wait
        self._holds = holds  # None: one round, at once (draining, or wait=0)
        self._gone = False

    async def run(self, send: Send, receive: Receive) -> None:
        """Send the whole stream; returns when it has ended."""
        await send({"type": "http.response.start", "status": 200, "headers": _JSONL_HEADERS})
        try:
            if self._holds is None:
                await self._round(send, 0)
            else:
                with self._holds.hold(checked=True):
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                        await self._pump(send)
                        group.cancel_scope.cancel()
        except EngineClosed:
            pass  # the stream ends short: the client asks again for the rest
        except Exception:
            # After the answer began there is no error answer: the stream ends short.
            log.exception("a many-task wait stream ended by an error")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self._access.call(_close_waiting, self._waiting)
                except Exception:
                    pass  # the engine stopped: nothing is left to close
        if not self._gone:
            await self._send(send, b"", more=False)

    async def _pump(self, send: Send) -> None:
        deadline = math.inf if self._wait is None else anyio.current_time() + self._wait
        while self._left and not self._gone:
            left = deadline - anyio.current_time()
            if left <= 0:
                return
            if not await self._round(send, min(KEEPALIVE, left)):
                await self._send(send, b"\n")

    async def _round(self, send: Send, timeout: float) -> bool:
        """One round of endings sent as a line (False: none came in ``timeout``)."""
        engine = self._access.engine
        found, inlined = await self._access.call(
            _next_round, engine, self._waiting, timeout, self._results
        )
        if not found:
            return False
        self._left.difference_update(found)
        done = sorted((f for f in found.values() if f is not None), key=_ended_at)
        missing = [i for i, f in found.items() if f is None]
        line = b'{"done":[%s],"missing":%s}\n' % (
            b",".join(self._entries.done(done, inlined)),
            json_bytes(missing),
        )
        await self._send(send, line)
        return True
