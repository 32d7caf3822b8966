"""The thread path: ``errands.start()`` and a sync task, submitted from a plain
thread, against huey's ``MemoryHuey`` doing the same.

Run it::

    python benchmarks/threadpath.py [--n N] [--repeat R] [--huey-workers H]
    python benchmarks/threadpath.py --quick        # seconds: a smoke run, figures meaningless

This is how notebooks, scripts and Flask or Django views use errands: the
engine runs in a background thread, and plain code calls ``submit()`` in a
loop, then ``wait()`` on each task.  Measured in one run, N no-op tasks each:

* **errands**: ``errands.start(svc)`` (memory backend, default task slots),
  a sync no-op task; this thread submits N, then waits on each; timed from
  the first submit until the last wait returns.  Beside it, the same split
  in two: N submits alone, and the waits alone.
* **huey** (the reference): ``huey.MemoryHuey`` with H thread workers
  (default 4), the same no-op; this thread enqueues N, then reads each
  result (``result.get(blocking=True)``).
* **errands with get**: the same, with ``get()`` after each ``wait()``
  (shown beside it; the ratio is taken on the wait-only loop, as huey's
  reference reads each result in its wait).
* **the bare hop**: ``SyncClient``'s portal running a no-op coroutine in the
  engine's loop and returning, N times: what every call from a thread pays
  today, before any engine work.

and, on durable storage (``--durable-n``, fewer tasks: every submit waits
for its commit):

* **errands durable**: the same loop with ``errands.start(svc,
  backend=DiskCacheBackend(dir))`` (``synchronous="FULL"``: a submit returns
  once its record is fsynced), in a fresh temporary directory per round;
* **huey** (the reference): ``huey.SqliteHuey(fsync=True)`` (synchronous=FULL
  too) with the same H thread workers, enqueue N then read each result;
* **one submit at a time** (latency, microseconds): ``submit()`` from this
  thread to an idle durable engine, each task waited for before the next
  submit, against one huey enqueue at a time (no consumer: the enqueue
  alone); and the same loop's **submit -> final**: from the submit to the
  end of ``wait()`` (what a script that needs each answer pays a task).

Rates are tasks per second; the ratio errands / huey is taken within each
round.  Issue 14's goal: at least 1.0x MemoryHuey.  Benchmarks are not
tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import _common
from _common import NOISE_NOTE, Columns, Latency, Series, load, met

import errands

TARGET = 1.0
DURABLE_TARGET = 2.0
perf_counter = time.perf_counter

svc = errands.Service("threadpath")


@svc.task
def noop() -> None:
    pass


def errands_round(client: errands.SyncClient, n: int) -> tuple[float, float, float]:
    """End-to-end, submit-only and wait-only rates."""
    start = perf_counter()
    tasks = [client.noop.submit() for _ in range(n)]
    submitted = perf_counter()
    for task in tasks:
        task.wait(timeout=120)
    done = perf_counter()
    return n / (done - start), n / (submitted - start), n / (done - submitted)


def errands_get_round(client: errands.SyncClient, n: int) -> float:
    """Submit N, then ``wait()`` and ``get()`` each: what a script does next."""
    start = perf_counter()
    tasks = [client.noop.submit() for _ in range(n)]
    for task in tasks:
        task.wait(timeout=120)
        task.get()
    return n / (perf_counter() - start)


def portal_round(client: errands.SyncClient, n: int) -> float:
    portal: Any = client._portal  # the hop every sync call takes today

    async def nothing() -> None:
        return None

    start = perf_counter()
    for _ in range(n):
        portal.run(nothing)
    return n / (perf_counter() - start)


def durable_round(directory: str, n: int) -> float:
    """The same loop on a DiskCacheBackend (synchronous=FULL) in ``directory``."""
    from errands.backends import DiskCacheBackend

    with errands.start(svc, backend=DiskCacheBackend(directory)) as client:
        return errands_round(client, n)[0]


def durable_latency(directory: str, n: int) -> tuple[list[float], list[float]]:
    """Seconds of N submits one at a time to an idle engine on
    DiskCacheBackend, each waited for before the next: the submits alone,
    and each submit until its ``wait()`` returned."""
    from errands.backends import DiskCacheBackend

    submits, finals = [], []
    with errands.start(svc, backend=DiskCacheBackend(directory)) as client:
        client.noop.submit().wait(timeout=60)  # warm-up
        for _ in range(n):
            start = perf_counter()
            task = client.noop.submit()
            submitted = perf_counter()
            task.wait(timeout=60)
            submits.append(submitted - start)
            finals.append(perf_counter() - start)
    return submits, finals


def huey_round(huey: Any, n: int, workers: int, sqlite: str | None = None) -> float:
    app = _common.huey_app(huey, sqlite)
    task = app.task()(lambda: None)
    with _common.huey_consumer(app, workers):
        start = perf_counter()
        results = [task() for _ in range(n)]
        for result in results:
            result.get(blocking=True, timeout=120, max_delay=0.05)
        elapsed = perf_counter() - start
    return n / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="tasks per round (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians (default 3)")
    parser.add_argument("--huey-workers", type=int, default=4, help="huey threads (default 4)")
    parser.add_argument(
        "--durable-n",
        type=int,
        default=2_000,
        help="tasks per round on DiskCacheBackend against SqliteHuey (default 2000; 0: skip)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: n=300, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeat, args.durable_n = 300, 1, 100
    try:
        import huey
    except ImportError:
        huey = None  # type: ignore[assignment]
        print("(huey not installed: pip install huey; only errands' figures follow)")
    extra = [f"huey {_common.version('huey')}"] if huey is not None else []
    print("errands thread path against huey MemoryHuey")
    print(_common.versions(extra))
    print(
        f"N={args.n} no-op tasks per round, {args.repeat} round(s), huey with "
        f"{args.huey_workers} thread workers; load average at start: {load()}"
    )
    print(NOISE_NOTE)
    print()
    wall = perf_counter()
    ours, submits, waits, hops, gets = Series(), Series(), Series(), Series(), Series()
    theirs, ratio = Series(), Series()
    durable, durable_ref, durable_ratio = Series(), Series(), Series()
    one_at_a_time, to_final, huey_enqueue = Latency(), Latency(), Latency()
    sequential = max(args.durable_n // 10, 20)
    with errands.start(svc) as client:
        errands_round(client, min(args.n, 500))  # warm-up
        for _ in range(args.repeat):
            end_to_end, submit_only, wait_only = errands_round(client, args.n)
            ours.add(end_to_end)
            submits.add(submit_only)
            waits.add(wait_only)
            hops.add(portal_round(client, args.n))
            gets.add(errands_get_round(client, args.n))
            if huey is not None:
                reference = huey_round(huey, args.n, args.huey_workers)
                theirs.add(reference)
                ratio.add(end_to_end / reference)
    for _ in range(args.repeat if args.durable_n else 0):
        with tempfile.TemporaryDirectory(prefix="errands-threadpath-") as scratch:
            rate = durable_round(os.path.join(scratch, "errands"), args.durable_n)
            durable.add(rate)
            if huey is not None:
                reference = huey_round(
                    huey, args.durable_n, args.huey_workers, os.path.join(scratch, "huey.db")
                )
                durable_ref.add(reference)
                durable_ratio.add(rate / reference)
            submits_alone, finals = durable_latency(os.path.join(scratch, "alone"), sequential)
            one_at_a_time.add(submits_alone)
            to_final.add(finals)
            if huey is not None:
                alone = os.path.join(scratch, "alone.db")
                huey_enqueue.add(_common.huey_enqueue_latency(huey, sequential, alone))
    table = Columns(label=46, value=11)
    print(f"tasks per second (median of {args.repeat} [min-max])")
    print(table.rate("errands: submit N, then wait each", ours))
    print(table.rate("  of which: the submits alone", submits))
    print(table.rate("  of which: the waits alone", waits))
    print(table.rate("errands: submit N, then wait and get each", gets))
    print(table.rate("bare portal hop (a no-op, calls/s)", hops))
    if huey is not None:
        print(table.rate("reference: huey MemoryHuey", theirs))
        print()
        print(
            table.ratio(
                "ratio errands / MemoryHuey",
                ratio,
                f"target >= {TARGET:g}: {met(ratio.median, TARGET)}",
            )
        )
    if durable.values:
        print()
        print(f"durable (synchronous=FULL), N={args.durable_n}, tasks per second")
        print(table.rate("errands DiskCacheBackend: submit N, wait each", durable))
        if huey is not None:
            print(table.rate("reference: huey SqliteHuey (fsync=True)", durable_ref))
            print()
            print(
                table.ratio(
                    "ratio errands / SqliteHuey",
                    durable_ratio,
                    f"target >= {DURABLE_TARGET:g}: {met(durable_ratio.median, DURABLE_TARGET)}",
                )
            )
        print()
        print(
            f"one submit at a time ({sequential}), microseconds (median of {args.repeat} [min-max])"
        )
        latency_table = Columns(label=46, value=9, span=17)
        print(latency_table.latency_header())
        print(latency_table.latency("errands submit from a thread, idle engine", one_at_a_time))
        print(latency_table.latency("errands submit -> final (wait), idle engine", to_final))
        if huey_enqueue.p50.values:
            print(latency_table.latency("reference: huey SqliteHuey enqueue", huey_enqueue))
    print()
    print(f"took {perf_counter() - wall:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
