"""Chaos on one diskcache directory: engines that stall past their lease, a kill -9, a late start.

Engines A and B (then C, started after A is killed) run ``stall`` tasks of
``disk_worker.py``: async tasks that now and then block their own engine's
trio thread for up to twice the lease without awaiting, so that engine's
lease renewals stop and the others take its claims over while it still runs
them.  A fourth process with no workers submits every task and waits for
them, so waiting never stalls.  Whatever happens, each task must end
``success`` with its own result, its stored attempt one that really ran, and
no two runs of one task sharing an attempt (a claim starts its task only
while it holds it).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

from errands import TaskStatus

from . import test_disk_processes as processes
from .soak import check_attempts, report, wait_final
from .test_disk_processes import count_runs, open_worker, read_runs, read_store, still_queued

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

TASKS = 120
#: Short, so that a stall outlives it often and takeovers come quickly.
LEASE = 1.0
#: Chance that a run stalls its engine, and the longest stall (seconds).
CHANCE = 0.2
MOST = 2 * LEASE


async def test_stalls_a_kill_and_a_late_start_leave_every_task_done_with_its_own_result(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pytestconfig: pytest.Config,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(processes, "LEASE", LEASE)  # the lease open_worker gives its engines
    data = tmp_path / "data"
    logs = {name: tmp_path / f"{name}.log" for name in ("submitter", "a", "b", "c")}
    seed = random.randrange(2**32)  # the stall draws: replay a failure with this seed
    args = {"seed": seed, "chance": CHANCE, "most": MOST, "pause": 0.01}
    began = time.monotonic()
    with trio.fail_after(60):
        async with (
            open_worker(data, logs["submitter"], workers=0) as submitter,
            open_worker(data, logs["a"], workers=4) as a,
            open_worker(data, logs["b"], workers=4) as b,
        ):
            await submitter.request(
                "submit", task="stall", count=TASKS, threads=4, args=args, within=30
            )
            submitted = submitter.submitted
            assert len(submitted) == TASKS
            with trio.fail_after(30):
                while await count_runs(logs["a"]) + await count_runs(logs["b"]) < TASKS // 4:
                    await trio.sleep(0.01)
            await a.kill()
            async with open_worker(data, logs["c"], workers=4) as c:
                final = await wait_final(submitter, data, submitted, timeout=40)
                await b.quit()
                await c.quit()
            await submitter.quit()
    elapsed = time.monotonic() - began

    after = await read_store(data)
    runs = read_runs(*logs.values())
    reruns = sum(seen.attempt > 1 for seen in after.values())
    takeovers = sum(len({run.pid for run in ran}) > 1 for ran in runs.values())
    by_pid = Counter(run.pid for ran in runs.values() for run in ran)
    attempts = dict(sorted(Counter(seen.attempt for seen in after.values()).items()))
    summary = (
        f"chaos: tasks={TASKS} runs={sum(by_pid.values())} reruns={reruns}"
        f" takeovers={takeovers} attempts={attempts}"
        f" runs_by_process={ {p: by_pid[w.pid] for p, w in (('a', a), ('b', b), ('c', c))} }"
        f" seed={seed} elapsed={elapsed:.1f}s"
    )
    report(pytestconfig, capsys, summary)

    assert set(final.values()) == {"success"}, (summary, Counter(final.values()))
    assert set(after) == set(submitted) == set(runs), summary
    for task_id, n in submitted.items():
        seen = after[task_id]
        assert seen.status is TaskStatus.SUCCESS and seen.result == 2 * n, (task_id, seen)
        check_attempts(task_id, seen, runs[task_id])
    assert await still_queued(data, submitted) == set(), summary
    assert by_pid[submitter.pid] == 0, summary
