"""DiskCacheBackend across real processes: kill -9 mid-run, and two engines on one directory.

Each engine is a ``disk_worker.py`` process (``errands.start`` on a
``diskcache:///...`` URL, no network), driven over its stdin and stdout.  Every
run of its ``record`` task appends ``<task id> <pid> <attempt>`` to the
process's own log, fsynced, so the logs tell which process ran what, and how
often.  The test itself reads the directory only through the backend's
``Store`` and ``Queue`` interfaces with no engine attached (to see the state a
kill left), and deletes owner lock files to force recovery by lease expiry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from errands import TaskStatus
from errands.backends import DiskCacheBackend

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

WORKER = Path(__file__).with_name("disk_worker.py")
#: Short, so a claim of a dead process could be recovered quickly even without
#: the owner lock files that let the backend see the death at once.
LEASE = 2.0
#: Seconds a worker process may take to import errands and start its engine
#: (the machine is small and busy).
STARTUP = 30.0


class WorkerError(Exception):
    """A request answered with an error (its message starts with the exception name)."""


class Worker:
    """One ``disk_worker.py`` process: its requests, answers and accepted ids."""

    def __init__(self, process: trio.Process, log: Path, stderr: Path) -> None:
        self.process = process
        self.log = log
        self.stderr = stderr
        #: id -> argument of every task whose submit returned in this process.
        self.submitted: dict[str, int] = {}
        self.pid = process.pid
        self._buffer = bytearray()

    async def _message(self) -> dict[str, Any] | None:
        """The next protocol message; None at end of output (a partial last line is dropped)."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        message: dict[str, Any] = json.loads(line)
        return message

    async def _answer(self, within: float) -> Any:
        with trio.fail_after(within):
            while True:
                message = await self._message()
                if message is None:
                    raise WorkerError(f"worker {self.pid} exited; stderr:\n{self.stderr_tail()}")
                if "submitted" in message:
                    self.submitted[message["submitted"]] = message["n"]
                    continue
                if "error" in message:
                    raise WorkerError(f"{message['error']}: {message['message']}")
                return message.get("ok", message.get("ready"))

    async def send(self, op: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps({"op": op, **fields}).encode() + b"\n")

    async def request(self, op: str, *, within: float = 10.0, **fields: Any) -> Any:
        """Send one request and return its answer within ``within`` seconds.

        Raises WorkerError for an error answer, TooSlowError when none came.
        """
        await self.send(op, **fields)
        return await self._answer(within)

    async def quit(self) -> None:
        """Close the engine cleanly and wait for the process to end."""
        assert await self.request("quit", within=20) == "bye"
        with trio.fail_after(10):
            assert await self.process.wait() == 0

    async def kill(self) -> None:
        """SIGKILL the process, then read what it printed before it died."""
        self.process.kill()
        with trio.fail_after(10):
            await self.process.wait()
            while (message := await self._message()) is not None:
                if "submitted" in message:
                    self.submitted[message["submitted"]] = message["n"]

    def stderr_tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""


@asynccontextmanager
async def open_worker(
    directory: Path, log: Path, *, workers: int = 8, sleep: float = 0.0
) -> AsyncIterator[Worker]:
    """Start a worker engine on ``directory``; it is killed (by PID) on leaving, if still alive."""
    stderr = log.with_suffix(".stderr")
    command = [
        sys.executable,
        str(WORKER),
        str(directory),
        str(log),
        f"--lease={LEASE}",
        f"--workers={workers}",
        f"--sleep={sleep}",
    ]
    fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd, cwd=log.parent
        )
    finally:
        os.close(fd)
    try:
        worker = Worker(process, log, stderr)
        assert await worker._answer(STARTUP) == process.pid
        yield worker
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            if process.poll() is None:
                process.kill()
            await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    await stream.aclose()


@attrs.frozen
class Run:
    """One line of a worker log: a run of a task."""

    task_id: str
    pid: int
    attempt: int


def read_runs(*logs: Path) -> dict[str, list[Run]]:
    """The runs in the logs, by task id, in log order (complete lines only)."""
    runs: dict[str, list[Run]] = defaultdict(list)
    for log in logs:
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            task_id, pid, attempt = line.split()
            runs[task_id].append(Run(task_id, int(pid), int(attempt)))
    return runs


