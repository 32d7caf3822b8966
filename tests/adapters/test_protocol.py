"""DESIGN.md's HTTP protocol table, row by row, in-process through ``httpx.ASGITransport``.

Every client here checks every answer (no traceback; errors are JSON with an
``"error"``), see :func:`tests.adapters._http.check_answer`.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import errands
from errands.adapters.asgi import create_app
from tests.adapters._http import (
    BASE_URL,
    Chunks,
    call_asgi,
    checking_client,
    in_process,
    wait_final,
)

svc = errands.Service("protocol")

#: Submits send JSON as such (anything else is a 415).
JSON_TYPE = {"content-type": "application/json"}


@attrs.frozen
class Point:
    x: int
    y: int


@attrs.define
class Gate:
    """Holds an async task running until the test releases it."""

    started: trio.Event = attrs.Factory(trio.Event)
    release: trio.Event = attrs.Factory(trio.Event)


@attrs.define
class ThreadGate:
    """The same for a sync task, which runs in a worker thread."""

    started: threading.Event = attrs.Factory(threading.Event)
    release: threading.Event = attrs.Factory(threading.Event)


GATES: dict[str, Gate] = {}
THREAD_GATES: dict[str, ThreadGate] = {}


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
async def scale(x: float) -> float:
    return x * 2


@svc.task
async def echo(value: Any) -> Any:
    return value


@svc.task
async def numbers(n: int) -> list[int]:
    return list(range(n))


@svc.task
async def point(x: int, y: int) -> Point:
    return Point(x, y)


@svc.task
def greet(name: str) -> str:
    return f"hello {name}"


@svc.task
async def blob(size: int) -> bytes:
    return bytes(i % 256 for i in range(size))


@svc.task
def picture(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (200, 30, 30))


@svc.task
async def checksum(data: bytes, label: str = "") -> dict[str, object]:
    return {"size": len(data), "label": label, "head": data[:2].hex()}


@svc.task
def image_size(image: Image.Image) -> list[int]:
    return list(image.size)


@svc.task
async def count(files: list[bytes]) -> int:
    return len(files)


@svc.task
async def fail(message: str) -> int:
    raise ValueError(message)


@svc.task
async def halfway() -> None:
    errands.current_task().report(0.5, message="half done")


@svc.task
async def gated(key: str) -> str:
    gate = GATES[key]
    gate.started.set()
    await gate.release.wait()
    return key


@svc.task
def stubborn(key: str) -> str:
    """A sync task that did not opt in to cancellation."""
    gate = THREAD_GATES[key]
    gate.started.set()
    gate.release.wait(10)
    return key


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(svc, grace=1)) as c:
        yield c


async def submit(client: httpx.AsyncClient, route: str, /, **arguments: object) -> str:
    response = await client.post(f"{route}/submit", json=arguments)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def submit_delayed(client: httpx.AsyncClient, **query: object) -> str:
    """An ``add`` task that stays pending (delayed an hour)."""
    response = await client.post(
        "/add/submit", params={"delay": 3600, **query}, json={"a": 1, "b": 2}
    )
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def run_to_end(client: httpx.AsyncClient, route: str, /, **arguments: object) -> str:
    task_id = await submit(client, route, **arguments)
    await wait_final(client, task_id, route=route)
    return task_id


# --------------------------------------------------------------------------- submit


async def test_submit_answers_task_id_and_status(client: httpx.AsyncClient) -> None:
    response = await client.post("/add/submit", json={"a": 1, "b": 2})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"task_id", "status"}
    assert body["status"] in {"pending", "in_progress", "success"}
    assert (await wait_final(client, body["task_id"]))["status"] == "success"


@pytest.mark.parametrize(
    "body",
    [b"{nope", b'{"a": 1,', b"\xff\xfe{}", b'{"a": 1} trailing', b"[" * 5],
    ids=["garbage", "truncated", "not-utf8", "trailing", "unclosed"],
)
async def test_submit_unparseable_body_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/add/submit", content=body, headers=JSON_TYPE)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


@pytest.mark.parametrize("body", [b"[1, 2]", b'"a"', b"3", b"null", b"true"])
async def test_submit_non_object_json_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/add/submit", content=body, headers=JSON_TYPE)
    assert response.status_code == 400
    assert "object" in response.json()["error"]


async def test_submit_deeply_nested_body_is_400(client: httpx.AsyncClient) -> None:
    """json.loads' RecursionError is a bad body, not a server error (was a 500)."""
    response = await client.post("/add/submit", content=b"[" * 100_000, headers=JSON_TYPE)
    assert response.status_code == 400
    assert "nested" in response.json()["error"]


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_submit_refuses_non_json_numbers(client: httpx.AsyncClient, token: bytes) -> None:
    """Python's json takes these; JSON does not (they were accepted, then failed the task)."""
    response = await client.post(
        "/scale/submit", content=b'{"x": ' + token + b"}", headers=JSON_TYPE
    )
    assert response.status_code == 400
    # In a multipart field too (there they are an invalid argument).
    form = await client.post("/scale/submit", data={"x": token.decode()}, files={"f": ("f", b"")})
    assert form.status_code == 422
    assert "$.x" in {e["path"] for e in form.json()["errors"]}


