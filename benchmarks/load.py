"""A load test of ``errands serve`` on diskcache: many clients on every task route, answers checked.

Run it::

    python benchmarks/load.py [--requests N] [--clients C] [--wait S]
    python benchmarks/load.py --soak SECONDS [--sample S]   # memory over minutes
    python benchmarks/load.py --quick      # seconds: a smoke run, figures meaningless

**The server**: one ``errands serve`` process (hypercorn's trio worker, one
process, its defaults: 32 task slots), ``--backend diskcache://`` in a
temporary folder, on 127.0.0.1 and a free port; started here and stopped at
the end by its PID with SIGTERM.  It serves a service module written to that
folder (not a file in benchmarks/: ``errands serve`` puts a file target's
folder first on its ``sys.path``, where benchmarks/http.py would shadow the
standard library's ``http``) with two tasks: ``quick(n)`` returns
``{"n": n, "square": n * n}``; ``nap(n, ms)`` sleeps ``ms`` milliseconds
(2-20) and returns ``{"n": n, "ms": ms}``.  Every submit has its own ``n``,
so every result tells whose it is.

**The clients**: C workers (default 64) under trio in this process, each with
one keep-alive connection, using the raw HTTP/1.1 client of ``_rawhttp``: on
this 2-core machine an ``httpx.AsyncClient`` spends 0.5-1.3 ms of CPU per
request and would be the limit, the raw client ~50 us.  The share of a core
the client process used is printed beside the server's: a client near 100 %
would be the limit.  An answer with ``connection: close`` (hypercorn's, after
1,000 requests on a connection) makes the worker reconnect; the count is
printed.  Each worker repeats a weighted random choice (seeded by
its number) among:

* **submit** (30): ``POST /quick/submit`` (two in three) or ``/nap/submit``;
* **status** (20): ``GET /<task>/status`` of one of its unfinished tasks;
* **get** (30): ``GET /<task>/get?task_id=..&wait=S``, a long poll, of its
  oldest task (usually final: answered at once) or of its newest (usually
  held until it ends: the latency includes the task's queueing and running),
  shown as two rows; the answer is checked and the task is done with;
* **cancel** (10): ``POST /<task>/cancel`` of its newest ``nap`` task;
* **retry** (10): ``PUT /<task>/retry`` of a task it is done with (final).

A worker holding 32 unfinished tasks gets the oldest instead of submitting.
The load stops after N requests in all (default 20,000), or at the time limit.
Then each worker gets its remaining tasks (untimed, not counted), and
``GET /tasks`` lists every task.

**Checks** (exit status 1 if one fails): no 5xx answer; every answer one its
route may give (a get: 200, 410 for a cancelled task, or 409 when the task is
still not final after S seconds, counted and asked again later; a cancel: 200,
or 409 when the task had ended); every result the task's own; a task whose
cancel answered ``cancelled`` answers 410; and no lost task: every task id a
submit or a retry returned is listed at the end with a final status (success,
or cancelled where a cancel was sent) and was got.

**Figures**: p50 and p99 latency per route; requests/s over the load; the
server's and this process's CPU as a share of one core (``/proc/PID/stat``);
the server's peak RSS, ``VmHWM`` of ``/proc/PID/status`` (the peak since it
started, start-up included) read when the load ends and again after the
checks, just before it is stopped; its ``VmRSS`` at the end of the load; the
ERROR and CRITICAL records of its log, the first few in full.  No ratio: there is
no same-run reference a mixed load compares with; the figures are this
machine's.

**Soak** (``--soak SECONDS``): the same load for that long (``--requests`` is
ignored), ``VmRSS`` sampled every ``--sample`` seconds with the requests so
far and the backlog (submitted minus finished, from ``/metrics``); prints the
samples and the growth from the sample at one minute (halfway, in a shorter
soak) to the last.  Flat memory is the goal.  The diskcache files grow with
every task kept (a day by default); that is disk, not RSS.

When ``ERRANDS_TOKEN`` is set, every request carries ``Authorization: Bearer
<token>`` and the server gets the same environment (the readiness check asks
``/readyz``, which needs no token).  Benchmarks are not tests:
nothing here asserts a speed.
"""