async def count_runs(log: Path) -> int:
    path = trio.Path(log)
    return (await path.read_text()).count("\n") if await path.exists() else 0


@attrs.frozen
class Seen:
    """A task as the store holds it."""

    status: TaskStatus
    attempt: int
    result: Any = None  # the decoded result of a successful task (None: none stored)


async def read_store(directory: Path) -> dict[str, Seen]:
    """Every task in ``directory``, read through the Store with no engine attached."""
    backend = DiskCacheBackend(directory)
    await backend.open()
    try:
        seen = {}
        for stored in await backend.store.list(limit=1_000_000):
            result = None
            if stored.status is TaskStatus.SUCCESS:
                payload = await backend.store.get_result(stored.id)
                result = None if payload is None else json.loads(payload.data)
            seen[stored.id] = Seen(stored.status, stored.record.attempt, result)
        return seen
    finally:
        await backend.aclose()


async def owner_lock_files(directory: Path) -> list[trio.Path]:
    """The owner lock files of the engines that claimed work in ``directory`` (see _owners.py)."""
    return list(await trio.Path(directory, "owners").glob("*.lock"))


async def still_queued(directory: Path, task_ids: Iterable[str]) -> set[str]:
    """The ids among ``task_ids`` that have a queue entry (read with no engine attached)."""
    backend = DiskCacheBackend(directory)
    await backend.open()
    try:
        return {task_id for task_id in task_ids if await backend.queue.contains(task_id)}
    finally:
        await backend.aclose()


# ---------------------------------------------------------------------- kill -9

