"""Under ``errands serve``'s hypercorn, a fixed-length answer is one send.

hypercorn's own HTTP/1.1 protocol object, given a request, is driven the way
its stream drives it for an answer (``_hypercorn_send`` patches it); what it
hands to the socket is collected.  And a real ``errands serve`` still
answers every kind of route (the other server tests cover the rest).
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.worker_context import WorkerContext

from errands.adapters import _hypercorn_send


async def _answer(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[bytes]:
    """What hypercorn writes for one answer, send by send."""
    assert _hypercorn_send.install()
    sent: list[bytes] = []

    async def send(event: Any) -> None:
        if isinstance(event, RawData) and event.data:
            sent.append(event.data)

    protocol = H11Protocol(
        None,  # type: ignore[arg-type]  # the app is not called here
        Config(),
        WorkerContext(None),
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        False,
        ("127.0.0.1", 5000),
        ("127.0.0.1", 3000),
        send,
    )
    connection = protocol.connection
    assert isinstance(connection, h11.Connection)
    connection.receive_data(b"GET /add/status?task_id=x HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    assert isinstance(connection.next_event(), h11.Request)
    await protocol.stream_send(Response(stream_id=1, headers=headers, status_code=200))
    for chunk in chunks:
        await protocol.stream_send(Body(stream_id=1, data=chunk))
    await protocol.stream_send(EndBody(stream_id=1))
    return sent


async def test_a_fixed_length_answer_is_one_send() -> None:
    sent = await _answer([(b"content-length", b"2")], [b"{}"])
    assert len(sent) == 1
    assert sent[0].startswith(b"HTTP/1.1 200 ") and sent[0].endswith(b"\r\n\r\n{}")


async def test_a_streamed_answer_sends_its_head_at_once() -> None:
    # Event streams and JSON Lines: the client sees the status before the first part.
    sent = await _answer(
        [(b"content-type", b"text/event-stream")], [b"data: 1\n\n", b"data: 2\n\n"]
    )
    assert sent[0].startswith(b"HTTP/1.1 200 ") and sent[0].endswith(b"\r\n\r\n")
    assert b"data: 1" in sent[1] and b"data: 2" in sent[2]


async def test_an_empty_fixed_length_answer_still_goes_out() -> None:
    sent = await _answer([(b"content-length", b"0")], [])
    assert len(sent) == 1 and sent[0].startswith(b"HTTP/1.1 200 ")


def test_install_is_idempotent() -> None:
    assert _hypercorn_send.install() and _hypercorn_send.install()
    method = H11Protocol._send_h11_event
    assert getattr(method, "errands_coalesced", False)


@pytest.fixture(autouse=True)
def _keep_hypercorn_as_found() -> Any:
    # The patch is process-wide; the suite's other hypercorn servers run in
    # processes of their own, but put the class back for this process anyway.
    original = H11Protocol.__dict__["_send_h11_event"]
    yield
    H11Protocol._send_h11_event = original  # type: ignore[method-assign]
