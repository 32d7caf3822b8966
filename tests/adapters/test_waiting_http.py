"""Waiting without polling over HTTP, in-process on MockClock: drain, events, /tasks/wait.

(The event stream against real servers, reading it as it comes: test_events_served.py.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
import trio
import trio.testing

import errands
from errands.adapters.asgi import ErrandsApp, create_app
from tests.adapters._http import BASE_URL, checking_client
from tests.conftest import trio_wall
from tests.tools import count_calls

svc = errands.Service("waits")


@svc.task
async def nap(seconds: float) -> str:
    await trio.sleep(seconds)
    return "rested"


@svc.task
async def halfway(seconds: float) -> str:
    await trio.sleep(1)
    errands.current_task().report(0.5, message="half")
    await trio.sleep(seconds)
    return "done"


@svc.task
async def shaped(kind: str, size: int = 3) -> Any:
    """A result of each kind the wait answer inlines, or does not."""
    if kind == "json":
        return {"n": size, "items": list(range(size))}
    if kind == "text":
        return "é" * size
    if kind == "bytes":
        return bytes(range(size % 256))
    raise ValueError("no such kind")


@svc.task
async def text_out(size: int) -> str:
    return "é" * size


@svc.task
async def claims_json(data: str) -> Annotated[bytes, errands.MediaType("application/json")]:
    """Bytes said to be JSON, whether they are or not."""
    return data.encode()


def make_app(**app_options: Any) -> ErrandsApp:
    # stored times follow the mock clock
    engine_options = errands.EngineOptions(grace=0, clock=trio_wall)
    return create_app(svc, max_wait=30, options=engine_options, **app_options)


@asynccontextmanager
async def serving(app: ErrandsApp) -> AsyncIterator[httpx.AsyncClient]:
    async with app.running(), checking_client(httpx.ASGITransport(app=app), BASE_URL) as client:
        yield client


async def submit(client: httpx.AsyncClient, route: str, **query: Any) -> str:
    body = {"seconds": query.pop("seconds")}
    response = await client.post(f"/{route}/submit", json=body, params=query)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def parse_events(text: str) -> tuple[list[dict[str, Any]], int]:
    """The ``status`` events of a stream, and how many keepalive comments it had."""
    events: list[dict[str, Any]] = []
    keepalives = 0
    assert text.endswith("\n\n"), text
    for block in text.split("\n\n")[:-1]:
        if block == ": keepalive":
            keepalives += 1
            continue
        kind, data = block.split("\n")
        assert kind == "event: status", block
        assert data.startswith("data: "), block
        events.append(json.loads(data.removeprefix("data: ")))
    return events, keepalives


# ---------------------------------------------------------------- drain


async def test_drain_answers_held_requests_at_once(autojump_clock: trio.testing.MockClock) -> None:
    app = make_app()
    async with serving(app) as client:
        task_id = await submit(client, "nap", seconds=500)
        await trio.testing.wait_all_tasks_blocked()  # it started: no change comes until drain
        answers: dict[str, httpx.Response] = {}

        async def ask(name: str, method: str, url: str, kwargs: dict[str, Any]) -> None:
            answers[name] = await client.request(method, url, **kwargs)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            query = {"task_id": task_id, "wait": 20}
            many = {"params": {"wait": 20}, "json": {"task_ids": [task_id]}}
            nursery.start_soon(ask, "status", "GET", "/nap/status", {"params": query})
            nursery.start_soon(ask, "get", "GET", "/nap/get", {"params": query})
            nursery.start_soon(ask, "many", "POST", "/tasks/wait", many)
            nursery.start_soon(ask, "events", "GET", "/nap/events", {"params": query})
            await trio.testing.wait_all_tasks_blocked()
            assert not answers
            assert "\nerrands_http_held 4.0\n" in (await client.get("/metrics")).text
            app.drain()
            app.drain()  # idempotent
        assert trio.current_time() == start  # answered at once, not after 20 s
        assert answers["status"].json()["status"] == "in_progress"
        assert answers["get"].status_code == 409
        assert answers["many"].json() == {"done": [], "missing": [], "pending": [task_id]}
        events, _ = parse_events(answers["events"].text)
        assert [e["status"] for e in events] == ["in_progress"]  # the state, then the end
        # New ones do not hold either.
        status = await client.get("/nap/status", params={"task_id": task_id, "wait": 20})
        assert status.json()["status"] == "in_progress"
        events, _ = parse_events((await client.get("/nap/events", params=query)).text)
        assert len(events) == 1
        assert trio.current_time() == start
    # A new run of the engine holds again.
    async with serving(app) as client:
        task_id = await submit(client, "nap", seconds=5)
        status = await client.get("/nap/status", params={"task_id": task_id, "wait": 20})
        assert status.json()["status"] == "success"
        assert trio.current_time() - start == pytest.approx(5)


@pytest.mark.realtime
async def test_drain_from_another_thread() -> None:
    app = make_app()
    async with serving(app) as client:
        task_id = await submit(client, "nap", seconds=500)
        answers: list[httpx.Response] = []

        async def ask() -> None:
            query = {"task_id": task_id, "wait": 25}
            answers.append(await client.get("/nap/status", params=query))

        with trio.fail_after(10):  # far less than the 25 s asked
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                while not len(app._holds):
                    await trio.sleep(0.001)
                await trio.to_thread.run_sync(app.drain)
        assert answers[0].json()["status"] in ("pending", "in_progress")


async def test_leaving_running_drains(autojump_clock: trio.testing.MockClock) -> None:
    """The lifespan ending answers held requests (with the state they see) before
    the engine stops."""
    app = make_app()
    answers: list[httpx.Response] = []
    client = checking_client(httpx.ASGITransport(app=app), BASE_URL)
    async with client, trio.open_nursery() as nursery, app.running():
        task_id = await submit(client, "nap", seconds=500)
        query = {"task_id": task_id, "wait": 25}

        async def ask() -> None:
            answers.append(await client.get("/nap/status", params=query))

        nursery.start_soon(ask)
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
    assert trio.current_time() == start
    assert [a.status_code for a in answers] == [200, 200]
    # In progress, or already handed back to the queue by the stopping engine.
    assert {a.json()["status"] for a in answers} <= {"in_progress", "pending"}


# ---------------------------------------------------------------- events


async def test_events_from_first_to_final(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(make_app()) as client:
        task_id = await submit(client, "halfway", seconds=2)
        response = await client.get("/halfway/events", params={"task_id": task_id})
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        events, keepalives = parse_events(response.text)
        assert keepalives == 0
        seen = [(e["status"], e["progress"], e["message"], e["attempt"]) for e in events]
        if seen[0] == ("pending", None, None, 0):
            del seen[0]  # the request came before the task started (it usually does)
        assert seen == [
            ("in_progress", None, None, 1),
            ("in_progress", 0.5, "half", 1),
            ("success", 0.5, "half", 1),
        ]
        assert events[-1]["position"] is None
        # Each event is what GET status says (the last one, at least, still holds).
        status = await client.get("/halfway/status", params={"task_id": task_id})
        assert events[-1] == status.json()
        # A final task: one event, then the end.
        again = await client.get("/nap/events", params={"task_id": task_id})
        assert parse_events(again.text)[0] == [status.json()]


async def test_events_keepalive_and_bentoml_names(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(make_app(bentoml_compat=True)) as client:
        task_id = await submit(client, "nap", seconds=40)
        start = trio.current_time()
        response = await client.get("/nap/events", params={"task_id": task_id})
        assert trio.current_time() - start == pytest.approx(40)
        events, keepalives = parse_events(response.text)
        assert keepalives == 2  # at 15 and 30 s of silence
        statuses = [e["status"] for e in events]
        assert statuses in (["pending", "in_progress", "completed"], ["in_progress", "completed"])


async def test_events_errors_come_before_any_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(make_app()) as client:
        for bad in ("A" * 22, "nope"):
            missing = await client.get("/nap/events", params={"task_id": bad})
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "application/json"
            assert bad in missing.json()["error"] or "not found" in missing.json()["error"]
        assert (await client.get("/nap/events")).status_code == 400
        wrong = await client.post("/nap/events", params={"task_id": "A" * 22})
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "GET")


# ---------------------------------------------------------------- POST /tasks/wait


async def test_wait_many_answers_when_one_ends(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(make_app()) as client:
        slow = await submit(client, "nap", seconds=9)
        fast = await submit(client, "nap", seconds=4)
        start = trio.current_time()
        now = await client.post("/tasks/wait", json={"task_ids": [slow, fast]})
        assert now.json() == {"done": [], "missing": [], "pending": [slow, fast]}
        assert trio.current_time() == start  # no wait asked: at once
        ids = [slow, fast, slow]
        answer = await client.post("/tasks/wait", params={"wait": 30}, json={"task_ids": ids})
        assert trio.current_time() - start == pytest.approx(4)
        body = answer.json()
        assert body["pending"] == [slow] and body["missing"] == []
        status = await client.get("/nap/status", params={"task_id": fast})
        assert body["done"] == [status.json()]
        # Unknown and malformed ids are answered at once, with the final ones.
        ghost = "A" * 22
        answer = await client.post(
            "/tasks/wait", params={"wait": 30}, json={"task_ids": ["bad", slow, ghost, fast]}
        )
        body = answer.json()
        assert trio.current_time() - start == pytest.approx(4)
        assert body["missing"] == ["bad", ghost] and body["pending"] == [slow]
        assert [d["task_id"] for d in body["done"]] == [fast]


async def test_wait_many_is_held_at_most_max_wait(autojump_clock: trio.testing.MockClock) -> None:
    """A wait above max_wait is refused, so no client waits longer than it asked."""
    async with serving(make_app()) as client:
        task_id = await submit(client, "nap", seconds=500)
        start = trio.current_time()
        held = await client.post(
            "/tasks/wait", params={"wait": "12.5"}, json={"task_ids": [task_id]}
        )
        assert held.json()["pending"] == [task_id]
        assert trio.current_time() - start == pytest.approx(12.5)
        held = await client.post("/tasks/wait", params={"wait": 30}, json={"task_ids": [task_id]})
        assert held.json()["pending"] == [task_id]
        assert trio.current_time() - start == pytest.approx(42.5)  # max_wait is 30
        longer = await client.post(
            "/tasks/wait", params={"wait": 999}, json={"task_ids": [task_id]}
        )
        assert longer.status_code == 400 and longer.json()["limit"] == "max_wait"
        assert trio.current_time() - start == pytest.approx(42.5)


@pytest.mark.parametrize(
    ("body", "query", "says"),
    [
        (b"{", {}, "not valid JSON"),
        (b"", {}, "JSON object"),
        (b"[]", {}, "JSON object"),
        (b'{"task_ids": []}', {}, "task_ids"),
        (b'{"task_ids": "abc"}', {}, "task_ids"),
        (b'{"task_ids": [1]}', {}, "task_ids"),
        (b"{}", {}, "task_ids"),
        (b'{"task_ids": ["a"], "mode": "all"}', {}, "mode"),
        (b'{"task_ids": ["a"], "stream": 1}', {}, "stream"),
        (b'{"task_ids": ["a"], "stream": true}', {"wait": "-1"}, "wait"),
        (json.dumps({"task_ids": ["a"] * 10_001}).encode(), {}, "task_ids"),
        (b'{"task_ids": ["a"]}', {"wait": "-1"}, "wait"),
        (b'{"task_ids": ["a"]}', {"wait": "inf"}, "wait"),
        (b'{"task_ids": ["a"]}', {"wait": "soon"}, "wait"),
    ],
)
async def test_wait_many_refuses_bad_requests(
    autojump_clock: trio.testing.MockClock, body: bytes, query: dict[str, str], says: str
) -> None:
    async with serving(make_app()) as client:
        answer = await client.post("/tasks/wait", content=body, params=query)
        assert answer.status_code == 400, answer.text
        assert says in answer.json()["error"]


async def test_wait_many_takes_ten_thousand_ids(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(make_app()) as client:
        ids = [f"{i:022d}" for i in range(10_000)]
        answer = await client.post("/tasks/wait", json={"task_ids": ids})
        assert answer.status_code == 200
        assert answer.json()["missing"] == ids
        wrong = await client.get("/tasks/wait")
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")


async def test_wait_many_inlines_small_results_when_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``"results": true``: each success that ended carries its result (JSON as
    stored, text as a string) with its media type, so a client that goes on to
    ``get()`` it needs no request; bytes, failures and large results do not."""
    async with serving(make_app()) as client:
        ids = {}
        for key, route, body in (
            ("json", "shaped", {"kind": "json"}),
            ("text", "text_out", {"size": 2}),
            ("bytes", "shaped", {"kind": "bytes"}),
            ("failed", "shaped", {"kind": "nope"}),
            ("large", "shaped", {"kind": "json", "size": 20_000}),
            ("not json", "claims_json", {"data": "{broken"}),
            ("real json", "claims_json", {"data": '{"ok": true}'}),
            ("nan", "claims_json", {"data": "NaN"}),
            ("line break", "claims_json", {"data": "[1,\r2]"}),
            ("escaped text", "text_out", {"size": 40_000}),  # 80 KB stored, 240 KB as JSON
        ):
            answer = await client.post(f"/{route}/submit", json=body)
            ids[key] = answer.json()["task_id"]
        pending = await submit(client, "nap", seconds=500)
        await trio.sleep(1)
        everything = [*ids.values(), pending]
        plain = await client.post("/tasks/wait", json={"task_ids": everything})
        assert all("result" not in d for d in plain.json()["done"])  # not asked
        answer = await client.post("/tasks/wait", json={"task_ids": everything, "results": True})
        body = answer.json()
        assert body["pending"] == [pending]
        done = {d["task_id"]: d for d in body["done"]}
        assert set(done) == set(ids.values())
        assert done[ids["json"]]["result"] == {"n": 3, "items": [0, 1, 2]}
        assert done[ids["json"]]["result_type"] == "application/json"
        got = await client.get("/text_out/get", params={"task_id": ids["text"]})
        assert done[ids["text"]]["result"] == got.text == "éé"
        assert done[ids["text"]]["result_type"] == got.headers["content-type"]
        assert done[ids["real json"]]["result"] == {"ok": True}
        # Stored bytes that claim to be JSON and are not: that task alone
        # goes without (its get() sends them as they are); the answer parses.
        keys = ("bytes", "failed", "large", "not json", "nan", "line break", "escaped text")
        for key in keys:  # (large: over 64 KiB of JSON)
            assert "result" not in done[ids[key]] and "result_type" not in done[ids[key]], key
        assert done[ids["failed"]]["status"] == "failure"
        # Without results, each done entry is the task's status object, as before.
        status = await client.get("/shaped/status", params={"task_id": ids["json"]})
        entry = {k: v for k, v in done[ids["json"]].items() if not k.startswith("result")}
        assert entry == status.json()
        wrong = await client.post("/tasks/wait", json={"task_ids": everything, "results": 1})
        assert wrong.status_code == 400 and "results" in wrong.json()["error"]


