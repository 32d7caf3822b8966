"""HTTP throughput of errands under hypercorn's trio worker and uvicorn, beside a bare ASGI app.

Run it::

    python benchmarks/http.py [--sequential S] [--concurrent N] [--tasks T] [--connections C]
                              [--client raw|httpx] [--repeat R] [--servers hypercorn,uvicorn]
    python benchmarks/http.py --quick        # seconds: a smoke run, figures meaningless

What it measures, in one run, for two apps under the same server:

* **errands**: ``errands.adapters.asgi.create_app(svc)`` with its defaults (the
  memory backend, 32 engine workers) for a service of one no-op ``async def``
  task, ``noop``; the engine starts through the ASGI lifespan (under hypercorn's
  trio worker it runs in the server's loop, under uvicorn in its own trio
  thread).
* **bare app** (the reference): a raw ASGI callable, written below, that reads
  the request body and answers every request with a fixed small JSON body (the
  size of errands' answer to a submit), with lifespan support.

and three workloads, from this process:

* **sequential submit**: one ``httpx.Client``, one connection, S
  ``POST /noop/submit`` one at a time (the p50 and p99 latency too);
* **concurrent submit**: C trio worker coroutines, one keep-alive connection
  each, sharing N submits;
* **end to end**: T no-op tasks: C workers submit them all (so many are in
  flight), then C workers poll ``GET /noop/status?task_id=`` for each until it
  is final (1 ms between polls of a task that is not).  Timed from the first
  submit until every task was seen final; for the bare app this is the same two
  requests per task.

The concurrent workloads use a minimal raw HTTP/1.1 client (``_rawhttp.RawConnection``)
by default: on two cores an ``httpx.AsyncClient`` is itself the limit, below
either server (``--client httpx`` shows it).

Each server runs in its own process (``python benchmarks/http.py --serve ...``,
started here on a listening socket bound to 127.0.0.1 port 0 and handed over,
and stopped at the end by its PID with SIGTERM).  Not a thread of this process:
there the httpx client's Python work would hold the same GIL and be charged to
the server.  One process per server and app, all started before the warm-up.
The client and the servers share the machine's cores, so the server CPU time
per request (read from ``/proc/PID/stat``) and the share of a core the client
used are printed too: a client near 100 % busy is the limit, and then the
ratios understate the difference between the apps; CPU per request does not
depend on that.

Each measurement is warmed up once, then repeated R times in rounds (one of
each per round, so a noisy moment hits all of them); the tables show the
median and the min-max.  Ratios are taken within each round, then their median
is shown.  Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import os
import sys

# ``python benchmarks/http.py`` puts benchmarks/ first on sys.path, where this
# file's name would shadow the standard library's ``http`` (which httpx,
# hypercorn and uvicorn import).  Move that folder to the end: the standard
# library comes first, and ``import _common`` still finds the shared module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import importlib.util
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol
from urllib.parse import quote

import _common
import attrs
import httpx
import trio
from _common import NOISE_NOTE, Columns, Latency, Series, load, met, run, version
from _rawhttp import RawConnection

import errands

#: The issue's goal: errands' submit rate >= this share of the bare app's.
SUBMIT_TARGET = 0.6
CONNECTIONS = 32
SERVERS = ("hypercorn", "uvicorn")
APPS = ("bare", "errands")
WORKLOADS = ("sequential", "concurrent", "end to end")
SUBMIT = "/noop/submit"
STATUS = "/noop/status"
JSON_HEADERS = {"content-type": "application/json"}
RAW_SUBMIT = (
    f"POST {SUBMIT} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    "content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
).encode()
RAW_STATUS = f"GET {STATUS}?task_id=%s HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()
RAW_READYZ = b"GET /readyz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
CLIENTS = ("raw", "httpx")
FINAL = {"success", "failure", "cancelled"}
#: Seconds between two status polls of one task that is not final yet.
POLL_DELAY = 0.001
TIMEOUT = httpx.Timeout(30.0)
CLOCK_TICKS = _common.CLOCK_TICKS
UVICORN_MISSING = "uvicorn not installed (pip install 'errands[uvicorn]'): its table is skipped"
BENTOML_SKIPPED = (
    "BentoML: skipped; the comparison needs `pip install bentoml` (an equivalent "
    "@bentoml.task service under `bentoml serve`)"
)

perf_counter = time.perf_counter

# ---------------------------------------------------------------------- the apps

noops = errands.Service("bench-http")


@noops.task
async def noop() -> None:
    pass


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

#: The bare app's answer: the size of errands' answer to a submit (a 22-character id).
BARE_BODY = b'{"task_id":"AAAAAAAAAAAAAAAAAAAAAA","status":"success"}'
BARE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BARE_BODY)).encode()),
]


async def bare_app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """The reference: a raw ASGI app answering every request with ``BARE_BODY``."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        while (await receive()).get("more_body", False):
            pass  # read the body, as an endpoint must
        await send({"type": "http.response.start", "status": 200, "headers": BARE_HEADERS})
        await send({"type": "http.response.body", "body": BARE_BODY})


