"""Many processes on one Redis: a server with no task slots, workers, and the
test process itself, with a real redis-server started by the tests."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

import errands
from errands.backends.redis import RedisBackend
from tests.adapters.test_cli import free_port
from tests.tools import redis_server

from .conftest import TARGET, Start, read_runs, wait_ready
from .redis_service import svc

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

TASKS = 2000


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_server_and_two_workers_share_thousands_of_tasks(
    prefixed: str, processes: Start, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    port = free_port()
    server = processes(
        "serve", TARGET, "--backend", prefixed, "--task-slots", "0", "--port", str(port),
        log=log, name="server",
    )  # fmt: skip
    workers = [
        processes(
            "worker", TARGET, "--backend", prefixed, "--task-slots", "8", log=log, name=f"w{i}"
        )
        for i in (1, 2)
    ]
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, server)
    with errands.start(svc, backend=prefixed, workers=0) as client:
        batch = client.record.submit_many({"n": n} for n in range(TASKS))
        assert len(batch.tasks) == TASKS
        counts = batch.wait(timeout=120)  # woken across processes
        assert counts["success"] == TASKS, counts

        # Each ran once, on a worker (the server has no task slots).
        runs = read_runs(log)
        assert set(runs) == {t.id for t in batch.tasks}
        assert all(len(r) == 1 for r in runs.values())
        pids = {pid for r in runs.values() for pid, _ in r}
        assert pids == {w.pid for w in workers}, (pids, [w.pid for w in workers])

        # Status and results are the same seen from every process.
        for index in random.sample(range(TASKS), 20):
            task_id = batch.tasks[index].id
            status = httpx.get(f"{base}/record/status", params={"task_id": task_id}).json()
            assert status["status"] == "success"
            got = httpx.get(f"{base}/record/get", params={"task_id": task_id})
            assert got.json() == 2 * index
            assert batch.tasks[index].get() == 2 * index

        # Cancel over HTTP a task that runs on a worker.
        submitted = httpx.post(f"{base}/slow/submit", json={"seconds": 60}).json()
        slow_task = client.get_task(submitted["task_id"])
        wait_until(
            lambda: slow_task.get_status() is errands.TaskStatus.IN_PROGRESS, 20, "slow to start"
        )
        answer = httpx.post(f"{base}/slow/cancel", params={"task_id": slow_task.id}, timeout=30)
        assert answer.json()["status"] == "cancelled", answer.text
        assert slow_task.get_status() is errands.TaskStatus.CANCELLED

        # A long poll on the server (no task slots) wakes when a worker ends the task.
        napping = client.record.submit(n=3, pause=1.0)
        held = httpx.get(
            f"{base}/record/status", params={"task_id": napping.id, "wait": 30}, timeout=40
        )
        assert held.json()["status"] == "success", held.text

        # Retry in-process a task that ran on a worker: it runs on a worker again.
        again = batch.tasks[7].retry()
        assert again.wait(timeout=30) is errands.TaskStatus.SUCCESS
        assert again.get() == 14
        assert read_runs(log)[again.id][0][0] in {w.pid for w in workers}
    for process in (server, *workers):
        process.send_signal(signal.SIGTERM)
    for process in (server, *workers):
        assert process.wait(timeout=30) == 0, (tmp_path / "server.out").read_text()[-2000:]


def test_a_killed_workers_tasks_are_finished_by_another_after_the_lease(
    prefixed: str, processes: Start, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    first = processes(
        "worker", TARGET, "--backend", prefixed, "--task-slots", "4", "--lease", "2",
        log=log, name="first",
    )  # fmt: skip
    with errands.start(svc, backend=prefixed, workers=0, lease=2) as client:
        tasks = [client.record.submit(n=n, pause=1.0) for n in range(8)]
        wait_until(lambda: len(read_runs(log)) >= 4, 30, "the first worker to start tasks")
        first.kill()  # SIGKILL: no hand-back, no final write
        first.wait(timeout=10)
        killed = {i for i, r in read_runs(log).items() if r[-1][0] == first.pid}
        second = processes(
            "worker", TARGET, "--backend", prefixed, "--task-slots", "4", "--lease", "2",
            log=log, name="second",
        )  # fmt: skip
        for n, task in enumerate(tasks):
            assert task.wait(timeout=60) is errands.TaskStatus.SUCCESS
            assert task.get() == 2 * n
        runs = read_runs(log)
        for task_id in killed:
            info = client.get_task(task_id).get_info()
            assert runs[task_id][-1][0] == second.pid
            assert info.attempt == 2  # re-run after the lease ran out
            assert info.attempts[0].outcome is errands.AttemptOutcome.LOST
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0


def test_an_idle_engine_issues_almost_no_commands_and_waiters_wake_by_message(
    redis_url: str, processes: Start, tmp_path: Path
) -> None:
    prefix = f"idle{random.randrange(10**9)}"
    url = f"{redis_url}?prefix={prefix}"
    log = tmp_path / "runs.log"
    worker = processes("worker", TARGET, "--backend", url, log=log, name="worker")
    server = redis.Redis.from_url(redis_url)

    def commands() -> int:
        info = server.info("commandstats")
        return sum(int(v["calls"]) for k, v in info.items() if k != "cmdstat_info")

    # A waiter here whose fallback poll is 5 minutes: only a message wakes it.
    backend = RedisBackend(url, poll_interval=300)
    with errands.start(svc, backend=backend, workers=0) as client:
        task = client.record.submit(n=21)
        assert task.wait(timeout=30) is errands.TaskStatus.SUCCESS
        assert task.get() == 42
        time.sleep(1)  # settle
        before = commands()
        time.sleep(6)
        idle = commands() - before
    server.close()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    # Two idle engines (the worker and this one) for 6 s: a few lease-keeper
    # looks, no polling of queues or tasks.
    assert idle <= 12, idle


def test_redis_down_at_start_is_not_ready_then_recovers(processes: Start, tmp_path: Path) -> None:
    redis_port, port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    server = processes(
        "serve", TARGET, "--backend", url, "--port", str(port), log=tmp_path / "runs.log",
        name="server",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def readyz() -> int:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code
        except httpx.TransportError:
            return 0

    wait_until(lambda: readyz() == 503, 30, "the server to answer not ready")
    refused = httpx.post(f"{base}/record/submit", json={"n": 1})
    assert refused.status_code == 503
    assert refused.json()["state"] == "storage_unavailable"
    with redis_server(tmp_path / "redis", port=redis_port):
        wait_until(lambda: readyz() == 200, 30, "the server to recover")
        task_id = httpx.post(f"{base}/record/submit", json={"n": 5}).json()["task_id"]
        wait_until(
            lambda: (
                httpx.get(f"{base}/record/status", params={"task_id": task_id}).json()["status"]
                == "success"
            ),
            30,
            "the task to run",
        )
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def test_a_redis_restart_with_aof_loses_no_accepted_task(tmp_path: Path) -> None:
    data, port = tmp_path / "redis", free_port()
    log = tmp_path / "runs.log"
    os.environ["ERRANDS_TEST_LOG"] = str(log)
    try:
        with redis_server(data, appendonly=True, port=port) as url:
            # A short lease: a claim the restart lost is recovered in seconds
            # (with the default 30 s, a third of the runs waited that long).
            client = errands.start(svc, backend=url, workers=4, lease=5)
            try:
                batch = client.record.submit_many({"n": n, "pause": 0.01} for n in range(300))
                wait_until(lambda: len(read_runs(log)) >= 20, 30, "tasks to run")
            except BaseException:
                client.close()
                raise
        # redis-server stopped (SIGTERM: it writes its AOF); the engine lives on.
        time.sleep(1)
        assert not client.statistics().ready
        with redis_server(data, appendonly=True, port=port):
            counts = batch.wait(timeout=90)
            assert counts["success"] == 300, counts
            assert [r.result for r in batch.results()] == [2 * n for n in range(300)]
            assert client.statistics().ready
            client.close()
    finally:
        del os.environ["ERRANDS_TEST_LOG"]
    runs = read_runs(log)
    assert set(runs) == {t.id for t in batch.tasks}
