"""Durable throughput of errands on DiskCacheBackend, beside same-run references.

Run it::

    python benchmarks/disk.py [--n N] [--repeat R] [--workers W] [--submitters K]
                              [--huey-workers H] [--sequential S] [--batches 1,16] [--dir D]
    python benchmarks/disk.py --quick        # seconds: a smoke run, figures meaningless

huey is optional (``pip install errands[bench]`` or ``pip install huey``); without
it reference (b) is skipped.

What it measures, all in one process and one run, on the default
``synchronous="FULL"`` (a commit is fsynced: it survives power loss; with
``--synchronous NORMAL`` errands and (a) run without, huey stays FULL):

* **errands durable**: ``open_engine`` on a ``DiskCacheBackend`` in a fresh
  temporary directory; K submitter coroutines in one nursery issue N submits of
  a no-op sync task between them (concurrent submits are what group commit can
  batch), then ``await task.wait()`` on each.  Timed from the first submit
  until every task is final (engine start and stop are not timed).
* **errands durable, one submitter**: the same with one submitter coroutine
  (``await submit()`` one after another, then the waits), as a script or a
  notebook submits; compared with (b) too.
* **errands durable, one submitter, then get() each**: the same, then
  ``await task.get()`` of each task after the waits, as a script reads its
  results (huey's ``result.get()`` in (b) reads the result too); compared
  with (b).
* **(a) raw diskcache ceiling**: the same number of writes per task with a
  plain ``diskcache.Cache`` (``sqlite_synchronous=2``, i.e. FULL, and
  ``eviction_policy="none"``), one thread, B tasks' writes per
  ``cache.transact()``, for each B of ``--batches``.  Writes per task, read off
  ``engine/_engine.py`` and ``backends/disk.py`` (backend calls that write):
  enqueue (record + queue entry, one call), claim, start (pending ->
  in_progress), the result payload, finish (in_progress -> success) and ack:
  **6**.  The reference does 6 ``set``/``delete`` calls per task, record-sized
  values where errands writes records.  (errands claims several tasks per
  call when several are ready, so it may make slightly fewer calls; it also
  writes two counters in ``meta`` the reference does not.)  errands makes
  those writes in four calls (the start reads and writes in one; the
  result, the finish and the ack are one), and under FULL a claim and a
  start commit without an fsync of their own (see ``backends/_database.py``).
* **(b) huey**: ``huey.SqliteHuey`` (``fsync=True``: synchronous=FULL, the same
  durability; SQLite's default here too) with an in-process consumer of H
  worker threads (``create_consumer(worker_type="thread")``, ``start()`` /
  ``stop(graceful=True)``); N no-op tasks enqueued from one thread (huey's
  storage takes one lock per operation, so more enqueuing threads only queue on
  it), then ``result.get(blocking=True)`` on each.  ``store_none=True`` so that
  a task returning None has a result to wait for, as in errands.
* **group commit**, measured in the errands burst: counters wrapped around
  two private methods of that one backend object (the database thread's
  ``_run_batch`` and the store's ``_write_result``; nothing else changes) count
  the commits, the calls that write in each, and the result writes.
* **sequential latency**: one ``await submit()`` at a time on an idle durable
  engine (each waits for its task to finish before the next), which shows the
  cost of one commit (one fsync); beside it one huey enqueue at a time and one
  ``diskcache`` ``set`` per commit.

Each measurement is warmed up once, then repeated R times in rounds (one of
each per round, so a noisy moment hits all of them); the table shows the
median and the min-max.  Ratios are taken within each round, then their median
is shown.  Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import _common
import diskcache
import trio
from _common import NOISE_NOTE, Columns, Latency, Series, check_success, load, met, run, version

import errands
from errands.backends import DiskCacheBackend

#: Default engine concurrency (more only adds contention for the no-op tasks).
WORKERS = 64
#: Default number of submitter coroutines.
SUBMITTERS = 32
#: Default huey worker threads: on this kind of load huey does best with few.
HUEY_WORKERS = 2
#: Default tasks per transaction for the raw diskcache reference.  1 task (6
#: writes) per commit is about what errands' group commit reaches under this
#: load (see the "group commit" lines); 16 is well batched.
BATCHES = (1, 16)
#: Backend calls that write, per task (see the module docstring).
WRITES_PER_TASK = 6
#: The issue's goals: durable errands >= 0.5 of (a) and >= 2x (b).
CEILING_TARGET = 0.5
HUEY_TARGET = 2.0
HUEY_MISSING = "huey not installed: pip install huey"
#: The errands backend's and the raw reference's ``synchronous`` (--synchronous).
SYNCHRONOUS = ["FULL"]

perf_counter = time.perf_counter

# ---------------------------------------------------------------------- the tasks

noops = errands.Service("bench-disk")


@noops.task
def sync_noop() -> None:
    pass


# ---------------------------------------------------------------------- helpers


@contextmanager
def scratch(base: str | None) -> Iterator[str]:
    """A fresh temporary directory under ``base``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="errands-bench-", dir=base) as path:
        yield path


