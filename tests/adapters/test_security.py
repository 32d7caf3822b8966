"""Safe on a network: bearer-token auth, the Host allow-list, submit's media
types, the HTTP caps, and hidden errors.  In-process through the ASGI app,
and through real ``errands serve`` processes on 127.0.0.1 for what only they
show (the token file, the non-loopback refusal, the clients and the CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import errands
from errands.adapters.asgi import create_app

from .test_cli import ERRANDS, serving

svc = errands.Service("guarded")
TOKEN = "s3cret-token-for-tests"


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
async def nap(seconds: float) -> str:
    await trio.sleep(seconds)
    return "rested"


@svc.task
async def boom(message: str) -> int:
    raise RuntimeError(message)


@svc.task
def count(blobs: list[bytes]) -> int:
    return len(blobs)


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/add/submit", {"json": {"a": 1, "b": 2}}),
    ("GET", "/add/status", {"params": {"task_id": "A" * 22}}),
    ("GET", "/add/get", {"params": {"task_id": "A" * 22}}),
    ("POST", "/add/cancel", {"params": {"task_id": "A" * 22}}),
    ("PUT", "/add/retry", {"params": {"task_id": "A" * 22}}),
    ("GET", "/add/events", {"params": {"task_id": "A" * 22}}),
    ("GET", "/tasks", {}),
    ("POST", "/tasks/wait", {"json": {"task_ids": ["A" * 22]}}),
    ("GET", "/schema.json", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/metrics", {}),
    ("GET", "/nowhere", {}),
]


async def test_every_route_but_the_probes_needs_the_token() -> None:
    app = create_app(svc, auth=TOKEN)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                for method, path, extra in ROUTES:
                    answer = await client.request(method, path, headers=headers, **extra)
                    assert answer.status_code == 401, (headers, path, answer.text)
                    assert answer.headers["www-authenticate"].startswith("Bearer")
                    assert answer.json()["type"] == "Unauthorized"
                    assert TOKEN not in answer.text
            good = {"authorization": f"Bearer {TOKEN}"}
            for method, path, extra in ROUTES:
                answer = await client.request(method, path, headers=good, **extra)
                assert answer.status_code != 401, (path, answer.text)
            for probe in ("/livez", "/readyz"):
                assert (await client.get(probe)).status_code == 200


async def test_a_deployers_own_auth_callable() -> None:
    seen: list[str] = []

    async def only_alice(scope: Any) -> bool:
        headers = dict(scope["headers"])
        seen.append(scope["path"])
        return headers.get(b"x-user") == b"alice"

    app = create_app(svc, auth=only_alice)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.get("/tasks")).status_code == 401
            assert (await client.get("/tasks", headers={"x-user": "alice"})).status_code == 200
            assert (await client.get("/livez")).status_code == 200
    assert seen == ["/tasks", "/tasks"]


async def test_submit_takes_json_and_multipart_only() -> None:
    app = create_app(svc)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            body = b'{"a": 1, "b": 2}'
            for media in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {} if media is None else {"content-type": media}
                answer = await client.post("/add/submit", content=body, headers=headers)
                assert answer.status_code == 415, (media, answer.text)
                assert answer.json()["type"] == "UnsupportedMediaType"
            ok = await client.post(
                "/add/submit", content=body, headers={"content-type": "application/json"}
            )
            assert ok.status_code == 200
            files = [("blobs", ("a.bin", b"1")), ("blobs", ("b.bin", b"2"))]
            assert (await client.post("/count/submit", files=files)).status_code == 200
            assert await client.get("/tasks") is not None  # nothing else broke


async def test_a_foreign_host_name_is_refused() -> None:
    app = create_app(svc, allowed_hosts=["localhost", "127.0.0.1", "::1"])
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for host in ("localhost", "localhost:3000", "127.0.0.1:8000", "[::1]:3000"):
                answer = await client.get("/tasks", headers={"host": host})
                assert answer.status_code == 200, host
            for host in ("evil.example", "evil.example:3000", "127.0.0.1.nip.io"):
                answer = await client.get("/tasks", headers={"host": host})
                assert answer.status_code == 421, host
                assert answer.json()["type"] == "MisdirectedRequest"


async def test_held_requests_are_capped(autojump_clock: trio.testing.MockClock) -> None:
    app = create_app(svc, max_held=3, max_wait=30)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            task_id = (await client.post("/nap/submit", json={"seconds": 20})).json()["task_id"]
            answers: list[httpx.Response] = []

            async def poll() -> None:
                answers.append(
                    await client.get("/nap/status", params={"task_id": task_id, "wait": 25})
                )

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(poll)
                await trio.testing.wait_all_tasks_blocked()
                refused = await client.get("/nap/status", params={"task_id": task_id, "wait": 25})
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["state"] == "busy" and "max_held" in refused.json()["error"]
                stream = await client.get("/nap/events", params={"task_id": task_id})
                assert stream.status_code == 503
            assert [a.json()["status"] for a in answers] == ["success"] * 3
            # And the server is well afterwards.
            again = await client.get("/nap/status", params={"task_id": task_id, "wait": 1})
            assert again.status_code == 200


async def test_the_http_caps_answer_clearly() -> None:
    app = create_app(svc, max_wait_ids=2, max_parts=3, max_pending=2)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            too_many = await client.post("/tasks/wait", json={"task_ids": ["A" * 22] * 3})
            assert too_many.status_code == 400 and "max_wait_ids" in too_many.json()["error"]
            files = [("blobs", (f"{i}.bin", b"x")) for i in range(4)]
            parts = await client.post("/count/submit", files=files)
            assert parts.status_code == 400 and "max_parts" in parts.json()["error"]
            key = await client.post(
                "/add/submit", json={"a": 1, "b": 1}, headers={"idempotency-key": "k" * 300}
            )
            assert key.status_code == 400 and key.json()["type"] == "LimitExceeded"
            delay = await client.post("/add/submit", json={"a": 1, "b": 1}, params={"delay": 10**9})
            assert delay.status_code == 400 and delay.json()["limit"] == "max_delay"
            # max_pending holds for retries too.
            first = await client.post("/nap/submit", json={"seconds": 0})
            await client.get("/nap/status", params={"task_id": first.json()["task_id"], "wait": 5})
            await client.post("/add/submit", json={"a": 1, "b": 1}, params={"delay": 60})
            await client.post("/add/submit", json={"a": 1, "b": 1}, params={"delay": 60})
            retried = await client.put("/nap/retry", params={"task_id": first.json()["task_id"]})
            assert retried.status_code == 429 and retried.headers["retry-after"] == "1"
            assert "max_pending" in retried.json()["error"]
            assert (await client.get("/readyz")).status_code == 200


#: A submit whose body never arrives whole (see the two 408 tests).
STALLED_SUBMIT: dict[str, Any] = {
    "type": "http",
    "method": "POST",
    "path": "/add/submit",
    "query_string": b"",
    "headers": [(b"content-type", b"application/json"), (b"host", b"localhost")],
}


async def test_a_body_that_stalls_gets_408() -> None:
    app = create_app(svc, read_timeout=0.2)
    async with app.running():
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if not sent:
                sent.append({})
                return {"type": "http.request", "body": b'{"a":', "more_body": True}
            await trio.sleep_forever()
            raise AssertionError

        answer: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            answer.append(message)

        with trio.fail_after(5):
            await app(dict(STALLED_SUBMIT), receive, send)
        assert answer[0]["status"] == 408


async def test_json_lines_that_stall_end_the_batch_with_408() -> None:
    app = create_app(svc, read_timeout=0.2)
    async with app.running():
        parts = [b'{"a": 1, "b": 2}\n', b'{"a": 3,']

        async def receive() -> dict[str, Any]:
            if parts:
                return {"type": "http.request", "body": parts.pop(0), "more_body": True}
            await trio.sleep_forever()
            raise AssertionError

        answer: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            answer.append(message)

        scope = {
            **STALLED_SUBMIT,
            "path": "/add/submit_many",
            "headers": [(b"content-type", b"application/x-ndjson"), (b"host", b"localhost")],
        }
        with trio.fail_after(5):
            await app(scope, receive, send)
    body = json.loads(b"".join(m.get("body", b"") for m in answer[1:]))
    assert answer[0]["status"] == 408, body
    assert "no part of the body arrived for 0.2 s" in body["error"]
    # Lines are stored a chunk at a time: the one that came whole was not
    # stored yet, and the answer says where to resume.
    assert (body["accepted"], body["next_offset"]) == (0, 0)


def test_a_body_that_stalls_gets_408_under_asyncio() -> None:
    # Under asyncio the read timeout is anyio's scope (trio's under trio).
    app = create_app(svc, read_timeout=0.2)

    async def main() -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = []
        sent: list[bool] = []

        async def receive() -> dict[str, Any]:
            if not sent:
                sent.append(True)
                return {"type": "http.request", "body": b'{"a":', "more_body": True}
            await asyncio.sleep(3600)
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            answer.append(message)

        async with app.running():
            await asyncio.wait_for(app(dict(STALLED_SUBMIT), receive, send), 10)
        return answer

    assert asyncio.run(main())[0]["status"] == 408


async def test_hide_errors_sends_the_type_only() -> None:
    app = create_app(svc, hide_errors=True)
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            task_id = (
                await client.post("/boom/submit", json={"message": "db password is x"})
            ).json()["task_id"]
            status = await client.get("/boom/status", params={"task_id": task_id, "wait": 5})
            assert status.json()["error"] == "RuntimeError"
            got = await client.get("/boom/get", params={"task_id": task_id})
            assert got.status_code == 500 and "password" not in got.text
            assert got.json()["task_error"] == "RuntimeError"


# ---------------------------------------------------------------- real servers

SERVICE = textwrap.dedent(
    """
    import errands

    svc = errands.Service("guarded")

    @svc.task
    async def add(a: int, b: int) -> int:
        return a + b
    """
)


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    (tmp_path / "guarded.py").write_text(SERVICE)
    env = {k: v for k, v in os.environ.items() if k != "ERRANDS_TOKEN"}
    done = subprocess.run(
        [*ERRANDS, "serve", "guarded.py:svc", "--host", "0.0.0.0", "--backend", "memory://"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert "refusing to serve 0.0.0.0 without a token" in done.stderr
    assert "--token-file" in done.stderr and "--no-auth" in done.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    done = subprocess.run(
        [*ERRANDS, "serve", "guarded.py:svc", "--token-file", str(empty)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2 and "is empty" in done.stderr


@pytest.mark.realtime
def test_token_file_with_the_clients_and_the_cli(tmp_path: Path) -> None:
    (tmp_path / "guarded.py").write_text(SERVICE)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "ERRANDS_TOKEN"}
    with serving(
        ["guarded.py:svc", "--backend", "memory://", "--token-file", str(token_file)],
        tmp_path,
        env=env,
    ) as (_, base):
        assert httpx.get(f"{base}/tasks").status_code == 401
        with errands.SyncHTTPClient(base, token=TOKEN) as client:
            task = client.add.submit(a=2, b=3)
            assert task.wait(timeout=20) is errands.TaskStatus.SUCCESS
            assert task.get() == 5
        with (
            errands.SyncHTTPClient(base, token="wrong") as wrong,
            pytest.raises(errands.RemoteError) as refused,
        ):
            wrong.add.submit(a=1, b=1)
        assert refused.value.status_code == 401

        async def async_client() -> int:
            async with errands.AsyncHTTPClient(base, token=TOKEN) as client:
                task = await client.add.submit(a=4, b=5)
                await task.wait(timeout=20)
                result: int = await task.get()
                return result

        assert trio.run(async_client) == 9
        cli = subprocess.run(
            [*ERRANDS, "submit", "add", "a=1", "b=2", "--wait", "--url", base],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "ERRANDS_TOKEN": TOKEN},
        )
        assert cli.returncode == 0, cli.stderr
        cli = subprocess.run(
            [*ERRANDS, "ls", "--url", base, "--token", "wrong"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert cli.returncode == 5 and "401" in cli.stderr
    log = (tmp_path / "server.log").read_text()
    assert TOKEN not in log
