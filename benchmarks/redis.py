"""errands on Redis against RQ, end to end, with 1, 2 and 4 worker processes.

Run it::

    python benchmarks/redis.py [--n N] [--rq-n N] [--workers 1,2,4] [--repeat R]
    python benchmarks/redis.py --quick        # seconds: a smoke run, figures meaningless

Needs ``redis-server`` on PATH (it starts its own, on 127.0.0.1 and a free
port, and stops it by PID) and, for the reference, RQ (``pip install rq``;
without it only errands' figures are printed).

For each worker count W, in the same run and on the same redis-server:

* **errands**: W ``errands worker`` processes (``--task-slots 32``) on
  ``redis://...?prefix=bench``; this process submits N no-op tasks with
  ``submit_many`` (an engine with no task slots of its own) and waits for
  the batch; timed from the first submit until every task is final.
* **RQ** (the reference): W ``rq worker`` processes (RQ's default worker,
  which forks a work horse per job, as RQ runs by default), and W
  ``rq.SimpleWorker`` processes (no fork), each timed from the first enqueue
  (``Queue.enqueue_many``) until RQ's finished-job registry holds every job.

and, on the same redis-server, **one submit from a thread** (latency, microseconds):
``submit()`` of one no-op task at a time from this thread to
``errands.start(svc, backend=url, workers=0)`` (as a script or a Flask view
hands work to Redis-backed workers; it returns once Redis has run the
enqueue), beside one RQ ``Queue.enqueue`` at a time (the reference).

Rates are tasks per second; the ratio errands / RQ is taken per round.  The
issue's goal is at least 5x RQ.  It also prints the Redis memory per waiting
task (``MEMORY USAGE`` of the task's keys, with a one-item JSON record) and
the commands per task.  Benchmarks are not tests: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _common
from _common import NOISE_NOTE, Columns, RedisServer, Series, load, met

import errands

HERE = Path(__file__).resolve().parent
#: The tasks' module, on the workers' path.  This folder leaves the path once
#: ``_common`` is in: its redis.py and http.py would shadow redis-py and the
#: standard library's http.
WORK = HERE / "redis_work"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(WORK))

TARGET = 5.0
perf_counter = time.perf_counter


def start_workers(
    argv: list[str], count: int, env: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for _ in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]], name: str) -> None:
    for worker in workers:
        _common.stop_process(worker, name)


def cpu(pid: int) -> float:
    return _common.process_cpu_seconds(pid) or 0.0


def errands_round(
    server: RedisServer, workers: int, n: int
) -> tuple[float, float, dict[str, float]]:
    """Tasks per second with ``workers`` errands worker processes, Redis
    commands per task, and CPU milliseconds per task of each process kind."""
    from bench_tasks import svc

    prefix = f"bench{time.monotonic_ns()}"
    url = f"{server.url}?prefix={prefix}"
    env = {**os.environ, "PYTHONPATH": str(WORK)}
    argv = [sys.executable, "-m", "errands", "worker", "bench_tasks:svc", "--backend", url,
            "--task-slots", "32", "--log-level", "warning"]  # fmt: skip
    procs = start_workers(argv, workers, env)
    try:
        with errands.start(svc, backend=url, workers=0) as client:
            warm = client.noop.submit_many({} for _ in range(50 * workers))
            warm.wait(timeout=60)  # every worker is up and has run tasks
            before = server.commands()
            me = os.getpid()
            cpu_before = (cpu(me), sum(cpu(p.pid) for p in procs), cpu(server.process.pid))
            start = perf_counter()
            batch = client.noop.submit_many({} for _ in range(n))
            counts = batch.wait(timeout=600)
            elapsed = perf_counter() - start
            cpu_after = (cpu(me), sum(cpu(p.pid) for p in procs), cpu(server.process.pid))
            commands = server.commands() - before
            if counts["success"] != n:
                raise SystemExit(f"errands: {counts}")
    finally:
        stop_workers(procs, "errands worker")
    spent = {
        kind: (after - before) * 1000 / n
        for kind, before, after in zip(
            ("submitter", "workers", "redis-server"), cpu_before, cpu_after, strict=True
        )
    }
    spent["wall"] = elapsed * 1000 / n
    return n / elapsed, commands / n, spent


def rq_round(server: RedisServer, workers: int, n: int, worker_class: str | None) -> float:
    """Tasks per second with ``workers`` RQ worker processes."""
    import bench_tasks
    from rq import Queue, Worker

    name = f"bench{time.monotonic_ns()}"
    connection = server.client
    queue = Queue(name, connection=connection)
    env = {**os.environ, "PYTHONPATH": str(WORK)}
    rq_command = Path(sys.executable).parent / "rq"  # RQ's own command, beside this Python
    argv = [str(rq_command), "worker", "--url", server.url, "--quiet"]
    if worker_class:
        argv += ["--worker-class", worker_class]
    argv.append(name)
    procs = start_workers(argv, workers, env)
    try:
        deadline = time.monotonic() + 60
        while len(Worker.all(queue=queue)) < workers:
            if time.monotonic() > deadline:
                raise SystemExit("rq workers did not start")
            time.sleep(0.05)
        warm = queue.enqueue_many([Queue.prepare_data(bench_tasks.rq_noop) for _ in range(10)])
        while queue.finished_job_registry.count < len(warm):
            time.sleep(0.01)
        done_before = queue.finished_job_registry.count
        start = perf_counter()
        for first in range(0, n, 500):
            count = min(500, n - first)
            queue.enqueue_many([Queue.prepare_data(bench_tasks.rq_noop) for _ in range(count)])
        while queue.finished_job_registry.count < done_before + n:
            if perf_counter() - start > 600:
                raise SystemExit("rq: jobs did not finish")
            time.sleep(0.01)
        elapsed = perf_counter() - start
    finally:
        stop_workers(procs, "rq worker")
    return n / elapsed


def submit_latency(server: RedisServer, n: int) -> list[float]:
    """Seconds of each of ``n`` submits from this thread, one at a time, to
    an engine with no task slots (nothing runs; the tasks are dropped with
    the prefix's keys when the server stops)."""
    from bench_tasks import svc

    url = f"{server.url}?prefix=lat{time.monotonic_ns()}"
    took = []
    with errands.start(svc, backend=url, workers=0) as client:
        for _ in range(min(n, 50)):
            client.noop.submit()  # warm: the connection and the scripts
        for _ in range(n):
            began = perf_counter()
            client.noop.submit()
            took.append(perf_counter() - began)
    return took


def rq_enqueue_latency(server: RedisServer, n: int) -> list[float]:
    """Seconds of each of ``n`` RQ enqueues, one at a time (no worker)."""
    import bench_tasks
    from rq import Queue

    queue = Queue(f"lat{time.monotonic_ns()}", connection=server.client)
    for _ in range(min(n, 50)):
        queue.enqueue(bench_tasks.rq_noop)
    took = []
    for _ in range(n):
        began = perf_counter()
        queue.enqueue(bench_tasks.rq_noop)
        took.append(perf_counter() - began)
    return took


def memory_per_task(server: RedisServer) -> float:
    """Bytes of Redis memory per waiting task (``INFO memory`` before and after)."""
    import trio
    from bench_tasks import svc

    from errands.backends.redis import RedisBackend

    url = f"{server.url}?prefix=mem{time.monotonic_ns()}"
    n = 2000

    async def fill() -> None:
        async with errands.open_engine(svc, backend=RedisBackend(url), workers=0) as client:
            await client.noop.submit_many({} for _ in range(n))

    before = int(server.client.info("memory")["used_memory"])
    trio.run(fill)
    after = int(server.client.info("memory")["used_memory"])
    return (after - before) / n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="errands tasks (default 10000)")
    parser.add_argument("--rq-n", type=int, default=1000, help="RQ jobs (default 1000)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians (default 1)")
    parser.add_argument(
        "--latency-n", type=int, default=500, help="single submits from a thread (default 500)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    if args.quick:
        args.n, args.rq_n, counts, args.repeat, args.latency_n = 300, 16, [1], 1, 20
    try:
        import rq
    except ImportError as exc:
        print(f"(RQ not importable: {exc}; install it with `pip install rq`)")
        rq = None  # type: ignore[assignment]
    extra = [f"redis-py {_common.version('redis')}"]
    if rq is not None:
        extra.append(f"rq {_common.version('rq')}")

    print("errands on Redis against RQ")
    print(_common.versions(extra))
    print(
        f"{args.n} errands tasks, {args.rq_n} RQ jobs per round; workers {counts}; "
        f"{args.repeat} round(s); load average at start: {load()}"
    )
    print(NOISE_NOTE)
    print()
    wall = perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="errands-bench-redis-"))
    server = RedisServer(folder)
    try:
        info = server.client.info("server")
        print(f"redis-server {info['redis_version']} on 127.0.0.1, no persistence")
        print()
        table = Columns(label=46, value=11)
        per_task = memory_per_task(server)
        for workers in counts:
            ours, fork, simple = Series(), Series(), Series()
            vs_fork, vs_simple = Series(), Series()
            commands = Series()
            spent: dict[str, Series] = {}
            for _ in range(args.repeat):
                rate, per, cpu_ms = errands_round(server, workers, args.n)
                ours.add(rate)
                commands.add(per)
                for kind, ms in cpu_ms.items():
                    spent.setdefault(kind, Series()).add(ms)
                if rq is not None:
                    f = rq_round(server, workers, args.rq_n, None)
                    s = rq_round(server, workers, args.rq_n, "rq.worker.SimpleWorker")
                    fork.add(f)
                    simple.add(s)
                    vs_fork.add(rate / f)
                    vs_simple.add(rate / s)
            print(f"{workers} worker process(es): tasks/s (median of {args.repeat} [min-max])")
            print(table.rate("errands (submit_many, then wait)", ours))
            print(f"  {'Redis commands per task':44}{commands.median:>11.1f}")
            shares = ", ".join(f"{kind} {series.median:.2f}" for kind, series in spent.items())
            print(f"  CPU ms per task (this process submits and waits): {shares}")
            if rq is not None:
                print(table.rate("reference: RQ, default worker (fork per job)", fork))
                print(table.rate("reference: RQ, SimpleWorker (no fork)", simple))
                print(
                    table.ratio(
                        "ratio errands / RQ default worker",
                        vs_fork,
                        f"target >= {TARGET:g}: {met(vs_fork.median, TARGET)}",
                    )
                )
                print(table.ratio("ratio errands / RQ SimpleWorker", vs_simple))
            print()
        ours_latency, rq_latency = _common.Latency(), _common.Latency()
        for _ in range(args.repeat):
            ours_latency.add(submit_latency(server, args.latency_n))
            if rq is not None:
                rq_latency.add(rq_enqueue_latency(server, args.latency_n))
        print(
            f"one submit from a thread ({args.latency_n}), microseconds "
            f"(median of {args.repeat} [min-max])"
        )
        print(table.latency_header())
        print(table.latency("errands.start() on Redis: submit()", ours_latency))
        if rq is not None:
            print(table.latency("reference: RQ Queue.enqueue", rq_latency))
        print()
        print(f"Redis memory per waiting task: {per_task:,.0f} bytes (one-item JSON record)")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"took {perf_counter() - wall:.1f} s; load average at end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