class CommitMeter:
    """Counts the database thread's transactions and the calls in them.

    It wraps the private ``_run_batch`` of the backend's database object on that
    one instance; when the backend has no such thing the meter stays empty.
    The counters are written by the database thread only and read after it
    stopped.
    """

    def __init__(self) -> None:
        self.commits = 0
        self.write_commits = 0
        self.calls = 0
        self.write_calls = 0
        self.results = 0
        self.attached = False
        self._db: Any = None

    @property
    def fsyncs(self) -> int:
        """Write commits that were fsynced: the database's own count where it
        keeps one, else every write commit (all are, under FULL)."""
        synced = getattr(self._db, "synced", None)
        if synced is None:  # every write commit is fsynced under FULL, none under NORMAL
            return self.write_commits if SYNCHRONOUS[0] == "FULL" else 0
        return int(synced)

    def attach(self, backend: DiskCacheBackend) -> None:
        db = getattr(backend, "_db", None)
        run_batch = getattr(db, "_run_batch", None)
        store: Any = backend.store
        write_result = getattr(store, "_write_result", None)
        if db is None or run_batch is None or write_result is None:
            return

        def counting_batch(conn: Any, batch: list[Any]) -> None:
            writes = sum(1 for call in batch if getattr(call, "write", True))
            self.commits += 1
            self.calls += len(batch)
            if writes:
                self.write_commits += 1
                self.write_calls += writes
            run_batch(conn, batch)

        def counting_result(*args: Any) -> None:
            self.results += 1  # each is one diskcache transaction of its own
            write_result(*args)

        db._run_batch = counting_batch
        self._db = db
        store._write_result = counting_result
        self.attached = True


# ---------------------------------------------------------------------- errands


