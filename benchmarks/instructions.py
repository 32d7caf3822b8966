"""The work per task, counted in CPU instructions: errands' paths beside huey's.

Run it::

    python benchmarks/instructions.py [--n N] [--durable-n M] [--loop NAME ...]
    python benchmarks/instructions.py --quick      # seconds, no valgrind: a smoke run

Wall-clock rates on a shared machine spread by 10-40% between rounds, more
than most single changes to the engine move them.  Instructions do not:
each loop here runs under ``valgrind --tool=callgrind``, which counts what
the CPU executes whatever else the machine does (the same count to about
0.4% run to run; the interpreter's hash seed moves it a little).  Each loop
runs twice in a fresh process, once with no tasks and once with N; the
difference divided by N is the instructions per task, start-up and
warm-up subtracted.  Threads run one at a time under valgrind, so what this
counts is work, not waiting: fsyncs, sleeps and lock waits cost nothing here.

The loops, N no-op tasks each:

* ``thread``: ``errands.start(svc)`` (memory backend), a sync task,
  submitted N times from this thread, then ``wait()`` on each;
* ``async``: ``open_engine`` (memory backend), an ``async def`` task,
  ``await submit()`` N times, then ``await wait()`` on each;
* ``durable``: the ``thread`` loop on ``DiskCacheBackend`` (SQLite's work
  included);
* ``huey``, the reference of ``thread``: huey's ``MemoryHuey`` with 4 thread
  workers, enqueue N, then read each result;
* ``huey-sqlite``, the reference of ``durable``: ``SqliteHuey(fsync=True)``,
  the same.

The ratios are huey's instructions per task over errands' (how much of
huey's speed errands would have if both were bound by their CPU work alone).
Benchmarks are not tests: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import _common
from _common import load

import errands

svc = errands.Service("instructions")


@svc.task
def noop() -> int:
    return 1


@svc.task
async def anoop() -> None:
    pass


WARM = 200  # tasks run before the counted ones, in both processes of a pair


def thread_loop(n: int) -> None:
    with errands.start(svc) as client:
        _submit_and_wait(client.noop, WARM)
        _submit_and_wait(client.noop, n)


def durable_loop(n: int) -> None:
    from errands.backends import DiskCacheBackend

    with (
        tempfile.TemporaryDirectory(prefix="errands-instructions-") as scratch,
        errands.start(svc, backend=DiskCacheBackend(os.path.join(scratch, "q"))) as client,
    ):
        _submit_and_wait(client.noop, WARM // 4)
        _submit_and_wait(client.noop, n)


def _submit_and_wait(endpoint: Any, n: int) -> None:
    tasks = [endpoint.submit() for _ in range(n)]
    for task in tasks:
        if task.wait(timeout=600) is not errands.TaskStatus.SUCCESS:
            raise RuntimeError(f"task {task.id} did not succeed")


def async_loop(n: int) -> None:
    import trio

    async def main() -> None:
        async with errands.open_engine(svc, workers=256) as client:
            for count in (WARM, n):
                tasks = [await client.anoop.submit() for _ in range(count)]
                for task in tasks:
                    if await task.wait(timeout=600) is not errands.TaskStatus.SUCCESS:
                        raise RuntimeError(f"task {task.id} did not succeed")

    trio.run(main)


def huey_loop(n: int, sqlite: bool = False) -> None:
    import huey

    with tempfile.TemporaryDirectory(prefix="errands-instructions-") as scratch:
        app = _common.huey_app(huey, os.path.join(scratch, "huey.db") if sqlite else None)
        task = app.task()(lambda: None)
        with _common.huey_consumer(app, 4):
            for count in (WARM // 4 if sqlite else WARM, n):
                results = [task() for _ in range(count)]
                for result in results:
                    result.get(blocking=True, timeout=600, max_delay=0.05)


LOOPS: dict[str, Callable[[int], None]] = {
    "thread": thread_loop,
    "async": async_loop,
    "durable": durable_loop,
    "huey": huey_loop,
    "huey-sqlite": lambda n: huey_loop(n, sqlite=True),
}
#: errands' loop -> its reference.
REFERENCES = {"thread": "huey", "durable": "huey-sqlite"}
_COLLECTED = re.compile(r"Collected\s*:\s*([0-9]+)")


def count(valgrind: str, loop: str, n: int) -> int:
    """Instructions that this script's ``loop`` of ``n`` tasks executes in all."""
    done = subprocess.run(
        [
            valgrind,
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            loop,
            str(n),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"the {loop} loop under valgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_task(valgrind: str, loop: str, n: int) -> float:
    return (count(valgrind, loop, n) - count(valgrind, loop, 0)) / n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="tasks per memory loop (3000)")
    parser.add_argument("--durable-n", type=int, default=1000, help="tasks per disk loop (1000)")
    parser.add_argument(
        "--loop", action="append", choices=sorted(LOOPS), help="only these loops (repeatable)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="run each loop once, 50 tasks, without valgrind"
    )
    parser.add_argument("--child", nargs=2, metavar=("LOOP", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        LOOPS[args.child[0]](int(args.child[1]))
        return 0
    loops = args.loop or list(LOOPS)
    print("instructions per task (valgrind --tool=callgrind), errands beside huey")
    if importlib.util.find_spec("huey") is None:
        loops = [loop for loop in loops if not loop.startswith("huey")]
        print("(huey not installed: pip install huey; only errands' loops follow)")
    print(_common.versions([f"huey {_common.version('huey')}"]))
    if args.quick:
        for loop in loops:
            LOOPS[loop](50)
            print(f"  {loop:<12} ran 50 tasks (--quick: not counted, no valgrind)")
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not on PATH (Debian: apt-get install valgrind); nothing counted")
        return 1
    print(
        f"N={args.n} tasks per memory loop, {args.durable_n} per disk loop, each counted "
        f"against the same loop of 0 tasks; load average at start: {load()}"
    )
    print("(instructions do not depend on the machine's load; threads run one at a time)")
    print()
    figures: dict[str, float] = {}
    for loop in loops:
        n = args.durable_n if loop in ("durable", "huey-sqlite") else args.n
        figures[loop] = per_task(valgrind, loop, n)
        print(f"  {loop:<12} {figures[loop]:>12,.0f} instructions per task", flush=True)
    print()
    for ours, theirs in REFERENCES.items():
        if ours in figures and theirs in figures:
            ratio = figures[theirs] / figures[ours]
            print(f"  ratio {theirs} / {ours:<10} {ratio:6.2f}  (huey's work per task / errands')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
