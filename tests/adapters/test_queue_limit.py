"""429 with Retry-After once max_pending tasks wait; nothing else is harmed."""

from __future__ import annotations

import httpx
import trio
import trio.testing

import errands
from errands.adapters.asgi import create_app

svc = errands.Service("limited")
gate = trio.Event()


@svc.task(concurrency=1)
async def hold() -> str:
    await gate.wait()
    return "done"


async def test_full_queue_answers_429_and_loses_nothing() -> None:
    app = create_app(svc, max_pending=2, grace=0)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            accepted = []
            for _ in range(3):  # one runs, two wait
                response = await client.post("/hold/submit", json={})
                assert response.status_code == 200
                accepted.append(response.json()["task_id"])
                await trio.testing.wait_all_tasks_blocked()
            refused = await client.post("/hold/submit", json={})
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert "queue is full" in refused.json()["error"]
            listed = (await client.get("/tasks")).json()["tasks"]
            assert sorted(t["task_id"] for t in listed) == sorted(accepted)
            gate.set()
            for task_id in accepted:
                await app._engine().engine.wait(task_id, timeout=10)
            again = await client.post("/hold/submit", json={})
            assert again.status_code == 200
