"""Processes on one Redis: ``errands serve`` and ``errands worker`` started by
the tests (on 127.0.0.1) and stopped by their PIDs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.tools import wait_answering

ROOT = Path(__file__).resolve().parents[2]
TARGET = "tests.redis.redis_service:svc"

Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def prefixed(redis_url: str) -> str:
    """The session's Redis with a prefix of this test's own."""
    return f"{redis_url}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Start]:
    """Start ``errands ARGS`` processes (cwd: the repository, so the service
    imports); each is killed by its PID at the end if still running."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, log: Path, name: str) -> subprocess.Popen[str]:
        out = (tmp_path / f"{name}.out").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "errands", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "ERRANDS_TEST_LOG": str(log), "PYTHONPATH": str(ROOT)},
        )
        out.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def wait_ready(base: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    wait_answering(f"{base}/readyz", process, timeout=timeout)


@contextmanager
def stopped_on_exit(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)


def read_runs(log: Path) -> dict[str, list[tuple[int, int]]]:
    """Task id -> the (pid, attempt) of each of its runs, in log order."""
    runs: dict[str, list[tuple[int, int]]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            task_id, pid, attempt = line.split()
            runs.setdefault(task_id, []).append((int(pid), int(attempt)))
    return runs
