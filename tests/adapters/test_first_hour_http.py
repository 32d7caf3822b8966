"""The first hour over HTTP: answers that say what to do."""

from __future__ import annotations

import threading
from typing import Annotated

import httpx
import pytest
import trio

import errands
from errands.adapters.asgi import create_app

svc = errands.Service("first_hour_http")


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


async def test_an_unknown_route_lists_the_task_endpoints() -> None:
    app = create_app(svc)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            answer = await client.get("/ad/status", params={"task_id": "x" * 22})
            assert answer.status_code == 404
            assert "the task endpoints are /add" in answer.json()["error"]


async def test_a_413_names_the_setting() -> None:
    app = create_app(svc, max_body_size=10)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            answer = await client.post("/add/submit", json={"a": 1000000, "b": 2})
            assert answer.status_code == 413
            assert "--max-body-size" in answer.json()["error"]


async def test_readyz_of_a_lazily_started_app_waits_for_the_service_to_load() -> None:
    loaded = threading.Event()

    @errands.service
    class Slow:
        def __init__(self) -> None:
            threading.Event().wait(0.3)  # a model loading
            loaded.set()

        @errands.task
        async def ping(self) -> str:
            return "pong"

    app = create_app(Slow)  # nobody runs its lifespan: mounted as many hosts do
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert not loaded.is_set()
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert loaded.is_set()  # never "ready" before the service's __init__ ran
            task_id = (await client.post("/ping/submit", json={})).json()["task_id"]
            status = await client.get("/ping/status", params={"task_id": task_id, "wait": 10})
            assert status.json()["status"] == "success"
    finally:
        await trio.to_thread.run_sync(app.close)  # close() blocks: not on the loop


async def test_the_app_client_submits_in_process() -> None:
    app = create_app(svc)
    with pytest.raises(errands.EngineClosed, match="lifespan"):
        app.client  # noqa: B018 - not running yet
    async with app.running():
        task = await app.client.add.submit(a=2, b=3)
        assert await task.wait(timeout=10) is errands.TaskStatus.SUCCESS
        assert await task.get() == 5


media = errands.Service("media_http")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


@media.task
async def as_payload() -> errands.Payload:
    return errands.Payload(media_type="image/png", data=PNG)


@media.task
async def annotated() -> Annotated[bytes, errands.MediaType("image/png")]:
    return PNG


async def test_bytes_are_served_with_their_media_type_and_described() -> None:
    app = create_app(media)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for name in ("as_payload", "annotated"):
                task_id = (await client.post(f"/{name}/submit", json={})).json()["task_id"]
                got = await client.get(f"/{name}/get", params={"task_id": task_id, "wait": 10})
                assert got.status_code == 200, got.text
                assert got.headers["content-type"] == "image/png" and got.content == PNG
            schema = (await client.get("/schema.json")).json()
            outputs = {r["name"]: r["output"] for r in schema["routes"]}
            assert outputs["annotated"]["contentMediaType"] == "image/png"
            assert outputs["as_payload"] == {"type": "string", "format": "binary"}
            openapi = (await client.get("/openapi.json")).json()
            content = openapi["paths"]["/annotated/get"]["get"]["responses"]["200"]["content"]
            assert next(iter(content)) == "image/png"


async def test_openapi_names_the_mount_prefix() -> None:
    app = create_app(svc)
    async with app.running():
        transport = httpx.ASGITransport(app=app, root_path="/jobs")
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            mounted = (await client.get("/jobs/openapi.json")).json()
            assert mounted["servers"] == [{"url": "/jobs"}]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert "servers" not in (await client.get("/openapi.json")).json()


@svc.task
async def crash(message: str) -> int:
    raise RuntimeError(message)


async def test_tracebacks_go_over_http_only_when_allowed() -> None:
    for expose in (False, True):
        app = create_app(svc, expose_tracebacks=expose)
        async with app.running():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://localhost"
            ) as client:
                task_id = (await client.post("/crash/submit", json={"message": "x"})).json()[
                    "task_id"
                ]
                status = await client.get("/crash/status", params={"task_id": task_id, "wait": 5})
                body = status.json()
                assert body["status"] == "failure"
                if expose:
                    assert "Traceback (most recent call last)" in body["traceback"]
                    assert "in crash" in body["traceback"]
                else:
                    assert "traceback" not in body
