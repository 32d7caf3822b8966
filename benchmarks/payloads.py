"""Large arguments: a task given megabytes of bytes, and listings of such tasks.

Run it::

    python benchmarks/payloads.py [--size MB ...] [--listed N] [--repeat R]
    python benchmarks/payloads.py --quick        # seconds: a smoke run, figures meaningless

An image to transform, a document to read, audio to transcribe: the task
takes bytes.  For each backend, memory, ``DiskCacheBackend`` (in a
temporary folder) and, when ``redis-server`` is on PATH, ``RedisBackend``
(on a redis-server of its own, on 127.0.0.1, stopped by its PID),
``errands.start()`` with two sync tasks, and in each round, milliseconds
of:

* **argument**: ``submit(data=<S MB of bytes>)``, ``wait()``, ``get()`` (the
  task returns the length);
* **result** (the reference): ``submit(n=S MB)``, ``wait()``, ``get()`` of a
  task that returns S MB of bytes: the same bytes the other way, which
  errands stores once, as they are;
* **a listing** of N tasks with 1 MB of arguments each (``list(limit=N)``,
  what ``GET /tasks`` and the dashboard read), against the same listing of
  N tasks without arguments (the reference).

The ratios argument / result and listing / reference are taken within each
round.  Benchmarks are not tests: nothing here asserts a speed.
"""

# ruff: noqa: E402
# (``python benchmarks/payloads.py`` puts benchmarks/ first on sys.path, where
# benchmarks/redis.py shadows redis-py, which the Redis backend imports; that
# folder moves to the end before the imports below.)

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import _common
from _common import NOISE_NOTE, Columns, RedisServer, Series, load

import errands
from errands.backends import DiskCacheBackend

perf_counter = time.perf_counter

svc = errands.Service("payloads_bench")


@svc.task
def consume(data: bytes) -> int:
    return len(data)


@svc.task
def produce(n: int) -> bytes:
    return b"\x07" * n


@svc.task
def nothing() -> int:
    return 0


def measure(backend: Any, sizes: Sequence[int], listed: int, repeat: int) -> dict[str, Series]:
    """Milliseconds per figure, and the ratios, across the rounds."""
    out: dict[str, Series] = {}

    def add(name: str, value: float) -> None:
        out.setdefault(name, Series()).add(value)

    with errands.start(svc, backend=backend) as client:
        blobs = {size: os.urandom(size) for size in sizes}
        for _ in range(repeat):
            for size in sizes:
                start = perf_counter()
                task = client.consume.submit(data=blobs[size])
                task.wait(timeout=600)
                if task.get() != size:
                    raise RuntimeError("the task did not get its argument whole")
                argument = perf_counter() - start
                start = perf_counter()
                task = client.produce.submit(n=size)
                task.wait(timeout=600)
                if len(task.get()) != size:
                    raise RuntimeError("the result did not come back whole")
                result = perf_counter() - start
                add(f"argument {size}", argument * 1e3)
                add(f"result {size}", result * 1e3)
                add(f"ratio {size}", argument / result)
        big = [client.consume.submit(data=blobs[sizes[0]][:1_000_000]) for _ in range(listed)]
        small = [client.nothing.submit() for _ in range(listed)]
        for task in (*big, *small):
            task.wait(timeout=600)
        for _ in range(repeat):
            start = perf_counter()
            rows = client.list(name="consume", limit=listed)
            listing = perf_counter() - start
            start = perf_counter()
            plain = client.list(name="nothing", limit=listed)
            reference = perf_counter() - start
            if len(rows) != listed or len(plain) != listed:
                raise RuntimeError("a listing missed tasks")
            add("listing", listing * 1e3)
            add("listing reference", reference * 1e3)
            add("listing ratio", listing / reference)
    return out


@contextlib.contextmanager
def redis_url(folder: str) -> Iterator[str]:
    """A redis-server of this run's own, for as long as the block runs."""
    server = RedisServer(Path(folder))
    try:
        yield f"{server.url}?prefix=payloads"
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=float, nargs="+", default=[1.0, 5.0], help="MB of bytes (default 1 5)"
    )
    parser.add_argument("--listed", type=int, default=50, help="tasks listed (default 50)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians shown (default 5)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.listed, args.repeat = [0.1], 5, 1
    sizes = [int(mb * 1_000_000) for mb in args.size]
    if min([*sizes, args.listed, args.repeat]) < 1:
        parser.error("--size, --listed and --repeat must be positive")

    print("errands large arguments benchmark")
    print(_common.versions())
    print(
        f"bytes arguments of {', '.join(f'{mb:g}' for mb in args.size)} MB against results of "
        f"the same size; listings of {args.listed} tasks with 1 MB arguments (at most the "
        f"first size) against tasks without; {args.repeat} round(s); load average at start: "
        f"{load()}"
    )
    print(NOISE_NOTE)
    wall = perf_counter()
    table = Columns(label=50, value=11)
    with tempfile.TemporaryDirectory(prefix="errands-payloads-") as scratch:
        backends = {
            "memory": contextlib.nullcontext,
            "diskcache": lambda: contextlib.nullcontext(
                DiskCacheBackend(os.path.join(scratch, "q"))
            ),
        }
        if shutil.which("redis-server"):
            backends["redis"] = lambda: redis_url(scratch)
        else:
            print("redis: not measured (no redis-server on PATH)")
        for label, make in backends.items():
            with make() as backend:
                found = measure(backend, sizes, args.listed, args.repeat)
            print()
            print(f"{label}: milliseconds (median of {args.repeat} [min-max])")
            for size, mb in zip(sizes, args.size, strict=True):
                print(
                    table.figure(
                        f"{mb:g} MB argument: submit, wait, get", found[f"argument {size}"], "ms"
                    )
                )
                print(table.figure(f"reference: {mb:g} MB result", found[f"result {size}"], "ms"))
                print(
                    table.ratio(
                        f"ratio argument / result, {mb:g} MB ({label})", found[f"ratio {size}"]
                    )
                )
            print(
                table.figure(
                    f"a listing of {args.listed} tasks with arguments", found["listing"], "ms"
                )
            )
            print(
                table.figure(
                    "reference: the same without arguments", found["listing reference"], "ms"
                )
            )
            print(table.ratio(f"ratio listing / reference ({label})", found["listing ratio"]))
    print()
    print(f"took {perf_counter() - wall:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
