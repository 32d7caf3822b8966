"""kill -9 in the middle of a batch call on diskcache: the batch's tasks are
re-run, as any task of a dead worker is, and nothing accepted is lost."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import trio

from errands import TaskStatus

from .test_disk_processes import open_worker, read_store

pytestmark = pytest.mark.realtime

TASKS = 20


def read_items(log: Path) -> dict[int, list[tuple[int, int]]]:
    """Item -> the (pid, attempt) of each batch call that took it."""
    calls: dict[int, list[tuple[int, int]]] = defaultdict(list)
    if log.exists():
        for line in log.read_text().splitlines():
            item, pid, attempt = map(int, line.split())
            calls[item].append((pid, attempt))
    return calls


async def test_a_batch_killed_mid_call_is_run_again_by_the_next_engine(tmp_path: Path) -> None:
    data, gate = tmp_path / "data", tmp_path / "gate"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    ids: dict[str, int] = {}
    with trio.fail_after(90):
        async with open_worker(data, first_log) as first:
            for n in range(TASKS):
                task_id = await first.request(
                    "start", task="batch", args={"items": [n], "gate": str(gate)}
                )
                ids[task_id] = n
            with trio.fail_after(20):  # the first batch call is running (on the gate)
                while not read_items(first_log.with_suffix(".items")):
                    await trio.sleep(0.01)
            await first.kill()
        in_call = read_items(first_log.with_suffix(".items"))
        at_kill = await read_store(data)
        running = {i for i, seen in at_kill.items() if seen.status is TaskStatus.IN_PROGRESS}
        assert 1 <= len(running) <= 8  # one batch, of at most max_batch_size tasks
        assert {ids[i] for i in running} == set(in_call)

        gate.touch()
        async with open_worker(data, second_log) as second:
            final = await second.request("wait", ids=list(ids), timeout=40, within=45)
            await second.quit()

    assert set(final.values()) == {"success"}, final
    after = await read_store(data)
    for task_id, n in ids.items():
        assert after[task_id].result == [2 * n], (task_id, after[task_id])
        # The killed call's tasks ran again, as attempt 2; the others once.
        assert after[task_id].attempt == (2 if task_id in running else 1)
    rerun = read_items(second_log.with_suffix(".items"))
    assert set(rerun) == set(range(TASKS))
    # Every item ran once in the second engine (the killed call's ones again).
    assert all([pid for pid, _ in calls] == [second.pid] for calls in rerun.values())
    assert all([pid for pid, _ in calls] == [first.pid] for calls in in_call.values())
