"""benchmarks/clients.py runs: a smoke test, not a speed test (no timing is checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "clients.py"


@pytest.mark.realtime
def test_clients_quick_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "trio " in out and "errands " in out and "httpx " in out and "cores" in out, out
    assert "load average at start" in out, out
    for line in (
        "1. client overhead",
        "ratio SyncHTTPClient / httpx.Client",
        "ratio AsyncHTTPClient / httpx.AsyncClient",
        "2. waiting for one task",
        "(a) task.wait() (long poll)",
        "ratio (b)/(a) p50 notice delay",
        "ratio (c)/(a) requests per task",
        "3. many tasks",
        "(a) errands.as_completed(tasks)",
        "ratio (c)/(a) requests",
    ):
        assert line in out, out
    # The server stopped cleanly on SIGTERM (a failure or a kill is reported on stderr).
    assert "exited with" not in done.stderr, done.stderr
    assert "ignored SIGTERM" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