@pytest.mark.parametrize("base", [0, 300])
async def test_wait_many_reads_the_results_to_inline_together(
    autojump_clock: trio.testing.MockClock, base: int
) -> None:
    """The results an answer inlines are read a window at a time (one store
    call per 64 successes), never one by one; bytes are not even read.
    Small ones (``base`` 0: at most 1 KiB) were kept with their ends by the
    engine that ended them, and are not read at all."""
    from errands.backends import MemoryBackend

    backend = MemoryBackend()
    async with serving(make_app(backend=backend)) as client:
        sizes = [base + i % 5 for i in range(200)]
        answer = await client.post(
            "/shaped/submit_many", json=[{"kind": "json", "size": size} for size in sizes]
        )
        ids = [item["task_id"] for item in answer.json()["items"]]
        raw = (await client.post("/shaped/submit", json={"kind": "bytes"})).json()["task_id"]
        await trio.sleep(1)
        calls = count_calls(backend.store, "get_result", "get_results")
        answer = await client.post("/tasks/wait", json={"task_ids": [*ids, raw], "results": True})
        done = {d["task_id"]: d for d in answer.json()["done"]}
        assert all(done[t]["result"]["n"] == sizes[i] for i, t in enumerate(ids))
        assert all(len(done[t]["result"]["items"]) == sizes[i] for i, t in enumerate(ids))
        assert "result" not in done[raw]
        asked = calls.first_args["get_results"]
        assert calls.count["get_result"] == 0 and len(asked) == (4 if base else 0)
        assert sorted(i for window in asked for i in window) == (sorted(ids) if base else [])