async def test_multipart_deeply_nested_field_is_400(client: httpx.AsyncClient) -> None:
    form = {"value": "[" * 100_000}
    response = await client.post("/echo/submit", data=form, files={"f": ("f", b"")})
    assert response.status_code == 400


async def test_deeply_nested_value_does_not_crash_the_engine(client: httpx.AsyncClient) -> None:
    depth = 500
    body = b'{"value": ' + b"[" * depth + b"]" * depth + b"}"
    response = await client.post("/echo/submit", content=body, headers=JSON_TYPE)
    if response.status_code == 200:
        final = await wait_final(client, response.json()["task_id"], route="/echo")
        assert final["status"] in ("success", "failure")
    else:
        assert 400 <= response.status_code < 500
    assert (await client.get("/readyz")).status_code == 200
    task_id = await run_to_end(client, "/add", a=1, b=2)
    assert (await client.get("/add/get", params={"task_id": task_id})).json() == 3


async def test_submit_lists_every_bad_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/add/submit", json={"a": "1", "c": 3})
    assert response.status_code == 422
    body = response.json()
    errors = {e["path"]: e["message"] for e in body["errors"]}
    assert errors == {
        "$.a": "expected an integer, got string",
        "$.b": "missing required argument",
        "$.c": "unknown argument",
    }
    for path in errors:
        assert path in body["error"]


@pytest.mark.parametrize(
    ("route", "arguments", "path"),
    [
        ("/add", {"a": "1", "b": 2}, "$.a"),  # no string -> number coercion
        ("/add", {"a": 1.0, "b": 2}, "$.a"),  # nor float -> int
        ("/add", {"a": True, "b": 2}, "$.a"),  # a boolean is not an integer
        ("/add", {"a": None, "b": 2}, "$.a"),
        ("/greet", {"name": 5}, "$.name"),  # nor number -> string
        ("/numbers", {"n": [1]}, "$.n"),
    ],
)
async def test_submit_is_strict_about_types(
    client: httpx.AsyncClient, route: str, arguments: dict[str, object], path: str
) -> None:
    response = await client.post(f"{route}/submit", json=arguments)
    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == [path]


async def test_submit_empty_body_means_no_arguments(client: httpx.AsyncClient) -> None:
    task_id = await run_to_end(client, "/halfway")
    response = await client.post("/add/submit", content=b"", headers=JSON_TYPE)
    assert response.status_code == 422
    paths = {e["path"] for e in response.json()["errors"]}
    assert paths == {"$.a", "$.b"}
    assert (await client.get("/halfway/get", params={"task_id": task_id})).status_code == 200


async def test_submit_over_max_body_size_is_413() -> None:
    body = b'{"a": 1, "b": 2}'
    async with in_process(create_app(svc, max_body_size=len(body))) as client:
        exact = await client.post("/add/submit", content=body, headers=JSON_TYPE)
        assert exact.status_code == 200
        over = await client.post("/add/submit", content=body + b" ", headers=JSON_TYPE)
        assert over.status_code == 413
        assert str(len(body)) in over.json()["error"]


async def test_submit_streamed_body_over_max_body_size_is_413() -> None:
    """A chunked body (no content-length) past the limit is not kept: the rest
    is read and dropped (so the client gets to read the 413) up to a budget of
    16 times the limit or 1 MiB, and no further."""
    headers = {"transfer-encoding": "chunked", "content-type": "application/json"}
    url = BASE_URL + "/add/submit"
    async with in_process(create_app(svc, max_body_size=100)) as client:
        small = Chunks(b'{"a": 1,', b' "b": 2', b" " * 40, b"}")
        response = await client.send(httpx.Request("POST", url, headers=headers, stream=small))
        assert response.status_code == 200
        assert small.sent == 4
        big = Chunks(b'{"a": 1, "b": 2', *[b" " * 40] * 1000, b"}")
        response = await client.send(httpx.Request("POST", url, headers=headers, stream=big))
        assert response.status_code == 413
        assert "max_body_size" in response.text
        assert big.sent == 1002  # 40 kB: within the drain budget, read to its end
        huge = Chunks(b'{"a": 1, "b": 2', *[b" " * 4096] * 1024, b"}")  # 4 MiB
        response = await client.send(httpx.Request("POST", url, headers=headers, stream=huge))
        assert response.status_code == 413
        assert huge.sent <= 1 + (1 << 20) // 4096 + 1  # stopped at the 1 MiB budget


async def test_submit_bad_content_length_is_400() -> None:
    app = create_app(svc)
    async with app.running():
        status, _, _ = await call_asgi(
            app,
            {
                "method": "POST",
                "path": "/add/submit",
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"x")],
            },
        )
    assert status == 400


