"""The wire format of ``_protocol``: TaskInfo JSON round trips, and structured errors.

Every error answer names its ``type`` with the fields to rebuild it, and the
clients rebuild each errands exception from those fields, never from the
message text (which a test here rewrites on the way).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import jsonschema
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import errands
from errands import (
    Attempt,
    AttemptOutcome,
    BackendError,
    CannotCancel,
    EngineClosed,
    EngineUnavailable,
    ErrandsError,
    FieldError,
    InvalidArguments,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskInfo,
    TaskNotFound,
    TaskNotReady,
    TaskStatus,
)
from errands.adapters import AsyncHTTPClient
from errands.adapters._protocol import (
    BENTOML_STATUS,
    ERRORS,
    ErrorAnswer,
    http_error,
    info_from_json,
    info_schema,
    info_to_json,
    rebuild_error,
)
from errands.adapters.asgi import ErrandsApp, create_app
from tests.adapters._http import BASE_URL, in_process, wait_final

svc = errands.Service("wire")
RELEASE: dict[str, trio.Event] = {}

#: Submits send JSON as such (anything else is a 415).
JSON_TYPE = {"content-type": "application/json"}


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
async def fail(message: str) -> int:
    raise ValueError(message)


@svc.task
async def held(key: str) -> str:
    await RELEASE[key].wait()
    return key


# --------------------------------------------------------------------------- TaskInfo

_moments = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 1, 1), timezones=st.just(dt.UTC)
)
_text = st.text(max_size=20)
_task_errors = st.builds(
    TaskError,
    type=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,30}", fullmatch=True),
    message=_text,
)
_attempts = st.lists(
    st.builds(
        Attempt,
        attempt=st.integers(1, 100),
        started_at=st.none() | _moments,
        finished_at=st.none() | _moments,
        outcome=st.sampled_from(AttemptOutcome),
        error=st.none() | _task_errors,
    ),
    max_size=3,
).map(tuple)
_infos = st.builds(
    TaskInfo,
    id=st.text(min_size=1, max_size=40),
    name=_text,
    status=st.sampled_from(TaskStatus),
    created_at=_moments,
    started_at=st.none() | _moments,
    finished_at=st.none() | _moments,
    attempt=st.integers(0, 100),
    max_attempts=st.integers(1, 100),
    progress=st.none() | st.floats(0, 1),
    message=st.none() | _text,
    error=st.none() | _task_errors,
    retry_of=st.none() | _text,
    expires_at=st.none() | _moments,
    position=st.none() | st.integers(0, 10**6),
    attempts=_attempts,
)


@given(info=_infos, bentoml_compat=st.booleans())
def test_task_info_round_trips_through_json(info: TaskInfo, bentoml_compat: bool) -> None:
    sent = json.loads(json.dumps(info_to_json(info, bentoml_compat=bentoml_compat)))
    assert info_from_json(sent, info.name) == info
    names = set(BENTOML_STATUS.values()) if bentoml_compat else {s.value for s in TaskStatus}
    assert sent["status"] in names
    jsonschema.validate(sent, info_schema(bentoml_compat=bentoml_compat))


def test_the_schema_describes_every_field_sent() -> None:
    info = TaskInfo(
        id="t",
        name="add",
        status=TaskStatus.SUCCESS,
        created_at=dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
        started_at=None,
        finished_at=None,
        attempt=1,
        max_attempts=3,
        progress=None,
        message=None,
        error=None,
        retry_of=None,
        expires_at=None,
    )
    for compat in (False, True):
        schema = info_schema(bentoml_compat=compat)
        sent = list(info_to_json(info, bentoml_compat=compat))
        # Every field always sent, plus the traceback a server may be told to send.
        assert list(schema["properties"]) == [*sent, "traceback"]
        failed = attrs.evolve(info, status=TaskStatus.FAILURE, traceback="Traceback ...")
        with_tb = info_to_json(failed, bentoml_compat=compat, tracebacks=True)
        assert list(with_tb) == list(schema["properties"])


@pytest.mark.parametrize("name", ["completed", "success"])
def test_bentomls_fewer_fields_are_filled_in(name: str) -> None:
    info = info_from_json({"task_id": "abc", "status": name}, "add")
    assert (info.id, info.name, info.status) == ("abc", "add", TaskStatus.SUCCESS)
    assert (info.attempt, info.max_attempts, info.error, info.position) == (0, 1, None, None)
    assert info.created_at.tzinfo is not None


# --------------------------------------------------------------------------- the error table

EXAMPLES: list[ErrandsError] = [
    TaskNotFound("t1"),
    TaskNotReady("t1", "in_progress"),
    CannotCancel("t1", "success", "it has already finished"),
    TaskCancelled("t1"),
    TaskFailed("t1", "ValueError: kaput"),
    InvalidArguments("add", [FieldError(path="$.a", message="expected an int")]),
    EngineUnavailable("disk /var/secret is full", retry_after=2.5),
    EngineClosed("the engine is not running"),
]


def _same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b), (a, b)
    for attribute in ("task_id", "status", "reason", "error", "task_name", "errors"):
        assert getattr(a, attribute, None) == getattr(b, attribute, None), attribute


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("exc", EXAMPLES, ids=lambda e: type(e).__name__)
def test_each_error_crosses_the_wire_by_its_fields(exc: ErrandsError, compat: bool) -> None:
    answer = http_error(exc, bentoml_compat=compat)
    assert answer is not None
    assert answer.status == ERRORS[type(exc)].code
    assert answer.body["type"] == type(exc).__name__
    # The message is for people: a client that never sees it rebuilds the same error.
    body = {**json.loads(json.dumps(answer.body)), "error": "reworded"}
    rebuilt = rebuild_error(ErrorAnswer(code=answer.status, body=body))
    assert rebuilt is not None
    if isinstance(exc, EngineUnavailable):
        assert isinstance(rebuilt, EngineUnavailable) and rebuilt.retry_after == 3
        assert "/var/secret" not in json.dumps(answer.body)
        assert (b"retry-after", b"3") in answer.headers
    else:
        _same(rebuilt, exc)


def test_a_storage_fault_answers_as_engine_unavailable_without_its_detail() -> None:
    answer = http_error(BackendError("cannot open /srv/data/cache.db"))
    assert answer is not None
    assert answer.status == 503 and "/srv" not in json.dumps(answer.body)
    assert answer.body["type"] == "EngineUnavailable"
    assert answer.body["state"] == "storage_unavailable" and answer.body["retry_after"] == 1
    assert isinstance(rebuild_error(ErrorAnswer(code=503, body=answer.body)), EngineUnavailable)


def test_errors_that_are_not_errands_errors_have_no_answer() -> None:
    assert http_error(errands.InvalidTransition("pending -> pending")) is None


def test_an_answer_without_type_is_left_to_the_fallbacks() -> None:
    assert rebuild_error(ErrorAnswer(code=409, body={"error": "busy"}, task_id="t")) is None


# --------------------------------------------------------------------------- over HTTP


async def _errors(client: httpx.AsyncClient) -> list[httpx.Response]:
    """One answer of each kind the server gives (``max_pending=1``, ``max_body_size=1000``)."""
    out = [
        await client.get("/add/status"),
        await client.get("/nowhere/status", params={"task_id": "x"}),
        await client.delete("/add/status", params={"task_id": "x"}),
        await client.get("/add/status", params={"task_id": "unknown"}),
        await client.post("/add/submit", json={"a": "one", "b": 2}),
        await client.post("/add/submit", content=b"x" * 2000, headers=JSON_TYPE),
    ]
    delayed = await client.post("/add/submit", params={"delay": 3600}, json={"a": 1, "b": 2})
    pending = delayed.json()["task_id"]
    out.append(await client.get("/add/get", params={"task_id": pending}))
    out.append(await client.post("/add/submit", json={"a": 1, "b": 2}))  # the queue is full
    await client.post("/add/cancel", params={"task_id": pending})
    out.append(await client.get("/add/get", params={"task_id": pending}))
    done = (await client.post("/add/submit", json={"a": 1, "b": 2})).json()["task_id"]
    await wait_final(client, done)
    out.append(await client.post("/add/cancel", params={"task_id": done}))
    failed = (await client.post("/fail/submit", json={"message": "kaput"})).json()["task_id"]
    await wait_final(client, failed, route="/fail")
    out.append(await client.get("/fail/get", params={"task_id": failed}))
    return out


async def test_every_error_answer_names_its_type_and_fields() -> None:
    app = create_app(svc, max_body_size=1000, max_pending=1)
    async with in_process(app) as client:
        answers = await _errors(client)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        answers.append(await client.get("/add/status", params={"task_id": "x"}))  # stopped
    got = [(r.status_code, r.json()["type"]) for r in answers]
    assert got == [
        (400, "BadRequest"),
        (404, "NotFound"),
        (405, "MethodNotAllowed"),
        (404, "TaskNotFound"),
        (422, "InvalidArguments"),
        (413, "ContentTooLarge"),
        (409, "TaskNotReady"),
        (429, "TooManyRequests"),
        (410, "TaskCancelled"),
        (409, "CannotCancel"),
        (500, "TaskFailed"),
        (503, "EngineClosed"),
    ]
    bodies = [r.json() for r in answers]
    assert bodies[3]["task_id"] == "unknown"
    assert bodies[4]["task_name"] == "add" and bodies[4]["errors"][0]["path"] == "$.a"
    assert bodies[6]["status"] == "pending"
    assert bodies[7]["retry_after"] == 1 and answers[7].headers["retry-after"] == "1"
    assert bodies[8]["status"] == "cancelled"
    assert bodies[9]["status"] == "success" and bodies[9]["reason"] == "it has already finished"
    assert bodies[10]["status"] == "failure" and bodies[10]["task_error"] == "ValueError: kaput"
    assert bodies[11]["state"] == "stopped"


def _reworded(app: ErrandsApp) -> Any:
    """``app`` with the message of every error answer replaced."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        start: dict[str, Any] = {}

        async def rewrite(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start.update(message)
                return
            if message["type"] == "http.response.body" and start:
                body = json.loads(message["body"])
                body["error"] = "Quelque chose s'est mal passé."
                data = json.dumps(body).encode()
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                headers.append((b"content-length", str(len(data)).encode()))
                await send({**start, "headers": headers})
                message = {**message, "body": data}
            await send(message)

        await app(scope, receive, rewrite)

    return wrapped


@pytest.fixture
async def reworded() -> AsyncIterator[AsyncHTTPClient]:
    app = create_app(svc)
    async with app.running():
        transport = httpx.ASGITransport(app=_reworded(app))
        async with AsyncHTTPClient(BASE_URL, transport=transport) as client:
            yield client


async def test_cannot_cancel_is_rebuilt_from_its_fields_not_its_text(
    reworded: AsyncHTTPClient,
) -> None:
    task = await reworded.add.submit(a=1, b=2)
    await task.wait()
    with pytest.raises(CannotCancel) as caught:
        await task.cancel()
    assert caught.value.task_id == task.id
    assert caught.value.status == "success"
    assert caught.value.reason == "it has already finished"


async def test_each_task_error_is_rebuilt_from_its_fields_not_its_text(
    reworded: AsyncHTTPClient,
) -> None:
    failed = await reworded.fail.submit(message="kaput")
    await failed.wait()
    with pytest.raises(TaskFailed) as caught:
        await failed.get()
    assert caught.value.error == "ValueError: kaput"
    RELEASE["slow"] = trio.Event()
    slow = await reworded.held.submit(key="slow")
    with pytest.raises(TaskNotReady) as not_ready:
        await slow.get()
    assert not_ready.value.status in ("pending", "in_progress")
    RELEASE["slow"].set()
    await slow.wait()
    with pytest.raises(InvalidArguments) as invalid:
        await reworded.add.submit(a="one", b=2)
    assert [e.path for e in invalid.value.errors] == ["$.a"]
    with pytest.raises(TaskNotFound):
        await reworded.get_task("unknown").get_info()