async def test_wait_many_inlines_at_most_a_mebibyte(autojump_clock: trio.testing.MockClock) -> None:
    """Inlined results stay within 1 MiB per answer; the rest go without."""
    async with serving(make_app()) as client:
        ids = []
        for _ in range(40):  # about 49 KB of JSON each: 21 fit in 1 MiB
            answer = await client.post("/shaped/submit", json={"kind": "json", "size": 9_000})
            ids.append(answer.json()["task_id"])
        await trio.sleep(1)
        answer = await client.post("/tasks/wait", json={"task_ids": ids, "results": True})
        done = answer.json()["done"]
        assert len(done) == 40
        inlined = [d for d in done if "result" in d]
        assert 10 <= len(inlined) < 40
        assert sum(len(json.dumps(d["result"], separators=(",", ":"))) for d in inlined) <= 2**20
        assert inlined[0]["result"]["items"][:3] == [0, 1, 2]


# ---------------------------------------------------------------- streamed


def stream_lines(answer: httpx.Response) -> list[dict[str, Any] | None]:
    """The lines of a streamed wait: each round as JSON, a keep-alive as None."""
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-ndjson"
    assert answer.text.endswith("\n") or not answer.text, answer.text
    return [json.loads(line) if line else None for line in answer.text.split("\n")[:-1]]


