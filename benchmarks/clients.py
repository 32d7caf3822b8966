"""errands' HTTP clients against ``errands serve``, beside raw httpx and polling loops.

Run it::

    python benchmarks/clients.py [--rounds R] [--submits S] [--waits K] [--nap D] [--many N]
    python benchmarks/clients.py --quick        # seconds: a smoke run, figures meaningless

One ``errands serve`` process (hypercorn's trio worker, ``--backend memory://``,
127.0.0.1, a free port) serves a service module written to a temporary folder:
``noop()`` (does nothing) and ``nap(seconds)`` (``trio.sleep``).  This process
is the client.  What it measures, in one run:

1. **client overhead, sequential submit**: S submits one at a time on one
   keep-alive connection, ``SyncHTTPClient(url).noop.submit()`` beside the same
   request sent with ``httpx.Client.post(url + "/noop/submit", json={})`` (the
   reference; it reads the task id from the answer too), and
   ``AsyncHTTPClient`` under trio beside ``httpx.AsyncClient`` under trio.
   Submits/s, p50/p99 latency, this process's CPU time per submit, and the
   rate ratio client / raw httpx.  The server does the same work for both.
   Section 2 also shows the part of the delay after the task's end (its
   ``finished_at`` on the server, the same machine's clock).
2. **waiting for one task**: K tasks ``nap(seconds=D)``, one after another,
   each submitted with the client; the *notice delay* is the time from the
   submit until the caller knows the task ended, minus D.  (a) ``task.wait()``
   (a long poll: the server answers when the task ends), beside (b) a loop
   that polls ``GET /nap/status`` every 100 ms and (c) one every 10 ms, as
   users write them.  The status requests per task are counted by the
   client's httpx transport (the submit is not counted).
3. **many tasks**: N tasks ``nap(seconds=(i % 20) * 0.01)`` submitted one after
   another, then waited: (a) ``errands.as_completed(tasks)`` (``POST
   /tasks/wait``, one request per batch of endings), (b) ``task.wait()`` on
   each in turn, (c) a loop polling every unfinished task's status every
   50 ms.  Timed from the end of the last submit until all are known final;
   also how long after the last task ended (the server's ``finished_at``, the
   same machine's clock) that was known, the requests made while waiting, and
   the CPU time spent meanwhile by this process and by the server (read from
   ``/proc/PID/stat``).  The server runs 32 tasks at once (``errands serve``'s
   default), so these naps keep it busy about as long whoever waits: the
   delay after the last end, the requests and the CPU tell the ways apart.

The server runs in its own process (started here, stopped at the end by its
PID with SIGTERM, which drains it); client and server share the machine's
cores.  Each measurement is warmed up once, then repeated R times in rounds
(one of each per round, so a noisy moment hits all of them); the tables show
the median and the min-max.  Ratios are taken within each round, then their
median is shown.  Benchmarks are not tests: nothing here asserts a speed.
"""

# ruff: noqa: E402
# (``python benchmarks/clients.py`` puts benchmarks/ first on sys.path, where
# benchmarks/http.py shadows the standard library's ``http``, which httpx
# imports; that folder moves to the end before the imports below.)

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common
import attrs
import httpx
from _common import NOISE_NOTE, Columns, Latency, Series, check_success, load, run, version

import errands
from errands.adapters.client import AsyncHTTPClient, HTTPTask, SyncHTTPClient

#: The service ``errands serve`` runs (written to a temporary folder).
SERVICE = '''\
"""The service of benchmarks/clients.py."""

import trio

import errands

svc = errands.Service("bench-clients")


@svc.task
async def noop() -> None:
    pass


@svc.task
async def nap(seconds: float) -> None:
    await trio.sleep(seconds)
'''
SERVICE_FILE = "errands_bench_clients_service.py"

SUBMITS = 1_000
WAITS = 40
NAP = 0.05
MANY = 200
#: Section 3: task i naps (i % SPREAD) * STEP seconds.
SPREAD = 20
STEP = 0.01
#: Section 2's polling loops (seconds between polls), and section 3's.
POLLS = (0.1, 0.01)
MANY_POLL = 0.05
ROUNDS = 5
FINAL = {"success", "failure", "cancelled"}
CLOCK_TICKS = _common.CLOCK_TICKS

