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
    return {"bytes": (after - before) * 1024 / n}


def measure(kind: str, n: int) -> float:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--n", str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["bytes"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="pending tasks (default 100000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: n=2000")
    parser.add_argument("--child", choices=("errands", "floor"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 2000
    if args.child:
        run = child_errands if args.child == "errands" else child_floor
        print(json.dumps(run(args.n)))
        return 0
    print("errands: memory per pending task (RSS), beside a plain-Python floor")
    print(f"N={args.n} pending tasks, each measured in a fresh process")
    print("(figures are noisy on a shared machine; the ratios are what count)")
    print()
    ours = measure("errands", args.n)
    floor = measure("floor", args.n)
    print(f"  {'errands: a pending task and its handle':46s} {ours:8,.0f} bytes")
    print(f"  {'reference: a plain dict per task':46s} {floor:8,.0f} bytes")
    print(f"  {'ratio errands / plain dict':46s} {ours / floor:8.2f}")
    verdict = "met" if ours <= TARGET_BYTES else "NOT met"
    print(f"  target: at most {TARGET_BYTES:,} bytes per pending task: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
