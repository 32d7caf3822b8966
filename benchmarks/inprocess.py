"""In-process throughput and pickup latency of errands, beside same-run references.

Run it::

    python benchmarks/inprocess.py [--n N] [--repeat R] [--workers W] [--sequential S]
    python benchmarks/inprocess.py --quick        # seconds: a smoke run, figures meaningless

What it measures, all in one process and one run:

* **bare trio** (the reference): spawn N no-op coroutines in a nursery, each
  setting its own ``trio.Event``; the main coroutine awaits every event.
* **errands async no-op**: ``open_engine`` on the default memory backend,
  submit N no-op ``async def`` tasks (all submitted before any wait, so many
  are in flight), then ``await task.wait()`` on each.  Timed from the first
  submit until every task is final (engine start and stop are not timed).
* **errands sync no-op**: the same with a plain ``def`` (run in worker threads).
* **to_thread** (a second reference, for the sync figure): N coroutines each
  calling ``trio.to_thread.run_sync`` of a no-op under one ``CapacityLimiter``
  as large as the engine's ``workers``.
* **pickup latency**, submit -> start: ``time.perf_counter()`` just before each
  submit, and again as the task's first statement (stored by
  ``errands.current_task().id``), for tasks submitted one at a time on an idle
  engine (submit, wait, next) and for a burst of N.

Each measurement is warmed up once, then repeated R times in rounds (one of
each per round, so a noisy moment hits all of them); the table shows the
median and the min-max.  Ratios are taken within each round, then their median
is shown: on a shared machine the absolute figures move a lot, the ratios much
less.  Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import _common
import trio
from _common import NOISE_NOTE, Columns, Latency, Series, check_success, load, met, run

import errands

#: Default engine concurrency: large enough that the no-op tasks never wait for a slot.
WORKERS = 256
#: The issue's goal for async no-op throughput, as a share of bare trio.
ASYNC_TARGET = 0.3

perf_counter = time.perf_counter


# ---------------------------------------------------------------------- the tasks

noops = errands.Service("bench")


@noops.task
async def async_noop() -> None:
    pass


@noops.task
def sync_noop() -> None:
    pass


#: Task id -> perf_counter() at the task's start (written by the stamping tasks;
#: a dict item assignment is atomic, so worker threads may write it too).
started: dict[str, float] = {}


@noops.task
async def async_stamp() -> None:
    started[errands.current_task().id] = perf_counter()


@noops.task
def sync_stamp() -> None:
    started[errands.current_task().id] = perf_counter()


def _noop() -> None:
    pass


# ---------------------------------------------------------------------- measurements


async def bare_trio(n: int) -> float:
    """Seconds for N spawned coroutines that each set their own Event."""

    async def one(event: trio.Event) -> None:
        event.set()

    begin = perf_counter()
    events = [trio.Event() for _ in range(n)]
    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(one, event)
        for event in events:
            await event.wait()
    return perf_counter() - begin


async def to_thread(n: int, workers: int) -> float:
    """Seconds for N coroutines each running a no-op through ``to_thread.run_sync``."""
    limiter = trio.CapacityLimiter(workers)

    async def one() -> None:
        await trio.to_thread.run_sync(_noop, limiter=limiter)

    begin = perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return perf_counter() - begin


async def engine_burst(name: str, n: int, workers: int) -> float:
    """Seconds from the first of N submits until all N tasks are final."""
    async with errands.open_engine(noops, workers=workers) as client:
        endpoint = client[name]
        begin = perf_counter()
        tasks = [await endpoint.submit() for _ in range(n)]
        statuses = [await task.wait() for task in tasks]
        elapsed = perf_counter() - begin
    check_success(statuses)
    return elapsed


async def pickup_sequential(name: str, n: int, workers: int) -> list[float]:
    """Submit -> start delays (seconds) of N tasks submitted one at a time, idle engine."""
    started.clear()
    submitted: dict[str, float] = {}
    async with errands.open_engine(noops, workers=workers) as client:
        endpoint = client[name]
        statuses = []
        for _ in range(n):
            t0 = perf_counter()
            task = await endpoint.submit()
            submitted[task.id] = t0
            statuses.append(await task.wait())
    check_success(statuses)
    return [started[task_id] - t0 for task_id, t0 in submitted.items()]


async def pickup_burst(name: str, n: int, workers: int) -> list[float]:
    """Submit -> start delays (seconds) of N tasks submitted back to back."""
    started.clear()
    submitted: dict[str, float] = {}
    async with errands.open_engine(noops, workers=workers) as client:
        endpoint = client[name]
        tasks = []
        for _ in range(n):
            t0 = perf_counter()
            task = await endpoint.submit()
            submitted[task.id] = t0
            tasks.append(task)
        statuses = [await task.wait() for task in tasks]
    check_success(statuses)
    return [started[task_id] - t0 for task_id, t0 in submitted.items()]


# ---------------------------------------------------------------------- running and reporting


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per burst (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians shown (default 3)")
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help=f"engine workers (default {WORKERS})"
    )
    parser.add_argument(
        "--sequential",
        type=int,
        default=2_000,
        help="tasks submitted one at a time for the idle pickup latency (default 2000)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: n=500, 1 repeat, 100 sequential"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeat, args.sequential = 500, 1, 100
    n, repeat, workers, seq = args.n, args.repeat, args.workers, args.sequential
    if min(n, repeat, workers, seq) < 1:
        parser.error("--n, --repeat, --workers and --sequential must be positive")

    print("errands in-process benchmark")
    print(_common.versions())
    print(
        f"N={n} tasks per burst, {seq} sequential, {repeat} repeat(s), engine workers={workers}, "
        "memory backend; load average at start: " + load()
    )
    print(NOISE_NOTE)
    print()

    wall = perf_counter()
    warm = max(n // 4, 100)
    for func, fargs in (
        (bare_trio, (warm,)),
        (to_thread, (warm, workers)),
        (engine_burst, ("async_noop", warm, workers)),
        (engine_burst, ("sync_noop", warm, workers)),
        (pickup_sequential, ("async_stamp", min(seq, 200), workers)),
        (pickup_sequential, ("sync_stamp", min(seq, 200), workers)),
    ):
        run(func, *fargs)

    ref, async_rate, sync_rate, thread_rate = Series(), Series(), Series(), Series()
    async_ratio, sync_ratio, sync_thread_ratio = Series(), Series(), Series()
    keys = ("async seq", "sync seq", "async burst", "sync burst")
    latency = {key: Latency() for key in keys}
    for _ in range(repeat):
        r = n / run(bare_trio, n)
        a = n / run(engine_burst, "async_noop", n, workers)
        s = n / run(engine_burst, "sync_noop", n, workers)
        t = n / run(to_thread, n, workers)
        ref.add(r)
        async_rate.add(a)
        sync_rate.add(s)
        thread_rate.add(t)
        async_ratio.add(a / r)
        sync_ratio.add(s / r)
        sync_thread_ratio.add(s / t)
        for key, delays in (
            ("async seq", run(pickup_sequential, "async_stamp", seq, workers)),
            ("sync seq", run(pickup_sequential, "sync_stamp", seq, workers)),
            ("async burst", run(pickup_burst, "async_stamp", n, workers)),
            ("sync burst", run(pickup_burst, "sync_stamp", n, workers)),
        ):
            latency[key].add(delays)
    elapsed = perf_counter() - wall

    table = Columns(label=44, value=11)
    print(f"throughput, tasks/s (median of {repeat} [min-max])")
    print(table.rate("reference: bare trio (spawn + Event)", ref))
    print(table.rate("errands async no-op", async_rate))
    print(table.rate("errands sync no-op", sync_rate))
    print(table.rate(f"reference: to_thread.run_sync, limiter {workers}", thread_rate))
    print()
    print(f"ratios (median of per-round ratios [min-max]; {workers} workers)")
    print(
        table.ratio(
            "ratio async errands / bare trio",
            async_ratio,
            f"target >= {ASYNC_TARGET:.2f}: {met(async_ratio.median, ASYNC_TARGET)}",
        )
    )
    print(table.ratio("ratio sync errands / bare trio", sync_ratio))
    print(table.ratio("ratio sync errands / to_thread reference", sync_thread_ratio))
    print()
    print(f"pickup latency, submit -> start, microseconds (median of {repeat} [min-max])")
    latency_table = Columns(label=30, value=11, span=25)
    print(latency_table.latency_header())
    labels = {
        "async seq": f"async, one at a time ({seq})",
        "sync seq": f"sync, one at a time ({seq})",
        "async burst": f"async, burst of {n}",
        "sync burst": f"sync, burst of {n}",
    }
    for key, figures in latency.items():
        print(latency_table.latency(labels[key], figures))
    print()
    print(f"took {elapsed:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
