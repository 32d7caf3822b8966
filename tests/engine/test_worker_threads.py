"""The worker threads of sync tasks: every job gets a thread at once, even
when each blocks until all the others run; short jobs share the awake ones."""

from __future__ import annotations

import threading

import outcome
import pytest
import trio

from errands._threads import WorkerThreads

pytestmark = pytest.mark.realtime


async def run_all(pool: WorkerThreads, jobs: list[object]) -> list[outcome.Outcome[object]]:
    results: list[outcome.Outcome[object]] = []
    done = trio.Event()

    def deliver(result: outcome.Outcome[object]) -> None:
        results.append(result)
        if len(results) == len(jobs):
            done.set()

    for job in jobs:
        pool.submit(job, deliver)  # type: ignore[arg-type]
    with trio.fail_after(30):
        await done.wait()
    return results


async def test_blocking_jobs_each_get_a_thread_at_once() -> None:
    pool = WorkerThreads()
    try:
        for size in (16, 3, 24):  # again with the threads of the round before idle
            barrier = threading.Barrier(size, timeout=10)
            results = await run_all(pool, [barrier.wait] * size)
            # Had a job waited behind a busy thread, the barrier would break.
            assert sorted(r.unwrap() for r in results) == list(range(size))  # type: ignore[type-var]
    finally:
        pool.close()


async def test_a_burst_of_short_jobs_all_run_and_report() -> None:
    pool = WorkerThreads()
    try:
        seen: list[int] = []
        lock = threading.Lock()

        def job(i: int) -> int:
            with lock:
                seen.append(i)
            return i * 2

        results = await run_all(pool, [lambda i=i: job(i) for i in range(2000)])
        assert sorted(r.unwrap() for r in results) == [2 * i for i in range(2000)]  # type: ignore[type-var]
        assert sorted(seen) == list(range(2000))
        failing = await run_all(pool, [lambda: 1 / 0])
        with pytest.raises(ZeroDivisionError):
            failing[0].unwrap()
    finally:
        pool.close()


async def test_close_lets_idle_threads_end() -> None:
    others = set(threading.enumerate())
    pool = WorkerThreads()
    barrier = threading.Barrier(4, timeout=10)
    await run_all(pool, [barrier.wait] * 4)
    before = {t for t in threading.enumerate() if t.name == "errands-worker"} - others
    assert len(before) == 4
    pool.close()
    for thread in before:
        thread.join(10)
    assert not any(t.is_alive() for t in before)