async def test_submit_priority_and_delay(client: httpx.AsyncClient) -> None:
    low = await submit_delayed(client)
    high = await submit_delayed(client, priority=5)
    low_info = (await client.get("/add/status", params={"task_id": low})).json()
    high_info = (await client.get("/add/status", params={"task_id": high})).json()
    assert (low_info["status"], high_info["status"]) == ("pending", "pending")
    assert (high_info["position"], low_info["position"]) == (0, 1)
    negative = await submit_delayed(client, priority=-3)
    info = (await client.get("/add/status", params={"task_id": negative})).json()
    assert info["position"] == 2
    zero_delay = await client.post("/add/submit", params={"delay": 0}, json={"a": 1, "b": 1})
    assert (await wait_final(client, zero_delay.json()["task_id"]))["status"] == "success"


@pytest.mark.parametrize(
    "query",
    [
        {"priority": "high"},
        {"priority": "1.5"},
        {"delay": "soon"},
        {"delay": "-1"},
        {"delay": "nan"},
        {"delay": "inf"},
        {"delay": "-inf"},
    ],
)
async def test_submit_bad_options_are_400(client: httpx.AsyncClient, query: dict[str, str]) -> None:
    response = await client.post("/add/submit", params=query, json={"a": 1, "b": 2})
    assert response.status_code == 400
    assert next(iter(query)) in response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "query", "status"),
    [
        ("POST", "/add/submit", {"priority": str(2**31 - 1)}, 200),
        ("POST", "/add/submit", {"priority": str(-(2**31))}, 200),
        ("POST", "/add/submit", {"priority": str(2**31)}, 400),
        ("POST", "/add/submit", {"priority": str(2**63)}, 400),
        ("POST", "/add/submit", {"priority": str(-(2**63) - 1)}, 400),
        ("POST", "/add/submit", {"delay": "1e300"}, 400),
        ("GET", "/tasks", {"offset": str(2**62 - 1)}, 200),
        ("GET", "/tasks", {"offset": str(2**63)}, 400),
    ],
)
async def test_huge_numbers_on_the_disk_backend(
    tmp_path: Path, method: str, path: str, query: dict[str, str], status: int
) -> None:
    """Bounded before they reach SQLite's 64-bit integers (past 2**63 they were a 500)."""
    app = create_app(svc, backend=f"diskcache://{tmp_path}")
    async with in_process(app) as client:
        response = await client.request(method, path, params=query, json={"a": 1, "b": 2})
    assert response.status_code == status


# --------------------------------------------------------------------------- submit: multipart


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