# ---------------------------------------------------------------------- the servers


def serve(server: str, app_name: str, fd: int) -> int:
    """Serve one app on the listening socket ``fd`` until SIGTERM/SIGINT or stdin closes."""
    from errands.adapters.asgi import create_app

    app: Any = bare_app if app_name == "bare" else create_app(noops)

    def watch_parent() -> None:
        # Unbuffered: a daemon thread blocked in a buffered read aborts interpreter exit.
        while os.read(0, 4096):
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # stdin closed: the benchmark is gone

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    if server == "hypercorn":
        import hypercorn.config
        import hypercorn.trio

        config = hypercorn.config.Config()
        config.bind = [f"fd://{fd}"]
        config.accesslog = None
        config.loglevel = "WARNING"
        config.graceful_timeout = 5

        async def until_signalled() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

        async def main() -> None:
            await hypercorn.trio.serve(app, config, shutdown_trigger=until_signalled)

        trio.run(main)
    else:
        import uvicorn

        uv_config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
        uvicorn.Server(uv_config).run(sockets=[socket.socket(fileno=fd)])
    return 0


class Server:
    """One server process serving one app on 127.0.0.1."""

    def __init__(self, server: str, app: str) -> None:
        self.server, self.app = server, app
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
            fd = listener.fileno()
            argv = [sys.executable, os.path.abspath(__file__), "--serve", server, app, str(fd)]
            self.process = subprocess.Popen(
                argv,
                pass_fds=(fd,),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                **_common.SERVER_SESSION,
            )
        finally:
            listener.close()  # the server process holds its own copy
        self.pid = self.process.pid

    def wait_ready(self) -> None:
        _common.wait_until_ready(self.process, self.url, str(self))

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far, or None (no ``/proc``)."""
        return _common.process_cpu_seconds(self.pid)

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it has not stopped within ``STOP_TIMEOUT``."""
        code = _common.stop_process(self.process, str(self))
        if self.process.stdin is not None:
            self.process.stdin.close()
        # uvicorn re-raises the SIGTERM it handled once it has shut down.
        if code not in (0, -signal.SIGTERM):
            print(f"{self} exited with {code}", file=sys.stderr)

    def __str__(self) -> str:
        return f"{self.server} server for the {self.app} app (PID {self.pid})"


# ---------------------------------------------------------------------- the client


class Meter:
    """Wall time, this process's CPU time and the server's over one timed stretch."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.elapsed = self.client_cpu = 0.0
        self.server_cpu: float | None = None

    def start(self) -> None:
        self._server0 = self.server.cpu_seconds()
        self._client0 = time.process_time()
        self._wall0 = perf_counter()

    def stop(self) -> None:
        self.elapsed = perf_counter() - self._wall0
        self.client_cpu = time.process_time() - self._client0
        server1 = self.server.cpu_seconds()
        if server1 is not None and self._server0 is not None:
            self.server_cpu = server1 - self._server0


def _expect_ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}")


def _shares(n: int, workers: int) -> list[int]:
    return [n // workers + (i < n % workers) for i in range(workers)]


def sequential(meter: Meter, n: int) -> list[float]:
    """Latencies (seconds) of N submits one at a time on one connection."""
    latencies = []
    with httpx.Client(base_url=meter.server.url, timeout=TIMEOUT) as client:
        _expect_ok(client.post(SUBMIT, content=b"{}", headers=JSON_HEADERS))  # connect
        meter.start()
        for _ in range(n):
            t0 = perf_counter()
            response = client.post(SUBMIT, content=b"{}", headers=JSON_HEADERS)
            latencies.append(perf_counter() - t0)
            _expect_ok(response)
        meter.stop()
    return latencies


class Session(Protocol):
    """One client worker's way to the server (the concurrent workloads)."""

    async def submit(self) -> str:
        """Submit a no-op task; returns its id."""
        ...

    async def status(self, task_id: str) -> str:
        """The task's status name."""
        ...