async def test_wait_stream_sends_each_round_as_tasks_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``"stream": true``: one line per round of endings, each as the
    answer without a stream has them, until every id was sent; a blank
    line after 15 s of silence; results inlined when asked."""
    async with serving(make_app()) as client:
        slow = await submit(client, "nap", seconds=20)
        fast = await submit(client, "nap", seconds=4)
        ghost = "A" * 22
        start = trio.current_time()
        body = {"task_ids": [slow, "bad", fast, ghost, slow], "stream": True, "results": True}
        answer = await client.post("/tasks/wait", json=body)
        assert trio.current_time() - start == pytest.approx(20)  # until the last ended
        lines = stream_lines(answer)
        assert lines[0] == {"done": [], "missing": ["bad", ghost]}  # at once
        assert [d["task_id"] for d in lines[1]["done"]] == [fast] and lines[1]["missing"] == []
        assert lines[2] is None  # 15 s after the last line: a keep-alive
        assert [d["task_id"] for d in lines[3]["done"]] == [slow] and len(lines) == 4
        entry = lines[3]["done"][0]
        assert entry["result"] == "rested" and entry["result_type"].startswith("text/plain")
        status = await client.get("/nap/status", params={"task_id": slow})
        assert {k: v for k, v in entry.items() if not k.startswith("result")} == status.json()


async def test_wait_stream_is_bounded_by_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``?wait=`` bounds a stream as it bounds any wait (at most
    ``max_wait``); ``wait=0`` sends the state now."""
    async with serving(make_app()) as client:
        task_id = await submit(client, "nap", seconds=500)
        quick = await submit(client, "nap", seconds=1)
        await trio.sleep(2)
        start = trio.current_time()
        body = {"task_ids": [task_id, quick], "stream": True}
        now = await client.post("/tasks/wait", params={"wait": 0}, json=body)
        assert trio.current_time() == start
        assert [[d["task_id"] for d in line["done"]] for line in stream_lines(now)] == [[quick]]
        held = await client.post("/tasks/wait", params={"wait": 30}, json=body)
        assert trio.current_time() - start == pytest.approx(30)
        # The first round at once, then keep-alives at 15 and 30 s.
        assert stream_lines(held)[1:] == [None, None]
        longer = await client.post("/tasks/wait", params={"wait": 31}, json=body)
        assert longer.status_code == 400 and longer.json()["limit"] == "max_wait"


