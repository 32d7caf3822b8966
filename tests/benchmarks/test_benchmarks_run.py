"""The benchmark scripts run: a smoke test, not a speed test (no timing is checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.realtime
def test_inprocess_quick_runs() -> None:
    script = BENCHMARKS / "inprocess.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in (
        "ratio async errands / bare trio",
        "ratio sync errands / bare trio",
        "ratio sync errands / to_thread reference",
    ):
        assert line in out, out
    assert "pickup latency" in out, out
    assert "trio " in out and "errands " in out and "cores" in out, out


@pytest.mark.realtime
def test_batching_quick_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "batching.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ratio batched / one call per task" in done.stdout, done.stdout
    assert "reference: one call per task" in done.stdout, done.stdout


@pytest.mark.realtime
def test_redis_quick_runs() -> None:
    from tests.tools import find_tool

    find_tool("redis-server", what="the Redis benchmark's smoke run")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "redis.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "errands (submit_many, then wait)" in done.stdout, done.stdout
    assert "Redis memory per waiting task" in done.stdout, done.stdout


@pytest.mark.realtime
def test_batch_submit_quick_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "batch_submit.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ratio submit_many / one request per task" in done.stdout, done.stdout
    assert "ratio submit_many / submit per task" in done.stdout, done.stdout


@pytest.mark.realtime
def test_threadpath_quick_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "threadpath.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "errands: submit N, then wait each" in done.stdout, done.stdout
    assert "bare portal hop" in done.stdout, done.stdout