TASKS = 300
KILLED_WORKERS = 8
#: Kill the first engine once this many runs are in its log: "early" lands
#: while it is still submitting.
KILL_AFTER = {"early": 10, "middle": TASKS // 2, "late": TASKS * 9 // 10}


@pytest.mark.parametrize(
    ("when", "lease_only"),
    [(when, False) for when in KILL_AFTER] + [("middle", True)],
    ids=[*KILL_AFTER, "middle-lease-only"],
)
async def test_kill_9_mid_run_loses_nothing_and_reruns_only_what_was_in_flight(
    tmp_path: Path, when: str, lease_only: bool
) -> None:
    data = tmp_path / "data"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with trio.fail_after(60):
        async with open_worker(data, first_log, workers=KILLED_WORKERS, sleep=0.005) as first:
            await first.send("submit", count=TASKS, threads=4)
            with trio.fail_after(20):
                while await count_runs(first_log) < KILL_AFTER[when]:
                    await trio.sleep(0.002)
            await first.kill()
        accepted = first.submitted  # every id whose submit had returned
        ran_before = read_runs(first_log)
        assert {run.pid for runs in ran_before.values() for run in runs} == {first.pid}

        at_kill = await read_store(data)  # what the kill left on disk
        counts = Counter(seen.status.value for seen in at_kill.values())
        summary = f"kill {when}: {len(accepted)} accepted; at the kill {dict(counts)}"
        assert set(accepted) <= set(at_kill), summary
        assert set(ran_before) <= set(at_kill), summary
        if lease_only:
            # Without the dead engine's owner lock file its death cannot be
            # seen: its claims come back only when their leases run out.
            locks = await owner_lock_files(data)
            assert locks, "the killed engine left no owner lock file"
            for path in locks:
                await path.unlink()

        async with open_worker(data, second_log) as second:
            final = await second.request("wait", ids=list(at_kill), timeout=25, within=30)
            await second.quit()

    assert set(final.values()) == {"success"}, (summary, final)
    after = await read_store(data)
    runs = read_runs(first_log, second_log)
    assert set(after) == set(at_kill) == set(runs), summary

    # Nothing accepted is lost: each one succeeded, with its own result.
    for task_id, n in accepted.items():
        assert after[task_id].status is TaskStatus.SUCCESS, (task_id, after[task_id])
        assert after[task_id].result == 2 * n, (task_id, after[task_id])

    # Only tasks in flight at the kill ran twice: started by the killed engine
    # (logged by it, or not yet), not recorded as success; the rerun is attempt 2.
    for task_id, seen in at_kill.items():
        ran, done = runs[task_id], after[task_id]
        assert done.status is TaskStatus.SUCCESS and done.result is not None, (task_id, done)
        if seen.status is TaskStatus.SUCCESS:
            assert ran == [Run(task_id, first.pid, 1)], (seen, ran)
            assert done == seen
        elif seen.status is TaskStatus.IN_PROGRESS:
            assert ran in (
                [Run(task_id, first.pid, 1), Run(task_id, second.pid, 2)],
                [Run(task_id, second.pid, 2)],  # killed before its body logged
            ), (seen, ran)
            assert (seen.attempt, done.attempt) == (1, 2)
        else:
            assert seen.status is TaskStatus.PENDING, (task_id, seen)
            assert ran == [Run(task_id, second.pid, 1)], (seen, ran)
            assert done.attempt == 1
    in_flight = counts[TaskStatus.IN_PROGRESS.value]
    assert in_flight <= KILLED_WORKERS, summary
    assert sum(len(ran) > 1 for ran in runs.values()) <= in_flight, summary


async def test_a_live_process_takes_over_the_work_of_a_killed_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    with trio.fail_after(60):
        async with (
            open_worker(data, a_log, workers=KILLED_WORKERS, sleep=0.005) as a,
            open_worker(data, b_log, workers=KILLED_WORKERS, sleep=0.005) as b,
        ):
            await a.send("submit", count=TASKS, threads=4)
            with trio.fail_after(20):
                while await count_runs(a_log) < TASKS // 4:
                    await trio.sleep(0.002)
            await a.kill()
            final = await b.request("wait", ids=list(a.submitted), timeout=25, within=30)
            await b.quit()

    assert set(final.values()) == {"success"}, final
    after = await read_store(data)
    runs = read_runs(a_log, b_log)
    for task_id, n in a.submitted.items():
        assert after[task_id].status is TaskStatus.SUCCESS, (task_id, after[task_id])
        assert after[task_id].result == 2 * n, (task_id, after[task_id])
        assert after[task_id].attempt == runs[task_id][-1].attempt
    # Reruns (attempt 2, by B) are only of tasks A had started when it died.
    for task_id, ran in runs.items():
        assert ran in (
            [Run(task_id, a.pid, 1)],
            [Run(task_id, b.pid, 1)],
            [Run(task_id, a.pid, 1), Run(task_id, b.pid, 2)],
            [Run(task_id, b.pid, 2)],  # A died before the body logged
        ), ran
    assert sum(ran[-1].attempt == 2 for ran in runs.values()) <= KILLED_WORKERS


# ---------------------------------------------------------------------- two processes

MANY = 2000


async def test_two_processes_share_one_queue_and_run_each_task_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    with trio.fail_after(90):
        async with (
            open_worker(data, a_log, workers=4) as a,
            open_worker(data, b_log, workers=4) as b,
        ):
            # All submits go through A; B sees them only through the directory.
            assert await a.request("submit", count=MANY, threads=8, within=60) == MANY
            ids = list(a.submitted)
            assert len(ids) == MANY
            final = await b.request("wait", ids=ids, timeout=55, within=60)
            assert set(final.values()) == {"success"}
            await a.quit()
            await b.quit()

    runs = read_runs(a_log, b_log)
    assert set(runs) == set(ids)
    assert [i for i, ran in runs.items() if len(ran) != 1] == []
    assert {run.attempt for (run,) in runs.values()} == {1}
    by_pid = Counter(run.pid for (run,) in runs.values())
    assert set(by_pid) == {a.pid, b.pid}, f"one process did all the work: {dict(by_pid)}"


async def test_status_get_cancel_and_retry_work_across_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    with trio.fail_after(60):
        async with open_worker(data, a_log) as a, open_worker(data, b_log) as b:
            # Submitted in A, read from B.
            await a.request("submit", count=1, first=21)
            (done,) = a.submitted
            assert await b.request("wait", ids=[done], timeout=10, within=15) == {done: "success"}
            assert await b.request("status", id=done) == "success"
            assert await b.request("get", id=done) == 42
            assert await b.request("info", id=done) == {
                "status": "success",
                "attempt": 1,
                "retry_of": None,
            }

            # A pending task cancelled from B reads cancelled from A, and is gone
            # from the queue.
            await a.request("submit", count=1, first=7, delay=60)
            held = list(a.submitted)[-1]
            assert await b.request("status", id=held) == "pending"
            assert await b.request("cancel", id=held) == "cancelled"
            assert await a.request("status", id=held) == "cancelled"
            with pytest.raises(WorkerError, match="TaskCancelled"):
                await a.request("get", id=held)
            assert await a.request("cancel", id=held) == "cancelled"  # the true state, again

            # A cancelled task never runs, even once its due time has passed:
            # ``later`` was due after it and has run.
            await a.request("submit", count=1, first=8, delay=1.0)
            doomed = list(a.submitted)[-1]
            await a.request("submit", count=1, first=9, delay=1.0)
            later = list(a.submitted)[-1]
            assert await b.request("cancel", id=doomed) == "cancelled"
            assert await a.request("wait", ids=[later], timeout=10, within=15) == {later: "success"}
            assert await a.request("status", id=doomed) == "cancelled"

            # Retry from B of a task finished in A: a new task that runs somewhere,
            # pointing back.
            again = await b.request("retry", id=done)
            assert again != done
            assert await a.request("wait", ids=[again], timeout=10, within=15) == {again: "success"}
            assert await a.request("get", id=again) == 42
            assert await a.request("info", id=again) == {
                "status": "success",
                "attempt": 1,
                "retry_of": done,
            }
            await a.quit()
            await b.quit()

    runs = read_runs(a_log, b_log)
    assert held not in runs and doomed not in runs
    assert [len(runs[i]) for i in (done, later, again)] == [1, 1, 1]
    assert await still_queued(data, [held, doomed]) == set()


async def test_running_tasks_are_cancelled_from_another_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    gate = tmp_path / "gate"
    with trio.fail_after(60):
        async with open_worker(data, a_log) as a:
            # Both start running in A before B exists, so A is the one running them.
            spinning = await a.request("start", task="spin", args={"seconds": 20})
            gated = await a.request("start", task="gated", args={"gate": str(gate), "seconds": 20})
            with trio.fail_after(10):
                while set(read_runs(a_log)) != {spinning, gated}:
                    await trio.sleep(0.005)
            async with open_worker(data, b_log) as b:
                assert await b.request("status", id=spinning) == "in_progress"
                assert await b.request("cancel", id=spinning) == "cancelled"
                assert await a.request("status", id=spinning) == "cancelled"
                with pytest.raises(WorkerError, match="TaskCancelled"):
                    await a.request("get", id=spinning)

                # A sync task that did not opt in keeps running, and says so.
                with pytest.raises(WorkerError, match=r"CannotCancel: .*in_progress"):
                    await b.request("cancel", id=gated)
                assert await a.request("status", id=gated) == "in_progress"
                await trio.Path(gate).touch()
                assert await b.request("wait", ids=[gated], timeout=10, within=15) == {
                    gated: "success"
                }
                assert await b.request("get", id=gated) == "opened"
                await b.quit()
            await a.quit()

    runs = read_runs(a_log, b_log)
    assert runs[spinning] == [Run(spinning, a.pid, 1)]
    assert runs[gated] == [Run(gated, a.pid, 1)]


async def test_cancel_racing_the_run_across_processes_answers_the_truth(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    delays = (0.05, 0.1, 0.2, 0.4)
    with trio.fail_after(60):
        async with open_worker(data, a_log, sleep=0.005) as a, open_worker(data, b_log) as b:
            # Batches due at different times; B cancels them interleaved, so its
            # cancels meet tasks pending, just claimed, running and finished.
            batches = []
            for batch, delay in enumerate(delays):
                before = set(a.submitted)
                await a.request("submit", count=50, first=100 * batch, threads=8, delay=delay)
                batches.append([i for i in a.submitted if i not in before])
            answers: dict[str, str] = {}
            for task_id in [i for group in zip(*batches, strict=True) for i in group]:
                try:
                    answers[task_id] = await b.request("cancel", id=task_id)
                except WorkerError as exc:
                    answers[task_id] = str(exc)
            final = await a.request("wait", ids=list(a.submitted), timeout=20, within=25)
            await a.quit()
            await b.quit()

    runs = read_runs(a_log, b_log)
    for task_id, answer in answers.items():
        if answer == "cancelled":
            assert final[task_id] == "cancelled" and task_id not in runs, (answer, runs[task_id])
        else:
            # Too late: it was running or done, and it runs (ran) to success once.
            assert answer.startswith("CannotCancel"), answer
            assert final[task_id] == "success" and len(runs[task_id]) == 1, runs[task_id]
