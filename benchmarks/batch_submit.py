"""Bulk submit against one submit per task: tasks enqueued per second.

Run it::

    python benchmarks/batch_submit.py [--n N] [--single-n N] [--repeat R]
    python benchmarks/batch_submit.py --quick        # seconds: a smoke run, figures meaningless

Over HTTP, one ``errands serve`` process (``--backend memory://``, no task
slots, so tasks are only enqueued; 127.0.0.1, a free port) serves a no-op
task; this process is the client:

* **one request per task** (the reference): ``SyncHTTPClient(url).noop.submit()``
  in a loop, on one keep-alive connection;
* **bulk**: ``SyncHTTPClient(url).noop.submit_many(items)`` (JSON Lines, a few
  thousand items per request).

In-process, the same two ways on ``open_engine`` (memory backend, no task
slots): ``await client.noop.submit()`` in a loop, and ``submit_many``.

Each timed from the first submit until the last task id is known.  The
reference runs fewer tasks (it is slow); each round measures both, and the
ratio is taken within the round.  The issue's goal: at least 20x over HTTP.
Benchmarks are not tests: nothing here asserts a speed.
"""

# ruff: noqa: E402
# (``python benchmarks/batch_submit.py`` puts benchmarks/ first on sys.path,
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
from collections.abc import Sequence
from pathlib import Path

import _common
from _common import NOISE_NOTE, Columns, Series, ServeProcess, load, met

import errands
from errands.adapters import SyncHTTPClient

TARGET = 20.0
perf_counter = time.perf_counter

SOURCE = """
import errands

svc = errands.Service("bulk_bench")


@svc.task
async def noop(n: int = 0) -> None:
    pass
"""

bench = errands.Service("bulk_bench")


@bench.task
async def noop(n: int = 0) -> None:
    pass


def http_single(url: str, n: int) -> float:
    with SyncHTTPClient(url) as client:
        start = perf_counter()
        ids = [client.noop.submit(n=i).id for i in range(n)]
        elapsed = perf_counter() - start
    assert len(set(ids)) == n
    return n / elapsed


def http_bulk(url: str, n: int) -> float:
    with SyncHTTPClient(url) as client:
        start = perf_counter()
        batch = client.noop.submit_many({"n": i} for i in range(n))
        elapsed = perf_counter() - start
    assert len(batch.tasks) == n and not batch.rejected
    return n / elapsed


async def inprocess(n_single: int, n_bulk: int) -> tuple[float, float]:
    async with errands.open_engine(bench, workers=0) as client:
        start = perf_counter()
        for i in range(n_single):
            await client.noop.submit(n=i)
        single = n_single / (perf_counter() - start)
        start = perf_counter()
        batch = await client.noop.submit_many({"n": i} for i in range(n_bulk))
        bulk = n_bulk / (perf_counter() - start)
        assert len(batch.tasks) == n_bulk
    return single, bulk


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="bulk tasks (default 50000)")
    parser.add_argument(
        "--single-n", type=int, default=2000, help="one-request-per-task tasks (default 2000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small n, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.single_n, args.repeat = 2000, 100, 1
    if min(args.n, args.single_n, args.repeat) < 1:
        parser.error("--n, --single-n and --repeat must be positive")

    print("errands bulk submit benchmark")
    print(_common.versions())
    print(
        f"{args.n} tasks by submit_many against {args.single_n} submitted one by one; "
        f"{args.repeat} round(s); load average at start: {load()}"
    )
    print(NOISE_NOTE)
    print()
    wall = perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="errands-bench-bulk-"))
    # Every round enqueues; the queue cap must hold them all (no task runs).
    total = (args.n + args.single_n) * (args.repeat + 1) + 1000
    server = ServeProcess(
        folder,
        source=SOURCE,
        module="bulk_service.py",
        backend="memory://",
        options=["--task-slots", "0", "--max-pending", str(total), "--log-level", "warning"],
    )
    try:
        server.wait_ready()
        http_single(server.url, min(args.single_n, 50))  # warm-up
        http_bulk(server.url, min(args.n, 2000))
        single, bulk, ratio = Series(), Series(), Series()
        in_single, in_bulk, in_ratio = Series(), Series(), Series()
        for _ in range(args.repeat):
            s = http_single(server.url, args.single_n)
            b = http_bulk(server.url, args.n)
            single.add(s)
            bulk.add(b)
            ratio.add(b / s)
            si, bi = _common.run(inprocess, args.single_n * 5, args.n)
            in_single.add(si)
            in_bulk.add(bi)
            in_ratio.add(bi / si)
    finally:
        server.stop()
    table = Columns(label=46, value=11)
    print(f"over HTTP, tasks enqueued per second (median of {args.repeat} [min-max])")
    print(table.rate("reference: one request per task", single))
    print(table.rate("submit_many (JSON Lines)", bulk))
    print(
        table.ratio(
            "ratio submit_many / one request per task",
            ratio,
            f"target >= {TARGET:g}: {met(ratio.median, TARGET)}",
        )
    )
    print()
    print(f"in-process (open_engine, memory), tasks enqueued per second (median of {args.repeat})")
    print(table.rate("reference: await submit() per task", in_single))
    print(table.rate("submit_many", in_bulk))
    print(table.ratio("ratio submit_many / submit per task", in_ratio))
    print()
    print(f"took {perf_counter() - wall:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