class RawSession(RawConnection):
    """A worker's raw connection (``_rawhttp``: httpx would be the limit here)."""

    async def submit(self) -> str:
        task_id: str = json.loads(await self.request(RAW_SUBMIT))["task_id"]
        return task_id

    async def status(self, task_id: str) -> str:
        head = RAW_STATUS % quote(task_id).encode()
        status: str = json.loads(await self.request(head))["status"]
        return status


class HttpxSession:
    """One worker's use of a shared ``httpx.AsyncClient`` (``--client httpx``)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def submit(self) -> str:
        response = await self._client.post(SUBMIT, content=b"{}", headers=JSON_HEADERS)
        _expect_ok(response)
        task_id: str = response.json()["task_id"]
        return task_id

    async def status(self, task_id: str) -> str:
        response = await self._client.get(STATUS, params={"task_id": task_id})
        _expect_ok(response)
        status: str = response.json()["status"]
        return status


@asynccontextmanager
async def open_sessions(kind: str, url: str, connections: int) -> AsyncIterator[list[Session]]:
    """``connections`` sessions, each connection opened and used once before the timing."""
    if kind == "raw":
        raw = [await RawSession.open(url) for _ in range(connections)]
        try:
            for connection in raw:
                await connection.request(RAW_READYZ)
            yield list(raw)
        finally:
            for connection in raw:
                await connection.aclose()
        return
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=TIMEOUT) as client:

        async def connect() -> None:
            _expect_ok(await client.get("/readyz"))

        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(connect)
        yield [HttpxSession(client) for _ in range(connections)]


async def _submit_all(sessions: list[Session], n: int) -> list[str]:
    ids: list[str] = []

    async def submitter(session: Session, count: int) -> None:
        for _ in range(count):
            ids.append(await session.submit())

    async with trio.open_nursery() as nursery:
        for session, count in zip(sessions, _shares(n, len(sessions)), strict=True):
            nursery.start_soon(submitter, session, count)
    return ids


async def concurrent(meter: Meter, n: int, connections: int, kind: str) -> None:
    """N submits from ``connections`` workers, one connection each."""
    async with open_sessions(kind, meter.server.url, connections) as sessions:
        meter.start()
        await _submit_all(sessions, n)
        meter.stop()


async def end_to_end(meter: Meter, n: int, connections: int, kind: str) -> float:
    """Submit N tasks, then poll each until final; returns the status polls per task."""
    polls = 0
    statuses: list[str] = []
    async with open_sessions(kind, meter.server.url, connections) as sessions:
        meter.start()
        pending: Iterator[str] = iter(await _submit_all(sessions, n))

        async def poller(session: Session) -> None:
            nonlocal polls
            for task_id in pending:  # shared: each id goes to one poller
                while True:
                    polls += 1
                    status = await session.status(task_id)
                    if status in FINAL:
                        statuses.append(status)
                        break
                    await trio.sleep(POLL_DELAY)

        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(poller, session)
        meter.stop()
    bad = [s for s in statuses if s != "success"]
    if bad or len(statuses) != n:
        raise RuntimeError(f"{len(bad)} of {n} tasks did not succeed (first: {bad[:1]})")
    return polls / n


# ---------------------------------------------------------------------- running and reporting


@attrs.frozen(kw_only=True)
class Plan:
    """What one run does."""

    sequential: int
    concurrent: int
    tasks: int
    connections: int
    client: str
    repeat: int

    def count(self, workload: str) -> int:
        return {"sequential": self.sequential, "concurrent": self.concurrent}.get(
            workload, self.tasks
        )

    def warm_up(self) -> Plan:
        return attrs.evolve(
            self,
            sequential=max(self.sequential // 4, 20),
            concurrent=max(self.concurrent // 4, 20),
            tasks=max(self.tasks // 4, 20),
        )


class Figures:
    """One server's figures across the rounds."""

    def __init__(self) -> None:
        pairs = [(w, a) for w in WORKLOADS for a in APPS]
        self.rate = {key: Series() for key in pairs}
        self.server_us = {key: Series() for key in pairs}
        self.server_busy = {key: Series() for key in pairs}
        self.client_busy = {key: Series() for key in pairs}
        self.ratio = {w: Series() for w in WORKLOADS}
        self.latency = {a: Latency() for a in APPS}
        self.polls = Series()


