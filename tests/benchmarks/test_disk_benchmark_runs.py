"""benchmarks/disk.py runs, with and without huey: a smoke test, not a speed test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "disk.py"
HUEY_MISSING = "huey not installed: pip install huey"

# Runs the script with ``import huey`` failing, as on a machine without it, and
# with the script's folder first on sys.path, as ``python benchmarks/disk.py``
# has it (the scripts ``import _common`` from there).
WITHOUT_HUEY = (
    "import os, runpy, sys; sys.modules['huey'] = None; "
    "sys.argv = [sys.argv[1], '--quick']; "
    "sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0]))); "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _run(argv: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _check_common(out: str) -> None:
    assert "trio " in out and "errands " in out and "cores" in out, out
    assert "ratio errands / (a) raw diskcache" in out, out
    assert "write calls per errands.db commit" in out, out
    assert "errands submit, idle engine" in out, out
    assert "errands durable, one submitter" in out, out
    assert "errands durable, one submitter, then get() each" in out, out
    assert "of them fsynced" in out, out


@pytest.mark.realtime
def test_disk_quick_runs() -> None:
    out = _run([str(SCRIPT), "--quick"])
    _check_common(out)
    if importlib.util.find_spec("huey") is not None:
        assert "ratio errands / (b) huey" in out, out
        assert "ratio errands, one submitter + get() / (b) huey" in out, out
        assert "target >= 2.00" in out, out
    else:
        assert HUEY_MISSING in out, out


@pytest.mark.realtime
def test_disk_quick_runs_without_huey() -> None:
    out = _run(["-c", WITHOUT_HUEY, str(SCRIPT)])
    _check_common(out)
    assert HUEY_MISSING in out, out
    assert "(b) huey SqliteHuey" not in out, out
