"""The ASGI app under real servers on 127.0.0.1: what only a real server shows.

* hypercorn's trio worker serving the app alone: lifespan runs the engine in
  the server's own loop;
* hypercorn's asyncio worker: the engine runs in its own trio thread;
* mounted in Starlette and FastAPI under uvicorn, with the host's lifespan
  calling ``running()`` or with no host code at all (lazy start).

Each server listens on a socket bound to port 0 and is stopped by the test.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import fastapi
import httpx
import hypercorn.asyncio
import hypercorn.config
import hypercorn.trio
import outcome
import pytest
import starlette.applications
import starlette.responses
import starlette.routing
import trio
import uvicorn

import errands
from errands.adapters.asgi import ErrandsApp, create_app
from tests.adapters._http import Chunks, call_asgi, checking_client, wait_final

pytestmark = pytest.mark.realtime

svc = errands.Service("served")

#: The trio token of the run each ``where`` task ran in.
TOKENS: list[trio.lowlevel.TrioToken] = []

#: Submits send JSON as such (anything else is a 415).
JSON_TYPE = {"content-type": "application/json"}


@svc.task
async def where() -> dict[str, Any]:
    """Where the engine runs: its thread, and (kept aside) its trio run."""
    TOKENS.append(trio.lowlevel.current_trio_token())
    thread = threading.current_thread()
    return {"thread": thread.name, "ident": thread.ident}


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
def greet(name: str) -> str:
    return f"hello {name}"


@svc.task
async def fail(message: str) -> int:
    raise ValueError(message)


SERVER_LOG = logging.getLogger("tests.adapters.servers")
TIMEOUT = 30
MAX_BODY = 64 * 1024


def hypercorn_config(bind: str) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = [bind]
    config.graceful_timeout = 2
    config.errorlog = SERVER_LOG  # hypercorn would otherwise install a handler of its own
    return config


def listening_socket() -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener says TCP; without it every answer waits out a delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "errands-engine" and t.is_alive()]


async def exercise(client: httpx.AsyncClient, prefix: str = "") -> dict[str, Any]:
    """Submit, status, get (and a few errors) over real HTTP; where the engine ran."""
    assert (await client.get(f"{prefix}/readyz")).status_code == 200
    response = await client.post(f"{prefix}/add/submit", json={"a": 20, "b": 22})
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    status = await wait_final(client, task_id, route=f"{prefix}/add")
    assert status["status"] == "success"
    got = await client.get(f"{prefix}/add/get", params={"task_id": task_id})
    assert (got.status_code, got.headers["content-type"], got.json()) == (
        200,
        "application/json",
        42,
    )

    greeting = await client.post(f"{prefix}/greet/submit", json={"name": "ada"})
    greeting_id = greeting.json()["task_id"]
    await wait_final(client, greeting_id, route=f"{prefix}/greet")
    got = await client.get(f"{prefix}/greet/get", params={"task_id": greeting_id})
    assert (got.headers["content-type"], got.text) == ("text/plain; charset=utf-8", "hello ada")

    failed = await client.post(f"{prefix}/fail/submit", json={"message": "on purpose"})
    failed_id = failed.json()["task_id"]
    await wait_final(client, failed_id, route=f"{prefix}/fail")
    got = await client.get(f"{prefix}/fail/get", params={"task_id": failed_id})
    assert got.status_code == 500
    assert "ValueError: on purpose" in got.json()["error"]

    assert (await client.post(f"{prefix}/add/submit", json={"a": "1"})).status_code == 422
    assert (
        await client.post(f"{prefix}/add/submit", content=b"{", headers=JSON_TYPE)
    ).status_code == 400
    unknown = await client.get(f"{prefix}/add/status", params={"task_id": "A" * 22})
    assert unknown.status_code == 404
    wrong = await client.get(f"{prefix}/add/submit")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")

    # Over the size limit, declared or streamed.  (Bodies are Chunks, not bytes or
    # generators: httpx would leave an unfinished async generator when the server
    # answers before the body is sent.)
    url = client.base_url.join(f"{prefix}/add/submit".lstrip("/"))
    size = MAX_BODY * 8
    for stream, length in [
        (Chunks(b" " * size), {"content-length": str(size)}),
        (Chunks(*[b" " * 4096] * (size // 4096)), {"transfer-encoding": "chunked"}),
    ]:
        headers = {"host": url.netloc.decode(), **JSON_TYPE, **length}
        big = await client.send(httpx.Request("POST", url, headers=headers, stream=stream))
        assert big.status_code == 413

    # Concurrent requests cross into the engine together.
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        submitted = await client.post(f"{prefix}/add/submit", json={"a": i, "b": 1})
        one_id = submitted.json()["task_id"]
        await wait_final(client, one_id, route=f"{prefix}/add")
        answer = await client.get(f"{prefix}/add/get", params={"task_id": one_id})
        results[i] = answer.json()

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(one, i)
    assert results == {i: i + 1 for i in range(16)}

    here = await client.post(f"{prefix}/where/submit", json={})
    here_id = here.json()["task_id"]
    await wait_final(client, here_id, route=f"{prefix}/where")
    location: dict[str, Any] = (
        await client.get(f"{prefix}/where/get", params={"task_id": here_id})
    ).json()
    return location


# --------------------------------------------------------------------------- asyncio servers


class AsyncioServerThread:
    """An asyncio server in a thread: ``serve(shutdown_trigger)`` until :meth:`stop`."""

    def __init__(self, serve: Callable[[Callable[[], Awaitable[Any]]], Awaitable[None]]) -> None:
        self._serve = serve
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="asyncio-server", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._amain())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._serve(shutdown_trigger=self._stop.wait)

    def start(self) -> None:
        self.thread.start()
        assert self._ready.wait(TIMEOUT)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self.thread.is_alive():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already ended
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the server did not stop"
        if self.error is not None:
            raise self.error


@asynccontextmanager
async def asyncio_server(
    serve: Callable[[Callable[[], Awaitable[Any]]], Awaitable[None]],
) -> AsyncIterator[AsyncioServerThread]:
    server = AsyncioServerThread(serve)
    await trio.to_thread.run_sync(server.start)
    try:
        yield server
    finally:
        await trio.to_thread.run_sync(server.stop)


def serve_uvicorn(
    app: Any, sock: socket.socket
) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[None]]:
    async def serve(shutdown_trigger: Callable[[], Awaitable[Any]]) -> None:
        config = uvicorn.Config(
            app,
            lifespan="on",
            loop="asyncio",
            http="h11",
            ws="none",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        running = asyncio.create_task(server.serve(sockets=[sock]))
        stop = asyncio.create_task(shutdown_trigger())
        await asyncio.wait([running, stop], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await running
        stop.cancel()

    return serve


# --------------------------------------------------------------------------- the tests


async def test_hypercorn_trio_worker_runs_the_engine_in_its_loop() -> None:
    app = create_app(svc, grace=1, max_body_size=MAX_BODY)
    shutdown = trio.Event()
    before = len(engine_threads())

    async def use(base_url: str) -> tuple[dict[str, Any], str]:
        with trio.fail_after(TIMEOUT):
            async with checking_client(httpx.AsyncHTTPTransport(), base_url) as client:
                location = await exercise(client)
                return location, (await client.get("/metrics")).text

    async with trio.open_nursery() as nursery:
        serve = partial(
            hypercorn.trio.serve,
            app,
            hypercorn_config("127.0.0.1:0"),
            shutdown_trigger=shutdown.wait,
        )
        binds = await nursery.start(serve)
        try:
            # Captured, not raised here: a failure stops the server through its
            # shutdown trigger rather than by cancellation, which used to hang (see
            # test_cancelled_trio_server_stops) and still skips the grace period.
            result = await outcome.acapture(use, binds[0])
        finally:
            shutdown.set()
    location, metrics = result.unwrap()
    assert binds[0].startswith("http://127.0.0.1:")
    # The same thread and the same trio run as the server (this test's run).
    assert location["ident"] == threading.get_ident()
    assert TOKENS[-1] is trio.lowlevel.current_trio_token()
    assert "errands_up 1" in metrics
    assert len(engine_threads()) == before  # no engine thread was started
    await assert_engine_down(app)


async def assert_engine_down(app: ErrandsApp) -> None:
    """After lifespan shutdown the engine is down (asked without starting one)."""
    _, _, body = await call_asgi(app, {"path": "/metrics"})
    assert b"errands_up 0.0\n" in body


async def test_hypercorn_asyncio_worker_runs_the_engine_in_a_thread() -> None:
    app = create_app(svc, grace=1, max_body_size=MAX_BODY)
    sock = listening_socket()
    port = sock.getsockname()[1]
    config = hypercorn_config(f"fd://{sock.detach()}")  # hypercorn owns and closes it
    before = len(engine_threads())
    with trio.fail_after(TIMEOUT):
        async with asyncio_server(partial(hypercorn.asyncio.serve, app, config)) as server:
            transport = httpx.AsyncHTTPTransport()
            async with checking_client(transport, f"http://127.0.0.1:{port}") as client:
                location = await exercise(client)
            assert len(engine_threads()) == before + 1
    assert location["thread"] == "errands-engine"
    assert location["ident"] not in (threading.get_ident(), server.thread.ident)
    assert len(engine_threads()) == before  # lifespan shutdown stopped it
    await assert_engine_down(app)


def starlette_host(errands_app: ErrandsApp, *, lifespan: bool) -> starlette.applications.Starlette:
    @asynccontextmanager
    async def run_errands(_: starlette.applications.Starlette) -> AsyncIterator[None]:
        async with errands_app.running():
            yield

    async def hello(_: object) -> starlette.responses.PlainTextResponse:
        return starlette.responses.PlainTextResponse("host here")

    return starlette.applications.Starlette(
        routes=[
            starlette.routing.Route("/hello", hello),
            starlette.routing.Mount("/tasks-api", app=errands_app),
        ],
        lifespan=run_errands if lifespan else None,
    )


def fastapi_host(errands_app: ErrandsApp, *, lifespan: bool) -> fastapi.FastAPI:
    @asynccontextmanager
    async def run_errands(_: fastapi.FastAPI) -> AsyncIterator[None]:
        async with errands_app.running():
            yield

    host = fastapi.FastAPI(lifespan=run_errands if lifespan else None)

    @host.get("/hello")
    async def hello() -> starlette.responses.PlainTextResponse:
        return starlette.responses.PlainTextResponse("host here")

    host.mount("/tasks-api", errands_app)
    return host


@pytest.mark.parametrize("host", [starlette_host, fastapi_host], ids=["starlette", "fastapi"])
@pytest.mark.parametrize("lifespan", [True, False], ids=["host-lifespan", "lazy-start"])
async def test_mounted_under_uvicorn(host: Callable[..., Any], lifespan: bool) -> None:
    errands_app = create_app(svc, grace=1, max_body_size=MAX_BODY)
    sock = listening_socket()
    port = sock.getsockname()[1]
    before = len(engine_threads())
    try:
        with trio.fail_after(TIMEOUT):
            serve = serve_uvicorn(host(errands_app, lifespan=lifespan), sock)
            async with asyncio_server(serve) as server:
                transport = httpx.AsyncHTTPTransport()
                async with checking_client(transport, f"http://127.0.0.1:{port}") as client:
                    assert (await client.get("/hello")).text == "host here"
                    up = "errands_up 1" if lifespan else "errands_up 0"
                    assert up in (await client.get("/tasks-api/metrics")).text
                    location = await exercise(client, "/tasks-api")
                    assert "errands_up 1" in (await client.get("/tasks-api/metrics")).text
                    # root_path: the mount prefix is not part of the routes it lists
                    schema = (await client.get("/tasks-api/schema.json")).json()
                    routes = {r["route"] for r in schema["routes"]}
                    assert routes == {"/where", "/add", "/greet", "/fail"}
                    assert len(engine_threads()) == before + 1
    finally:
        sock.close()
        await trio.to_thread.run_sync(errands_app.close)
    assert location["thread"] == "errands-engine"
    assert location["ident"] not in (threading.get_ident(), server.thread.ident)
    assert len(engine_threads()) == before


CANCELLED_SERVER = """
from functools import partial

import hypercorn.config
import hypercorn.trio
import trio

import errands
from errands.adapters.asgi import create_app

svc = errands.Service("cancelled")


@svc.task
async def noop() -> None:
    pass


async def main() -> None:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    with trio.move_on_after(0.5):  # as a timeout or Ctrl+C around the server would
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(hypercorn.trio.serve, create_app(svc), config))
    print("stopped", flush=True)


trio.run(main)
"""


def test_cancelled_trio_server_stops() -> None:
    """Cancelling the server (a timeout, Ctrl+C) stops the engine in its lifespan.

    In a subprocess, because it used to hang for good (cancelling open_engine's
    block never reached serve() in its shielded nursery).
    """
    done = subprocess.run(
        [sys.executable, "-c", CANCELLED_SERVER],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.stdout == "stopped\n", done.stderr
