"""``POST <route>/submit_many``: many tasks of one endpoint in one request.

The body is a JSON array of argument objects, read whole (bounded by
``max_body_size`` as every body is), or JSON Lines, streamed: read chunk by
chunk as it arrives and split into lines, each line bounded by
``max_body_size``, blank lines skipped, so the server never holds the body.
A line that is not JSON is that item's error, not the request's.  Items go
to the engine's :class:`~errands._batches.BatchWriter` a chunk at a time (one
backend write each, after a queue-room check for the chunk), with the
submit options single submit takes (``priority``, ``delay``,
``Idempotency-Key``); ``batch_id`` and ``offset`` continue a batch across
requests.

The answer (``_batch_wire``) lists one entry per item, kept as encoded bytes
(about 50 bytes an item, never dicts), and is sent once the whole body is
read: a client that reads only after sending (most do) would otherwise never
read it.  A fault part way (storage, a full queue, a stalled body) answers
with its error status and body plus the entries of the items answered
before it and ``next_offset``, the index to resume from.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from errands import TaskDefinition
from errands._batches import CHUNK, BatchWriter, is_batch_id

from ._answers import Answer, json_bytes, loads, number, one, request_json
from ._batch_routes import owner
from ._batch_wire import JSONL_TYPES, answer_head, encode_error, error_entry, task_entry
from ._handlers import submit_options
from ._protocol import HTTPError, errors_as_answers
from ._scopes import move_on_after

if TYPE_CHECKING:
    from ._bridge import EngineAccess
    from ._handlers import Handlers

__all__ = ["BatchSubmit"]

log = logging.getLogger("errands.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
ReadBody = Callable[[Scope, Receive], Awaitable[bytes]]

_JSON = "application/json"


class _ClientGone(Exception):
    """The client went away while sending its body."""


# ====================================================================== submit_many


class _Lines:
    """JSON Lines of an ASGI request body, parsed as they arrive, never whole.

    :meth:`items` yields ``(value, error)`` per non-blank line: the parsed
    value, or None and the encoded error body single submit would answer
    for such a body (not JSON: 400; longer than ``max_line``: 413).
    """

    def __init__(self, receive: Receive, *, max_line: int, timeout: float) -> None:
        self._receive = receive
        self._max_line = max_line
        self._timeout = timeout
        #: Whether the whole body has been received.
        self.done = False
        self._line = 0  # line number of the last line split off (1-based)

    async def _chunk(self) -> bytes | None:
        if self.done:
            return None
        with move_on_after(self._timeout) as timer:
            message = await self._receive()
        if timer.cancelled_caught:
            raise HTTPError(
                408,
                f"no part of the body arrived for {self._timeout:g} s (read_timeout)",
            )
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if not message.get("more_body", False):
            self.done = True
        body: bytes = message.get("body", b"")
        return body

    async def drain(self) -> None:
        """Read the rest of the body and drop it (so the client reads the answer)."""
        try:
            while await self._chunk() is not None:
                pass
        except (HTTPError, _ClientGone):
            pass

    def _parse(self, line: bytes) -> tuple[Any, bytes | None]:
        if len(line) > self._max_line:
            return None, self._too_long()
        try:
            return loads(line), None
        except (ValueError, UnicodeDecodeError) as exc:
            return None, _error(400, f"line {self._line} is not valid JSON: {exc}")
        except RecursionError:
            return None, _error(400, f"line {self._line} is nested too deeply")

    async def items(self) -> AsyncGenerator[tuple[Any, bytes | None]]:
        partial = bytearray()
        overlong = False  # the current line passed max_line: skip to its end
        while (chunk := await self._chunk()) is not None:
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                if end < 0:
                    if not overlong:
                        partial += chunk[start:]
                        if len(partial) > self._max_line:
                            overlong = True
                            partial.clear()
                    break
                self._line += 1
                piece = chunk[start:end]
                start = end + 1
                if overlong:
                    overlong = False
                    yield None, self._too_long()
                    continue
                if partial:
                    partial += piece
                    piece, partial = bytes(partial), bytearray()
                if piece.strip():
                    yield self._parse(piece)
        if overlong or partial.strip():
            self._line += 1
            yield (None, self._too_long()) if overlong else self._parse(bytes(partial))

    def _too_long(self) -> bytes:
        return _error(
            413,
            f"line {self._line} is longer than {self._max_line} bytes, the server's limit "
            "(max_body_size; errands serve --max-body-size BYTES)",
        )


def _error(code: int, message: str) -> bytes:
    return json_bytes(HTTPError(code, message).body)


class _Answered:
    """The entries of a submit_many answer so far, as encoded bytes."""

    def __init__(self, batch_id: str, offset: int) -> None:
        self.batch_id = batch_id
        self.entries = bytearray()
        self.accepted = 0
        self.rejected = 0
        self.next_offset = offset

    def _add(self, index: int, entry: bytes) -> None:
        if self.entries:
            self.entries += b","
        self.entries += entry
        self.next_offset = index + 1

    def accept(self, index: int, task_id: str) -> None:
        self._add(index, task_entry(index, task_id))
        self.accepted += 1

    def refuse(self, index: int, error: bytes) -> None:
        self._add(index, error_entry(index, error))
        self.rejected += 1

    def _body(self, head: dict[str, Any]) -> bytes:
        members = answer_head(
            self.batch_id,
            accepted=self.accepted,
            rejected=self.rejected,
            next_offset=self.next_offset,
        )
        start = json_bytes({**head, **members})[:-1]
        return b"".join((start, b',"items":[', self.entries, b"]}"))

    def answer(self) -> Answer:
        return 200, [(b"content-type", b"application/json")], self._body({})

    def failed(self, error: HTTPError) -> Answer:
        """The error answer, with what was answered before it."""
        headers = [(b"content-type", b"application/json"), *error.headers]
        return error.status, headers, self._body(error.body)


class BatchSubmit:
    """``<route>/submit_many`` of one app (see the module docstring)."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.life = handlers.life
        self.http = handlers.http

    async def __call__(
        self,
        definition: TaskDefinition,
        scope: Scope,
        receive: Receive,
        query: dict[str, list[str]],
        content_type: str,
        idempotency_key: str | None,
        read_body: ReadBody,
    ) -> Answer:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != _JSON and media not in JSONL_TYPES:
            raise HTTPError(
                415,
                "submit_many takes a JSON array (application/json) or JSON Lines "
                f"({', '.join(JSONL_TYPES)}), not {media[:100] or 'a body without a content-type'}",
            )
        priority, delay = submit_options(query)
        batch_id = one(query, "batch_id")
        if batch_id is not None and not is_batch_id(batch_id):
            raise HTTPError(400, f"batch_id {batch_id[:40]!r} is not a batch id")
        offset = number(query, "offset", int, default=0)
        if not 0 <= offset < 2**62:
            raise HTTPError(400, "offset must be 0..2**62")
        access = await self.life.start_if_needed()
        with errors_as_answers(bentoml_compat=self.handlers.bentoml_compat):
            writer = BatchWriter(
                access.engine,
                definition.name,
                from_json=True,
                priority=priority,
                delay=delay,
                idempotency_key=idempotency_key,
                batch_id=batch_id,
                first_index=offset,
            )
        if batch_id is not None:
            holder = await self.handlers.call(access, owner, access.engine, batch_id)
            if holder is not None and holder != definition.name:
                message = f"batch {batch_id} holds tasks of {holder!r}, not of this route"
                raise HTTPError(409, message, type="Conflict", batch_id=batch_id)
        answered = _Answered(writer.id, offset)
        if media == _JSON:
            items = request_json(await read_body(scope, receive), empty=[])
            if not isinstance(items, list):
                raise HTTPError(
                    400,
                    "the body must be a JSON array of argument objects (or JSON Lines, "
                    "sent as application/x-ndjson)",
                )
            try:
                for start in range(0, len(items), CHUNK):
                    await self._write(access, writer, items[start : start + CHUNK], {}, answered)
            except HTTPError as error:
                return answered.failed(error)
            return self._done(answered)
        lines = _Lines(receive, max_line=self.http.max_body_size, timeout=self.http.read_timeout)
        try:
            chunk: list[Any] = []
            refused: dict[int, bytes] = {}
            async with aclosing(lines.items()) as parsed:
                async for value, problem in parsed:
                    if problem is not None:
                        refused[len(chunk)] = problem
                    chunk.append(value)
                    if len(chunk) >= CHUNK:
                        await self._write(access, writer, chunk, refused, answered)
                        chunk, refused = [], {}
            if chunk:
                await self._write(access, writer, chunk, refused, answered)
        except _ClientGone:
            raise HTTPError(400, "the client went away") from None
        except HTTPError as error:
            if not lines.done:
                await lines.drain()
            return answered.failed(error)
        return self._done(answered)

    def _done(self, answered: _Answered) -> Answer:
        log.debug(
            "batch %s: %d accepted, %d refused",
            answered.batch_id,
            answered.accepted,
            answered.rejected,
        )
        return answered.answer()

    async def _write(
        self,
        access: EngineAccess,
        writer: BatchWriter,
        chunk: list[Any],
        refused: dict[int, bytes],
        answered: _Answered,
    ) -> None:
        """One chunk of items to the writer, after a queue-room check for it;
        each item's entry to ``answered``."""
        handlers = self.handlers
        count = len(chunk)
        engine = access.engine

        async def room_then_add() -> list[Any]:  # one crossing to the engine
            await handlers._check_queue_room(engine, count)
            return await writer.add(chunk)

        handlers._submitting += count
        try:
            results = await handlers.call(access, room_then_add)
        finally:
            handlers._submitting -= count
        for position, result in enumerate(results):
            error = refused.get(position)
            if error is not None:  # not JSON, or too long: the placeholder's own error is moot
                answered.refuse(result.index, error)
            elif result.task_id is not None:
                answered.accept(result.index, result.task_id)
            else:
                assert result.error is not None
                answered.refuse(result.index, encode_error(result.error))
