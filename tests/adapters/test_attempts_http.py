"""Per-attempt history over HTTP: the status answer's ``attempts``, hidden
errors, both HTTP clients' ``get_info()`` equal to the in-process one, and
the CLI's status text."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import httpx
import jsonschema
import pytest
import trio

import errands
from errands import Attempt, AttemptOutcome, TaskError, TaskInfo, TaskStatus
from errands.adapters import AsyncHTTPClient, SyncHTTPClient
from errands.adapters._cli_text import status_text
from errands.adapters._protocol import info_schema
from errands.adapters.asgi import ErrandsApp, create_app
from tests.adapters._http import BASE_URL, in_process, wait_final

svc = errands.Service("attempts_http")
calls: dict[str, int] = {}


@svc.task(retries=2, retry_delay=0)
async def flaky(key: str, fail_times: int) -> str:
    calls[key] = calls.get(key, 0) + 1
    if calls[key] <= fail_times:
        raise ConnectionError(f"attempt {calls[key]} failed; db password is x")
    return f"ok after {calls[key]}"


class FromThread(httpx.BaseTransport):
    """A sync transport for a client in a worker thread: each request is
    answered by ``app`` on the trio loop that started the thread."""

    def __init__(self, app: ErrandsApp) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._token = trio.lowlevel.current_trio_token()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def answer() -> httpx.Response:
            response = await self._inner.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return trio.from_thread.run(answer, trio_token=self._token)


def _error(message: str) -> TaskError:
    return TaskError(type="ConnectionError", message=message)


def _times(attempt: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    return (
        dt.datetime.fromisoformat(attempt["started_at"]),
        dt.datetime.fromisoformat(attempt["finished_at"]),
    )


@pytest.mark.parametrize("compat", [False, True])
async def test_the_status_answer_lists_every_attempt(compat: bool) -> None:
    calls.clear()
    app = create_app(svc, bentoml_compat=compat)
    async with in_process(app) as client:
        submitted = await client.post("/flaky/submit", json={"key": "a", "fail_times": 2})
        body = await wait_final(client, submitted.json()["task_id"], route="/flaky")
    assert body["status"] == ("completed" if compat else "success")
    jsonschema.validate(body, info_schema(bentoml_compat=compat))
    attempts = body["attempts"]
    assert [set(a) for a in attempts] == [
        {"attempt", "started_at", "finished_at", "outcome", "error"}
    ] * 3
    # Errands' own names in both modes: an attempt's outcome is no task status.
    assert [(a["attempt"], a["outcome"], a["error"]) for a in attempts] == [
        (1, "failure", "ConnectionError: attempt 1 failed; db password is x"),
        (2, "failure", "ConnectionError: attempt 2 failed; db password is x"),
        (3, "success", None),
    ]
    spans = [_times(a) for a in attempts]
    for (start, end), (later, _) in itertools.pairwise(spans):
        assert start <= end <= later
    assert all(start.tzinfo is not None for start, _ in spans)
    assert spans[-1] == (
        dt.datetime.fromisoformat(body["executed_at"]),
        dt.datetime.fromisoformat(body["completed_at"]),
    )


async def test_hide_errors_hides_the_attempts_messages_too() -> None:
    calls.clear()
    app = create_app(svc, hide_errors=True)
    async with in_process(app) as client:
        submitted = await client.post("/flaky/submit", json={"key": "b", "fail_times": 5})
        task_id = submitted.json()["task_id"]
        body = await wait_final(client, task_id, route="/flaky")
        listed = (await client.get("/tasks")).json()["tasks"]
    assert body["status"] == "failure" and body["error"] == "ConnectionError"
    assert [a["error"] for a in body["attempts"]] == ["ConnectionError"] * 3
    assert next(t for t in listed if t["task_id"] == task_id)["attempts"] == body["attempts"]
    assert "password" not in str(body) and "password" not in str(listed)


async def test_both_http_clients_see_the_attempts_the_engine_sees() -> None:
    calls.clear()
    app = create_app(svc)
    async with app.running():
        task = await app.client.flaky.submit(key="c", fail_times=2)
        assert await task.wait(timeout=10) is TaskStatus.SUCCESS
        here = await task.get_info()
        transport = httpx.ASGITransport(app=app)
        async with AsyncHTTPClient(BASE_URL, transport=transport) as remote:
            over_async = await remote.flaky.get_task(task.id).get_info()
        sync = SyncHTTPClient(BASE_URL, transport=FromThread(app))
        try:
            over_sync = await trio.to_thread.run_sync(
                lambda: sync.flaky.get_task(task.id).get_info()
            )
        finally:
            sync.close()
    assert [(a.outcome, a.error) for a in here.attempts] == [
        (AttemptOutcome.FAILURE, _error("attempt 1 failed; db password is x")),
        (AttemptOutcome.FAILURE, _error("attempt 2 failed; db password is x")),
        (AttemptOutcome.SUCCESS, None),
    ]
    assert over_sync == here
    assert over_async == here
    assert over_sync.history == here.history and len(here.history) == 2


def test_the_cli_status_shows_earlier_attempts() -> None:
    def moment(seconds: float) -> dt.datetime:
        return dt.datetime(2024, 5, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)

    attempts = (
        Attempt(
            attempt=1,
            started_at=moment(0),
            finished_at=moment(1.5),
            outcome=AttemptOutcome.FAILURE,
            error=_error("attempt 1 failed"),
        ),
        Attempt(
            attempt=2,
            started_at=moment(3),
            finished_at=moment(33),
            outcome=AttemptOutcome.LOST,
            error=TaskError(type="WorkerLost", message="the worker stopped responding"),
        ),
        Attempt(attempt=3, started_at=moment(40), finished_at=None, outcome=AttemptOutcome.RUNNING),
    )
    info = TaskInfo(
        id="t",
        name="flaky",
        status=TaskStatus.IN_PROGRESS,
        created_at=moment(0),
        started_at=moment(40),
        finished_at=None,
        attempt=3,
        max_attempts=3,
        progress=None,
        message=None,
        error=None,
        retry_of=None,
        expires_at=None,
        attempts=attempts,
    )
    lines = dict(line.split(":", 1) for line in status_text(info).splitlines())
    assert lines["attempt"].strip() == "3 of 3"
    assert lines["attempt 1"].strip() == "failure after 1.500 s: ConnectionError: attempt 1 failed"
    assert lines["attempt 2"].strip() == (
        "lost after 30.000 s: WorkerLost: the worker stopped responding"
    )
    assert "attempt 3" not in lines  # the current one: the status says it