perf_counter = time.perf_counter

# ---------------------------------------------------------------------- the server


class Server(_common.ServeProcess):
    """``errands serve`` in its own process, on 127.0.0.1, memory backend."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, source=SERVICE, module=SERVICE_FILE, backend="memory://")

    def workers(self) -> int | None:
        """How many tasks the server runs at once (``errands_workers`` in ``/metrics``)."""
        with httpx.Client(base_url=self.url) as client:
            for line in client.get("/metrics").text.splitlines():
                name, _, value = line.partition(" ")
                if name == "errands_workers":
                    return int(float(value))
        return None


# ---------------------------------------------------------------------- helpers


class CountingTransport(httpx.HTTPTransport):
    """httpx's transport, counting the requests sent through it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        return super().handle_request(request)


@attrs.frozen(kw_only=True)
class Submits:
    """One sequential-submit run: latencies (seconds), wall and CPU time."""

    latencies: list[float]
    elapsed: float
    cpu: float


class Meter:
    """Wall and this process's CPU time over one timed stretch."""

    def __init__(self) -> None:
        self._wall = perf_counter()
        self._cpu = time.process_time()

    def done(self, latencies: list[float]) -> Submits:
        return Submits(
            latencies=latencies,
            elapsed=perf_counter() - self._wall,
            cpu=time.process_time() - self._cpu,
        )


def _task_id(response: httpx.Response) -> str:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}")
    task_id: str = response.json()["task_id"]
    return task_id


def _status(response: httpx.Response) -> str:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}")
    status: str = response.json()["status"]
    return status


# ---------------------------------------------------------------------- 1. submit overhead


def sync_client_submits(url: str, n: int) -> Submits:
    latencies = []
    with SyncHTTPClient(url) as client:
        client.noop.submit()  # reads the schema, opens the connection
        meter = Meter()
        for _ in range(n):
            t0 = perf_counter()
            client.noop.submit()
            latencies.append(perf_counter() - t0)
        return meter.done(latencies)


def sync_raw_submits(url: str, n: int) -> Submits:
    latencies = []
    with httpx.Client() as http:
        _task_id(http.post(url + "/noop/submit", json={}))  # opens the connection
        meter = Meter()
        for _ in range(n):
            t0 = perf_counter()
            _task_id(http.post(url + "/noop/submit", json={}))
            latencies.append(perf_counter() - t0)
        return meter.done(latencies)


async def async_client_submits(url: str, n: int) -> Submits:
    latencies = []
    async with AsyncHTTPClient(url) as client:
        await client.noop.submit()
        meter = Meter()
        for _ in range(n):
            t0 = perf_counter()
            await client.noop.submit()
            latencies.append(perf_counter() - t0)
        return meter.done(latencies)


async def async_raw_submits(url: str, n: int) -> Submits:
    latencies = []
    async with httpx.AsyncClient() as http:
        _task_id(await http.post(url + "/noop/submit", json={}))
        meter = Meter()
        for _ in range(n):
            t0 = perf_counter()
            _task_id(await http.post(url + "/noop/submit", json={}))
            latencies.append(perf_counter() - t0)
        return meter.done(latencies)


SUBMITTERS: dict[str, Callable[[str, int], Any]] = {
    "sync client": sync_client_submits,
    "sync raw": sync_raw_submits,
    "async client": async_client_submits,
    "async raw": async_raw_submits,
}
SUBMIT_LABELS = {
    "sync client": "SyncHTTPClient .noop.submit()",
    "sync raw": "reference: httpx.Client.post",
    "async client": "AsyncHTTPClient .noop.submit() (trio)",
    "async raw": "reference: httpx.AsyncClient.post (trio)",
}
SUBMIT_PAIRS = {
    "sync": ("sync client", "sync raw", "SyncHTTPClient / httpx.Client"),
    "async": ("async client", "async raw", "AsyncHTTPClient / httpx.AsyncClient"),
}

# ---------------------------------------------------------------------- 2. waiting for one task