def measure(server: Server, workload: str, plan: Plan) -> tuple[Meter, Any]:
    """Run one workload once against ``server``; returns its meter and its extra figure."""
    meter = Meter(server)
    n = plan.count(workload)
    if workload == "sequential":
        extra: Any = run(sequential, meter, n)
    elif workload == "concurrent":
        extra = run(concurrent, meter, n, plan.connections, plan.client)
    else:
        extra = run(end_to_end, meter, n, plan.connections, plan.client)
    return meter, extra


def one_round(
    servers: dict[tuple[str, str], Server], figures: dict[str, Figures], plan: Plan
) -> None:
    """Each workload on each server, the bare app just before errands."""
    for name, fig in figures.items():
        for workload in WORKLOADS:
            n = plan.count(workload)
            rates = {}
            for app in APPS:
                meter, extra = measure(servers[name, app], workload, plan)
                key = (workload, app)
                rates[app] = n / meter.elapsed
                fig.rate[key].add(rates[app])
                fig.client_busy[key].add(meter.client_cpu / meter.elapsed * 100)
                if meter.server_cpu is not None:
                    fig.server_us[key].add(meter.server_cpu / n * 1e6)
                    fig.server_busy[key].add(meter.server_cpu / meter.elapsed * 100)
                if workload == "sequential":
                    fig.latency[app].add(extra)
                elif workload == "end to end" and app == "errands":
                    fig.polls.add(extra)
            fig.ratio[workload].add(rates["errands"] / rates["bare"])


def _uvicorn_flavour() -> str:
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}, {loop}"


def _title(name: str) -> str:
    if name == "hypercorn":
        return f"hypercorn {version('hypercorn')}, trio worker, errands' engine in its loop"
    return f"uvicorn {version('uvicorn')} ({_uvicorn_flavour()}), errands' engine in a trio thread"


