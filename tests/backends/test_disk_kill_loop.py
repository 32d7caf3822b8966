"""kill -9 again and again on one diskcache directory: no accepted task is lost.

Each cycle starts a ``disk_worker.py`` engine, submits a random number of
``stall`` tasks through it (async, 5 ms each, never stalling here), lets it run
for a random short time after it is ready (it has recovered its predecessor's
work by then) and SIGKILLs it, wherever it is: submitting, claiming, running,
storing a result.  An id counts as accepted once its submit returned in the
worker (it printed the id).  At the end a clean engine runs what is left.
Every accepted task must then be ``success`` with its own result; so must
every task stored but not known to be accepted (its submit was cut short by
the kill).

The test also watches, from its own read-only backend, the tasks each kill
left ``in_progress``, and times their recovery: from the kill until the record
is no longer in progress at that attempt (re-queued or finished by the next
engine; this includes that engine's start-up).

``ERRANDS_SOAK_CYCLES`` sets the number of cycles (12 by default, which fits
``make test``'s 10-minute budget, with a new seed each run; ``make soak``
runs 200).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import trio

from errands import TaskStatus
from errands.backends import DiskCacheBackend

from .soak import check_attempts, report, wait_final
from .test_disk_processes import open_worker, read_runs, read_store, still_queued

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

CYCLES = int(os.environ.get("ERRANDS_SOAK_CYCLES", "12"))
#: Tasks submitted per cycle (at most), and the longest a cycle runs before its kill.
MOST_TASKS = 60
MOST_RUN = 0.5
#: Seconds a cycle (start-up to kill) may take before the test fails.
CYCLE_TIMEOUT = 45.0
POLL = 0.02

IN_PROGRESS = TaskStatus.IN_PROGRESS


async def time_recoveries(
    backend: DiskCacheBackend, watched: dict[str, tuple[int, float]], took: list[float]
) -> None:
    """Forever: for each task in ``watched`` (id -> attempt left in progress by
    a kill, time of the kill), once its record has moved on, drop it and add
    the seconds since the kill to ``took``."""
    while True:
        for task_id, (attempt, killed_at) in list(watched.items()):
            stored = await backend.store.get(task_id)
            if (
                stored is None
                or stored.status is not IN_PROGRESS
                or stored.record.attempt != attempt
            ):
                took.append(trio.current_time() - killed_at)
                del watched[task_id]
        await trio.sleep(POLL)


async def test_kill_9_again_and_again_loses_no_accepted_task(
    tmp_path: Path, pytestconfig: pytest.Config, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    seed = random.randrange(2**32)
    rng = random.Random(seed)  # task counts and kill times: replay a failure with this seed
    accepted: dict[str, int] = {}  # id -> n, of every submit that returned
    watched: dict[str, tuple[int, float]] = {}
    recoveries: list[float] = []
    logs = [tmp_path / f"cycle-{cycle}.log" for cycle in range(CYCLES)]
    began = time.monotonic()
    first = 0
    cut_short = 0  # cycles whose kill came before all of their submits returned
    reader = DiskCacheBackend(data)
    await reader.open()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(time_recoveries, reader, watched, recoveries)
            for log in logs:
                count = rng.randint(1, MOST_TASKS)
                with trio.fail_after(CYCLE_TIMEOUT):
                    async with open_worker(data, log, workers=8) as worker:
                        args = {"pause": 0.005}
                        await worker.send(
                            "submit", task="stall", count=count, first=first, args=args, threads=4
                        )
                        await trio.sleep(rng.uniform(0, MOST_RUN))
                        await worker.kill()
                        killed_at = trio.current_time()
                first += count
                accepted.update(worker.submitted)
                cut_short += len(worker.submitted) < count
                for stored in await reader.store.list(status=IN_PROGRESS, limit=1_000_000):
                    watched.setdefault(stored.id, (stored.record.attempt, killed_at))

            stored_args = {s.id: s.record.args for s in await reader.store.list(limit=1_000_000)}
            last_log = tmp_path / "last.log"
            with trio.fail_after(CYCLE_TIMEOUT + 60):
                async with open_worker(data, last_log) as last:
                    final = await wait_final(last, data, stored_args, timeout=55)
                    await last.quit()
            with trio.move_on_after(10):
                while watched:
                    await trio.sleep(POLL)
            assert not watched, f"left in progress by a kill (attempt, kill time): {watched}"
            nursery.cancel_scope.cancel()
    finally:
        await reader.aclose()
    elapsed = time.monotonic() - began

    after = await read_store(data)
    lost = {
        task_id: after.get(task_id)
        for task_id, n in accepted.items()
        if task_id not in after
        or after[task_id].status is not TaskStatus.SUCCESS
        or after[task_id].result != 2 * n
    }
    reruns = sum(after[task_id].attempt > 1 for task_id in accepted if task_id in after)
    runs = read_runs(*logs, last_log)
    summary = (
        f"kill-9 loop: cycles={CYCLES} tasks={len(accepted)} lost={len(lost)} reruns={reruns}"
        f" longest_recovery={max(recoveries, default=0.0):.2f}s"
        f" (recoveries={len(recoveries)} cut_short={cut_short}"
        f" unaccepted={len(set(after) - set(accepted))}"
        f" runs={sum(map(len, runs.values()))} seed={seed} elapsed={elapsed:.1f}s)"
    )
    report(pytestconfig, capsys, summary)

    assert lost == {}, (summary, lost)
    assert set(after) == set(stored_args) and set(final.values()) == {"success"}, summary
    for task_id, seen in after.items():  # accepted or not, each ran to its own result
        assert seen.result == 2 * stored_args[task_id]["n"], (task_id, seen)
        check_attempts(task_id, seen, runs[task_id])
    assert await still_queued(data, after) == set(), summary
