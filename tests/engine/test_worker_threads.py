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


async def test_jobs_of_a_burst_wake_a_thread_only_when_it_ends() -> None:
    """Submitted in a burst (the runs one dispatch round starts), jobs wake no
    thread until it ends: none runs while the loop is still submitting."""
    pool = WorkerThreads()
    try:
        results: list[outcome.Outcome[object]] = []
        done = trio.Event()

        def deliver(result: outcome.Outcome[object]) -> None:
            results.append(result)
            if len(results) == 20:
                done.set()

        with pool.burst():
            for i in range(20):
                pool.submit(lambda i=i: i, deliver)
                # No thread was started nor woken: none can run a job yet.
                assert (pool._threads, pool._looking) == (0, 0)
            with pool.burst():  # bursts nest: the outer one's end wakes
                pool.submit(lambda: None, lambda result: None)
            assert (pool._threads, pool._looking) == (0, 0)
        assert pool._threads >= 1  # started as the burst ended
        with trio.fail_after(30):
            await done.wait()
        assert sorted(r.unwrap() for r in results) == list(range(20))  # type: ignore[type-var]
        # Outside a burst, a job wakes a thread at once, as before.
        pool.close()
        pool = WorkerThreads()
        pool.submit(lambda: None, lambda result: None)
        assert pool._threads == 1
    finally:
        pool.close()
