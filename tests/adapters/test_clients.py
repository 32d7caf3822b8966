"""The HTTP clients against a real ``errands serve`` on 127.0.0.1.

Every handle member through ``SyncHTTPClient`` and through
``AsyncHTTPClient`` under trio and under asyncio, results of each kind,
the error mapping, long polls (one request per wait), bearer tokens and
closing connections.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from PIL import Image

import errands
from errands.adapters import AsyncHTTPClient, SyncHTTPClient
from errands.adapters.client import _Inlined
from tests.adapters.test_cli import free_port, serving

#: /metrics says one request is held (with or without a process label).
HELD_ONE = re.compile(r"(?m)^errands_http_held(\{[^}]*\})? 1\.0$")
HELD_TWO = re.compile(r"(?m)^errands_http_held(\{[^}]*\})? 2\.0$")

pytestmark = [pytest.mark.realtime]

SERVICE = textwrap.dedent(
    """
    import time
    from typing import Annotated

    import trio
    import errands
    from PIL import Image

    svc = errands.Service("clients")

    @svc.task
    async def raw_json(data: str) -> Annotated[bytes, errands.MediaType("application/json")]:
        return data.encode()

    @svc.task
    async def add(a: int, b: int) -> int:
        return a + b

    @svc.task
    def shout(text: str) -> str:
        return text.upper()

    @svc.task
    def blob(n: int) -> bytes:
        return bytes(range(n))

    @svc.task
    def picture(size: int) -> Image.Image:
        return Image.new("RGB", (size, size), (200, 30, 30))

    @svc.task
    def measure(data: bytes, label: str) -> list:
        return [len(data), label]

    @svc.task
    async def nap(seconds: float) -> str:
        errands.current_task().report(0.5, message="half way")
        await trio.sleep(seconds)
        return "rested"

    @svc.task(concurrency=1)
    async def queue(seconds: float) -> None:
        await trio.sleep(seconds)

    @svc.task
    def stubborn(seconds: float) -> None:
        time.sleep(seconds)

    @svc.task
    def boom() -> None:
        raise ValueError("kaput")
    """
)

TOKEN_APP = textwrap.dedent(
    """
    import json
    from service import svc
    from errands.adapters.asgi import create_app

    inner = create_app(svc)

    async def app(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != b"Bearer s3cret":
                body = json.dumps({"error": "unauthorized"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await inner(scope, receive, send)
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    where = tmp_path_factory.mktemp("clients")
    (where / "service.py").write_text(SERVICE)
    with serving(["service.py:svc", "--backend", "memory://"], where) as (_, base):
        yield base


# --------------------------------------------------------------------------- sync


def test_sync_client_results_of_every_kind(server: str) -> None:
    with SyncHTTPClient(server) as client:
        task = client.add.submit(a=2, b=3)
        assert isinstance(task, errands.adapters.HTTPTask) and task.name == "add"
        assert task.wait(timeout=20) is errands.TaskStatus.SUCCESS
        assert task.get_status() is errands.TaskStatus.SUCCESS
        assert task.get() == 5
        text = client.shout.submit(text="hey")
        blob = client.blob.submit(n=5)
        picture = client.picture.submit(size=4)
        for each in (text, blob, picture):
            each.wait(timeout=20)
        assert text.get() == "HEY"
        assert blob.get() == b"\x00\x01\x02\x03\x04"
        image = picture.get()
        assert isinstance(image, Image.Image) and image.size == (4, 4)
        assert image.getpixel((0, 0)) == (200, 30, 30)


def test_sync_client_uploads_files_as_multipart(server: str, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 1000)
    image = Image.new("RGB", (2, 2))
    with SyncHTTPClient(server) as client:
        tasks = [
            client.measure.submit(data=b"abc", label="raw"),
            client.measure.submit(data=path, label="path"),
            client.measure.submit(data=io.BytesIO(b"12345"), label="file"),
        ]
        for task in tasks:
            task.wait(timeout=20)
        assert [t.get() for t in tasks] == [[3, "raw"], [1000, "path"], [5, "file"]]
        png = client.measure.submit(data=image, label="image")
        png.wait(timeout=20)
        size, label = png.get()
        assert label == "image" and size > 0


def test_sync_client_info_progress_cancel_retry(server: str) -> None:
    with SyncHTTPClient(server) as client:
        napping = client.nap.submit(seconds=30)
        info = napping.get_info()
        assert info.id == napping.id and info.name == "nap"
        assert info.status in (errands.TaskStatus.PENDING, errands.TaskStatus.IN_PROGRESS)
        with pytest.raises(errands.TaskNotReady):
            napping.get()
        with pytest.raises(errands.TaskNotReady):
            napping.retry()
        assert napping.cancel() is errands.TaskStatus.CANCELLED
        with pytest.raises(errands.TaskCancelled):
            napping.get()
        assert napping.cancel() is errands.TaskStatus.CANCELLED  # idempotent
        again = napping.retry()
        assert again.id != napping.id and again.name == "nap"
        assert again.get_info().retry_of == napping.id
        again.cancel()
        quick = client.nap.submit(seconds=0)
        quick.wait(timeout=20)
        done = quick.get_info()
        assert (done.progress, done.message) == (0.5, "half way")
        assert done.started_at is not None and done.finished_at is not None
        assert done.attempt == 1 and done.max_attempts >= 1
        assert done.expires_at is not None and done.expires_at > done.finished_at
        with pytest.raises(errands.CannotCancel) as late:
            quick.cancel()
        assert late.value.reason == "it has already finished" and late.value.status == "success"


def test_sync_client_errors_are_errands_errors(server: str) -> None:
    with SyncHTTPClient(server) as client:
        failing = client.boom.submit()
        assert failing.wait(timeout=20) is errands.TaskStatus.FAILURE
        with pytest.raises(errands.TaskFailed) as failed:
            failing.get()
        assert failed.value.error == "ValueError: kaput"
        assert str(failing.get_info().error) == "ValueError: kaput"
        with pytest.raises(errands.InvalidArguments) as invalid:
            client.add.submit(a="two", c=1)
        paths = {e.path for e in invalid.value.errors}
        assert {"$.a", "$.b", "$.c"} <= paths, invalid.value.errors
        with pytest.raises(errands.InvalidArguments) as unsendable:
            client.add.submit(a=object(), b=1)
        assert unsendable.value.errors[0].path == "$.a"
        with pytest.raises(AttributeError, match="no task endpoint 'nope'.*add"):
            client.nope.submit()
        ghost = client.add.get_task("x" * 22)
        for call in (ghost.get_status, ghost.get, ghost.cancel, ghost.retry, ghost.wait):
            with pytest.raises(errands.TaskNotFound):
                call()
        running = client.stubborn.submit(seconds=1)
        for _ in range(10_000):  # a few ms: the worker picks it up at once
            if running.get_status() is errands.TaskStatus.IN_PROGRESS:
                break
        with pytest.raises(errands.CannotCancel, match="not cancellable|cancellable"):
            running.cancel()
        assert running.wait(timeout=20) is errands.TaskStatus.SUCCESS


class Counting(httpx.HTTPTransport):
    """A real transport that counts the requests to each path."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


class CountingAsync(httpx.AsyncHTTPTransport):
    """A real async transport that counts the requests to each path."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


def test_sync_wait_is_one_long_poll_not_polling(server: str) -> None:
    transport = Counting()
    with SyncHTTPClient(server, transport=transport) as client:
        task = client.nap.submit(seconds=1.5)
        transport.paths.clear()
        assert task.wait(timeout=30) is errands.TaskStatus.SUCCESS
        # held by the server until the task ended: one request, not a loop;
        # a get with ?wait=, whose answer brings the result along
        assert transport.paths == ["/nap/get"]
        assert task.get() == "rested"
        assert transport.paths == ["/nap/get"]  # wait() then get(): one request
        assert task.get() == "rested"  # handed over once; then asked again
        assert transport.paths == ["/nap/get", "/nap/get"]
        slow = client.nap.submit(seconds=30)
        with pytest.raises(TimeoutError, match="still in_progress"):
            slow.wait(timeout=0.5)
        slow.cancel()


def test_sync_wait_then_get_of_tasks_that_did_not_succeed(server: str) -> None:
    transport = Counting()
    with SyncHTTPClient(server, transport=transport) as client:
        failing = client.boom.submit()
        parked = client.queue.submit(seconds=30)  # holds queue's one slot
        waiting = client.queue.submit(seconds=0)
        assert waiting.cancel() is errands.TaskStatus.CANCELLED
        ghost = client.add.get_task("z" * 22)
        transport.paths.clear()
        assert failing.wait(timeout=30) is errands.TaskStatus.FAILURE
        assert waiting.wait(timeout=30) is errands.TaskStatus.CANCELLED
        with pytest.raises(errands.TaskNotFound):
            ghost.wait(timeout=30)
        # one long poll each; the unknown id's 404 is checked against its status
        assert transport.paths == ["/boom/get", "/queue/get", "/add/get", "/add/status"]
        transport.paths.clear()
        with pytest.raises(errands.TaskFailed, match="kaput"):
            failing.get()
        with pytest.raises(errands.TaskCancelled):
            waiting.get()
        assert transport.paths == ["/boom/get", "/queue/get"]  # nothing was kept for these
        parked.cancel()


def test_sync_handles_from_ids_and_listing(server: str) -> None:
    with SyncHTTPClient(server) as client:
        task = client.add.submit(a=1, b=1)
        task.wait(timeout=20)
        same = client.get_task(task.id)
        assert same == task and same.get() == 2
        assert client.add.get_task(task.id).get_status() is errands.TaskStatus.SUCCESS
        listed = client.list(name="add", status=errands.TaskStatus.SUCCESS)
        assert task.id in {i.id for i in listed}
        assert "add" in dir(client) and set(client.endpoints) >= {"add", "nap", "boom"}
        assert "<errands-status" not in task._repr_html_()
        assert "success" in task._repr_html_()


def test_idempotency_and_priority_options(server: str) -> None:
    with SyncHTTPClient(server) as client:
        first = client.add.options(idempotency_key="order-17").submit(a=1, b=2)
        second = client.add.options(idempotency_key="order-17").submit(a=1, b=2)
        assert first.id == second.id
        later = client.add.options(delay=30, priority=5).submit(a=0, b=0)
        assert later.get_status() is errands.TaskStatus.PENDING
        later.cancel()
        with pytest.raises(ValueError, match="delay"):
            client.add.options(delay=-1)


def test_closed_client_and_unreachable_server(server: str) -> None:
    client = SyncHTTPClient(server)
    with client:
        assert client.is_ready()
    assert client._http.is_closed
    with SyncHTTPClient(f"http://127.0.0.1:{free_port()}", timeout=2) as dead:
        assert not dead.is_ready()
        with pytest.raises(errands.RemoteError, match="cannot reach"):
            dead.add.submit(a=1, b=2)


def test_full_queue_is_a_remote_error_with_retry_after(tmp_path: Path) -> None:
    (tmp_path / "service.py").write_text(SERVICE)
    args = ["service.py:svc", "--backend", "memory://", "--max-pending", "1"]
    with serving(args, tmp_path) as (_, base), SyncHTTPClient(base) as client:
        client.queue.submit(seconds=60)  # runs (concurrency 1)
        client.queue.submit(seconds=60)  # waits: the queue now holds 1
        with pytest.raises(errands.RemoteError) as full:
            for _ in range(3):
                client.queue.submit(seconds=60)
        assert full.value.status_code == 429 and full.value.retry_after == 1


def test_bearer_token_is_sent(tmp_path: Path) -> None:
    (tmp_path / "service.py").write_text(SERVICE)
    (tmp_path / "guarded.py").write_text(TOKEN_APP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", f"127.0.0.1:{port}", "guarded:app"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # hypercorn's supervisor starts a worker process of its own: a
        # session of their own lets the test stop both (and nothing else).
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/livez", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with SyncHTTPClient(base, token="s3cret") as client:
            task = client.add.submit(a=20, b=22)
            task.wait(timeout=20)
            assert task.get() == 42
        with SyncHTTPClient(base) as anonymous, pytest.raises(errands.RemoteError) as denied:
            anonymous.add.submit(a=1, b=1)
        assert denied.value.status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- async


async def _async_round_trip(base: str) -> None:
    async with AsyncHTTPClient(base) as client:
        task = await client.add.submit(a=2, b=40)
        assert isinstance(task, errands.adapters.AsyncHTTPTask)
        assert await task.wait(timeout=20) is errands.TaskStatus.SUCCESS
        assert await task.get_status() is errands.TaskStatus.SUCCESS
        assert await task.get() == 42
        assert (await task.get_info()).name == "add"
        picture = await client.picture.submit(size=3)
        await picture.wait(timeout=20)
        assert (await picture.get()).size == (3, 3)
        napping = await client.nap.submit(seconds=30)
        with pytest.raises(errands.TaskNotReady):
            await napping.get()
        with pytest.raises(TimeoutError):
            await napping.wait(timeout=0.3)
        assert await napping.cancel() is errands.TaskStatus.CANCELLED
        with pytest.raises(errands.TaskCancelled):
            await napping.get()
        again = await napping.retry()
        assert (await again.get_info()).retry_of == napping.id
        await again.cancel()
        failing = await client.boom.submit()
        await failing.wait(timeout=20)
        with pytest.raises(errands.TaskFailed, match="kaput"):
            await failing.get()
        with pytest.raises(errands.InvalidArguments):
            await client.add.submit(a=1)
        with pytest.raises(AttributeError, match="no task endpoint"):
            _ = client.nope
        with pytest.raises(errands.TaskNotFound):
            await client.get_task("y" * 22).get_status()
        listed = await client.list(name="add")
        assert task.id in {i.id for i in listed}
    assert client._http.is_closed


async def test_async_client_under_trio(server: str) -> None:
    await _async_round_trip(server)


def test_async_client_under_asyncio(server: str) -> None:
    asyncio.run(_async_round_trip(server))


async def test_async_lazy_endpoint_before_the_schema_is_read(server: str) -> None:
    client = AsyncHTTPClient(server)
    try:
        endpoint = client.nope  # not known yet: checked at first use
        with pytest.raises(AttributeError, match="no task endpoint 'nope'"):
            await endpoint.submit()
        task = await client.shout.submit(text="late")
        await task.wait(timeout=20)
        assert await task.get() == "LATE"
    finally:
        await client.aclose()


async def test_async_wait_is_one_long_poll_under_trio(server: str) -> None:
    transport = CountingAsync()
    async with AsyncHTTPClient(server, transport=transport) as client:
        task = await client.nap.submit(seconds=1.5)
        transport.paths.clear()
        with trio.fail_after(30):
            assert await task.wait() is errands.TaskStatus.SUCCESS
            assert await task.get() == "rested"
        assert transport.paths == ["/nap/get"]  # wait() then get(): one long poll of get


# --------------------------------------------------------------------------- many


def test_sync_as_completed_yields_in_order_of_ending(server: str) -> None:
    with SyncHTTPClient(server) as client:
        slow = client.nap.submit(seconds=1.0)
        quick = client.add.submit(a=1, b=1)
        failing = client.boom.submit()
        ghost = client.add.get_task("z" * 22)
        ended = errands.as_completed([slow, quick, failing, ghost], timeout=30)
        order = list(ended)
        assert order[-1] == slow and set(order[:3]) == {quick, failing, ghost}
        assert ended.infos[failing.id].status is errands.TaskStatus.FAILURE
        assert ended.infos[ghost.id] is None
        assert slow.get() == "rested"
        with pytest.raises(errands.TaskNotFound):
            ghost.get()
        stuck = client.nap.submit(seconds=60)
        with pytest.raises(TimeoutError, match="1 tasks not finished"):
            list(errands.as_completed([quick, stuck], timeout=0.5))
        stuck.cancel()
        with pytest.raises(TypeError, match="sync task handles"):
            errands.as_completed([quick]).__aiter__().__anext__().send(None)


async def _async_as_completed(base: str) -> None:
    async with AsyncHTTPClient(base) as client:
        slow = await client.nap.submit(seconds=1.0)
        quick = await client.add.submit(a=1, b=1)
        order = [t async for t in errands.as_completed([slow, quick], timeout=30)]
        assert order == [quick, slow]
        with pytest.raises(TypeError, match="async task handles"):
            list(errands.as_completed([quick]))
        with SyncHTTPClient(base) as other, pytest.raises(ValueError, match="one client"):
            errands.as_completed([quick, other.get_task(quick.id)])


async def test_async_as_completed_under_trio(server: str) -> None:
    await _async_as_completed(server)


def test_async_as_completed_under_asyncio(server: str) -> None:
    asyncio.run(_async_as_completed(server))


def test_as_completed_waits_on_many_in_one_streamed_request(server: str) -> None:
    transport = Counting()
    with SyncHTTPClient(server, transport=transport) as client:
        assert client.server_info().wait_stream
        tasks = [client.nap.submit(seconds=s) for s in (0.6, 1.2)]
        transport.paths.clear()
        order = list(errands.as_completed(tasks, timeout=30))
        assert order == tasks
        # One request, streamed by the server as each task ends: no polling
        # of each task, and no request again with the tasks still running.
        assert transport.paths == ["/tasks/wait"]


def test_as_completed_yields_each_task_as_it_ends_from_the_stream(server: str) -> None:
    """The stream is read as it comes: the quick task is yielded while the
    other still runs (here, the loop then cancels it, which ends it)."""
    transport = Counting()
    with SyncHTTPClient(server, transport=transport) as client:
        long = client.nap.submit(seconds=600)
        quick = client.add.submit(a=1, b=1)
        transport.paths.clear()
        order = []
        for task in errands.as_completed([long, quick], timeout=30):
            order.append(task)
            if task is quick:
                long.cancel()
        assert order == [quick, long]
        assert long.get_status() is errands.TaskStatus.CANCELLED
        assert transport.paths[:2] == ["/tasks/wait", "/nap/cancel"], transport.paths
        assert transport.paths.count("/tasks/wait") == 1


class OlderServer(Counting):
    """The schema of an errands server without streamed waits."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != "/schema.json":
            return response
        schema = json.loads(response.read())
        del schema["errands"]["wait_stream"]
        return httpx.Response(200, json=schema)


@pytest.fixture(scope="module")
def few_ids_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that takes at most 5 ids in one ``POST /tasks/wait``."""
    where = tmp_path_factory.mktemp("few-ids")
    (where / "service.py").write_text(SERVICE)
    args = ["service.py:svc", "--backend", "memory://", "--max-wait-ids", "5"]
    with serving(args, where) as (_, base):
        yield base


@pytest.mark.parametrize("transport", [Counting, OlderServer])
def test_as_completed_over_more_tasks_than_one_wait_takes(
    few_ids_server: str, transport: type[Counting]
) -> None:
    """More handles than the server takes ids in one ``POST /tasks/wait``:
    every task is yielded (they were a 400 before), the stream a part at a
    time; a server without streamed waits is asked for a part at a time too."""
    counting = transport()
    with SyncHTTPClient(few_ids_server, transport=counting) as client:
        assert client.server_info().max_wait_ids == 5
        tasks = [client.add.submit(a=n, b=0) for n in range(12)]
        counting.paths.clear()
        got = {t.id: t.get() for t in errands.as_completed(tasks, timeout=30)}
        assert [got[t.id] for t in tasks] == list(range(12))
        assert set(counting.paths) == {"/tasks/wait"}, counting.paths  # results rode along
        if transport is Counting:
            assert len(counting.paths) == 3  # parts of 5, 5 and 2


def test_as_completed_then_get_needs_no_get_requests(server: str) -> None:
    """The waits bring small JSON and text results along: ``get()`` of each
    task as ``as_completed`` yields it sends nothing; bytes are still fetched."""
    transport = Counting()
    with SyncHTTPClient(server, transport=transport) as client:
        assert client.server_info().wait_results
        sums = [client.add.submit(a=n, b=1) for n in range(30)]
        texts = [client.shout.submit(text=f"é{n}") for n in range(3)]
        blobs = [client.blob.submit(n=n) for n in (2, 3)]
        transport.paths.clear()
        got = {t.id: t.get() for t in errands.as_completed([*sums, *texts, *blobs], timeout=30)}
        assert [got[t.id] for t in sums] == [n + 1 for n in range(30)]
        assert [got[t.id] for t in texts] == [f"É{n}" for n in range(3)]
        assert [got[t.id] for t in blobs] == [b"\x00\x01", b"\x00\x01\x02"]
        gets = [p for p in transport.paths if p.endswith("/get")]
        assert gets == ["/blob/get", "/blob/get"], transport.paths
        assert set(transport.paths) == {"/tasks/wait", "/blob/get"}
        assert len(client._inlined) == 0  # each kept result was handed out once
        # A second get() of the same task asks the server, as before.
        transport.paths.clear()
        assert sums[0].get() == 1 and transport.paths == ["/add/get"]


async def _async_results_ride_along(base: str) -> None:
    transport = CountingAsync()
    async with AsyncHTTPClient(base, transport=transport) as client:
        tasks = [await client.add.submit(a=n, b=2) for n in range(10)]
        transport.paths.clear()
        got = [await t.get() async for t in errands.as_completed(tasks, timeout=30)]
        assert sorted(got) == [n + 2 for n in range(10)]
        assert set(transport.paths) == {"/tasks/wait"}, transport.paths


async def test_async_results_ride_along_under_trio(server: str) -> None:
    await _async_results_ride_along(server)


def test_async_results_ride_along_under_asyncio(server: str) -> None:
    asyncio.run(_async_results_ride_along(server))


def test_a_closed_client_sends_nothing(server: str) -> None:
    client = SyncHTTPClient(server)
    task = client.add.submit(a=1, b=2)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.add.submit(a=1, b=2)
    with pytest.raises(RuntimeError, match="closed"):
        task.get_status()


async def test_a_closed_async_client_sends_nothing(server: str) -> None:
    client = AsyncHTTPClient(server)
    task = await client.add.submit(a=1, b=2)
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await task.get_status()


def test_credentials_in_the_url_are_sent(server: str) -> None:
    """``http://user:password@host`` sends them as basic auth (httpx's rule), on every request."""
    seen: list[str | None] = []

    class Recording(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.headers.get("authorization"))
            return super().handle_request(request)

    with SyncHTTPClient(server.replace("://", "://ann:secret@"), transport=Recording()) as client:
        client.add.submit(a=1, b=2).wait(timeout=30)
    assert seen and set(seen) == {"Basic YW5uOnNlY3JldA=="}, seen


def test_raw_bytes_come_back_as_stored_after_as_completed(server: str) -> None:
    """An endpoint whose result is raw bytes gets the stored bytes from get(),
    not a re-encoding of the JSON the wait brought (same value, other bytes)."""
    with SyncHTTPClient(server) as client:
        stored = ['{"ok": true}', "1E2", "[1,  2]"]
        tasks = [client.raw_json.submit(data=d) for d in stored]
        got = {t.id: t.get() for t in errands.as_completed(tasks, timeout=30)}
        assert [got[t.id] for t in tasks] == [d.encode() for d in stored]


def test_the_cli_wait_carries_no_results(server: str) -> None:
    bodies: list[bytes] = []

    class Recording(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/tasks/wait":
                bodies.append(request.read())
            return super().handle_request(request)

    from errands.adapters import _cli_client, cli

    with SyncHTTPClient(server, transport=Recording()) as client:
        task = client.add.submit(a=1, b=2)
        assert list(errands.as_completed([task], timeout=30)) == [task]
        args = cli._parser().parse_args(["wait", task.id, "--url", server])
        assert _cli_client._command("wait")(client, args) == 0
    assert len(bodies) == 2
    assert json.loads(bodies[0])["results"] is True  # as_completed
    assert "results" not in json.loads(bodies[1])  # the CLI's wait: statuses only


def test_an_unreachable_server_error_names_its_request() -> None:
    with (
        SyncHTTPClient(f"http://127.0.0.1:{free_port()}", timeout=5) as client,
        pytest.raises(errands.RemoteError, match="cannot reach") as caught,
    ):
        client.server_info()
    cause = caught.value.__cause__
    assert isinstance(cause, httpx.TransportError)
    assert cause.request.url.path == "/schema.json"  # as httpx.Client would set it


def test_a_server_that_sets_cookies_gets_them_back() -> None:
    """Plain requests skip httpx's cookie jar until a server sets a cookie;
    from then on the client sends them back, as httpx.Client does."""
    seen: list[str | None] = []
    schema = json.dumps({"name": "c", "routes": [], "errands": {"max_wait": 1}}).encode()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ.get("HTTP_COOKIE"))
        if environ["PATH_INFO"] == "/schema.json":
            start_response(
                "200 OK",
                [("content-type", "application/json"), ("set-cookie", "lb=node-2; Path=/")],
            )
            return [schema]
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"tasks": []}']

    with SyncHTTPClient("http://testserver", transport=httpx.WSGITransport(app=app)) as client:
        client.server_info()
        assert client.list() == []
        assert client.list() == []
    assert seen == [None, "lb=node-2", "lb=node-2"]


def test_kept_results_are_bounded() -> None:
    """Results a wait brought but nobody got are dropped oldest first past the limit."""
    kept = _Inlined()
    kept.LIMIT = 1000
    answer = httpx.Response(200, content=b"x" * 300)
    kept.keep({f"t{n}": answer for n in range(5)})  # 1,500 bytes
    assert len(kept) == 3 and kept.take("t0") is None and kept.take("t1") is None
    assert kept.take("t4") is answer and kept.take("t4") is None
    kept.keep({"t2": httpx.Response(200, content=b"y" * 900)})  # replaces t2: 300 + 900
    assert kept.take("t3") is None and kept.take("t2") is not None and len(kept) == 0


def test_clients_share_one_verifying_tls_context() -> None:
    # httpx builds (and loads the CA bundle into) a TLS context per client,
    # even for http:// URLs; the clients share one, still verifying.
    first = SyncHTTPClient("http://127.0.0.1:9")
    second = AsyncHTTPClient("https://errands.test")
    contexts = [c._http._transport._pool._ssl_context for c in (first, second)]  # type: ignore[attr-defined]
    assert contexts[0] is contexts[1]
    assert contexts[0].verify_mode is ssl.CERT_REQUIRED and contexts[0].check_hostname
    first.close()


def test_images_stay_bytes_without_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    from errands.adapters._wire import Endpoint, decode_result

    png = io.BytesIO()
    Image.new("RGB", (1, 1)).save(png, format="PNG")
    endpoint = Endpoint(
        name="picture", route="/picture", input={}, output={"type": "file", "pil": True}
    )
    answer = httpx.Response(200, headers={"content-type": "image/png"}, content=png.getvalue())
    assert isinstance(decode_result(answer, endpoint), Image.Image)
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if pillow were not installed
    assert decode_result(answer, endpoint) == png.getvalue()


def test_wait_rides_out_a_server_restart(tmp_path: Path) -> None:
    """A durable server restarts while a client waits: the wait, and the
    stream of an ``as_completed``, go on (the drain answers the held poll
    and ends the stream, the client retries while the server is down) and
    end with the tasks' real ends."""
    (tmp_path / "service.py").write_text(SERVICE)
    port = free_port()
    args = ["service.py:svc", "--backend", "diskcache://./data"]
    outcome: list[object] = []
    ended: list[object] = []
    with serving(args, tmp_path, port=port) as (proc, base):
        client = SyncHTTPClient(base)
        task = client.nap.submit(seconds=2)
        others = [client.nap.submit(seconds=s) for s in (2, 2.5)]

        def wait() -> None:
            try:
                outcome.append(task.wait(timeout=60))
            except BaseException as exc:  # checked below
                outcome.append(exc)

        def as_completed() -> None:
            try:
                ended.extend(errands.as_completed(others, timeout=60))
            except BaseException as exc:  # checked below
                ended.append(exc)

        threads = [threading.Thread(target=wait), threading.Thread(target=as_completed)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while not HELD_TWO.search(httpx.get(f"{base}/metrics").text):
            assert time.monotonic() < deadline, "the waits were not held"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not outcome and not ended, (outcome, ended)  # still waiting while the server is down
    with serving(args, tmp_path, port=port):
        for thread in threads:
            thread.join(timeout=60)
        assert outcome == [errands.TaskStatus.SUCCESS]
        assert ended == others
        assert task.get() == "rested"
        client.close()


def test_plain_calls_keep_one_connection_and_drop_one_the_server_closed(tmp_path: Path) -> None:
    """The sync client's plain calls go over kept-alive ``http.client``
    connections: calls one after another share one.  After a server
    restart, the idle connection that the old server closed is dropped
    before use, and the next call goes through on a new one: no error, and
    nothing sent on a dead connection."""
    (tmp_path / "service.py").write_text(SERVICE)
    port = free_port()
    with serving(["service.py:svc"], tmp_path, port=port) as (proc, base):
        client = SyncHTTPClient(base)
        plain = client._plain
        assert plain is not None  # a plain http:// URL, no proxy, no transport given
        for n in range(5):
            task = client.add.submit(a=n, b=1)
            task.wait(timeout=30)
            assert task.get() == n + 1
        assert len(plain._idle) == 1
        kept = plain._idle[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    with serving(["service.py:svc"], tmp_path, port=port):
        task = client.add.submit(a=2, b=3)
        task.wait(timeout=30)
        assert task.get() == 5
        assert len(plain._idle) == 1 and plain._idle[0] is not kept
        client.close()
        assert plain._idle == []


def test_a_client_whose_url_a_proxy_serves_keeps_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment is httpx's to use: such a client sends
    every call through httpx, as before.  (Multipart uploads do too:
    ``test_cli_client.py``'s file arguments.)"""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    with SyncHTTPClient(url) as direct:
        assert direct._plain is not None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with SyncHTTPClient(url) as proxied:
        assert proxied._plain is None
