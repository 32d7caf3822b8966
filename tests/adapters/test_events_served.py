"""Waiting without polling under real servers on 127.0.0.1, read as it comes.

* server-sent events read with httpx streaming: the first event at once, a
  progress event while the task still runs, the final event, then the end;
* ``POST /tasks/wait`` and ``drain()`` ending held requests;

under hypercorn's trio worker (the engine in the server's loop) and under
uvicorn (asyncio: the engine in its own trio thread, every call through the
threaded bridge).  The SIGTERM drain of ``errands serve`` is in test_cli.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from functools import partial
from typing import Any

import httpx
import hypercorn.trio
import outcome
import pytest
import trio

import errands
from errands.adapters.asgi import ErrandsApp, create_app
from tests.adapters.test_servers import (
    asyncio_server,
    hypercorn_config,
    listening_socket,
    serve_uvicorn,
)

pytestmark = pytest.mark.realtime

svc = errands.Service("streamed")
TIMEOUT = 30

#: Gates the ``halfway`` tasks wait on, by name (threading: uvicorn runs the
#: engine in a thread of its own).
GATES: dict[str, threading.Event] = {}


@svc.task
async def halfway(gate: str) -> str:
    errands.current_task().report(0.5, message="half")
    await trio.to_thread.run_sync(GATES[gate].wait, TIMEOUT, abandon_on_cancel=True)
    return "done"


@svc.task
async def nap(seconds: float) -> str:
    await trio.sleep(seconds)
    return "rested"


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The ``status`` events of a stream as they arrive (comments skipped)."""
    block: list[str] = []
    async with aclosing(response.aiter_lines()) as lines:
        async for line in lines:
            if line:
                block.append(line)
                continue
            if block and not block[0].startswith(":"):
                assert block[0] == "event: status", block
                assert block[1].startswith("data: "), block
                yield json.loads(block[1].removeprefix("data: "))
            block = []
    assert not block, block  # the stream ends between events


