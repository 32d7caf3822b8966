"""A batch's counts against reading each member's status: microseconds per member.

Run it::

    python benchmarks/batch_counts.py [--n N] [--reference-n M] [--repeat R]
    python benchmarks/batch_counts.py --quick        # seconds: a smoke run, figures meaningless

For each backend, memory and ``DiskCacheBackend`` (in a temporary folder), a
batch of N no-op tasks is submitted with ``submit_many`` and waited for; then,
in each round:

* **counts**: ``await batch.counts()``, what ``Batch.wait()`` returns, what
  ``GET /batches/{id}`` and ``errands batch status`` show, and what the
  dashboard asks of every running batch at each refresh;
* **the reference**: ``await task.get_status()`` of M members, one after
  another (what code without counts would do), timed per member.

Both are shown per member, and the ratio reference / counts is taken
within each round.  Benchmarks are not tests: nothing here asserts a speed.
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

svc = errands.Service("counts_bench")


@svc.task
async def noop() -> None:
    pass


async def measure(
    backend: Any, n: int, reference_n: int, repeat: int
) -> tuple[Series, Series, Series]:
    """Per member: counts, the reference, and their ratio, one of each per round."""
    counts_us, reference_us, ratio = Series(), Series(), Series()
    async with errands.open_engine(svc, backend=backend, workers=64) as client:
        batch = await client.noop.submit_many([{}] * n)
        done = await batch.wait(timeout=600)
        if done["success"] != n:
            raise RuntimeError(f"the batch did not succeed whole: {done}")
        sample = batch.tasks[:reference_n]
        await batch.counts()  # warm
        for _ in range(repeat):
            start = perf_counter()
            counts = await batch.counts()
            per_count = (perf_counter() - start) / n
            if counts["success"] != n:
                raise RuntimeError(f"counts say {counts}")
            start = perf_counter()
            for task in sample:
                await task.get_status()
            per_read = (perf_counter() - start) / len(sample)
            counts_us.add(per_count * 1e6)
            reference_us.add(per_read * 1e6)
            ratio.add(per_read / per_count)
    return counts_us, reference_us, ratio


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="batch members (default 10000)")
    parser.add_argument(
        "--reference-n", type=int, default=1_000, help="members read one by one (default 1000)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians shown (default 5)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small n, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.reference_n, args.repeat = 200, 50, 1
    if min(args.n, args.reference_n, args.repeat) < 1:
        parser.error("--n, --reference-n and --repeat must be positive")
    args.reference_n = min(args.reference_n, args.n)

    print("errands batch counts benchmark")
    print(_common.versions())
    print(
        f"a finished batch of {args.n} members; get_status() of {args.reference_n} of them "
        f"as the reference; {args.repeat} round(s); load average at start: {load()}"
    )
    print(NOISE_NOTE)
    wall = perf_counter()
    table = Columns(label=44, value=11)
    with tempfile.TemporaryDirectory(prefix="errands-counts-") as scratch:
        backends = {
            "memory": lambda: None,
            "diskcache": lambda: DiskCacheBackend(os.path.join(scratch, "q")),
        }
        for label, make in backends.items():
            counts_us, reference_us, ratio = run(
                measure, make(), args.n, args.reference_n, args.repeat
            )
            print()
            print(f"{label}: microseconds per member (median of {args.repeat} [min-max])")
            print(table.figure("batch.counts()", counts_us, "µs"))
            print(table.figure("reference: get_status() of each", reference_us, "µs"))
            print(table.ratio(f"ratio reference / counts ({label})", ratio))
    print()
    print(f"took {perf_counter() - wall:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