async def test_a_drain_ends_a_stream_at_once(autojump_clock: trio.testing.MockClock) -> None:
    app = make_app()
    async with serving(app) as client:
        task_id = await submit(client, "nap", seconds=500)
        answers: list[httpx.Response] = []

        async def ask() -> None:
            body = {"task_ids": [task_id], "stream": True}
            answers.append(await client.post("/tasks/wait", json=body))

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert "\nerrands_http_held 1.0\n" in (await client.get("/metrics")).text
            app.drain()
        assert trio.current_time() == start
        assert stream_lines(answers[0]) == []  # ended short: the client asks again
        again = await client.post("/tasks/wait", json={"task_ids": [task_id], "stream": True})
        assert stream_lines(again) == [] and trio.current_time() == start  # one round, at once


async def test_wait_stream_reads_each_task_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """300 tasks ending one a second, their results inlined: one line each,
    and each task's record read once, when the wait begins.  Its end comes
    with the final record this engine stored, which also tells its result
    type, and its small result, kept with the end: none is read again
    (before: about 900 reads, each task at the start, at its end, and for
    its result's type, then 600 with the result read; asking again for
    every task still running at each end read about 45,000)."""
    from errands.backends import MemoryBackend

    backend = MemoryBackend()
    async with serving(make_app(backend=backend)) as client:
        answer = await client.post(
            "/nap/submit_many", json=[{"seconds": 1 + i} for i in range(300)]
        )
        ids = [item["task_id"] for item in answer.json()["items"]]
        calls = count_calls(backend.store, "get_many", "get_results")
        answer = await client.post(
            "/tasks/wait", json={"task_ids": ids, "stream": True, "results": True}
        )
        lines = [line for line in stream_lines(answer) if line is not None]
        assert [d["task_id"] for line in lines for d in line["done"]] == ids  # in order of ending
        assert len(lines) == 300
        assert all("result" in d for line in lines for d in line["done"])
        assert calls.ids_read("get_many") == len(ids)
        assert calls.ids_read("get_results") == 0