@attrs.frozen(kw_only=True)
class Waits:
    """One run of section 2 (seconds, and status requests per task)."""

    delays: list[float]  # submit -> known final, minus the nap
    after_end: list[float]  # the task's end (server clock) -> known final
    requests: float


def _after_end(tasks: list[HTTPTask], known: list[float]) -> list[float]:
    """Seconds from each task's ``finished_at`` to ``known`` (POSIX times, same
    machine); checks that every task succeeded.  One status request each."""
    infos = [task.get_info() for task in tasks]
    check_success([info.status for info in infos])
    return [
        when - info.finished_at.timestamp()
        for info, when in zip(infos, known, strict=True)
        if info.finished_at is not None
    ]


def wait_long_poll(url: str, k: int, nap: float) -> Waits:
    """(a) ``task.wait()``: submit, then one long poll until the task ends."""
    transport = CountingTransport()
    delays, tasks, known = [], [], []
    requests = 0
    with SyncHTTPClient(url, transport=transport) as client:
        client.server_info()
        for _ in range(k):
            t0 = perf_counter()
            task = client.nap.submit(seconds=nap)
            before = transport.count
            task.wait()
            delays.append(perf_counter() - t0 - nap)
            known.append(time.time())
            requests += transport.count - before
            tasks.append(task)
        after_end = _after_end(tasks, known)  # not timed, not counted
    return Waits(delays=delays, after_end=after_end, requests=requests / k)


def wait_polling(url: str, k: int, nap: float, every: float) -> Waits:
    """(b), (c): submit with the client, then ``GET /nap/status`` every ``every`` s."""
    transport = CountingTransport()
    delays, tasks, known = [], [], []
    with SyncHTTPClient(url) as client, httpx.Client(base_url=url, transport=transport) as http:
        client.server_info()
        _status(http.get("/readyz"))  # opens the connection
        transport.count = 0
        for _ in range(k):
            t0 = perf_counter()
            task = client.nap.submit(seconds=nap)
            while _status(http.get("/nap/status", params={"task_id": task.id})) not in FINAL:
                time.sleep(every)
            delays.append(perf_counter() - t0 - nap)
            known.append(time.time())
            tasks.append(task)
        after_end = _after_end(tasks, known)
    return Waits(delays=delays, after_end=after_end, requests=transport.count / k)


WAITERS = ("long poll", "poll slow", "poll fast")


def _wait_labels() -> dict[str, str]:
    slow, fast = (f"{s * 1000:.0f} ms" for s in POLLS)
    return {
        "long poll": "(a) task.wait() (long poll)",
        "poll slow": f"(b) reference: poll GET /nap/status every {slow}",
        "poll fast": f"(c) reference: poll GET /nap/status every {fast}",
    }


def measure_wait(url: str, waiter: str, k: int, nap: float) -> Waits:
    if waiter == "long poll":
        return run(wait_long_poll, url, k, nap)  # type: ignore[no-any-return]
    every = POLLS[0] if waiter == "poll slow" else POLLS[1]
    return run(wait_polling, url, k, nap, every)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- 3. many tasks


@attrs.frozen(kw_only=True)
class Many:
    """One run of section 3."""

    elapsed: float  # from the end of the last submit until all are known final
    after_end: float  # from the last task's end (server clock) until that was known
    requests: int  # while waiting
    client_cpu: float  # seconds, while waiting
    server_cpu: float | None  # seconds, while waiting (None: no /proc)


def _submit_many(client: SyncHTTPClient, n: int) -> list[HTTPTask]:
    return [client.nap.submit(seconds=(i % SPREAD) * STEP) for i in range(n)]


