"""Helpers of the chaos and kill-loop tests (``test_disk_chaos.py``, ``test_disk_kill_loop.py``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
import trio

from .test_disk_processes import Run, Seen, Worker, WorkerError, read_store


async def wait_final(
    worker: Worker, data: Path, ids: Iterable[str], timeout: float
) -> dict[str, str]:
    """The final status of each of ``ids``, waited for through ``worker``.

    Raises AssertionError naming every task of ``data`` that is not final
    (status and attempt, read from the store) when they are not all final
    within ``timeout`` seconds.
    """
    try:
        final: dict[str, str] = await worker.request(
            "wait", ids=list(ids), timeout=timeout, within=timeout + 5
        )
        return final
    except (WorkerError, trio.TooSlowError) as exc:
        seen = await read_store(data)
        unfinished = {
            i: (s.status.value, s.attempt) for i, s in seen.items() if not s.status.is_final
        }
        raise AssertionError(f"not final after {timeout}s: {unfinished}") from exc


def check_attempts(task_id: str, seen: Seen, runs: list[Run]) -> None:
    """Assert the stored attempt of a finished task is the last one that ran,
    and that no two runs shared an attempt (a claim starts its task only while
    it holds it, so each start counts a new attempt)."""
    tried = [run.attempt for run in runs]
    assert seen.attempt in tried and max(tried) == seen.attempt, (task_id, seen, runs)
    assert len(set(tried)) == len(tried), (task_id, runs)


def report(config: pytest.Config, capsys: pytest.CaptureFixture[str], summary: str) -> None:
    """Write ``summary`` to the terminal, and to the captured output pytest
    shows on failure (unless capture is off: ``-s`` would print it twice)."""
    with capsys.disabled():
        print(f"\n{summary}")
    if config.getoption("capture") != "no":
        print(summary)
