"""A deep queue on the default durable backend: do submits and statuses slow down?

Run it::

    python benchmarks/deep_queue.py [--deep N] [--calls M] [--repeat R]
    python benchmarks/deep_queue.py --quick        # seconds: a smoke run, figures meaningless

Batch work makes deep queues: thousands of tasks wait while a few run, and
their clients poll their statuses.  Each round starts ``errands serve`` on
its default backend (``DiskCacheBackend``, in a fresh temporary folder) with
one endpoint whose tasks never finish (so every task past the engine's
slots waits), then measures, one request at a time from one
``SyncHTTPClient``:

* **submit**: M submits (each checks the queue's depth against
  ``--max-pending``, as every HTTP submit does);
* **status of the last**: M statuses of the task submitted last, the
  farthest back in the queue (a status carries the task's position);
* **submit, with tasks delayed**: on another server, M submits of a no-op
  task (each starts in its submit and ends at once) while tasks submitted
  with a delay of a day wait (scheduled work).

First with a short queue (about 100 waiting, or delayed): the reference;
then again once N tasks wait (``submit_many``).  The ratio deep / short of each p50 is
taken within each round: 1.0 means a deep queue costs nothing more.  The
server's CPU per request is shown too.  Benchmarks are not tests: nothing
here asserts a speed.
"""

# ruff: noqa: E402
# (``python benchmarks/deep_queue.py`` puts benchmarks/ first on sys.path,
# where benchmarks/http.py shadows the standard library's ``http``, which
# httpx imports; that folder moves to the end before the imports below.)

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

import _common
from _common import NOISE_NOTE, Columns, Series, ServeProcess, load, percentile

import errands

perf_counter = time.perf_counter

SOURCE = """
import trio
import errands

svc = errands.Service("deep")


@svc.task
async def stay() -> None:
    await trio.sleep_forever()


@svc.task
async def noop() -> None:
    pass
"""

SHORT = 100
#: Requests sent and not timed before each measurement.
WARM = 10
#: Tasks sent per submit_many request while filling the queue.
CHUNK = 5000
#: The issue's spirit: a deep queue should cost about what a short one does.
TARGET = 1.5


def timed(calls: int, call: Callable[[], object]) -> list[float]:
    seconds = []
    for _ in range(calls):
        start = perf_counter()
        call()
        seconds.append(perf_counter() - start)
    return seconds


def measure(client: errands.SyncHTTPClient, server: ServeProcess, calls: int) -> dict[str, float]:
    """p50 seconds of a submit and of a status of the last task, and the
    server's CPU seconds per request over both."""
    endpoint = client.stay
    timed(WARM, endpoint.submit)
    cpu = server.cpu_seconds()
    submits = timed(calls, endpoint.submit)
    last = endpoint.submit()
    statuses = timed(calls, last.get_info)
    if last.get_info().position is None:
        raise RuntimeError("the last task is not waiting")
    after = server.cpu_seconds()
    used = None if cpu is None or after is None else (after - cpu) / (2 * calls + 1)
    return {
        "submit": percentile(submits, 50),
        "status": percentile(statuses, 50),
        "cpu": used if used is not None else float("nan"),
    }


def fill(endpoint: errands.HTTPEndpoint, waiting: int) -> None:
    left = waiting
    while left > 0:
        chunk = min(left, CHUNK)
        endpoint.submit_many([{}] * chunk)
        left -= chunk


def delayed(client: errands.SyncHTTPClient, calls: int) -> float:
    """p50 seconds of a submit of a task that starts in it and ends at once."""
    timed(WARM, client.noop.submit)
    return percentile(timed(calls, client.noop.submit), 50)


def one_round(deep: int, calls: int) -> tuple[dict[str, float], dict[str, float]]:
    short: dict[str, float] = {}
    far: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="errands-deep-") as folder:
        for scenario in ("waiting", "delayed"):
            where = Path(folder) / scenario
            where.mkdir()
            server = ServeProcess(
                where,
                source=SOURCE,
                module="deep_service.py",
                backend=f"diskcache://{where / 'data'}",
            )
            try:
                server.wait_ready()
                with errands.SyncHTTPClient(server.url) as client:
                    client.server_info()
                    if scenario == "waiting":
                        fill(client.stay, SHORT)
                        short.update(measure(client, server, calls))
                        fill(client.stay, deep - SHORT - calls - WARM - 1)
                        far.update(measure(client, server, calls))
                    else:
                        later = client.noop.options(delay=86_400)
                        fill(later, SHORT)
                        short["delayed"] = delayed(client, calls)
                        fill(later, deep - SHORT)
                        far["delayed"] = delayed(client, calls)
            finally:
                server.stop()
    return short, far


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deep", type=int, default=40_000, help="tasks waiting or delayed (40000)")
    parser.add_argument("--calls", type=int, default=300, help="requests of each kind (300)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians shown (3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2000 deep, 30 calls")
    args = parser.parse_args(argv)
    if args.quick:
        args.deep, args.calls, args.repeat = 2_000, 30, 1
    if args.repeat < 1 or args.calls < 1 or args.deep < 2 * (SHORT + WARM) + args.calls:
        parser.error("--repeat and --calls must be positive, --deep larger than 220 + calls")

    print("errands deep-queue benchmark: errands serve, default backend (DiskCacheBackend)")
    print(_common.versions())
    print(
        f"{args.deep} tasks waiting against about {SHORT}, {args.calls} requests of each kind, "
        f"{args.repeat} round(s); load average at start: {load()}"
    )
    print(NOISE_NOTE)
    print()
    wall = perf_counter()
    kinds = ("submit", "status", "cpu", "delayed")
    figures = {(kind, depth): Series() for kind in kinds for depth in ("short", "deep")}
    ratios = {kind: Series() for kind in ("submit", "status", "delayed")}
    for _ in range(args.repeat):
        short, deep = one_round(args.deep, args.calls)
        for kind in kinds:
            figures[kind, "short"].add(short[kind] * 1e6)
            figures[kind, "deep"].add(deep[kind] * 1e6)
        for kind in ratios:
            ratios[kind].add(deep[kind] / short[kind])

    columns = Columns(label=46, value=9)
    print("p50 microseconds per request (median of rounds [min-max])")
    labels = {
        "submit": "submit",
        "status": "status of the last task",
        "cpu": "server CPU per request",
        "delayed": "submit of a no-op",
    }
    for kind in kinds:
        state = "delayed" if kind == "delayed" else "waiting"
        for depth, many in (("short", f"~{SHORT}"), ("deep", f"{args.deep}")):
            print(columns.rate(f"{labels[kind]}, {many} {state}", figures[kind, depth]))
    print()
    print("ratios deep / short (median of per-round ratios [min-max])")
    for kind in ratios:
        print(
            columns.ratio(
                f"ratio {labels[kind]}, deep / short",
                ratios[kind],
                f"target <= {TARGET}: " + ("met" if ratios[kind].median <= TARGET else "NOT met"),
            )
        )
    print()
    print(f"took {perf_counter() - wall:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