# ruff: noqa: E402
# (``python benchmarks/load.py`` puts benchmarks/ first on sys.path, where
# benchmarks/http.py shadows the standard library's ``http``, which httpx
# imports; that folder moves to the end before the imports below.)

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import collections
import json
import random
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import _common
import attrs
import trio
from _common import ServeProcess, load, percentile, process_memory_kib, version
from _rawhttp import RawConnection, request_head

#: The service ``errands serve`` runs (written to a temporary folder).
SERVICE = '''\
"""The service of benchmarks/load.py."""

import trio

import errands

svc = errands.Service("bench-load")


@svc.task
async def quick(n: int) -> dict[str, int]:
    return {"n": n, "square": n * n}


@svc.task
async def nap(n: int, ms: int) -> dict[str, int]:
    await trio.sleep(ms / 1000)
    return {"n": n, "ms": ms}
'''
SERVICE_FILE = "errands_bench_load_service.py"

CLIENTS = 64
REQUESTS = 20_000
#: Seconds a long poll asks the server to hold (its --max-wait is 60).
WAIT = 10.0
#: The load's time limit without --soak, and the limit of the checks after it.
MAX_SECONDS = 600.0
CHECK_SECONDS = 120.0
#: Long polls of one task after the load before it counts as not final.
FINISH_ATTEMPTS = 5
#: Seconds a request may take beyond its long poll before it counts as failed.
REQUEST_SLACK = 30.0
SAMPLE = 10.0
#: In a soak, at most this many requests per second (a bound on the count too).
SOAK_RATE_CAP = 10_000
#: The weights of the operations (see the module docstring).
MIX = {"submit": 30, "status": 20, "get": 30, "cancel": 10, "retry": 10}
#: A worker's unfinished tasks at the most; its tasks done with, for retries.
WINDOW = 32
DONE_KEPT = 16
ROUTES = ("submit", "status", "get oldest", "get newest", "cancel", "retry")
ROUTE_LABELS = {
    "submit": "submit       POST /T/submit",
    "status": "status       GET  /T/status",
    "get oldest": "get, oldest  GET  /T/get?wait (mostly final)",
    "get newest": "get, newest  GET  /T/get?wait (held until it ends)",
    "cancel": "cancel       POST /T/cancel",
    "retry": "retry        PUT  /T/retry",
}
#: The answers each route may give (the checks).
EXPECTED = {
    "submit": {200},
    "status": {200},
    "get oldest": {200, 409, 410},
    "get newest": {200, 409, 410},
    "cancel": {200, 409},
    "retry": {200},
}
#: A cancel answered one of these, or failed: the task may have ended either way.
CANCEL_UNDECIDED = {"pending", "in_progress", "failed"}
#: The statuses a status answer may give (these tasks never fail).
STATUSES = {"pending", "in_progress", "success", "cancelled"}
ERRORS_SHOWN = 10
LOGGED_SHOWN = 3
#: The start of a record in the server's log (``errands serve``'s LOG_FORMAT).
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

perf_counter = time.perf_counter


def _auth_headers() -> list[tuple[str, str]]:
    token = os.environ.get("ERRANDS_TOKEN")
    return [("authorization", f"Bearer {token}")] if token else []


@attrs.define
class Tracked:
    """One task a submit or a retry returned, and what its answers must be."""

    task_id: str
    name: str
    n: int
    ms: int
    #: The status a cancel answered ("409": already ended), or None: no cancel.
    cancel: str | None = None
    got: bool = False  # its final answer was checked

    def arguments(self) -> dict[str, int]:
        return {"n": self.n} if self.name == "quick" else {"n": self.n, "ms": self.ms}

    def result(self) -> dict[str, int]:
        if self.name == "quick":
            return {"n": self.n, "square": self.n * self.n}
        return {"n": self.n, "ms": self.ms}

    def may_be_cancelled(self) -> bool:
        return self.cancel == "cancelled" or self.cancel in CANCEL_UNDECIDED

    def target(self, action: str, query: str = "") -> str:
        return f"/{self.name}/{action}?task_id={quote(self.task_id)}{query}"