def report(name: str, fig: Figures, plan: Plan) -> None:
    title, repeat, conns = _title(name), plan.repeat, plan.connections
    client = "raw client" if plan.client == "raw" else "httpx.AsyncClient"
    labels = {
        "sequential": "sequential submit, req/s (httpx.Client)",
        "concurrent": f"concurrent submit, req/s ({conns} conns, {client})",
        "end to end": f"end to end, tasks/s ({conns} conns, {client})",
    }
    app_labels = {"bare": "bare app", "errands": "errands"}
    table = Columns(label=60, value=9)
    print(f"== {title}")
    print(f"rates (median of {repeat} [min-max])")
    for workload in WORKLOADS:
        for app in APPS:
            print(table.rate(f"{app_labels[app]:<9}{labels[workload]}", fig.rate[workload, app]))
    print()
    print("ratios errands / bare app (median of per-round ratios [min-max])")
    for workload in WORKLOADS:
        series = fig.ratio[workload]
        if workload == "end to end":
            print(table.ratio("ratio end to end tasks/s", series))
        else:
            note = f"target >= {SUBMIT_TARGET:.2f}: {met(series.median, SUBMIT_TARGET)}"
            print(table.ratio(f"ratio {workload} submit rate", series, note))
    print()
    print(f"sequential submit latency, microseconds (median of {repeat} [min-max])")
    latency_table = Columns(label=26, value=9, span=17)
    print(latency_table.latency_header())
    for app in APPS:
        print(latency_table.latency(f"{app_labels[app]} ({plan.sequential})", fig.latency[app]))
    print()
    print(
        f"server CPU, microseconds per request (end to end: per task; median of {repeat} "
        "[min-max]), and the median share of one core the server and the client used"
    )
    cpu_table = Columns(label=26, value=9, span=17)
    for workload in WORKLOADS:
        for app in APPS:
            key = (workload, app)
            label = f"{app_labels[app]:<9}{workload}"
            if not fig.server_us[key].values:
                print(f"  {label}: n/a (no /proc)")
                continue
            busy = (
                f"server {fig.server_busy[key].median:3.0f}%, "
                f"client {fig.client_busy[key].median:3.0f}%"
            )
            print(cpu_table.rate(label, fig.server_us[key], busy))
    print(table.ratio("errands end to end: status polls per task", fig.polls))
    print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sequential", type=int, default=2_000, help="submits one at a time (default 2000)"
    )
    parser.add_argument(
        "--concurrent", type=int, default=10_000, help="concurrent submits (default 10000)"
    )
    parser.add_argument(
        "--tasks", type=int, default=5_000, help="tasks submitted then awaited (default 5000)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=CONNECTIONS,
        help=f"connections and client workers of the concurrent runs (default {CONNECTIONS})",
    )
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="raw",
        help="the concurrent runs' client: a minimal raw HTTP/1.1 one (default) or httpx",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians shown (default 3)")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, of {', '.join(SERVERS)} (default both)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 50 sequential, 200 concurrent, 100 tasks, 1 repeat",
    )
    parser.add_argument("--serve", nargs=3, metavar=("SERVER", "APP", "FD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        server, app, fd = args.serve
        return serve(server, app, int(fd))
    if args.quick:
        args.sequential, args.concurrent, args.tasks, args.repeat = 50, 200, 100, 1
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not names or set(names) - set(SERVERS):
        parser.error(f"--servers: a comma-separated list of {', '.join(SERVERS)}")
    if "uvicorn" in names and importlib.util.find_spec("uvicorn") is None:
        print(UVICORN_MISSING)
        names.remove("uvicorn")
        if not names:
            return 0
    plan = Plan(
        sequential=args.sequential,
        concurrent=args.concurrent,
        tasks=args.tasks,
        connections=args.connections,
        client=args.client,
        repeat=args.repeat,
    )
    if min(plan.sequential, plan.concurrent, plan.tasks, plan.connections, plan.repeat) < 1:
        parser.error("counts must be positive")

    print("errands HTTP benchmark: errands' ASGI app beside a bare ASGI app, same server")
    print(
        _common.versions(
            [
                f"hypercorn {version('hypercorn')}",
                f"uvicorn {version('uvicorn')} ({_uvicorn_flavour()})",
                f"httpx {version('httpx')}",
            ]
        )
    )
    client = "a minimal raw HTTP/1.1 client" if plan.client == "raw" else "httpx.AsyncClient"
    print(
        f"{plan.sequential} sequential submits (httpx.Client); {plan.concurrent} concurrent "
        f"submits and {plan.tasks} no-op tasks end to end on {plan.connections} connections "
        f"({client}); {plan.repeat} repeat(s); memory backend; load average at start: {load()}"
    )
    print(
        "each server in its own process on 127.0.0.1, the client in this one: "
        f"they share the {os.cpu_count()} cores"
    )
    print(NOISE_NOTE)
    if importlib.util.find_spec("bentoml") is None:
        print(BENTOML_SKIPPED)
    else:
        print("BentoML: installed, but this script does not measure it yet")
    print()

    wall = perf_counter()
    servers: dict[tuple[str, str], Server] = {}
    figures = {name: Figures() for name in names}
    try:
        for name in names:
            for app in APPS:
                servers[name, app] = Server(name, app)
        for server in servers.values():
            server.wait_ready()
        warm = plan.warm_up()
        for server in servers.values():
            for workload in WORKLOADS:
                measure(server, workload, warm)
        for _ in range(plan.repeat):
            one_round(servers, figures, plan)
    finally:
        for server in servers.values():
            server.stop()
    elapsed = perf_counter() - wall

    for name, fig in figures.items():
        report(name, fig, plan)
    print(f"took {elapsed:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
