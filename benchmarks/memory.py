"""Memory per waiting task: what N pending tasks add to a process's RSS,
beside a plain-Python floor measured in the same run.

Run it::

    python benchmarks/memory.py [--n N]
    python benchmarks/memory.py --quick        # seconds: a smoke run, figures meaningless

Each measurement runs in a fresh child process (so one does not reuse memory
another freed), which reports ``VmRSS`` (``/proc/self/status``) before and
after, divided by N:

* **errands**: ``errands.start(svc, workers=1)`` on the memory backend; one
  task holds the only slot, then this thread submits N tasks
  ``work(n=i, text="item <i>")`` from a plain thread, keeping every handle
  (as a script does): N pending tasks, records, queue entries and handles.
* **the floor** (the reference): N plain dicts with the same arguments, an
  id and six fields, in a dict keyed by id: about the least any queue that
  keeps a task's record can hold per task in Python.

And what the history costs once the tasks have ended (kept a day by
default), also each in a fresh process:

* **errands, finished**: the same N tasks run to their end (submitted from
  a plain thread, each waited on, the handles then dropped): what each
  finished task leaves behind (its record and result), as live memory
  (``tracemalloc``) and as RSS (which also counts the holes that freed
  objects leave in the allocator's pools), and how long one full garbage
  collection (``gc.collect()``) then takes;
* **the floor, full collection**: the same collection beside N plain dicts
  as above (the reference for the pause).

Issue 14's target: at most 2 KB per pending task beyond its payload (the
arguments here are about 40 bytes).  Benchmarks are not tests: nothing here
asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

TARGET_BYTES = 2048


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child_errands(n: int) -> dict[str, float]:
    import errands

    svc = errands.Service("memory")
    hold = threading.Event()

    @svc.task
    def block() -> None:
        hold.wait(120)

    @svc.task
    def work(n: int, text: str) -> int:
        return n

    with errands.start(svc, workers=1) as client:
        blocker = client.block.submit()
        while blocker.get_status() is not errands.TaskStatus.IN_PROGRESS:
            time.sleep(0.01)
        before = rss_kib()
        tasks = [client.work.submit(n=i, text=f"item {i}") for i in range(n)]
        pending = client.work.get_task(tasks[-1].id).get_status()  # stores the hand-off
        after = rss_kib()
        assert pending is errands.TaskStatus.PENDING
        hold.set()
    return {"bytes": (after - before) * 1024 / n}


def _full_collection_ms() -> float:
    """The median of three full garbage collections, in milliseconds."""
    import gc

    times = []
    for _ in range(3):
        start = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[1]


def child_finished(n: int, traced: bool = False) -> dict[str, float]:
    """``traced``: live memory by tracemalloc alone (its traces would swell
    the RSS), else RSS and the pause."""
    import gc
    import tracemalloc

    import errands

    svc = errands.Service("memory")

    @svc.task
    def work(n: int, text: str) -> int:
        return n

    with errands.start(svc) as client:
        warm = [client.work.submit(n=i, text=f"item {i}") for i in range(100)]
        for task in warm:
            task.wait(timeout=120)
        del warm, task
        gc.collect()
        before = rss_kib()
        if traced:
            tracemalloc.start()
        live_before = tracemalloc.get_traced_memory()[0]
        tasks = [client.work.submit(n=i, text=f"item {i}") for i in range(n)]
        for task in tasks:
            task.wait(timeout=120)
        del tasks, task
        gc.collect()
        if traced:
            return {"live": (tracemalloc.get_traced_memory()[0] - live_before) / n}
        after = rss_kib()
        return {"bytes": (after - before) * 1024 / n, "ms": _full_collection_ms()}


def child_floor(n: int) -> dict[str, float]:
    before = rss_kib()
    kept = {}
    for i in range(n):
        task_id = os.urandom(16).hex()
        kept[task_id] = {
            "id": task_id,
            "name": "work",
            "status": "pending",
            "created_at": time.time(),
            "attempt": 0,
            "args": {"n": i, "text": f"item {i}"},
        }
    after = rss_kib()
    assert len(kept) == n
    return {"bytes": (after - before) * 1024 / n, "ms": _full_collection_ms()}


def measure(kind: str, n: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--n", str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="pending tasks (default 100000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: n=2000")
    parser.add_argument(
        "--child",
        choices=("errands", "finished", "finished-live", "floor"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 2000
    if args.n < 1:
        parser.error("--n must be at least 1")
    if args.child:
        children = {
            "errands": child_errands,
            "finished": child_finished,
            "finished-live": lambda n: child_finished(n, traced=True),
            "floor": child_floor,
        }
        print(json.dumps(children[args.child](args.n)))
        return 0
    print("errands: memory per pending task (RSS), beside a plain-Python floor")
    print(f"N={args.n} pending tasks, each measured in a fresh process")
    print("(figures are noisy on a shared machine; the ratios are what count)")
    print()
    ours = measure("errands", args.n)["bytes"]
    reference = measure("floor", args.n)
    floor = reference["bytes"]
    print(f"  {'errands: a pending task and its handle':46s} {ours:8,.0f} bytes")
    print(f"  {'reference: a plain dict per task':46s} {floor:8,.0f} bytes")
    print(f"  {'ratio errands / plain dict':46s} {ours / floor:8.2f}")
    verdict = "met" if ours <= TARGET_BYTES else "NOT met"
    print(f"  target: at most {TARGET_BYTES:,} bytes per pending task: {verdict}")
    print()
    print(f"the history: N={args.n} tasks run to their end, handles dropped")
    ended = measure("finished", args.n)
    live = measure("finished-live", args.n)["live"]
    print(f"  {'errands: a finished task, live (tracemalloc)':46s} {live:8,.0f} bytes")
    print(f"  {'errands: a finished task, RSS':46s} {ended['bytes']:8,.0f} bytes")
    print(f"  {'errands: one full garbage collection then':46s} {ended['ms']:8,.1f} ms")
    print(f"  {'reference: the same beside the plain dicts':46s} {reference['ms']:8,.1f} ms")
    print(f"  {'ratio errands / plain dicts (the pause)':46s} {ended['ms'] / reference['ms']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
