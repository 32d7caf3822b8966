"""Helpers for the HTTP tests: an in-process client that checks every answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from errands.adapters.asgi import ErrandsApp

BASE_URL = "http://errands.test"
FINAL = {"success", "failure", "cancelled", "completed", "failed", "canceled"}


def check_answer(response: httpx.Response) -> None:
    """What holds for every answer: no traceback, and errors are JSON
    ``{"error": ..., "type": ...}`` (the message, and what kind of error it is)."""
    assert b"Traceback" not in response.content, response.text
    if response.status_code >= 400 and response.request.method != "HEAD":
        assert response.headers["content-type"] == "application/json", response.headers
        body = response.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str), body
        assert body["error"], body
        assert isinstance(body.get("type"), str) and body["type"], body


async def _check_hook(response: httpx.Response) -> None:
    await response.aread()
    check_answer(response)


def checking_client(transport: httpx.AsyncBaseTransport, base_url: str) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that runs :func:`check_answer` on every response."""
    return httpx.AsyncClient(
        transport=transport, base_url=base_url, event_hooks={"response": [_check_hook]}
    )


@asynccontextmanager
async def in_process(app: ErrandsApp, *, root_path: str = "") -> AsyncIterator[httpx.AsyncClient]:
    """A checking client talking to ``app`` in-process; the engine runs meanwhile."""
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with app.running(), checking_client(transport, BASE_URL + root_path) as client:
        yield client


async def wait_final(
    client: httpx.AsyncClient, task_id: str, *, route: str = "/add", timeout: float = 10
) -> dict[str, Any]:
    """Poll the status route until the task is final; its last status body."""
    with trio.fail_after(timeout):
        while True:
            response = await client.get(f"{route}/status", params={"task_id": task_id})
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in FINAL:
                return body
            await trio.sleep(0.002)


async def wait_status(
    client: httpx.AsyncClient, task_id: str, wanted: str, *, route: str = "/add"
) -> dict[str, Any]:
    """Poll the status route until the task reports ``wanted`` (bounded)."""
    with trio.fail_after(10):
        while True:
            response = await client.get(f"{route}/status", params={"task_id": task_id})
            body: dict[str, Any] = response.json()
            if body["status"] == wanted:
                return body
            assert body["status"] not in FINAL - {wanted}, body
            await trio.sleep(0.002)


class Chunks(httpx.AsyncByteStream):
    """A request body sent in chunks, without content-length.

    An iterator object rather than an async generator, so a server that stops
    reading early leaves no unfinished generator behind.
    """

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = iter(chunks)
        self.sent = 0

    def __aiter__(self) -> Chunks:  # type: ignore[override]
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        try:
            chunk = next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None
        self.sent += 1
        return chunk


async def call_asgi(
    app: ErrandsApp,
    scope: dict[str, Any],
    chunks: Iterable[bytes] = (b"",),
) -> tuple[int, dict[str, str], bytes]:
    """Drive ``app`` with a hand-made HTTP scope (for requests httpx will not send)."""
    pending = list(chunks)
    sent: list[dict[str, Any]] = []
    full = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("errands.test", 80),
        "client": ("127.0.0.1", 1234),
        **scope,
    }

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    await app(full, receive, send)
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in bodies)
    assert b"Traceback" not in body
    if start["status"] >= 400:
        assert "error" in json.loads(body)
    return start["status"], headers, body
