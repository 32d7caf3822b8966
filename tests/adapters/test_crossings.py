"""Each request crosses to the engine once (issue 14).

Under an asyncio host the engine runs in its own trio thread, and every
engine call of a request is a trip over the thread bridge (two thread
wake-ups); the routes make one call each.  Counted on the app's real
``ThreadedEngine``, under asyncio, through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

import errands
from errands.adapters._bridge import ThreadedEngine
from errands.adapters.asgi import create_app
from tests.adapters._http import BASE_URL, checking_client

svc = errands.Service("crossings")


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


async def _count_crossings() -> dict[str, int]:
    app = create_app(svc)  # max_pending on: a submit checks the queue's room too
    counts: dict[str, int] = {}
    async with app.running():
        access = app._access
        assert isinstance(access, ThreadedEngine)
        real = access.call
        route = ""

        async def counting(afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
            counts[route] = counts.get(route, 0) + 1
            return await real(afn, *args)

        access.call = counting  # type: ignore[method-assign]
        transport = httpx.ASGITransport(app=app)
        async with checking_client(transport, BASE_URL) as client:
            route = "submit"
            answer = await client.post("/add/submit", json={"a": 1, "b": 2})
            task_id = answer.json()["task_id"]
            route = "status?wait"
            answer = await client.get("/add/status", params={"task_id": task_id, "wait": "10"})
            assert answer.json()["status"] == "success"
            route = "get?wait"
            answer = await client.get("/add/get", params={"task_id": task_id, "wait": "10"})
            assert answer.json() == 3
            route = "retry"
            answer = await client.post("/add/retry", params={"task_id": task_id})
            assert answer.status_code == 200
            route = "unknown get?wait"
            answer = await client.get("/add/get", params={"task_id": "z" * 22, "wait": "10"})
            assert answer.status_code == 404
    return counts


def test_one_engine_call_per_request_under_asyncio() -> None:
    counts = asyncio.run(_count_crossings())
    assert counts == {
        "submit": 1,
        "status?wait": 1,
        "get?wait": 1,
        "retry": 1,
        "unknown get?wait": 1,
    }
