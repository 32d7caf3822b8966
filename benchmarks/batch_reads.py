"""Reading a finished batch: its counts, its results, ``as_completed``, a listing.

Run it::

    python benchmarks/batch_reads.py [--n N] [--reference-n M] [--repeat R]
    python benchmarks/batch_reads.py --quick        # seconds: a smoke run, figures meaningless

For each backend, memory and ``DiskCacheBackend`` (in a temporary folder),
``open_engine`` runs a batch of N no-op tasks (``submit_many``, then
``wait()``); then, in each round, microseconds per member of:

* **counts**: ``await batch.counts()`` (what ``wait()`` returns, ``GET
  /batches/{id}``, ``errands wait --batch``, the dashboard's batch rows);
* **results**: ``async for r in batch.results()``;
* **as_completed + get**: ``async for t in errands.as_completed(batch.tasks)``
  then ``await t.get()``;
* **a listing**: ``engine.list(limit=100)`` with the N tasks kept, per task
  listed;
* **the reference**: ``await task.get_status()`` of M members, one after
  another (what code without the calls above would do).

The ratio reference / each is taken within each round.  Then the thread
path (``errands.start()``, memory): ``submit_many`` of N, then ``for t in
as_completed(batch.tasks): t.get()``, against the same tasks' ``get()`` one
after another once all are final (tasks per second).  Benchmarks are not
tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import _common
from _common import NOISE_NOTE, Columns, Series, load, run

import errands
from errands.backends import DiskCacheBackend

perf_counter = time.perf_counter

svc = errands.Service("reads_bench")


@svc.task
async def noop() -> int:
    return 0


@svc.task
def sync_noop() -> int:
    return 0


FIGURES = ("counts", "results", "as_completed + get", "a listing (per task listed)")


async def measure(backend: Any, n: int, reference_n: int, repeat: int) -> dict[str, Series]:
    """Per member, one of each figure and of the reference per round, and
    the ratios reference / figure."""
    series = {name: Series() for name in (*FIGURES, "reference")}
    ratios = {name: Series() for name in FIGURES}
    async with errands.open_engine(svc, backend=backend, workers=64) as client:
        batch = await client.noop.submit_many([{}] * n)
        done = await batch.wait(timeout=600)
        if done["success"] != n:
            raise RuntimeError(f"the batch did not succeed whole: {done}")
        sample = batch.tasks[:reference_n]
        await batch.counts()  # warm
        for _ in range(repeat):
            times = {}
            start = perf_counter()
            counts = await batch.counts()
            times["counts"] = (perf_counter() - start) / n
            if counts["success"] != n:
                raise RuntimeError(f"counts say {counts}")
            start = perf_counter()
            got = [r.result async for r in batch.results()]
            times["results"] = (perf_counter() - start) / n
            if got != [0] * n:
                raise RuntimeError("results() did not read every result")
            start = perf_counter()
            async for task in errands.as_completed(batch.tasks, timeout=600):
                await task.get()
            times["as_completed + get"] = (perf_counter() - start) / n
            start = perf_counter()
            listed = await client.engine.list(limit=100)
            times["a listing (per task listed)"] = (perf_counter() - start) / len(listed)
            start = perf_counter()
            for task in sample:
                await task.get_status()
            reference = (perf_counter() - start) / len(sample)
            series["reference"].add(reference * 1e6)
            for name, seconds in times.items():
                series[name].add(seconds * 1e6)
                ratios[name].add(reference / seconds)
    return series | {f"ratio {name}": ratios[name] for name in FIGURES}


def thread_path(n: int, repeat: int) -> tuple[Series, Series, Series]:
    """Tasks per second: as_completed + get, get() one after another, ratio."""
    fast, slow, ratio = Series(), Series(), Series()
    with errands.start(svc) as client:
        for _ in range(repeat):
            batch = client.sync_noop.submit_many([{}] * n)
            start = perf_counter()
            for task in errands.as_completed(batch.tasks, timeout=600):
                task.get()
            a = n / (perf_counter() - start)
            start = perf_counter()
            for task in batch.tasks:
                task.get()
            b = n / (perf_counter() - start)
            fast.add(a)
            slow.add(b)
            ratio.add(a / b)
    return fast, slow, ratio


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="batch members (default 10000)")
    parser.add_argument(
        "--reference-n", type=int, default=1_000, help="members read one by one (default 1000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians shown (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small n, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.reference_n, args.repeat = 200, 50, 1
    if min(args.n, args.reference_n, args.repeat) < 1:
        parser.error("--n, --reference-n and --repeat must be positive")
    args.reference_n = min(args.reference_n, args.n)

    print("errands batch reads benchmark")
    print(_common.versions())
    print(
        f"a finished batch of {args.n} members; get_status() of {args.reference_n} of them "
        f"as the reference; {args.repeat} round(s); load average at start: {load()}"
    )
    print(NOISE_NOTE)
    wall = perf_counter()
    table = Columns(label=44, value=11)
    with tempfile.TemporaryDirectory(prefix="errands-reads-") as scratch:
        backends = {
            "memory": lambda: None,
            "diskcache": lambda: DiskCacheBackend(os.path.join(scratch, "q")),
        }
        for label, make in backends.items():
            found = run(measure, make(), args.n, args.reference_n, args.repeat)
            print()
            print(f"{label}: microseconds per member (median of {args.repeat} [min-max])")
            for name in FIGURES:
                print(table.figure(name, found[name], "µs"))
            print(table.figure("reference: get_status() of each", found["reference"], "µs"))
            for name in FIGURES:
                print(table.ratio(f"ratio reference / {name} ({label})", found[f"ratio {name}"]))
    fast, slow, ratio = thread_path(args.n, args.repeat)
    print()
    print(f"thread path (errands.start(), memory), tasks per second (median of {args.repeat})")
    print(table.rate("submit_many, then as_completed + get", fast))
    print(table.rate("reference: get() of each, all final", slow))
    print(table.ratio("ratio as_completed + get / reference", ratio))
    print()
    print(f"took {perf_counter() - wall:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
