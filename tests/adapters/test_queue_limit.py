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


idem = errands.Service("idem")


@idem.task
async def double(n: int) -> int:
    return 2 * n


async def test_idempotency_key_header_returns_the_first_task() -> None:
    app = create_app(idem)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"Idempotency-Key": "abc-123"}
            first = await client.post("/double/submit", json={"n": 2}, headers=headers)
            again = await client.post("/double/submit", json={"n": 2}, headers=headers)
            plain = await client.post("/double/submit", json={"n": 2})
            assert first.status_code == again.status_code == plain.status_code == 200
            assert first.json()["task_id"] == again.json()["task_id"]
            assert plain.json()["task_id"] != first.json()["task_id"]
            listed = (await client.get("/tasks")).json()["tasks"]
            assert len(listed) == 2


async def test_concurrent_submits_do_not_overshoot_the_limit() -> None:
    """Many submits at once: the limit holds (no check-then-submit race)."""
    app = create_app(idem, max_pending=5, grace=0)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            codes: list[int] = []

            async def submit() -> None:
                response = await client.post(
                    "/double/submit", params={"delay": 3600}, json={"n": 1}
                )
                codes.append(response.status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(submit)
            assert sorted(codes) == [200] * 5 + [429] * 15
            waiting = (await client.get("/tasks", params={"status": "pending"})).json()["tasks"]
            assert len(waiting) == 5
