"""benchmarks/load.py runs, and its soak mode: a smoke test, not a speed test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"


def _run(*options: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The server stopped cleanly on SIGTERM (a failure or a kill is reported on stderr).
    assert "exited with" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    out = done.stdout
    assert "trio " in out and "errands " in out and "diskcache " in out and "cores" in out, out
    for line in (
        "submit       POST /T/submit",
        "status       GET  /T/status",
        "get, oldest  GET  /T/get?wait",
        "get, newest  GET  /T/get?wait",
        "cancel       POST /T/cancel",
        "retry        PUT  /T/retry",
        "requests/s",
        "server peak RSS (VmHWM",
        "checks: 5xx answers 0; lost tasks 0; no failed check",
    ):
        assert line in out, out
    return out


@pytest.mark.realtime
def test_load_tiny_runs() -> None:
    out = _run("--clients", "4", "--requests", "200")
    assert "200 requests in" in out, out


@pytest.mark.realtime
def test_load_soak_tiny_runs() -> None:
    out = _run("--clients", "4", "--soak", "2", "--sample", "0.5")
    assert "server RSS (VmRSS), sampled:" in out, out
    assert re.search(r"growth from \d+ s to \d+ s: [+-]\d", out), out
