"""429 with Retry-After once max_pending tasks wait; nothing else is harmed."""

from __future__ import annotations

import httpx
import trio
import trio.testing

import errands
from errands.adapters.asgi import create_app
from errands.backends import MemoryBackend
from tests.tools import count_calls

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


async def test_far_below_the_limit_submits_do_not_read_the_depth(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The room check reads the queue's depth, then counts the tasks it let
    in: while that count stays at most half of ``max_pending``, submits in
    the next second do not read it again (on a durable backend, a trip to
    the database per submit).  Nearer the limit every submit reads it, so
    the limit stays exact; after a second it is read anew (other processes
    may have added tasks)."""
    backend = MemoryBackend()
    app = create_app(idem, backend=backend, max_pending=100, grace=0)
    async with app.running():
        calls = count_calls(backend.queue, "depth")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def submit() -> int:
                answer = await client.post("/double/submit", params={"delay": 3600}, json={"n": 1})
                return answer.status_code

            assert [await submit() for _ in range(50)] == [200] * 50
            assert calls.count["depth"] == 1
            await trio.sleep(1.5)
            assert await submit() == 200  # past half the limit: read again
            assert calls.count["depth"] == 2
            assert [await submit() for _ in range(49)] == [200] * 49
            assert calls.count["depth"] == 51  # each one near the limit
            assert await submit() == 429  # 100 waiting: exact
            assert await backend.queue.depth() == 100


async def test_the_depth_is_read_again_after_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Far below the limit too, a second after the last read the depth is
    read again: tasks added by other processes count from then on."""
    backend = MemoryBackend()
    app = create_app(idem, backend=backend, max_pending=1000, grace=0)
    async with app.running():
        calls = count_calls(backend.queue, "depth")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(3):
                answer = await client.post("/double/submit", params={"delay": 3600}, json={"n": 1})
                assert answer.status_code == 200
                assert calls.count["depth"] == 1
            await trio.sleep(1.5)
            answer = await client.post("/double/submit", json={"n": 1})
            assert answer.status_code == 200 and calls.count["depth"] == 2