def many_tasks(server: Server, n: int, how: str) -> Many:
    transport, polls = CountingTransport(), CountingTransport()
    with (
        SyncHTTPClient(server.url, transport=transport) as client,
        httpx.Client(base_url=server.url, transport=polls) as http,
    ):
        client.server_info()
        _status(http.get("/readyz"))  # opens the polling loop's connection
        tasks = _submit_many(client, n)
        server0, client0 = server.cpu_seconds(), time.process_time()
        t0 = perf_counter()
        before = transport.count + polls.count
        if how == "as_completed":
            done = list(errands.as_completed(tasks))
            if len(done) != n:
                raise RuntimeError(f"as_completed yielded {len(done)} of {n} tasks")
        elif how == "wait each":
            for task in tasks:
                task.wait()
        else:
            pending = [task.id for task in tasks]
            while True:
                pending = [
                    task_id
                    for task_id in pending
                    if _status(http.get("/nap/status", params={"task_id": task_id})) not in FINAL
                ]
                if not pending:
                    break
                time.sleep(MANY_POLL)
        elapsed = perf_counter() - t0
        known = time.time()
        client_cpu = time.process_time() - client0
        server1 = server.cpu_seconds()
        requests = transport.count + polls.count - before
        after_end = min(_after_end(tasks, [known] * n))  # not timed, not counted
    server_cpu = None if server0 is None or server1 is None else server1 - server0
    return Many(
        elapsed=elapsed,
        after_end=after_end,
        requests=requests,
        client_cpu=client_cpu,
        server_cpu=server_cpu,
    )


MANY_WAYS = ("as_completed", "wait each", "poll")
MANY_LABELS = {
    "as_completed": "(a) errands.as_completed(tasks)",
    "wait each": "(b) reference: task.wait() on each in turn",
    "poll": f"(c) reference: poll every status every {MANY_POLL * 1000:.0f} ms",
}

# ---------------------------------------------------------------------- running and reporting