async def result_of(client: httpx.AsyncClient, route: str, response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    final = await wait_final(client, task_id, route=route)
    assert final["status"] == "success", final
    return (await client.get(f"{route}/get", params={"task_id": task_id})).json()


async def test_multipart_file_arguments(client: httpx.AsyncClient) -> None:
    upload = {"data": ("a.bin", b"\x00\x01\xff", "application/octet-stream")}
    response = await client.post("/checksum/submit", files=upload, data={"label": '"x"'})
    assert await result_of(client, "/checksum", response) == {
        "size": 3,
        "label": "x",
        "head": "0001",
    }
    # A field that is not JSON text is taken as a plain string.
    response = await client.post("/checksum/submit", files=upload, data={"label": "hi there"})
    assert (await result_of(client, "/checksum", response))["label"] == "hi there"
    # For a str argument, form text is the string even where it reads as
    # other JSON (curl -F label=42); a JSON string literal is still decoded.
    for text in ("42", "true", "null", "[1]", '{"a": 1}'):
        response = await client.post("/checksum/submit", files=upload, data={"label": text})
        assert (await result_of(client, "/checksum", response))["label"] == text
    # A PIL image argument from an uploaded PNG.
    image = {"image": ("p.png", png(7, 3), "image/png")}
    response = await client.post("/image_size/submit", files=image)
    assert await result_of(client, "/image_size", response) == [7, 3]
    # Several parts with one name make a list.
    files = [("files", ("a", b"1")), ("files", ("b", b"2")), ("files", ("c", b""))]
    response = await client.post("/count/submit", files=files)
    assert await result_of(client, "/count", response) == 3


async def test_multipart_bad_arguments_are_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/image_size/submit", files={"image": ("p.png", b"not a png")})
    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == ["$.image"]
    response = await client.post("/checksum/submit", files={"other": ("a.bin", b"x")})
    assert response.status_code == 422
    errors = {e["path"]: e["message"] for e in response.json()["errors"]}
    assert errors == {"$.data": "missing required argument", "$.other": "unknown argument"}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--zz\r\n"),  # no boundary
        ("multipart/form-data; boundary=zz", b"garbage\r\n--zz"),
        (
            "multipart/form-data; boundary=zz",
            b'--zz\r\nContent-Disposition: form-data; name="label"\r\n\r\n\xff\xfe\r\n--zz--\r\n',
        ),
    ],
    ids=["no-boundary", "garbage", "not-utf8"],
)
async def test_multipart_unreadable_is_400(
    client: httpx.AsyncClient, content_type: str, body: bytes
) -> None:
    response = await client.post(
        "/checksum/submit", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 400
    assert "multipart" in response.json()["error"]


async def test_multipart_over_max_body_size_is_413() -> None:
    async with in_process(create_app(svc, max_body_size=4096)) as client:
        small = await client.post("/checksum/submit", files={"data": ("a", b"x" * 3000)})
        assert small.status_code == 200
        big = await client.post("/checksum/submit", files={"data": ("a", b"x" * 5000)})
        assert big.status_code == 413


async def test_multipart_one_file_for_a_list(client: httpx.AsyncClient) -> None:
    response = await client.post("/count/submit", files=[("files", ("a", b"1"))])
    assert await result_of(client, "/count", response) == 1


# --------------------------------------------------------------------------- submit: limits, keys


async def test_queue_full_is_429_with_retry_after() -> None:
    async with in_process(create_app(svc, max_pending=2)) as client:
        first = await submit_delayed(client)
        await submit_delayed(client)
        response = await client.post("/add/submit", json={"a": 1, "b": 2})
        assert response.status_code == 429
        assert response.headers["retry-after"].isdigit()
        assert "full" in response.json()["error"]
        # Validation comes first: a bad body is still a 400/422, not a 429.
        assert (
            await client.post("/add/submit", content=b"{", headers=JSON_TYPE)
        ).status_code == 400
        await client.post("/add/cancel", params={"task_id": first})
        response = await client.post("/add/submit", json={"a": 1, "b": 2})
        assert response.status_code == 200
    with pytest.raises(ValueError, match="max_pending"):
        create_app(svc, max_pending=0)


async def test_idempotency_key_returns_the_first_task(client: httpx.AsyncClient) -> None:
    async def post(route: str, key: str, **arguments: object) -> dict[str, str]:
        headers = {"idempotency-key": key}
        response = await client.post(f"{route}/submit", json=arguments, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, str] = response.json()
        return body

    first = await post("/add", "order-17", a=1, b=2)
    again = await post("/add", "order-17", a=1, b=2)
    assert again["task_id"] == first["task_id"]
    headers = {"idempotency-key": "order-17"}
    changed = await client.post("/add/submit", json={"a": 1, "b": 3}, headers=headers)
    assert changed.status_code == 422, changed.text
    assert "other arguments" in changed.json()["error"]
    await wait_final(client, first["task_id"])
    finished = await post("/add", "order-17", a=1, b=2)
    assert finished == {"task_id": first["task_id"], "status": "success"}
    other_key = await post("/add", "order-18", a=1, b=2)
    assert other_key["task_id"] != first["task_id"]
    other_task = await post("/numbers", "order-17", n=1)
    assert other_task["task_id"] != first["task_id"]
    # An empty key is no key.
    blank = [(await post("/add", "", a=1, b=2))["task_id"] for _ in range(2)]
    assert len(set(blank) | {first["task_id"]}) == 3
    listed = (await client.get("/tasks", params={"name": "add"})).json()["tasks"]
    assert [t["task_id"] for t in listed].count(first["task_id"]) == 1


async def test_idempotent_repeat_while_the_queue_is_full() -> None:
    async with in_process(create_app(svc, max_pending=1)) as client:
        headers = {"idempotency-key": "k"}
        first = await client.post(
            "/add/submit", params={"delay": 3600}, json={"a": 1, "b": 2}, headers=headers
        )
        assert first.status_code == 200
        again = await client.post(
            "/add/submit", params={"delay": 3600}, json={"a": 1, "b": 2}, headers=headers
        )
        assert (again.status_code, again.json()["task_id"]) == (200, first.json()["task_id"])
        changed = await client.post(
            "/add/submit", params={"delay": 3600}, json={"a": 2, "b": 2}, headers=headers
        )
        assert changed.status_code == 422, changed.text


# --------------------------------------------------------------------------- status


async def test_status_has_every_field(client: httpx.AsyncClient) -> None:
    task_id = await run_to_end(client, "/halfway")
    response = await client.get("/halfway/status", params={"task_id": task_id})
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {
        "task_id",
        "status",
        "created_at",
        "executed_at",
        "completed_at",
        "attempt",
        "progress",
        "message",
        "error",
        "retry_of",
        "position",
    }
    assert body["task_id"] == task_id
    assert body["status"] == "success"
    created = dt.datetime.fromisoformat(body["created_at"])
    executed = dt.datetime.fromisoformat(body["executed_at"])
    completed = dt.datetime.fromisoformat(body["completed_at"])
    assert created.tzinfo is not None
    assert created <= executed <= completed
    assert body["attempt"] == 1
    assert (body["progress"], body["message"]) == (0.5, "half done")
    assert body["error"] is None
    assert body["retry_of"] is None
    assert body["position"] is None


async def test_status_of_pending_task(client: httpx.AsyncClient) -> None:
    task_id = await submit_delayed(client)
    body = (await client.get("/add/status", params={"task_id": task_id})).json()
    assert body["status"] == "pending"
    assert (body["executed_at"], body["completed_at"], body["attempt"]) == (None, None, 0)
    assert body["position"] == 0


async def test_status_of_failed_task_holds_the_error(client: httpx.AsyncClient) -> None:
    task_id = await run_to_end(client, "/fail", message="kaboom 17")
    body = (await client.get("/fail/status", params={"task_id": task_id})).json()
    assert body["status"] == "failure"
    assert body["error"] == "ValueError: kaboom 17"


async def test_any_task_route_answers_for_any_id(client: httpx.AsyncClient) -> None:
    task_id = await run_to_end(client, "/add", a=2, b=3)
    response = await client.get("/greet/get", params={"task_id": task_id})
    assert (response.status_code, response.json()) == (200, 5)


@pytest.mark.parametrize("action", ["status", "get", "cancel", "retry"])
async def test_task_id_is_required(client: httpx.AsyncClient, action: str) -> None:
    method = "GET" if action in ("status", "get") else "POST"
    response = await client.request(method, f"/add/{action}")
    assert response.status_code == 400
    assert "task_id" in response.json()["error"]
    empty = await client.request(method, f"/add/{action}?task_id=")
    assert empty.status_code == 400


@pytest.mark.parametrize("action", ["status", "get", "cancel", "retry"])
@pytest.mark.parametrize(
    "task_id",
    ["A" * 22, "zzz", "../../etc/passwd", "x" * 5000, "\u00e9" * 22],
    ids=["unknown", "short", "path", "long", "non-ascii"],
)
async def test_unknown_or_malformed_id_is_404(
    client: httpx.AsyncClient, action: str, task_id: str
) -> None:
    method = "GET" if action in ("status", "get") else "PUT"
    response = await client.request(method, f"/add/{action}", params={"task_id": task_id})
    assert response.status_code == 404


# --------------------------------------------------------------------------- get


@pytest.mark.parametrize(
    ("route", "arguments", "content_type", "expected"),
    [
        ("/add", {"a": 2, "b": 40}, "application/json", b"42"),
        ("/numbers", {"n": 3}, "application/json", b"[0,1,2]"),
        ("/point", {"x": 1, "y": -2}, "application/json", b'{"x":1,"y":-2}'),
        ("/greet", {"name": "Zo\u00eb"}, "text/plain; charset=utf-8", "hello Zo\u00eb".encode()),
        ("/blob", {"size": 300}, "application/octet-stream", bytes(i % 256 for i in range(300))),
        ("/halfway", {}, "application/json", b"null"),
    ],
)
async def test_get_result_with_its_media_type(
    client: httpx.AsyncClient,
    route: str,
    arguments: dict[str, object],
    content_type: str,
    expected: bytes,
) -> None:
    task_id = await run_to_end(client, route, **arguments)
    response = await client.get(f"{route}/get", params={"task_id": task_id})
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == expected
    assert response.headers["content-length"] == str(len(expected))


async def test_get_pil_image_as_png(client: httpx.AsyncClient) -> None:
    task_id = await run_to_end(client, "/picture", width=7, height=3)
    response = await client.get("/picture/get", params={"task_id": task_id})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("PNG", (7, 3))
    assert image.getpixel((0, 0)) == (200, 30, 30)


async def test_get_before_the_end_is_409_naming_the_status(client: httpx.AsyncClient) -> None:
    pending = await submit_delayed(client)
    response = await client.get("/add/get", params={"task_id": pending})
    assert response.status_code == 409
    assert response.json()["status"] == "pending"
    assert "pending" in response.json()["error"]

    gate = GATES["get-409"] = Gate()
    running = await submit(client, "/gated", key="get-409")
    await gate.started.wait()
    response = await client.get("/gated/get", params={"task_id": running})
    assert response.status_code == 409
    assert response.json()["status"] == "in_progress"
    gate.release.set()
    await wait_final(client, running, route="/gated")
    assert (await client.get("/gated/get", params={"task_id": running})).text == "get-409"


async def test_get_of_failed_task_is_500_with_its_error(client: httpx.AsyncClient) -> None:
    task_id = await run_to_end(client, "/fail", message="the model exploded")
    response = await client.get("/fail/get", params={"task_id": task_id})
    assert response.status_code == 500
    body = response.json()
    assert "ValueError: the model exploded" in body["error"]
    assert body["status"] == "failure"
    assert "File " not in response.text


async def test_get_of_cancelled_task_is_410(client: httpx.AsyncClient) -> None:
    task_id = await submit_delayed(client)
    assert (await client.post("/add/cancel", params={"task_id": task_id})).status_code == 200
    response = await client.get("/add/get", params={"task_id": task_id})
    assert response.status_code == 410
    assert response.json()["status"] == "cancelled"


# --------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_cancel_pending(client: httpx.AsyncClient, method: str) -> None:
    task_id = await submit_delayed(client)
    response = await client.request(method, "/add/cancel", params={"task_id": task_id})
    assert response.status_code == 200
    assert response.json() == {"task_id": task_id, "status": "cancelled"}
    status = (await client.get("/add/status", params={"task_id": task_id})).json()
    assert status["status"] == "cancelled"
    again = await client.request(method, "/add/cancel", params={"task_id": task_id})
    assert (again.status_code, again.json()["status"]) == (200, "cancelled")


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_cancel_running_async_task(client: httpx.AsyncClient, method: str) -> None:
    key = f"cancel-running-{method}"
    gate = GATES[key] = Gate()
    task_id = await submit(client, "/gated", key=key)
    await gate.started.wait()
    response = await client.request(method, "/gated/cancel", params={"task_id": task_id})
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert (await client.get("/gated/get", params={"task_id": task_id})).status_code == 410


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_cancel_finished_is_409(client: httpx.AsyncClient, method: str) -> None:
    task_id = await run_to_end(client, "/add", a=1, b=1)
    response = await client.request(method, "/add/cancel", params={"task_id": task_id})
    assert response.status_code == 409
    assert response.json()["status"] == "success"
    failed = await run_to_end(client, "/fail", message="no")
    response = await client.request(method, "/fail/cancel", params={"task_id": failed})
    assert (response.status_code, response.json()["status"]) == (409, "failure")


async def test_cancel_running_sync_task_is_409(client: httpx.AsyncClient) -> None:
    gate = THREAD_GATES["sync-409"] = ThreadGate()
    try:
        task_id = await submit(client, "/stubborn", key="sync-409")
        assert await trio.to_thread.run_sync(gate.started.wait, 10)
        response = await client.post("/stubborn/cancel", params={"task_id": task_id})
        assert response.status_code == 409
        body = response.json()
        assert body["status"] == "in_progress"
        assert "cancellable" in body["error"]
        status = (await client.get("/stubborn/status", params={"task_id": task_id})).json()
        assert status["status"] == "in_progress"  # it keeps running
    finally:
        gate.release.set()
    assert (await wait_final(client, task_id, route="/stubborn"))["status"] == "success"


# --------------------------------------------------------------------------- retry


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_retry_makes_a_new_task(client: httpx.AsyncClient, method: str) -> None:
    first = await run_to_end(client, "/fail", message="flaky")
    response = await client.request(method, "/fail/retry", params={"task_id": first})
    assert response.status_code == 200
    body = response.json()
    assert body["task_id"] != first
    assert body["status"] in {"pending", "in_progress", "failure"}
    second = await wait_final(client, body["task_id"], route="/fail")
    assert second["retry_of"] == first
    assert second["error"] == "ValueError: flaky"
    again = await client.request(method, "/fail/retry", params={"task_id": second["task_id"]})
    assert again.status_code == 200


async def test_retry_of_cancelled_and_succeeded_tasks(client: httpx.AsyncClient) -> None:
    cancelled = await submit_delayed(client)
    await client.post("/add/cancel", params={"task_id": cancelled})
    retried = await client.put("/add/retry", params={"task_id": cancelled})
    assert retried.status_code == 200
    done = await run_to_end(client, "/add", a=20, b=22)
    retried = await client.put("/add/retry", params={"task_id": done})
    new_id = retried.json()["task_id"]
    await wait_final(client, new_id)
    assert (await client.get("/add/get", params={"task_id": new_id})).json() == 42


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_retry_before_the_end_is_409(client: httpx.AsyncClient, method: str) -> None:
    task_id = await submit_delayed(client)
    response = await client.request(method, "/add/retry", params={"task_id": task_id})
    assert response.status_code == 409
    assert response.json()["status"] == "pending"


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/add/submit", "POST"),
        ("PUT", "/add/submit", "POST"),
        ("POST", "/add/status", "GET"),
        ("DELETE", "/add/get", "GET"),
        ("GET", "/add/cancel", "POST, PUT"),
        ("DELETE", "/add/cancel", "POST, PUT"),
        ("GET", "/add/retry", "PUT, POST"),
        ("POST", "/readyz", "GET, HEAD"),
        ("DELETE", "/livez", "GET, HEAD"),
        ("POST", "/schema.json", "GET"),
        ("PUT", "/openapi.json", "GET"),
        ("POST", "/metrics", "GET"),
        ("POST", "/tasks", "GET"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path, params={"task_id": "A" * 22})
    assert response.status_code == 405
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    "path",
    ["/", "/nope", "/add", "/add/", "/add/nope", "/nope/submit", "/add/submit/", "/ADD/submit"],
)
async def test_unknown_route_is_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, json={"a": 1, "b": 2})
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/readyz", "/livez"])
async def test_probes(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert (await client.head(path)).status_code == 200


async def test_websocket_is_closed() -> None:
    app = create_app(svc)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        await trio.lowlevel.checkpoint()
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    await app({"type": "websocket", "path": "/add/submit"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1003}]


# --------------------------------------------------------------------------- /tasks


async def test_tasks_lists_filters_and_pages(client: httpx.AsyncClient) -> None:
    added = [await run_to_end(client, "/add", a=i, b=0) for i in range(3)]
    failed = await run_to_end(client, "/fail", message="x")
    pending = await submit_delayed(client)

    body = (await client.get("/tasks")).json()
    assert [t["task_id"] for t in body["tasks"]] == [pending, failed, *reversed(added)]
    assert (body["limit"], body["offset"], body["next_offset"]) == (100, 0, None)
    assert {t["name"] for t in body["tasks"]} == {"add", "fail"}

    by_name = (await client.get("/tasks", params={"name": "add"})).json()["tasks"]
    assert [t["task_id"] for t in by_name] == [pending, *reversed(added)]
    by_status = (await client.get("/tasks", params={"status": "success"})).json()["tasks"]
    assert [t["task_id"] for t in by_status] == list(reversed(added))
    both = await client.get("/tasks", params={"name": "add", "status": "pending"})
    assert [t["task_id"] for t in both.json()["tasks"]] == [pending]

    page = (await client.get("/tasks", params={"limit": 2})).json()
    assert [t["task_id"] for t in page["tasks"]] == [pending, failed]
    assert page["next_offset"] == 2
    page = (await client.get("/tasks", params={"limit": 2, "offset": 2})).json()
    assert [t["task_id"] for t in page["tasks"]] == [added[2], added[1]]
    page = (await client.get("/tasks", params={"limit": 2, "offset": 4})).json()
    assert [t["task_id"] for t in page["tasks"]] == [added[0]]
    assert page["next_offset"] is None
    beyond = (await client.get("/tasks", params={"offset": 50})).json()
    assert beyond["tasks"] == []


@pytest.mark.parametrize(
    "query",
    [
        {"name": "nope"},
        {"status": "done"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"offset": "-1"},
        {"offset": "1.5"},
    ],
)
async def test_tasks_bad_filters_are_400(client: httpx.AsyncClient, query: dict[str, str]) -> None:
    response = await client.get("/tasks", params=query)
    assert response.status_code == 400


# --------------------------------------------------------------------------- metrics, schema


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    await run_to_end(client, "/add", a=1, b=2)
    await submit_delayed(client)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.text.endswith("\n")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples["errands_up", ()] == 1
    assert samples["errands_tasks_submitted_total", (("task", "add"),)] == 2
    finished = (("outcome", "success"), ("task", "add"))
    assert samples["errands_tasks_finished_total", finished] == 1
    assert samples["errands_queue_depth", (("task", "add"),)] == 1  # the delayed one
    assert samples["errands_workers", ()] == 32
    assert samples["errands_http_held", ()] == 0  # this request is not held
    assert families["errands_tasks_submitted"].type == "counter"
    assert families["errands_task_run_seconds"].type == "histogram"


async def test_metrics_without_engine_say_down() -> None:
    app = create_app(svc)
    status, _, body = await call_asgi(app, {"path": "/metrics"})
    assert status == 200
    assert b"errands_up 0.0\n" in body


async def test_schema_json_has_bentomls_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema.json")
    assert response.status_code == 200
    schema = response.json()
    assert (schema["name"], schema["type"]) == ("protocol", "service")
    routes = {r["name"]: r for r in schema["routes"]}
    assert set(routes) == set(svc.tasks)
    for route in routes.values():
        assert {"name", "route", "input", "output", "is_task"} <= set(route)
        assert route["is_task"] is True
        assert route["route"] == f"/{route['name']}"
        assert route["input"]["type"] == "object"
    assert routes["add"]["input"]["properties"].keys() == {"a", "b"}
    assert routes["add"]["input"]["properties"]["a"]["type"] == "integer"
    assert routes["add"]["input"]["required"] == ["a", "b"]
    assert routes["halfway"]["input"]["properties"] == {}
    assert routes["add"]["output"] == {"type": "integer"}
    assert routes["greet"]["output"] == {"type": "string"}
    assert routes["blob"]["output"] == {"type": "string", "format": "binary"}
    assert routes["picture"]["output"] == {"type": "file", "format": "image", "pil": True}
    assert routes["numbers"]["output"] == {"type": "array", "items": {"type": "integer"}}
    # File arguments are "file" here, so BentoML's clients upload them as multipart parts.
    assert routes["checksum"]["input"]["properties"]["data"]["type"] == "file"
    assert routes["checksum"]["input"]["required"] == ["data"]
    assert routes["checksum"]["input"]["properties"]["label"]["default"] == ""
    image = routes["image_size"]["input"]["properties"]["image"]
    assert (image["type"], image["format"]) == ("file", "image")
    assert routes["point"]["output"]["properties"] == {
        "x": {"type": "integer"},
        "y": {"type": "integer"},
    }


# --------------------------------------------------------------------------- options


async def test_bentoml_compat_status_names() -> None:
    async with in_process(create_app(svc, bentoml_compat=True)) as client:
        done = await run_to_end(client, "/add", a=1, b=2)
        failed = await run_to_end(client, "/fail", message="bad")
        pending = await submit_delayed(client)

        async def status(task_id: str) -> str:
            body = (await client.get("/add/status", params={"task_id": task_id})).json()
            return str(body["status"])

        assert await status(done) == "completed"
        assert await status(failed) == "failed"
        assert await status(pending) == "pending"
        get = await client.get("/add/get", params={"task_id": failed})
        assert (get.status_code, get.json()["status"]) == (500, "failed")
        cancel = await client.put("/add/cancel", params={"task_id": pending})
        assert cancel.json()["status"] == "canceled"
        assert await status(pending) == "canceled"
        get = await client.get("/add/get", params={"task_id": pending})
        assert (get.status_code, get.json()["status"]) == (410, "canceled")
        late = await client.post("/add/cancel", params={"task_id": done})
        assert (late.status_code, late.json()["status"]) == (409, "completed")
        for name, task_id in [("completed", done), ("success", done), ("canceled", pending)]:
            listed = (await client.get("/tasks", params={"status": name})).json()["tasks"]
            assert [t["task_id"] for t in listed] == [task_id]
            assert listed[0]["status"] in {"completed", "canceled"}
        openapi = (await client.get("/openapi.json")).json()
        statuses = openapi["components"]["schemas"]["TaskInfo"]["properties"]["status"]["enum"]
        assert statuses == ["pending", "in_progress", "completed", "failed", "canceled"]


async def test_root_path_is_honoured() -> None:
    async with in_process(create_app(svc), root_path="/api/v1") as client:
        assert str(client.base_url) == BASE_URL + "/api/v1/"
        response = await client.post("add/submit", json={"a": 1, "b": 2})
        assert response.status_code == 200
        assert response.request.url.path == "/api/v1/add/submit"
        task_id = response.json()["task_id"]
        await wait_final(client, task_id, route="add")
        assert (await client.get("add/get", params={"task_id": task_id})).json() == 3
        assert (await client.get("readyz")).status_code == 200
        routes = (await client.get("schema.json")).json()["routes"]
        assert {r["route"] for r in routes} == {f"/{name}" for name in svc.tasks}
        assert (await client.get("nope")).status_code == 404


async def test_lifespan_runs_the_engine() -> None:
    app = create_app(svc, grace=1)
    to_app_send, to_app = trio.open_memory_channel[dict[str, object]](1)
    from_app, from_app_receive = trio.open_memory_channel[dict[str, object]](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, {"type": "lifespan"}, to_app.receive, from_app.send)
        with trio.fail_after(10):
            await to_app_send.send({"type": "lifespan.startup"})
            assert await from_app_receive.receive() == {"type": "lifespan.startup.complete"}
            transport = httpx.ASGITransport(app=app)
            async with checking_client(transport, BASE_URL) as client:
                task_id = await run_to_end(client, "/add", a=4, b=5)
                assert (await client.get("/add/get", params={"task_id": task_id})).json() == 9
            await to_app_send.send({"type": "lifespan.shutdown"})
            assert await from_app_receive.receive() == {"type": "lifespan.shutdown.complete"}
    _, _, body = await call_asgi(app, {"path": "/metrics"})
    assert b"errands_up 0.0\n" in body


async def test_lifespan_reports_a_failed_start() -> None:
    @errands.service
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("no GPU here")

        @errands.task
        async def noop(self) -> None:
            pass

    app = create_app(Broken)
    to_app_send, to_app = trio.open_memory_channel[dict[str, object]](1)
    from_app, from_app_receive = trio.open_memory_channel[dict[str, object]](1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app, {"type": "lifespan"}, to_app.receive, from_app.send)
            await to_app_send.send({"type": "lifespan.startup"})
            message = await from_app_receive.receive()
    assert message["type"] == "lifespan.startup.failed"
    assert "no GPU here" in str(message["message"])


async def test_no_engine_restart_after_running_ended() -> None:
    """Once the host's running() block has ended, requests get 503 (no new empty engine)."""
    app = create_app(svc)
    async with in_process(app) as client:
        task_id = await run_to_end(client, "/add", a=1, b=2)
    transport = httpx.ASGITransport(app=app)
    try:
        async with checking_client(transport, BASE_URL) as client:
            response = await client.get("/add/status", params={"task_id": task_id})
        assert response.status_code == 503
    finally:
        await trio.to_thread.run_sync(app.close)


async def test_lazy_autostart_when_no_lifespan_ran() -> None:
    """Mounted where nobody runs lifespan: the first request starts the engine in a thread."""
    app = create_app(svc, grace=1)
    transport = httpx.ASGITransport(app=app)
    try:
        async with checking_client(transport, BASE_URL) as client:
            assert "errands_up 0" in (await client.get("/metrics")).text
            task_id = await run_to_end(client, "/add", a=1, b=2)
            assert "errands_up 1" in (await client.get("/metrics")).text
            assert (await client.get("/add/get", params={"task_id": task_id})).json() == 3
    finally:
        await trio.to_thread.run_sync(app.close)
    assert not any(t.name == "errands-engine" and t.is_alive() for t in threading.enumerate())


async def test_no_lazy_restart_after_close() -> None:
    app = create_app(svc, grace=1)
    transport = httpx.ASGITransport(app=app)
    try:
        async with checking_client(transport, BASE_URL) as client:
            task_id = await run_to_end(client, "/add", a=1, b=2)
            await trio.to_thread.run_sync(app.close)
            response = await client.get("/add/status", params={"task_id": task_id})
            assert response.status_code == 503
    finally:
        await trio.to_thread.run_sync(app.close)


def test_create_app_refuses_bad_options() -> None:
    with pytest.raises(ValueError, match="max_body_size"):
        create_app(svc, max_body_size=0)
    with pytest.raises(TypeError):
        create_app(object())