async def errands_burst(
    n: int,
    submitters: int,
    workers: int,
    base: str | None,
    meter: CommitMeter | None = None,
    read: bool = False,
) -> float:
    """Seconds from the first of N concurrent submits until all N tasks are
    final (``read``: and each one's result was read with ``get()``)."""
    with scratch(base) as directory:
        backend = DiskCacheBackend(directory, synchronous=SYNCHRONOUS[0])
        if meter is not None:
            meter.attach(backend)
        async with errands.open_engine(noops, backend=backend, workers=workers) as client:
            endpoint = client.sync_noop
            tasks: list[Any] = []
            shares = [n // submitters + (i < n % submitters) for i in range(submitters)]

            async def submitter(count: int) -> None:
                for _ in range(count):
                    tasks.append(await endpoint.submit())

            begin = perf_counter()
            async with trio.open_nursery() as nursery:
                for count in shares:
                    if count:
                        nursery.start_soon(submitter, count)
            statuses = [await task.wait() for task in tasks]
            if read:
                for task in tasks:
                    await task.get()
            elapsed = perf_counter() - begin
    check_success(statuses)
    return elapsed


async def errands_sequential(
    n: int, workers: int, base: str | None
) -> tuple[list[float], list[float]]:
    """Submit latencies and submit -> final latencies (seconds) of N tasks, one at a time."""
    submit, round_trip = [], []
    statuses = []
    with scratch(base) as directory:
        backend = DiskCacheBackend(directory, synchronous=SYNCHRONOUS[0])
        async with errands.open_engine(noops, backend=backend, workers=workers) as client:
            endpoint = client.sync_noop
            for _ in range(n):
                t0 = perf_counter()
                task = await endpoint.submit()
                t1 = perf_counter()
                statuses.append(await task.wait())
                t2 = perf_counter()
                submit.append(t1 - t0)
                round_trip.append(t2 - t0)
    check_success(statuses)
    return submit, round_trip


# ---------------------------------------------------------------------- (a) raw diskcache


def _open_cache(directory: str) -> diskcache.Cache:
    level = 2 if SYNCHRONOUS[0] == "FULL" else 1
    return diskcache.Cache(directory, eviction_policy="none", sqlite_synchronous=level)


def raw_diskcache(n: int, per_commit: int, base: str | None) -> float:
    """Seconds for N tasks' worth of writes, ``per_commit`` tasks per transaction."""
    record = b"r" * 400  # a stored record of a no-op task is ~390 bytes of JSON
    entry = b"q" * 64
    result = b"null"
    ids = [secrets.token_urlsafe(16) for _ in range(n)]
    with scratch(base) as directory:
        cache = _open_cache(directory)
        try:
            begin = perf_counter()
            for start in range(0, n, per_commit):
                with cache.transact():
                    for task_id in ids[start : start + per_commit]:
                        cache.set(f"t:{task_id}", record)  # enqueue
                        cache.set(f"q:{task_id}", entry)  # claim
                        cache.set(f"t:{task_id}", record)  # start
                        cache.set(f"r:{task_id}", result)  # result payload
                        cache.set(f"t:{task_id}", record)  # finish
                        cache.delete(f"q:{task_id}")  # ack
            elapsed = perf_counter() - begin
        finally:
            cache.close()
    return elapsed


def raw_set_latency(n: int, base: str | None) -> list[float]:
    """Seconds of N ``cache.set`` calls, each its own transaction (one fsync each)."""
    record = b"r" * 400
    latencies = []
    with scratch(base) as directory:
        cache = _open_cache(directory)
        try:
            for i in range(n):
                t0 = perf_counter()
                cache.set(f"t:{i}", record)
                latencies.append(perf_counter() - t0)
        finally:
            cache.close()
    return latencies


# ---------------------------------------------------------------------- (b) huey


def huey_noop() -> None:
    pass


def _import_huey() -> ModuleType | None:
    try:
        return importlib.import_module("huey")
    except ImportError:
        return None


def huey_burst(huey: ModuleType, n: int, workers: int, base: str | None) -> float:
    """Seconds from the first of N enqueues until every result has been read."""
    with scratch(base) as directory:
        app = _common.huey_app(huey, os.path.join(directory, "huey.db"))
        noop = app.task()(huey_noop)
        try:
            with _common.huey_consumer(app, workers):
                begin = perf_counter()
                results = [noop() for _ in range(n)]
                for result in results:
                    result.get(blocking=True, timeout=120, max_delay=0.05)
                elapsed = perf_counter() - begin
        finally:
            app.storage.close()
    return elapsed


def huey_enqueue_latency(huey: ModuleType, n: int, base: str | None) -> list[float]:
    """Seconds of N enqueues one at a time (no consumer: enqueue only)."""
    with scratch(base) as directory:
        return _common.huey_enqueue_latency(huey, n, os.path.join(directory, "huey.db"))


# ---------------------------------------------------------------------- running and reporting


def _versions(huey: ModuleType | None) -> str:
    huey_version = version("huey") if huey is not None else "not installed"
    return _common.versions(
        (
            f"diskcache {diskcache.__version__}",
            f"huey {huey_version}",
            f"SQLite {sqlite3.sqlite_version}",
        )
    )


def _filesystem(path: str) -> str:
    """The type of the filesystem holding ``path`` (fsync is free on tmpfs)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "?"
    real, best, kind = os.path.realpath(path), "", "?"
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3:
            point = fields[1]
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def _batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4_000, help="tasks per burst (default 4000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians shown (default 5)")
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help=f"engine workers (default {WORKERS})"
    )
    parser.add_argument(
        "--submitters",
        type=int,
        default=SUBMITTERS,
        help=f"concurrent submitter coroutines (default {SUBMITTERS})",
    )
    parser.add_argument(
        "--huey-workers",
        type=int,
        default=HUEY_WORKERS,
        help=f"huey consumer worker threads (default {HUEY_WORKERS})",
    )
    parser.add_argument(
        "--sequential",
        type=int,
        default=500,
        help="tasks submitted one at a time for the latency figures (default 500)",
    )
    parser.add_argument(
        "--batches",
        type=_batches,
        default=BATCHES,
        help="tasks per transaction for the raw diskcache reference (default 1,16)",
    )
    parser.add_argument(
        "--dir", default=None, help="where the temporary directories go (default: the system's)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: n=300, 1 repeat, 30 sequential"
    )
    parser.add_argument(
        "--synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="errands' and (a)'s SQLite synchronous; huey stays FULL (default FULL)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeat, args.sequential = 300, 1, 30
    n, repeat, workers, seq = args.n, args.repeat, args.workers, args.sequential
    submitters, huey_workers, batches, base = (
        args.submitters,
        args.huey_workers,
        args.batches,
        args.dir,
    )
    if min(n, repeat, workers, seq, submitters, huey_workers) < 1:
        parser.error("counts must be positive")

    huey = _import_huey()
    where = base or tempfile.gettempdir()
    SYNCHRONOUS[0] = args.synchronous
    what = "fsync per commit" if args.synchronous == "FULL" else "no fsync but at checkpoints"
    print(
        f"errands durable benchmark: DiskCacheBackend, synchronous={args.synchronous} ({what});"
        " huey: synchronous=FULL"
    )
    print(_versions(huey))
    print(
        f"N={n} tasks per burst from {submitters} submitter coroutines, engine workers={workers}, "
        f"huey workers={huey_workers}, {seq} sequential, {repeat} repeat(s); "
        f"temp dirs under {where} ({_filesystem(where)}); load average at start: {load()}"
    )
    print(
        f"writes per task: {WRITES_PER_TASK} (enqueue, claim, start, result, finish, ack); "
        "(a) batches: "
        + ", ".join(f"{b} task(s) = {b * WRITES_PER_TASK} writes" for b in batches)
        + " per commit"
    )
    print(NOISE_NOTE)
    if huey is None:
        print(HUEY_MISSING)
    print()

    wall = perf_counter()
    warm = max(n // 4, 100)
    run(errands_burst, warm, submitters, workers, base)
    run(errands_burst, warm, 1, workers, base)
    run(errands_burst, warm, 1, workers, base, None, True)
    for size in batches:
        run(raw_diskcache, warm, size, base)
    if huey is not None:
        run(huey_burst, huey, warm, huey_workers, base)
    run(errands_sequential, min(seq, 50), workers, base)

    durable = Series()
    ceiling = {size: Series() for size in batches}
    ceiling_ratio = {size: Series() for size in batches}
    huey_rate, huey_ratio = Series(), Series()
    single, single_ratio = Series(), Series()
    single_get, single_get_ratio = Series(), Series()
    fsyncs_per_task, single_fsyncs, single_commits = Series(), Series(), Series()
    per_commit, commits_per_task, calls_per_task, results_per_task = (
        Series(),
        Series(),
        Series(),
        Series(),
    )
    keys = ("submit", "round trip", "huey", "set")
    latency = {key: Latency() for key in keys}
    for _ in range(repeat):
        meter = CommitMeter()
        d = n / run(errands_burst, n, submitters, workers, base, meter)
        durable.add(d)
        if meter.attached and meter.write_commits:
            per_commit.add(meter.write_calls / meter.write_commits)
            commits_per_task.add(meter.write_commits / n)
            calls_per_task.add(meter.write_calls / n)
            results_per_task.add(meter.results / n)
            fsyncs_per_task.add(meter.fsyncs / n)
        for size in batches:
            a = n / run(raw_diskcache, n, size, base)
            ceiling[size].add(a)
            ceiling_ratio[size].add(d / a)
        meter = CommitMeter()
        one = n / run(errands_burst, n, 1, workers, base, meter)
        single.add(one)
        if meter.attached:
            single_commits.add(meter.write_commits / n)
            single_fsyncs.add(meter.fsyncs / n)
        read = n / run(errands_burst, n, 1, workers, base, None, True)
        single_get.add(read)
        if huey is not None:
            b = n / run(huey_burst, huey, n, huey_workers, base)
            huey_rate.add(b)
            huey_ratio.add(d / b)
            single_ratio.add(one / b)
            single_get_ratio.add(read / b)
        submit, round_trip = run(errands_sequential, seq, workers, base)
        samples = {"submit": submit, "round trip": round_trip}
        samples["set"] = run(raw_set_latency, seq, base)
        if huey is not None:
            samples["huey"] = run(huey_enqueue_latency, huey, seq, base)
        for key, values in samples.items():
            latency[key].add(values)
    elapsed = perf_counter() - wall

    table = Columns(label=52, value=9)
    print(f"throughput, tasks/s (median of {repeat} [min-max])")
    print(table.rate(f"errands durable, sync no-op, {workers} workers", durable))
    print(table.rate("errands durable, one submitter", single))
    print(table.rate("errands durable, one submitter, then get() each", single_get))
    for size in batches:
        label = f"(a) raw diskcache, {size} task(s) per commit"
        print(table.rate(label, ceiling[size]))
    if huey is not None:
        print(table.rate(f"(b) huey SqliteHuey, {huey_workers} worker threads", huey_rate))
    else:
        print(f"  (b) {HUEY_MISSING}")
    print()
    print("ratios (median of per-round ratios [min-max])")
    for size in batches:
        series = ceiling_ratio[size]
        note = f"target >= {CEILING_TARGET:.2f}: {met(series.median, CEILING_TARGET)}"
        print(
            table.ratio(f"ratio errands / (a) raw diskcache, {size} task(s)/commit", series, note)
        )
    if huey is not None:
        note = f"target >= {HUEY_TARGET:.2f}: {met(huey_ratio.median, HUEY_TARGET)}"
        print(table.ratio("ratio errands / (b) huey", huey_ratio, note))
        note = f"target >= {HUEY_TARGET:.2f}: {met(single_ratio.median, HUEY_TARGET)}"
        print(table.ratio("ratio errands, one submitter / (b) huey", single_ratio, note))
        note = f"target >= {HUEY_TARGET:.2f}: {met(single_get_ratio.median, HUEY_TARGET)}"
        print(
            table.ratio("ratio errands, one submitter + get() / (b) huey", single_get_ratio, note)
        )
    else:
        print(f"  ratio errands / (b) huey: skipped, {HUEY_MISSING}")
    print()
    print(f"errands group commit in the burst (median of {repeat} [min-max])")
    if per_commit.values:
        print(table.ratio("write calls per errands.db commit (mean)", per_commit))
        print(table.ratio("write calls per task, errands.db", calls_per_task))
        print(table.ratio("errands.db write commits per task", commits_per_task))
        print(table.ratio("  of them fsynced", fsyncs_per_task))
        print(table.ratio("one submitter: errands.db write commits per task", single_commits))
        print(table.ratio("  of them fsynced", single_fsyncs))
        print(table.ratio("results-cache commits per task (not grouped)", results_per_task))
    else:
        print("  n/a: the backend's database thread could not be metered")
    print()
    print(f"sequential latency, microseconds (median of {repeat} [min-max])")
    latency_table = Columns(label=44, value=9, span=17)
    print(latency_table.latency_header())
    labels = {
        "submit": f"errands submit, idle engine ({seq})",
        "round trip": "errands submit -> final, idle engine",
        "huey": "reference: huey enqueue, one at a time",
        "set": "reference: diskcache set, one per commit",
    }
    for key, figures in latency.items():
        if figures.p50.values:
            print(latency_table.latency(labels[key], figures))
    print()
    print(f"took {elapsed:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
