"""``?wait=S`` on status and get: held until final or S seconds, event-driven."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
import trio.testing

import errands
from errands.adapters.asgi import create_app
from tests.conftest import trio_wall

svc = errands.Service("poll")


@svc.task
async def nap(seconds: float) -> str:
    await trio.sleep(seconds)
    return "rested"


@asynccontextmanager
async def serving(backend: errands.Backend | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app on ``backend`` (the memory backend by default)."""
    # stored times follow the mock clock
    options = errands.EngineOptions(clock=trio_wall)
    app = create_app(svc, backend=backend, max_wait=30, options=options)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app on the memory backend; tests take autojump_clock (pytest-trio reads
    the clock from the test's own arguments)."""
    async with serving() as client:
        yield client


async def test_long_poll_returns_when_the_task_ends(
    autojump_clock: trio.testing.MockClock, client: httpx.AsyncClient
) -> None:
    task_id = (await client.post("/nap/submit", json={"seconds": 5})).json()["task_id"]
    start = trio.current_time()
    status = await client.get("/nap/status", params={"task_id": task_id, "wait": 20})
    assert status.json()["status"] == "success"
    assert trio.current_time() - start == pytest.approx(5)  # not 20: no polling
    task_id = (await client.post("/nap/submit", json={"seconds": 3})).json()["task_id"]
    got = await client.get("/nap/get", params={"task_id": task_id, "wait": 10})
    assert got.status_code == 200 and got.text == "rested"


async def test_long_poll_times_out_with_the_current_state(
    autojump_clock: trio.testing.MockClock, client: httpx.AsyncClient
) -> None:
    task_id = (await client.post("/nap/submit", json={"seconds": 500})).json()["task_id"]
    start = trio.current_time()
    status = await client.get("/nap/status", params={"task_id": task_id, "wait": 7})
    assert status.json()["status"] == "in_progress"
    assert trio.current_time() - start == pytest.approx(7)
    start = trio.current_time()
    got = await client.get("/nap/get", params={"task_id": task_id, "wait": 30})
    assert got.status_code == 409  # held max_wait, not finished
    assert trio.current_time() - start == pytest.approx(30)
    start = trio.current_time()
    longer = await client.get("/nap/get", params={"task_id": task_id, "wait": 1000})
    assert longer.status_code == 400 and longer.json()["limit"] == "max_wait"
    assert trio.current_time() == start  # refused, not held
    for bad in ("-1", "nan", "soon", "", "1_0"):
        answer = await client.get("/nap/status", params={"task_id": task_id, "wait": bad})
        assert answer.status_code == 400
    missing = await client.get("/nap/status", params={"task_id": "x" * 22, "wait": 5})
    assert missing.status_code == 404


async def test_a_long_polled_status_of_a_task_that_ends_meanwhile_reads_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``GET /{name}/status?wait=`` of a task that ends while the request is
    held answers the final record the engine stored and handed to it: no
    store read after the wait (on diskcache, a trip to the database per
    request), and the same answer as a status read after."""
    from errands.backends import MemoryBackend
    from tests.tools import count_calls

    backend = MemoryBackend()
    async with serving(backend) as client:
        task_id = (await client.post("/nap/submit", json={"seconds": 3})).json()["task_id"]
        await client.get("/nap/status", params={"task_id": task_id})  # running by now
        calls = count_calls(backend.store, "get", "get_state", "get_many")
        held = await client.get("/nap/status", params={"task_id": task_id, "wait": 10})
        assert held.status_code == 200 and held.json()["status"] == "success"
        assert calls.count == {"get": 0, "get_state": 0, "get_many": 0}
        after = await client.get("/nap/status", params={"task_id": task_id})
        assert held.json() == after.json()


async def test_a_long_polled_get_of_a_small_result_reads_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``GET /{name}/get?wait=`` (what the clients' ``wait()`` sends) of a
    task this server's engine ended answers a small result from the end it
    remembers: no store read (on diskcache, a trip to the database per
    request).  A failure is read and answered as before."""
    from errands.backends import MemoryBackend
    from tests.tools import count_calls

    backend = MemoryBackend()
    async with serving(backend) as client:
        task_id = (await client.post("/nap/submit", json={"seconds": 3})).json()["task_id"]
        bad = (await client.post("/nap/submit", json={"seconds": -1})).json()["task_id"]
        calls = count_calls(backend.store, "get_with_results", "get_result", "get")
        got = await client.get("/nap/get", params={"task_id": task_id, "wait": 10})
        assert got.status_code == 200 and got.text == "rested"
        assert calls.count == {"get_with_results": 0, "get_result": 0, "get": 0}
        failed = await client.get("/nap/get", params={"task_id": bad, "wait": 10})
        assert failed.status_code == 500 and "ValueError" in failed.text
        assert calls.count["get_with_results"] == 1