@attrs.define
class Load:
    """What the workers share: the bounds, the answers, the tasks and the failures."""

    url: str
    limit: int
    deadline: float
    wait: float
    headers: list[tuple[str, str]]
    sent: int = 0
    next_n: int = 0
    latencies: dict[str, list[float]] = attrs.Factory(lambda: {r: [] for r in ROUTES})
    answers: dict[str, collections.Counter[int]] = attrs.Factory(
        lambda: {r: collections.Counter() for r in ROUTES}
    )
    tasks: dict[str, Tracked] = attrs.Factory(dict)
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    examples: list[str] = attrs.Factory(list)
    server_errors: int = 0  # 5xx answers
    unfinished_polls: int = 0  # long polls that ended with the task not final
    reconnects: int = 0  # answers with ``connection: close``

    def take(self) -> bool:
        """Reserve one request of the load; False once the count or the time is up."""
        if self.sent >= self.limit or trio.current_time() >= self.deadline:
            return False
        self.sent += 1
        return True

    def fail(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < ERRORS_SHOWN:
            self.examples.append(f"{kind}: {detail}")


class Worker:
    """One client: one connection, its unfinished tasks, its tasks done with."""

    def __init__(self, load: Load, index: int) -> None:
        self.load = load
        self.rng = random.Random(index)
        self.unfinished: collections.deque[Tracked] = collections.deque()
        self.done: collections.deque[Tracked] = collections.deque(maxlen=DONE_KEPT)
        self.connection: RawConnection | None = None

    async def call(
        self, route: str | None, method: str, target: str, body: bytes = b""
    ) -> tuple[int, bytes] | None:
        """One request; its latency and answer are recorded under ``route``
        (None: the checks after the load, not recorded).  None if it failed
        (timed out, or the connection broke: the next call reconnects)."""
        load = self.load
        headers = load.headers
        if body:
            headers = [*headers, ("content-type", "application/json")]
        head = request_head(method, target, body=body, headers=headers)
        t0 = perf_counter()
        try:
            with trio.fail_after(load.wait + REQUEST_SLACK):
                if self.connection is None:
                    self.connection = await RawConnection.open(load.url)
                status, answer = await self.connection.exchange(head)
        except (trio.TooSlowError, OSError, RuntimeError) as exc:
            load.fail("request failed", f"{method} {target}: {exc!r}")
            await self.disconnect()
            return None
        if self.connection.closing:
            load.reconnects += 1
            await self.disconnect()
        if route is not None:
            load.latencies[route].append(perf_counter() - t0)
            load.answers[route][status] += 1
        if status >= 500:
            load.server_errors += 1
            load.fail("5xx", f"{method} {target} answered {status}: {answer[:200]!r}")
        elif route is not None and status not in EXPECTED[route]:
            load.fail("unexpected answer", f"{method} {target} answered {status}: {answer[:200]!r}")
        return status, answer

    async def disconnect(self) -> None:
        if self.connection is not None:
            await self.connection.aclose()
            self.connection = None

    async def run(self) -> None:
        operations = list(MIX)
        weights = list(MIX.values())
        while self.load.take():
            operation = self.rng.choices(operations, weights)[0]
            if operation == "submit" or not self.unfinished:
                if len(self.unfinished) >= WINDOW:
                    await self.get(oldest=True)
                else:
                    await self.submit()
            elif operation == "status":
                await self.status(self.rng.choice(self.unfinished))
            elif operation == "get":
                await self.get(oldest=self.rng.random() < 0.5)
            elif operation == "cancel":
                await self.cancel()
            elif self.done and len(self.unfinished) < WINDOW:
                await self.retry(self.rng.choice(self.done))
            else:
                await self.get(oldest=True)

    def _track(self, task: Tracked) -> None:
        self.load.tasks[task.task_id] = task
        self.unfinished.append(task)

    async def submit(self) -> None:
        load = self.load
        load.next_n += 1
        if self.rng.random() < 2 / 3:
            task = Tracked(task_id="", name="quick", n=load.next_n, ms=0)
        else:
            task = Tracked(task_id="", name="nap", n=load.next_n, ms=self.rng.randint(2, 20))
        body = json.dumps(task.arguments()).encode()
        answer = await self.call("submit", "POST", f"/{task.name}/submit", body)
        if answer is not None and answer[0] == 200:
            task.task_id = json.loads(answer[1])["task_id"]
            self._track(task)

    async def status(self, task: Tracked) -> None:
        answer = await self.call("status", "GET", task.target("status"))
        if answer is not None and answer[0] == 200:
            info = json.loads(answer[1])
            if info.get("task_id") != task.task_id or info.get("status") not in STATUSES:
                self.load.fail("wrong status", f"{task.task_id}: {info}")

    async def get(self, *, oldest: bool) -> None:
        task = self.unfinished[0] if oldest else self.unfinished[-1]
        route = "get oldest" if oldest else "get newest"
        if await self.check(task, route):
            self.unfinished.remove(task)
            self.done.append(task)

    async def check(self, task: Tracked, route: str | None) -> bool:
        """Get ``task`` (a long poll) and check its answer; True once it was final."""
        load = self.load
        answer = await self.call(route, "GET", task.target("get", f"&wait={load.wait:g}"))
        if answer is None:
            return False
        status, body = answer
        if status == 409:
            load.unfinished_polls += 1
            return False
        task.got = True
        if status == 200:
            if task.cancel == "cancelled":
                load.fail("cancelled task succeeded", task.task_id)
            elif json.loads(body) != task.result():
                load.fail("wrong result", f"{task.task_id} {task.arguments()}: {body[:200]!r}")
        elif status == 410:
            if not task.may_be_cancelled():
                load.fail("cancelled without a cancel", f"{task.task_id} (cancel: {task.cancel})")
        elif status == 404:
            load.fail("lost task", f"{task.task_id}: get answered 404")
        elif status < 500:
            load.fail("unexpected answer", f"{task.task_id}: get answered {status}")
        return True

    async def cancel(self) -> None:
        candidates = [t for t in self.unfinished if t.cancel is None]
        naps = [t for t in candidates if t.name == "nap"]
        if not candidates:
            await self.get(oldest=True)
            return
        task = (naps or candidates)[-1]
        answer = await self.call("cancel", "POST", task.target("cancel"))
        if answer is None:
            task.cancel = "failed"  # it may or may not have been cancelled
        elif answer[0] == 200:
            task.cancel = json.loads(answer[1])["status"]
        else:
            task.cancel = str(answer[0])

    async def retry(self, old: Tracked) -> None:
        answer = await self.call("retry", "PUT", old.target("retry"))
        if answer is not None and answer[0] == 200:
            new_id = json.loads(answer[1])["task_id"]
            self._track(Tracked(task_id=new_id, name=old.name, n=old.n, ms=old.ms))

    async def finish(self, deadline: float) -> None:
        """After the load: get every unfinished task until it is final (untimed)."""
        for task in self.unfinished:
            for _ in range(FINISH_ATTEMPTS):
                if await self.check(task, None) or trio.current_time() >= deadline:
                    break
        await self.disconnect()


async def list_all(load: Load) -> dict[str, str] | None:
    """Every task the server lists, id -> status (``GET /tasks``, 1,000 a page)."""
    statuses: dict[str, str] = {}
    worker = Worker(load, -1)
    offset: int | None = 0
    while offset is not None:
        answer = await worker.call(None, "GET", f"/tasks?limit=1000&offset={offset}")
        if answer is None or answer[0] != 200:
            load.fail("list failed", f"GET /tasks answered {answer and answer[0]}")
            return None
        page = json.loads(answer[1])
        statuses.update((t["task_id"], t["status"]) for t in page["tasks"])
        offset = page["next_offset"]
    await worker.disconnect()
    return statuses


def check_listed(load: Load, listed: dict[str, str]) -> int:
    """The no-lost-task check against the listing; returns the tasks lost."""
    lost = 0
    for task in load.tasks.values():
        status = listed.get(task.task_id)
        if status is None:
            lost += 1
            load.fail("lost task", f"{task.task_id} is not listed")
        elif status == "cancelled" and not task.may_be_cancelled():
            load.fail("cancelled without a cancel", f"{task.task_id} is listed cancelled")
        elif status == "success" and task.cancel == "cancelled":
            load.fail("cancelled task succeeded", f"{task.task_id} is listed success")
        elif status not in ("success", "cancelled"):
            load.fail("not final", f"{task.task_id} is listed {status}")
        elif not task.got:
            load.fail("never got", f"{task.task_id} is listed {status} but its get never ended")
    return lost


# ---------------------------------------------------------------------- memory


@attrs.frozen(kw_only=True)
class Sample:
    seconds: float
    rss_kib: int | None
    requests: int
    backlog: int | None


async def backlog(worker: Worker) -> int | None:
    """Tasks submitted minus tasks finished, from the server's ``/metrics``."""
    answer = await worker.call(None, "GET", "/metrics")
    if answer is None or answer[0] != 200:
        return None
    values = {}
    for line in answer[1].decode().splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    try:
        submitted = float(values["errands_tasks_submitted_total"])
        return int(submitted - float(values["errands_tasks_finished_total"]))
    except (KeyError, ValueError):
        return None


async def sample_memory(
    load: Load, pid: int, every: float, samples: list[Sample], stop: trio.Event
) -> None:
    """Sample the server's VmRSS every ``every`` seconds, and once more when
    ``stop`` is set (then return)."""
    worker = Worker(load, -2)
    start = trio.current_time()
    while True:
        seconds, requests = trio.current_time() - start, load.sent
        rss = process_memory_kib(pid, "VmRSS")
        waiting = await backlog(worker)
        # A connection per sample: the server closes one idle for seconds.
        await worker.disconnect()
        samples.append(Sample(seconds=seconds, rss_kib=rss, requests=requests, backlog=waiting))
        if stop.is_set():
            break
        with trio.move_on_at(start + every * len(samples)):
            await stop.wait()


# ---------------------------------------------------------------------- running and reporting


@attrs.frozen(kw_only=True)
class Outcome:
    elapsed: float
    server_cpu: float | None
    client_cpu: float
    load_peak_kib: int | None  # VmHWM when the load ended
    samples: list[Sample]
    lost: int | None


async def run_load(server: ServeProcess, load: Load, clients: int, every: float) -> Outcome:
    """The load, then the checks after it."""
    samples: list[Sample] = []
    workers = [Worker(load, i) for i in range(clients)]
    stop = trio.Event()
    async with trio.open_nursery() as outer:
        outer.start_soon(sample_memory, load, server.pid, every, samples, stop)
        server0, client0 = server.cpu_seconds(), time.process_time()
        wall0 = perf_counter()
        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(worker.run)
        elapsed = perf_counter() - wall0
        server1, client_cpu = server.cpu_seconds(), time.process_time() - client0
        load_peak_kib = process_memory_kib(server.pid, "VmHWM")
        stop.set()
    deadline = trio.current_time() + CHECK_SECONDS
    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(worker.finish, deadline)
    listed = await list_all(load)
    return Outcome(
        elapsed=elapsed,
        server_cpu=None if server0 is None or server1 is None else server1 - server0,
        client_cpu=client_cpu,
        load_peak_kib=load_peak_kib,
        samples=samples,
        lost=None if listed is None else check_listed(load, listed),
    )


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def report_routes(load: Load) -> None:
    print(f"  {'route':<52}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}   answers")
    for route in ROUTES:
        latencies = load.latencies[route]
        if not latencies:
            print(f"  {ROUTE_LABELS[route]:<52}{0:>9}")
            continue
        answers = ", ".join(f"{c}: {k:,}" for c, k in sorted(load.answers[route].items()))
        p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
        print(f"  {ROUTE_LABELS[route]:<52}{len(latencies):>9,}{p50:>9.1f}{p99:>9.1f}   {answers}")
    everything = [x for route in ROUTES for x in load.latencies[route]]
    if everything:
        p50, p99 = percentile(everything, 50) * 1e3, percentile(everything, 99) * 1e3
        print(f"  {'all':<52}{len(everything):>9,}{p50:>9.1f}{p99:>9.1f}")


def report_soak(samples: list[Sample], soak: float) -> None:
    print("server RSS (VmRSS), sampled:")
    print(f"  {'seconds':>8}{'RSS':>13}{'requests':>11}{'backlog':>9}")
    for s in samples:
        waiting = "n/a" if s.backlog is None else f"{s.backlog:,}"
        print(f"  {s.seconds:>8.0f}{mib(s.rss_kib):>13}{s.requests:>11,}{waiting:>9}")
    base_at = min(60.0, soak / 2)
    known = [s for s in samples if s.rss_kib is not None]
    base = next((s for s in known if s.seconds >= base_at), None)
    if base is None or base is known[-1]:
        print("  growth: n/a (too few samples)")
        return
    last = known[-1]
    assert base.rss_kib is not None and last.rss_kib is not None
    grown = last.rss_kib - base.rss_kib
    print(
        f"  growth from {base.seconds:.0f} s to {last.seconds:.0f} s: {grown / 1024:+.1f} MiB "
        f"({grown / base.rss_kib * 100:+.1f} %), {mib(base.rss_kib)} -> {mib(last.rss_kib)}"
    )


def report(load: Load, outcome: Outcome, server: ServeProcess, peak_kib: int | None) -> None:
    print("latency per route, milliseconds (p50 and p99 over the load; T is quick or nap):")
    report_routes(load)
    rate = load.sent / outcome.elapsed
    print()
    print(f"{load.sent:,} requests in {outcome.elapsed:.1f} s: {rate:,.0f} requests/s")
    if outcome.server_cpu is not None:
        busy = outcome.server_cpu / outcome.elapsed * 100
        per_request = outcome.server_cpu / load.sent * 1e6
        print(f"server CPU: {busy:.0f} % of one core, {per_request:,.0f} us per request")
    print(
        f"client CPU (this process): {outcome.client_cpu / outcome.elapsed * 100:.0f} % of one core"
    )
    print(
        f"server peak RSS (VmHWM, start-up included): {mib(outcome.load_peak_kib)} over the "
        f"load; {mib(peak_kib)} after the checks (GET /tasks lists every task)"
    )
    if outcome.samples and outcome.samples[-1].rss_kib is not None:
        print(f"server RSS at the end of the load (VmRSS): {mib(outcome.samples[-1].rss_kib)}")
    cancels = collections.Counter(t.cancel for t in load.tasks.values() if t.cancel is not None)
    retries = load.answers["retry"][200]
    print(
        f"tasks: {len(load.tasks):,} ({retries:,} of them retries); long polls that ended with "
        f"the task not final: {load.unfinished_polls:,}"
    )
    print(f"connections the server closed after an answer (connection: close): {load.reconnects}")
    told = ", ".join(f"{answer} {n:,}" for answer, n in sorted(cancels.items()))
    print(f"cancels answered (a status, or 409: it had ended): {told or 'none'}")
    problems = logged_problems(server)
    print(f"server log: {len(problems)} ERROR/CRITICAL records")
    for record in problems[:LOGGED_SHOWN]:
        print("  | " + record.replace("\n", "\n  | "))
    if len(problems) > LOGGED_SHOWN:
        print(f"  ({len(problems) - LOGGED_SHOWN} more)")


def logged_problems(server: ServeProcess) -> list[str]:
    """The server log's ERROR and CRITICAL records, each with its traceback."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    records: list[str] = []
    inside = False
    for line in lines:
        if LOG_RECORD.match(line):
            inside = " ERROR " in line or " CRITICAL " in line
            if inside:
                records.append(line)
        elif inside:
            records[-1] += "\n" + line
    return records


def check(load: Load, outcome: Outcome) -> bool:
    lost = "n/a (the listing failed)" if outcome.lost is None else f"{outcome.lost}"
    print(f"checks: 5xx answers {load.server_errors}; lost tasks {lost}; ", end="")
    if not load.errors:
        print("no failed check")
        return True
    print("FAILED: " + ", ".join(f"{kind} {n:,}" for kind, n in sorted(load.errors.items())))
    for example in load.examples:
        print(f"  {example}")
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=REQUESTS, help=f"requests in all (default {REQUESTS:,})"
    )
    parser.add_argument(
        "--clients", type=int, default=CLIENTS, help=f"concurrent clients (default {CLIENTS})"
    )
    parser.add_argument(
        "--wait", type=float, default=WAIT, help=f"a long poll's ?wait= seconds (default {WAIT:g})"
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        help="keep the load going this long (ignores --requests) and sample the server's RSS",
    )
    parser.add_argument(
        "--sample",
        type=float,
        default=SAMPLE,
        metavar="SECONDS",
        help=f"with --soak: seconds between RSS samples (default {SAMPLE:g})",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=MAX_SECONDS,
        help=f"without --soak: the load's time limit (default {MAX_SECONDS:g})",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 clients, 200 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests = 4, 200
    if min(args.requests, args.clients) < 1 or not 0 < args.wait <= 60 or args.sample <= 0:
        parser.error("--requests and --clients must be positive, --wait 0..60, --sample > 0")
    if args.soak is not None and args.soak <= 0:
        parser.error("--soak takes a positive number of seconds")
    soak = args.soak is not None
    seconds = args.soak if soak else args.max_seconds
    limit = int(args.soak * SOAK_RATE_CAP) if soak else args.requests
    every = args.sample if soak else 1.0
    headers = _auth_headers()

    print("errands load test: errands serve on diskcache, every task route, answers checked")
    print(
        _common.versions([f"hypercorn {version('hypercorn')}", f"diskcache {version('diskcache')}"])
    )
    what = f"for {args.soak:g} s" if soak else f"{limit:,} requests (at most {seconds:g} s)"
    print(
        f"{args.clients} clients (raw HTTP/1.1, one connection each), {what}; long polls "
        f"?wait={args.wait:g}; auth header: {'yes' if headers else 'no'}; load average at start: "
        f"{load()}"
    )
    print(
        f"the server in its own process on 127.0.0.1, the clients in this one: "
        f"they share the {os.cpu_count()} cores"
    )
    print("(figures are noisy on a shared machine)")
    print()

    with tempfile.TemporaryDirectory(prefix="errands-bench-load-") as folder:
        server = ServeProcess(
            Path(folder),
            source=SERVICE,
            module=SERVICE_FILE,
            backend=f"diskcache://{Path(folder) / 'data'}",
            env=dict(os.environ),
        )
        try:
            server.wait_ready()

            async def main_load() -> tuple[Load, Outcome]:
                the_load = Load(
                    url=server.url,
                    limit=limit,
                    deadline=trio.current_time() + seconds,
                    wait=args.wait,
                    headers=headers,
                )
                return the_load, await run_load(server, the_load, args.clients, every)

            the_load, outcome = trio.run(main_load)
            peak_kib = process_memory_kib(server.pid, "VmHWM")
        finally:
            code = server.stop()
        if soak:
            report_soak(outcome.samples, args.soak)
            print()
        report(the_load, outcome, server, peak_kib)
    if code != 0:
        the_load.fail("server exit", f"errands serve exited with {code}")
    return 0 if check(the_load, outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