@attrs.frozen(kw_only=True)
class Plan:
    submits: int
    waits: int
    nap: float
    many: int
    rounds: int

    def warm_up(self) -> Plan:
        return attrs.evolve(
            self,
            submits=max(self.submits // 4, 20),
            waits=max(self.waits // 8, 2),
            many=max(self.many // 4, SPREAD),
        )


class Figures:
    """Every figure across the rounds."""

    def __init__(self) -> None:
        self.submit_rate = {key: Series() for key in SUBMITTERS}
        self.submit_latency = {key: Latency() for key in SUBMITTERS}
        self.submit_cpu = {key: Series() for key in SUBMITTERS}
        self.submit_ratio = {key: Series() for key in SUBMIT_PAIRS}
        self.wait_delay = {key: Latency() for key in WAITERS}
        self.wait_after_end = {key: Latency() for key in WAITERS}
        self.wait_requests = {key: Series() for key in WAITERS}
        self.wait_delay_ratio = {key: Series() for key in WAITERS[1:]}
        self.wait_request_ratio = {key: Series() for key in WAITERS[1:]}
        self.many_ms = {key: Series() for key in MANY_WAYS}
        self.many_after_us = {key: Series() for key in MANY_WAYS}
        self.many_requests = {key: Series() for key in MANY_WAYS}
        self.many_client_cpu = {key: Series() for key in MANY_WAYS}
        self.many_server_cpu = {key: Series() for key in MANY_WAYS}
        self.many_time_ratio = {key: Series() for key in MANY_WAYS[1:]}
        self.many_request_ratio = {key: Series() for key in MANY_WAYS[1:]}


def one_round(server: Server, plan: Plan, fig: Figures | None) -> None:
    """One of each measurement (the reference just before what it is compared with)."""
    url = server.url
    submits = {}
    for pair in SUBMIT_PAIRS.values():
        for key in (pair[1], pair[0]):
            submits[key] = run(SUBMITTERS[key], url, plan.submits)
    waits = {}
    for waiter in (*WAITERS[1:], WAITERS[0]):
        waits[waiter] = measure_wait(url, waiter, plan.waits, plan.nap)
    many = {}
    for how in (*MANY_WAYS[1:], MANY_WAYS[0]):
        many[how] = run(many_tasks, server, plan.many, how)
    if fig is None:
        return  # the warm-up
    for key, result in submits.items():
        fig.submit_rate[key].add(plan.submits / result.elapsed)
        fig.submit_latency[key].add(result.latencies)
        fig.submit_cpu[key].add(result.cpu / plan.submits * 1e6)
    for pair_name, (client, raw, _) in SUBMIT_PAIRS.items():
        fig.submit_ratio[pair_name].add(submits[raw].elapsed / submits[client].elapsed)
    for waiter, result in waits.items():
        fig.wait_delay[waiter].add(result.delays)
        fig.wait_after_end[waiter].add(result.after_end)
        fig.wait_requests[waiter].add(result.requests)
    base = waits["long poll"]
    for waiter in WAITERS[1:]:
        p50 = _common.percentile(waits[waiter].delays, 50)
        fig.wait_delay_ratio[waiter].add(p50 / _common.percentile(base.delays, 50))
        fig.wait_request_ratio[waiter].add(waits[waiter].requests / base.requests)
    for how, outcome in many.items():
        fig.many_ms[how].add(outcome.elapsed * 1000)
        fig.many_after_us[how].add(outcome.after_end * 1e6)
        fig.many_requests[how].add(outcome.requests)
        fig.many_client_cpu[how].add(outcome.client_cpu * 1000)
        if outcome.server_cpu is not None:
            fig.many_server_cpu[how].add(outcome.server_cpu * 1000)
    first = many["as_completed"]
    for how in MANY_WAYS[1:]:
        fig.many_time_ratio[how].add(many[how].elapsed / first.elapsed)
        fig.many_request_ratio[how].add(many[how].requests / first.requests)


def report(fig: Figures, plan: Plan, workers: int | None) -> None:
    r = plan.rounds
    table = Columns(label=50, value=9)
    latency_table = Columns(label=50, value=9, span=17)

    print(f"1. client overhead: {plan.submits} sequential submits, one keep-alive connection")
    print(f"submits/s (median of {r} [min-max])")
    for key in SUBMITTERS:
        print(table.rate(SUBMIT_LABELS[key], fig.submit_rate[key]))
    print("ratios of submits/s, client / raw httpx (median of per-round ratios [min-max])")
    for pair_name, (_, _, label) in SUBMIT_PAIRS.items():
        print(table.ratio(f"ratio {label}", fig.submit_ratio[pair_name]))
    print(f"submit latency, microseconds (median of {r} [min-max])")
    print(latency_table.latency_header())
    for key in SUBMITTERS:
        print(latency_table.latency(SUBMIT_LABELS[key], fig.submit_latency[key]))
    print(f"client CPU (this process), microseconds per submit (median of {r} [min-max])")
    for key in SUBMITTERS:
        print(table.rate(SUBMIT_LABELS[key], fig.submit_cpu[key]))
    print()

    labels = _wait_labels()
    print(
        f"2. waiting for one task: {plan.waits} tasks nap(seconds={plan.nap:g}), one after another"
    )
    print(
        f"notice delay (submit -> caller knows it ended, minus {plan.nap:g} s), microseconds "
        f"(median of {r} [min-max])"
    )
    print(latency_table.latency_header())
    for waiter in WAITERS:
        print(latency_table.latency(labels[waiter], fig.wait_delay[waiter]))
    print(
        "of which from the task's end (the server's finished_at) until the caller knew, "
        f"microseconds (median of {r} [min-max])"
    )
    print(latency_table.latency_header())
    for waiter in WAITERS:
        print(latency_table.latency(labels[waiter], fig.wait_after_end[waiter]))
    print(f"status requests per task, submit not counted (median of {r} [min-max])")
    for waiter in WAITERS:
        print(table.ratio(labels[waiter], fig.wait_requests[waiter]))
    print("ratios (median of per-round ratios [min-max])")
    print(table.ratio("ratio (b)/(a) p50 notice delay", fig.wait_delay_ratio["poll slow"]))
    print(table.ratio("ratio (c)/(a) p50 notice delay", fig.wait_delay_ratio["poll fast"]))
    print(table.ratio("ratio (b)/(a) requests per task", fig.wait_request_ratio["poll slow"]))
    print(table.ratio("ratio (c)/(a) requests per task", fig.wait_request_ratio["poll fast"]))
    print()

    longest = (SPREAD - 1) * STEP
    print(
        f"3. many tasks: {plan.many} tasks nap(seconds=(i % {SPREAD}) * {STEP:g}) "
        f"(0-{longest:g} s), submitted one after another, then waited"
    )
    if workers:
        naps = sum((i % SPREAD) * STEP for i in range(plan.many))
        print(
            f"(the server runs {workers} tasks at once: these naps, {naps:.1f} s in all, keep it "
            f"busy >= {naps / workers * 1000:.0f} ms from the first submit,\n"
            " whoever waits; the delay after the last end, the requests and the CPU tell the "
            "ways apart)"
        )
    print(f"milliseconds from the last submit until all are known final (median of {r} [min-max])")
    for how in MANY_WAYS:
        print(table.rate(MANY_LABELS[how], fig.many_ms[how]))
    print(
        f"microseconds from the last task's end (server clock) until that was known "
        f"(median of {r} [min-max])"
    )
    for how in MANY_WAYS:
        print(table.rate(MANY_LABELS[how], fig.many_after_us[how]))
    print(f"HTTP requests while waiting (median of {r} [min-max])")
    for how in MANY_WAYS:
        print(table.rate(MANY_LABELS[how], fig.many_requests[how]))
    print(
        f"CPU while waiting, milliseconds, client / server (the server's in /proc ticks of "
        f"{1000 / CLOCK_TICKS:.0f} ms; median of {r} [min-max])"
    )
    for how in MANY_WAYS:
        print(table.rate(f"client {MANY_LABELS[how]}", fig.many_client_cpu[how]))
    for how in MANY_WAYS:
        if fig.many_server_cpu[how].values:
            print(table.rate(f"server {MANY_LABELS[how]}", fig.many_server_cpu[how]))
        else:
            print(f"  server {MANY_LABELS[how]}: n/a (no /proc)")
    print("ratios to (a) (median of per-round ratios [min-max])")
    print(table.ratio("ratio (b)/(a) time", fig.many_time_ratio["wait each"]))
    print(table.ratio("ratio (c)/(a) time", fig.many_time_ratio["poll"]))
    print(table.ratio("ratio (b)/(a) requests", fig.many_request_ratio["wait each"]))
    print(table.ratio("ratio (c)/(a) requests", fig.many_request_ratio["poll"]))
    print()


EXPLANATION = """\
What the client costs over raw httpx for a submit (1), and how soon a caller
learns that a task ended, for how many requests, waiting with errands' client
(task.wait(), a long poll; as_completed, POST /tasks/wait) beside the polling
loops users write (2, 3)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--submits", type=int, default=SUBMITS, help=f"sequential submits (default {SUBMITS})"
    )
    parser.add_argument(
        "--waits", type=int, default=WAITS, help=f"tasks waited one by one (default {WAITS})"
    )
    parser.add_argument(
        "--nap", type=float, default=NAP, help=f"their duration, seconds (default {NAP:g})"
    )
    parser.add_argument(
        "--many", type=int, default=MANY, help=f"tasks waited all together (default {MANY})"
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"rounds; medians shown (default {ROUNDS})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of seconds (30 submits, 3 + 20 tasks, 1 round): figures meaningless",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.submits, args.waits, args.many, args.rounds = 30, 3, SPREAD, 1
    plan = Plan(
        submits=args.submits, waits=args.waits, nap=args.nap, many=args.many, rounds=args.rounds
    )
    if min(plan.submits, plan.waits, plan.many, plan.rounds) < 1 or plan.nap < 0:
        parser.error("counts must be positive, --nap not negative")

    print("errands client benchmark: errands' HTTP clients beside raw httpx and polling loops")
    print(EXPLANATION)
    print(
        _common.versions(
            [
                f"httpx {version('httpx')}",
                f"hypercorn {version('hypercorn')}",
            ]
        )
    )
    print(
        f"server: errands serve (hypercorn, trio worker), memory backend, 127.0.0.1, its own "
        f"process; the client in this one: they share the {os.cpu_count()} cores"
    )
    print(f"{plan.rounds} round(s) after a warm-up; load average at start: {load()}")
    print(NOISE_NOTE)
    print()

    wall = perf_counter()
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="errands-bench-clients-") as folder:
        server = Server(Path(folder))
        try:
            server.wait_ready()
            workers = server.workers()
            one_round(server, plan.warm_up(), None)
            for _ in range(plan.rounds):
                one_round(server, plan, figures)
        finally:
            server.stop()
    elapsed = perf_counter() - wall

    report(figures, plan, workers)
    print(f"took {elapsed:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
