"""benchmarks/http.py runs: a smoke test, not a speed test (no timing is checked)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "http.py"


@pytest.mark.realtime
def test_http_quick_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "trio " in out and "errands " in out and "hypercorn " in out and "cores" in out, out
    assert "trio worker" in out, out
    tables = 2 if importlib.util.find_spec("uvicorn") is not None else 1
    for line in ("ratio sequential submit rate", "ratio concurrent submit rate"):
        assert out.count(line) == tables, out
    assert out.count("target >= 0.60: ") == 2 * tables, out
    assert out.count("ratio end to end tasks/s") == tables, out
    assert "server CPU, microseconds per request" in out, out
    if importlib.util.find_spec("bentoml") is None:
        assert "needs `pip install bentoml`" in out, out
    # The servers stopped cleanly on SIGTERM (a failure or a kill is reported on stderr).
    assert "exited with" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
