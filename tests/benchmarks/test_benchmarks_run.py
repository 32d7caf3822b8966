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


def run_quick(script: str, *lines: str, timeout: float = 120) -> None:
    """``python benchmarks/SCRIPT --quick`` succeeds and prints each of ``lines``."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for line in lines:
        assert line in done.stdout, done.stdout


@pytest.mark.realtime
def test_batching_quick_runs() -> None:
    run_quick("batching.py", "ratio batched / one call per task", "reference: one call per task")


@pytest.mark.realtime
def test_batch_reads_quick_runs() -> None:
    run_quick(
        "batch_reads.py",
        "counts",
        "ratio reference / results (memory)",
        "ratio reference / as_completed + get (diskcache)",
        "ratio as_completed + get / reference",
    )


@pytest.mark.realtime
def test_payloads_quick_runs() -> None:
    run_quick(
        "payloads.py",
        "ratio argument / result, 0.1 MB (memory)",
        "ratio argument / result, 0.1 MB (diskcache)",
        "ratio listing / reference (diskcache)",
    )


@pytest.mark.realtime
def test_payloads_quick_runs_on_redis() -> None:
    from tests.tools import find_tool

    find_tool("redis-server", what="the large arguments benchmark on Redis")
    run_quick(
        "payloads.py",
        "ratio argument / result, 0.1 MB (redis)",
        "ratio listing / reference (redis)",
    )


@pytest.mark.realtime
def test_redis_quick_runs() -> None:
    from tests.tools import find_tool

    find_tool("redis-server", what="the Redis benchmark's smoke run")
    run_quick(
        "redis.py",
        "errands (submit_many, then wait)",
        "errands.start() on Redis: submit()",
        "Redis memory per waiting task",
        timeout=180,
    )


@pytest.mark.realtime
def test_batch_submit_quick_runs() -> None:
    run_quick(
        "batch_submit.py",
        "ratio submit_many / one request per task",
        "ratio submit_many / submit per task",
    )


@pytest.mark.realtime
def test_deep_queue_quick_runs() -> None:
    run_quick(
        "deep_queue.py",
        "ratio submit, deep / short",
        "ratio status of the last task, deep / short",
        "ratio submit of a no-op, deep / short",
        "server CPU per request, 2000 waiting",
    )


@pytest.mark.realtime
def test_threadpath_quick_runs() -> None:
    run_quick(
        "threadpath.py",
        "errands: submit N, then wait each",
        "bare portal hop",
        "errands DiskCacheBackend: submit N, wait each",
        "errands submit from a thread, idle engine",
        "errands submit -> final (wait), idle engine",
    )


@pytest.mark.realtime
def test_vs_bentoml_quick_runs() -> None:
    # Without BentoML's venv the script shows errands' figures only; with it
    # (make test builds it) the ratio lines too.
    run_quick(
        "vs_bentoml.py",
        "closed loop  errands, hypercorn (trio worker)",
        "bulk         errands, --server uvicorn",
        "as completed errands, hypercorn (trio worker)",
        "errands server CPU, microseconds per task",
        timeout=180,
    )


@pytest.mark.realtime
def test_memory_quick_runs() -> None:
    run_quick(
        "memory.py",
        "errands: a pending task and its handle",
        "reference: a plain dict per task",
        "errands: a finished task, live (tracemalloc)",
        "errands: one full garbage collection then",
        "ratio errands / plain dicts (the pause)",
    )


@pytest.mark.realtime
def test_instructions_quick_runs() -> None:
    """Each of errands' counted loops runs (without valgrind: counting takes
    minutes; huey's loops run too where huey is installed)."""
    run_quick(
        "instructions.py",
        *(f"{loop:<12} ran 50 tasks" for loop in ("thread", "async", "durable")),
    )