async def submit(client: httpx.AsyncClient, route: str, body: dict[str, Any]) -> str:
    response = await client.post(f"/{route}/submit", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def follow_a_task(client: httpx.AsyncClient) -> None:
    name = f"gate-{len(GATES)}"
    gate = GATES[name] = threading.Event()
    task_id = await submit(client, "halfway", {"gate": name})
    seen: list[dict[str, Any]] = []
    async with client.stream("GET", "/halfway/events", params={"task_id": task_id}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        async with aclosing(events(response)) as stream:
            async for event in stream:
                seen.append(event)
                assert event["task_id"] == task_id
                if event["progress"] == 0.5 and not gate.is_set():
                    # Read while the task still runs: it waits for this gate.
                    assert event["status"] == "in_progress" and event["message"] == "half"
                    gate.set()
        # The loop ended: the stream closed, right after the final event.
    assert seen[0]["status"] in ("pending", "in_progress")
    assert gate.is_set(), seen  # a progress event came
    assert (seen[-1]["status"], seen[-1]["progress"], seen[-1]["message"]) == (
        "success",
        0.5,
        "half",
    )
    assert all(e["status"] != "success" for e in seen[:-1])
    status = await client.get("/halfway/status", params={"task_id": task_id})
    assert seen[-1] == status.json()
    missing = await client.get("/halfway/events", params={"task_id": "A" * 22})
    assert missing.status_code == 404 and "error" in missing.json()


async def wait_for_many(client: httpx.AsyncClient) -> None:
    slow = await submit(client, "nap", {"seconds": 60})
    fast = await submit(client, "nap", {"seconds": 0.2})
    answer = await client.post(
        "/tasks/wait", params={"wait": 20}, json={"task_ids": [slow, fast, "nope"]}
    )
    body = answer.json()
    assert body["missing"] == ["nope"]  # answered at once: "nope" is unknown
    answer = await client.post("/tasks/wait", params={"wait": 20}, json={"task_ids": [slow, fast]})
    body = answer.json()
    assert [d["task_id"] for d in body["done"]] == [fast] and body["pending"] == [slow]
    await client.post("/nap/cancel", params={"task_id": slow})


async def held(client: httpx.AsyncClient) -> int:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("errands_http_held "):
            return int(float(line.split()[1]))
    raise AssertionError("no errands_http_held in /metrics")


async def client_goes_away(client: httpx.AsyncClient, app: ErrandsApp) -> None:
    """A client that leaves mid-stream ends the stream and its engine listener.

    (Over a raw socket: httpx, left mid-stream, leaves generators unfinished.)"""
    task_id = await submit(client, "nap", {"seconds": 60})
    url = client.base_url
    assert url.port is not None
    request = f"GET /nap/events?task_id={task_id} HTTP/1.1\r\nHost: {url.host}\r\n\r\n"
    async with await trio.open_tcp_stream(url.host, url.port) as sock:
        await sock.send_all(request.encode())
        received = b""
        while b"\ndata: " not in received:
            chunk = await sock.receive_some()
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert await held(client) == 1
    while await held(client):
        await trio.sleep(0.01)
    assert app._access is not None
    engine = app._access.engine
    while engine.watchers.listeners:  # read from another thread under uvicorn: a snapshot
        await trio.sleep(0.01)
    await client.post("/nap/cancel", params={"task_id": task_id})


async def drain_ends_held_requests(client: httpx.AsyncClient, drain: Callable[[], Any]) -> None:
    """A long poll, a many-task wait and an event stream are held; drain answers all."""
    task_id = await submit(client, "nap", {"seconds": 120})
    answers: dict[str, Any] = {}

    async def long_poll() -> None:
        query = {"task_id": task_id, "wait": 50}
        answers["poll"] = await client.get("/nap/status", params=query)

    async def many() -> None:
        body = {"task_ids": [task_id]}
        answers["many"] = await client.post("/tasks/wait", params={"wait": 50}, json=body)

    async def stream() -> None:
        query = {"task_id": task_id}
        async with (
            client.stream("GET", "/nap/events", params=query) as response,
            aclosing(events(response)) as stream,
        ):
            answers["events"] = [e async for e in stream]

    async with trio.open_nursery() as nursery:
        for request in (long_poll, many, stream):
            nursery.start_soon(request)
        while await held(client) != 3:
            await trio.sleep(0.01)
        assert not answers
        await drain()
    assert answers["poll"].status_code == 200
    assert answers["poll"].json()["status"] in ("pending", "in_progress")
    assert answers["many"].json()["pending"] == [task_id]
    assert len(answers["events"]) >= 1
    assert answers["events"][-1]["status"] in ("pending", "in_progress")
    # New ones answer at once.
    again = await client.get("/nap/status", params={"task_id": task_id, "wait": 50})
    assert again.json()["status"] in ("pending", "in_progress")
    async with client.stream("GET", "/nap/events", params={"task_id": task_id}) as response:
        lines = [line async for line in response.aiter_lines()]
    assert lines[0] == "event: status" and len(lines) == 3  # one event, then the end


async def exercise(client: httpx.AsyncClient, app: ErrandsApp, drain: Callable[[], Any]) -> None:
    with trio.fail_after(TIMEOUT):
        await follow_a_task(client)
        await wait_for_many(client)
        await client_goes_away(client, app)
        await drain_ends_held_requests(client, drain)


@asynccontextmanager
async def hypercorn_trio(app: ErrandsApp) -> AsyncIterator[str]:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        serve = partial(
            hypercorn.trio.serve,
            app,
            hypercorn_config("127.0.0.1:0"),
            shutdown_trigger=shutdown.wait,
        )
        binds = await nursery.start(serve)
        try:
            yield binds[0]
        finally:
            shutdown.set()


async def test_under_hypercorn_trio_worker() -> None:
    app = create_app(svc, grace=1)

    async def drain() -> None:
        app.drain()  # the server's loop is this one
        await trio.lowlevel.checkpoint()

    async def use(base_url: str) -> None:
        # Not _http.checking_client: its hook would read each stream to its end first.
        async with httpx.AsyncClient(base_url=base_url) as client:
            await exercise(client, app, drain)

    async with hypercorn_trio(app) as base_url:
        # Captured, not raised here: see test_servers.test_hypercorn_trio_worker...
        result = await outcome.acapture(use, base_url)
    result.unwrap()


async def test_under_uvicorn() -> None:
    app = create_app(svc, grace=1)
    sock = listening_socket()
    port = sock.getsockname()[1]
    try:
        async with asyncio_server(serve_uvicorn(app, sock)):

            async def drain() -> None:
                # From a thread that is neither the server's nor the engine's.
                await trio.to_thread.run_sync(app.drain)

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await exercise(client, app, drain)
    finally:
        sock.close()
